package wal

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
)

const testDir = "/data/wal"

// openWAL opens the WAL and returns copies of the recovered records.
func openWAL(t testing.TB, fsys FS, opts Options) (*WAL, []Record, error) {
	t.Helper()
	var recs []Record
	w, err := Open(fsys, testDir, opts, func(r Record) error {
		r.Data = bytes.Clone(r.Data)
		recs = append(recs, r)
		return nil
	})
	return w, recs, err
}

func mustOpen(t testing.TB, fsys FS, opts Options) (*WAL, []Record) {
	t.Helper()
	w, recs, err := openWAL(t, fsys, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return w, recs
}

// genRecords returns n records with indexes from+1.. and seeded payloads.
func genRecords(rng *rand.Rand, from uint64, n, size int) []Record {
	recs := make([]Record, n)
	for i := range recs {
		data := make([]byte, rng.IntN(size+1))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		recs[i] = Record{Type: uint8(1 + rng.IntN(4)), Index: from + uint64(i) + 1, Data: data}
	}
	return recs
}

func equalRecords(t testing.TB, got, want []Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Type != w.Type || g.Index != w.Index || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("record %d: got {%d %d %x}, want {%d %d %x}", i, g.Type, g.Index, g.Data, w.Type, w.Index, w.Data)
		}
	}
}

func appendSync(t testing.TB, w *WAL, recs ...Record) {
	t.Helper()
	if err := w.Append(recs...); err != nil {
		t.Fatalf("Append: %v", err)
	}
	if err := w.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

func segmentNames(t testing.TB, fsys FS) []string {
	t.Helper()
	names, err := fsys.List(testDir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		segSize int64
		batches int
		perSync int
		size    int
	}{
		{"one record", 0, 1, 1, 10},
		{"empty payloads", 0, 5, 3, 0},
		{"many small segments", 200, 50, 3, 64},
		{"large records", 1 << 16, 10, 2, 40 << 10},
		{"segment smaller than a record", 1, 20, 1, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seed := uint64(len(tc.name))
			rng := rand.New(rand.NewPCG(seed, 0))
			fsys := NewMemFS()
			opts := Options{SegmentSize: tc.segSize}
			w, recs := mustOpen(t, fsys, opts)
			if len(recs) != 0 {
				t.Fatalf("new WAL recovered %d records", len(recs))
			}
			var want []Record
			for b := 0; b < tc.batches; b++ {
				batch := genRecords(rng, uint64(len(want)), tc.perSync, tc.size)
				appendSync(t, w, batch...)
				want = append(want, batch...)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			// Reopen twice: the second time checks that reopening
			// without writing changes nothing.
			for range 2 {
				w, got := mustOpen(t, fsys, opts)
				equalRecords(t, got, want)
				if st := w.Stats(); st.TornBytes != 0 || st.Recovered != uint64(len(want)) {
					t.Fatalf("stats %+v", st)
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestRoundTripOSFS(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	w, err := Open(OSFS{}, dir, Options{SegmentSize: 4096}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := genRecords(rng, 0, 100, 300)
	for i := 0; i < len(want); i += 7 {
		appendSync(t, w, want[i:min(i+7, len(want))]...)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var got []Record
	w, err = Open(OSFS{}, dir, Options{SegmentSize: 4096}, func(r Record) error {
		r.Data = bytes.Clone(r.Data)
		got = append(got, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	equalRecords(t, got, want)
	if w.Stats().Segments < 2 {
		t.Fatalf("expected several segments, got %d", w.Stats().Segments)
	}
}

func TestSegmentRolling(t *testing.T) {
	fsys := NewMemFS()
	w, _ := mustOpen(t, fsys, Options{SegmentSize: 100})
	// Each batch is 2 records of 9+1+50 bytes: 120 bytes, over the limit,
	// so every batch after the first starts a new segment, and a batch
	// is never split.
	for i := range 4 {
		appendSync(t, w,
			Record{Type: 1, Index: uint64(2*i + 1), Data: make([]byte, 50)},
			Record{Type: 1, Index: uint64(2*i + 2), Data: make([]byte, 50)})
	}
	want := []string{
		"0000000000000001-0000000000000001.wal",
		"0000000000000002-0000000000000003.wal",
		"0000000000000003-0000000000000005.wal",
		"0000000000000004-0000000000000007.wal",
	}
	if got := segmentNames(t, fsys); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("segments %v, want %v", got, want)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// After reopening, the next segment's first index continues from the
	// highest recovered index.
	w, recs := mustOpen(t, fsys, Options{SegmentSize: 100})
	if len(recs) != 8 {
		t.Fatalf("recovered %d records", len(recs))
	}
	appendSync(t, w, Record{Type: 1, Index: 9})
	if got := segmentNames(t, fsys); got[len(got)-1] != "0000000000000005-0000000000000009.wal" {
		t.Fatalf("segments after reopen: %v", got)
	}
	w.Close()
}

func TestSegmentHeader(t *testing.T) {
	fsys := NewMemFS()
	hdrs := 0
	opts := Options{SegmentSize: 50, SegmentHeader: func() []Record {
		hdrs++
		return []Record{{Type: 9, Data: []byte(fmt.Sprint(hdrs))}}
	}}
	w, _ := mustOpen(t, fsys, opts)
	for i := range 3 {
		appendSync(t, w, Record{Type: 1, Index: uint64(i + 1), Data: make([]byte, 60)})
	}
	w.Close()
	_, recs := mustOpen(t, fsys, Options{})
	var types []string
	for _, r := range recs {
		types = append(types, fmt.Sprintf("%d:%d", r.Type, r.Index))
	}
	if got, want := strings.Join(types, " "), "9:0 1:1 9:0 1:2 9:0 1:3"; got != want {
		t.Fatalf("records %s, want %s", got, want)
	}
}

func TestReleaseTo(t *testing.T) {
	// Segments hold (by index) 1-2, 3-4, 5-6, 7-8, and the last one 9-10.
	// Index 0 records (like hard states) do not move the boundaries.
	build := func() (*MemFS, *WAL) {
		fsys := NewMemFS()
		w, _ := mustOpen(t, fsys, Options{SegmentSize: 1})
		for i := range 5 {
			appendSync(t, w,
				Record{Type: 1, Index: uint64(2*i + 1)},
				Record{Type: 2},
				Record{Type: 1, Index: uint64(2*i + 2)})
		}
		return fsys, w
	}
	for _, tc := range []struct {
		release  uint64
		segments int
		minIndex uint64 // lowest index still recovered
	}{
		{0, 5, 1},
		{1, 5, 1},
		{2, 4, 3},
		{3, 4, 3},
		{6, 2, 7},
		{8, 1, 9},
		{100, 1, 9}, // the segment being written is never removed
	} {
		t.Run(fmt.Sprint(tc.release), func(t *testing.T) {
			fsys, w := build()
			if err := w.ReleaseTo(tc.release); err != nil {
				t.Fatal(err)
			}
			if got := len(segmentNames(t, fsys)); got != tc.segments || w.Stats().Segments != got {
				t.Fatalf("%d segment files (stats %d), want %d", got, w.Stats().Segments, tc.segments)
			}
			w.Close()
			// The removals were synced: they survive a crash, and what
			// remains is a readable WAL with every index > release.
			fsys.Crash()
			_, recs := mustOpen(t, fsys, Options{SegmentSize: 1})
			if recs[0].Index != tc.minIndex || recs[len(recs)-1].Index != 10 {
				t.Fatalf("recovered indexes %d..%d, want %d..10", recs[0].Index, recs[len(recs)-1].Index, tc.minIndex)
			}
		})
	}
}

// TestTornTailEveryOffset writes N synced records and one more, cuts the
// last segment at every byte offset inside the last record, and checks
// that Open recovers exactly the N records without error and that the
// WAL then accepts appends.
func TestTornTailEveryOffset(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0))
			base := NewMemFS()
			w, _ := mustOpen(t, base, Options{})
			want := genRecords(rng, 0, 1+rng.IntN(20), 100)
			appendSync(t, w, want...)
			lastRec := genRecords(rng, uint64(len(want)), 1, 200)[0]
			appendSync(t, w, lastRec)
			w.Close()
			seg := filepath.Join(testDir, segmentNames(t, base)[0])
			full, _ := base.Size(seg)
			start := full - int64(recordSize(lastRec))
			for cut := start; cut < full; cut++ {
				fsys := base.Clone()
				if err := fsys.Truncate(seg, cut); err != nil {
					t.Fatal(err)
				}
				w, got, err := openWAL(t, fsys, Options{})
				if err != nil {
					t.Fatalf("seed %d cut at %d of %d: %v", seed, cut, full, err)
				}
				equalRecords(t, got, want)
				if st := w.Stats(); st.TornBytes != cut-start || (cut > start && st.TornOffset != start) {
					t.Fatalf("seed %d cut %d: stats %+v, want %d torn bytes at %d", seed, cut, st, cut-start, start)
				}
				extra := Record{Type: 3, Index: 999, Data: []byte("after")}
				appendSync(t, w, extra)
				w.Close()
				_, got, err = openWAL(t, fsys, Options{})
				if err != nil {
					t.Fatalf("seed %d cut %d: reopen after append: %v", seed, cut, err)
				}
				equalRecords(t, got, append(append([]Record(nil), want...), extra))
			}
		})
	}
}

// TestGarbageTail checks that garbage after the last record (a torn write
// of a sector that was never written) is truncated too. Zeros are not
// garbage: they are the unused rest of a preallocated segment, so they
// are not reported as torn.
func TestGarbageTail(t *testing.T) {
	for _, tail := range [][]byte{
		make([]byte, 4096),                  // zeroed, as after a preallocation
		bytes.Repeat([]byte{0xff}, 100),     // a huge length
		[]byte{5, 0, 0, 0, 1, 2, 3, 4, 1},   // a plausible header, bad checksum
		[]byte{200, 0, 0, 0, 1, 2, 3, 4, 1}, // a length past the end
	} {
		fsys := NewMemFS()
		w, _ := mustOpen(t, fsys, Options{})
		want := []Record{{Type: 1, Index: 1, Data: []byte("a")}, {Type: 1, Index: 2, Data: []byte("b")}}
		appendSync(t, w, want...)
		w.Close()
		seg := filepath.Join(testDir, segmentNames(t, fsys)[0])
		f, _ := fsys.OpenAppend(seg)
		f.Write(tail)
		f.Close()
		w, got, err := openWAL(t, fsys, Options{})
		if err != nil {
			t.Fatalf("tail %x: %v", tail[:min(len(tail), 12)], err)
		}
		equalRecords(t, got, want)
		wantTorn := int64(len(tail))
		if allZero(tail) {
			wantTorn = 0
		}
		if w.Stats().TornBytes != wantTorn {
			t.Fatalf("torn bytes %d, want %d", w.Stats().TornBytes, wantTorn)
		}
		more := Record{Type: 1, Index: 3, Data: []byte("c")}
		appendSync(t, w, more)
		w.Close()
		w, got = mustOpen(t, fsys, Options{})
		equalRecords(t, got, append(want, more))
		w.Close()
	}
}

// flipByte flips one bit of the byte at off in name.
func flipByte(t testing.TB, fsys *MemFS, name string, off int) {
	t.Helper()
	data, err := fsys.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	data[off] ^= 0x10
	f, err := fsys.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(data)
	f.Sync()
	f.Close()
}

// TestCorruptMiddle flips a byte in each part of a record that has valid
// records after it, in the last segment and in an earlier one: Open must
// refuse, naming the file and the record's offset.
func TestCorruptMiddle(t *testing.T) {
	rec := Record{Type: 1, Data: []byte("0123456789")}
	recLen := recordSize(Record{Type: 1, Index: 1, Data: rec.Data})
	for _, tc := range []struct {
		name    string
		segSize int64
		seg     int // which segment file to damage
		rec     int // which record in that file
		byteOff int // which byte of the record
	}{
		{"length", 0, 0, 2, 0},
		{"length high byte", 0, 0, 2, 3},
		{"crc", 0, 0, 2, 5},
		{"type", 0, 0, 2, 8},
		{"index", 0, 0, 2, 9},
		{"data", 0, 0, 2, 15},
		{"first record", 0, 0, 0, 12},
		{"last record of an earlier segment", int64(3 * recLen), 0, 2, 12},
		{"only record of an earlier segment", 1, 1, 0, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := NewMemFS()
			w, _ := mustOpen(t, fsys, Options{SegmentSize: tc.segSize})
			for i := range 6 {
				r := rec
				r.Index = uint64(i + 1)
				appendSync(t, w, r)
			}
			w.Close()
			seg := filepath.Join(testDir, segmentNames(t, fsys)[tc.seg])
			off := tc.rec * recLen
			flipByte(t, fsys, seg, off+tc.byteOff)
			_, _, err := openWAL(t, fsys, Options{SegmentSize: tc.segSize})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: %v, want ErrCorrupt", err)
			}
			if msg := err.Error(); !strings.Contains(msg, seg) || !strings.Contains(msg, fmt.Sprintf("offset %d", off)) {
				t.Fatalf("error %q does not name %s and offset %d", msg, seg, off)
			}
		})
	}
}

func TestMissingSegment(t *testing.T) {
	fsys := NewMemFS()
	w, _ := mustOpen(t, fsys, Options{SegmentSize: 1})
	for i := range 3 {
		appendSync(t, w, Record{Type: 1, Index: uint64(i + 1)})
	}
	w.Close()
	fsys.Remove(filepath.Join(testDir, segmentNames(t, fsys)[1]))
	if _, _, err := openWAL(t, fsys, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with a hole in the segment sequence: %v, want ErrCorrupt", err)
	}
}

// TestCrashLosesOnlyUnsynced crashes the MemFS with torn writes after a
// mix of synced and unsynced appends, over many seeds: every synced
// record must come back, in order, followed by a prefix of the unsynced
// ones.
func TestCrashLosesOnlyUnsynced(t *testing.T) {
	for seed := uint64(0); seed < 200; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		fsys := NewMemFS()
		opts := Options{SegmentSize: int64(50 + rng.IntN(500))}
		w, _ := mustOpen(t, fsys, opts)
		var all []Record
		synced := 0
		for range rng.IntN(30) {
			batch := genRecords(rng, uint64(len(all)), 1+rng.IntN(5), 60)
			if err := w.Append(batch...); err != nil {
				t.Fatal(err)
			}
			all = append(all, batch...)
			if rng.IntN(3) > 0 {
				if err := w.Sync(); err != nil {
					t.Fatal(err)
				}
				synced = len(all)
			}
		}
		fsys.CrashWith(rng)
		_, got, err := openWAL(t, fsys, opts)
		if err != nil {
			t.Fatalf("seed %d: Open after crash: %v", seed, err)
		}
		if len(got) < synced {
			t.Fatalf("seed %d: recovered %d records, %d were synced", seed, len(got), synced)
		}
		equalRecords(t, got, all[:len(got)])
	}
}

func TestAppendValidation(t *testing.T) {
	w, _ := mustOpen(t, NewMemFS(), Options{})
	if err := w.Append(Record{Type: 0}); err == nil {
		t.Fatal("type 0 accepted")
	}
	w.Close()
	if err := w.Append(Record{Type: 1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
}

func TestSyncSkipsWhenClean(t *testing.T) {
	fsys := NewMemFS()
	w, _ := mustOpen(t, fsys, Options{})
	before := fsys.FileSyncs
	appendSync(t, w, Record{Type: 1, Index: 1}, Record{Type: 1, Index: 2}, Record{Type: 1, Index: 3})
	if got := fsys.FileSyncs - before; got != 1 {
		t.Fatalf("a batch cost %d fsyncs, want 1", got)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := fsys.FileSyncs - before; got != 1 {
		t.Fatalf("an empty Sync cost an fsync")
	}
}

func TestDecodeRecordRoundTrip(t *testing.T) {
	for _, r := range []Record{
		{Type: 1},
		{Type: 255, Index: 1<<64 - 1, Data: []byte("x")},
		{Type: 7, Index: 300, Data: bytes.Repeat([]byte{0}, 1000)},
	} {
		b := appendRecord(nil, r)
		got, n, err := decodeRecord(b)
		if err != nil || n != len(b) || got.Type != r.Type || got.Index != r.Index || !bytes.Equal(got.Data, r.Data) {
			t.Fatalf("decode(%+v) = %+v, %d, %v", r, got, n, err)
		}
		for cut := range len(b) {
			if _, _, err := decodeRecord(b[:cut]); err == nil {
				t.Fatalf("decoded a record cut at %d", cut)
			}
		}
	}
}
