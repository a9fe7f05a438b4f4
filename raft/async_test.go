package raft_test

import (
	"math/rand/v2"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

// Tests of Config.AsyncStorageWrites: Advance only takes a Ready, and the
// write counts once AckWrite reports it durable.

type asyncNode struct {
	t  *testing.T
	rn *raft.RawNode
	st *raft.MemoryStorage
	// pending holds taken but unpersisted writes, oldest first.
	pending []raft.Ready
}

func newAsyncNode(t *testing.T, id uint64, voters []uint64) *asyncNode {
	t.Helper()
	st := raft.NewMemoryStorage()
	rn, err := raft.NewRawNode(&raft.Config{ID: id, Storage: st, AsyncStorageWrites: true, ElectionTick: 10, HeartbeatTick: 1})
	if err != nil {
		t.Fatal(err)
	}
	if voters != nil {
		if err := rn.Bootstrap(voters); err != nil {
			t.Fatal(err)
		}
	}
	return &asyncNode{t: t, rn: rn, st: st}
}

// take takes one Ready (which must exist), queues its write and returns it.
func (n *asyncNode) take() raft.Ready {
	n.t.Helper()
	if !n.rn.HasReady() {
		n.t.Fatal("no Ready")
	}
	rd := n.rn.Ready()
	for _, m := range rd.Messages {
		if m.Type == raft.MsgAppResp || m.Type == raft.MsgVoteResp {
			n.t.Fatalf("%s outside PersistedMessages", m)
		}
	}
	n.pending = append(n.pending, rd)
	n.rn.Advance(rd)
	return rd
}

// persist makes the oldest k pending writes durable and acknowledges them.
func (n *asyncNode) persist(k int) {
	n.t.Helper()
	for _, rd := range n.pending[:k] {
		if rd.Snapshot != nil {
			if err := n.st.ApplySnapshot(*rd.Snapshot); err != nil {
				n.t.Fatal(err)
			}
		}
		if err := n.st.Append(rd.Entries); err != nil {
			n.t.Fatal(err)
		}
		if !rd.HardState.IsEmpty() {
			n.st.SetHardState(rd.HardState)
		}
		n.rn.AckWrite(rd.Ack)
	}
	n.pending = n.pending[k:]
}

func (n *asyncNode) drain() (committed []raft.Entry) {
	for n.rn.HasReady() {
		committed = append(committed, n.take().CommittedEntries...)
	}
	return committed
}

// settle handles Readies and persists everything until quiet.
func (n *asyncNode) settle() {
	for n.rn.HasReady() || len(n.pending) > 0 {
		n.drain()
		n.persist(len(n.pending))
	}
}

func TestAsyncSingleNodeWaitsForItsOwnWrites(t *testing.T) {
	n := newAsyncNode(t, 1, []uint64{1})
	if got := n.drain(); len(got) != 0 {
		t.Fatalf("bootstrap entries applied before they are durable: %v", got)
	}
	n.persist(len(n.pending))
	if got := n.drain(); len(got) != 1 {
		t.Fatalf("after the ack, want the bootstrap entry applied, got %v", got)
	}
	n.persist(len(n.pending))
	if err := n.rn.Campaign(); err != nil {
		t.Fatal(err)
	}
	n.drain()
	if s := n.rn.Status(); s.State != raft.StateCandidate {
		t.Fatalf("state %s before the vote is durable, want Candidate", s.State)
	}
	n.persist(len(n.pending))
	if s := n.rn.Status(); s.State != raft.StateLeader {
		t.Fatalf("state %s once the vote is durable, want Leader", s.State)
	}
	n.drain() // the no-op
	if _, _, err := n.rn.Propose([]byte("x")); err != nil {
		t.Fatal(err)
	}
	n.drain()
	if c := n.rn.Status().Commit; c != 1 {
		t.Fatalf("commit %d before the leader's entries are durable, want 1", c)
	}
	n.persist(1) // the no-op only
	if c := n.rn.Status().Commit; c != 2 {
		t.Fatalf("commit %d, want 2 (the no-op)", c)
	}
	if got := n.drain(); len(got) != 1 || got[0].Index != 2 {
		t.Fatalf("applied %v, want the no-op at 2", got)
	}
	n.persist(len(n.pending))
	if got := n.drain(); len(got) != 1 || string(got[0].Data) != "x" {
		t.Fatalf("applied %v, want x", got)
	}
}

func TestAsyncFollowerAppliesOnlyDurableEntries(t *testing.T) {
	n := newAsyncNode(t, 2, []uint64{1, 2, 3})
	n.settle()
	ents := []raft.Entry{{Term: 2, Index: 4}, {Term: 2, Index: 5, Data: []byte("a")}}
	if err := n.rn.Step(raft.Message{Type: raft.MsgApp, From: 1, To: 2, Term: 2, Index: 3, LogTerm: 1, Entries: ents, Commit: 5}); err != nil {
		t.Fatal(err)
	}
	rd := n.take()
	if len(rd.Entries) != 2 || len(rd.CommittedEntries) != 0 || len(rd.PersistedMessages) != 1 {
		t.Fatalf("Ready: %d entries, %d committed, %d persisted messages; want 2, 0, 1", len(rd.Entries), len(rd.CommittedEntries), len(rd.PersistedMessages))
	}
	// A duplicate of the same append: nothing new to write, but its ack
	// depends on the write in progress, so it is a PersistedMessage.
	if err := n.rn.Step(raft.Message{Type: raft.MsgApp, From: 1, To: 2, Term: 2, Index: 3, LogTerm: 1, Entries: ents, Commit: 5}); err != nil {
		t.Fatal(err)
	}
	rd = n.take()
	if len(rd.Entries) != 0 || len(rd.PersistedMessages) != 1 || len(rd.Messages) != 0 {
		t.Fatalf("duplicate: %d entries, %v persisted, %v messages", len(rd.Entries), rd.PersistedMessages, rd.Messages)
	}
	n.persist(len(n.pending))
	if got := n.drain(); len(got) != 2 {
		t.Fatalf("applied %v after the ack, want 4 and 5", got)
	}
}

// TestAsyncStaleAckAfterTruncation: entries in progress are replaced by a
// new leader's, then by entries equal to the first ones (same index and
// term). The first write's ack must not mark them durable: the second
// write may be rewriting them on disk.
func TestAsyncStaleAckAfterTruncation(t *testing.T) {
	n := newAsyncNode(t, 2, []uint64{1, 2, 3})
	n.settle()
	app := func(term uint64, entTerm uint64, commit uint64) {
		t.Helper()
		ents := []raft.Entry{{Term: entTerm, Index: 4, Data: []byte{byte(entTerm)}}}
		if err := n.rn.Step(raft.Message{Type: raft.MsgApp, From: 1, To: 2, Term: term, Index: 3, LogTerm: 1, Entries: ents, Commit: commit}); err != nil {
			t.Fatal(err)
		}
		if rd := n.take(); len(rd.Entries) != 1 || rd.Entries[0].Term != entTerm {
			t.Fatalf("Ready entries %v, want index 4 of term %d", rd.Entries, entTerm)
		}
	}
	app(2, 2, 3) // write A: 4/2
	app(3, 3, 3) // write B: 4/3 replaces it
	app(4, 2, 4) // write C: 4/2 again, now committed
	n.persist(1) // A is durable; B and C are not
	if got := n.drain(); len(got) != 0 {
		t.Fatalf("applied %v on a stale ack", got)
	}
	n.persist(2)
	if got := n.drain(); len(got) != 1 || got[0].Term != 2 {
		t.Fatalf("applied %v, want 4/2", got)
	}
}

// TestAsyncCandidateCountsOwnVoteWhenDurable: in a 3-node cluster one
// granted vote and the candidate's own make a quorum, but its own counts
// only once its term and vote are durable.
func TestAsyncCandidateCountsOwnVoteWhenDurable(t *testing.T) {
	n := newAsyncNode(t, 1, []uint64{1, 2, 3})
	n.settle()
	if err := n.rn.Campaign(); err != nil {
		t.Fatal(err)
	}
	rd := n.take()
	if rd.HardState.Vote != 1 || !rd.MustSync {
		t.Fatalf("campaign Ready hard state %+v MustSync %v", rd.HardState, rd.MustSync)
	}
	term := rd.HardState.Term
	if err := n.rn.Step(raft.Message{Type: raft.MsgVoteResp, From: 2, To: 1, Term: term}); err != nil {
		t.Fatal(err)
	}
	if s := n.rn.Status(); s.State != raft.StateCandidate {
		t.Fatalf("state %s with one durable vote of three", s.State)
	}
	n.persist(1)
	if s := n.rn.Status(); s.State != raft.StateLeader {
		t.Fatalf("state %s once its own vote is durable, want Leader", s.State)
	}
}

// TestAsyncCandidateWaitsForItsTermEvenWithAQuorum: a quorum of votes
// from others does not make a candidate leader before its own term and
// vote are durable. Otherwise it could lead, crash, restart in the
// previous term, win the same term again and append different entries at
// the indexes it used in its first tenure (found by the simulator).
func TestAsyncCandidateWaitsForItsTermEvenWithAQuorum(t *testing.T) {
	n := newAsyncNode(t, 1, []uint64{1, 2, 3})
	n.settle()
	if err := n.rn.Campaign(); err != nil {
		t.Fatal(err)
	}
	term := n.take().HardState.Term
	for _, from := range []uint64{2, 3} {
		if err := n.rn.Step(raft.Message{Type: raft.MsgVoteResp, From: from, To: 1, Term: term}); err != nil {
			t.Fatal(err)
		}
	}
	if s := n.rn.Status(); s.State != raft.StateCandidate {
		t.Fatalf("state %s with two granted votes of three but its own term not durable, want Candidate", s.State)
	}
	n.persist(len(n.pending))
	if s := n.rn.Status(); s.State != raft.StateLeader {
		t.Fatalf("state %s once its term is durable, want Leader", s.State)
	}
	// The leader's own Match waits for its writes (the no-op at 4).
	n.drain()
	if m := n.rn.Status().Progress[1].Match; m != 3 {
		t.Fatalf("leader Match %d before its writes are durable, want 3", m)
	}
	n.persist(len(n.pending))
	if m := n.rn.Status().Progress[1].Match; m != 4 {
		t.Fatalf("leader Match %d after, want 4", m)
	}
}

// TestElectionTickAdvance: with PreVote and CheckQuorum, a started node campaigns within
// one election timeout; a single voter becomes leader within ElectionTick
// ticks instead of at least ElectionTick.
func TestElectionTickAdvance(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		for _, advance := range []bool{false, true} {
			st := raft.NewMemoryStorage()
			rn, err := raft.NewRawNode(&raft.Config{ID: 1, Storage: st, ElectionTick: 10, HeartbeatTick: 1,
				PreVote: true, CheckQuorum: true, ElectionTickAdvance: advance, Rand: rand.New(rand.NewPCG(seed, 1))})
			if err != nil {
				t.Fatal(err)
			}
			if err := rn.Bootstrap([]uint64{1}); err != nil {
				t.Fatal(err)
			}
			ticks := 0
			for rn.Status().State != raft.StateLeader {
				for rn.HasReady() {
					rd := rn.Ready()
					if err := st.Append(rd.Entries); err != nil {
						t.Fatal(err)
					}
					if !rd.HardState.IsEmpty() {
						st.SetHardState(rd.HardState)
					}
					rn.Advance(rd)
				}
				if rn.Status().State == raft.StateLeader {
					break
				}
				rn.Tick()
				ticks++
				if ticks > 40 {
					t.Fatal("no leader after 40 ticks")
				}
			}
			if advance && (ticks < 1 || ticks > 10) {
				t.Fatalf("seed %d: leader after %d ticks with ElectionTickAdvance, want 1..10", seed, ticks)
			}
			if !advance && ticks < 10 {
				t.Fatalf("seed %d: leader after %d ticks without ElectionTickAdvance, want >= 10", seed, ticks)
			}
		}
	}
}

// TestReadIndexRespBeforeMembershipKnown: a node that joined and forwarded
// a read before its membership entries were applied (with asynchronous
// writes they apply only once durable) still gets the answer.
func TestReadIndexRespBeforeMembershipKnown(t *testing.T) {
	n := newAsyncNode(t, 4, nil)
	ents := []raft.Entry{{Term: 2, Index: 1}}
	if err := n.rn.Step(raft.Message{Type: raft.MsgApp, From: 1, To: 4, Term: 2, Entries: ents, Commit: 1}); err != nil {
		t.Fatal(err)
	}
	n.drain()
	if err := n.rn.ReadIndex([]byte("r1")); err != nil {
		t.Fatal(err)
	}
	n.drain()
	if err := n.rn.Step(raft.Message{Type: raft.MsgReadIndexResp, From: 1, To: 4, Term: 2, Index: 1, Context: []byte("r1")}); err != nil {
		t.Fatal(err)
	}
	if rd := n.take(); len(rd.ReadStates) != 1 || rd.ReadStates[0].Index != 1 {
		t.Fatalf("read states %v, want the answer to r1", rd.ReadStates)
	}
}
