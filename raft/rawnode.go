package raft

import (
	"errors"
	"fmt"
	"slices"
)

// Ready is a batch of work the core hands to its driver. The field comments
// are the contract; see also the package documentation.
type Ready struct {
	// SoftState is non-nil when the leader or role changed.
	*SoftState
	// HardState must be persisted before PersistedMessages are sent. It is
	// empty when unchanged.
	HardState HardState
	// ReadStates answer ReadIndex requests; serve each once the state
	// machine has applied ReadState.Index.
	ReadStates []ReadState
	// Entries must be appended to durable storage (truncating any stored
	// entries at or after Entries[0].Index) before PersistedMessages are
	// sent.
	Entries []Entry
	// Snapshot, if non-nil, must be persisted and installed into the state
	// machine; the log before it is discarded.
	Snapshot *Snapshot
	// CommittedEntries must be applied to the state machine, in order.
	// They may include entries from Entries in this same Ready: apply
	// after persisting.
	CommittedEntries []Entry
	// Messages may be sent at once, before or while persisting: nothing
	// in them depends on this Ready's durable state.
	Messages []Message
	// PersistedMessages may be sent only after HardState, Entries and
	// Snapshot are durable: they are votes and append acknowledgements.
	PersistedMessages []Message
	// MustSync says whether persisting needs an fsync (new entries, or a
	// changed term or vote). A commit-index-only change need not sync: it
	// can be recomputed after a crash.
	MustSync bool
	// Ack describes this Ready's write. With Config.AsyncStorageWrites
	// the driver passes it to RawNode.AckWrite once HardState, Entries and
	// Snapshot (and those of every earlier Ready) are durable. It is
	// ignored in synchronous mode, where Advance implies it.
	Ack WriteAck
}

// WriteAck identifies what a Ready asked the driver to persist, for
// RawNode.AckWrite.
type WriteAck struct {
	// Index and Term are the last entry in Ready.Entries (zero if none).
	Index, Term uint64
	// Snapshot is the index of Ready.Snapshot (zero if none).
	Snapshot uint64
	// HardState is the node's hard state as of this Ready: what is on
	// disk once this write and every earlier one are.
	HardState HardState
	// epoch is the log's truncation epoch when the Ready was taken (see
	// unstable.epoch).
	epoch uint64
}

// RawNode is the single-threaded Raft core. Its methods must not be called
// concurrently. Between Ready and Advance the caller must not call any
// other method. In synchronous mode (the default) the core assumes a Ready
// is fully handled (persisted, sent, applied) when Advance is called; with
// Config.AsyncStorageWrites, Advance means only "taken": the driver
// persists it later and reports it with AckWrite.
type RawNode struct {
	r         *raft
	prevSoft  SoftState
	prevHard  HardState
	readyOpen bool
}

// NewRawNode returns a core whose state is loaded from c.Storage.
func NewRawNode(c *Config) (*RawNode, error) {
	r, err := newRaft(c)
	if err != nil {
		return nil, err
	}
	return &RawNode{r: r, prevSoft: r.softState(), prevHard: r.hardState()}, nil
}

// ErrBootstrapped is returned by Bootstrap on a node that has state.
var ErrBootstrapped = errors.New("raft: node already has state; cannot bootstrap")

// Bootstrap creates the initial membership of a new cluster: entries 1..n
// in term 1 add each voter. Every initial member must be bootstrapped with
// the same list, so their logs agree. Nodes that join an existing cluster
// later are not bootstrapped; they learn the log from the leader.
func (rn *RawNode) Bootstrap(voters []uint64) error {
	r := rn.r
	if r.log.lastIndex() != 0 || r.term != 0 || len(r.trk.voters) != 0 {
		return ErrBootstrapped
	}
	if len(voters) == 0 {
		return fmt.Errorf("%w: bootstrap needs at least one voter", ErrInvalidConfig)
	}
	ids := slices.Clone(voters)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	ents := make([]Entry, len(ids))
	for i, id := range ids {
		if id == None {
			return fmt.Errorf("%w: voter ID 0", ErrInvalidConfig)
		}
		cc := ConfChange{Type: ConfChangeAddVoter, NodeID: id}
		ents[i] = Entry{Term: 1, Index: uint64(i + 1), Type: EntryConfChange, Data: cc.Marshal()}
	}
	r.log.append(ents...)
	r.log.commitTo(uint64(len(ents)))
	r.becomeFollower(1, None)
	r.advanceElection()
	// Apply the membership now so the node can campaign once the entries
	// are durable; applying them again from CommittedEntries is a no-op.
	for _, id := range ids {
		r.applyConfChange(ConfChange{Type: ConfChangeAddVoter, NodeID: id})
	}
	return nil
}

// Tick advances the logical clock by one tick.
func (rn *RawNode) Tick() {
	rn.mustBeClosed()
	rn.r.tick()
}

// Campaign starts an election now (with pre-vote if enabled).
func (rn *RawNode) Campaign() error {
	rn.mustBeClosed()
	return rn.r.Step(Message{Type: MsgHup})
}

// Propose appends data to the log if this node is the leader and returns
// the entry's index and term. Otherwise it returns a *NotLeaderError that
// names the leader, if known; the caller forwards the request there.
func (rn *RawNode) Propose(data []byte) (index, term uint64, err error) {
	return rn.propose(Entry{Type: EntryNormal, Data: data})
}

// ProposeConfChange proposes a membership change. Only one may be in
// flight: ErrConfChangePending until the previous one is applied.
func (rn *RawNode) ProposeConfChange(cc ConfChange) (index, term uint64, err error) {
	return rn.propose(Entry{Type: EntryConfChange, Data: cc.Marshal()})
}

// Forward submits data like Propose, but a follower that knows the leader
// forwards it there in a MsgProp instead of failing. The caller learns the
// outcome only by seeing the entry applied (identify it by an ID inside
// data), or by timing out: a forwarded proposal may be lost.
func (rn *RawNode) Forward(data []byte) error {
	rn.mustBeClosed()
	r := rn.r
	switch {
	case r.state == StateLeader:
		return r.Step(Message{Type: MsgProp, From: r.id, Entries: []Entry{{Type: EntryNormal, Data: data}}})
	case r.state == StateFollower && r.lead != None:
		r.send(Message{To: r.lead, Type: MsgProp, Entries: []Entry{{Type: EntryNormal, Data: data}}})
		return nil
	default:
		return &NotLeaderError{Leader: r.lead}
	}
}

func (rn *RawNode) propose(e Entry) (uint64, uint64, error) {
	rn.mustBeClosed()
	r := rn.r
	if r.state != StateLeader {
		return 0, 0, &NotLeaderError{Leader: r.lead}
	}
	if err := r.Step(Message{Type: MsgProp, From: r.id, Entries: []Entry{e}}); err != nil {
		return 0, 0, err
	}
	return r.log.lastIndex(), r.term, nil
}

// ReadIndex requests a linearizable read point. rctx identifies the
// request and must be unique among outstanding requests; the answer comes
// back as a ReadState with the same RequestCtx in a later Ready. A
// follower asks its leader. If no answer comes (the leader was deposed,
// messages were lost), the caller times out and retries.
func (rn *RawNode) ReadIndex(rctx []byte) error {
	rn.mustBeClosed()
	return rn.r.Step(Message{Type: MsgReadIndex, Context: slices.Clone(rctx)})
}

// TransferLeadership asks the leader to hand leadership to transferee.
func (rn *RawNode) TransferLeadership(transferee uint64) error {
	rn.mustBeClosed()
	return rn.r.Step(Message{Type: MsgTransferLeader, From: transferee})
}

// Step delivers a message from a peer.
func (rn *RawNode) Step(m Message) error {
	rn.mustBeClosed()
	if m.Type.IsLocal() {
		return fmt.Errorf("raft: refusing local message type %s from the network", m.Type)
	}
	if m.Type == MsgSnap && m.Snapshot == nil {
		return fmt.Errorf("raft: MsgSnap without a snapshot")
	}
	if pr := rn.r.trk.progress[m.From]; pr != nil || !m.Type.IsResponse() || m.Type == MsgReadIndexResp {
		return rn.r.Step(m)
	}
	// A response from a node that is no longer a member: ignore it. A
	// read index answer is exempt: it answers a read this node asked for,
	// and a node that just joined may not know the membership yet (its
	// membership entries apply only once they are durable here).
	return nil
}

// ReportUnreachable tells the core that a message to id could not be
// delivered, so the leader should stop streaming appends to it.
func (rn *RawNode) ReportUnreachable(id uint64) {
	rn.mustBeClosed()
	_ = rn.r.Step(Message{Type: MsgUnreachable, From: id})
}

// ReportSnapshot tells the leader whether sending a snapshot to id
// succeeded.
func (rn *RawNode) ReportSnapshot(id uint64, ok bool) {
	rn.mustBeClosed()
	_ = rn.r.Step(Message{Type: MsgSnapStatus, From: id, Reject: !ok})
}

func (rn *RawNode) mustBeClosed() {
	if rn.readyOpen {
		panic("raft: RawNode used between Ready and Advance")
	}
}

// HasReady reports whether Ready would return anything.
func (rn *RawNode) HasReady() bool {
	r := rn.r
	r.flushBcast()
	if r.softState() != rn.prevSoft {
		return true
	}
	if hs := r.hardState(); hs != rn.prevHard {
		return true
	}
	if r.log.unstable.nextSnapshot() != nil || len(r.log.unstable.nextEntries()) > 0 {
		return true
	}
	if len(r.msgs) > 0 || len(r.msgsAfterPersist) > 0 || len(r.readStates) > 0 {
		return true
	}
	return r.log.hasNextCommittedEnts(!r.asyncWrites)
}

// Ready returns the pending batch of work. The caller must handle it and
// call Advance before using the RawNode again.
func (rn *RawNode) Ready() Ready {
	rn.mustBeClosed()
	r := rn.r
	r.flushBcast()
	rd := Ready{
		Entries:           r.log.unstable.nextEntries(),
		CommittedEntries:  r.log.nextCommittedEnts(!r.asyncWrites),
		Messages:          r.msgs,
		PersistedMessages: r.msgsAfterPersist,
		ReadStates:        r.readStates,
	}
	if ss := r.softState(); ss != rn.prevSoft {
		rd.SoftState = &ss
	}
	hs := r.hardState()
	if hs != rn.prevHard {
		rd.HardState = hs
	}
	rd.Ack.HardState = hs
	rd.Ack.epoch = r.log.unstable.epoch
	if n := len(rd.Entries); n > 0 {
		rd.Ack.Index, rd.Ack.Term = rd.Entries[n-1].Index, rd.Entries[n-1].Term
	}
	if s := r.log.unstable.nextSnapshot(); s != nil {
		snap := *s
		rd.Snapshot = &snap
		rd.Ack.Snapshot = s.Meta.Index
	}
	rd.MustSync = len(rd.Entries) > 0 || rd.Snapshot != nil ||
		rd.HardState.Term != rn.prevHard.Term || rd.HardState.Vote != rn.prevHard.Vote
	if rd.HardState.IsEmpty() {
		rd.MustSync = len(rd.Entries) > 0 || rd.Snapshot != nil
	}
	r.msgs = nil
	r.msgsAfterPersist = nil
	r.readStates = nil
	rn.readyOpen = true
	return rd
}

// Advance tells the core that rd has been handled: sent and applied, and
// (in synchronous mode) persisted. With Config.AsyncStorageWrites its
// write may still be in progress; report it with AckWrite.
func (rn *RawNode) Advance(rd Ready) {
	if !rn.readyOpen {
		panic("raft: Advance without Ready")
	}
	rn.readyOpen = false
	r := rn.r
	if rd.SoftState != nil {
		rn.prevSoft = *rd.SoftState
	}
	if !rd.HardState.IsEmpty() {
		rn.prevHard = rd.HardState
	}
	r.log.unstable.acceptInProgress(rd.Ack.Index, rd.Ack.Snapshot)
	if rd.Snapshot != nil && rd.Snapshot.Meta.Index > r.log.applied {
		// The driver installs the snapshot before it applies anything
		// after it (no committed entries are handed out until then).
		r.log.applied = rd.Snapshot.Meta.Index
	}
	if n := len(rd.CommittedEntries); n > 0 {
		for _, e := range rd.CommittedEntries {
			if e.Type != EntryConfChange {
				continue
			}
			cc, err := UnmarshalConfChange(e.Data)
			if err != nil {
				r.logger.Error("raft: undecodable membership change; ignoring", "index", e.Index, "err", err)
				continue
			}
			r.applyConfChange(cc)
		}
		r.log.appliedTo(rd.CommittedEntries[n-1].Index)
	}
	if !r.asyncWrites {
		rn.ackWrite(rd.Ack)
	}
}

// AckWrite tells the core that the write of the Ready that carried a (and
// of every Ready before it) is durable. Only with
// Config.AsyncStorageWrites, and not between Ready and Advance. Acks must
// come in the order the Readies were handed out; an ack made stale by a
// later truncation or snapshot is ignored safely.
//
// Once acknowledged, the entries count towards the leader's own commit
// quorum, a candidate counts its own vote, and committed entries up to
// the acknowledged index are handed out for applying.
func (rn *RawNode) AckWrite(a WriteAck) {
	rn.mustBeClosed()
	if !rn.r.asyncWrites {
		panic("raft: AckWrite without Config.AsyncStorageWrites")
	}
	rn.ackWrite(a)
}

func (rn *RawNode) ackWrite(a WriteAck) {
	r := rn.r
	if a.Snapshot != 0 {
		r.log.unstable.stableSnapTo(a.Snapshot)
	}
	if a.Index != 0 {
		r.log.unstable.stableTo(a.Index, a.Term, a.epoch)
	}
	if r.asyncWrites {
		r.selfVoteDurable(a.HardState)
	}
	// Now that our own entries are durable the leader counts itself, and
	// a follower told how far the leader's log is durable may commit.
	r.leaderSelfDurable()
	r.maybeCommitDurable()
}

// ConfState returns the membership as of the last applied entry; a
// snapshot taken at Status().Applied must carry it.
func (rn *RawNode) ConfState() ConfState { return rn.r.trk.confState() }

// Status describes the node.
type Status struct {
	ID uint64
	HardState
	SoftState
	Applied        uint64
	LastIndex      uint64
	LeadTransferee uint64
	Config         ConfState
	// Progress is set on the leader only.
	Progress map[uint64]Progress
}

// Status returns a copy of the node's state.
func (rn *RawNode) Status() Status {
	r := rn.r
	s := Status{
		ID:             r.id,
		HardState:      r.hardState(),
		SoftState:      r.softState(),
		Applied:        r.log.applied,
		LastIndex:      r.log.lastIndex(),
		LeadTransferee: r.leadTransferee,
		Config:         r.trk.confState(),
	}
	if r.state == StateLeader {
		s.Progress = make(map[uint64]Progress, len(r.trk.progress))
		for id, pr := range r.trk.progress {
			p := *pr
			p.inflights = inflights{}
			s.Progress[id] = p
		}
	}
	return s
}
