package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// benchKeys is the size of the benchmark store: about a million keys with
// 256-byte values (~350 MB in memory).
const benchKeys = 1 << 20

func benchKey(i int) []byte { return []byte(fmt.Sprintf("/registry/bench/%08d", i)) }

var (
	benchOnce  sync.Once
	benchStore *Store
	benchSeq   uint64 // next session sequence number; the store outlives one benchmark run
)

// loadedStore returns the shared benchmark store, filled once through
// Apply. Benchmarks that write only overwrite existing keys, so the store
// stays the same size.
func loadedStore(b *testing.B) *Store {
	benchOnce.Do(func() {
		s := NewStore(Options{})
		value := make([]byte, 256)
		for i := 0; i < benchKeys; i++ {
			c := &Command{Put: &pb.PutRequest{Key: benchKey(i), Value: value}}
			if r := s.Apply(uint64(i+1), c.Marshal()); r.Err != nil {
				panic(r.Err)
			}
		}
		benchStore = s
	})
	return benchStore
}

// BenchmarkApplyPut applies encoded put entries (256-byte values) to random
// existing keys of a ~1M-key store: decode, tree update, response.
func BenchmarkApplyPut(b *testing.B) {
	s := loadedStore(b)
	rng := rand.New(rand.NewPCG(1, 1))
	entries := make([][]byte, 4096)
	for i := range entries {
		value := make([]byte, 256)
		binary.LittleEndian.PutUint64(value, rng.Uint64())
		entries[i] = (&Command{ClientID: 0, Put: &pb.PutRequest{Key: benchKey(rng.IntN(benchKeys)), Value: value}}).Marshal()
	}
	benchApply(b, s, entries)
}

// benchApply times applying entries to s in turn, b.N times in all, as
// puts of 256-byte values.
func benchApply(b *testing.B, s *Store, entries [][]byte) {
	index := s.AppliedIndex()
	b.ReportAllocs()
	b.SetBytes(256)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		index++
		if r := s.Apply(index, entries[i%len(entries)]); r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}

// BenchmarkApplyPutSession is BenchmarkApplyPut with an exactly-once
// session on every command (the result is encoded into the table).
func BenchmarkApplyPutSession(b *testing.B) {
	s := loadedStore(b)
	rng := rand.New(rand.NewPCG(2, 2))
	keys := make([][]byte, 4096)
	for i := range keys {
		keys[i] = benchKey(rng.IntN(benchKeys))
	}
	value := make([]byte, 256)
	entries := make([][]byte, b.N)
	for i := range entries {
		benchSeq++
		entries[i] = (&Command{ClientID: uint64(1 + i%64), Seq: benchSeq, Put: &pb.PutRequest{Key: keys[i%len(keys)], Value: value}}).Marshal()
	}
	index := s.AppliedIndex()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		index++
		if r := s.Apply(index, entries[i]); r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}

// BenchmarkRangeSingleKey reads one random key of a ~1M-key store.
func BenchmarkRangeSingleKey(b *testing.B) {
	s := loadedStore(b)
	rng := rand.New(rand.NewPCG(3, 3))
	reqs := make([]*pb.RangeRequest, 4096)
	for i := range reqs {
		reqs[i] = &pb.RangeRequest{Key: benchKey(rng.IntN(benchKeys))}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := s.Range(reqs[i%len(reqs)])
		if err != nil || len(resp.Kvs) != 1 {
			b.Fatal(err)
		}
	}
}

// BenchmarkRangePrefix100 reads 100 consecutive keys.
func BenchmarkRangePrefix100(b *testing.B) {
	s := loadedStore(b)
	req := &pb.RangeRequest{Key: []byte("/registry/bench/000100"), RangeEnd: []byte("/registry/bench/000101")}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := s.Range(req)
		if err != nil || len(resp.Kvs) != 100 {
			b.Fatal(err, len(resp.Kvs))
		}
	}
}

// BenchmarkSnapshot writes a snapshot of the ~1M-key store.
func BenchmarkSnapshot(b *testing.B) {
	s := loadedStore(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var n countingWriter
		if err := s.Snapshot(&n); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(n))
	}
}

type countingWriter int

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

// The BenchmarkApplyPut* benchmarks below model etcd's benchmark tool
// (benchmark put --sequential-keys --key-size 8 --val-size 256): 8-byte
// keys holding a zigzag varint of a sequence number, 256-byte values, no
// session, on a store that already holds putBenchKeys such keys.
const putBenchKeys = 100_000

func putBenchKey(i int) []byte {
	k := make([]byte, 8)
	binary.PutVarint(k, int64(i))
	return k
}

// putBenchEntries encodes n puts of the keys key(0..n-1), in order.
func putBenchEntries(n int, key func(i int) int, prevKV bool) [][]byte {
	entries := make([][]byte, n)
	for i := range entries {
		value := make([]byte, 256)
		binary.LittleEndian.PutUint64(value, uint64(i))
		entries[i] = (&Command{Put: &pb.PutRequest{Key: putBenchKey(key(i)), Value: value, PrevKv: prevKV}}).Marshal()
	}
	return entries
}

// putBenchSnapshot returns a snapshot of a store holding putBenchKeys keys,
// which each benchmark restores into a fresh store (Restore builds the tree
// directly, with no clone sharing its nodes).
var putBenchSnapshot = sync.OnceValue(func() []byte {
	s := NewStore(Options{})
	for i, e := range putBenchEntries(putBenchKeys, func(i int) int { return i }, false) {
		if r := s.Apply(uint64(i+1), e); r.Err != nil {
			panic(r.Err)
		}
	}
	var buf bytes.Buffer
	if err := s.Snapshot(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
})

func putBenchStore(b *testing.B) *Store {
	s := NewStore(Options{})
	if err := s.Restore(bytes.NewReader(putBenchSnapshot())); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkApplyPutNewKey puts keys the store does not hold yet. Every
// putBenchKeys puts the store is restored again, with the timer stopped,
// so the tree stays between 100k and 200k keys however large b.N is.
func BenchmarkApplyPutNewKey(b *testing.B) {
	entries := putBenchEntries(putBenchKeys, func(i int) int { return putBenchKeys + i }, false)
	var s *Store
	var index uint64
	b.ReportAllocs()
	b.SetBytes(256)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%len(entries) == 0 {
			b.StopTimer()
			s = putBenchStore(b)
			index = s.AppliedIndex()
			b.StartTimer()
		}
		index++
		if r := s.Apply(index, entries[i%len(entries)]); r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}

// BenchmarkApplyPutOverwrite puts the keys of a 100k-key store again, in
// sequence.
func BenchmarkApplyPutOverwrite(b *testing.B) {
	benchmarkApplyPutOverwrite(b, false)
}

// BenchmarkApplyPutOverwritePrevKV is BenchmarkApplyPutOverwrite with
// prev_kv set, so the response carries the old key-value.
func BenchmarkApplyPutOverwritePrevKV(b *testing.B) {
	benchmarkApplyPutOverwrite(b, true)
}

func benchmarkApplyPutOverwrite(b *testing.B, prevKV bool) {
	entries := putBenchEntries(putBenchKeys, func(i int) int { return i }, prevKV)
	benchApply(b, putBenchStore(b), entries)
}
