package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sort"
)

// Shard operations. The sharding layer moves the keys of a shard from one
// Raft group to another: the old owner exports them (ExportShard), the new
// owner installs the blob through its own log (InstallShard), and the old
// owner later deletes its copy through its log (DeleteShard). The store
// knows nothing about shards: a shard is whatever a key predicate says it
// is, which keeps this package independent of internal/shard.
//
// While keys of a shard the group does not serve (or no longer serves) lie
// in the store, SetVisible hides them from every request.

// Shard blob format (docs/kv.md, "Shard operations"):
//
//	magic "CAIRNSH\n", uvarint format version (1)
//	varint revision (the exporting store's), varint session clock
//	uvarint key count, then per key in strictly increasing key order:
//	    uvarint len, key, uvarint len, value,
//	    varint create_revision, mod_revision, version, lease
//	uvarint session count, then per session in strictly increasing
//	client id order (the whole session table):
//	    uvarint client id, uvarint seq, varint last time,
//	    uvarint len, encoded result
//	uint32 big-endian CRC-32C of every byte before it
//
// The layout is the snapshot's, without the applied index: the same state
// always exports to the same bytes.
const shardMagic = "CAIRNSH\n"

const shardVersion = 1

// shardMinKeyLen is the fewest bytes one key record can take (a one-byte
// key, an empty value and four one-byte varints). It bounds the key count
// a blob can claim, so a corrupt count cannot force a huge allocation.
const shardMinKeyLen = 7

// SetVisible makes the store behave as if every key for which visible
// returns false did not exist; nil (the default) makes every key visible.
// Hidden keys are not returned or counted by Range and RangeFiltered, txn
// compares see them as missing (version, create and mod revision 0; a
// VALUE compare fails), txn range ops skip them, DeleteRange (plain or in
// a txn) leaves them alone, and a Put or Append to a hidden key writes it
// as a new key (version 1, no prev_kv; ignore_value and ignore_lease fail
// with ErrGRPCKeyNotFound), replacing the hidden item. The sharding layer
// should refuse such writes before they reach the log, since the written
// key stays hidden.
//
// The predicate is configuration, not state: snapshots do not carry it and
// Restore does not change it. To keep replicas identical the owner must
// change it only from the goroutine that applies the log, at a position
// derived from the log (for example when it applies a shard configuration
// entry), and must set it again after Restore from the state it restores
// alongside the store. Reads that run concurrently see either the old or
// the new predicate, never a mix, because SetVisible takes the write lock.
// To make a shard appear, install it first and then widen the predicate;
// to make one disappear, narrow the predicate first and then delete it.
//
// visible is called under the store lock, possibly from several goroutines
// at once, so it must be a pure, deterministic function of the key that
// does not call into the store, and the caller must not change what it
// returns except by calling SetVisible again with a new function.
//
// ExportShard, InstallShard, DeleteShard, CountMatching, Stats and
// snapshots ignore the predicate: they work on what the store holds.
func (s *Store) SetVisible(visible func(key []byte) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.visible = visible
}

// RecordIndex records the log entry at index as applied without changing
// anything else, for entries the layer above handles itself (shard
// configuration records, refused requests). An index at or below
// AppliedIndex returns an error wrapping ErrIndexApplied. It is
// Apply(index, nil).
func (s *Store) RecordIndex(index uint64) error {
	return s.Apply(index, nil).Err
}

// CountMatching returns how many keys the store holds for which match
// returns true (nil matches every key), and their approximate memory in
// the unit of Stats.Bytes. It counts what the store holds, hidden keys
// included. It walks every key, under the read lock.
func (s *Store) CountMatching(match func(key []byte) bool) (keys int, bytes int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.tree.ascend(func(it kvItem) bool {
		if match == nil || match(it.key) {
			keys++
			bytes += int64(len(it.key)+len(it.value)) + itemOverhead
		}
		return true
	})
	return keys, bytes
}

// ExportShard returns a self-contained, checksummed blob (format above)
// holding every key the store holds for which match returns true (nil
// matches every key; hidden keys are exported too), each with its value,
// create and mod revision, version and lease; the store revision and
// session clock; and the whole exactly-once session table, so that a
// client's retry of a command this group applied finds its cached result
// in the group that installs the blob. It runs under the read lock; call
// it from the apply goroutine at the log position where the shard leaves
// the group so that every replica exports the same bytes. The error is
// always nil today.
func (s *Store) ExportShard(match func(key []byte) bool) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()

	// Two passes over the tree, the first to size the blob exactly, so the
	// blob is the only large allocation. match must therefore be a pure
	// function of the key, as SetVisible requires of its predicate.
	nkeys := 0
	size := len(shardMagic) + uvarintLen(shardVersion) + varintLen(s.rev) + varintLen(s.clock) + 4
	s.tree.ascend(func(it kvItem) bool {
		if match == nil || match(it.key) {
			nkeys++
			size += uvarintLen(uint64(len(it.key))) + len(it.key) + uvarintLen(uint64(len(it.value))) + len(it.value) +
				varintLen(it.create) + varintLen(it.mod) + varintLen(it.version) + varintLen(it.lease)
		}
		return true
	})
	size += uvarintLen(uint64(nkeys)) + uvarintLen(uint64(len(s.sessions)))
	sessions := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		sessions = append(sessions, sess)
		size += uvarintLen(sess.id) + uvarintLen(sess.seq) + varintLen(sess.lastTime) + uvarintLen(uint64(len(sess.result))) + len(sess.result)
	}
	sort.Slice(sessions, func(i, j int) bool { return sessions[i].id < sessions[j].id })

	b := make([]byte, 0, size)
	b = append(b, shardMagic...)
	b = binary.AppendUvarint(b, shardVersion)
	b = binary.AppendVarint(b, s.rev)
	b = binary.AppendVarint(b, s.clock)
	b = binary.AppendUvarint(b, uint64(nkeys))
	s.tree.ascend(func(it kvItem) bool {
		if match == nil || match(it.key) {
			b = binary.AppendUvarint(b, uint64(len(it.key)))
			b = append(b, it.key...)
			b = binary.AppendUvarint(b, uint64(len(it.value)))
			b = append(b, it.value...)
			b = binary.AppendVarint(b, it.create)
			b = binary.AppendVarint(b, it.mod)
			b = binary.AppendVarint(b, it.version)
			b = binary.AppendVarint(b, it.lease)
		}
		return true
	})
	b = binary.AppendUvarint(b, uint64(len(sessions)))
	for _, sess := range sessions {
		b = binary.AppendUvarint(b, sess.id)
		b = binary.AppendUvarint(b, sess.seq)
		b = binary.AppendVarint(b, sess.lastTime)
		b = binary.AppendUvarint(b, uint64(len(sess.result)))
		b = append(b, sess.result...)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// InstallShard applies the log entry at index that carries a blob written
// by ExportShard (of this or another group). The index rules are Apply's:
// an index at or below AppliedIndex returns an error wrapping
// ErrIndexApplied and changes nothing; otherwise the index is recorded as
// applied whatever happens next.
//
// The whole blob is decoded and checked (checksum, order, plausible
// metadata, cached results that decode) before anything changes; a blob
// that fails returns an error wrapping ErrCorruptShard and leaves the
// store as it was, apart from the applied index. Otherwise:
//
//   - every key of the blob is inserted with the blob's metadata,
//     replacing any item of the same key (the caller guarantees the shard's
//     keys are absent; a replaced item is dropped, hidden or not);
//   - the store revision becomes max(current, blob revision), so revisions
//     never go backwards and the installed mod revisions are never above
//     the store's;
//   - the session clock becomes max(current, blob clock), so no session is
//     last used after the clock;
//   - sessions merge: for each session of the blob, the side (local or
//     blob) with the higher sequence number keeps its sequence number and
//     cached result (local on a tie), and the last-used time is the later
//     of the two. The use-order list stays ordered by last-used time, so
//     expiry still works; sessions past the TTL are forgotten by the next
//     Apply, as usual.
//
// Install ignores the SetVisible predicate; widen it after installing.
func (s *Store) InstallShard(index uint64, blob []byte) error {
	// Decode outside the lock: it depends only on the blob, and readers
	// should not wait for it.
	st, derr := decodeShard(blob)
	if derr == nil {
		st.own()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if index <= s.applied {
		return fmt.Errorf("%w: index %d, applied index %d", ErrIndexApplied, index, s.applied)
	}
	s.applied = index
	if derr != nil {
		return fmt.Errorf("entry %d: %w", index, derr)
	}
	for _, it := range st.items {
		old, replaced := s.tree.replaceOrInsert(it)
		s.bytes += int64(len(it.key) + len(it.value))
		if replaced {
			s.bytes -= int64(len(old.key) + len(old.value))
		}
	}
	s.rev = max(s.rev, st.rev)
	s.clock = max(s.clock, st.clock)
	s.mergeSessions(st.sessions)
	return nil
}

// DeleteShard applies the log entry at index that drops every key the
// store holds for which match returns true (nil matches every key; hidden
// keys are deleted too), and returns how many it deleted. The index rules
// are Apply's (ErrIndexApplied, and no change, for an index at or below
// AppliedIndex).
//
// It does not change the revision and does not touch the session table.
// It is not a client-visible write: it garbage-collects the data of a
// shard the group no longer serves, which clients could not see anyway
// (the layer above routes them elsewhere and hides the keys with
// SetVisible), so no revision may be spent on it. A revision bump would
// also be visible to the group's other shards as a phantom write.
func (s *Store) DeleteShard(index uint64, match func(key []byte) bool) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index <= s.applied {
		return 0, fmt.Errorf("%w: index %d, applied index %d", ErrIndexApplied, index, s.applied)
	}
	s.applied = index
	var victims []kvItem
	s.tree.ascend(func(it kvItem) bool {
		if match == nil || match(it.key) {
			victims = append(victims, it)
		}
		return true
	})
	for _, it := range victims {
		s.tree.delete(it.key)
		s.bytes -= int64(len(it.key) + len(it.value))
	}
	return len(victims), nil
}

// mergeSessions merges sessions decoded from a shard blob (in increasing
// client id order) into the table, as InstallShard describes. Sessions
// whose last-used time moves are unlinked and then inserted, in
// (lastTime, id) order, after every listed session with a last-used time
// not above theirs: the list stays ordered by lastTime, and the result
// depends only on the list order and the blob.
func (s *Store) mergeSessions(in []*session) {
	var moved []*session
	for _, b := range in {
		l := s.sessions[b.id]
		if l == nil {
			n := &session{id: b.id, seq: b.seq, lastTime: b.lastTime, result: b.result}
			s.sessions[b.id] = n
			moved = append(moved, n)
			continue
		}
		if b.seq > l.seq {
			l.seq, l.result = b.seq, b.result
		}
		if b.lastTime > l.lastTime {
			s.unlink(l)
			l.lastTime = b.lastTime
			moved = append(moved, l)
		}
	}
	sort.SliceStable(moved, func(i, j int) bool { return moved[i].lastTime < moved[j].lastTime })
	cur := s.head
	for _, m := range moved {
		for cur != nil && cur.lastTime <= m.lastTime {
			cur = cur.next
		}
		if cur == nil { // append
			m.prev = s.tail
			if s.tail != nil {
				s.tail.next = m
			} else {
				s.head = m
			}
			s.tail = m
			continue
		}
		m.prev, m.next = cur.prev, cur
		if cur.prev != nil {
			cur.prev.next = m
		} else {
			s.head = m
		}
		cur.prev = m
	}
}

// varintLen is the length of x's zig-zag varint encoding.
func varintLen(x int64) int {
	ux := uint64(x) << 1
	if x < 0 {
		ux = ^ux
	}
	return uvarintLen(ux)
}

// shardState is a decoded shard blob. Until own is called, keys, values
// and results alias the blob.
type shardState struct {
	rev, clock int64
	items      []kvItem
	keyBytes   int
	sessions   []*session
}

// own copies everything the state aliases, so the store never shares
// memory with the caller's log entry. All keys go into one allocation
// (they are small, and an overwrite keeps the key slice); each value and
// each cached result gets its own, so that overwriting a value frees it.
func (st *shardState) own() {
	arena := make([]byte, 0, st.keyBytes)
	for i := range st.items {
		it := &st.items[i]
		start := len(arena)
		arena = append(arena, it.key...)
		it.key = arena[start:len(arena):len(arena)]
		it.value = clone(it.value)
	}
	for _, sess := range st.sessions {
		sess.result = clone(sess.result)
	}
}

// decodeShard decodes and checks a blob written by ExportShard. It never
// panics; every error wraps ErrCorruptShard. The result aliases blob.
func decodeShard(blob []byte) (st *shardState, err error) {
	defer func() {
		// The cached results are checked by generated protobuf decoders,
		// which check their bounds; this is a last line of defence, as in
		// UnmarshalCommand, so that one bad entry cannot crash every
		// replica.
		if r := recover(); r != nil {
			st, err = nil, fmt.Errorf("%w: decoder panic: %v", ErrCorruptShard, r)
		}
	}()
	if len(blob) < len(shardMagic)+4 {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrCorruptShard, len(blob))
	}
	if string(blob[:len(shardMagic)]) != shardMagic {
		return nil, fmt.Errorf("%w: not a Cairn shard blob (bad magic %q)", ErrCorruptShard, blob[:len(shardMagic)])
	}
	body := blob[:len(blob)-4]
	if got, want := binary.BigEndian.Uint32(blob[len(body):]), crc32.Checksum(body, castagnoli); got != want {
		return nil, fmt.Errorf("%w: checksum mismatch (stored %08x, computed %08x)", ErrCorruptShard, got, want)
	}
	return decodeShardBody(body[len(shardMagic):])
}

// decodeShardBody decodes everything between the magic and the checksum.
func decodeShardBody(b []byte) (st *shardState, err error) {
	d := decoder{b: b}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCorruptShard, fmt.Sprintf(format, args...))
	}
	truncated := func(what string) error { return bad("%s: %v", what, d.err) }

	if v := d.uvarint(); d.err != nil {
		return nil, truncated("format version")
	} else if v != shardVersion {
		return nil, bad("unsupported format version %d (this build reads version %d)", v, shardVersion)
	}
	st = &shardState{rev: d.varint(), clock: d.varint()}
	if d.err != nil {
		return nil, truncated("revision and clock")
	}
	if st.rev < 1 {
		return nil, bad("revision %d is below 1", st.rev)
	}
	nkeys := d.uvarint()
	if d.err != nil {
		return nil, truncated("key count")
	}
	if nkeys > uint64(len(d.b)/shardMinKeyLen) {
		return nil, bad("%d keys cannot fit in %d bytes", nkeys, len(d.b))
	}
	st.items = make([]kvItem, 0, nkeys)
	var prev []byte
	for i := uint64(0); i < nkeys; i++ {
		it := kvItem{key: d.bytes(d.uvarint())}
		it.value = d.bytes(d.uvarint())
		it.create, it.mod, it.version, it.lease = d.varint(), d.varint(), d.varint(), d.varint()
		switch {
		case d.err != nil:
			return nil, truncated(fmt.Sprintf("key %d", i))
		case len(it.key) == 0:
			return nil, bad("key %d is empty", i)
		case i > 0 && bytes.Compare(prev, it.key) >= 0:
			return nil, bad("key %d (%q) is not above the key before it", i, it.key)
		case it.create < 2 || it.mod < it.create || it.mod > st.rev || it.version < 1:
			return nil, bad("key %q has impossible metadata (create %d, mod %d, version %d, revision %d)",
				it.key, it.create, it.mod, it.version, st.rev)
		}
		if len(it.value) == 0 {
			it.value = nil
		}
		prev = it.key
		st.keyBytes += len(it.key)
		st.items = append(st.items, it)
	}
	nsess := d.uvarint()
	if d.err != nil {
		return nil, truncated("session count")
	}
	if nsess > uint64(len(d.b)/4) { // id, seq, time, result length: one byte each at least
		return nil, bad("%d sessions cannot fit in %d bytes", nsess, len(d.b))
	}
	st.sessions = make([]*session, 0, nsess)
	var prevID uint64
	for i := uint64(0); i < nsess; i++ {
		sess := &session{id: d.uvarint(), seq: d.uvarint(), lastTime: d.varint()}
		sess.result = d.bytes(d.uvarint())
		switch {
		case d.err != nil:
			return nil, truncated(fmt.Sprintf("session %d", i))
		case sess.id == 0 || (i > 0 && sess.id <= prevID):
			return nil, bad("session %d has client id %d, not above %d", i, sess.id, prevID)
		case sess.seq == 0:
			return nil, bad("session of client %d has sequence number 0", sess.id)
		case sess.lastTime > st.clock:
			return nil, bad("session of client %d was last used after the clock", sess.id)
		}
		if _, err := decodeResult(sess.result); err != nil {
			return nil, bad("cached result of client %d: %v", sess.id, err)
		}
		prevID = sess.id
		st.sessions = append(st.sessions, sess)
	}
	if len(d.b) != 0 {
		return nil, bad("%d unexpected bytes before the checksum", len(d.b))
	}
	return st, nil
}
