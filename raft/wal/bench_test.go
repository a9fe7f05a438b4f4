package wal

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

// BenchmarkAppendSync measures group commit on the real file system: each
// iteration appends a batch of 256-byte records and syncs once.
func BenchmarkAppendSync(b *testing.B) {
	for _, batch := range []int{1, 10, 100} {
		b.Run(fmt.Sprint("batch=", batch), func(b *testing.B) {
			w, err := Open(OSFS{}, b.TempDir(), Options{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			recs := make([]Record, batch)
			data := make([]byte, 256)
			b.ReportAllocs()
			b.SetBytes(int64(batch * len(data)))
			b.ResetTimer()
			var index uint64
			for b.Loop() {
				for i := range recs {
					index++
					recs[i] = Record{Type: 1, Index: index, Data: data}
				}
				if err := w.Append(recs...); err != nil {
					b.Fatal(err)
				}
				if err := w.Sync(); err != nil {
					b.Fatal(err)
				}
			}
			secs := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)/secs, "fsyncs/s")
			b.ReportMetric(float64(b.N*batch)/secs, "records/s")
		})
	}
}

// BenchmarkRawFsync is the floor AppendSync is compared with: write 4 KiB
// to a file and fsync it, with no WAL code involved.
func BenchmarkRawFsync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fsyncs/s")
}

// BenchmarkMemFSAppendSync shows the cost of the WAL code itself, with
// the simulator's file system.
func BenchmarkMemFSAppendSync(b *testing.B) {
	w, err := Open(NewMemFS(), "/wal", Options{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	recs := make([]Record, 10)
	for i := range recs {
		recs[i] = Record{Type: 1, Data: make([]byte, 256)}
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Append(recs...); err != nil {
			b.Fatal(err)
		}
		if err := w.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDiskStorageWrite is the persister's write path on the
// simulator's file system: a batch of 10 entries of about the size of a
// workload b put, with a new commit index, synced once.
func BenchmarkDiskStorageWrite(b *testing.B) {
	ds, err := OpenDiskStorage(NewMemFS(), "/data", StorageOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer ds.Close()
	ents := make([]raft.Entry, 10)
	data := make([]byte, 300)
	next := uint64(1)
	b.ReportAllocs()
	for b.Loop() {
		for i := range ents {
			ents[i] = raft.Entry{Term: 1, Index: next, Data: data}
			next++
		}
		hs := raft.HardState{Term: 1, Vote: 1, Commit: next - 1}
		if err := ds.Save(hs, ents, nil); err != nil {
			b.Fatal(err)
		}
	}
}
