package raft_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

// Scenario tests named after the Raft paper (Ongaro and Ousterhout,
// "In Search of an Understandable Consensus Algorithm", extended version)
// and Ongaro's thesis. Each test names the section or figure it checks.
// The harness in network_test.go checks Election Safety, State Machine
// Safety and persist-before-send on every Ready of every test.
//
// Index arithmetic: a bootstrapped cluster of n voters holds n
// configuration entries at indexes 1..n in term 1, and every new leader
// appends an empty entry (§8), so the paper's indexes are shifted.

// figure8 drives a five-node cluster to Figure 8(c) and returns it with
// the index of the term-2 entry (the figure's index 2).
//
//	(a) S1 leads term 2 and replicates x2 at index 7 to S2 only.
//	(b) S1 crashes; S5 is elected for term 3 by S3, S4, S5 and appends
//	    entries at index 7 and 8 that reach no one.
//	(c) S5 crashes; S1 restarts and is elected for term 4 by S2, S3, S4.
//	    It replicates x2 (term 2) to S3; now S1, S2 and S3 hold index 7
//	    and S1 knows it, but index 8 (term 4) is only on S1 and S2.
func figure8(t *testing.T) (*network, uint64) {
	n := newNetwork(t, 5, nil)

	// (a)
	n.elect(1)
	if st := n.status(1); st.Term != 2 || st.Commit != 6 {
		t.Fatalf("(a) S1: term %d commit %d, want term 2 commit 6 (its empty entry)", st.Term, st.Commit)
	}
	n.drop(1, 3)
	n.drop(1, 4)
	n.drop(1, 5)
	x2 := n.propose(1, "x2")
	n.stabilize()
	if x2 != 7 || n.termAt(2, x2) != 2 {
		t.Fatalf("(a) x2 at index %d, want 7 on S2", x2)
	}
	if c := n.status(1).Commit; c != 6 {
		t.Fatalf("(a) S1 commit %d with x2 on 2 of 5 nodes, want 6", c)
	}

	// (b)
	n.crash(1)
	n.heal()
	n.filter = func(m *raft.Message) bool { return !(m.From == 5 && m.Type == raft.MsgApp) }
	n.elect(5)
	n.propose(5, "x3")
	n.stabilize()
	if st := n.status(5); st.Term != 3 || st.LastIndex != 8 {
		t.Fatalf("(b) S5: term %d last %d, want term 3 last 8", st.Term, st.LastIndex)
	}
	for _, id := range []uint64{3, 4} {
		if st := n.status(id); st.Vote != 5 || st.Term != 3 {
			t.Fatalf("(b) S%d: term %d vote %d, want a vote for S5 in term 3", id, st.Term, st.Vote)
		}
	}

	// (c)
	n.crash(5)
	n.restart(1)
	n.filter = func(m *raft.Message) bool {
		if m.From != 1 || m.Type != raft.MsgApp {
			return true
		}
		if m.To == 4 {
			return false
		}
		if m.To == 3 {
			// Lose the term-4 entry on its way to S3 but keep x2 and
			// the rest of the append, as if the leader had sent a
			// shorter batch.
			for i, e := range m.Entries {
				if e.Term == 4 {
					m.Entries = m.Entries[:i]
					break
				}
			}
		}
		return true
	}
	// In term 3 S3 and S4 already voted for S5, so S1's first campaign
	// cannot win; its second is for term 4.
	n.campaign(1)
	n.stabilize()
	n.elect(1)
	st := n.status(1)
	if st.Term != 4 || st.LastIndex != 8 {
		t.Fatalf("(c) S1: term %d last %d, want term 4 last 8", st.Term, st.LastIndex)
	}
	if m2, m3 := st.Progress[2].Match, st.Progress[3].Match; m2 < x2 || m3 != x2 {
		t.Fatalf("(c) S1 sees match S2=%d S3=%d, want S2>=%d S3=%d", m2, m3, x2, x2)
	}
	return n, x2
}

// TestFigure8 checks that a leader does not commit an entry from an
// earlier term by counting replicas: once x2 is stored on a majority in
// Figure 8(c) it may still be overwritten (d), so only replicating an
// entry of the leader's own term to a majority commits it (e).
//
// Reference: §5.4.2, Figure 8.
func TestFigure8(t *testing.T) {
	t.Run("d/uncommitted entry on a majority is overwritten", func(t *testing.T) {
		n, x2 := figure8(t)
		if c := n.status(1).Commit; c != 6 {
			t.Fatalf("(c) S1 committed %d: it counted replicas of a term-2 entry (want commit 6)", c)
		}
		// (d) S1 crashes; S5 restarts and wins with S3's and S4's votes
		// (its last entry, term 3, beats their term 2), then overwrites
		// index 7 everywhere.
		n.crash(1)
		n.heal()
		n.restart(5)
		n.campaign(5) // term 4: everyone voted for S1
		n.stabilize()
		n.elect(5)
		if st := n.status(5); st.Term != 5 {
			t.Fatalf("(d) S5 leads term %d, want 5", st.Term)
		}
		for _, id := range []uint64{2, 3, 4, 5} {
			if got := n.termAt(id, x2); got != 3 {
				t.Errorf("(d) S%d: index %d has term %d, want S5's term 3", id, x2, got)
			}
			if c := n.status(id).Commit; c != 9 {
				t.Errorf("(d) S%d: commit %d, want 9 (S5's term-5 entry)", id, c)
			}
		}
		n.restart(1)
		n.tick(1)
		n.requireSameLogs(1, 2, 3, 4, 5)
		for _, id := range []uint64{1, 2, 3, 4, 5} {
			if got := fmt.Sprint(n.appliedData(id)); got != "[x3]" {
				t.Errorf("S%d applied %s, want [x3]", id, got)
			}
		}
	})

	t.Run("e/entry of the current term commits the earlier one", func(t *testing.T) {
		n, x2 := figure8(t)
		// (e) S1 replicates its term-4 entry to S3: a majority holds it,
		// and it commits x2 with it (Log Matching).
		n.filter = func(m *raft.Message) bool { return !(m.From == 1 && m.To == 4 && m.Type == raft.MsgApp) }
		n.tick(1)
		if c := n.status(1).Commit; c != 8 {
			t.Fatalf("(e) S1 commit %d with its term-4 entry on S1, S2, S3; want 8", c)
		}
		// Now S5 cannot be elected: S2 and S3 have a newer last term.
		n.crash(1)
		n.heal()
		n.restart(5)
		for range 3 {
			n.campaign(5)
			n.stabilize()
			if st := n.status(5); st.State == raft.StateLeader {
				t.Fatalf("(e) S5 won term %d without the committed entries", st.Term)
			}
		}
		n.elect(3)
		n.tick(1)
		if got := n.termAt(5, x2); got != 2 {
			t.Fatalf("(e) S5 index %d has term %d, want the committed term-2 entry", x2, got)
		}
		n.requireSameLogs(2, 3, 4, 5)
	})
}

// TestStaleCandidateCannotWin checks the election restriction: a voter
// refuses a candidate whose log is less up-to-date than its own, however
// high the candidate's term, so a node that missed committed entries
// cannot become leader and lose them.
//
// Reference: §5.4.1.
func TestStaleCandidateCannotWin(t *testing.T) {
	n := newNetwork(t, 3, nil)
	n.elect(1)
	n.isolate(3)
	var want []string
	for i := range 3 {
		want = append(want, fmt.Sprintf("w%d", i))
		n.propose(1, want[i])
	}
	n.stabilize()
	committed := n.status(1).Commit

	// Node 3 times out repeatedly while cut off, raising its term.
	n.campaign(3)
	n.campaign(3)
	n.stabilize()
	n.heal()
	var refusals []raft.Message
	n.filter = func(m *raft.Message) bool {
		if m.Type == raft.MsgVoteResp && m.To == 3 {
			refusals = append(refusals, *m)
		}
		return true
	}
	n.campaign(3)
	n.stabilize()
	if st := n.status(3); st.Term != 5 || st.State == raft.StateLeader {
		t.Fatalf("node 3: %s in term %d, want a failed candidacy in term 5", st.State, st.Term)
	}
	if len(refusals) != 2 || !refusals[0].Reject || !refusals[1].Reject {
		t.Fatalf("vote responses to node 3: %v, want two refusals", refusals)
	}
	// The higher term deposed node 1, but only an up-to-date node can win.
	for range 5 {
		n.campaign(3)
		n.stabilize()
		if n.status(3).State == raft.StateLeader {
			t.Fatal("node 3 won an election without the committed entries")
		}
	}
	n.tick(4 * electionTick)
	lead := n.leader()
	if lead != 1 && lead != 2 {
		t.Fatalf("leader is %d, want 1 or 2", lead)
	}
	n.requireSameLogs(1, 2, 3)
	if c := n.status(3).Commit; c < committed {
		t.Fatalf("node 3 commit %d < %d", c, committed)
	}
	if got := fmt.Sprint(n.appliedData(3)); got != fmt.Sprint(want) {
		t.Fatalf("node 3 applied %s, want %v", got, want)
	}
}

// TestCheckQuorumLeaderStepsDown checks that a leader cut off from the
// majority steps down once an election timeout passes without hearing
// from a quorum, that the majority elects a new leader meanwhile, and that
// on healing the old leader follows and loses its uncommitted entry.
// Check-quorum runs once per election timeout, so a leader isolated just
// after a check notices at the second one: the bound is two timeouts.
//
// Reference: thesis §6.2 (and §9.6 for pre-vote, enabled here as in a
// production configuration).
func TestCheckQuorumLeaderStepsDown(t *testing.T) {
	n := newNetwork(t, 3, preVoteCheckQuorum)
	n.elect(1)
	n.isolate(1)
	lost := n.propose(1, "lost")
	n.stabilize()

	stepDown, newLead := -1, uint64(0)
	for tick := 1; tick <= 2*electionTick; tick++ {
		n.tick(1)
		if stepDown < 0 && n.status(1).State != raft.StateLeader {
			stepDown = tick
		}
		if newLead == 0 {
			newLead = n.leader()
			if newLead == 1 {
				newLead = 0
			}
		}
	}
	if stepDown < 0 {
		t.Fatalf("isolated leader still leads after %d ticks", 2*electionTick)
	}
	t.Logf("old leader stepped down after %d ticks", stepDown)
	if st := n.status(1); st.Term != 2 {
		t.Fatalf("isolated node 1 moved to term %d; with pre-vote it must stay in term 2", st.Term)
	}
	if newLead == 0 {
		n.tick(electionTick)
		newLead = n.leader()
	}
	if newLead != 2 && newLead != 3 {
		t.Fatalf("majority side has no leader (leader=%d)", newLead)
	}
	won := n.propose(newLead, "won")
	n.stabilize()

	n.heal()
	n.tick(2)
	st := n.status(1)
	if st.State != raft.StateFollower || st.Lead != newLead || st.Term != n.status(newLead).Term {
		t.Fatalf("node 1 after heal: %s lead %d term %d, want follower of %d", st.State, st.Lead, st.Term, newLead)
	}
	if n.leader() != newLead {
		t.Fatalf("healing changed the leader to %d", n.leader())
	}
	n.requireSameLogs(1, 2, 3)
	if term := n.termAt(1, lost); term == 2 {
		t.Fatalf("node 1 kept its uncommitted term-2 entry at %d", lost)
	}
	if got := fmt.Sprint(n.appliedData(1)); got != "[won]" {
		t.Fatalf("node 1 applied %s, want [won] (index %d)", got, won)
	}
}

// TestPreVoteRejoiningNodeDoesNotDisrupt checks that a node partitioned
// for many election timeouts does not depose a working leader when it
// rejoins, because with pre-vote it never raises its term unless a
// majority would vote for it, and the majority has moved on. Without
// pre-vote (the control) the same partition raises its term and the
// leader is deposed on rejoin.
//
// Reference: thesis §9.6.
func TestPreVoteRejoiningNodeDoesNotDisrupt(t *testing.T) {
	for _, preVote := range []bool{true, false} {
		t.Run(fmt.Sprintf("prevote=%v", preVote), func(t *testing.T) {
			n := newNetwork(t, 3, func(c *raft.Config) { c.PreVote = preVote })
			n.elect(1)
			n.isolate(3)
			n.propose(1, "while-3-was-away")
			n.stabilize()
			n.tick(10 * electionTick)
			if st := n.status(1); st.State != raft.StateLeader || st.Term != 2 {
				t.Fatalf("leader disturbed during the partition: %s term %d", st.State, st.Term)
			}
			partitionedTerm := n.status(3).Term
			if preVote && partitionedTerm != 2 {
				t.Fatalf("with pre-vote the partitioned node moved to term %d, want 2", partitionedTerm)
			}
			if !preVote && partitionedTerm <= 2 {
				t.Fatalf("control: partitioned node stayed in term %d; expected repeated elections", partitionedTerm)
			}

			n.heal()
			deposed := false
			for range 4 * electionTick {
				n.tick(1)
				if n.leader() != 1 {
					deposed = true
				}
				if n.status(3).State == raft.StateLeader {
					t.Fatal("the node that missed a committed entry became leader")
				}
			}
			n.tick(4 * electionTick) // let any new election settle
			lead := n.leader()
			term := n.status(lead).Term
			if preVote {
				if deposed || lead != 1 || term != 2 {
					t.Fatalf("with pre-vote the rejoining node disrupted the leader: leader %d term %d", lead, term)
				}
			} else if term <= 2 {
				t.Fatalf("control: leader %d still in term %d after the rejoin; the test no longer exercises disruption", lead, term)
			}
			n.requireSameLogs(1, 2, 3)
		})
	}
}

// TestSnapshotInstallToLaggingFollower checks InstallSnapshot: when a
// follower needs entries the leader has compacted, the leader sends its
// snapshot; the follower hands it out in a Ready, and once it is installed
// the follower catches up with ordinary appends.
//
// Reference: §7, Figure 13.
func TestSnapshotInstallToLaggingFollower(t *testing.T) {
	n := newNetwork(t, 3, nil)
	n.elect(1)
	n.propose(1, "before")
	n.stabilize()
	n.crash(3)
	for i := range 10 {
		n.propose(1, fmt.Sprintf("missed%d", i))
		n.stabilize()
	}
	snap := n.compact(1)
	if first, _ := n.node(1).storage.FirstIndex(); first != snap.Meta.Index+1 {
		t.Fatalf("leader first index %d after compacting at %d", first, snap.Meta.Index)
	}
	if behind := n.node(3).appliedIndex; behind >= snap.Meta.Index {
		t.Fatalf("node 3 applied %d, not behind the snapshot at %d", behind, snap.Meta.Index)
	}

	var snapMsgs, snapReadies int
	n.filter = func(m *raft.Message) bool {
		if m.Type == raft.MsgSnap {
			snapMsgs++
		}
		return true
	}
	n.onReady = func(id uint64, rd raft.Ready) {
		if id == 3 && rd.Snapshot != nil {
			snapReadies++
			if rd.Snapshot.Meta.Index != snap.Meta.Index || string(rd.Snapshot.Data) != string(snap.Data) {
				t.Errorf("node 3 got snapshot %d %q, want %d %q", rd.Snapshot.Meta.Index, rd.Snapshot.Data, snap.Meta.Index, snap.Data)
			}
			if len(rd.CommittedEntries) > 0 {
				t.Errorf("Ready with a snapshot also carries committed entries from %d", rd.CommittedEntries[0].Index)
			}
		}
	}
	n.restart(3)
	n.tick(1) // a heartbeat finds node 3 behind
	after := n.propose(1, "after")
	n.stabilize()
	n.tick(heartbeatTick) // followers learn the commit index from a heartbeat

	if snapMsgs != 1 || snapReadies != 1 {
		t.Fatalf("%d MsgSnap delivered and %d snapshot Readies on node 3, want 1 and 1", snapMsgs, snapReadies)
	}
	nd := n.node(3)
	if len(nd.snapshots) != 1 || nd.appliedIndex != after {
		t.Fatalf("node 3: %d snapshots installed, applied %d; want 1 and %d", len(nd.snapshots), nd.appliedIndex, after)
	}
	if got, want := fmt.Sprint(n.appliedData(3)), "[before after]"; got != want {
		// "before" was applied before the crash; "missed*" came in the snapshot.
		t.Fatalf("node 3 applied %s, want %s", got, want)
	}
	if first, _ := nd.storage.FirstIndex(); first != snap.Meta.Index+1 {
		t.Fatalf("node 3 storage starts at %d, want %d", first, snap.Meta.Index+1)
	}
	st := n.status(1)
	if pr := st.Progress[3]; pr.State != raft.ProgressReplicate || pr.Match != after {
		t.Fatalf("leader's progress for node 3: %s match %d, want Replicate match %d", pr.State, pr.Match, after)
	}
	if c := n.status(3).Commit; c != after {
		t.Fatalf("node 3 commit %d, want %d", c, after)
	}
}

// TestMembershipChangeDuringPartition adds a learner, promotes it and
// removes a voter, one change at a time, while one voter is partitioned.
// The harness checks Election Safety throughout; the removed node, which
// never learns it was removed, must not disrupt the cluster when it
// returns.
//
// Reference: thesis §4.1 (single-server changes), §4.2.1 (learners catch
// up before voting), §4.2.3 (disruptive removed servers).
func TestMembershipChangeDuringPartition(t *testing.T) {
	n := newNetwork(t, 3, preVoteCheckQuorum)
	n.elect(1)
	n.addNode(4)
	n.isolate(3)

	change := func(cc raft.ConfChange) uint64 {
		t.Helper()
		idx, _, err := n.rn(1).ProposeConfChange(cc)
		if err != nil {
			t.Fatalf("ProposeConfChange(%s %d): %v", cc.Type, cc.NodeID, err)
		}
		return idx
	}
	applied := func(idx uint64) {
		t.Helper()
		for range 3 * electionTick {
			if n.status(1).Applied >= idx && n.status(4).Applied >= idx {
				return
			}
			n.tick(1)
		}
		t.Fatalf("change at %d not applied", idx)
	}

	idx := change(raft.ConfChange{Type: raft.ConfChangeAddLearner, NodeID: 4})
	if _, _, err := n.rn(1).ProposeConfChange(raft.ConfChange{Type: raft.ConfChangeAddVoter, NodeID: 4}); !errors.Is(err, raft.ErrConfChangePending) {
		t.Fatalf("second change before the first applied: err %v, want ErrConfChangePending", err)
	}
	n.stabilize()
	applied(idx)
	if cs := n.rn(4).ConfState(); fmt.Sprint(cs.Voters, cs.Learners) != "[1 2 3] [4]" {
		t.Fatalf("node 4 membership %v", cs)
	}
	if err := n.rn(4).Campaign(); err != nil {
		t.Fatal(err)
	}
	n.stabilize()
	if st := n.status(4); st.State != raft.StateFollower || st.Term != 2 {
		t.Fatalf("learner campaigned: %s term %d", st.State, st.Term)
	}

	applied(change(raft.ConfChange{Type: raft.ConfChangeAddVoter, NodeID: 4}))
	// Voters {1,2,3,4} with 3 unreachable: 1, 2 and 4 are a quorum.
	w := n.propose(1, "with-4-voting")
	n.stabilize()
	if c := n.status(1).Commit; c < w {
		t.Fatalf("write not committed by voters 1, 2, 4: commit %d < %d", c, w)
	}

	applied(change(raft.ConfChange{Type: raft.ConfChangeRemove, NodeID: 3}))
	for _, id := range []uint64{1, 2, 4} {
		if cs := n.rn(id).ConfState(); fmt.Sprint(cs.Voters, cs.Learners) != "[1 2 4] []" {
			t.Fatalf("node %d membership %v, want voters [1 2 4]", id, cs)
		}
	}
	// Node 3 was away for all of it and still believes in {1,2,3}.
	if cs := n.rn(3).ConfState(); fmt.Sprint(cs.Voters) != "[1 2 3]" {
		t.Fatalf("node 3 membership %v", cs)
	}

	n.heal()
	n.tick(10 * electionTick)
	if st := n.status(1); st.State != raft.StateLeader || st.Term != 2 {
		t.Fatalf("removed node disrupted the cluster: node 1 is %s in term %d", st.State, st.Term)
	}
	w2 := n.propose(1, "after-heal")
	n.stabilize()
	n.tick(heartbeatTick) // followers learn the commit index from a heartbeat
	for _, id := range []uint64{1, 2, 4} {
		if c := n.status(id).Commit; c != w2 {
			t.Fatalf("node %d commit %d, want %d", id, c, w2)
		}
	}
	n.requireSameLogs(1, 2, 4)
}

// TestConfChangeRefusals checks the leader's guards on membership changes.
//
// Reference: thesis §4.1 (one change at a time; a leader first commits an
// entry of its own term).
func TestConfChangeRefusals(t *testing.T) {
	t.Run("pending until the leader's first entry is applied", func(t *testing.T) {
		n := newNetwork(t, 3, nil)
		n.filter = func(m *raft.Message) bool { return m.Type != raft.MsgApp }
		n.elect(1)
		cc := raft.ConfChange{Type: raft.ConfChangeAddLearner, NodeID: 4}
		// The log may hold an uncommitted change from an earlier term.
		if _, _, err := n.rn(1).ProposeConfChange(cc); !errors.Is(err, raft.ErrConfChangePending) {
			t.Fatalf("change before the term's first entry is applied: err %v, want ErrConfChangePending", err)
		}
		n.heal()
		n.tick(1)
		if _, _, err := n.rn(1).ProposeConfChange(cc); err != nil {
			t.Fatalf("change after the term's first entry applied: %v", err)
		}
		if _, _, err := n.rn(1).ProposeConfChange(raft.ConfChange{Type: raft.ConfChangeAddVoter, NodeID: 4}); !errors.Is(err, raft.ErrConfChangePending) {
			t.Fatalf("second change while the first is in flight: err %v, want ErrConfChangePending", err)
		}
	})
	t.Run("removing the last voter", func(t *testing.T) {
		n := newNetwork(t, 1, nil)
		n.elect(1)
		_, _, err := n.rn(1).ProposeConfChange(raft.ConfChange{Type: raft.ConfChangeRemove, NodeID: 1})
		if !errors.Is(err, raft.ErrInvalidConfChange) {
			t.Fatalf("removing the only voter: err %v, want ErrInvalidConfChange", err)
		}
		// The node still works.
		idx := n.propose(1, "x")
		n.stabilize()
		if c := n.status(1).Commit; c != idx {
			t.Fatalf("commit %d, want %d", c, idx)
		}
	})
}

// TestReadIndexDeposedLeader checks that ReadIndex is linearizable across
// a leadership change: a deposed leader that still believes it leads
// cannot confirm its leadership with a quorum, so it never answers a read
// (which would miss writes the new leader acknowledged); and a follower's
// read, answered through the current leader, covers every write
// acknowledged before it was requested.
//
// Reference: thesis §6.4; §8 of the paper.
func TestReadIndexDeposedLeader(t *testing.T) {
	n := newNetwork(t, 3, nil)
	n.elect(1)
	n.propose(1, "a")
	n.stabilize()

	n.isolate(1)
	n.elect(2)
	b := n.propose(2, "b")
	n.stabilize()
	if n.node(2).appliedIndex != b || n.status(1).State != raft.StateLeader {
		t.Fatal("setup: want b applied by the new leader while node 1 still believes it leads")
	}
	// The read starts after b was acknowledged: answering it at node 1's
	// commit index would return a state without b.
	if err := n.readIndex(1, "stale"); err != nil {
		t.Fatal(err)
	}
	n.stabilize()
	n.tick(3 * electionTick)
	if rs := n.node(1).readStates; len(rs) != 0 {
		t.Fatalf("deposed leader answered a read: %s (b is at %d)", fmtReads(rs), b)
	}

	n.heal()
	n.tick(1)
	if st := n.status(1); st.State != raft.StateFollower || st.Lead != 2 {
		t.Fatalf("node 1 after heal: %s lead %d, want follower of 2", st.State, st.Lead)
	}
	if rs := n.node(1).readStates; len(rs) != 0 {
		t.Fatalf("deposed leader answered a read after stepping down: %s", fmtReads(rs))
	}

	c := n.propose(2, "c")
	n.stabilize()
	for _, id := range []uint64{1, 3} {
		ctx := fmt.Sprintf("follower-%d", id)
		if err := n.readIndex(id, ctx); err != nil {
			t.Fatal(err)
		}
		n.stabilize()
		rs := n.node(id).readStates
		if len(rs) != 1 || string(rs[0].RequestCtx) != ctx || rs[0].Index < c {
			t.Fatalf("node %d read states %s, want one for %q at index >= %d", id, fmtReads(rs), ctx, c)
		}
	}
}

// TestReadIndexNewLeaderWaitsForItsTerm checks that a new leader does not
// answer reads until it has committed an entry of its own term: before
// that its commit index may lag what its predecessor committed.
//
// Reference: thesis §6.4 step 1; §8 of the paper.
func TestReadIndexNewLeaderWaitsForItsTerm(t *testing.T) {
	n := newNetwork(t, 3, nil)
	n.elect(1)
	a := n.propose(1, "a")
	n.stabilize()

	n.filter = func(m *raft.Message) bool { return !(m.From == 2 && m.Type == raft.MsgApp) }
	n.elect(2)
	if err := n.readIndex(2, "early"); err != nil {
		t.Fatal(err)
	}
	n.stabilize()
	n.tick(2)
	if rs := n.node(2).readStates; len(rs) != 0 {
		t.Fatalf("new leader answered a read before committing in its term: %s", fmtReads(rs))
	}
	noop := n.status(2).LastIndex
	n.heal()
	n.tick(1)
	rs := n.node(2).readStates
	if len(rs) != 1 || string(rs[0].RequestCtx) != "early" || rs[0].Index < noop || rs[0].Index < a {
		t.Fatalf("read states %s, want one for \"early\" at index >= %d", fmtReads(rs), noop)
	}
}

// TestReadIndexSingleVoterAfterRestart checks the same rule for a
// single-voter cluster. Its commit index is written without fsync
// (Ready.MustSync is false for a commit-only change: "it can be
// recomputed"), so after a crash it may lag an applied and acknowledged
// write until the restarted leader commits an entry of its new term.
//
// Reference: thesis §6.4 step 1.
func TestReadIndexSingleVoterAfterRestart(t *testing.T) {
	n := newNetwork(t, 1, nil)
	n.elect(1)
	var commitOnly bool
	n.onReady = func(_ uint64, rd raft.Ready) {
		commitOnly = !rd.HardState.IsEmpty() && !rd.MustSync && len(rd.CommittedEntries) > 0
	}
	w := n.propose(1, "w")
	n.stabilize()
	if !commitOnly || n.node(1).appliedIndex != w {
		t.Fatal("setup: want w applied from a Ready whose commit index needs no fsync")
	}
	// Crash before that Ready's hard state reached the disk.
	n.crash(1)
	hs := n.node(1).storage.HardState()
	hs.Commit = w - 1
	n.node(1).storage.SetHardState(hs)
	n.restartVolatile(1)
	n.onReady = nil
	n.stabilize() // re-apply the log up to the stored commit index

	n.campaign(1)
	if err := n.readIndex(1, "after-restart"); err != nil {
		t.Fatal(err)
	}
	n.stabilize()
	rs := n.node(1).readStates
	if len(rs) != 1 || rs[0].Index < w {
		t.Fatalf("read states %s: a read started after w (index %d) was acknowledged must not be served below it", fmtReads(rs), w)
	}
}

// TestLeadershipTransfer checks the transfer extension: the leader brings
// the target's log up to date, then tells it to time out at once; it
// refuses proposals meanwhile; and it abandons a transfer that has not
// finished within an election timeout.
//
// Reference: thesis §3.10.
func TestLeadershipTransfer(t *testing.T) {
	// record returns the messages delivered from the leader to target.
	record := func(n *network, from, to uint64) *[]raft.Message {
		var got []raft.Message
		n.filter = func(m *raft.Message) bool {
			if m.From == from && m.To == to {
				got = append(got, *m)
			}
			return true
		}
		return &got
	}

	t.Run("up-to-date target", func(t *testing.T) {
		n := newNetwork(t, 3, preVoteCheckQuorum)
		n.elect(1)
		n.propose(1, "a")
		n.stabilize()
		sent := record(n, 1, 2)
		if err := n.rn(1).TransferLeadership(2); err != nil {
			t.Fatal(err)
		}
		n.stabilize()
		if len(*sent) == 0 || (*sent)[0].Type != raft.MsgTimeoutNow {
			t.Fatalf("leader sent %v to an up-to-date target; want MsgTimeoutNow first", *sent)
		}
		if lead := n.leader(); lead != 2 || n.status(2).Term != 3 {
			t.Fatalf("leader %d, term %d; want 2 in term 3", lead, n.status(2).Term)
		}
		if st := n.status(1); st.State != raft.StateFollower || st.Lead != 2 {
			t.Fatalf("old leader: %s lead %d", st.State, st.Lead)
		}
	})

	t.Run("lagging target is caught up first", func(t *testing.T) {
		n := newNetwork(t, 3, preVoteCheckQuorum)
		n.elect(1)
		n.isolate(3)
		for i := range 5 {
			n.propose(1, fmt.Sprintf("w%d", i))
		}
		n.stabilize()
		n.heal()
		last := n.status(1).LastIndex
		if n.status(3).LastIndex >= last {
			t.Fatal("setup: node 3 is not behind")
		}
		sent := record(n, 1, 3)
		var lastAtTimeoutNow uint64
		inner := n.filter
		n.filter = func(m *raft.Message) bool {
			if m.Type == raft.MsgTimeoutNow && m.To == 3 {
				lastAtTimeoutNow = n.status(3).LastIndex
			}
			return inner(m)
		}
		if err := n.rn(1).TransferLeadership(3); err != nil {
			t.Fatal(err)
		}
		if _, _, err := n.rn(1).Propose([]byte("during")); !errors.Is(err, raft.ErrProposalDropped) {
			t.Fatalf("proposal during transfer: err %v, want ErrProposalDropped", err)
		}
		n.stabilize()
		tn := slices.IndexFunc(*sent, func(m raft.Message) bool { return m.Type == raft.MsgTimeoutNow })
		if tn < 1 || slices.ContainsFunc((*sent)[:tn], func(m raft.Message) bool { return m.Type != raft.MsgApp }) {
			t.Fatalf("leader sent %v; want appends, then MsgTimeoutNow", *sent)
		}
		if lastAtTimeoutNow != last {
			t.Fatalf("MsgTimeoutNow reached node 3 with last index %d, want %d", lastAtTimeoutNow, last)
		}
		if lead := n.leader(); lead != 3 {
			t.Fatalf("leader %d, want 3", lead)
		}
		n.requireSameLogs(1, 2, 3)
	})

	t.Run("unreachable target times out", func(t *testing.T) {
		n := newNetwork(t, 3, nil)
		n.elect(1)
		n.isolate(3)
		if err := n.rn(1).TransferLeadership(3); err != nil {
			t.Fatal(err)
		}
		n.stabilize()
		for tick := 1; tick < electionTick; tick++ {
			n.tick(1)
			if _, _, err := n.rn(1).Propose([]byte("x")); !errors.Is(err, raft.ErrProposalDropped) {
				t.Fatalf("tick %d: proposal during transfer: err %v, want ErrProposalDropped", tick, err)
			}
		}
		n.tick(1)
		st := n.status(1)
		if st.State != raft.StateLeader || st.Term != 2 || st.LeadTransferee != 0 {
			t.Fatalf("after an election timeout: %s term %d transferee %d; want leader of term 2 with no transfer",
				st.State, st.Term, st.LeadTransferee)
		}
		idx := n.propose(1, "resumed")
		n.stabilize()
		n.tick(heartbeatTick) // followers learn the commit index from a heartbeat
		if c := n.status(2).Commit; c != idx {
			t.Fatalf("proposal after the aborted transfer: node 2 commit %d, want %d", c, idx)
		}
	})
}

// TestFastBacktracking checks that a leader repairs a follower with a long
// conflicting suffix in a number of round trips that depends on the terms
// involved, not on the number of entries: each rejection carries the
// follower's term at the conflict, and the leader skips all of that term.
//
// Reference: §5.3 (the optimization at the end of the section).
func TestFastBacktracking(t *testing.T) {
	n := newNetwork(t, 3, nil)
	n.elect(1)
	// Node 1 keeps leading term 2 alone and appends a long suffix that
	// never commits.
	n.isolate(1)
	for i := range 60 {
		n.propose(1, fmt.Sprintf("old%d", i))
	}
	n.stabilize()
	// Meanwhile 2 and 3 go through three terms of their own.
	for round, id := range []uint64{2, 3, 2} {
		n.elect(id)
		for i := range 15 {
			n.propose(id, fmt.Sprintf("new%d.%d", round, i))
		}
		n.stabilize()
	}
	lead := n.leader()
	diverged := n.status(1).LastIndex - 4 // entries after node 1's term-2 empty entry
	if diverged < 60 {
		t.Fatalf("setup: only %d divergent entries", diverged)
	}

	var rejects, appends int
	n.heal()
	n.filter = func(m *raft.Message) bool {
		if m.Type == raft.MsgAppResp && m.From == 1 && m.Reject {
			rejects++
		}
		if m.Type == raft.MsgApp && m.To == 1 {
			appends++
		}
		return true
	}
	n.tick(1)
	n.requireSameLogs(1, 2, 3)
	t.Logf("repaired %d divergent entries with %d rejections and %d appends", diverged, rejects, appends)
	if rejects > 2 {
		t.Fatalf("%d rejections to repair %d entries of one stale term: backtracking is per entry, not per term", rejects, diverged)
	}
	if n.leader() != lead {
		t.Fatalf("leader changed from %d to %d", lead, n.leader())
	}
}

// TestFlowControl checks that a leader bounds the appends in flight to a
// follower (MaxInflightMsgs), pausing while the window is full, and that
// proposals made meanwhile go out in one batch when acknowledgements free
// the window.
//
// Reference: thesis §10.2.1 (pipelining and batching).
func TestFlowControl(t *testing.T) {
	n := newNetwork(t, 3, func(c *raft.Config) { c.MaxInflightMsgs = 2 })
	n.elect(1)
	n.propose(1, "warmup") // node 3 acks: it is now replicating
	n.stabilize()
	if pr := n.status(1).Progress[3]; pr.State != raft.ProgressReplicate {
		t.Fatalf("node 3 progress %s, want Replicate", pr.State)
	}

	var held []raft.Message
	var appends [][]raft.Entry
	n.filter = func(m *raft.Message) bool {
		switch {
		case m.Type == raft.MsgApp && m.To == 3 && len(m.Entries) > 0:
			appends = append(appends, m.Entries)
		case m.Type == raft.MsgAppResp && m.From == 3:
			held = append(held, *m) // node 3 does not ack (yet)
			return false
		}
		return true
	}
	var last uint64
	for i := range 6 {
		last = n.propose(1, fmt.Sprintf("p%d", i))
		n.stabilize()
	}
	if len(appends) != 2 || len(appends[0]) != 1 || len(appends[1]) != 1 {
		t.Fatalf("without acks the leader sent %d appends to node 3 (%v); want 2 of one entry", len(appends), appends)
	}
	if c := n.status(1).Commit; c != last {
		t.Fatalf("the paused follower held back the commit: %d, want %d", c, last)
	}

	// The acks arrive: the four pending proposals go out together.
	n.filter = func(m *raft.Message) bool {
		if m.Type == raft.MsgApp && m.To == 3 && len(m.Entries) > 0 {
			appends = append(appends, m.Entries)
		}
		return true
	}
	n.queue = append(n.queue, held...)
	n.stabilize()
	if len(appends) != 3 || len(appends[2]) != 4 {
		t.Fatalf("after the acks the leader sent %d more appends; want one carrying 4 entries (got %v)", len(appends)-2, appends[2:])
	}
	if st := n.status(3); st.LastIndex != last || st.Commit != last {
		t.Fatalf("node 3 last %d commit %d, want %d", st.LastIndex, st.Commit, last)
	}
}

// TestPersistBeforeSend checks the Ready contract's durability split:
// replies that promise durable state (a granted vote; an append ack) are
// only in Ready.PersistedMessages, alongside the state they promise, while
// a leader's appends are in Ready.Messages so its own disk write can
// overlap replication. (The harness also checks every Ready of every test
// for the first half.)
//
// Reference: §5 Figure 2 ("Persistent state ... updated on stable storage
// before responding to RPCs"); thesis §10.2.1.
func TestPersistBeforeSend(t *testing.T) {
	n := newNetwork(t, 3, nil)
	type seen struct {
		id uint64
		rd raft.Ready
	}
	var readies []seen
	n.onReady = func(id uint64, rd raft.Ready) { readies = append(readies, seen{id, rd}) }
	find := func(typ raft.MessageType, from uint64) (raft.Ready, bool, bool) {
		t.Helper()
		for _, s := range readies {
			if s.id != from {
				continue
			}
			for _, m := range s.rd.Messages {
				if m.Type == typ {
					return s.rd, true, false
				}
			}
			for _, m := range s.rd.PersistedMessages {
				if m.Type == typ {
					return s.rd, false, true
				}
			}
		}
		t.Fatalf("node %d sent no %s", from, typ)
		return raft.Ready{}, false, false
	}

	n.elect(1)
	rd, inMsgs, inPersisted := find(raft.MsgVoteResp, 2)
	if inMsgs || !inPersisted {
		t.Fatal("vote response not confined to PersistedMessages")
	}
	if rd.HardState.Term != 2 || rd.HardState.Vote != 1 || !rd.MustSync {
		t.Fatalf("vote sent with HardState %+v MustSync=%v; want the vote for 1 in term 2, synced", rd.HardState, rd.MustSync)
	}

	readies = nil
	idx := n.propose(1, "x")
	n.stabilize()
	rd, inMsgs, inPersisted = find(raft.MsgApp, 1)
	if !inMsgs || inPersisted {
		t.Fatal("leader's MsgApp not in Ready.Messages")
	}
	if len(rd.Entries) != 1 || rd.Entries[0].Index != idx {
		t.Fatalf("leader's append went out in a Ready persisting %v; want the same Ready as entry %d", rd.Entries, idx)
	}
	rd, inMsgs, inPersisted = find(raft.MsgAppResp, 2)
	if inMsgs || !inPersisted {
		t.Fatal("append ack not confined to PersistedMessages")
	}
	if len(rd.Entries) != 1 || rd.Entries[0].Index != idx || !rd.MustSync {
		t.Fatalf("ack sent in a Ready persisting %v (MustSync=%v), want entry %d synced", rd.Entries, rd.MustSync, idx)
	}
}

// TestRestartKeepsTermAndVote checks that currentTerm and votedFor survive
// a crash, so a restarted node cannot vote twice in one term, and that a
// restarted leader comes back as a follower with its log and commit index.
//
// Reference: §5.2, Figure 2 (persistent state on all servers).
func TestRestartKeepsTermAndVote(t *testing.T) {
	n := newNetwork(t, 3, nil)
	// Node 2 campaigns for term 2; only node 1 hears it and votes.
	n.drop(2, 3)
	n.drop(1, 2) // and node 2 never learns it won the vote
	n.campaign(2)
	n.stabilize()
	if st := n.status(1); st.Term != 2 || st.Vote != 2 {
		t.Fatalf("node 1: term %d vote %d, want a vote for 2 in term 2", st.Term, st.Vote)
	}
	n.crash(1)
	n.restart(1)
	if st := n.status(1); st.Term != 2 || st.Vote != 2 || st.State != raft.StateFollower {
		t.Fatalf("restarted node 1: %s term %d vote %d, want follower with its vote for 2 in term 2", st.State, st.Term, st.Vote)
	}

	// Node 3 campaigns for the same term 2 and must be refused.
	n.heal()
	n.crash(2)
	var resp []raft.Message
	n.filter = func(m *raft.Message) bool {
		if m.Type == raft.MsgVoteResp && m.To == 3 {
			resp = append(resp, *m)
		}
		return true
	}
	n.campaign(3)
	n.stabilize()
	if st := n.status(3); st.Term != 2 || st.State == raft.StateLeader {
		t.Fatalf("node 3: %s in term %d, want a failed candidacy in term 2", st.State, st.Term)
	}
	if len(resp) != 1 || !resp[0].Reject || resp[0].From != 1 {
		t.Fatalf("vote responses %v, want node 1's refusal", resp)
	}

	// A restarted leader keeps its log and commit index.
	n.restart(2)
	n.heal()
	n.tick(4 * electionTick)
	lead := n.leader()
	idx := n.propose(lead, "x")
	n.stabilize()
	before := n.status(lead)
	n.crash(lead)
	n.restart(lead)
	after := n.status(lead)
	if after.State != raft.StateFollower || after.Term != before.Term || after.Commit != idx || after.LastIndex != idx || after.Applied != idx {
		t.Fatalf("restarted leader: %+v, want follower in term %d with commit, last and applied %d", after, before.Term, idx)
	}
}
