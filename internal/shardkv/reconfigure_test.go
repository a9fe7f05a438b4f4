package shardkv

import (
	"testing"

	"github.com/cairn-db/cairn/internal/shard"
)

func TestStateString(t *testing.T) {
	for st, want := range map[State]string{NotOwned: "not-owned", Serving: "serving", Pulling: "pulling",
		HandingOff: "handing-off", GCPending: "gc-pending", State(9): "state(9)"} {
		if got := st.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", uint8(st), got, want)
		}
	}
}

func TestNewGroup(t *testing.T) {
	g := New(3, 8, kvOpts())
	if g.GID() != 3 || g.NumShards() != 8 {
		t.Fatalf("GID %d, NumShards %d", g.GID(), g.NumShards())
	}
	st := g.Status()
	if st.GID != 3 || st.Config.Num != 0 || st.Prev.Num != 0 || len(st.Config.Shards) != 8 {
		t.Fatalf("status %+v", st)
	}
	for sh, s := range st.States {
		if s != NotOwned {
			t.Fatalf("shard %d is %v in a new group", sh, s)
		}
	}
	if g.AppliedIndex() != 0 || g.Revision() != 1 {
		t.Fatalf("applied %d, revision %d", g.AppliedIndex(), g.Revision())
	}
	for _, k := range []string{"a", "b", "zzz"} {
		if got, want := g.ShardOf([]byte(k)), shard.ShardOf([]byte(k), 8); got != want {
			t.Fatalf("ShardOf(%q) = %d, want %d", k, got, want)
		}
	}
}

// TestReconfigureTransitions checks the state every shard takes for each
// case of the table in docs/sharding.md, from the point of view of each
// group of the same two configurations.
func TestReconfigureTransitions(t *testing.T) {
	const n = 5
	// Config 1 (from config 0, where NoGroup owns everything).
	c1 := mkConfig(1, gids(1, 1, 2, 2, 1), 3)
	// Config 2:
	//   shard 0: 1 -> 1 (keep)
	//   shard 1: 1 -> 2 (1 loses, 2 gains from another group)
	//   shard 2: 2 -> 1 (2 loses, 1 gains)
	//   shard 3: 2 -> 3 (2 loses, 3 gains; 1 not involved)
	//   shard 4: 1 -> 3 (1 loses, 3 gains; 2 not involved)
	c2 := mkConfig(2, gids(1, 2, 1, 3, 3))

	a, b, c := newReplica(t, 1, n), newReplica(t, 2, n), newReplica(t, 3, n)
	for _, r := range []*replica{a, b, c} {
		r.mustReconfigure(c1)
	}
	// Gaining from NoGroup: served at once, nothing to fetch.
	a.wantStates(Serving, Serving, NotOwned, NotOwned, Serving)
	b.wantStates(NotOwned, NotOwned, Serving, Serving, NotOwned)
	c.wantStates(NotOwned, NotOwned, NotOwned, NotOwned, NotOwned) // in the config, owns nothing

	for _, r := range []*replica{a, b, c} {
		r.mustReconfigure(c2)
		st := r.g.Status()
		if !st.Config.Equal(c2) || !st.Prev.Equal(c1) {
			t.Fatalf("group %d: config %+v prev %+v", r.g.GID(), st.Config, st.Prev)
		}
	}
	a.wantStates(Serving, HandingOff, Pulling, NotOwned, HandingOff)
	b.wantStates(NotOwned, Pulling, HandingOff, HandingOff, NotOwned)
	c.wantStates(NotOwned, NotOwned, NotOwned, Pulling, Pulling)

	// A group in neither configuration: everything NotOwned, and it moves
	// along with the others.
	d := newReplica(t, 4, n)
	d.mustReconfigure(c1)
	d.mustReconfigure(c2)
	d.wantStates(NotOwned, NotOwned, NotOwned, NotOwned, NotOwned)
}

func TestReconfigureStrictlyInOrder(t *testing.T) {
	const n = 4
	a := newReplica(t, 1, n)
	c1 := mkConfig(1, gids(1, 1, 1, 1))
	c2 := mkConfig(2, gids(1, 1, 1, 1), 2) // a group joins, owns nothing
	c3 := mkConfig(3, gids(1, 1, 1, 1))

	// Skipping ahead is ignored, but the index is recorded.
	if a.reconfigure(c2) {
		t.Fatal("config 2 applied at config 0")
	}
	if a.g.AppliedIndex() != 1 {
		t.Fatalf("applied index %d, want 1", a.g.AppliedIndex())
	}
	a.wantStates(NotOwned, NotOwned, NotOwned, NotOwned)
	a.mustReconfigure(c1)
	a.mustReconfigure(c2)
	// Duplicates and older configurations are ignored, even with other
	// contents.
	for _, old := range []shard.Config{c1, c2, mkConfig(2, gids(2, 2, 2, 2)), mkConfig(1, gids(2, 2, 2, 2)), shard.InitialConfig(n)} {
		if a.reconfigure(old) {
			t.Fatalf("config %d re-applied", old.Num)
		}
		if st := a.g.Status(); !st.Config.Equal(c2) || !st.Prev.Equal(c1) {
			t.Fatalf("status changed by config %d: %+v", old.Num, st)
		}
		a.wantStates(Serving, Serving, Serving, Serving)
	}
	// A configuration of another shard count is ignored.
	if a.reconfigure(mkConfig(3, gids(2, 2, 2))) {
		t.Fatal("a 3-shard configuration applied to a 4-shard group")
	}
	// Corrupt or invalid configuration bytes are ignored.
	bad, _ := EncodeReconfigure(c3)
	for _, p := range [][]byte{bad[:len(bad)-1], append(append([]byte{}, bad...), 0), {opReconfigure}, {opReconfigure, 99}} {
		if res := a.apply(p); res != nil {
			t.Fatalf("corrupt reconfigure: result %v", res)
		}
		if a.g.Status().Config.Num != 2 {
			t.Fatalf("corrupt reconfigure %x applied", p)
		}
	}
	// A configuration that fails validation (a shard owned by a group not
	// in it) is ignored.
	invalid := shard.Config{Num: 3, Shards: gids(1, 1, 1, 5), Groups: map[shard.GroupID][]string{1: addrsOf(1)}}
	p, _ := invalid.AppendBinary([]byte{opReconfigure})
	a.apply(p)
	if a.g.Status().Config.Num != 2 {
		t.Fatal("invalid configuration applied")
	}
	if a.g.AppliedIndex() != a.idx {
		t.Fatalf("applied index %d, want %d", a.g.AppliedIndex(), a.idx)
	}
	a.mustReconfigure(c3)
	a.wantStates(Serving, Serving, Serving, Serving)
}

// TestReconfigureWaitsUntilSettled: while any shard is Pulling, HandingOff
// or GCPending, the next configuration is ignored (and can be proposed
// again later).
func TestReconfigureWaitsUntilSettled(t *testing.T) {
	const n = 4
	c1 := mkConfig(1, gids(1, 1, 1, 1), 2)
	c2 := mkConfig(2, gids(1, 1, 2, 1)) // shard 2 moves 1 -> 2
	c3 := mkConfig(3, gids(1, 1, 1, 2)) // shard 3 moves 1 -> 2, shard 2 back
	a, b := newReplica(t, 1, n), newReplica(t, 2, n)
	for _, r := range []*replica{a, b} {
		r.mustReconfigure(c1)
	}
	a.mustPut(keyIn(n, 2, 0), "v")
	for _, r := range []*replica{a, b} {
		r.mustReconfigure(c2)
	}
	a.wantStates(Serving, Serving, HandingOff, Serving)
	b.wantStates(NotOwned, NotOwned, Pulling, NotOwned)

	check := func(r *replica, want ...State) {
		t.Helper()
		if r.reconfigure(c3) {
			t.Fatalf("group %d applied config 3 while unsettled", r.g.GID())
		}
		r.wantStates(want...)
		if r.g.Status().Config.Num != 2 {
			t.Fatal("config changed")
		}
	}
	check(a, Serving, Serving, HandingOff, Serving) // HandingOff
	check(b, NotOwned, NotOwned, Pulling, NotOwned) // Pulling
	b.install(2, 2, a.export(2, 2))
	check(b, NotOwned, NotOwned, GCPending, NotOwned) // GCPending
	if r := a.del(2, 2); !r.Done || r.Err != nil {
		t.Fatalf("delete: %+v", r)
	}
	a.wantStates(Serving, Serving, NotOwned, Serving)
	a.mustReconfigure(c3) // settled now
	a.wantStates(Serving, Serving, Pulling, HandingOff)
	check(b, NotOwned, NotOwned, GCPending, NotOwned) // still GCPending
	b.gcDone(2, 2)
	b.wantStates(NotOwned, NotOwned, Serving, NotOwned)
	b.mustReconfigure(c3)
	b.wantStates(NotOwned, NotOwned, HandingOff, Pulling)
}
