package shard

import (
	"cmp"
	"slices"
)

// Rebalance returns a new assignment of shards to the groups gids (which
// must be distinct and nonzero; their order does not matter), starting
// from the assignment cur. The result is:
//
//   - even: every group gets ⌊n/k⌋ or ⌈n/k⌉ of the n shards (k groups);
//   - minimal: the number of shards whose owner differs from cur is the
//     smallest any even assignment allows;
//   - deterministic: a function of cur and the set of gids only.
//
// With no groups every shard goes to NoGroup. Shards owned in cur by a
// group not in gids (one that left, or NoGroup) must move; the others move
// only out of groups holding more than their target. docs/sharding.md
// explains why this is minimal. cur is not modified.
func Rebalance(cur []GroupID, gids []GroupID) []GroupID {
	n, k := len(cur), len(gids)
	next := make([]GroupID, n)
	if k == 0 {
		return next // all NoGroup
	}

	// Count the shards each group keeps a claim to.
	count := make(map[GroupID]int, k)
	for _, gid := range gids {
		count[gid] = 0
	}
	for _, gid := range cur {
		if _, ok := count[gid]; ok {
			count[gid]++
		}
	}

	// Targets: q each, and q+1 for r = n mod k groups. The q+1 slots go to
	// the groups holding the most shards (ties to the lower ID): a group
	// with at least q+1 shards keeps one more shard in place with a q+1
	// target than with q, and no other choice keeps more in place.
	order := slices.Clone(gids)
	slices.SortFunc(order, func(a, b GroupID) int {
		if c := cmp.Compare(count[b], count[a]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	q, r := n/k, n%k
	target := make(map[GroupID]int, k)
	for i, gid := range order {
		target[gid] = q
		if i < r {
			target[gid]++
		}
	}

	// Keep each group's shards up to its target, lowest shard numbers
	// first; everything else (shards of departed groups, NoGroup, and a
	// group's shards beyond its target) goes to the free pool, in shard
	// order.
	kept := make(map[GroupID]int, k)
	var free []int
	for s, gid := range cur {
		if t, ok := target[gid]; ok && kept[gid] < t {
			kept[gid]++
			next[s] = gid
			continue
		}
		free = append(free, s)
	}

	// Fill the groups below target from the pool, in ascending group ID
	// order. The pool holds exactly the missing shards: n - Σ kept = Σ
	// (target - kept).
	fill := slices.Clone(gids)
	slices.Sort(fill)
	for _, gid := range fill {
		for ; kept[gid] < target[gid]; kept[gid]++ {
			next[free[0]] = gid
			free = free[1:]
		}
	}
	return next
}
