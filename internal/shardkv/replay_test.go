package shardkv

import (
	"errors"
	"testing"

	"github.com/cairn-db/cairn/internal/kv"
)

// resultErr returns the error an Apply result carries.
func resultErr(res any) error {
	switch r := res.(type) {
	case *kv.Result:
		return r.Err
	case *DeleteResult:
		return r.Err
	}
	return nil
}

// TestApplyAtAppliedIndex: an entry of any kind at an index at or below
// AppliedIndex changes nothing (as in kv.Store). Before the fix, the
// entries Group handles itself took effect anyway: a Reconfigure at an old
// index moved the configuration; a Delete set the shard NotOwned although
// kv.Store.DeleteShard refused to delete (the keys stayed, hidden, in a
// NotOwned shard for good); a GCDone took effect. And if the shard later
// came back, the install added the blob's keys over the leftovers, so a key
// deleted at the other group meanwhile came back from the dead.
func TestApplyAtAppliedIndex(t *testing.T) {
	const n = 2
	a, b := newReplica(t, 1, n), newReplica(t, 2, n)
	c1 := mkConfig(1, gids(1, 1), 2)
	c2 := mkConfig(2, gids(1, 2)) // shard 1: a -> b
	c3 := mkConfig(3, gids(1, 1)) // and back
	for _, r := range []*replica{a, b} {
		r.mustReconfigure(c1)
	}
	k1, k2 := keyIn(n, 1, 0), keyIn(n, 1, 1)
	a.mustPut(k1, "v1")
	a.mustPut(k2, "v2")

	stale := func(r *replica, what string, payload []byte) {
		t.Helper()
		fp, idx := r.fingerprint(), r.g.AppliedIndex()
		for _, at := range []uint64{idx, idx - 1} {
			res := r.g.Apply(at, payload)
			if err := resultErr(res); err != nil && !errors.Is(err, kv.ErrIndexApplied) {
				t.Fatalf("%s at applied index %d: %v", what, at, err)
			}
			if got := r.fingerprint(); got != fp {
				t.Fatalf("%s at applied index %d (applied %d) changed group %d:\n%s\n%s", what, at, idx, r.g.GID(), fp, got)
			}
			if r.g.AppliedIndex() != idx {
				t.Fatalf("%s: applied index moved %d -> %d", what, idx, r.g.AppliedIndex())
			}
		}
	}
	p2, _ := EncodeReconfigure(c2)
	stale(a, "reconfigure", p2)
	stale(a, "put", EncodeKV(delCmd(k1).Marshal()))
	stale(a, "empty entry", nil)
	a.mustReconfigure(c2)
	b.mustReconfigure(c2)
	blob := a.export(2, 1)
	stale(b, "install", EncodeInstall(2, 1, blob))
	b.install(2, 1, blob)
	stale(a, "delete", EncodeDelete(2, 1))
	stale(b, "gc-done", EncodeGCDone(2, 1))
	if r := a.del(2, 1); !r.Done {
		t.Fatalf("delete: %+v", r)
	}
	b.gcDone(2, 1)

	// b deletes k2; the shard comes back to a without it.
	if res := b.kv(delCmd(k2)); res.Err != nil {
		t.Fatal(res.Err)
	}
	for _, r := range []*replica{a, b} {
		r.mustReconfigure(c3)
	}
	a.install(3, 1, b.export(3, 1))
	if v, ok := a.get(k2); ok {
		t.Fatalf("%s, deleted at group 2, is back at group 1 as %q after shard 1 returned", k2, v)
	}
	if v, _ := a.get(k1); v != "v1" {
		t.Fatalf("%s = %q", k1, v)
	}
}
