package raft

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
)

// Config configures a RawNode. Zero values of optional fields get the
// defaults named in their comments.
type Config struct {
	// ID identifies this node; it must be non-zero and unique in the
	// cluster.
	ID uint64
	// ElectionTick is the number of Ticks a follower waits without hearing
	// from a leader before it campaigns. Each wait is randomized in
	// [ElectionTick, 2*ElectionTick) (§5.2). Default 10.
	ElectionTick int
	// HeartbeatTick is the number of Ticks between leader heartbeats; it
	// must be smaller than ElectionTick. Default 1.
	HeartbeatTick int
	// Storage is the durable log as the driver has persisted it.
	Storage Storage
	// Applied is the last index the application has applied, when
	// restarting; entries up to it are not handed out again.
	Applied uint64
	// MaxSizePerMsg bounds the entry bytes in one append. Default 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs bounds the appends sent to one follower and not yet
	// acknowledged. Default 256.
	MaxInflightMsgs int
	// MaxInflightBytes bounds the entry bytes in flight to one follower.
	// Default 32 MiB; set to a negative-free huge value to disable.
	MaxInflightBytes uint64
	// MaxCommittedSizePerReady bounds the committed entry bytes handed out
	// in one Ready. Default 64 MiB.
	MaxCommittedSizePerReady uint64
	// PreVote enables the pre-vote phase (thesis §9.6): a node first asks
	// whether it could win before disrupting the cluster with a new term.
	PreVote bool
	// CheckQuorum makes a leader step down when it has not heard from a
	// majority within an election timeout, and makes followers ignore
	// vote requests while they believe a leader is alive (thesis §6.2).
	CheckQuorum bool
	// AsyncStorageWrites lets the driver persist a Ready after Advance,
	// on another goroutine, while the core goes on stepping messages and
	// proposals. The driver then reports each write durable with
	// RawNode.AckWrite(rd.Ack), in the order the Readies were handed out.
	// Until that ack the core treats the write as in progress: the leader
	// does not count its own entries towards a commit quorum, a candidate
	// does not count its own vote, and committed entries are handed out
	// only up to the last locally durable index. Without it, Advance
	// itself reports the Ready persisted (the synchronous contract).
	AsyncStorageWrites bool
	// ElectionTickAdvance makes a node that starts (or restarts) count
	// ElectionTick-1 ticks as already elapsed, so it campaigns after a
	// randomized 1..ElectionTick ticks instead of ElectionTick..
	// 2*ElectionTick-1 if it hears from no leader: a restarted cluster, or
	// a single voter, elects a leader one election timeout sooner (etcd's
	// --initial-election-tick-advance). It takes effect only with PreVote
	// and CheckQuorum together: a node that campaigns early while a leader
	// is alive then only asks whether it could win, and peers that heard
	// from the leader within an election timeout refuse (the CheckQuorum
	// lease), so the early campaign cannot depose it. With PreVote alone
	// peers would grant the pre-vote and a healthy leader could be deposed.
	ElectionTickAdvance bool
	// BroadcastCommit sends every advance of the leader's commit index to
	// every follower at once, in an append of its own, as etcd's raft
	// does. Without it (the default) the leader sends such an append only
	// to a follower that waits for that commit index: one that forwarded
	// the proposal or asked for the read index. The others learn it from
	// the next append or heartbeat, so under load nothing changes, and
	// when writes stop a follower's applied state trails the leader's by
	// up to one heartbeat interval instead of one round trip. One client's
	// write then costs two messages per follower (append, acknowledgement)
	// instead of four. Where the leader and a follower make a quorum (up
	// to three voters) the leader also tells a follower that waits, and
	// has no newer entries on their way to it, once its own write is
	// durable, how far its log is durable (MsgDurable):
	// that follower commits as soon as its own write is, a round trip
	// sooner. Safety is unchanged: a follower commits only entries of the
	// current term that are durable on a quorum, as the leader would.
	BroadcastCommit bool
	// Rand supplies election jitter. Pass a seeded source for
	// reproducible runs. Default: a PCG seeded from ID.
	Rand *rand.Rand
	// Logger receives protocol events. Default: discard.
	Logger *slog.Logger
}

// ErrInvalidConfig is wrapped by the errors Config.Validate returns.
var ErrInvalidConfig = errors.New("raft: invalid config")

// Validate checks c and fills in defaults.
func (c *Config) Validate() error {
	if c.ID == None {
		return fmt.Errorf("%w: ID must not be 0", ErrInvalidConfig)
	}
	if c.ElectionTick == 0 {
		c.ElectionTick = 10
	}
	if c.HeartbeatTick == 0 {
		c.HeartbeatTick = 1
	}
	if c.HeartbeatTick < 0 || c.ElectionTick < 0 {
		return fmt.Errorf("%w: tick counts must be positive", ErrInvalidConfig)
	}
	if c.ElectionTick <= c.HeartbeatTick {
		return fmt.Errorf("%w: ElectionTick (%d) must be greater than HeartbeatTick (%d)", ErrInvalidConfig, c.ElectionTick, c.HeartbeatTick)
	}
	if c.Storage == nil {
		return fmt.Errorf("%w: Storage must not be nil", ErrInvalidConfig)
	}
	if c.MaxSizePerMsg == 0 {
		c.MaxSizePerMsg = 1 << 20
	}
	if c.MaxInflightMsgs == 0 {
		c.MaxInflightMsgs = 256
	}
	if c.MaxInflightMsgs < 0 {
		return fmt.Errorf("%w: MaxInflightMsgs must be positive", ErrInvalidConfig)
	}
	if c.MaxInflightBytes == 0 {
		c.MaxInflightBytes = 32 << 20
	}
	if c.MaxInflightBytes < c.MaxSizePerMsg {
		return fmt.Errorf("%w: MaxInflightBytes (%d) must be at least MaxSizePerMsg (%d)", ErrInvalidConfig, c.MaxInflightBytes, c.MaxSizePerMsg)
	}
	if c.MaxCommittedSizePerReady == 0 {
		c.MaxCommittedSizePerReady = 64 << 20
	}
	if c.Rand == nil {
		c.Rand = rand.New(rand.NewPCG(c.ID, 0x9e3779b97f4a7c15))
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}
