package raftnode

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cairn-db/cairn/raft"
)

// The scenarios of node_test.go with the synchronous driver
// (SyncStorageWrites), which must keep working.
func TestSyncWritesScenarios(t *testing.T) {
	syncCfg := func(id uint64) Config {
		c := testConfig(id)
		c.SyncStorageWrites = true
		return c
	}
	t.Run("replicate", func(t *testing.T) {
		c := newClusterWith(t, 3, syncCfg)
		ctx := ctxT(t)
		for i := range 20 {
			c.put(ctx, fmt.Sprintf("k%d", i), "v")
		}
		for id := range c.nodes {
			if got := c.linearizableGet(ctx, id, "k19"); got != "v" {
				t.Fatalf("node %d: k19=%q", id, got)
			}
		}
	})
	t.Run("catch up by snapshot", func(t *testing.T) {
		c := newClusterWith(t, 3, syncCfg)
		ctx := ctxT(t)
		c.put(ctx, "a", "1")
		old := c.leader(ctx).ID()
		c.stop(old)
		for i := range 120 {
			c.put(ctx, fmt.Sprintf("x%d", i), "y")
		}
		c.start(old, nil)
		if got := c.linearizableGet(ctx, old, "x119"); got != "y" {
			t.Fatalf("restarted node %d: x119=%q", old, got)
		}
	})
}

// blockingSM is a kvSM whose Apply can be held.
type blockingSM struct {
	*kvSM
	mu   sync.Mutex
	gate chan struct{} // non-nil: Apply waits for it to close
}

func (s *blockingSM) Apply(e raft.Entry) any {
	s.mu.Lock()
	g := s.gate
	s.mu.Unlock()
	if g != nil {
		<-g
	}
	return s.kvSM.Apply(e)
}

// TestSlowApplyDoesNotStallRaft: while the leader's state machine is
// stuck in Apply for several election timeouts, the leader keeps its
// leadership (heartbeats go on) and keeps committing: followers apply new
// entries. Then the leader catches up and answers its proposal.
func TestSlowApplyDoesNotStallRaft(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	c.put(ctx, "a", "1")
	ld := c.leader(ctx)
	id, term := ld.ID(), ld.Term()
	// Hold the leader's applies: swap in a wrapper while its applier is
	// idle (the proposal below orders the swap before the next Apply).
	bsm := &blockingSM{kvSM: c.sms[id], gate: make(chan struct{})}
	ld.sm = bsm
	done := make(chan error, 1)
	go func() {
		_, _, err := ld.Propose(ctx, []byte("b=2"))
		done <- err
	}()
	// 30 ticks of 5ms: three election timeouts.
	deadline := time.Now().Add(150 * time.Millisecond)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("proposal returned while Apply is held: %v", err)
		default:
		}
		time.Sleep(10 * time.Millisecond)
	}
	for fid := range c.nodes {
		if fid == id {
			continue
		}
		if v, _ := c.sms[fid].get("b"); v != "2" {
			t.Errorf("follower %d has not applied b=2 while the leader's Apply is held", fid)
		}
	}
	if got := ld.Term(); got != term || ld.Leader() != id {
		t.Fatalf("leadership changed while Apply was held: term %d->%d, leader %d", term, got, ld.Leader())
	}
	close(bsm.gate)
	if err := <-done; err != nil {
		t.Fatalf("proposal: %v", err)
	}
}

// saveRecorder records the Saves a node makes.
type saveRecorder struct {
	*MemStorage
	mu          sync.Mutex
	commitOnly  int // Saves of a hard state alone that need no fsync
	entryWrites int
}

func (s *saveRecorder) Save(hs raft.HardState, ents []raft.Entry, sync bool) error {
	s.mu.Lock()
	if len(ents) == 0 && !sync && !hs.IsEmpty() {
		s.commitOnly++
	}
	if len(ents) > 0 {
		s.entryWrites++
	}
	s.mu.Unlock()
	return s.MemStorage.Save(hs, ents, sync)
}

// A Ready that only moves the commit index costs no write of its own:
// the next write carries it, so one client's put makes one write per
// member, not two. The commit index it carries must still advance.
func TestCommitIndexRidesOnTheNextWrite(t *testing.T) {
	net := NewMemNetwork()
	ids := []uint64{1, 2, 3}
	recs := map[uint64]*saveRecorder{}
	nodes := map[uint64]*Node{}
	for _, id := range ids {
		recs[id] = &saveRecorder{MemStorage: NewMemStorage()}
		nd, err := Start(testConfig(id), recs[id], net.Transport(id), newKV(), ids)
		if err != nil {
			t.Fatalf("start %d: %v", id, err)
		}
		net.Register(id, nd, recs[id])
		nodes[id] = nd
		t.Cleanup(nd.Stop)
	}
	c := &cluster{t: t, nodes: nodes}
	ctx := ctxT(t)
	var last uint64
	for i := 0; i < 30; i++ {
		last = c.put(ctx, "k", strconv.Itoa(i)) // one at a time: every commit is its own round
	}
	leader := c.leader(ctx).ID()
	for _, id := range ids {
		r := recs[id]
		r.mu.Lock()
		commitOnly, writes := r.commitOnly, r.entryWrites
		r.mu.Unlock()
		if commitOnly != 0 {
			t.Errorf("node %d: %d commit-only writes (and %d entry writes), want none", id, commitOnly, writes)
		}
		if id != leader {
			continue // a follower may lag behind the two that committed
		}
		hs, _, err := r.InitialState()
		if err != nil {
			t.Fatal(err)
		}
		// The leader's write of each put carries the commit of the one
		// before.
		if hs.Commit+1 < last-1 {
			t.Errorf("node %d: stored commit %d, want at least %d (the last put is %d)", id, hs.Commit, last-2, last)
		}
	}
}

// TestApplyBacklog: while the leader's state machine is held, the
// entries it commits queue for the applier and ApplyBacklog counts them;
// once Apply is released the backlog drains to zero.
func TestApplyBacklog(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	c.put(ctx, "a", "1")
	ld := c.leader(ctx)
	if got := ld.ApplyBacklog(); got != 0 {
		t.Fatalf("backlog %d on an idle leader, want 0", got)
	}
	bsm := &blockingSM{kvSM: c.sms[ld.ID()], gate: make(chan struct{})}
	ld.sm = bsm // swapped while the applier is idle, as in TestSlowApplyDoesNotStallRaft
	const n = 50
	for i := range n {
		if err := ld.Submit(ctx, fmt.Appendf(nil, "k%d=v", i)); err != nil {
			t.Fatal(err)
		}
	}
	// The first entry is inside the held Apply, so at least n-1 wait.
	waitFor(t, "backlog to reach n-1", func() bool { return ld.ApplyBacklog() >= n-1 })
	if got := ld.ApplyBacklog(); got > n {
		t.Fatalf("backlog %d with %d entries held", got, n)
	}
	close(bsm.gate)
	waitFor(t, "backlog to drain", func() bool { return ld.ApplyBacklog() == 0 })
	if v, _ := c.sms[ld.ID()].get(fmt.Sprintf("k%d", n-1)); v != "v" {
		t.Fatalf("last held entry not applied after the backlog drained: %q", v)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s. For
// conditions no event announces, such as a counter reaching a value.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
