package kv

import (
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
)

// DefaultSortMemory is how many bytes of map output a Sorter buffers
// before it spills a sorted run to disk.
const DefaultSortMemory = 64 << 20

// Sorter collects map output by partition, sorts it by key, applies the
// combiner and writes one sorted file per partition. When its buffer
// exceeds Memory it spills sorted, combined runs to Dir and merges them in
// Finish. It is used by one goroutine.
type Sorter struct {
	Dir     string         // spill directory; must exist
	NPart   int            // number of partitions (R)
	Combine job.ReduceFunc // optional
	Memory  int            // buffer limit in bytes (DefaultSortMemory if 0)
	// Counters receives combine and spill counters and the combiner's
	// user counters. Must be non-nil.
	Counters job.Counters

	parts  [][]KV
	mem    int
	runs   [][]string
	nspill int
}

// Add buffers one pair for partition p.
func (s *Sorter) Add(p int, k, v string) error {
	if s.parts == nil {
		s.parts = make([][]KV, s.NPart)
		s.runs = make([][]string, s.NPart)
	}
	s.parts[p] = append(s.parts[p], KV{k, v})
	s.mem += len(k) + len(v) + 40
	limit := s.Memory
	if limit == 0 {
		limit = DefaultSortMemory
	}
	if s.mem > limit {
		return s.spill()
	}
	return nil
}

func (s *Sorter) spill() error {
	s.nspill++
	for p, kvs := range s.parts {
		if len(kvs) == 0 {
			continue
		}
		name := filepath.Join(s.Dir, fmt.Sprintf("spill-%d-%d", s.nspill, p))
		if err := s.writeSorted(name, kvs); err != nil {
			return err
		}
		s.runs[p] = append(s.runs[p], name)
		s.parts[p] = nil
	}
	s.mem = 0
	return nil
}

// sortKVs sorts by key, then value: a total order, so the values of a key
// reach the reducer in the same order in every execution of a task.
func sortKVs(kvs []KV) {
	slices.SortFunc(kvs, func(a, b KV) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return strings.Compare(a.Value, b.Value)
	})
}

func (s *Sorter) writeSorted(name string, kvs []KV) error {
	sortKVs(kvs)
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	w := NewWriter(f)
	if err := s.copy(w, &SliceSource{KVs: kvs}); err != nil {
		f.Close()
		return err
	}
	s.Counters[job.SpilledRecords] += w.Records
	if err := w.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// copy writes src to w, through the combiner if there is one. It does not
// close w.
func (s *Sorter) copy(w *Writer, src Source) error {
	if s.Combine == nil {
		for {
			k, v, err := src.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := w.Write(k, v); err != nil {
				return err
			}
		}
	}
	out := &writerOutput{w: w, counters: s.Counters}
	before := w.Records
	_, recs, err := Group(src, func(key string, values iter.Seq[string]) error {
		return s.Combine(key, values, out)
	})
	if err == nil {
		err = out.err
	}
	s.Counters[job.CombineInputRecords] += recs
	s.Counters[job.CombineOutputRecs] += w.Records - before
	return err
}

// Finish writes partition p's sorted output to path(p) for every p, empty
// partitions included, and removes spill files.
func (s *Sorter) Finish(path func(p int) string) error {
	if s.parts == nil {
		s.parts = make([][]KV, s.NPart)
		s.runs = make([][]string, s.NPart)
	}
	spilled := s.nspill > 0
	if spilled {
		if err := s.spill(); err != nil {
			return err
		}
	}
	for p := 0; p < s.NPart; p++ {
		if err := s.finishPart(p, path(p), spilled); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sorter) finishPart(p int, name string, spilled bool) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	w := NewWriter(f)
	if !spilled {
		sortKVs(s.parts[p])
		err = s.copy(w, &SliceSource{KVs: s.parts[p]})
		s.parts[p] = nil
	} else {
		var files []*os.File
		var srcs []Source
		for _, r := range s.runs[p] {
			rf, oerr := os.Open(r)
			if oerr != nil {
				return oerr
			}
			files = append(files, rf)
			srcs = append(srcs, NewReader(rf))
		}
		var m Source
		m, err = Merge(srcs)
		if err == nil {
			err = s.copy(w, m)
		}
		for i, rf := range files {
			rf.Close()
			os.Remove(s.runs[p][i])
		}
	}
	if err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return f.Close()
}

// writerOutput adapts a Writer to job.Output for combiners.
type writerOutput struct {
	w        *Writer
	counters job.Counters
	err      error
}

func (o *writerOutput) Emit(k, v string) {
	if err := o.w.Write(k, v); err != nil && o.err == nil {
		o.err = err
	}
}

func (o *writerOutput) Count(name string, d int64) { o.counters[job.UserPrefix+name] += d }
