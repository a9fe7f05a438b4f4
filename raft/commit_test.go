package raft_test

import (
	"testing"

	"github.com/cairn-db/cairn/raft"
)

// Without BroadcastCommit a commit index costs no append of its own to a
// follower that does not wait for it: one write is one append per
// follower, and the followers learn the commit from the next heartbeat.
// With it, as in etcd's raft, every advance goes to every follower.
func TestCommitIndexGoesOnlyToWaitingFollowers(t *testing.T) {
	for _, broadcast := range []bool{false, true} {
		n := newNetwork(t, 3, func(c *raft.Config) { c.BroadcastCommit = broadcast })
		n.elect(1)
		n.tick(heartbeatTick)
		apps := map[uint64]int{}
		n.filter = func(m *raft.Message) bool {
			if m.Type == raft.MsgApp && m.From == 1 {
				apps[m.To]++
			}
			return true
		}
		idx := n.propose(1, "x")
		n.stabilize()
		wantApps, wantCommit := 1, idx-1
		if broadcast {
			wantApps, wantCommit = 2, idx
		}
		for _, id := range []uint64{2, 3} {
			if apps[id] != wantApps {
				t.Errorf("broadcast=%v: node %d got %d appends for one write, want %d", broadcast, id, apps[id], wantApps)
			}
			if c := n.status(id).Commit; c != wantCommit {
				t.Errorf("broadcast=%v: node %d commit %d after the write, want %d", broadcast, id, c, wantCommit)
			}
		}
		n.tick(heartbeatTick)
		for _, id := range []uint64{2, 3} {
			if c := n.status(id).Commit; c != idx {
				t.Errorf("broadcast=%v: node %d commit %d after a heartbeat, want %d", broadcast, id, c, idx)
			}
		}
	}
}

// A follower that forwarded a proposal in a three-voter cluster commits
// it on its own once its copy is durable and the leader reported its own
// copy durable (MsgDurable): here the leader never hears an
// acknowledgement, and the follower applies the entry anyway. A read
// through the leader must then still see it.
func TestForwardedProposalCommitsOnFollower(t *testing.T) {
	n := newNetwork(t, 3, nil)
	n.elect(1)
	n.tick(heartbeatTick)
	durables := map[uint64]int{}
	n.filter = func(m *raft.Message) bool {
		if m.Type == raft.MsgDurable {
			durables[m.To]++
		}
		return !(m.Type == raft.MsgAppResp && m.To == 1)
	}
	if err := n.rn(2).Forward([]byte("fwd")); err != nil {
		t.Fatalf("Forward: %v", err)
	}
	n.stabilize()
	idx := n.status(1).LastIndex
	if c := n.status(1).Commit; c >= idx {
		t.Fatalf("leader commit %d: it heard no acknowledgement of %d", c, idx)
	}
	if durables[2] != 1 || durables[3] != 0 {
		t.Fatalf("MsgDurable sent to 2: %d, to 3: %d; want 1 and 0 (only 2 waits)", durables[2], durables[3])
	}
	if c, a := n.status(2).Commit, n.node(2).appliedIndex; c != idx || a != idx {
		t.Fatalf("node 2 commit %d applied %d, want both %d", c, a, idx)
	}
	if c := n.status(3).Commit; c >= idx {
		t.Fatalf("node 3 commit %d: it neither waited nor heard a commit of %d", c, idx)
	}
	if err := n.readIndex(1, "after-fwd"); err != nil {
		t.Fatalf("ReadIndex: %v", err)
	}
	n.stabilize()
	rs := n.node(1).readStates
	if len(rs) != 1 || rs[0].Index < idx {
		t.Fatalf("read states %s on the leader, want one at or above %d (node 2 applied it)", fmtReads(rs), idx)
	}

	n.filter = nil
	n.tick(heartbeatTick)
	n.tick(heartbeatTick)
	for _, id := range []uint64{1, 2, 3} {
		if c := n.status(id).Commit; c != idx {
			t.Fatalf("after healing: node %d commit %d, want %d", id, c, idx)
		}
	}
	n.requireSameLogs(1, 2, 3)
}

// With five voters a follower and the leader are no quorum: no MsgDurable,
// and the forwarding follower learns the commit from an append sent to it
// at once because it waits for it.
func TestForwardedProposalFiveVoters(t *testing.T) {
	n := newNetwork(t, 5, nil)
	n.elect(1)
	n.tick(heartbeatTick)
	durables := 0
	n.filter = func(m *raft.Message) bool {
		if m.Type == raft.MsgDurable {
			durables++
		}
		return true
	}
	if err := n.rn(2).Forward([]byte("fwd")); err != nil {
		t.Fatalf("Forward: %v", err)
	}
	n.stabilize()
	idx := n.status(1).LastIndex
	if durables != 0 {
		t.Fatalf("%d MsgDurable sent in a five-voter cluster", durables)
	}
	if c := n.status(1).Commit; c != idx {
		t.Fatalf("leader commit %d, want %d", c, idx)
	}
	if c := n.status(2).Commit; c != idx {
		t.Fatalf("forwarding node 2 commit %d, want %d without waiting for a heartbeat", c, idx)
	}
	if c := n.status(3).Commit; c >= idx {
		t.Fatalf("node 3 commit %d: nothing was sent to it for %d", c, idx)
	}
}

// A follower answered a read index gets the commit index it needs along
// with it, rather than at the next heartbeat.
func TestFollowerReadIndexBringsCommit(t *testing.T) {
	n := newNetwork(t, 3, nil)
	n.elect(1)
	n.tick(heartbeatTick)
	idx := n.propose(1, "x")
	n.stabilize()
	if c := n.status(2).Commit; c >= idx {
		t.Fatalf("node 2 commit %d before any read: want it to lag %d", c, idx)
	}
	if err := n.readIndex(2, "r"); err != nil {
		t.Fatalf("ReadIndex: %v", err)
	}
	n.stabilize()
	rs := n.node(2).readStates
	if len(rs) != 1 || rs[0].Index != idx {
		t.Fatalf("node 2 read states %s, want one at %d", fmtReads(rs), idx)
	}
	if c, a := n.status(2).Commit, n.node(2).appliedIndex; c != idx || a != idx {
		t.Fatalf("node 2 commit %d applied %d after its read, want %d", c, a, idx)
	}
}
