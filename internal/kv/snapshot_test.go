package kv

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// busyStore returns a store that went through every kind of entry, and the
// entries themselves.
func busyStore(t testing.TB, seed uint64, n int) (*Store, [][]byte) {
	rng := rand.New(rand.NewPCG(seed, 1))
	s := NewStore(Options{SessionTTL: time.Minute})
	var entries [][]byte
	for i := 0; i < n; i++ {
		data := randomCommand(rng, int64(i)*int64(time.Second)).Marshal()
		switch rng.IntN(20) {
		case 0:
			data = nil // leader no-op
		case 1:
			data = []byte{0xee, byte(i)} // garbage
		}
		entries = append(entries, data)
		s.Apply(uint64(i+1), data)
	}
	return s, entries
}

func TestSnapshotRoundTrip(t *testing.T) {
	s, _ := busyStore(t, 1, 2000)
	if s.Stats().Sessions == 0 || s.Stats().Keys == 0 {
		t.Fatalf("fixture too small: %+v", s.Stats())
	}
	snap := snapshotBytes(t, s)
	r := NewStore(Options{SessionTTL: time.Minute})
	r.Apply(1, (&Command{Put: &pb.PutRequest{Key: []byte("junk"), Value: []byte("overwritten")}}).Marshal())
	if err := r.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, r), snap) {
		t.Fatal("restored store writes a different snapshot")
	}
	if r.Revision() != s.Revision() || r.AppliedIndex() != s.AppliedIndex() || r.Stats() != s.Stats() {
		t.Fatalf("restored %d/%d/%+v, want %d/%d/%+v", r.Revision(), r.AppliedIndex(), r.Stats(), s.Revision(), s.AppliedIndex(), s.Stats())
	}
	all := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}
	a, _ := s.Range(all)
	b, _ := r.Range(all)
	sameMsg(t, "all keys", b, a)
	// Both continue identically.
	rng := rand.New(rand.NewPCG(9, 9))
	for i := 0; i < 500; i++ {
		data := randomCommand(rng, int64(2000+i)*int64(time.Second)).Marshal()
		idx := s.AppliedIndex() + 1
		x, y := s.Apply(idx, data), r.Apply(idx, data)
		if !bytes.Equal(encodeResult(x), encodeResult(y)) {
			t.Fatalf("entry %d: results differ after restore:\n%+v\n%+v", idx, x, y)
		}
	}
	if !bytes.Equal(snapshotBytes(t, s), snapshotBytes(t, r)) {
		t.Fatal("stores diverged after restore")
	}
}

func TestSnapshotEmptyStore(t *testing.T) {
	s := NewStore(Options{})
	r := NewStore(Options{})
	if err := r.Restore(bytes.NewReader(snapshotBytes(t, s))); err != nil {
		t.Fatal(err)
	}
	if r.Revision() != 1 {
		t.Fatalf("revision %d", r.Revision())
	}
}

// TestDeterminism feeds the same entries to two stores: they must write
// identical snapshots (map order and wall-clock time must not leak).
func TestDeterminism(t *testing.T) {
	s1, entries := busyStore(t, 42, 3000)
	s2 := NewStore(Options{SessionTTL: time.Minute})
	for i, e := range entries {
		s2.Apply(uint64(i+1), e)
	}
	if !bytes.Equal(snapshotBytes(t, s1), snapshotBytes(t, s2)) {
		t.Fatal("same entries, different snapshots")
	}
}

func TestRestoreCorrupt(t *testing.T) {
	s, _ := busyStore(t, 3, 300)
	snap := snapshotBytes(t, s)
	target, _ := busyStore(t, 4, 100)
	before := snapshotBytes(t, target)
	check := func(name string, data []byte) {
		t.Helper()
		err := target.Restore(bytes.NewReader(data))
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("%s: error %v, want ErrCorruptSnapshot", name, err)
		}
		if !bytes.Equal(snapshotBytes(t, target), before) {
			t.Fatalf("%s: failed restore changed the store", name)
		}
	}
	check("empty", nil)
	check("not a snapshot", []byte("hello, world, this is not a snapshot"))
	check("trailing byte", append(append([]byte(nil), snap...), 0))
	for n := 0; n < len(snap); n += 1 + n/50 {
		check(fmt.Sprintf("truncated to %d bytes", n), snap[:n])
	}
	rng := rand.New(rand.NewPCG(5, 5))
	for i := 0; i < 300; i++ {
		bad := append([]byte(nil), snap...)
		pos := rng.IntN(len(bad))
		bad[pos] ^= byte(1 + rng.IntN(255))
		check(fmt.Sprintf("byte %d flipped", pos), bad)
	}
	// A corrupt snapshot names the problem.
	bad := append([]byte(nil), snap...)
	bad[len(bad)-1] ^= 1
	if err := target.Restore(bytes.NewReader(bad)); err == nil || !bytes.Contains([]byte(err.Error()), []byte("checksum")) {
		t.Fatalf("flipped checksum: %v", err)
	}
}

type failingReader struct{ err error }

func (f failingReader) Read([]byte) (int, error) { return 0, f.err }

func TestRestoreReadError(t *testing.T) {
	s := NewStore(Options{})
	boom := errors.New("disk on fire")
	if err := s.Restore(failingReader{boom}); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
}

type failingWriter struct{ n int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n -= len(p); f.n < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestSnapshotWriteError(t *testing.T) {
	s, _ := busyStore(t, 6, 200)
	if err := s.Snapshot(&failingWriter{n: 10}); err == nil {
		t.Fatal("no error from a failing writer")
	}
}

// TestConcurrentReaders runs Range, Stats and Snapshot while entries are
// applied; run with -race.
func TestConcurrentReaders(t *testing.T) {
	s := NewStore(Options{})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				switch g {
				case 0:
					_, _ = s.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 10})
				case 1:
					var buf bytes.Buffer
					if err := s.Snapshot(&buf); err != nil {
						t.Error(err)
						return
					}
					if err := NewStore(Options{}).Restore(&buf); err != nil {
						t.Error(err)
						return
					}
				default:
					_ = s.Stats()
					_ = s.Revision()
				}
			}
		}(g)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for i := 1; i <= 3000; i++ {
		s.Apply(uint64(i), randomCommand(rng, int64(i)).Marshal())
	}
	close(stop)
	wg.Wait()
}

// TestCaptureSnapshotIsolated captures a snapshot of a store large enough
// for a multi-level tree, then writes to it in every way (new keys,
// overwrites, prev_kv, ignore_value, appends, deletes, a txn that rolls
// back): the captured snapshot must still write the state of the capture.
func TestCaptureSnapshotIsolated(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 5000; i++ {
		h.put(fmt.Sprintf("k%05d", 2*i), fmt.Sprintf("v%d", i))
	}
	want := snapshotBytes(t, h.s)
	write := h.s.CaptureSnapshot()
	rng := rand.New(rand.NewPCG(5, 5))
	for i := 0; i < 3000; i++ {
		k := []byte(fmt.Sprintf("k%05d", rng.IntN(10000)))
		switch rng.IntN(6) {
		case 0:
			h.apply(&Command{Put: &pb.PutRequest{Key: k, Value: []byte("new"), PrevKv: true}})
		case 1:
			h.apply(&Command{Put: &pb.PutRequest{Key: k, IgnoreValue: true}})
		case 2:
			h.apply(&Command{Append: &AppendRequest{Key: k, Value: []byte("+")}})
		case 3:
			h.apply(&Command{DeleteRange: &pb.DeleteRangeRequest{Key: k, RangeEnd: append(k[:len(k):len(k)], '5')}})
		case 4:
			// A txn that writes, then fails on a missing key and rolls back.
			h.apply(&Command{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{
				opPut(string(k), "txn"),
				{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("absent"), IgnoreValue: true}}},
			}}})
		default:
			h.put(string(k), "overwritten")
		}
	}
	var got bytes.Buffer
	if err := write(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatal("a captured snapshot changed with writes after the capture")
	}
}
