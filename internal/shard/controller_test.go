package shard

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// TestControllerSequence walks one cluster of 10 shards through joins,
// leaves, a move and queries, checking every configuration exactly. The
// expected assignments follow the algorithm in docs/sharding.md: groups
// over target keep their lowest-numbered shards, freed shards go in shard
// order to the groups under target in ascending ID order.
func TestControllerSequence(t *testing.T) {
	c := NewController(Options{Shards: 10})
	steps := []struct {
		name   string
		cmd    *Command
		shards []GroupID
		groups []GroupID
	}{
		{"first join takes everything", join(1), []GroupID{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, []GroupID{1}},
		{"second join takes the upper half", join(2), []GroupID{1, 1, 1, 1, 1, 2, 2, 2, 2, 2}, []GroupID{1, 2}},
		// 10 = 4+3+3; group 1 (lower ID among equal counts) keeps 4.
		{"third join takes one from 1, two from 2", join(3), []GroupID{1, 1, 1, 1, 3, 2, 2, 2, 3, 3}, []GroupID{1, 2, 3}},
		{"leave splits group 1's shards", leave(1), []GroupID{2, 2, 3, 3, 3, 2, 2, 2, 3, 3}, []GroupID{2, 3}},
		{"move", move(0, 3), []GroupID{3, 2, 3, 3, 3, 2, 2, 2, 3, 3}, []GroupID{2, 3}},
		// Counts 2:4 3:6; 10 = 3+3+2+2 with the 3s for the fuller groups,
		// so only 4 shards move (3 gives up 3, 2 gives up 1).
		{"join two at once after a move", join(4, 5), []GroupID{3, 2, 3, 3, 4, 2, 2, 4, 5, 5}, []GroupID{2, 3, 4, 5}},
		{"leave all but one", leave(3, 2, 4), []GroupID{5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, []GroupID{5}},
		{"join after one", join(9), []GroupID{5, 5, 5, 5, 5, 9, 9, 9, 9, 9}, []GroupID{5, 9}},
	}
	for i, st := range steps {
		cfg := mustApply(t, c, st.cmd)
		if cfg.Num != uint64(i+1) {
			t.Fatalf("%s: config number %d, want %d", st.name, cfg.Num, i+1)
		}
		if !slices.Equal(cfg.Shards, st.shards) {
			t.Fatalf("%s: shards %v, want %v", st.name, cfg.Shards, st.shards)
		}
		if got := cfg.GroupIDs(); !slices.Equal(got, st.groups) {
			t.Fatalf("%s: groups %v, want %v", st.name, got, st.groups)
		}
		for _, gid := range st.groups {
			if !slices.Equal(cfg.Groups[gid], addrs(gid)) {
				t.Fatalf("%s: group %d members %v", st.name, gid, cfg.Groups[gid])
			}
		}
		if !c.Query(-1).Equal(cfg) {
			t.Fatalf("%s: Query(-1) is not the new config", st.name)
		}
	}

	// Leaving every group is refused: the shards' data would be lost.
	if r := c.Apply(leave(5, 9).Marshal()); !errors.Is(r.Err, ErrInvalidCommand) || c.Query(-1).Num != uint64(len(steps)) {
		t.Fatalf("leave every group: %v, latest %d", r.Err, c.Query(-1).Num)
	}

	// Queries, by method and by command; none makes a configuration.
	latest := c.Query(-1)
	for _, tc := range []struct {
		num  int64
		want uint64
	}{{-1, latest.Num}, {-7, latest.Num}, {0, 0}, {3, 3}, {int64(latest.Num), latest.Num}, {1000, latest.Num}} {
		if got := c.Query(tc.num); got.Num != tc.want {
			t.Errorf("Query(%d) = config %d, want %d", tc.num, got.Num, tc.want)
		}
		if got := mustApply(t, c, query(tc.num)); got.Num != tc.want || !got.Equal(c.Query(int64(tc.want))) {
			t.Errorf("query command %d = config %d, want %d", tc.num, got.Num, tc.want)
		}
	}
	if c.Query(-1).Num != latest.Num {
		t.Fatal("a query made a configuration")
	}
	if q0 := c.Query(0); !q0.Equal(InitialConfig(10)) {
		t.Fatalf("config 0 = %+v", q0)
	}
}

func TestControllerRefusals(t *testing.T) {
	c := NewController(Options{Shards: 10})
	mustApply(t, c, join(1, 2))
	before := c.Query(-1)
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"join existing", join(2, 3).Marshal(), ErrGroupExists},
		{"join group 0", join(0).Marshal(), ErrInvalidCommand},
		{"join no members", (&Command{Op: OpJoin, Groups: map[GroupID][]string{3: nil}}).Marshal(), ErrInvalidCommand},
		{"join empty address", (&Command{Op: OpJoin, Groups: map[GroupID][]string{3: {""}}}).Marshal(), ErrInvalidCommand},
		{"join duplicate address", (&Command{Op: OpJoin, Groups: map[GroupID][]string{3: {"a", "a"}}}).Marshal(), ErrInvalidCommand},
		{"join nothing", join().Marshal(), ErrInvalidCommand},
		{"leave unknown", leave(1, 3).Marshal(), ErrUnknownGroup},
		{"leave twice", leave(1, 1).Marshal(), ErrInvalidCommand},
		{"leave nothing", leave().Marshal(), ErrInvalidCommand},
		{"leave group 0", leave(0).Marshal(), ErrUnknownGroup},
		{"move negative shard", move(-1, 1).Marshal(), ErrInvalidCommand},
		{"move shard out of range", move(10, 1).Marshal(), ErrInvalidCommand},
		{"move to unknown group", move(0, 3).Marshal(), ErrUnknownGroup},
		{"move to group 0", move(0, NoGroup).Marshal(), ErrUnknownGroup},
		{"session without seq", withSession(join(3), 1, 0).Marshal(), ErrInvalidCommand},
		{"garbage", []byte{1, 2, 3}, ErrCorruptCommand},
		{"unknown op", (&Command{Op: 99}).Marshal(), ErrCorruptCommand},
	} {
		r := c.Apply(tc.data)
		if !errors.Is(r.Err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, r.Err, tc.want)
		}
		if r.Config.Shards != nil {
			t.Errorf("%s: refused command returned config %+v", tc.name, r.Config)
		}
	}
	if after := c.Query(-1); !after.Equal(before) {
		t.Fatalf("refused commands changed the configuration: %+v", after)
	}
	if r := c.Apply(nil); r.Err != nil || r.Config.Shards != nil {
		t.Fatalf("empty entry: %+v", r)
	}
	if c.Query(-1).Num != before.Num {
		t.Fatal("empty entry made a configuration")
	}
}

func TestMoveToOwnerMakesConfig(t *testing.T) {
	c := NewController(Options{Shards: 4})
	mustApply(t, c, join(1))
	cfg := mustApply(t, c, move(2, 1))
	if cfg.Num != 2 || !slices.Equal(cfg.Shards, []GroupID{1, 1, 1, 1}) {
		t.Fatalf("move to owner: %+v", cfg)
	}
}

// TestMoveIsNotPinned documents the choice: a later Join or Leave
// rebalances from the current assignment, and may move a moved shard
// again when its group is over target.
func TestMoveIsNotPinned(t *testing.T) {
	c := NewController(Options{Shards: 4})
	mustApply(t, c, join(1, 2)) // [1 1 2 2]
	mustApply(t, c, move(3, 1)) // [1 1 2 1]: 1 holds 3
	cfg := mustApply(t, c, join(3))
	// 4 = 2+1+1, the 2 for group 1 (fullest); it keeps 0 and 1 and gives
	// up shard 3, the one that was moved to it.
	if want := []GroupID{1, 1, 2, 3}; !slices.Equal(cfg.Shards, want) {
		t.Fatalf("shards %v, want %v", cfg.Shards, want)
	}
}

func TestMoreGroupsThanShards(t *testing.T) {
	c := NewController(Options{Shards: 3})
	cfg := mustApply(t, c, join(5, 4, 3, 2, 1))
	if want := []GroupID{1, 2, 3}; !slices.Equal(cfg.Shards, want) {
		t.Fatalf("shards %v, want %v", cfg.Shards, want)
	}
	cfg = mustApply(t, c, leave(2))
	// Shard 1 goes to the lowest idle group.
	if want := []GroupID{1, 4, 3}; !slices.Equal(cfg.Shards, want) {
		t.Fatalf("shards %v, want %v", cfg.Shards, want)
	}
	if err := checkEven(cfg); err != nil {
		t.Fatal(err)
	}
}

func TestResultIsACopy(t *testing.T) {
	c := NewController(Options{Shards: 4})
	cfg := mustApply(t, c, join(1))
	cfg.Shards[0] = 99
	cfg.Groups[1][0] = "changed"
	q := c.Query(1)
	if q.Shards[0] != 1 || q.Groups[1][0] != addrs(1)[0] {
		t.Fatal("mutating a result changed the controller's history")
	}
	q.Shards[1] = 99
	if c.Query(1).Shards[1] != 1 {
		t.Fatal("mutating a query answer changed the controller's history")
	}
}

func TestExactlyOnce(t *testing.T) {
	c := NewController(Options{Shards: 8})
	first := c.Apply(withSession(join(1), 5, 1).Marshal())
	if first.Err != nil || first.Config.Num != 1 {
		t.Fatalf("first join: %+v", first)
	}
	// A retry of the same command returns the same result and makes no
	// second configuration.
	again := c.Apply(withSession(join(1), 5, 1).Marshal())
	if again.Err != nil || !again.Config.Equal(first.Config) || c.Query(-1).Num != 1 {
		t.Fatalf("duplicate join: %+v, latest %d", again, c.Query(-1).Num)
	}
	// Even a different command with the same seq is a duplicate: the
	// session identifies the request, not its body.
	if r := c.Apply(withSession(join(2), 5, 1).Marshal()); r.Err != nil || r.Config.Num != 1 {
		t.Fatalf("same seq, other body: %+v", r)
	}
	mustApply(t, c, withSession(join(2), 5, 2))
	if r := c.Apply(withSession(join(1), 5, 1).Marshal()); !errors.Is(r.Err, ErrStaleSequence) {
		t.Fatalf("stale seq: %v", r.Err)
	}

	// A retried query answers what the first attempt answered.
	q := mustApply(t, c, withSession(query(-1), 6, 1))
	mustApply(t, c, join(3))
	if r := c.Apply(withSession(query(-1), 6, 1).Marshal()); r.Err != nil || !r.Config.Equal(q) {
		t.Fatalf("retried query: config %d, want %d", r.Config.Num, q.Num)
	}

	// A refusal is cached too: the retry is refused the same way even
	// after the state changed so that the command would now succeed.
	r1 := c.Apply(withSession(leave(9), 7, 1).Marshal())
	if !errors.Is(r1.Err, ErrUnknownGroup) {
		t.Fatalf("leave unknown: %v", r1.Err)
	}
	mustApply(t, c, join(9))
	n := c.Query(-1).Num
	r2 := c.Apply(withSession(leave(9), 7, 1).Marshal())
	if !errors.Is(r2.Err, ErrUnknownGroup) || r2.Err.Error() != r1.Err.Error() || c.Query(-1).Num != n {
		t.Fatalf("retried refused leave: %v (first %v)", r2.Err, r1.Err)
	}
	if c.Sessions() != 3 {
		t.Fatalf("%d sessions, want 3", c.Sessions())
	}
}

func TestSessionsExpire(t *testing.T) {
	c := NewController(Options{Shards: 8, SessionTTL: time.Minute})
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	at := func(cmd *Command, d time.Duration) *Command { cmd.Time = base + int64(d); return cmd }
	mustApply(t, c, at(withSession(join(1), 1, 1), 0))
	mustApply(t, c, at(withSession(join(2), 2, 1), 30*time.Second))
	if c.Sessions() != 2 {
		t.Fatalf("%d sessions", c.Sessions())
	}
	// Client 1 idle for 61s: forgotten at the next command. Client 2 idle
	// for 31s: kept.
	mustApply(t, c, at(query(-1), 61*time.Second))
	if c.Sessions() != 1 {
		t.Fatalf("%d sessions after expiry, want 1", c.Sessions())
	}
	// A clock that goes backwards (another proposer's) expires nothing
	// early: the controller's clock never decreases.
	mustApply(t, c, at(query(-1), 0))
	if c.Sessions() != 1 {
		t.Fatalf("%d sessions", c.Sessions())
	}
}

func TestNewControllerDefaults(t *testing.T) {
	c := NewController(Options{})
	if c.NumShards() != DefaultShards || len(c.Query(0).Shards) != DefaultShards {
		t.Fatalf("default shards: %d", c.NumShards())
	}
	defer func() {
		if recover() == nil {
			t.Fatal("NewController with too many shards did not panic")
		}
	}()
	NewController(Options{Shards: MaxShards + 1})
}
