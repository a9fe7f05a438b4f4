package shard

import (
	"fmt"
	"slices"
	"testing"
)

func join(gids ...GroupID) *Command {
	c := &Command{Op: OpJoin, Groups: map[GroupID][]string{}}
	for _, gid := range gids {
		c.Groups[gid] = addrs(gid)
	}
	return c
}

func addrs(gid GroupID) []string {
	return []string{fmt.Sprintf("g%d-a:2379", gid), fmt.Sprintf("g%d-b:2379", gid), fmt.Sprintf("g%d-c:2379", gid)}
}

func leave(gids ...GroupID) *Command { return &Command{Op: OpLeave, GIDs: gids} }

func move(shard int, gid GroupID) *Command { return &Command{Op: OpMove, Shard: shard, GID: gid} }

func query(num int64) *Command { return &Command{Op: OpQuery, Num: num} }

// withSession returns cmd as command seq of client id.
func withSession(cmd *Command, id, seq uint64) *Command {
	c := *cmd
	c.ClientID, c.Seq = id, seq
	return &c
}

// mustApply applies cmd and fails the test if it is refused.
func mustApply(t testing.TB, c *Controller, cmd *Command) Config {
	t.Helper()
	r := c.Apply(cmd.Marshal())
	if r.Err != nil {
		t.Fatalf("apply %v: %v", cmd.Op, r.Err)
	}
	if err := r.Config.Validate(); err != nil {
		t.Fatalf("apply %v made an invalid config: %v", cmd.Op, err)
	}
	return r.Config
}

// counts returns the number of shards each group of cfg owns.
func counts(cfg Config) map[GroupID]int {
	m := make(map[GroupID]int, len(cfg.Groups))
	for gid := range cfg.Groups {
		m[gid] = 0
	}
	for _, gid := range cfg.Shards {
		if gid != NoGroup {
			m[gid]++
		}
	}
	return m
}

// checkEven fails unless every group of cfg owns ⌊n/k⌋ or ⌈n/k⌉ shards.
func checkEven(cfg Config) error {
	if len(cfg.Groups) == 0 {
		for s, gid := range cfg.Shards {
			if gid != NoGroup {
				return fmt.Errorf("shard %d owned by %d without groups", s, gid)
			}
		}
		return nil
	}
	lo, hi := len(cfg.Shards), 0
	for _, n := range counts(cfg) {
		lo, hi = min(lo, n), max(hi, n)
	}
	if hi-lo > 1 {
		return fmt.Errorf("uneven: counts %v", counts(cfg))
	}
	return nil
}

// moved returns the number of shards whose owner differs.
func moved(a, b []GroupID) int {
	n := 0
	for s := range a {
		if a[s] != b[s] {
			n++
		}
	}
	return n
}

// minMoves is the fewest shards any even assignment of cur's shards to
// gids must move, computed by the closed form in docs/sharding.md: with q
// = n/k and r = n mod k, at most min(c, q) of a group's c shards can stay,
// plus one more for up to r groups holding more than q.
func minMoves(cur []GroupID, gids []GroupID) int {
	n, k := len(cur), len(gids)
	if k == 0 {
		return moved(cur, make([]GroupID, n))
	}
	q, r := n/k, n%k
	stay, over := 0, 0
	for _, gid := range gids {
		c := 0
		for _, g := range cur {
			if g == gid {
				c++
			}
		}
		stay += min(c, q)
		if c > q {
			over++
		}
	}
	return n - stay - min(r, over)
}

// bruteMinMoves computes the same minimum by trying every choice of which
// r groups get q+1 shards (for small k only).
func bruteMinMoves(cur []GroupID, gids []GroupID) int {
	n, k := len(cur), len(gids)
	if k == 0 {
		return moved(cur, make([]GroupID, n))
	}
	q, r := n/k, n%k
	c := make([]int, k)
	for i, gid := range gids {
		for _, g := range cur {
			if g == gid {
				c[i]++
			}
		}
	}
	best := n
	for mask := 0; mask < 1<<k; mask++ {
		if popcount(mask) != r {
			continue
		}
		stay := 0
		for i := range k {
			t := q
			if mask&(1<<i) != 0 {
				t++
			}
			stay += min(c[i], t)
		}
		best = min(best, n-stay)
	}
	return best
}

func popcount(x int) int {
	n := 0
	for ; x != 0; x &= x - 1 {
		n++
	}
	return n
}

// checkOnlyNeededMoves fails if a shard left a group that was not over its
// new count, or went to a group that was not under it.
func checkOnlyNeededMoves(prev, next Config) error {
	pc, nc := counts(prev), counts(next)
	for s := range prev.Shards {
		from, to := prev.Shards[s], next.Shards[s]
		if from == to {
			continue
		}
		if _, stays := next.Groups[from]; stays && from != NoGroup && pc[from] <= nc[from] {
			return fmt.Errorf("shard %d left group %d, which went from %d to %d shards", s, from, pc[from], nc[from])
		}
		if to != NoGroup && pc[to] >= nc[to] {
			return fmt.Errorf("shard %d went to group %d, which went from %d to %d shards", s, to, pc[to], nc[to])
		}
	}
	return nil
}

func sortedGIDs(m map[GroupID]int) []GroupID {
	out := make([]GroupID, 0, len(m))
	for gid := range m {
		out = append(out, gid)
	}
	slices.Sort(out)
	return out
}
