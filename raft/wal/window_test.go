package wal

import (
	"bytes"
	"math/rand/v2"
	"os"
	"testing"
)

// Recovery reads a segment in windows of readWindow bytes. These tests use
// segments several windows long, records that straddle window boundaries
// and one record larger than a window.

func openWindowed(t *testing.T, dir string) (*WAL, []Record) {
	t.Helper()
	var recs []Record
	w, err := Open(OSFS{}, dir, Options{SegmentSize: 8 << 20, Preallocate: true}, func(r Record) error {
		recs = append(recs, r) // no clone: records may keep pointing into their window
		return nil
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return w, recs
}

func windowedRecords(t *testing.T, dir string) []Record {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 11))
	w, _ := openWindowed(t, dir)
	var want []Record
	for len(want) < 60 {
		recs := genRecords(rng, uint64(len(want)), 1+rng.IntN(4), 100<<10)
		if len(want) == 20 {
			big := make([]byte, readWindow+readWindow/2)
			for i := range big {
				big[i] = byte(rng.Uint32())
			}
			recs = append(recs, Record{Type: 1, Index: uint64(len(want) + len(recs) + 1), Data: big})
		}
		appendSync(t, w, recs...)
		want = append(want, recs...)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return want
}

func TestRecoveryAcrossReadWindows(t *testing.T) {
	dir := t.TempDir()
	want := windowedRecords(t, dir)
	w, got := openWindowed(t, dir)
	defer w.Close()
	equalRecords(t, got, want)
	if st := w.Stats(); st.TornBytes != 0 {
		t.Fatalf("clean log reported %d torn bytes", st.TornBytes)
	}
}

// Garbage after more than a window of zeros in the last segment is a torn
// write that landed out of order: truncated, every record before it kept,
// as when the segment was read whole.
func TestTornTailBeyondAWindowOfZeros(t *testing.T) {
	dir := t.TempDir()
	want := windowedRecords(t, dir)
	segs := segmentFiles(t, dir)
	last := segs[len(segs)-1]
	w, _ := openWindowed(t, dir)
	end := w.size
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(last, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	garbageAt := end + 2*readWindow + 100
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xAB}, 300), garbageAt); err != nil {
		t.Fatal(err)
	}
	f.Close()
	w, got := openWindowed(t, dir)
	defer w.Close()
	equalRecords(t, got, want)
	st := w.Stats()
	if st.TornOffset != end || st.TornBytes == 0 {
		t.Fatalf("torn tail at %d (%d bytes), want one at the end of the records, %d", st.TornOffset, st.TornBytes, end)
	}
}
