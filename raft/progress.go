package raft

import (
	"fmt"
	"slices"
)

// ProgressState is how the leader currently replicates to one follower.
type ProgressState uint8

const (
	// ProgressProbe: the leader does not know where the follower's log
	// matches, so it sends one append per heartbeat interval and waits.
	ProgressProbe ProgressState = iota
	// ProgressReplicate: the logs match up to Match; the leader streams
	// appends optimistically, bounded by the in-flight window.
	ProgressReplicate
	// ProgressSnapshot: the follower needs entries the leader has
	// compacted; a snapshot is on its way and appends pause.
	ProgressSnapshot
)

func (s ProgressState) String() string {
	switch s {
	case ProgressProbe:
		return "Probe"
	case ProgressReplicate:
		return "Replicate"
	case ProgressSnapshot:
		return "Snapshot"
	}
	return fmt.Sprintf("ProgressState(%d)", uint8(s))
}

// Progress is the leader's view of one follower.
type Progress struct {
	Match, Next uint64
	State       ProgressState
	// PendingSnapshot is the index of the snapshot being sent.
	PendingSnapshot uint64
	// RecentActive is set when the follower was heard from since the last
	// check-quorum round.
	RecentActive bool
	// ProbeSent pauses a probing follower after one append.
	ProbeSent bool
	IsLearner bool
	// CommitSent is the highest index the follower can know to be
	// committed from what the leader sent it: the commit index of an
	// append or heartbeat (up to the entries it carried or the follower
	// held), or the index of a MsgDurable.
	CommitSent uint64
	// CommitWanted is the highest index the follower waits to see
	// committed: the last entry of a proposal it forwarded, or a read
	// index it asked for. Without Config.BroadcastCommit, a commit index
	// goes out in an append of its own only to a follower with
	// CommitWanted above CommitSent.
	CommitWanted uint64
	inflights    inflights
}

// wantsCommit reports whether the follower waits for a commit index it
// has not been sent, given the leader's commit index.
func (pr *Progress) wantsCommit(committed uint64) bool {
	return min(pr.CommitWanted, committed) > pr.CommitSent
}

func (pr *Progress) String() string {
	return fmt.Sprintf("%s match=%d next=%d", pr.State, pr.Match, pr.Next)
}

func (pr *Progress) resetState(state ProgressState) {
	pr.ProbeSent = false
	pr.PendingSnapshot = 0
	pr.State = state
	pr.inflights.reset()
}

func (pr *Progress) becomeProbe() {
	// After a snapshot, resume right after it (or after Match if higher).
	if pr.State == ProgressSnapshot {
		pending := pr.PendingSnapshot
		pr.resetState(ProgressProbe)
		pr.Next = max(pr.Match+1, pending+1)
		return
	}
	pr.resetState(ProgressProbe)
	pr.Next = pr.Match + 1
}

func (pr *Progress) becomeReplicate() {
	pr.resetState(ProgressReplicate)
	pr.Next = pr.Match + 1
}

func (pr *Progress) becomeSnapshot(index uint64) {
	pr.resetState(ProgressSnapshot)
	pr.PendingSnapshot = index
}

// maybeUpdate records an acknowledgement up to n.
func (pr *Progress) maybeUpdate(n uint64) bool {
	updated := false
	if pr.Match < n {
		pr.Match = n
		updated = true
		pr.ProbeSent = false
	}
	pr.Next = max(pr.Next, n+1)
	return updated
}

// maybeDecrTo handles a rejection of the append at index rejected. It
// returns false if the rejection is stale (an older append's).
func (pr *Progress) maybeDecrTo(rejected, matchHint uint64) bool {
	if pr.State == ProgressReplicate {
		if rejected <= pr.Match {
			return false
		}
		pr.Next = pr.Match + 1
		return true
	}
	if pr.Next-1 != rejected {
		return false
	}
	pr.Next = max(min(rejected, matchHint+1), pr.Match+1)
	pr.ProbeSent = false
	return true
}

// isPaused reports whether the leader should hold appends to this follower.
func (pr *Progress) isPaused() bool {
	switch pr.State {
	case ProgressProbe:
		return pr.ProbeSent
	case ProgressReplicate:
		return pr.inflights.full()
	default:
		return true
	}
}

// inflights bounds the appends sent to one follower and not yet
// acknowledged, by count and by bytes: flow control, so a slow follower
// cannot make the leader buffer without limit.
type inflights struct {
	maxCount int
	maxBytes uint64
	// Appends in order of index; each entry is (last index, size).
	idx   []uint64
	size  []uint64
	bytes uint64
}

func (in *inflights) add(index, bytes uint64) {
	in.idx = append(in.idx, index)
	in.size = append(in.size, bytes)
	in.bytes += bytes
}

// freeLE releases every in-flight append up to index.
func (in *inflights) freeLE(index uint64) {
	n := 0
	for n < len(in.idx) && in.idx[n] <= index {
		in.bytes -= in.size[n]
		n++
	}
	if n == 0 {
		return
	}
	in.idx = append(in.idx[:0], in.idx[n:]...)
	in.size = append(in.size[:0], in.size[n:]...)
}

// freeFirst releases the oldest in-flight append.
func (in *inflights) freeFirst() {
	if len(in.idx) > 0 {
		in.freeLE(in.idx[0])
	}
}

func (in *inflights) full() bool {
	return len(in.idx) >= in.maxCount || (in.maxBytes > 0 && in.bytes >= in.maxBytes)
}

func (in *inflights) count() int { return len(in.idx) }

func (in *inflights) reset() {
	in.idx = in.idx[:0]
	in.size = in.size[:0]
	in.bytes = 0
}

// tracker holds the membership and the leader's per-member progress. IDs
// are kept sorted so that every iteration, and therefore every output of
// the core, is deterministic.
type tracker struct {
	voters   []uint64
	learners []uint64
	progress map[uint64]*Progress
	votes    map[uint64]bool
	maxCount int
	maxBytes uint64
}

func newTracker(maxCount int, maxBytes uint64) tracker {
	return tracker{
		progress: map[uint64]*Progress{},
		votes:    map[uint64]bool{},
		maxCount: maxCount,
		maxBytes: maxBytes,
	}
}

func (t *tracker) confState() ConfState {
	return ConfState{Voters: slices.Clone(t.voters), Learners: slices.Clone(t.learners)}
}

func (t *tracker) isVoter(id uint64) bool   { _, ok := slices.BinarySearch(t.voters, id); return ok }
func (t *tracker) isLearner(id uint64) bool { _, ok := slices.BinarySearch(t.learners, id); return ok }

// members returns voters and learners, sorted.
func (t *tracker) members() []uint64 {
	m := append(slices.Clone(t.voters), t.learners...)
	slices.Sort(m)
	return m
}

func (t *tracker) quorum() int { return len(t.voters)/2 + 1 }

func (t *tracker) newProgress(id, next uint64, learner bool) {
	pr := &Progress{Next: next, IsLearner: learner, RecentActive: true}
	pr.inflights = inflights{maxCount: t.maxCount, maxBytes: t.maxBytes}
	t.progress[id] = pr
}

// committed returns the largest index that a quorum of voters has matched.
func (t *tracker) committed() uint64 {
	if len(t.voters) == 0 {
		return 0
	}
	matches := make([]uint64, 0, len(t.voters))
	for _, id := range t.voters {
		if pr := t.progress[id]; pr != nil {
			matches = append(matches, pr.Match)
		} else {
			matches = append(matches, 0)
		}
	}
	slices.Sort(matches)
	// With n voters sorted ascending, the value at n-quorum is held by at
	// least quorum voters.
	return matches[len(matches)-t.quorum()]
}

type voteResult uint8

const (
	votePending voteResult = iota
	voteWon
	voteLost
)

func (t *tracker) recordVote(id uint64, granted bool) {
	if _, ok := t.votes[id]; !ok {
		t.votes[id] = granted
	}
}

func (t *tracker) tally() (granted, rejected int, res voteResult) {
	for _, id := range t.voters {
		v, ok := t.votes[id]
		if !ok {
			continue
		}
		if v {
			granted++
		} else {
			rejected++
		}
	}
	q := t.quorum()
	switch {
	case granted >= q:
		res = voteWon
	case len(t.voters)-rejected < q:
		res = voteLost
	default:
		res = votePending
	}
	return
}

// ackedBy reports whether the set of acks covers a quorum of voters.
func (t *tracker) quorumIn(acks map[uint64]bool) bool {
	n := 0
	for _, id := range t.voters {
		if acks[id] {
			n++
		}
	}
	return n >= t.quorum()
}

func (t *tracker) resetVotes() { clear(t.votes) }

func insertSorted(ids []uint64, id uint64) []uint64 {
	i, ok := slices.BinarySearch(ids, id)
	if ok {
		return ids
	}
	return slices.Insert(ids, i, id)
}

func removeSorted(ids []uint64, id uint64) []uint64 {
	i, ok := slices.BinarySearch(ids, id)
	if !ok {
		return ids
	}
	return slices.Delete(ids, i, i+1)
}
