package kv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
)

func readAll(t *testing.T, r *Reader) []KV {
	t.Helper()
	var out []KV
	for {
		k, v, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, KV{k, v})
	}
}

func TestRoundTripAndTruncation(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	in := []KV{{"a", "1"}, {"", ""}, {"ü\x00x", string(make([]byte, 100000))}}
	for _, kv := range in {
		if err := w.Write(kv.Key, kv.Value); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, NewReader(bytes.NewReader(buf.Bytes())))
	if fmt.Sprint(got) != fmt.Sprint(in) {
		t.Fatalf("round trip: got %q", got)
	}
	// Every strict prefix must be reported as corrupt, never as a short
	// clean read.
	for _, n := range []int{0, 1, 3, buf.Len() / 2, buf.Len() - 1} {
		r := NewReader(bytes.NewReader(buf.Bytes()[:n]))
		var err error
		for err == nil {
			_, _, err = r.Next()
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("prefix %d: err = %v, want ErrCorrupt", n, err)
		}
	}
}

func sum(key string, values iter.Seq[string], out job.Output) error {
	n := 0
	for v := range values {
		x, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		n += x
	}
	out.Emit(key, strconv.Itoa(n))
	return nil
}

// TestSorterSpillEqualsInMemory checks that spilling and merging runs with a
// combiner gives the same partition files as one in-memory sort.
func TestSorterSpillEqualsInMemory(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	var pairs []KV
	for i := 0; i < 5000; i++ {
		pairs = append(pairs, KV{fmt.Sprintf("k%03d", rng.Intn(300)), "1"})
	}
	run := func(memory int, combine job.ReduceFunc) [][]KV {
		dir := t.TempDir()
		s := &Sorter{Dir: dir, NPart: 3, Memory: memory, Combine: combine, Counters: job.Counters{}}
		for _, kv := range pairs {
			if err := s.Add(job.HashPartition(kv.Key, 3), kv.Key, kv.Value); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Finish(func(p int) string { return filepath.Join(dir, fmt.Sprint("out", p)) }); err != nil {
			t.Fatal(err)
		}
		var res [][]KV
		for p := 0; p < 3; p++ {
			f, err := os.Open(filepath.Join(dir, fmt.Sprint("out", p)))
			if err != nil {
				t.Fatal(err)
			}
			res = append(res, readAll(t, NewReader(f)))
			f.Close()
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 3 {
			t.Errorf("spill files left behind: %d entries", len(ents))
		}
		return res
	}
	want := run(1<<30, sum)
	got := run(2000, sum)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("spilled output differs")
	}
	// Without a combiner, the total count per key is still right.
	raw := run(2000, nil)
	for p := range raw {
		var src Source = &SliceSource{KVs: raw[p]}
		var agg []KV
		out := &collect{}
		if _, _, err := Group(src, func(k string, vs iter.Seq[string]) error { return sum(k, vs, out) }); err != nil {
			t.Fatal(err)
		}
		agg = out.kvs
		if fmt.Sprint(agg) != fmt.Sprint(want[p]) {
			t.Fatalf("partition %d: uncombined sums differ", p)
		}
	}
}

type collect struct{ kvs []KV }

func (c *collect) Emit(k, v string)    { c.kvs = append(c.kvs, KV{k, v}) }
func (c *collect) Count(string, int64) {}

func TestGroupPartialConsumption(t *testing.T) {
	src := &SliceSource{KVs: []KV{{"a", "1"}, {"a", "2"}, {"b", "3"}, {"c", "4"}, {"c", "5"}}}
	var got []string
	groups, recs, err := Group(src, func(k string, vs iter.Seq[string]) error {
		for v := range vs {
			got = append(got, k+v)
			break // take only the first value
		}
		return nil
	})
	if err != nil || groups != 3 || recs != 5 || fmt.Sprint(got) != "[a1 b3 c4]" {
		t.Fatalf("got %v groups=%d recs=%d err=%v", got, groups, recs, err)
	}
}

func TestMergeOrder(t *testing.T) {
	a := &SliceSource{KVs: []KV{{"a", "x1"}, {"c", "x2"}}}
	b := &SliceSource{KVs: []KV{{"a", "y1"}, {"b", "y2"}}}
	m, err := Merge([]Source{a, b})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		k, v, err := m.Next()
		if err == io.EOF {
			break
		}
		got = append(got, k+v)
	}
	if fmt.Sprint(got) != "[ax1 ay1 by2 cx2]" {
		t.Fatalf("got %v", got)
	}
}
