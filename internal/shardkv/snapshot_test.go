package shardkv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-db/cairn/internal/kv"
)

// midMigration returns A (handing off shards 2 and 3, with hidden data)
// and B (shard 2 installed and gc-pending, shard 3 still pulling), in
// configuration 2 of a 5-shard cluster.
func midMigration(t *testing.T) (a, b *replica) {
	const n = 5
	a, b = newReplica(t, 1, n), newReplica(t, 2, n)
	c1 := mkConfig(1, gids(1, 1, 1, 1, 2))
	c2 := mkConfig(2, gids(1, 1, 2, 2, 2))
	a.mustReconfigure(c1)
	b.mustReconfigure(c1)
	for sh := range 4 {
		for i := range 2 {
			a.mustPut(keyIn(n, sh, i), "a")
		}
	}
	if r := a.appendKV(8, 1, keyIn(n, 2, 0), "+"); r.Err != nil {
		t.Fatal(r.Err)
	}
	b.mustPut(keyIn(n, 4, 0), "b")
	a.mustReconfigure(c2)
	b.mustReconfigure(c2)
	b.install(2, 2, a.export(2, 2))
	a.wantStates(Serving, Serving, HandingOff, HandingOff, NotOwned)
	b.wantStates(NotOwned, NotOwned, GCPending, Pulling, Serving)
	return a, b
}

// sameGroup fails unless x and y are in the same state.
func sameGroup(t *testing.T, x, y *replica) {
	t.Helper()
	if fx, fy := x.fingerprint(), y.fingerprint(); fx != fy {
		t.Fatalf("groups differ:\n%s\n%s", fx, fy)
	}
	if x.g.AppliedIndex() != y.g.AppliedIndex() {
		t.Fatalf("applied index %d vs %d", x.g.AppliedIndex(), y.g.AppliedIndex())
	}
	if !bytes.Equal(x.snapshot(), y.snapshot()) {
		t.Fatal("snapshots differ")
	}
}

func TestSnapshotRoundTripMidMigration(t *testing.T) {
	const n = 5
	a, b := midMigration(t)
	ra, rb := a.restored(), b.restored()
	sameGroup(t, a, ra)
	sameGroup(t, b, rb)
	if st := ra.g.Status(); !st.Config.Equal(a.g.Status().Config) || !st.Prev.Equal(a.g.Status().Prev) {
		t.Fatalf("restored configs %+v", st)
	}
	// Hidden keys of handed-off shards stay hidden after the restore.
	for _, sh := range []int{2, 3} {
		_, err := ra.g.Range(&pb.RangeRequest{Key: []byte(keyIn(n, sh, 0))})
		wantErr(t, "read of a handed-off key after restore", err, ErrWrongGroup)
	}
	if got := ra.all(); len(got) != 4 {
		t.Fatalf("restored a reads %v, want shards 0 and 1 only", got)
	}
	if got := ra.g.KeysPerShard(); !slices.Equal(got, []int{2, 2, 2, 2, 0}) {
		t.Fatalf("restored a holds %v", got)
	}
	// A write to a hidden key is still refused.
	wantErr(t, "write to a handed-off key after restore", ra.put(keyIn(n, 3, 0), "x").Err, ErrWrongGroup)

	// The migration continues from the restored replicas, and the
	// restored old owner exports the same bytes.
	if !bytes.Equal(ra.export(2, 3), a.export(2, 3)) {
		t.Fatal("restored replica exports different bytes")
	}
	rb.install(2, 3, ra.export(2, 3))
	rb.wantStates(NotOwned, NotOwned, GCPending, GCPending, Serving)
	// The session moved: the retry is answered from the cache.
	if r := rb.appendKV(8, 1, keyIn(n, 2, 0), "+"); r.Err != nil {
		t.Fatal(r.Err)
	}
	if v, _ := rb.get(keyIn(n, 2, 0)); v != "a+" {
		t.Fatalf("%q after retry", v)
	}
	for _, sh := range []int{2, 3} {
		if r := ra.del(2, sh); !r.Done {
			t.Fatalf("delete %d: %+v", sh, r)
		}
		rb.gcDone(2, sh)
	}
	ra.wantStates(Serving, Serving, NotOwned, NotOwned, NotOwned)
	rb.wantStates(NotOwned, NotOwned, Serving, Serving, Serving)
	c3 := mkConfig(3, gids(1, 1, 2, 2, 2))
	ra.mustReconfigure(c3)
	rb.mustReconfigure(c3)

	// Restoring over a group in another state replaces it entirely.
	x := newReplica(t, 1, n)
	x.mustReconfigure(mkConfig(1, gids(1, 1, 1, 1, 1)))
	x.mustPut(keyIn(n, 4, 3), "stale")
	if err := x.g.Restore(bytes.NewReader(a.snapshot())); err != nil {
		t.Fatal(err)
	}
	x.idx = a.idx
	sameGroup(t, a, x)
}

// corruptions returns the ways a snapshot can be damaged: every byte of
// the header flipped (and a sample of the rest), and truncations.
func corruptions(snap []byte) map[string][]byte {
	out := map[string][]byte{}
	hdrLen, k := uvarint(snap)
	end := k + int(hdrLen)
	for i := 0; i < len(snap); i++ {
		if i >= end && i%7 != 0 && i != len(snap)-1 {
			continue
		}
		for _, bit := range []byte{0x01, 0x80} {
			c := slices.Clone(snap)
			c[i] ^= bit
			out["flip "+itoa(i)+"/"+itoa(int(bit))] = c
		}
	}
	for l := 0; l < len(snap); l++ {
		if l <= end+2 || l%5 == 0 || l == len(snap)-1 {
			out["truncate "+itoa(l)] = snap[:l]
		}
	}
	longer := binary.AppendUvarint(nil, hdrLen+1)
	longer = append(longer, snap[k:end]...)
	out["header one byte longer"] = append(append(longer, 0), snap[end:]...)
	shorter := binary.AppendUvarint(nil, hdrLen-1)
	out["header one byte shorter"] = append(shorter, snap[k:]...)
	out["empty"] = nil
	out["huge header length"] = append(binary.AppendUvarint(nil, 1<<40), snap[k:]...)
	return out
}

func uvarint(b []byte) (uint64, int) { return binary.Uvarint(b) }

func itoa(i int) string { return strconv.Itoa(i) }

// TestSnapshotCorruptRefused: a damaged snapshot is refused and the group
// is left as it was.
func TestSnapshotCorruptRefused(t *testing.T) {
	a, b := midMigration(t)
	snap := a.snapshot()
	before, beforeSnap := b.fingerprint(), b.snapshot()
	// Restore over a group of the same ID in another state (a.restored()
	// would do, but a second replica of A in config 0 is a sharper check).
	target := newReplica(t, 1, a.g.NumShards())
	target.mustReconfigure(mkConfig(1, gids(1, 1, 1, 1, 2)))
	target.mustPut(keyIn(5, 0, 0), "target")
	tFP, tSnap := target.fingerprint(), target.snapshot()
	for name, c := range corruptions(snap) {
		err := target.g.Restore(bytes.NewReader(c))
		if err == nil {
			t.Fatalf("%s: corrupt snapshot restored", name)
		}
		if !errors.Is(err, ErrCorruptEntry) && !errors.Is(err, kv.ErrCorruptSnapshot) {
			t.Fatalf("%s: error %v does not wrap ErrCorruptEntry or kv.ErrCorruptSnapshot", name, err)
		}
		if target.fingerprint() != tFP || !bytes.Equal(target.snapshot(), tSnap) {
			t.Fatalf("%s: refused restore changed the group", name)
		}
	}
	// Another group's snapshot is refused, as is one with another shard
	// count.
	wantErr(t, "restore of another group's snapshot", a.g.Restore(bytes.NewReader(beforeSnap)), ErrCorruptEntry)
	other := New(1, 6, kvOpts())
	wantErr(t, "restore of a snapshot with another shard count", other.Restore(bytes.NewReader(snap)), ErrCorruptEntry)
	if b.fingerprint() != before {
		t.Fatal("b changed")
	}
	// The intact snapshot still restores.
	if err := target.g.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	target.idx = a.idx
	sameGroup(t, a, target)
}

// TestSnapshotConcurrentReads: reads may run while the apply goroutine
// applies, snapshots and restores (run with -race).
func TestSnapshotConcurrentReads(t *testing.T) {
	a, _ := midMigration(t)
	snap := a.snapshot()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			a.g.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
			a.g.Range(&pb.RangeRequest{Key: []byte(keyIn(5, 0, 0))})
			a.g.Status()
			a.g.KeysPerShard()
			a.g.Export(2, 2)
			a.g.Revision()
			a.g.Stats()
			a.g.AppliedIndex()
		}
	}()
	for i := range 50 {
		a.mustPut(keyIn(5, 0, i%3), "v")
		if _, err := a.g.CaptureSnapshot(); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			if err := a.g.Restore(bytes.NewReader(snap)); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-done
}
