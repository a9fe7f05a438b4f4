package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// treeModel is the reference for tree: a sorted slice of items.
type treeModel []kvItem

func (m treeModel) find(key []byte) (int, bool) {
	return slices.BinarySearchFunc(m, key, func(it kvItem, k []byte) int { return bytes.Compare(it.key, k) })
}

func (m *treeModel) set(it kvItem) {
	i, ok := m.find(it.key)
	if ok {
		(*m)[i] = it
		return
	}
	*m = slices.Insert(*m, i, it)
}

func (m *treeModel) delete(key []byte) bool {
	i, ok := m.find(key)
	if ok {
		*m = slices.Delete(*m, i, i+1)
	}
	return ok
}

// checkTree checks the B-tree invariants of t and that it holds exactly
// the items of want, in order.
func checkTree(t *testing.T, tr *tree, want treeModel) {
	t.Helper()
	if tr.len() != len(want) {
		t.Fatalf("len %d, want %d", tr.len(), len(want))
	}
	var got treeModel
	tr.ascend(func(it kvItem) bool { got = append(got, it); return true })
	if len(got) != len(want) {
		t.Fatalf("ascend visited %d items, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i].key, want[i].key) || got[i].mod != want[i].mod {
			t.Fatalf("item %d is %q mod %d, want %q mod %d", i, got[i].key, got[i].mod, want[i].key, want[i].mod)
		}
	}
	if tr.root == nil {
		return
	}
	if len(tr.root.items) == 0 {
		t.Fatal("empty root")
	}
	leafDepth := -1
	var walk func(n *node, depth int, lo, hi []byte)
	walk = func(n *node, depth int, lo, hi []byte) {
		if n != tr.root && (len(n.items) < minItems || len(n.items) > maxItems) {
			t.Fatalf("node at depth %d holds %d items", depth, len(n.items))
		}
		for i, e := range n.items {
			it := e.item
			if e.pfx != prefix(it.key) {
				t.Fatalf("item %q has prefix %x", it.key, e.pfx)
			}
			if (lo != nil && bytes.Compare(it.key, lo) <= 0) || (hi != nil && bytes.Compare(it.key, hi) >= 0) ||
				(i > 0 && bytes.Compare(n.items[i-1].item.key, it.key) >= 0) {
				t.Fatalf("item %q out of order at depth %d", it.key, depth)
			}
		}
		if n.children == nil {
			if leafDepth >= 0 && leafDepth != depth {
				t.Fatalf("leaves at depths %d and %d", leafDepth, depth)
			}
			leafDepth = depth
			return
		}
		if len(n.children) != len(n.items)+1 {
			t.Fatalf("node with %d items has %d children", len(n.items), len(n.children))
		}
		for i, c := range n.children {
			clo, chi := lo, hi
			if i > 0 {
				clo = n.items[i-1].item.key
			}
			if i < len(n.items) {
				chi = n.items[i].item.key
			}
			walk(c, depth+1, clo, chi)
		}
	}
	walk(tr.root, 0, nil, nil)
}

func treeKey(i int) []byte { return []byte(fmt.Sprintf("%05d", i)) }

// treeKeyFuncs are key spaces that exercise the prefix comparison: keys
// that differ within their first 8 bytes, keys that share them, and short
// keys that differ only in trailing zero bytes (equal padded prefixes).
var treeKeyFuncs = map[string]func(i int) []byte{
	"short":  treeKey,
	"shared": func(i int) []byte { return []byte(fmt.Sprintf("/registry/%05d", i)) },
	"zeros": func(i int) []byte {
		k := []byte{byte(i >> 8), byte(i >> 4)}
		return append(k, make([]byte, i%16)...)
	},
}

// TestTreeRandom applies random inserts, replaces and deletes to a tree
// and a model, taking clones along the way and writing to some of them: no
// clone may see another tree's writes, and every tree must stay a valid
// B-tree holding its model's items.
func TestTreeRandom(t *testing.T) {
	for name, key := range treeKeyFuncs {
		t.Run(name, func(t *testing.T) { testTreeRandom(t, key) })
	}
}

func testTreeRandom(t *testing.T, treeKey func(int) []byte) {
	rng := rand.New(rand.NewPCG(7, 7))
	type pair struct {
		tr *tree
		m  treeModel
	}
	trees := []*pair{{tr: newTree()}}
	keySpace, ops := 6000, 60000
	if testing.Short() {
		ops = 20000
	}
	for op := 0; op < ops; op++ {
		p := trees[0]
		if len(trees) > 1 && rng.IntN(4) == 0 {
			p = trees[rng.IntN(len(trees))]
		}
		// Grow for the first half, then mostly shrink, so that both splits
		// and merges run at every level.
		del := rng.IntN(10) < 3
		if op > ops/2 {
			del = rng.IntN(10) < 7
		}
		key := treeKey(rng.IntN(keySpace))
		if del {
			it, ok := p.tr.delete(key)
			if ok != p.m.delete(key) {
				t.Fatalf("op %d: delete %q reported %v", op, key, ok)
			}
			if ok && !bytes.Equal(it.key, key) {
				t.Fatalf("op %d: delete %q returned %q", op, key, it.key)
			}
		} else {
			it := kvItem{key: key, mod: int64(op)}
			old, had := p.tr.replaceOrInsert(it)
			i, want := p.m.find(key)
			if had != want || (had && old.mod != p.m[i].mod) {
				t.Fatalf("op %d: replace %q returned %v %d", op, key, had, old.mod)
			}
			p.m.set(it)
		}
		if got, ok := p.tr.get(key); ok == del || (ok && !bytes.Equal(got.key, key)) {
			t.Fatalf("op %d: get %q after write: %q %v", op, key, got.key, ok)
		}
		if rng.IntN(2000) == 0 {
			q := &pair{tr: p.tr.clone(), m: slices.Clone(p.m)}
			trees = append(trees, q)
		}
		if op%5000 == 0 {
			for _, q := range trees {
				checkTree(t, q.tr, q.m)
			}
		}
	}
	if len(trees) < 5 {
		t.Fatalf("only %d clones: the test does not test copy-on-write", len(trees)-1)
	}
	for _, q := range trees {
		checkTree(t, q.tr, q.m)
	}
}

// TestTreeAscend checks the bounded iterations, including stopping early,
// against the model.
func TestTreeAscend(t *testing.T) {
	for name, key := range treeKeyFuncs {
		t.Run(name, func(t *testing.T) { testTreeAscend(t, key) })
	}
}

func testTreeAscend(t *testing.T, treeKey func(int) []byte) {
	rng := rand.New(rand.NewPCG(8, 8))
	tr := newTree()
	var m treeModel
	for i := 0; i < 5000; i++ {
		it := kvItem{key: treeKey(2 * rng.IntN(5000))} // even keys only: odd bounds miss
		tr.replaceOrInsert(it)
		m.set(it)
	}
	checkTree(t, tr, m)
	for i := 0; i < 2000; i++ {
		from, to := treeKey(rng.IntN(10001)), treeKey(rng.IntN(10001))
		limit := rng.IntN(200)
		var want []string
		for _, it := range m {
			if bytes.Compare(it.key, from) >= 0 && (i%2 == 0 || bytes.Compare(it.key, to) < 0) && len(want) < limit {
				want = append(want, string(it.key))
			}
		}
		var got []string
		fn := func(it kvItem) bool {
			if len(got) == limit {
				return false
			}
			got = append(got, string(it.key))
			return true
		}
		if i%2 == 0 {
			tr.ascendFrom(from, fn)
		} else {
			tr.ascendRange(from, to, fn)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("ascend from %q to %q (bounded %v) limit %d: got %d keys %v, want %d %v", from, to, i%2 == 1, limit, len(got), got, len(want), want)
		}
	}
}

// TestTreeDeleteAll empties trees of several sizes in random order, which
// drives the root collapse, and checks them along the way.
func TestTreeDeleteAll(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	for _, n := range []int{0, 1, maxItems, maxItems + 1, 5000} {
		tr := newTree()
		var m treeModel
		for i := 0; i < n; i++ {
			tr.replaceOrInsert(kvItem{key: treeKey(i)})
			m.set(kvItem{key: treeKey(i)})
		}
		snap, snapModel := tr.clone(), slices.Clone(m)
		for _, i := range rng.Perm(n) {
			if _, ok := tr.delete(treeKey(i)); !ok {
				t.Fatalf("n=%d: delete %d failed", n, i)
			}
			m.delete(treeKey(i))
			if len(m)%500 == 0 {
				checkTree(t, tr, m)
			}
		}
		if tr.root != nil || tr.len() != 0 {
			t.Fatalf("n=%d: tree not empty after deleting everything", n)
		}
		checkTree(t, snap, snapModel)
	}
}

// TestAllocSize checks the size-class table growCap relies on against the
// runtime: append rounds a new slice's capacity up to its class.
func TestAllocSize(t *testing.T) {
	zeros := make([]byte, 40000)
	for n := 1; n <= len(zeros); n++ {
		if got, want := allocSize(n), cap(append([]byte(nil), zeros[:n]...)); got != want {
			t.Fatalf("allocSize(%d) = %d, but the runtime gives a %d-byte slice", n, got, want)
		}
	}
}

// BenchmarkTreeInsertAscending inserts keys above every key already in
// the tree (big-endian sequence numbers), the pattern of time-ordered keys.
func BenchmarkTreeInsertAscending(b *testing.B) {
	b.ReportAllocs()
	t := newTree()
	for i := 0; i < b.N; i++ {
		k := binary.BigEndian.AppendUint64(nil, uint64(i))
		slot, _ := t.upsert(k)
		*slot = kvItem{key: k}
	}
}

// TestTreeAscendingInserts writes keys in increasing order, cloning along
// the way: the trees stay valid and independent, and only the rightmost
// leaf carries unused room (every other leaf is the left half of a split,
// sized to its items plus one).
func TestTreeAscendingInserts(t *testing.T) {
	tr := newTree()
	var m treeModel
	type saved struct {
		tr *tree
		m  treeModel
	}
	var clones []saved
	for i := 0; i < 5000; i++ {
		it := kvItem{key: treeKey(i), mod: int64(i)}
		tr.replaceOrInsert(it)
		m.set(it)
		if i%700 == 0 {
			clones = append(clones, saved{tr.clone(), slices.Clone(m)})
		}
	}
	checkTree(t, tr, m)
	for _, c := range clones {
		checkTree(t, c.tr, c.m)
	}
	var leaves []*node
	var walk func(n *node)
	walk = func(n *node) {
		if n.children == nil {
			leaves = append(leaves, n)
			return
		}
		for _, c := range n.children {
			walk(c)
		}
	}
	walk(tr.root)
	for i, n := range leaves[:len(leaves)-1] {
		if slack := cap(n.items) - len(n.items); slack > nodeGrowth {
			t.Errorf("leaf %d of %d holds %d items with room for %d more", i, len(leaves), len(n.items), slack)
		}
	}
}
