package kv

import (
	"fmt"
	"math"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Options configures a Store. Every replica of a group must use the same
// options, because they decide what Apply does.
type Options struct {
	// SessionTTL is how long an exactly-once session may stay idle, by the
	// clock carried in commands, before Apply forgets it. Zero or negative
	// means the default, one hour.
	SessionTTL time.Duration
}

// DefaultSessionTTL is the SessionTTL used when Options leaves it zero.
const DefaultSessionTTL = time.Hour

// Stats summarises a store's size.
type Stats struct {
	Keys     int   // live keys, including keys hidden by SetVisible
	Bytes    int64 // approximate memory held by keys and values (key and value bytes plus a per-key overhead)
	Sessions int   // exactly-once sessions in the table
}

// itemOverhead approximates the bytes a key costs beyond its key and value
// bytes (the tree slot and its metadata), for Stats.Bytes.
const itemOverhead = 80

// kvItem is one live key. Items are values in the tree and the byte slices
// they point to are never modified after insertion, so a cloned tree (a
// snapshot in progress) and a Range response can share them safely.
type kvItem struct {
	key, value                  []byte
	create, mod, version, lease int64
}

// session is one exactly-once client: the last sequence number applied for
// it and the encoded Result of that command. Sessions form a list ordered
// by last use, which (because the clock only moves forward) is also ordered
// by lastTime, so expiry pops from the front.
type session struct {
	id         uint64
	seq        uint64
	lastTime   int64
	result     []byte
	prev, next *session
}

// Store is the key/value state machine. Apply, Snapshot and Restore are
// meant for the single goroutine that applies the Raft log; Range and the
// accessors may be called from any goroutine at the same time.
type Store struct {
	ttl int64 // session TTL in nanoseconds

	mu      sync.RWMutex
	tree    *tree
	rev     int64  // current store revision; etcd starts at 1
	applied uint64 // last log index passed to Apply
	clock   int64  // max Command.Time seen so far
	bytes   int64  // sum over live keys of len(key)+len(value)

	sessions   map[uint64]*session
	head, tail *session // least and most recently used

	// visible, if not nil, hides every key for which it returns false from
	// every read and write path (see SetVisible). It is not part of the
	// state: snapshots do not carry it.
	visible func(key []byte) bool
}

// NewStore returns an empty store at revision 1.
func NewStore(opts Options) *Store {
	ttl := opts.SessionTTL
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	return &Store{
		ttl:      int64(ttl),
		tree:     newTree(),
		rev:      1,
		sessions: map[uint64]*session{},
	}
}

// Revision returns the current store revision.
func (s *Store) Revision() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev
}

// AppliedIndex returns the last log index passed to Apply (or restored
// from a snapshot).
func (s *Store) AppliedIndex() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.applied
}

// Stats returns the store's size.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := s.tree.len()
	return Stats{Keys: n, Bytes: s.bytes + int64(n)*itemOverhead, Sessions: len(s.sessions)}
}

// Apply applies the data of the committed log entry at index and returns
// its result. Empty data (a leader's no-op entry) only records the index.
// Apply never panics on bad data: an entry that does not decode yields a
// Result whose Err wraps ErrCorruptCommand, identically on every replica.
// An index at or below AppliedIndex is ignored (Err wraps ErrIndexApplied).
//
// For a command with a ClientID, Apply remembers the sequence number and
// encoded result: the same Seq again returns that result without applying
// anything, a lower Seq returns an error wrapping ErrStaleSequence.
func (s *Store) Apply(index uint64, data []byte) *Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index <= s.applied {
		return &Result{Err: fmt.Errorf("%w: index %d, applied index %d", ErrIndexApplied, index, s.applied)}
	}
	s.applied = index
	if len(data) == 0 {
		return &Result{}
	}
	c, err := UnmarshalCommand(data)
	if err != nil {
		return &Result{Err: fmt.Errorf("entry %d: %w", index, err)}
	}
	s.clock = max(s.clock, c.Time)
	s.expireSessions()
	if c.ClientID == 0 {
		return s.exec(c)
	}
	if c.Seq == 0 {
		return &Result{Err: errBadSequence}
	}
	sess := s.sessions[c.ClientID]
	if sess != nil {
		s.touch(sess)
		switch {
		case c.Seq == sess.seq:
			r, err := decodeResult(sess.result)
			if err != nil {
				// Results are encoded by this package and checked on
				// Restore, so this is memory corruption or a bug.
				panic(fmt.Sprintf("kv: cached result of client %d does not decode: %v", c.ClientID, err))
			}
			return r
		case c.Seq < sess.seq:
			return &Result{Err: fmt.Errorf("%w: client %d sent sequence number %d, but %d was already applied",
				ErrStaleSequence, c.ClientID, c.Seq, sess.seq)}
		}
	}
	r := s.exec(c)
	if sess == nil {
		sess = &session{id: c.ClientID}
		s.sessions[c.ClientID] = sess
		s.touch(sess)
	}
	sess.seq = c.Seq
	sess.result = encodeResult(r)
	return r
}

// exec applies the one request a command carries.
func (s *Store) exec(c *Command) *Result {
	n := 0
	for _, set := range []bool{c.Put != nil, c.DeleteRange != nil, c.Txn != nil, c.Append != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return &Result{Err: errInvalidCommand}
	}
	switch {
	case c.Put != nil:
		return s.applyPut(c.Put)
	case c.DeleteRange != nil:
		return s.applyDeleteRange(c.DeleteRange)
	case c.Txn != nil:
		return s.applyTxn(c.Txn)
	default:
		return s.applyAppend(c.Append)
	}
}

// touch marks sess as used now, moving it to the back of the list.
func (s *Store) touch(sess *session) {
	sess.lastTime = s.clock
	if s.tail == sess {
		return
	}
	s.unlink(sess)
	sess.prev = s.tail
	if s.tail != nil {
		s.tail.next = sess
	} else {
		s.head = sess
	}
	s.tail = sess
}

func (s *Store) unlink(sess *session) {
	if sess.prev != nil {
		sess.prev.next = sess.next
	} else if s.head == sess {
		s.head = sess.next
	}
	if sess.next != nil {
		sess.next.prev = sess.prev
	} else if s.tail == sess {
		s.tail = sess.prev
	}
	sess.prev, sess.next = nil, nil
}

// expireSessions forgets sessions idle for longer than the TTL. It depends
// only on replicated state, so every replica forgets the same sessions at
// the same entry.
func (s *Store) expireSessions() {
	if s.clock < math.MinInt64+s.ttl {
		return // nothing can be older than the TTL yet
	}
	cutoff := s.clock - s.ttl
	for s.head != nil && s.head.lastTime < cutoff {
		old := s.head
		s.unlink(old)
		delete(s.sessions, old.id)
	}
}

// get returns the live item for key, if it is visible.
func (s *Store) get(key []byte) (kvItem, bool) {
	it, ok := s.tree.get(key)
	if ok && !s.isVisible(it.key) {
		return kvItem{}, false
	}
	return it, ok
}

// isVisible reports whether SetVisible lets reads and writes see key.
func (s *Store) isVisible(key []byte) bool { return s.visible == nil || s.visible(key) }

// header returns a response header carrying only a revision; the server
// fills in cluster id, member id and raft term.
func header(rev int64) *pb.ResponseHeader { return &pb.ResponseHeader{Revision: rev} }
