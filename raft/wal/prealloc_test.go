package wal

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The tests in this file run on the operating system's file system: MemFS
// models append-only files and does not support preallocation.

const preallocSegment = 64 << 10

func openOS(t *testing.T, dir string, prealloc bool) (*WAL, []Record, error) {
	t.Helper()
	var recs []Record
	w, err := Open(OSFS{}, dir, Options{SegmentSize: preallocSegment, Preallocate: prealloc}, func(r Record) error {
		r.Data = bytes.Clone(r.Data)
		recs = append(recs, r)
		return nil
	})
	return w, recs, err
}

func mustOpenOS(t *testing.T, dir string, prealloc bool) (*WAL, []Record) {
	t.Helper()
	w, recs, err := openOS(t, dir, prealloc)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return w, recs
}

func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	names, err := OSFS{}.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, ok := parseSegmentName(n); ok {
			out = append(out, filepath.Join(dir, n))
		}
	}
	return out
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestPreallocatedSegments writes across several preallocated segments,
// reopening in between, and checks that every segment file was full size
// from the start and that recovery stops at the zeros.
func TestPreallocatedSegments(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	w, _ := mustOpenOS(t, dir, true)
	if got := fileSize(t, segmentFiles(t, dir)[0]); got != preallocSegment {
		t.Fatalf("first segment is %d bytes, want it preallocated to %d", got, preallocSegment)
	}
	var want []Record
	for i := 0; i < 4; i++ {
		recs := genRecords(rng, uint64(len(want)), 300, 400)
		for _, r := range recs {
			appendSync(t, w, r)
		}
		want = append(want, recs...)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		var got []Record
		w, got = mustOpenOS(t, dir, true)
		equalRecords(t, got, want)
		if st := w.Stats(); st.TornBytes != 0 {
			t.Fatalf("reopen %d reported a torn tail: %+v", i, st)
		}
	}
	defer w.Close()
	segs := segmentFiles(t, dir)
	if len(segs) < 3 {
		t.Fatalf("%d segments, want the records to span at least 3", len(segs))
	}
	for _, p := range segs {
		if got := fileSize(t, p); got < preallocSegment {
			t.Errorf("%s is %d bytes, want at least %d (preallocated)", filepath.Base(p), got, preallocSegment)
		}
	}
	// Appends after the last reopen land after the recovered records,
	// not at the end of the preallocated file.
	more := genRecords(rng, uint64(len(want)), 20, 100)
	appendSync(t, w, more...)
	want = append(want, more...)
	w.Close()
	w, got := mustOpenOS(t, dir, true)
	defer w.Close()
	equalRecords(t, got, want)
}

// TestPreallocatedReadByPlainWAL checks that a WAL opened without
// preallocation reads and extends preallocated segments, and the reverse.
func TestPreallocatedReadByPlainWAL(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	w, _ := mustOpenOS(t, dir, true)
	want := genRecords(rng, 0, 50, 300)
	appendSync(t, w, want...)
	w.Close()
	w, got := mustOpenOS(t, dir, false)
	equalRecords(t, got, want)
	more := genRecords(rng, uint64(len(want)), 400, 300)
	for _, r := range more {
		appendSync(t, w, r)
	}
	want = append(want, more...)
	w.Close()
	w, got = mustOpenOS(t, dir, true)
	defer w.Close()
	equalRecords(t, got, want)
}

// TestPreallocatedTornWrite models a crash in the middle of an unsynced
// write into a preallocated segment, whose pages reach the disk in any
// order: a later record survives while the page before it is still zeros.
// Recovery must treat that as a torn tail, but garbage (not a whole
// sector of zeros) before a valid record is corruption.
func TestPreallocatedTornWrite(t *testing.T) {
	for _, tc := range []struct {
		name    string
		gap     func(n int) []byte
		corrupt bool
	}{
		{"zero page then record", func(n int) []byte { return make([]byte, n) }, false},
		{"garbage then record", func(n int) []byte { return bytes.Repeat([]byte{0xa5}, n) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rng := rand.New(rand.NewPCG(5, 6))
			w, _ := mustOpenOS(t, dir, true)
			synced := genRecords(rng, 0, 10, 200)
			appendSync(t, w, synced...)
			w.Close()
			p := segmentFiles(t, dir)[0]
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			end := len(data)
			for end > 0 && data[end-1] == 0 {
				end--
			}
			// The unsynced write: a torn record (header only) at end, a
			// gap of 4 KiB, then a complete record.
			lost := appendRecord(nil, Record{Type: 1, Index: 11, Data: bytes.Repeat([]byte{7}, 100)})
			later := appendRecord(nil, Record{Type: 1, Index: 12, Data: []byte("later")})
			copy(data[end:], lost[:recordHeaderSize])
			gapAt := end + recordHeaderSize
			copy(data[gapAt:], tc.gap(4096))
			copy(data[gapAt+4096:], later)
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			w, got, err := openOS(t, dir, true)
			if tc.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open = %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer w.Close()
			equalRecords(t, got, synced)
			if st := w.Stats(); st.TornOffset != int64(end) {
				t.Fatalf("torn offset %d, want %d", st.TornOffset, end)
			}
			// The WAL keeps working after the truncated tail.
			next := Record{Type: 2, Index: 11, Data: []byte("after")}
			appendSync(t, w, next)
			w.Close()
			w, got = mustOpenOS(t, dir, true)
			defer w.Close()
			equalRecords(t, got, append(synced, next))
		})
	}
}

// TestMissingRecordsInOlderSegment zeroes the end of a segment that is
// not the last: the zeros look like a preallocated segment's unused space,
// but the next segment's first index shows records are missing.
func TestMissingRecordsInOlderSegment(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 8))
	w, _ := mustOpenOS(t, dir, true)
	recs := genRecords(rng, 0, 600, 400)
	for _, r := range recs {
		appendSync(t, w, r)
	}
	w.Close()
	segs := segmentFiles(t, dir)
	if len(segs) < 2 {
		t.Fatalf("want at least 2 segments, got %d", len(segs))
	}
	data, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	// Zero the last record of the first segment, and everything after.
	off, lastStart := 0, 0
	for off < len(data) {
		_, n, err := decodeRecord(data[off:])
		if err != nil {
			break
		}
		lastStart = off
		off += n
	}
	clear(data[lastStart:])
	if err := os.WriteFile(segs[0], data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openOS(t, dir, true); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want ErrCorrupt naming the missing records", err)
	}
}

// TestLeftoverPreparedFile checks that a preparation interrupted by a
// crash is not mistaken for a segment and is refilled before use.
func TestLeftoverPreparedFile(t *testing.T) {
	dir := t.TempDir()
	w, _ := mustOpenOS(t, dir, true)
	appendSync(t, w, Record{Type: 1, Index: 1, Data: []byte("x")})
	w.Close()
	leftover := filepath.Join(dir, preparedName)
	if err := os.WriteFile(leftover, bytes.Repeat([]byte{0xa5}, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	w, got := mustOpenOS(t, dir, true)
	if len(got) != 1 {
		t.Fatalf("recovered %d records, want 1", len(got))
	}
	// Fill the segment so that the leftover is prepared again and used.
	rng := rand.New(rand.NewPCG(9, 10))
	want := append(got, genRecords(rng, 1, 600, 400)...)
	for _, r := range want[1:] {
		appendSync(t, w, r)
	}
	w.Close()
	if n := len(segmentFiles(t, dir)); n < 2 {
		t.Fatalf("%d segments, want the records to need a second", n)
	}
	w, got = mustOpenOS(t, dir, true)
	defer w.Close()
	equalRecords(t, got, want)
}

// fullDiskFS is the operating system's file system, except that writes to
// the prepared-segment file fail as on a full disk.
type fullDiskFS struct{ OSFS }

type fullFile struct{ File }

func (fullFile) Write([]byte) (int, error) { return 0, syscall.ENOSPC }

func (f fullDiskFS) Create(name string) (File, error) {
	file, err := f.OSFS.Create(name)
	if err != nil || filepath.Base(name) != preparedName {
		return file, err
	}
	return fullFile{file}, nil
}

// TestPreallocationFailsOnFullDisk checks that a segment that cannot be
// preallocated is created as an ordinary file, with nothing left behind.
func TestPreallocationFailsOnFullDisk(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(fullDiskFS{}, dir, Options{SegmentSize: preallocSegment, Preallocate: true}, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	want := genRecords(rand.New(rand.NewPCG(11, 12)), 0, 400, 400)
	for _, r := range want {
		appendSync(t, w, r)
	}
	w.Close()
	if _, err := os.Stat(filepath.Join(dir, preparedName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed preparation left %s behind (stat: %v)", preparedName, err)
	}
	if n := len(segmentFiles(t, dir)); n < 2 {
		t.Fatalf("%d segments; want the records to have rolled to ordinary files", n)
	}
	w, got := mustOpenOS(t, dir, true)
	defer w.Close()
	equalRecords(t, got, want)
}
