package raft_test

import (
	"fmt"
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
