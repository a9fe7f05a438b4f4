package raft

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
)

// ErrProposalDropped is returned when a proposal or read cannot be taken:
// the node is not the leader, a leadership transfer is under way, or the
// node has been removed.
var ErrProposalDropped = errors.New("raft: proposal dropped")

// ErrNotLeader is wrapped by NotLeaderError.
var ErrNotLeader = errors.New("raft: not the leader")

// ErrConfChangePending is returned by ProposeConfChange while an earlier
// membership change is not yet applied (one change at a time, §4.1).
var ErrConfChangePending = errors.New("raft: a membership change is already in progress")

// ErrInvalidConfChange is wrapped when a membership change makes no sense,
// such as removing the last voter.
var ErrInvalidConfChange = errors.New("raft: invalid membership change")

// NotLeaderError says that this node cannot take the request, and which
// node it believes leads (None if it knows of no leader).
type NotLeaderError struct {
	Leader uint64
}

func (e *NotLeaderError) Error() string {
	if e.Leader == None {
		return "raft: not the leader, and no leader is known"
	}
	return fmt.Sprintf("raft: not the leader; the leader is node %d", e.Leader)
}

// Unwrap lets errors.Is(err, ErrNotLeader) match.
func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// campaignTransfer marks a vote request sent because of a leadership
// transfer: recipients grant it even while they believe a leader is alive.
var campaignTransfer = []byte("transfer")

type campaignType uint8

const (
	campaignPreElection campaignType = iota
	campaignElection
	campaignTransferKind
)

// raft is the protocol state machine. It is not safe for concurrent use.
type raft struct {
	id     uint64
	term   uint64
	vote   uint64
	log    *raftLog
	state  StateType
	lead   uint64
	trk    tracker
	logger *slog.Logger
	rand   *rand.Rand

	// Outgoing messages. msgsAfterPersist hold messages that promise
	// durable state (votes, append acks); the Ready contract sends them
	// only after that state is persisted.
	msgs             []Message
	msgsAfterPersist []Message
	readStates       []ReadState

	maxMsgSize uint64

	electionElapsed           int
	heartbeatElapsed          int
	electionTimeout           int
	heartbeatTimeout          int
	randomizedElectionTimeout int

	checkQuorum bool
	preVote     bool
	// asyncWrites: the driver persists Readies after Advance and reports
	// them durable with AckWrite (Config.AsyncStorageWrites).
	asyncWrites bool
	// electionTickAdvance: see Config.ElectionTickAdvance.
	electionTickAdvance bool

	// bcastPending: appends to every follower are due (see bcastAppend).
	bcastPending bool
	// commitPending: the commit index moved, or a follower was answered a
	// read index; appends carrying it are due to the followers waiting
	// for it (see commitAdvanced).
	commitPending bool
	// broadcastCommit: see Config.BroadcastCommit.
	broadcastCommit bool
	// leaderDurable is, on a follower, the index up to which the leader
	// of this term reported its log durable (MsgDurable); 0 if none.
	leaderDurable uint64
	// durableSent is, on a leader, the highest index it sent in a
	// MsgDurable this term. A follower may commit and acknowledge a write
	// up to there before the leader learns that it is committed, so a
	// read index never goes below it.
	durableSent uint64

	leadTransferee uint64
	// pendingConfIndex is the index of the last membership change the
	// leader proposed (or its first index as leader, which covers changes
	// it inherited). A new change is allowed only once it is applied.
	pendingConfIndex uint64

	readOnly readOnly
	// Reads that arrived before this leader committed an entry of its own
	// term: the commit index is not yet known to be current (§6.4 step 1).
	pendingReadIndexMessages []Message
}

func newRaft(c *Config) (*raft, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	l, err := newLog(c.Storage, c.MaxCommittedSizePerReady)
	if err != nil {
		return nil, err
	}
	hs, cs, err := c.Storage.InitialState()
	if err != nil {
		return nil, fmt.Errorf("raft: storage initial state: %w", err)
	}
	r := &raft{
		id:                  c.ID,
		log:                 l,
		lead:                None,
		trk:                 newTracker(c.MaxInflightMsgs, c.MaxInflightBytes),
		logger:              c.Logger,
		rand:                c.Rand,
		maxMsgSize:          c.MaxSizePerMsg,
		electionTimeout:     c.ElectionTick,
		heartbeatTimeout:    c.HeartbeatTick,
		checkQuorum:         c.CheckQuorum,
		preVote:             c.PreVote,
		asyncWrites:         c.AsyncStorageWrites,
		electionTickAdvance: c.ElectionTickAdvance && c.PreVote && c.CheckQuorum,
		broadcastCommit:     c.BroadcastCommit,
		readOnly:            newReadOnly(),
	}
	r.applyConfState(cs)
	// A snapshot implies its index is committed even if the hard state's
	// commit index lags it: it is written without fsync, and with
	// asynchronous writes a local snapshot may reach the disk before the
	// hard state that commits its index.
	snap, err := c.Storage.Snapshot()
	if err != nil {
		return nil, fmt.Errorf("raft: storage snapshot: %w", err)
	}
	r.log.committed = max(r.log.committed, snap.Meta.Index)
	if !hs.IsEmpty() {
		if hs.Commit > r.log.lastIndex() {
			return nil, fmt.Errorf("raft: stored commit index %d is beyond the last stored entry %d", hs.Commit, r.log.lastIndex())
		}
		r.log.committed = max(hs.Commit, r.log.committed)
		r.term = hs.Term
		r.vote = hs.Vote
	}
	if c.Applied > 0 {
		if c.Applied > r.log.committed {
			return nil, fmt.Errorf("raft: Config.Applied %d is beyond the commit index %d", c.Applied, r.log.committed)
		}
		r.log.appliedTo(max(c.Applied, r.log.applied))
	}
	// Membership changes between the snapshot and Applied were applied by
	// the application but are not in the snapshot's ConfState: replay them.
	if err := r.replayConfChanges(c.Storage); err != nil {
		return nil, err
	}
	r.becomeFollower(r.term, None)
	r.advanceElection()
	r.logger.Info("raft: node started", "id", r.id, "term", r.term, "commit", r.log.committed,
		"applied", r.log.applied, "last", r.log.lastIndex(), "voters", r.trk.voters, "learners", r.trk.learners)
	return r, nil
}

func (r *raft) replayConfChanges(s Storage) error {
	first := r.log.firstIndex()
	if r.log.applied < first {
		return nil
	}
	ents, err := r.log.slice(first, r.log.applied+1, noLimit)
	if err != nil {
		return fmt.Errorf("raft: reading applied entries: %w", err)
	}
	for _, e := range ents {
		if e.Type == EntryConfChange {
			cc, err := UnmarshalConfChange(e.Data)
			if err != nil {
				return fmt.Errorf("raft: entry %d: %w", e.Index, err)
			}
			r.applyConfChange(cc)
		}
	}
	return nil
}

func (r *raft) hardState() HardState {
	return HardState{Term: r.term, Vote: r.vote, Commit: r.log.committed}
}

func (r *raft) softState() SoftState { return SoftState{Lead: r.lead, State: r.state} }

// send queues m. Responses that promise durable state go to the second
// queue (see the Ready contract in doc.go).
func (r *raft) send(m Message) {
	if m.From == None {
		m.From = r.id
	}
	switch m.Type {
	case MsgVote, MsgVoteResp, MsgPreVote, MsgPreVoteResp:
		if m.Term == 0 {
			panic(fmt.Sprintf("raft: %s sent without a term", m.Type))
		}
	default:
		if m.Term != 0 {
			panic(fmt.Sprintf("raft: %s sent with a preset term", m.Type))
		}
		// Forwarded proposals and reads are treated as local by the
		// leader, so they carry no term.
		if m.Type != MsgProp && m.Type != MsgReadIndex {
			m.Term = r.term
		}
	}
	switch m.Type {
	case MsgAppResp, MsgVoteResp, MsgPreVoteResp:
		r.msgsAfterPersist = append(r.msgsAfterPersist, m)
	default:
		r.msgs = append(r.msgs, m)
	}
}

// maybeSendAppend sends entries (or a snapshot) to follower to. With
// sendIfEmpty it sends an append even with no entries, which carries the
// commit index and probes the follower's log.
func (r *raft) maybeSendAppend(to uint64, sendIfEmpty bool) bool {
	pr := r.trk.progress[to]
	if pr == nil || pr.isPaused() {
		return false
	}
	prevIndex := pr.Next - 1
	prevTerm, errt := r.log.term(prevIndex)
	var ents []Entry
	var erre error
	if errt == nil && (pr.State != ProgressProbe || !pr.ProbeSent) {
		ents, erre = r.log.entries(pr.Next, r.maxMsgSize)
	}
	if errt != nil || erre != nil {
		return r.maybeSendSnapshot(to, pr)
	}
	if len(ents) == 0 && !sendIfEmpty {
		return false
	}
	r.send(Message{To: to, Type: MsgApp, Index: prevIndex, LogTerm: prevTerm, Entries: ents, Commit: r.log.committed})
	// If the follower accepts, it commits up to the last entry sent.
	pr.CommitSent = max(pr.CommitSent, min(r.log.committed, prevIndex+uint64(len(ents))))
	switch pr.State {
	case ProgressReplicate:
		if n := len(ents); n > 0 {
			last := ents[n-1].Index
			pr.Next = last + 1
			pr.inflights.add(last, entsSize(ents))
		}
	case ProgressProbe:
		pr.ProbeSent = true
	}
	return true
}

func (r *raft) maybeSendSnapshot(to uint64, pr *Progress) bool {
	if !pr.RecentActive {
		r.logger.Debug("raft: not sending snapshot to inactive follower", "id", r.id, "to", to)
		return false
	}
	snap, err := r.log.snapshot()
	if errors.Is(err, ErrSnapshotTemporarilyUnavailable) {
		return false
	} else if err != nil {
		panic(fmt.Sprintf("raft: storage Snapshot: %v", err))
	}
	if snap.IsEmpty() {
		panic("raft: follower needs compacted entries but there is no snapshot")
	}
	r.logger.Info("raft: sending snapshot", "id", r.id, "to", to, "index", snap.Meta.Index, "term", snap.Meta.Term)
	pr.becomeSnapshot(snap.Meta.Index)
	r.send(Message{To: to, Type: MsgSnap, Snapshot: &snap})
	return true
}

func entsSize(ents []Entry) uint64 {
	var n uint64
	for i := range ents {
		n += uint64(len(ents[i].Data))
	}
	return n
}

func (r *raft) sendHeartbeat(to uint64, ctx []byte) {
	// A follower may not have the leader's committed entries yet, so never
	// send it a commit index beyond what it is known to hold.
	pr := r.trk.progress[to]
	commit := min(pr.Match, r.log.committed)
	r.send(Message{To: to, Type: MsgHeartbeat, Commit: commit, Context: ctx})
	pr.CommitSent = max(pr.CommitSent, commit)
}

// bcastAppend schedules an append (or heartbeat-like empty append carrying
// the commit index) to every follower. The sends happen once, when the
// driver next asks for a Ready, so that many proposals or commit advances
// in one batch become one append per follower.
func (r *raft) bcastAppend() { r.bcastPending = true }

// flushBcast sends the appends scheduled by bcastAppend, or else those
// that carry a new commit index to the followers waiting for it.
func (r *raft) flushBcast() {
	if !r.bcastPending && !r.commitPending {
		return
	}
	all := r.bcastPending
	r.bcastPending, r.commitPending = false, false
	if r.state != StateLeader {
		return
	}
	// Followers that wait for this append (they forwarded the proposal,
	// or need the commit index for a read) first: the driver's transport
	// starts writing the first messages of a Ready first.
	members := r.trk.members()
	rest := members[:0]
	for _, id := range members {
		if id == r.id {
			continue
		}
		pr := r.trk.progress[id]
		switch {
		case pr.CommitWanted <= pr.CommitSent:
			rest = append(rest, id) // in place: members is our copy
		case all || pr.wantsCommit(r.log.committed):
			r.maybeSendAppend(id, true)
		}
	}
	if all {
		for _, id := range rest {
			r.maybeSendAppend(id, true)
		}
	}
}

// commitAdvanced schedules telling the followers about a commit index
// that moved past prev. Without Config.BroadcastCommit only the followers
// waiting for it are sent one now, unless the advance commits a
// membership change or this term's first entry: every member must learn
// those promptly (a removed member, for one, stops only once it applies
// its removal).
func (r *raft) commitAdvanced(prev uint64) {
	if r.broadcastCommit || (prev < r.pendingConfIndex && r.pendingConfIndex <= r.log.committed) {
		r.bcastAppend()
		return
	}
	r.commitPending = true
}

// sendDurable tells each follower that waits for a commit index, and
// that makes a quorum with the leader, how far the leader's log is
// durable (MsgDurable): that follower can commit as soon as its own copy
// is durable too. Not while a membership change is uncommitted (nor
// before this term's first entry commits): the quorum the message
// promises must be the one the leader counts with.
func (r *raft) sendDurable() {
	if r.broadcastCommit || r.state != StateLeader || r.trk.quorum() > 2 || !r.trk.isVoter(r.id) ||
		r.pendingConfIndex > r.log.committed {
		return
	}
	durable := r.log.lastStableIndex()
	for _, id := range r.trk.voters {
		pr := r.trk.progress[id]
		if id == r.id || pr == nil || pr.CommitWanted > durable || !pr.wantsCommit(durable) {
			continue
		}
		if pr.Next-1 > durable {
			// Newer entries are on their way to it: under load the
			// commit index comes with the next appends soon enough, and
			// a message of its own per fsync would cost more than it
			// saves.
			continue
		}
		r.send(Message{To: id, Type: MsgDurable, Index: durable})
		pr.CommitSent = durable
		r.durableSent = durable
	}
}

// maybeCommitDurable commits, on a follower, what is durable both here
// and on the leader (MsgDurable), where the two make a quorum: the last
// such entry of the leader's term and everything before it.
func (r *raft) maybeCommitDurable() {
	if r.state != StateFollower || r.leaderDurable == 0 {
		return
	}
	r.log.maybeCommit(min(r.leaderDurable, r.log.lastStableIndex(), r.log.lastIndex()), r.term)
}

func (r *raft) bcastHeartbeat() {
	r.bcastHeartbeatWithCtx(r.readOnly.lastPendingCtx())
}

func (r *raft) bcastHeartbeatWithCtx(ctx []byte) {
	for _, id := range r.trk.members() {
		if id != r.id {
			r.sendHeartbeat(id, ctx)
		}
	}
}

// maybeCommit advances the commit index to what a quorum has matched,
// and schedules telling the followers (commitAdvanced).
func (r *raft) maybeCommit() bool {
	prev := r.log.committed
	if !r.log.maybeCommit(r.trk.committed(), r.term) {
		return false
	}
	r.commitAdvanced(prev)
	return true
}

func (r *raft) reset(term uint64) {
	if r.term != term {
		r.term = term
		r.vote = None
	}
	r.lead = None
	r.electionElapsed = 0
	r.heartbeatElapsed = 0
	r.resetRandomizedElectionTimeout()
	r.abortLeaderTransfer()
	r.trk.resetVotes()
	last := r.log.lastIndex()
	for id, pr := range r.trk.progress {
		learner := pr.IsLearner
		r.trk.newProgress(id, last+1, learner)
		if id == r.id {
			r.trk.progress[id].Match = r.log.lastStableIndex()
		}
	}
	r.pendingConfIndex = 0
	r.commitPending = false
	r.leaderDurable = 0
	r.durableSent = 0
	r.readOnly = newReadOnly()
	r.pendingReadIndexMessages = nil
}

func (r *raft) resetRandomizedElectionTimeout() {
	r.randomizedElectionTimeout = r.electionTimeout + r.rand.IntN(r.electionTimeout)
}

func (r *raft) appendEntry(es ...Entry) {
	li := r.log.lastIndex()
	for i := range es {
		es[i].Term = r.term
		es[i].Index = li + 1 + uint64(i)
	}
	r.log.append(es...)
	// The leader's own Match advances only when Advance reports the
	// entries durable: the leader counts towards a quorum only for what
	// is on its disk.
}

// advanceElection implements Config.ElectionTickAdvance when a node
// starts: the randomized timeout is in [ElectionTick, 2*ElectionTick), so
// the first campaign comes 1..ElectionTick ticks from now.
func (r *raft) advanceElection() {
	if r.electionTickAdvance {
		r.electionElapsed = r.electionTimeout - 1
	}
}

func (r *raft) becomeFollower(term, lead uint64) {
	r.reset(term)
	r.lead = lead
	r.state = StateFollower
}

func (r *raft) becomePreCandidate() {
	if r.state == StateLeader {
		panic("raft: leader cannot become pre-candidate")
	}
	// Pre-vote changes neither term nor vote (thesis §9.6).
	r.trk.resetVotes()
	r.lead = None
	r.state = StatePreCandidate
}

func (r *raft) becomeCandidate() {
	if r.state == StateLeader {
		panic("raft: leader cannot become candidate")
	}
	r.reset(r.term + 1)
	r.vote = r.id
	r.state = StateCandidate
	r.logger.Info("raft: became candidate", "id", r.id, "term", r.term)
}

func (r *raft) becomeLeader() {
	if r.state == StateFollower {
		panic("raft: follower cannot become leader without an election")
	}
	r.reset(r.term)
	r.lead = r.id
	r.state = StateLeader
	if pr := r.trk.progress[r.id]; pr != nil {
		pr.becomeReplicate()
	}
	// Append a no-op: entries from earlier terms commit only once an
	// entry of the current term does (§5.4.2), and ReadIndex needs the
	// leader's commit index to be current (§6.4).
	r.appendEntry(Entry{Type: EntryNormal})
	// Any membership change already in the log may be uncommitted; no new
	// change until this term's first entry is applied (the 2015 fix to
	// single-server changes).
	r.pendingConfIndex = r.log.lastIndex()
	r.logger.Info("raft: became leader", "id", r.id, "term", r.term, "last", r.log.lastIndex())
}

// promotable reports whether this node may campaign: it must be a voter.
func (r *raft) promotable() bool { return r.trk.isVoter(r.id) }

func (r *raft) hasUnappliedConfChanges() bool {
	if r.log.applied >= r.log.committed {
		return false
	}
	lo := max(r.log.applied+1, r.log.firstIndex())
	ents, err := r.log.slice(lo, r.log.committed+1, noLimit)
	if err != nil {
		return true // be conservative
	}
	for i := range ents {
		if ents[i].Type == EntryConfChange {
			return true
		}
	}
	return false
}

func (r *raft) hup(t campaignType) {
	if r.state == StateLeader {
		return
	}
	if !r.promotable() {
		r.logger.Debug("raft: not campaigning: not a voter", "id", r.id)
		return
	}
	// A committed but unapplied membership change means our view of the
	// membership is stale; wait for it to apply.
	if r.hasUnappliedConfChanges() {
		r.logger.Info("raft: not campaigning: membership change pending apply", "id", r.id)
		return
	}
	r.campaign(t)
}

func (r *raft) campaign(t campaignType) {
	var term uint64
	var voteMsg MessageType
	if t == campaignPreElection {
		r.becomePreCandidate()
		voteMsg = MsgPreVote
		term = r.term + 1
	} else {
		r.becomeCandidate()
		voteMsg = MsgVote
		term = r.term
	}
	// Vote for ourselves. A pre-vote changes no state, so it counts at
	// once. A real vote counts at once only with synchronous writes: the
	// driver persists it (in this Ready) before it steps any reply. With
	// asynchronous writes it counts when the write of our term and vote is
	// acknowledged (selfVoteDurable), and we become leader only then, even
	// if others' votes already make a quorum. A leader whose term is not
	// durable could crash, restart in the previous term, campaign again
	// for the same term and (with the same voters, who durably voted for
	// it) win it a second time with a different log: two different entries
	// at one index and term. And a node that won by its own vote and lost
	// it in a crash could vote for another candidate in the same term.
	if t == campaignPreElection || !r.asyncWrites {
		r.trk.recordVote(r.id, true)
	}
	if _, _, res := r.trk.tally(); res == voteWon {
		if t == campaignPreElection {
			r.campaign(campaignElection)
		} else {
			r.becomeLeader()
		}
		return
	}
	var ctx []byte
	if t == campaignTransferKind {
		ctx = campaignTransfer
	}
	for _, id := range r.trk.voters {
		if id == r.id {
			continue
		}
		r.send(Message{Term: term, To: id, Type: voteMsg, Index: r.log.lastIndex(), LogTerm: r.log.lastTerm(), Context: ctx})
	}
}

// selfVoteDurable counts a candidate's own vote once the write of hs,
// the candidate's term and vote, is durable (asynchronous writes only).
func (r *raft) selfVoteDurable(hs HardState) {
	if r.state != StateCandidate || hs.Term != r.term || hs.Vote != r.id {
		return
	}
	if _, voted := r.trk.votes[r.id]; voted {
		return
	}
	r.trk.recordVote(r.id, true)
	switch _, _, res := r.trk.tally(); res {
	case voteWon:
		r.becomeLeader()
		r.bcastAppend()
	case voteLost:
		r.becomeFollower(r.term, None)
	}
}

// leaderSelfDurable counts the leader's own log towards the commit
// quorum up to what is durable.
func (r *raft) leaderSelfDurable() {
	if r.state != StateLeader {
		return
	}
	if pr := r.trk.progress[r.id]; pr != nil && pr.maybeUpdate(r.log.lastStableIndex()) {
		if r.maybeCommit() {
			r.releasePendingReadIndexMessages()
		}
		r.sendDurable()
	}
}

func voteRespType(t MessageType) MessageType {
	if t == MsgPreVote {
		return MsgPreVoteResp
	}
	return MsgVoteResp
}

// Step advances the state machine with one message.
func (r *raft) Step(m Message) error {
	switch {
	case m.Term == 0:
		// local message, forwarded proposal or read
	case m.Term > r.term:
		if m.Type == MsgVote || m.Type == MsgPreVote {
			force := bytes.Equal(m.Context, campaignTransfer)
			inLease := r.checkQuorum && r.lead != None && r.electionElapsed < r.electionTimeout
			if !force && inLease {
				// We heard from a leader within the minimum election
				// timeout: ignore the disruptive candidate (thesis §4.2.3).
				r.logger.Debug("raft: ignoring vote request within lease", "id", r.id, "from", m.From, "term", m.Term)
				return nil
			}
		}
		switch {
		case m.Type == MsgPreVote:
			// Never change our term because of a pre-vote.
		case m.Type == MsgPreVoteResp && !m.Reject:
			// A granted pre-vote carries the future term; we move to it
			// when we win and start the real election.
		default:
			if m.Type == MsgApp || m.Type == MsgHeartbeat || m.Type == MsgSnap || m.Type == MsgDurable {
				r.becomeFollower(m.Term, m.From)
			} else {
				r.becomeFollower(m.Term, None)
			}
		}
	case m.Term < r.term:
		if (r.checkQuorum || r.preVote) && (m.Type == MsgHeartbeat || m.Type == MsgApp) {
			// A stale leader (perhaps just back from a partition) would
			// otherwise never learn of the new term: with check-quorum
			// and pre-vote nobody sends it a higher-term vote request.
			r.send(Message{To: m.From, Type: MsgAppResp})
		} else if m.Type == MsgPreVote {
			r.send(Message{To: m.From, Term: r.term, Type: MsgPreVoteResp, Reject: true})
		}
		return nil
	}

	switch m.Type {
	case MsgHup:
		if r.preVote {
			r.hup(campaignPreElection)
		} else {
			r.hup(campaignElection)
		}
	case MsgVote, MsgPreVote:
		canVote := r.vote == m.From ||
			(r.vote == None && r.lead == None) ||
			(m.Type == MsgPreVote && m.Term > r.term)
		if canVote && r.log.isUpToDate(m.Index, m.LogTerm) {
			r.send(Message{To: m.From, Term: m.Term, Type: voteRespType(m.Type)})
			if m.Type == MsgVote {
				r.electionElapsed = 0
				r.vote = m.From
			}
		} else {
			r.send(Message{To: m.From, Term: r.term, Type: voteRespType(m.Type), Reject: true})
		}
	default:
		switch r.state {
		case StateLeader:
			return r.stepLeader(m)
		case StateCandidate, StatePreCandidate:
			return r.stepCandidate(m)
		default:
			return r.stepFollower(m)
		}
	}
	return nil
}

func (r *raft) stepLeader(m Message) error {
	switch m.Type {
	case MsgBeat:
		r.bcastHeartbeat()
		return nil
	case MsgCheckQuorum:
		if !r.quorumActive() {
			r.logger.Warn("raft: stepping down: no quorum heard from within an election timeout", "id", r.id, "term", r.term)
			r.becomeFollower(r.term, None)
		}
		for id, pr := range r.trk.progress {
			if id != r.id {
				pr.RecentActive = false
			}
		}
		return nil
	case MsgProp:
		return r.leaderPropose(m)
	case MsgReadIndex:
		// Even a single voter must first commit an entry of its term: its
		// commit index is persisted without fsync and may lag an applied,
		// acknowledged write after a restart (§6.4 step 1).
		if !r.committedEntryInCurrentTerm() {
			r.pendingReadIndexMessages = append(r.pendingReadIndexMessages, m)
			return nil
		}
		r.startReadIndex(m)
		return nil
	case MsgTransferLeader:
		r.handleTransferLeader(m)
		return nil
	}

	pr := r.trk.progress[m.From]
	if pr == nil {
		return nil
	}
	switch m.Type {
	case MsgAppResp:
		pr.RecentActive = true
		if m.Reject {
			next := m.RejectHint
			if m.LogTerm > 0 {
				next, _ = r.log.findConflictByTerm(m.RejectHint, m.LogTerm)
			}
			if pr.maybeDecrTo(m.Index, next) {
				if pr.State == ProgressReplicate {
					pr.becomeProbe()
				}
				r.maybeSendAppend(m.From, true)
			}
			return nil
		}
		wasPaused := pr.isPaused()
		if !pr.maybeUpdate(m.Index) {
			return nil
		}
		switch {
		case pr.State == ProgressProbe:
			pr.becomeReplicate()
		case pr.State == ProgressSnapshot && pr.Match+1 >= r.log.firstIndex():
			pr.becomeProbe()
			pr.becomeReplicate()
		case pr.State == ProgressReplicate:
			pr.inflights.freeLE(m.Index)
		}
		if r.maybeCommit() {
			r.releasePendingReadIndexMessages()
		} else if wasPaused {
			r.maybeSendAppend(m.From, true)
		}
		for r.maybeSendAppend(m.From, false) {
		}
		if m.From == r.leadTransferee && pr.Match == r.log.lastIndex() {
			r.logger.Info("raft: transferee caught up; sending TimeoutNow", "id", r.id, "to", m.From)
			r.send(Message{To: m.From, Type: MsgTimeoutNow})
		}
	case MsgHeartbeatResp:
		pr.RecentActive = true
		pr.ProbeSent = false
		// Appends may have been lost: free one slot per heartbeat so a
		// full window cannot stall replication forever. The follower will
		// reject an append with a gap and we fall back to probing.
		if pr.State == ProgressReplicate && pr.inflights.full() {
			pr.inflights.freeFirst()
		}
		if pr.Match < r.log.lastIndex() {
			r.maybeSendAppend(m.From, true)
		}
		if len(m.Context) == 0 {
			return nil
		}
		acks := r.readOnly.recvAck(m.From, m.Context)
		if acks == nil || !r.trk.quorumIn(acks) {
			return nil
		}
		for _, rs := range r.readOnly.advance(m.Context) {
			r.respondReadIndex(rs.req, rs.index)
		}
	case MsgSnapStatus:
		if pr.State != ProgressSnapshot {
			return nil
		}
		if m.Reject {
			pr.PendingSnapshot = 0
		}
		// Either way wait for the follower's append response (or the next
		// heartbeat) before sending more: probe from the snapshot on.
		pr.becomeProbe()
		pr.ProbeSent = true
	case MsgUnreachable:
		if pr.State == ProgressReplicate {
			pr.becomeProbe()
		}
	}
	return nil
}

func (r *raft) leaderPropose(m Message) error {
	if len(m.Entries) == 0 {
		return fmt.Errorf("raft: proposal with no entries")
	}
	if r.trk.progress[r.id] == nil {
		// We were removed from the cluster.
		return ErrProposalDropped
	}
	if r.leadTransferee != None {
		return fmt.Errorf("%w: leadership transfer to %d in progress", ErrProposalDropped, r.leadTransferee)
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.Type != EntryConfChange {
			continue
		}
		err := r.checkConfChange(e.Data)
		if err == nil {
			r.pendingConfIndex = r.log.lastIndex() + uint64(i) + 1
			continue
		}
		if m.From != None && m.From != r.id {
			// A forwarded batch: drop only the bad change.
			r.logger.Warn("raft: dropping forwarded membership change", "err", err)
			*e = Entry{Type: EntryNormal}
			continue
		}
		return err
	}
	r.appendEntry(m.Entries...)
	if pr := r.trk.progress[m.From]; pr != nil && m.From != r.id {
		// A forwarded proposal: its follower waits to apply it.
		pr.CommitWanted = r.log.lastIndex()
	}
	r.bcastAppend()
	return nil
}

func (r *raft) checkConfChange(data []byte) error {
	if r.pendingConfIndex > r.log.applied {
		return ErrConfChangePending
	}
	cc, err := UnmarshalConfChange(data)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfChange, err)
	}
	if cc.NodeID == None {
		return fmt.Errorf("%w: node ID 0", ErrInvalidConfChange)
	}
	switch cc.Type {
	case ConfChangeAddVoter:
		if r.trk.isVoter(cc.NodeID) {
			return fmt.Errorf("%w: node %d is already a voter", ErrInvalidConfChange, cc.NodeID)
		}
	case ConfChangeAddLearner:
		if r.trk.isVoter(cc.NodeID) {
			return fmt.Errorf("%w: node %d is a voter; demotion is not supported", ErrInvalidConfChange, cc.NodeID)
		}
		if r.trk.isLearner(cc.NodeID) {
			return fmt.Errorf("%w: node %d is already a learner", ErrInvalidConfChange, cc.NodeID)
		}
	case ConfChangeRemove:
		if !r.trk.isVoter(cc.NodeID) && !r.trk.isLearner(cc.NodeID) {
			return fmt.Errorf("%w: node %d is not a member", ErrInvalidConfChange, cc.NodeID)
		}
		if r.trk.isVoter(cc.NodeID) && len(r.trk.voters) == 1 {
			return fmt.Errorf("%w: cannot remove the last voter", ErrInvalidConfChange)
		}
	}
	return nil
}

func (r *raft) committedEntryInCurrentTerm() bool {
	return r.log.zeroTermOnOutOfBounds(r.log.term(r.log.committed)) == r.term
}

func (r *raft) releasePendingReadIndexMessages() {
	if len(r.pendingReadIndexMessages) == 0 || !r.committedEntryInCurrentTerm() {
		return
	}
	msgs := r.pendingReadIndexMessages
	r.pendingReadIndexMessages = nil
	for _, m := range msgs {
		r.startReadIndex(m)
	}
}

// startReadIndex records the commit index as the read index and confirms
// leadership with a heartbeat round; many reads share one round because a
// heartbeat ack confirms every read queued before it (thesis §6.4).
func (r *raft) startReadIndex(m Message) {
	if len(r.trk.voters) == 1 && r.trk.isVoter(r.id) {
		// We are the whole quorum: no round needed.
		r.respondReadIndex(m, r.log.committed)
		return
	}
	// A follower told that our log is durable may already have committed
	// and acknowledged entries up to durableSent, which we have not yet
	// seen committed: the read must wait for those too.
	r.readOnly.addRequest(max(r.log.committed, r.durableSent), m)
	r.readOnly.recvAck(r.id, m.Context)
	r.bcastHeartbeatWithCtx(m.Context)
}

func (r *raft) respondReadIndex(req Message, index uint64) {
	if req.From == None || req.From == r.id {
		r.readStates = append(r.readStates, ReadState{Index: index, RequestCtx: req.Context})
		return
	}
	r.send(Message{To: req.From, Type: MsgReadIndexResp, Index: index, Context: req.Context})
	if pr := r.trk.progress[req.From]; pr != nil {
		// The follower applies up to index before it reads.
		pr.CommitWanted = max(pr.CommitWanted, index)
		if pr.wantsCommit(r.log.committed) {
			r.commitPending = true
		}
	}
}

func (r *raft) quorumActive() bool {
	n := 0
	for _, id := range r.trk.voters {
		if id == r.id {
			n++
			continue
		}
		if pr := r.trk.progress[id]; pr != nil && pr.RecentActive {
			n++
		}
	}
	return n >= r.trk.quorum()
}

func (r *raft) handleTransferLeader(m Message) {
	target := m.From
	pr := r.trk.progress[target]
	if pr == nil || pr.IsLearner {
		r.logger.Warn("raft: ignoring transfer to a non-voter", "id", r.id, "target", target)
		return
	}
	if r.leadTransferee != None {
		if r.leadTransferee == target {
			return
		}
		r.abortLeaderTransfer()
	}
	if target == r.id {
		return
	}
	// The transfer must finish within one election timeout, or it is
	// abandoned and proposals resume (thesis §3.10).
	r.electionElapsed = 0
	r.leadTransferee = target
	r.logger.Info("raft: transferring leadership", "id", r.id, "to", target)
	if pr.Match == r.log.lastIndex() {
		r.send(Message{To: target, Type: MsgTimeoutNow})
	} else {
		r.maybeSendAppend(target, true)
	}
}

func (r *raft) abortLeaderTransfer() { r.leadTransferee = None }

func (r *raft) stepCandidate(m Message) error {
	myVoteResp := MsgVoteResp
	if r.state == StatePreCandidate {
		myVoteResp = MsgPreVoteResp
	}
	switch m.Type {
	case MsgProp:
		return &NotLeaderError{Leader: None}
	case MsgReadIndex:
		return &NotLeaderError{Leader: None}
	case MsgApp:
		r.becomeFollower(m.Term, m.From)
		r.handleAppendEntries(m)
	case MsgHeartbeat:
		r.becomeFollower(m.Term, m.From)
		r.handleHeartbeat(m)
	case MsgSnap:
		r.becomeFollower(m.Term, m.From)
		r.handleSnapshot(m)
	case MsgDurable:
		r.becomeFollower(m.Term, m.From)
		r.handleDurable(m)
	case myVoteResp:
		r.trk.recordVote(m.From, !m.Reject)
		_, _, res := r.trk.tally()
		switch res {
		case voteWon:
			if r.state == StatePreCandidate {
				r.campaign(campaignElection)
			} else if _, own := r.trk.votes[r.id]; own {
				r.becomeLeader()
				r.bcastAppend()
			}
			// Else (asynchronous writes) won by others' votes, but our
			// own term and vote are not durable yet: selfVoteDurable
			// makes us leader once they are (see campaign).
		case voteLost:
			r.becomeFollower(r.term, None)
		}
	}
	return nil
}

func (r *raft) stepFollower(m Message) error {
	switch m.Type {
	case MsgProp:
		return &NotLeaderError{Leader: r.lead}
	case MsgApp:
		r.electionElapsed = 0
		r.lead = m.From
		r.handleAppendEntries(m)
	case MsgHeartbeat:
		r.electionElapsed = 0
		r.lead = m.From
		r.handleHeartbeat(m)
	case MsgSnap:
		r.electionElapsed = 0
		r.lead = m.From
		r.handleSnapshot(m)
	case MsgDurable:
		r.electionElapsed = 0
		r.lead = m.From
		r.handleDurable(m)
	case MsgTransferLeader:
		if r.lead == None {
			return &NotLeaderError{Leader: None}
		}
		m.To = r.lead
		r.send(m)
	case MsgTimeoutNow:
		r.logger.Info("raft: campaigning for leadership transfer", "id", r.id, "term", r.term)
		// Skip pre-vote: the leader asked us to take over now.
		r.hup(campaignTransferKind)
	case MsgReadIndex:
		if r.lead == None {
			return &NotLeaderError{Leader: None}
		}
		m.To = r.lead
		r.send(m)
	case MsgReadIndexResp:
		r.readStates = append(r.readStates, ReadState{Index: m.Index, RequestCtx: m.Context})
	}
	return nil
}

func (r *raft) handleAppendEntries(m Message) {
	if m.Index < r.log.committed {
		r.send(Message{To: m.From, Type: MsgAppResp, Index: r.log.committed})
		return
	}
	if last, ok := r.log.maybeAppend(m.Index, m.LogTerm, m.Commit, m.Entries); ok {
		r.send(Message{To: m.From, Type: MsgAppResp, Index: last})
		return
	}
	// Reject with a hint: the highest index at or below the leader's
	// probe whose term is no greater than the probe's term. The leader can
	// then skip every entry of the conflicting term at once.
	hintIndex := min(m.Index, r.log.lastIndex())
	hintIndex, hintTerm := r.log.findConflictByTerm(hintIndex, m.LogTerm)
	r.send(Message{To: m.From, Type: MsgAppResp, Index: m.Index, Reject: true, RejectHint: hintIndex, LogTerm: hintTerm})
}

// handleDurable records how far the leader's log is durable and commits
// what both hold durably (see maybeCommitDurable).
func (r *raft) handleDurable(m Message) {
	r.leaderDurable = max(r.leaderDurable, m.Index)
	r.maybeCommitDurable()
}

func (r *raft) handleHeartbeat(m Message) {
	// The leader sends at most the follower's Match, which it holds.
	r.log.commitTo(min(m.Commit, r.log.lastIndex()))
	r.send(Message{To: m.From, Type: MsgHeartbeatResp, Context: m.Context})
}

func (r *raft) handleSnapshot(m Message) {
	if m.Snapshot == nil {
		return
	}
	s := *m.Snapshot
	if r.restore(s) {
		r.logger.Info("raft: restored snapshot", "id", r.id, "index", s.Meta.Index, "term", s.Meta.Term)
		r.send(Message{To: m.From, Type: MsgAppResp, Index: r.log.lastIndex()})
	} else {
		r.send(Message{To: m.From, Type: MsgAppResp, Index: r.log.committed})
	}
}

// restore installs a snapshot from the leader, if it is news to us.
func (r *raft) restore(s Snapshot) bool {
	if s.Meta.Index <= r.log.committed {
		return false
	}
	// The snapshot may predate this node's own addition (a new learner
	// gets the leader's latest snapshot); the entries after it add us.
	cs := s.Meta.ConfState
	if r.log.matchTerm(s.Meta.Index, s.Meta.Term) {
		// We already have the entries: just commit them.
		r.log.commitTo(s.Meta.Index)
		return false
	}
	r.log.restore(s)
	r.trk = newTracker(r.trk.maxCount, r.trk.maxBytes)
	r.applyConfState(cs)
	return true
}

// applyConfState replaces the membership.
func (r *raft) applyConfState(cs ConfState) {
	r.trk.voters = nil
	r.trk.learners = nil
	clear(r.trk.progress)
	next := r.log.lastIndex() + 1
	for _, id := range cs.Voters {
		r.trk.voters = insertSorted(r.trk.voters, id)
		r.trk.newProgress(id, next, false)
	}
	for _, id := range cs.Learners {
		r.trk.learners = insertSorted(r.trk.learners, id)
		r.trk.newProgress(id, next, true)
	}
	if pr := r.trk.progress[r.id]; pr != nil {
		pr.Match = r.log.lastStableIndex()
	}
}

// applyConfChange makes a committed membership change take effect.
func (r *raft) applyConfChange(cc ConfChange) {
	id := cc.NodeID
	if id == None {
		return
	}
	switch cc.Type {
	case ConfChangeAddVoter:
		if r.trk.isVoter(id) {
			return
		}
		r.trk.voters = insertSorted(r.trk.voters, id)
		if r.trk.isLearner(id) {
			r.trk.learners = removeSorted(r.trk.learners, id)
			r.trk.progress[id].IsLearner = false
		} else {
			r.trk.newProgress(id, r.log.lastIndex()+1, false)
		}
	case ConfChangeAddLearner:
		if r.trk.isVoter(id) || r.trk.isLearner(id) {
			return
		}
		r.trk.learners = insertSorted(r.trk.learners, id)
		r.trk.newProgress(id, r.log.lastIndex()+1, true)
	case ConfChangeRemove:
		r.trk.voters = removeSorted(r.trk.voters, id)
		r.trk.learners = removeSorted(r.trk.learners, id)
		delete(r.trk.progress, id)
		delete(r.trk.votes, id)
	}
	r.logger.Info("raft: membership changed", "id", r.id, "change", cc.Type.String(), "node", id,
		"voters", r.trk.voters, "learners", r.trk.learners)
	if r.state != StateLeader {
		return
	}
	if cc.Type == ConfChangeRemove && id == r.id {
		// A leader that removed itself steps down once the change is
		// committed (thesis §4.2.2); the others elect a successor.
		r.becomeFollower(r.term, None)
		return
	}
	if r.leadTransferee == id && cc.Type == ConfChangeRemove {
		r.abortLeaderTransfer()
	}
	if r.trk.progress[r.id] != nil {
		r.maybeCommit()
	}
}

func (r *raft) tick() {
	switch r.state {
	case StateLeader:
		r.tickHeartbeat()
	default:
		r.tickElection()
	}
}

func (r *raft) tickElection() {
	r.electionElapsed++
	if r.promotable() && r.electionElapsed >= r.randomizedElectionTimeout {
		r.electionElapsed = 0
		_ = r.Step(Message{From: r.id, Type: MsgHup})
	}
}

func (r *raft) tickHeartbeat() {
	r.heartbeatElapsed++
	r.electionElapsed++
	if r.electionElapsed >= r.electionTimeout {
		r.electionElapsed = 0
		if r.checkQuorum {
			_ = r.Step(Message{From: r.id, Type: MsgCheckQuorum})
		}
		if r.state == StateLeader && r.leadTransferee != None {
			r.logger.Warn("raft: leadership transfer timed out", "id", r.id, "to", r.leadTransferee)
			r.abortLeaderTransfer()
		}
	}
	if r.state != StateLeader {
		return
	}
	if r.heartbeatElapsed >= r.heartbeatTimeout {
		r.heartbeatElapsed = 0
		_ = r.Step(Message{From: r.id, Type: MsgBeat})
	}
}
