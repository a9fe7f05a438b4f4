package shard

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"time"
)

// Options configures a Controller.
type Options struct {
	// Shards is the cluster's fixed shard count. Default DefaultShards.
	// Every replica of a controller must use the same count (it shapes
	// configuration 0); a snapshot carries the count, and Restore adopts it.
	Shards int
	// SessionTTL is how long an exactly-once session may stay idle, by the
	// clock carried in commands, before the controller forgets it.
	// Default DefaultSessionTTL.
	SessionTTL time.Duration
}

// DefaultSessionTTL is the SessionTTL used when Options leaves it zero.
const DefaultSessionTTL = time.Hour

// Result is the outcome of applying one command.
type Result struct {
	// Config is the configuration the command made (Join, Leave, Move) or
	// asked for (Query); the zero Config when Err is set or the entry was
	// empty. It is the caller's own copy.
	Config Config
	// Err is set when the command was refused. Errors decided from the
	// command and the controller's state wrap ErrInvalidCommand,
	// ErrGroupExists or ErrUnknownGroup and are the same on every
	// replica; errors about the entry or the session wrap
	// ErrCorruptCommand or ErrStaleSequence. A refused command makes no
	// configuration.
	Err error
}

// session is the exactly-once record of one client: the last sequence
// number applied and its result, kept as the number of the configuration
// it answered with (configurations are never changed once made) or as the
// error it was refused with.
type session struct {
	seq      uint64
	lastTime int64 // command clock when last used
	code     uint64
	num      uint64 // when code is codeOK
	msg      string // when code is not codeOK
}

// Controller is the shard controller's replicated state machine: the full
// history of configurations and the exactly-once session table. Apply,
// Snapshot and Restore are meant to be called from the Raft driver's one
// apply goroutine; Query and the other reads may be called concurrently
// with them.
type Controller struct {
	ttl int64 // nanoseconds

	mu       sync.RWMutex
	nShards  int
	configs  []Config // configs[i].Num == i; never modified once appended
	clock    int64    // max command Time applied
	sessions map[uint64]*session
}

// NewController returns a controller holding only configuration 0. It
// panics if opts.Shards is outside [0, MaxShards] (0 means the default).
func NewController(opts Options) *Controller {
	n := opts.Shards
	if n == 0 {
		n = DefaultShards
	}
	if n < 1 || n > MaxShards {
		panic(fmt.Sprintf("shard: NewController: %d shards, want 1 to %d", n, MaxShards))
	}
	ttl := opts.SessionTTL
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	return &Controller{
		ttl:      int64(ttl),
		nShards:  n,
		configs:  []Config{InitialConfig(n)},
		sessions: map[uint64]*session{},
	}
}

// NumShards returns the cluster's shard count.
func (c *Controller) NumShards() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.nShards
}

// Sessions returns the number of exactly-once sessions in the table.
func (c *Controller) Sessions() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.sessions)
}

// Query returns a copy of configuration num, or of the latest one when num
// is negative or beyond it. It reads local state: for a linearizable
// answer the caller first waits for a Raft read index, or sends an OpQuery
// command through the log instead.
func (c *Controller) Query(num int64) Config {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.query(num).Clone()
}

func (c *Controller) query(num int64) Config {
	if num < 0 || num >= int64(len(c.configs)) {
		return c.configs[len(c.configs)-1]
	}
	return c.configs[num]
}

// Apply applies the data of one committed log entry and returns its
// result. Empty data (a leader's no-op entry) changes nothing. Apply never
// panics on bad data: an entry that does not decode yields an error
// wrapping ErrCorruptCommand, identically on every replica.
//
// For a command with a ClientID, Apply remembers the sequence number and
// the result: the same Seq again returns that result without applying
// anything (a retried Join makes no second configuration, a retried Query
// answers the configuration the first attempt answered), and a lower Seq
// returns an error wrapping ErrStaleSequence.
func (c *Controller) Apply(data []byte) Result {
	if len(data) == 0 {
		return Result{}
	}
	cmd, err := UnmarshalCommand(data)
	if err != nil {
		return Result{Err: err}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock = max(c.clock, cmd.Time)
	c.expireSessions()
	if cmd.ClientID == 0 {
		return c.result(c.exec(cmd))
	}
	if cmd.Seq == 0 {
		return Result{Err: newApplyError(codeInvalidCommand, "a session command needs a sequence number starting at 1")}
	}
	sess := c.sessions[cmd.ClientID]
	if sess != nil {
		sess.lastTime = c.clock
		switch {
		case cmd.Seq == sess.seq:
			return c.result(*sess)
		case cmd.Seq < sess.seq:
			return Result{Err: fmt.Errorf("%w: client %d sent sequence number %d, but %d was already applied",
				ErrStaleSequence, cmd.ClientID, cmd.Seq, sess.seq)}
		}
	}
	out := c.exec(cmd)
	out.seq, out.lastTime = cmd.Seq, c.clock
	c.sessions[cmd.ClientID] = &out
	return c.result(out)
}

// result turns an outcome into a Result with the caller's own copy of the
// configuration.
func (c *Controller) result(o session) Result {
	if o.code != codeOK {
		return Result{Err: &applyError{code: o.code, msg: o.msg}}
	}
	return Result{Config: c.configs[o.num].Clone()}
}

// refuse is the outcome of a refused command.
func refuse(code uint64, format string, args ...any) session {
	e := newApplyError(code, fmt.Sprintf(format, args...)).(*applyError)
	return session{code: e.code, msg: e.msg}
}

// exec applies one command's operation and returns its outcome.
func (c *Controller) exec(cmd *Command) session {
	latest := c.configs[len(c.configs)-1]
	switch cmd.Op {
	case OpQuery:
		return session{num: c.query(cmd.Num).Num}
	case OpJoin:
		if len(cmd.Groups) == 0 {
			return refuse(codeInvalidCommand, "join names no groups")
		}
		for _, gid := range slices.Sorted(maps.Keys(cmd.Groups)) {
			if err := validateGroup(gid, cmd.Groups[gid]); err != nil {
				return refuse(codeInvalidCommand, "join: %v", err)
			}
			if latest.Groups[gid] != nil {
				return refuse(codeGroupExists, "join: group %d is in configuration %d", gid, latest.Num)
			}
		}
		next := latest.Clone()
		for gid, addrs := range cmd.Groups {
			next.Groups[gid] = slices.Clone(addrs)
		}
		next.Shards = Rebalance(latest.Shards, next.GroupIDs())
		return c.commit(next)
	case OpLeave:
		if len(cmd.GIDs) == 0 {
			return refuse(codeInvalidCommand, "leave names no groups")
		}
		seen := make(map[GroupID]bool, len(cmd.GIDs))
		for _, gid := range cmd.GIDs {
			if seen[gid] {
				return refuse(codeInvalidCommand, "leave names group %d twice", gid)
			}
			seen[gid] = true
			if latest.Groups[gid] == nil {
				return refuse(codeUnknownGroup, "leave: group %d is not in configuration %d", gid, latest.Num)
			}
		}
		next := latest.Clone()
		for _, gid := range cmd.GIDs {
			delete(next.Groups, gid)
		}
		if len(next.Groups) == 0 {
			// The shards' data would have no group to move to, and a
			// group joining later would start them empty.
			return refuse(codeInvalidCommand, "leave would remove every group; join another group first so the shards' data has somewhere to go")
		}
		next.Shards = Rebalance(latest.Shards, next.GroupIDs())
		return c.commit(next)
	case OpMove:
		if cmd.Shard < 0 || cmd.Shard >= c.nShards {
			return refuse(codeInvalidCommand, "move: shard %d is out of range [0, %d)", cmd.Shard, c.nShards)
		}
		if cmd.GID == NoGroup || latest.Groups[cmd.GID] == nil {
			return refuse(codeUnknownGroup, "move: group %d is not in configuration %d", cmd.GID, latest.Num)
		}
		next := latest.Clone()
		next.Shards[cmd.Shard] = cmd.GID
		return c.commit(next)
	}
	// UnmarshalCommand refuses unknown operations.
	return refuse(codeInvalidCommand, "unknown operation %v", cmd.Op)
}

// commit appends next as the newest configuration.
func (c *Controller) commit(next Config) session {
	next.Num = uint64(len(c.configs))
	c.configs = append(c.configs, next)
	return session{num: next.Num}
}

// expireSessions forgets sessions idle for longer than the TTL. It depends
// only on replicated state (and deletes a set, so map order does not
// matter), so every replica forgets the same sessions at the same entry.
func (c *Controller) expireSessions() {
	if c.clock < math.MinInt64+c.ttl {
		return // nothing can be older than the TTL yet
	}
	cutoff := c.clock - c.ttl
	for id, sess := range c.sessions {
		if sess.lastTime < cutoff {
			delete(c.sessions, id)
		}
	}
}
