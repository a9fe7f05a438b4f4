package kv

import (
	"bytes"
	"encoding/binary"
	"slices"
	"unsafe"
)

// tree is an in-memory B-tree of kvItems ordered by key, with
// copy-on-write clones, written for this package instead of using a
// generic B-tree for two reasons that profiles of Apply showed:
//
//   - upsert finds a key's slot and, if the key is absent, makes one, in a
//     single descent, so a put reads the item it replaces and writes the
//     new one without a second search (a generic tree's Get followed by
//     ReplaceOrInsert searched twice);
//   - its searches compare keys without a call through a less function
//     (which copied two 80-byte items per comparison), and mostly without
//     reading the keys' bytes: each entry carries the first 8 bytes of its
//     key, and only entries whose 8 bytes tie need the key itself. Reading
//     a key is a cache miss per comparison in a large tree, and comparing
//     keys was most of the cost of a put.
//
// Every node records the owner that may modify it in place. clone gives
// both the original and the copy new owners, so the nodes that existed
// before the clone belong to neither: the first write that reaches one
// copies it (and only the nodes on that write's path). A clone therefore
// costs O(1) and never sees later writes to the original, nor the original
// writes to the clone.
//
// A tree is not safe for concurrent use if one of the users writes; the
// Store's lock orders them.
type tree struct {
	root  *node
	n     int
	owner *owner
}

// owner identifies the tree allowed to modify a node in place. It must not
// be a zero-size type: distinct zero-size allocations may share an
// address, and owners are compared by address.
type owner struct{ _ byte }

// node is a B-tree node: items in key order and, in an inner node,
// len(items)+1 children, child i holding the keys between items[i-1] and
// items[i].
type node struct {
	items    []entry
	children []*node // nil in a leaf
	owner    *owner
}

// entry is an item with its key's prefix (see prefix), which the tree sets
// when it inserts the key.
type entry struct {
	pfx  uint64
	item kvItem
}

// prefix returns the first 8 bytes of key as a big-endian number, padded
// with zeros. If prefix(a) < prefix(b) then a < b: the first byte where
// the padded prefixes differ is either a real byte of both keys, or the
// end of a, which is then a prefix of b. Equal prefixes decide only
// between keys of at most 8 bytes (see search).
func prefix(key []byte) uint64 {
	if len(key) >= 8 {
		return binary.BigEndian.Uint64(key)
	}
	var b [8]byte
	copy(b[:], key)
	return binary.BigEndian.Uint64(b[:])
}

// treeDegree is the B-tree minimum degree: a node other than the root holds
// between treeDegree-1 and 2*treeDegree-1 items. On a 1M-key store degree
// 32 was faster for both BenchmarkApplyPut and BenchmarkRangeSingleKey than
// 8, 16 or 64 with the generic tree this one replaced; with this tree, 16,
// 32 and 64 were within the noise of a shared 2-core machine on
// BenchmarkApplyPutNewKey and BenchmarkApplyPutOverwrite.
const treeDegree = 32

const (
	maxItems = 2*treeDegree - 1
	minItems = treeDegree - 1
)

func newTree() *tree { return &tree{owner: new(owner)} }

// len returns the number of items.
func (t *tree) len() int { return t.n }

// clone returns a tree with the same items that shares t's nodes until
// either tree writes to them.
func (t *tree) clone() *tree {
	t.owner = new(owner)
	return &tree{root: t.root, n: t.n, owner: new(owner)}
}

// search returns the index of the first entry whose key is not below key
// (whose prefix is pfx), and whether that entry's key equals key.
func search(es []entry, pfx uint64, key []byte) (int, bool) {
	lo, hi := 0, len(es)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		e := &es[m]
		c := 0
		switch {
		case e.pfx < pfx:
			c = -1
		case e.pfx > pfx:
			c = 1
		case len(e.item.key) <= 8 && len(key) <= 8:
			// Equal prefixes hold all of both keys, padded with zeros:
			// the shorter key is the smaller, and equal lengths mean
			// equal keys, which the key's length (kept in the node)
			// tells without reading the key.
			c = len(e.item.key) - len(key)
		default:
			c = bytes.Compare(e.item.key, key)
		}
		switch {
		case c < 0:
			lo = m + 1
		case c > 0:
			hi = m
		default:
			return m, true
		}
	}
	return lo, false
}

// get returns the item for key.
func (t *tree) get(key []byte) (kvItem, bool) {
	n, pfx := t.root, prefix(key)
	for n != nil {
		i, found := search(n.items, pfx, key)
		if found {
			return n.items[i].item, true
		}
		if n.children == nil {
			break
		}
		n = n.children[i]
	}
	return kvItem{}, false
}

// mutable returns n if t may modify it in place, else a copy of n that t
// owns (which the caller must link in place of n).
//
// Node slices are sized to their contents plus one (room for the insert
// that usually follows), not to the maximum, and grow by append: a node
// allocated at full capacity but half full wastes 44 bytes per key on
// average, and twice that after sequential inserts, which split every
// leaf in half and never touch the left half again (at a million keys
// with 256-byte values that was 85 MB per replica).
func (t *tree) mutable(n *node) *node {
	if n.owner == t.owner {
		return n
	}
	c := &node{items: make([]entry, len(n.items), len(n.items)+1), owner: t.owner}
	copy(c.items, n.items)
	if n.children != nil {
		c.children = make([]*node, len(n.children), len(n.children)+1)
		copy(c.children, n.children)
	}
	return c
}

// upsert returns the slot for key, a pointer into a node t owns, and
// whether the key was already there. If it was not, upsert has inserted an
// item holding only key and counted it in len. Either way the caller must
// store the item for key in the slot before anything else uses the tree:
// the pointer is valid only until the next write, and an item with another
// key would break the order.
func (t *tree) upsert(key []byte) (*kvItem, bool) {
	pfx := prefix(key)
	if t.root == nil {
		t.root = &node{items: make([]entry, 1, 2), owner: t.owner}
		t.root.items[0] = entry{pfx: pfx, item: kvItem{key: key}}
		t.n++
		return &t.root.items[0].item, false
	}
	// Nodes are split on the way down, before they are full, so that an
	// insert into a leaf never has to split its ancestors afterwards.
	t.root = t.mutable(t.root)
	if len(t.root.items) == maxItems {
		old := t.root
		mid, right := t.split(old)
		t.root = &node{items: make([]entry, 1, 2), children: make([]*node, 2, 3), owner: t.owner}
		t.root.items[0] = mid
		t.root.children[0], t.root.children[1] = old, right
	}
	n := t.root
	rightEdge := true // n is the last node of its level: no key above its items
	for {
		i, found := search(n.items, pfx, key)
		if found {
			return &n.items[i].item, true
		}
		if n.children == nil {
			if rightEdge && i == len(n.items) && len(n.items) == cap(n.items) {
				// key is above every key in the tree: with keys written
				// in order (sequence numbers, timestamps) the following
				// writes land here too until the leaf splits. Growing it
				// to full size at once instead of nodeGrowth slots at a
				// time saves three copies of the leaf per split; only
				// this one leaf of the tree carries the unused room.
				grown := make([]entry, len(n.items), maxItems)
				copy(grown, n.items)
				n.items = grown
			}
			n.insertItem(i, entry{pfx: pfx, item: kvItem{key: key}})
			t.n++
			return &n.items[i].item, false
		}
		child := t.mutable(n.children[i])
		n.children[i] = child
		if len(child.items) == maxItems {
			mid, right := t.split(child)
			n.insertItem(i, mid)
			n.insertChild(i+1, right)
			switch c := bytes.Compare(key, mid.item.key); {
			case c == 0:
				return &n.items[i].item, true
			case c > 0:
				child = right
			}
		}
		rightEdge = rightEdge && child == n.children[len(n.children)-1]
		n = child
	}
}

// replaceOrInsert stores it and returns the item it replaced, if any.
func (t *tree) replaceOrInsert(it kvItem) (kvItem, bool) {
	slot, had := t.upsert(it.key)
	old := *slot
	*slot = it
	return old, had
}

// split splits the full node n, which t owns, around its middle item: n
// keeps the items below it and the returned node gets those above. Both
// halves get slices sized to them (see mutable): n's full-size slice is
// replaced, not truncated.
func (t *tree) split(n *node) (entry, *node) {
	const mid = maxItems / 2
	e := n.items[mid]
	right := &node{items: make([]entry, len(n.items)-mid-1, len(n.items)-mid), owner: t.owner}
	copy(right.items, n.items[mid+1:])
	left := make([]entry, mid, mid+1)
	copy(left, n.items[:mid])
	n.items = left
	if n.children != nil {
		right.children = make([]*node, len(n.children)-mid-1, len(n.children)-mid)
		copy(right.children, n.children[mid+1:])
		lc := make([]*node, mid+1, mid+2)
		copy(lc, n.children[:mid+1])
		n.children = lc
	}
	return e, right
}

// delete removes the item for key and returns it.
func (t *tree) delete(key []byte) (kvItem, bool) {
	if t.root == nil {
		return kvItem{}, false
	}
	t.root = t.mutable(t.root)
	e, ok := t.remove(t.root, prefix(key), key, false)
	if len(t.root.items) == 0 {
		// A merge emptied the root: its only child, if any, replaces it.
		if t.root.children != nil {
			t.root = t.root.children[0]
		} else {
			t.root = nil
		}
	}
	if ok {
		t.n--
	}
	return e.item, ok
}

// remove removes the item for key (or, if last, the largest item) from the
// subtree under n. n is owned by t and is the root or holds more than
// minItems items, so it can lose one without rebalancing its parent.
func (t *tree) remove(n *node, pfx uint64, key []byte, last bool) (entry, bool) {
	for {
		var i int
		var found bool
		switch {
		case !last:
			i, found = search(n.items, pfx, key)
		case n.children == nil:
			i, found = len(n.items)-1, true
		default:
			i = len(n.items)
		}
		if n.children == nil {
			if !found {
				return entry{}, false
			}
			e := n.items[i]
			n.removeItem(i)
			return e, true
		}
		if len(n.children[i].items) <= minItems {
			// Make sure child i can lose an item, then look again: the
			// items of n may have moved.
			t.grow(n, i)
			continue
		}
		child := t.mutable(n.children[i])
		n.children[i] = child
		if found {
			// An inner item is replaced by its predecessor, the largest
			// item of the subtree to its left.
			e := n.items[i]
			n.items[i], _ = t.remove(child, 0, nil, true)
			return e, true
		}
		n = child
	}
}

// grow gives child i of n, which holds minItems items, one more: it takes
// one through n from a sibling that can spare it, or else merges with a
// sibling and the item of n between them. n is owned by t.
func (t *tree) grow(n *node, i int) {
	if i > 0 && len(n.children[i-1].items) > minItems {
		left, child := t.mutable(n.children[i-1]), t.mutable(n.children[i])
		n.children[i-1], n.children[i] = left, child
		child.insertItem(0, n.items[i-1])
		n.items[i-1] = left.items[len(left.items)-1]
		left.removeItem(len(left.items) - 1)
		if left.children != nil {
			child.insertChild(0, left.children[len(left.children)-1])
			left.removeChild(len(left.children) - 1)
		}
		return
	}
	if i < len(n.items) && len(n.children[i+1].items) > minItems {
		child, right := t.mutable(n.children[i]), t.mutable(n.children[i+1])
		n.children[i], n.children[i+1] = child, right
		child.items = append(child.items, n.items[i])
		n.items[i] = right.items[0]
		right.removeItem(0)
		if right.children != nil {
			child.children = append(child.children, right.children[0])
			right.removeChild(0)
		}
		return
	}
	if i == len(n.items) {
		i-- // the last child merges with its left sibling
	}
	left, right := t.mutable(n.children[i]), n.children[i+1]
	n.children[i] = left
	left.items = append(left.items, n.items[i])
	left.items = append(left.items, right.items...)
	if left.children != nil {
		left.children = append(left.children, right.children...)
	}
	n.removeItem(i)
	n.removeChild(i + 1)
}

// nodeGrowth is about how many slots a full node slice gains when it must
// grow. Growing by a few slots, not by append's doubling, keeps a node's
// unused capacity small: with keys inserted in random order, doubling
// left 1.78 slots per entry (1.36 for nearly sequential keys, and nodes
// copied after a snapshot doubled again on their next insert); growing
// by about eight leaves 1.03–1.07.
const nodeGrowth = 8

// growCap returns the capacity for a full node slice of n elements of
// elemSize bytes that must grow: room for about nodeGrowth more, rounded
// up to what the runtime's size class for that many bytes holds anyway,
// and at most limit (but always more than n).
func growCap(n, elemSize, limit int) int {
	c := allocSize((n+nodeGrowth)*elemSize) / elemSize
	return max(min(c, limit), n+1)
}

// sizeClasses are the Go runtime's small-object size classes (Go 1.26,
// runtime/sizeclasses.go; TestAllocSize checks them against the runtime):
// an allocation of n bytes takes the first class at or above n.
var sizeClasses = [...]int{8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256,
	288, 320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
	2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728, 10240,
	10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672, 32768}

// allocSize returns how many bytes the runtime reserves for an n-byte
// allocation: its size class, or whole 8 KiB pages above them.
func allocSize(n int) int {
	if n > sizeClasses[len(sizeClasses)-1] {
		return (n + 8191) &^ 8191
	}
	i, _ := slices.BinarySearch(sizeClasses[:], n)
	return sizeClasses[i]
}

func (n *node) insertItem(i int, e entry) {
	if len(n.items) == cap(n.items) {
		grown := make([]entry, len(n.items), growCap(len(n.items), int(unsafe.Sizeof(entry{})), maxItems))
		copy(grown, n.items)
		n.items = grown
	}
	n.items = append(n.items, entry{})
	copy(n.items[i+1:], n.items[i:])
	n.items[i] = e
}

func (n *node) removeItem(i int) {
	copy(n.items[i:], n.items[i+1:])
	n.items[len(n.items)-1] = entry{}
	n.items = n.items[:len(n.items)-1]
}

func (n *node) insertChild(i int, c *node) {
	if len(n.children) == cap(n.children) {
		grown := make([]*node, len(n.children), growCap(len(n.children), int(unsafe.Sizeof((*node)(nil))), maxItems+1))
		copy(grown, n.children)
		n.children = grown
	}
	n.children = append(n.children, nil)
	copy(n.children[i+1:], n.children[i:])
	n.children[i] = c
}

func (n *node) removeChild(i int) {
	copy(n.children[i:], n.children[i+1:])
	n.children[len(n.children)-1] = nil
	n.children = n.children[:len(n.children)-1]
}

// ascend calls fn for every item in key order until fn returns false.
func (t *tree) ascend(fn func(kvItem) bool) {
	if t.root != nil {
		t.root.ascend(nil, nil, false, fn)
	}
}

// ascendFrom calls fn for every item with a key not below from, in key
// order, until fn returns false.
func (t *tree) ascendFrom(from []byte, fn func(kvItem) bool) {
	if t.root != nil {
		t.root.ascend(from, nil, false, fn)
	}
}

// ascendRange calls fn for every item with a key in [from, to), in key
// order, until fn returns false.
func (t *tree) ascendRange(from, to []byte, fn func(kvItem) bool) {
	if t.root != nil {
		t.root.ascend(from, to, true, fn)
	}
}

// ascend visits the items of the subtree with keys not below from (all of
// them if from is nil) and, if bounded, below to. It returns false once
// fn has returned false or an item at or above to has been reached.
func (n *node) ascend(from, to []byte, bounded bool, fn func(kvItem) bool) bool {
	i := 0
	if from != nil {
		var found bool
		i, found = search(n.items, prefix(from), from)
		if found && n.children != nil {
			// Child i holds only keys below from: start at item i.
			if !n.visit(i, to, bounded, fn) {
				return false
			}
			i++
		}
	}
	for ; i <= len(n.items); i++ {
		if n.children != nil && !n.children[i].ascend(from, to, bounded, fn) {
			return false
		}
		from = nil // everything after child i is above from
		if i < len(n.items) && !n.visit(i, to, bounded, fn) {
			return false
		}
	}
	return true
}

func (n *node) visit(i int, to []byte, bounded bool, fn func(kvItem) bool) bool {
	it := &n.items[i].item
	if bounded && bytes.Compare(it.key, to) >= 0 {
		return false
	}
	return fn(*it)
}
