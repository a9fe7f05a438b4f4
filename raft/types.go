package raft

import "fmt"

// None is the node ID that means "no node": no vote cast, no leader known.
const None uint64 = 0

// EntryType says how the state machine should interpret an entry's Data.
type EntryType uint8

const (
	// EntryNormal carries an application command. An entry with empty
	// Data is the no-op a new leader appends to commit entries of earlier
	// terms (§5.4.2, §8 of the Raft paper); applications skip it.
	EntryNormal EntryType = iota
	// EntryConfChange carries an encoded ConfChange. The core applies it
	// to its own membership when the entry is applied; the application
	// sees it too so it can, for example, dial the new peer.
	EntryConfChange
)

func (t EntryType) String() string {
	switch t {
	case EntryNormal:
		return "Normal"
	case EntryConfChange:
		return "ConfChange"
	}
	return fmt.Sprintf("EntryType(%d)", uint8(t))
}

// Entry is one record of the replicated log.
type Entry struct {
	Term  uint64
	Index uint64
	Type  EntryType
	Data  []byte
}

// HardState is the state every node must persist before it answers a
// message that depends on it (Figure 2: currentTerm, votedFor), plus the
// commit index so a restarted node knows what it may apply at once.
type HardState struct {
	Term   uint64
	Vote   uint64
	Commit uint64
}

// IsEmpty reports whether h is the zero HardState.
func (h HardState) IsEmpty() bool { return h == HardState{} }

// ConfState is a cluster membership: the voters, whose majority decides
// elections and commitment, and the learners, who receive the log but
// neither vote nor count towards a quorum.
type ConfState struct {
	Voters   []uint64
	Learners []uint64
}

// Equal reports whether c and o list the same members in the same order.
func (c ConfState) Equal(o ConfState) bool {
	return equalIDs(c.Voters, o.Voters) && equalIDs(c.Learners, o.Learners)
}

func equalIDs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// SnapshotMeta identifies a snapshot: the last entry it covers and the
// membership in force at that entry.
type SnapshotMeta struct {
	Index     uint64
	Term      uint64
	ConfState ConfState
}

// Snapshot is a point-in-time image of the state machine. Data is opaque
// to Raft. A driver that streams large snapshots out of band may leave Data
// empty in messages and fetch the bytes itself (see raftnode).
type Snapshot struct {
	Meta SnapshotMeta
	Data []byte
}

// IsEmpty reports whether s is the zero snapshot.
func (s *Snapshot) IsEmpty() bool { return s == nil || s.Meta.Index == 0 }

// ConfChangeType is the kind of a single membership change.
type ConfChangeType uint8

const (
	// ConfChangeAddVoter adds a voter, or promotes a learner to voter.
	ConfChangeAddVoter ConfChangeType = iota
	// ConfChangeAddLearner adds a non-voting member that receives the log.
	ConfChangeAddLearner
	// ConfChangeRemove removes a voter or a learner.
	ConfChangeRemove
)

func (t ConfChangeType) String() string {
	switch t {
	case ConfChangeAddVoter:
		return "AddVoter"
	case ConfChangeAddLearner:
		return "AddLearner"
	case ConfChangeRemove:
		return "Remove"
	}
	return fmt.Sprintf("ConfChangeType(%d)", uint8(t))
}

// ConfChange is one membership change. Cairn changes membership one server
// at a time (Raft thesis §4.1): any two majorities of the old and new
// configurations then overlap, so no joint consensus is needed, provided a
// leader has only one change in flight and has committed an entry of its
// own term first (the correction published on the raft-dev list in 2015).
type ConfChange struct {
	Type   ConfChangeType
	NodeID uint64
	// Context is opaque to Raft; applications use it to carry, for
	// example, the new member's address.
	Context []byte
}

// MessageType identifies what a Message asks or answers.
type MessageType uint8

const (
	// MsgHup is local: start an election (or pre-election) now.
	MsgHup MessageType = iota
	// MsgProp carries proposals; followers forward them to the leader.
	MsgProp
	// MsgApp replicates entries after (Index, LogTerm) (AppendEntries).
	MsgApp
	// MsgAppResp acknowledges or rejects a MsgApp.
	MsgAppResp
	// MsgVote requests a vote (RequestVote).
	MsgVote
	// MsgVoteResp grants or refuses a vote.
	MsgVoteResp
	// MsgPreVote asks whether the recipient would vote for the sender in
	// the next term, without changing anyone's term (thesis §9.6).
	MsgPreVote
	// MsgPreVoteResp answers a MsgPreVote.
	MsgPreVoteResp
	// MsgHeartbeat asserts leadership and carries read-index contexts.
	MsgHeartbeat
	// MsgHeartbeatResp answers a heartbeat.
	MsgHeartbeatResp
	// MsgSnap installs a snapshot on a follower (InstallSnapshot).
	MsgSnap
	// MsgReadIndex asks for a linearizable read index. Local on any node;
	// sent by a follower to the leader.
	MsgReadIndex
	// MsgReadIndexResp carries the leader's read index back to a follower.
	MsgReadIndexResp
	// MsgTransferLeader asks the leader to hand leadership to From.
	MsgTransferLeader
	// MsgTimeoutNow tells the transfer target to campaign at once.
	MsgTimeoutNow
	// MsgSnapStatus is local: the driver reports whether sending a
	// snapshot to From succeeded (Reject=true means it failed).
	MsgSnapStatus
	// MsgUnreachable is local: the driver reports that From could not be
	// reached, so the leader should stop pipelining to it.
	MsgUnreachable
	// MsgCheckQuorum is local: the leader checks that a majority has been
	// heard from within the last election timeout.
	MsgCheckQuorum
	// MsgBeat is local: the leader sends heartbeats now.
	MsgBeat
	// MsgDurable tells a follower that the leader's log is durable up to
	// Index, where the two of them make a quorum: the follower may then
	// commit, on its own, the entries of this term that it also holds
	// durably, without waiting for the round trip of its acknowledgement
	// and the leader's commit index (see Config.BroadcastCommit).
	MsgDurable
	msgTypeCount
)

var msgNames = [...]string{
	MsgHup: "MsgHup", MsgProp: "MsgProp", MsgApp: "MsgApp", MsgAppResp: "MsgAppResp",
	MsgVote: "MsgVote", MsgVoteResp: "MsgVoteResp", MsgPreVote: "MsgPreVote",
	MsgPreVoteResp: "MsgPreVoteResp", MsgHeartbeat: "MsgHeartbeat",
	MsgHeartbeatResp: "MsgHeartbeatResp", MsgSnap: "MsgSnap", MsgReadIndex: "MsgReadIndex",
	MsgReadIndexResp: "MsgReadIndexResp", MsgTransferLeader: "MsgTransferLeader",
	MsgTimeoutNow: "MsgTimeoutNow", MsgSnapStatus: "MsgSnapStatus",
	MsgUnreachable: "MsgUnreachable", MsgCheckQuorum: "MsgCheckQuorum", MsgBeat: "MsgBeat",
	MsgDurable: "MsgDurable",
}

func (t MessageType) String() string {
	if int(t) < len(msgNames) && msgNames[t] != "" {
		return msgNames[t]
	}
	return fmt.Sprintf("MessageType(%d)", uint8(t))
}

// IsLocal reports whether t is only ever used inside one node and must be
// rejected if it arrives from the network.
func (t MessageType) IsLocal() bool {
	switch t {
	case MsgHup, MsgSnapStatus, MsgUnreachable, MsgCheckQuorum, MsgBeat:
		return true
	}
	return false
}

// IsResponse reports whether t answers another message.
func (t MessageType) IsResponse() bool {
	switch t {
	case MsgAppResp, MsgVoteResp, MsgPreVoteResp, MsgHeartbeatResp, MsgReadIndexResp:
		return true
	}
	return false
}

// Message is the unit of communication between Raft nodes. Which fields
// mean what depends on Type; the comments name the common uses.
type Message struct {
	Type MessageType
	To   uint64
	From uint64
	Term uint64
	// LogTerm and Index: for MsgApp the entry preceding Entries; for
	// MsgVote/MsgPreVote the candidate's last entry; for a rejecting
	// MsgAppResp the follower's hint (see RejectHint). Index alone: the
	// acknowledged index (MsgAppResp), the read index (MsgReadIndexResp),
	// the leader's durable index (MsgDurable).
	LogTerm uint64
	Index   uint64
	Entries []Entry
	// Commit is the sender's commit index (MsgApp, MsgHeartbeat).
	Commit uint64
	// Reject marks a refusal (MsgAppResp, MsgVoteResp, ...).
	Reject bool
	// RejectHint is, in a rejecting MsgAppResp, the highest index at which
	// the follower's log might match; LogTerm is the follower's term there.
	// The leader uses both to skip a whole term of conflicting entries per
	// round trip instead of one entry (§5.3, "fast backtracking").
	RejectHint uint64
	Snapshot   *Snapshot
	// Context carries read-index request contexts and campaign kinds.
	Context []byte
}

func (m Message) String() string {
	s := fmt.Sprintf("%s %d->%d t%d", m.Type, m.From, m.To, m.Term)
	switch m.Type {
	case MsgApp:
		s += fmt.Sprintf(" prev=%d/%d ents=%d commit=%d", m.Index, m.LogTerm, len(m.Entries), m.Commit)
	case MsgAppResp:
		s += fmt.Sprintf(" idx=%d reject=%v hint=%d/%d", m.Index, m.Reject, m.RejectHint, m.LogTerm)
	case MsgVote, MsgPreVote:
		s += fmt.Sprintf(" last=%d/%d", m.Index, m.LogTerm)
	case MsgVoteResp, MsgPreVoteResp:
		s += fmt.Sprintf(" reject=%v", m.Reject)
	case MsgDurable:
		s += fmt.Sprintf(" durable=%d", m.Index)
	case MsgSnap:
		if m.Snapshot != nil {
			s += fmt.Sprintf(" snap=%d/%d", m.Snapshot.Meta.Index, m.Snapshot.Meta.Term)
		}
	}
	return s
}

// StateType is a node's role.
type StateType uint8

const (
	StateFollower StateType = iota
	StateCandidate
	StateLeader
	StatePreCandidate
)

func (s StateType) String() string {
	switch s {
	case StateFollower:
		return "Follower"
	case StateCandidate:
		return "Candidate"
	case StateLeader:
		return "Leader"
	case StatePreCandidate:
		return "PreCandidate"
	}
	return fmt.Sprintf("StateType(%d)", uint8(s))
}

// SoftState is volatile state that need not be persisted.
type SoftState struct {
	Lead  uint64
	State StateType
}

// ReadState answers a ReadIndex request: once the local state machine has
// applied Index, a read started when the request was made may be served
// from it and is linearizable (thesis §6.4).
type ReadState struct {
	Index      uint64
	RequestCtx []byte
}
