package shardkv

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/internal/shard"
)

// migrationScenario runs a full move of shards 3 and 4 from A to B and
// back, checking every step, and returns both replicas (whose logs the
// determinism test replays).
func migrationScenario(t *testing.T) (a, b *replica) {
	const n = 6
	a, b = newReplica(t, 1, n), newReplica(t, 2, n)
	c1 := mkConfig(1, gids(1, 1, 1, 1, 1, 1), 2)
	c2 := mkConfig(2, gids(1, 1, 1, 2, 2, 1)) // shards 3, 4: A -> B
	c3 := mkConfig(3, gids(1, 1, 1, 1, 2, 1)) // shard 3: B -> A
	a.mustReconfigure(c1)
	b.mustReconfigure(c1)

	// A owns everything: data in every shard, and a session.
	for sh := range n {
		for i := range 3 {
			a.mustPut(keyIn(n, sh, i), fmt.Sprintf("a-%d-%d", sh, i))
		}
	}
	k3 := keyIn(n, 3, 0)
	first := a.appendKV(42, 1, k3, "+1")
	if first.Err != nil {
		t.Fatalf("append: %v", first.Err)
	}
	wantK3 := "a-3-0+1"
	aRev := a.g.Revision()

	// B moves to config 2 first; A is not there yet.
	b.mustReconfigure(c2)
	b.wantStates(NotOwned, NotOwned, NotOwned, Pulling, Pulling, NotOwned)
	_, err := a.g.Export(2, 3)
	wantErr(t, "export before the old owner applied the config", err, ErrNotReady)
	if r := a.del(2, 3); !errors.Is(r.Err, ErrNotReady) || r.Done {
		t.Fatalf("delete before config: %+v", r)
	}
	// The client retries at B (it has a newer config): refused while
	// pulling, and the refusal records nothing.
	wantErr(t, "append at a pulling group", b.appendKV(42, 1, k3, "+1").Err, ErrWrongGroup)

	a.mustReconfigure(c2)
	a.wantStates(Serving, Serving, Serving, HandingOff, HandingOff, Serving)
	if a.g.Revision() != aRev {
		t.Fatal("reconfiguration spent a revision")
	}
	for _, bad := range []struct {
		num  uint64
		sh   int
		want error
	}{{2, 0, ErrShardGone}, {1, 3, ErrShardGone}, {3, 3, ErrNotReady}, {2, 99, ErrShardGone}, {2, -1, ErrShardGone}} {
		_, err := a.g.Export(bad.num, bad.sh)
		wantErr(t, fmt.Sprintf("export(%d, %d)", bad.num, bad.sh), err, bad.want)
	}
	// B is at config 2 but does not hold the shards: it cannot export.
	_, err = b.g.Export(2, 3)
	wantErr(t, "export at the puller", err, ErrShardGone)

	blob3, blob4 := a.export(2, 3), a.export(2, 4)
	if !bytes.Equal(blob3, a.export(2, 3)) {
		t.Fatal("two exports of the same shard differ")
	}
	// Writes at the old owner are refused now.
	wantErr(t, "append at the old owner", a.appendKV(42, 2, k3, "+2").Err, ErrWrongGroup)

	// Stale, misdirected and corrupt installs change nothing.
	b.install(1, 3, blob3)
	b.install(3, 3, blob3)
	b.install(2, 0, a.export(2, 3)[:0])
	b.install(2, 3, blob3[:len(blob3)-1])
	corrupt := slices.Clone(blob3)
	corrupt[len(corrupt)/2] ^= 0x10
	b.install(2, 3, corrupt)
	b.wantStates(NotOwned, NotOwned, NotOwned, Pulling, Pulling, NotOwned)
	if got := b.g.KeysPerShard(); !slices.Equal(got, make([]int, n)) {
		t.Fatalf("b holds keys after refused installs: %v", got)
	}
	if b.g.AppliedIndex() != b.idx {
		t.Fatalf("refused installs: applied index %d, want %d", b.g.AppliedIndex(), b.idx)
	}
	// A corrupt shard number in the entry.
	b.apply(EncodeInstall(2, 6, blob3))
	b.wantStates(NotOwned, NotOwned, NotOwned, Pulling, Pulling, NotOwned)

	b.install(2, 3, blob3)
	b.wantStates(NotOwned, NotOwned, NotOwned, GCPending, Pulling, NotOwned)
	if b.g.Revision() < aRev {
		t.Fatalf("b's revision %d is below the installed shard's %d", b.g.Revision(), aRev)
	}
	// B serves shard 3 at once (reads and writes), not yet shard 4.
	if v, ok := b.get(k3); !ok || v != wantK3 {
		t.Fatalf("b reads %s = %q, %v; want %q", k3, v, ok, wantK3)
	}
	got := b.all()
	if len(got) != 3 {
		t.Fatalf("b reads %v, want shard 3's three keys", got)
	}
	_, err = b.g.Range(&pb.RangeRequest{Key: []byte(keyIn(n, 4, 0))})
	wantErr(t, "read of a still-pulling shard", err, ErrWrongGroup)

	// Exactly once across the move: the retry finds the cached result.
	rev := b.g.Revision()
	retry := b.appendKV(42, 1, k3, "+1")
	if retry.Err != nil || retry.Append == nil || *retry.Append != *first.Append {
		t.Fatalf("retried append at b: %+v, want cached %+v", retry, first.Append)
	}
	if v, _ := b.get(k3); v != wantK3 || b.g.Revision() != rev {
		t.Fatalf("retry applied again: %q, revision %d -> %d", v, rev, b.g.Revision())
	}
	if r := b.appendKV(42, 2, k3, "+2"); r.Err != nil || r.Append.Length != int64(len(wantK3)+2) || r.Append.Revision != rev+1 {
		t.Fatalf("next append at b: %+v", r)
	}
	wantK3 += "+2"
	wantErr(t, "stale sequence at b", b.appendKV(42, 1, k3, "+1").Err, kv.ErrStaleSequence)
	b.mustPut(keyIn(n, 3, 7), "b-new")

	// A duplicate install (a retried pull) must not roll shard 3 back.
	b.install(2, 3, blob3)
	if v, _ := b.get(k3); v != wantK3 {
		t.Fatalf("duplicate install rolled %s back to %q", k3, v)
	}
	b.install(2, 4, blob4)
	b.wantStates(NotOwned, NotOwned, NotOwned, GCPending, GCPending, NotOwned)
	if got := b.g.KeysPerShard(); !slices.Equal(got, []int{0, 0, 0, 4, 3, 0}) {
		t.Fatalf("b KeysPerShard %v", got)
	}

	// GC-done before the delete happened is ignored if it names another
	// configuration.
	b.gcDone(1, 3)
	b.gcDone(3, 3)
	b.wantStates(NotOwned, NotOwned, NotOwned, GCPending, GCPending, NotOwned)

	// A deletes its copies.
	if got := a.g.KeysPerShard(); !slices.Equal(got, []int{3, 3, 3, 3, 3, 3}) {
		t.Fatalf("a KeysPerShard before delete %v", got)
	}
	aRev = a.g.Revision()
	if r := a.del(2, 3); !r.Done || r.Err != nil {
		t.Fatalf("delete: %+v", r)
	}
	a.wantStates(Serving, Serving, Serving, NotOwned, HandingOff, Serving)
	if got := a.g.KeysPerShard(); !slices.Equal(got, []int{3, 3, 3, 0, 3, 3}) {
		t.Fatalf("a KeysPerShard after delete %v", got)
	}
	if a.g.Revision() != aRev {
		t.Fatal("delete spent a revision")
	}
	_, err = a.g.Export(2, 3)
	wantErr(t, "export after delete", err, ErrShardGone)
	// Duplicates are harmless and still answer Done.
	snap := a.fingerprint()
	if r := a.del(2, 3); !r.Done || r.Err != nil {
		t.Fatalf("duplicate delete: %+v", r)
	}
	if r := a.del(1, 3); !r.Done || r.Err != nil {
		t.Fatalf("delete of an older configuration: %+v", r)
	}
	if r := a.apply(EncodeDelete(2, 6)).(*DeleteResult); r.Done || !errors.Is(r.Err, ErrCorruptEntry) {
		t.Fatalf("delete of shard 6: %+v", r)
	}
	if r := a.apply([]byte{opDelete, 0x80}).(*DeleteResult); r.Done || !errors.Is(r.Err, ErrCorruptEntry) {
		t.Fatalf("corrupt delete: %+v", r)
	}
	if got := a.fingerprint(); got != snap {
		t.Fatal("duplicate deletes changed a's state")
	}
	// A cannot move on while shard 4 is handed off.
	if a.reconfigure(c3) {
		t.Fatal("a applied config 3 while handing off shard 4")
	}
	b.gcDone(2, 3)
	b.wantStates(NotOwned, NotOwned, NotOwned, Serving, GCPending, NotOwned)
	b.gcDone(2, 3) // duplicate
	b.wantStates(NotOwned, NotOwned, NotOwned, Serving, GCPending, NotOwned)
	if b.reconfigure(c3) {
		t.Fatal("b applied config 3 while shard 4 is gc-pending")
	}
	if r := a.del(2, 4); !r.Done || r.Err != nil {
		t.Fatalf("delete: %+v", r)
	}
	if got := a.g.KeysPerShard(); !slices.Equal(got, []int{3, 3, 3, 0, 0, 3}) {
		t.Fatalf("a KeysPerShard after deletes %v", got)
	}
	b.gcDone(2, 4)
	b.wantStates(NotOwned, NotOwned, NotOwned, Serving, Serving, NotOwned)

	// Both move on; shard 3 goes back to A, with B's writes and the
	// session.
	a.mustReconfigure(c3)
	b.mustReconfigure(c3)
	a.wantStates(Serving, Serving, Serving, Pulling, NotOwned, Serving)
	b.wantStates(NotOwned, NotOwned, NotOwned, HandingOff, Serving, NotOwned)
	a.install(3, 3, b.export(3, 3))
	if v, _ := a.get(k3); v != wantK3 {
		t.Fatalf("a reads %s = %q after the return, want %q", k3, v, wantK3)
	}
	if v, _ := a.get(keyIn(n, 3, 7)); v != "b-new" {
		t.Fatalf("b's new key lost on the way back: %q", v)
	}
	rev = a.g.Revision()
	if r := a.appendKV(42, 2, k3, "+2"); r.Err != nil || r.Append.Length != int64(len(wantK3)) {
		t.Fatalf("retry of seq 2 at a: %+v", r)
	}
	if v, _ := a.get(k3); v != wantK3 || a.g.Revision() != rev {
		t.Fatalf("seq 2 applied twice: %q", v)
	}
	if r := b.del(3, 3); !r.Done {
		t.Fatalf("delete at b: %+v", r)
	}
	a.gcDone(3, 3)
	a.wantStates(Serving, Serving, Serving, Serving, NotOwned, Serving)
	b.wantStates(NotOwned, NotOwned, NotOwned, NotOwned, Serving, NotOwned)
	if got := b.g.KeysPerShard(); !slices.Equal(got, []int{0, 0, 0, 0, 3, 0}) {
		t.Fatalf("b KeysPerShard at the end %v", got)
	}
	c4 := mkConfig(4, gids(1, 1, 1, 1, 2, 1))
	a.mustReconfigure(c4)
	b.mustReconfigure(c4)
	return a, b
}

func TestMigration(t *testing.T) { migrationScenario(t) }

// TestDeterminism: replicas fed the same entries end in the same state,
// byte for byte, after every entry; and they answer every entry alike.
func TestDeterminism(t *testing.T) {
	a, b := migrationScenario(t)
	for _, src := range []*replica{a, b} {
		twin := newReplica(t, src.g.GID(), src.g.NumShards())
		other := newReplica(t, src.g.GID(), src.g.NumShards())
		for i, e := range src.log {
			r1 := twin.g.Apply(e.index, e.payload)
			r2 := other.g.Apply(e.index, e.payload)
			if describeResult(r1) != describeResult(r2) {
				t.Fatalf("entry %d: results differ: %+v vs %+v", i, r1, r2)
			}
			if i%7 == 0 || i == len(src.log)-1 {
				if !bytes.Equal(snapshotOf(t, twin.g), snapshotOf(t, other.g)) {
					t.Fatalf("group %d: snapshots differ after entry %d", src.g.GID(), e.index)
				}
			}
		}
		if !bytes.Equal(snapshotOf(t, twin.g), src.snapshot()) {
			t.Fatalf("group %d: replay differs from the original", src.g.GID())
		}
	}
}

// TestApplyOddEntries: empty, unknown and corrupt entries are answered
// deterministically and only record their index.
func TestApplyOddEntries(t *testing.T) {
	a := newReplica(t, 1, 4)
	a.mustReconfigure(mkConfig(1, gids(1, 1, 1, 1)))
	a.mustPut(keyIn(4, 0, 0), "v")
	rev, keys := a.g.Revision(), a.g.KeysPerShard()
	if res := a.apply(nil); res != nil {
		t.Fatalf("empty entry: %v", res)
	}
	res, ok := a.apply([]byte{99, 1, 2}).(*kv.Result)
	if !ok || !errors.Is(res.Err, ErrCorruptEntry) {
		t.Fatalf("unknown kind: %+v", res)
	}
	res, ok = a.apply(EncodeKV([]byte{0xff, 0xff})).(*kv.Result)
	if !ok || !errors.Is(res.Err, kv.ErrCorruptCommand) {
		t.Fatalf("corrupt kv command: %+v", res)
	}
	if res := a.apply([]byte{opGCDone}); res != nil {
		t.Fatalf("corrupt gc-done: %v", res)
	}
	if res := a.apply([]byte{opInstall, 1}); res != nil {
		t.Fatalf("corrupt install: %v", res)
	}
	a.idx++
	a.g.Skip(a.idx)
	if a.g.AppliedIndex() != a.idx || a.g.Revision() != rev || !slices.Equal(keys, a.g.KeysPerShard()) {
		t.Fatalf("odd entries changed the state: applied %d/%d", a.g.AppliedIndex(), a.idx)
	}
	a.wantStates(Serving, Serving, Serving, Serving)
	if st := a.g.Stats(); st.Keys != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestExportIsShardOnly: the blob of one shard holds that shard's keys
// only (hidden keys of other handed-off shards are not exported), plus
// the whole session table.
func TestExportIsShardOnly(t *testing.T) {
	const n = 4
	a, b := newReplica(t, 1, n), newReplica(t, 2, n)
	c1 := mkConfig(1, gids(1, 1, 1, 1), 2)
	c2 := mkConfig(2, gids(1, 2, 2, 1))
	for _, r := range []*replica{a, b} {
		r.mustReconfigure(c1)
	}
	for sh := range n {
		if r := a.appendKV(uint64(10+sh), 1, keyIn(n, sh, 0), "x"); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	for _, r := range []*replica{a, b} {
		r.mustReconfigure(c2)
	}
	b.install(2, 1, a.export(2, 1))
	if got := b.g.KeysPerShard(); !slices.Equal(got, []int{0, 1, 0, 0}) {
		t.Fatalf("b holds %v after installing shard 1", got)
	}
	if st := b.g.Stats(); st.Sessions != n {
		t.Fatalf("b has %d sessions, want %d (the whole table)", st.Sessions, n)
	}
	_ = shard.NoGroup
}

// TestDeleteOnlyHandedOff: a delete entry naming a shard the group serves,
// pulls or has not got at that configuration (a misdirected or forged
// request) drops nothing.
func TestDeleteOnlyHandedOff(t *testing.T) {
	const n = 4
	a, b := newReplica(t, 1, n), newReplica(t, 2, n)
	c1 := mkConfig(1, gids(1, 1, 2, 2))
	c2 := mkConfig(2, gids(1, 2, 1, 2)) // shard 1: 1 -> 2; shard 2: 2 -> 1
	for _, r := range []*replica{a, b} {
		r.mustReconfigure(c1)
	}
	for sh := range n {
		r := a
		if sh >= 2 {
			r = b
		}
		r.mustPut(keyIn(n, sh, 0), "v")
	}
	for _, r := range []*replica{a, b} {
		r.mustReconfigure(c2)
	}
	a.install(2, 2, b.export(2, 2)) // a: shard 2 GCPending
	a.wantStates(Serving, HandingOff, GCPending, NotOwned)
	b.wantStates(NotOwned, Pulling, HandingOff, Serving)
	fa, fb := a.fingerprint(), b.fingerprint()
	for sh := range n {
		for _, r := range []*replica{a, b} {
			if r.states()[sh] == HandingOff {
				continue
			}
			r.del(2, sh)
		}
	}
	if got := a.fingerprint(); got != fa {
		t.Fatalf("misdirected deletes changed a:\n%s\n%s", fa, got)
	}
	if got := b.fingerprint(); got != fb {
		t.Fatalf("misdirected deletes changed b:\n%s\n%s", fb, got)
	}
}

// TestRangeServed: RangeServed reports the served shards with the answer.
func TestRangeServed(t *testing.T) {
	a, b := midMigration(t) // a: S S H H N; b: N N G P S
	const n = 5
	for _, r := range []*replica{a, b} {
		want := make([]bool, n)
		for sh, st := range r.states() {
			want[sh] = st == Serving || st == GCPending
		}
		resp, served, err := r.g.RangeServed(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
		if err != nil || !slices.Equal(served, want) {
			t.Fatalf("group %d: served %v, want %v (err %v)", r.g.GID(), served, want, err)
		}
		for _, kv := range resp.Kvs {
			if !want[r.g.ShardOf(kv.Key)] {
				t.Fatalf("group %d: ranged read returned %q of unserved shard", r.g.GID(), kv.Key)
			}
		}
		if int(resp.Count) != len(r.all()) {
			t.Fatalf("group %d: count %d, Range returns %d", r.g.GID(), resp.Count, len(r.all()))
		}
		for sh := range n {
			_, served, err := r.g.RangeServed(&pb.RangeRequest{Key: []byte(keyIn(n, sh, 0))})
			if !slices.Equal(served, want) {
				t.Fatalf("single read: served %v", served)
			}
			if want[sh] != (err == nil) || (err != nil && !errors.Is(err, ErrWrongGroup)) {
				t.Fatalf("group %d: single read of shard %d: %v", r.g.GID(), sh, err)
			}
		}
	}
}

// TestLastGroupCannotLeave: a configuration in which NoGroup owns shards
// after groups held them would strand the data (the old owner hands the
// shards off to nobody and never settles, and a group joining later would
// start them empty, since reconfigure treats a shard gained from NoGroup
// as fresh). The controller must therefore never make one.
func TestLastGroupCannotLeave(t *testing.T) {
	ctrl := shard.NewController(shard.Options{Shards: 4})
	apply := func(cmd *shard.Command) shard.Result { return ctrl.Apply(cmd.Marshal()) }
	if r := apply(&shard.Command{Op: shard.OpJoin, Groups: map[shard.GroupID][]string{1: addrsOf(1), 2: addrsOf(2)}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := apply(&shard.Command{Op: shard.OpLeave, GIDs: []shard.GroupID{1, 2}}); r.Err == nil {
		t.Fatalf("both groups left: %+v", r.Config)
	}
	if r := apply(&shard.Command{Op: shard.OpLeave, GIDs: []shard.GroupID{1}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := apply(&shard.Command{Op: shard.OpLeave, GIDs: []shard.GroupID{2}}); r.Err == nil {
		t.Fatalf("the last group left: %+v", r.Config)
	}
	for num := int64(1); ; num++ {
		cfg := ctrl.Query(num)
		if slices.Contains(cfg.Shards, shard.NoGroup) {
			t.Fatalf("configuration %d leaves shards to NoGroup: %v", cfg.Num, cfg.Shards)
		}
		if cfg.Num != uint64(num) {
			break
		}
	}
}
