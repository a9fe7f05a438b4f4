package shard

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// propertySeeds returns the seeds the randomized tests run:
// CAIRN_SHARD_SEEDS=N runs 1..N, CAIRN_SHARD_SEEDS=A-B runs A..B (use
// A-A to replay the one seed a failure printed).
func propertySeeds(t *testing.T) (lo, hi uint64) {
	if v := os.Getenv("CAIRN_SHARD_SEEDS"); v != "" {
		a, b, isRange := strings.Cut(v, "-")
		x, err1 := strconv.ParseUint(a, 10, 64)
		y, err2 := x, error(nil)
		if isRange {
			y, err2 = strconv.ParseUint(b, 10, 64)
		} else {
			x = 1
		}
		if err1 != nil || err2 != nil || x > y {
			t.Fatalf("CAIRN_SHARD_SEEDS=%q: want N or A-B", v)
		}
		return x, y
	}
	if testing.Short() {
		return 1, 50
	}
	return 1, 400
}

// forSeeds runs fn for every seed, naming the failing seed and how to
// replay it.
func forSeeds(t *testing.T, fn func(seed uint64) error) {
	lo, hi := propertySeeds(t)
	for seed := lo; seed <= hi; seed++ {
		if err := fn(seed); err != nil {
			t.Fatalf("seed %d: %v\nreplay: CAIRN_SHARD_SEEDS=%d-%d go test -run '%s' ./internal/shard",
				seed, err, seed, seed, t.Name())
		}
	}
}

// scenario is a random command sequence for one seed: joins and leaves
// of groups drawn from a small ID space (so groups come back), moves,
// queries, refused commands, and retries of earlier session commands.
type scenario struct {
	nShards int
	cmds    []*Command
}

func randomScenario(seed uint64) scenario {
	rng := rand.New(rand.NewPCG(seed, 0x5ca1ab1e))
	sc := scenario{nShards: []int{1, 2, 3, 7, 10, 16, 64, 64, 100}[rng.IntN(9)]}
	maxGID := 1 + rng.IntN(30)
	live := map[GroupID]bool{}
	seqs := map[uint64]uint64{}
	var sent []*Command
	now := int64(1_700_000_000_000_000_000)
	for range 60 + rng.IntN(60) {
		now += int64(rng.IntN(2_000_000_000))
		var cmd *Command
		liveIDs := sortedGIDs(boolCounts(live))
		switch p := rng.IntN(100); {
		case p < 40 || len(live) == 0:
			cmd = &Command{Op: OpJoin, Groups: map[GroupID][]string{}}
			for range 1 + rng.IntN(3) {
				gid := GroupID(1 + rng.IntN(maxGID))
				if !live[gid] || rng.IntN(20) == 0 { // sometimes a refused join
					cmd.Groups[gid] = addrs(gid)
				}
			}
			if len(cmd.Groups) == 0 {
				cmd = query(-1)
			}
		case p < 75:
			cmd = &Command{Op: OpLeave}
			for _, gid := range liveIDs {
				if rng.IntN(len(liveIDs)) == 0 {
					cmd.GIDs = append(cmd.GIDs, gid)
				}
			}
			if len(cmd.GIDs) == 0 {
				cmd.GIDs = []GroupID{liveIDs[rng.IntN(len(liveIDs))]}
			}
			if rng.IntN(20) == 0 { // sometimes a refused leave
				cmd.GIDs = append(cmd.GIDs, GroupID(100+rng.IntN(5)))
			}
			rng.Shuffle(len(cmd.GIDs), func(i, j int) { cmd.GIDs[i], cmd.GIDs[j] = cmd.GIDs[j], cmd.GIDs[i] })
		case p < 88:
			cmd = move(rng.IntN(sc.nShards+1), liveIDs[rng.IntN(len(liveIDs))])
		case p < 94:
			cmd = query(int64(rng.IntN(len(sent)+2)) - 1)
		default:
			if len(sent) > 0 { // a retry, possibly stale
				c := *sent[rng.IntN(len(sent))]
				c.Time = now
				sc.cmds = append(sc.cmds, &c)
				continue
			}
			cmd = query(-1)
		}
		cmd.Time = now
		if rng.IntN(2) == 0 {
			id := uint64(1 + rng.IntN(4))
			seqs[id]++
			cmd.ClientID, cmd.Seq = id, seqs[id]
			sent = append(sent, cmd)
		}
		// Track membership as the controller will (refused commands change
		// nothing).
		switch cmd.Op {
		case OpJoin:
			ok := true
			for gid := range cmd.Groups {
				ok = ok && !live[gid]
			}
			for gid := range cmd.Groups {
				if ok {
					live[gid] = true
				}
			}
		case OpLeave:
			ok := len(cmd.GIDs) < len(live) // leaving every group is refused
			for _, gid := range cmd.GIDs {
				ok = ok && live[gid]
			}
			for _, gid := range cmd.GIDs {
				if ok {
					delete(live, gid)
				}
			}
		}
		sc.cmds = append(sc.cmds, cmd)
	}
	return sc
}

func boolCounts(m map[GroupID]bool) map[GroupID]int {
	out := make(map[GroupID]int, len(m))
	for k := range m {
		out[k] = 0
	}
	return out
}

// checkStep checks one applied command against the configuration before
// it: Join and Leave rebalance evenly with the fewest moves and only from
// groups over target to groups under it; Move changes one shard; refused
// commands, queries and duplicates change nothing.
func checkStep(cmd *Command, prev Config, r Result, after Config, dup bool) error {
	if dup || r.Err != nil || cmd.Op == OpQuery {
		if after.Num != prev.Num {
			return fmt.Errorf("%v (dup=%v, err=%v) made configuration %d", cmd.Op, dup, r.Err, after.Num)
		}
		return nil
	}
	if after.Num != prev.Num+1 || !r.Config.Equal(after) {
		return fmt.Errorf("%v made configuration %d after %d (result %d)", cmd.Op, after.Num, prev.Num, r.Config.Num)
	}
	if err := after.Validate(); err != nil {
		return err
	}
	switch cmd.Op {
	case OpMove:
		want := slices.Clone(prev.Shards)
		want[cmd.Shard] = cmd.GID
		if !slices.Equal(after.Shards, want) {
			return fmt.Errorf("move %d→%d: shards %v, want %v", cmd.Shard, cmd.GID, after.Shards, want)
		}
		return nil
	case OpJoin, OpLeave:
		if err := checkEven(after); err != nil {
			return fmt.Errorf("%v: %v", cmd.Op, err)
		}
		gids := after.GroupIDs()
		got, want := moved(prev.Shards, after.Shards), minMoves(prev.Shards, gids)
		if got != want {
			return fmt.Errorf("%v: moved %d shards, minimum is %d (%v → %v)", cmd.Op, got, want, prev.Shards, after.Shards)
		}
		if len(gids) <= 10 {
			if b := bruteMinMoves(prev.Shards, gids); b != want {
				return fmt.Errorf("closed-form minimum %d, brute force %d", want, b)
			}
		}
		return checkOnlyNeededMoves(prev, after)
	}
	return fmt.Errorf("unexpected op %v", cmd.Op)
}

// TestRandomJoinLeave drives one controller through random scenarios and
// checks every step, the exactly-once behaviour of retries, and that a
// second controller fed the same bytes (and a third restored from a
// snapshot midway) ends byte-identical.
func TestRandomJoinLeave(t *testing.T) {
	forSeeds(t, func(seed uint64) error {
		sc := randomScenario(seed)
		opts := Options{Shards: sc.nShards}
		a, b := NewController(opts), NewController(opts)
		var c *Controller // restored from a's snapshot midway
		restoreAt := len(sc.cmds) / 2
		type last struct {
			seq uint64
			res Result
		}
		sessions := map[uint64]last{}
		for i, cmd := range sc.cmds {
			if i == restoreAt {
				var snap bytes.Buffer
				if err := a.Snapshot(&snap); err != nil {
					return err
				}
				c = NewController(Options{Shards: 1}) // the snapshot's count wins
				if err := c.Restore(&snap); err != nil {
					return fmt.Errorf("restore at step %d: %v", i, err)
				}
			}
			data := cmd.Marshal()
			prev := a.Query(-1)
			ra := a.Apply(data)
			rb := b.Apply(data)
			if !sameResult(ra, rb) {
				return fmt.Errorf("step %d: controllers disagree: %+v vs %+v", i, ra, rb)
			}
			if c != nil {
				if rc := c.Apply(data); !sameResult(ra, rc) {
					return fmt.Errorf("step %d: restored controller disagrees: %+v vs %+v", i, ra, rc)
				}
			}
			dup := false
			if cmd.ClientID != 0 {
				l, seen := sessions[cmd.ClientID]
				switch {
				case seen && cmd.Seq == l.seq:
					dup = true
					if !sameResult(ra, l.res) {
						return fmt.Errorf("step %d: retry of client %d seq %d answered %+v, first answer %+v",
							i, cmd.ClientID, cmd.Seq, ra, l.res)
					}
				case seen && cmd.Seq < l.seq:
					dup = true
					if !isStale(ra) {
						return fmt.Errorf("step %d: stale seq answered %+v", i, ra)
					}
				default:
					sessions[cmd.ClientID] = last{cmd.Seq, ra}
				}
			}
			if err := checkStep(cmd, prev, ra, a.Query(-1), dup); err != nil {
				return fmt.Errorf("step %d: %v", i, err)
			}
		}
		for name, other := range map[string]*Controller{"twin": b, "restored": c} {
			if err := sameState(a, other); err != nil {
				return fmt.Errorf("%s: %v", name, err)
			}
		}
		return nil
	})
}

func sameResult(a, b Result) bool {
	if (a.Err == nil) != (b.Err == nil) {
		return false
	}
	if a.Err != nil {
		return a.Err.Error() == b.Err.Error()
	}
	return a.Config.Equal(b.Config)
}

func isStale(r Result) bool {
	return r.Err != nil && strings.Contains(r.Err.Error(), ErrStaleSequence.Error())
}

// sameState compares two controllers' histories and snapshot bytes.
func sameState(a, b *Controller) error {
	la, lb := a.Query(-1), b.Query(-1)
	if la.Num != lb.Num {
		return fmt.Errorf("latest configs %d and %d", la.Num, lb.Num)
	}
	for n := int64(0); n <= int64(la.Num); n++ {
		if x, y := a.Query(n), b.Query(n); !x.Equal(y) {
			return fmt.Errorf("config %d differs: %+v vs %+v", n, x, y)
		}
	}
	var sa, sb bytes.Buffer
	if err := a.Snapshot(&sa); err != nil {
		return err
	}
	if err := b.Snapshot(&sb); err != nil {
		return err
	}
	if !bytes.Equal(sa.Bytes(), sb.Bytes()) {
		return fmt.Errorf("snapshots differ (%d and %d bytes)", sa.Len(), sb.Len())
	}
	return nil
}

// TestRebalanceRandom checks Rebalance directly on arbitrary starting
// assignments (including ones no controller would make: shards of
// unknown groups, uneven counts), against the brute-force minimum, and
// that the order of the group list does not matter.
func TestRebalanceRandom(t *testing.T) {
	forSeeds(t, func(seed uint64) error {
		rng := rand.New(rand.NewPCG(seed, 0xba1a))
		for range 20 {
			n := 1 + rng.IntN(70)
			pool := 1 + rng.IntN(12)
			cur := make([]GroupID, n)
			for s := range cur {
				cur[s] = GroupID(rng.IntN(pool + 1)) // may be NoGroup
			}
			var gids []GroupID
			for g := 1; g <= pool; g++ {
				if rng.IntN(2) == 0 {
					gids = append(gids, GroupID(g))
				}
			}
			next := Rebalance(cur, gids)
			cfg := Config{Shards: next, Groups: map[GroupID][]string{}}
			for _, gid := range gids {
				cfg.Groups[gid] = addrs(gid)
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("%v with %v: %v", cur, gids, err)
			}
			if err := checkEven(cfg); err != nil {
				return fmt.Errorf("%v with %v: %v", cur, gids, err)
			}
			if got, want := moved(cur, next), bruteMinMoves(cur, gids); got != want {
				return fmt.Errorf("%v with %v → %v: moved %d, minimum %d", cur, gids, next, got, want)
			}
			if got, want := minMoves(cur, gids), bruteMinMoves(cur, gids); got != want {
				return fmt.Errorf("closed form %d, brute force %d", got, want)
			}
			shuffled := slices.Clone(gids)
			rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			if again := Rebalance(cur, shuffled); !slices.Equal(again, next) {
				return fmt.Errorf("group order changed the result: %v vs %v", again, next)
			}
			if again := Rebalance(next, gids); !slices.Equal(again, next) {
				return fmt.Errorf("rebalancing a balanced assignment moved shards: %v → %v", next, again)
			}
		}
		return nil
	})
}

// TestJoinMapOrder feeds Join commands whose group maps were filled in
// different orders: the encoding, and so every replica, sees one order.
func TestJoinMapOrder(t *testing.T) {
	var want []byte
	for i := range 30 {
		c := NewController(Options{Shards: 64})
		cmd := &Command{Op: OpJoin, Groups: map[GroupID][]string{}}
		ids := []GroupID{5, 3, 9, 1, 7, 2, 8}
		for j := range ids {
			gid := ids[(i+j)%len(ids)]
			cmd.Groups[gid] = addrs(gid)
		}
		mustApply(t, c, cmd)
		mustApply(t, c, leave(3, 8))
		var snap bytes.Buffer
		if err := c.Snapshot(&snap); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			want = snap.Bytes()
		} else if !bytes.Equal(snap.Bytes(), want) {
			t.Fatalf("iteration %d: snapshot differs", i)
		}
	}
}

// BenchmarkRebalance measures one rebalance of 64 shards when a 20th group
// joins 19 (and, alternately, leaves again).
func BenchmarkRebalance(b *testing.B) {
	var gids19, gids20 []GroupID
	for g := GroupID(1); g <= 20; g++ {
		if g < 20 {
			gids19 = append(gids19, g)
		}
		gids20 = append(gids20, g)
	}
	with19 := Rebalance(make([]GroupID, DefaultShards), gids19)
	with20 := Rebalance(with19, gids20)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			Rebalance(with19, gids20)
		} else {
			Rebalance(with20, gids19)
		}
		i++
	}
}

// BenchmarkApplyJoinLeave measures a whole controller command (decode,
// validate, clone, rebalance, append) with 64 shards and 20 groups, a 20th
// group joining and leaving in turn.
func BenchmarkApplyJoinLeave(b *testing.B) {
	c := NewController(Options{Shards: DefaultShards})
	for g := GroupID(1); g < 20; g++ {
		mustApply(b, c, join(g))
	}
	j, l := join(20).Marshal(), leave(20).Marshal()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d := j
		if i%2 == 1 {
			d = l
		}
		if r := c.Apply(d); r.Err != nil {
			b.Fatal(r.Err)
		}
		i++
	}
}
