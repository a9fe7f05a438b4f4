package kv

import (
	"bytes"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Replicas that applied the same entries hash alike, a restored snapshot
// hashes like its source, and any change to a key's value or metadata
// changes the hash.
func TestHash(t *testing.T) {
	a, entries := busyStore(t, 3, 1500)
	b := NewStore(Options{SessionTTL: time.Minute})
	for i, e := range entries {
		b.Apply(uint64(i+1), e)
	}
	ha, ra := a.Hash()
	hb, rb := b.Hash()
	if ha != hb || ra != rb || ra != a.Revision() {
		t.Fatalf("same entries: hash %08x@%d vs %08x@%d (revision %d)", ha, ra, hb, rb, a.Revision())
	}
	r := NewStore(Options{SessionTTL: time.Minute})
	if err := r.Restore(bytes.NewReader(snapshotBytes(t, a))); err != nil {
		t.Fatal(err)
	}
	if h, _ := r.Hash(); h != ha {
		t.Fatalf("restored store hashes %08x, its source %08x", h, ha)
	}

	put := func(s *Store, k, v string) {
		s.Apply(s.AppliedIndex()+1, (&Command{Put: &pb.PutRequest{Key: []byte(k), Value: []byte(v)}}).Marshal())
	}
	// The same value written again changes the key's version and mod
	// revision: the hash must see metadata, not only values.
	resp, _ := a.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 1})
	if len(resp.Kvs) == 0 {
		t.Fatal("fixture holds no keys")
	}
	k, v := string(resp.Kvs[0].Key), string(resp.Kvs[0].Value)
	put(a, k, v)
	if h, _ := a.Hash(); h == ha {
		t.Fatal("rewriting a key with its own value left the hash unchanged")
	}
	put(b, k, v+"x")
	if h1, _ := a.Hash(); h1 == func() uint32 { h, _ := b.Hash(); return h }() {
		t.Fatal("different values hash alike")
	}
	if h, _ := NewStore(Options{}).Hash(); h != 0 {
		t.Fatalf("empty store hashes %08x, want 0 (CRC of nothing)", h)
	}
}
