package raftnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-db/cairn/raft"
)

// kvSM is a test state machine: "k=v" entries set keys.
type kvSM struct {
	mu       sync.Mutex
	kv       map[string]string
	applied  uint64
	restores int
}

func newKV() *kvSM { return &kvSM{kv: map[string]string{}} }

func (s *kvSM) Apply(e raft.Entry) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied = e.Index
	if e.Type == raft.EntryNormal && len(e.Data) > 0 {
		k, v, _ := strings.Cut(string(e.Data), "=")
		s.kv[k] = v
		return len(s.kv)
	}
	return nil
}

func (s *kvSM) Snapshot(w io.Writer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.NewEncoder(w).Encode(s.kv)
}

// CaptureSnapshot makes the node write snapshots off its Raft goroutine.
func (s *kvSM) CaptureSnapshot() (func(io.Writer) error, error) {
	s.mu.Lock()
	kv := make(map[string]string, len(s.kv))
	for k, v := range s.kv {
		kv[k] = v
	}
	s.mu.Unlock()
	return func(w io.Writer) error { return json.NewEncoder(w).Encode(kv) }, nil
}

func (s *kvSM) Restore(r io.Reader) error {
	kv := map[string]string{}
	if err := json.NewDecoder(r).Decode(&kv); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kv = kv
	s.restores++
	return nil
}

func (s *kvSM) get(k string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.kv[k]
	return v, ok
}

type cluster struct {
	t        *testing.T
	net      *MemNetwork
	nodes    map[uint64]*Node
	sms      map[uint64]*kvSM
	storages map[uint64]*MemStorage
	cfg      func(id uint64) Config
}

func testConfig(id uint64) Config {
	return Config{
		Raft:            raft.Config{ID: id, ElectionTick: 10, HeartbeatTick: 1, PreVote: true, CheckQuorum: true},
		TickInterval:    5 * time.Millisecond,
		SnapshotEntries: 50,
		KeepEntries:     10,
	}
}

func newCluster(t *testing.T, n int) *cluster { return newClusterWith(t, n, testConfig) }

func newClusterWith(t *testing.T, n int, cfg func(id uint64) Config) *cluster {
	c := &cluster{t: t, net: NewMemNetwork(), nodes: map[uint64]*Node{}, sms: map[uint64]*kvSM{},
		storages: map[uint64]*MemStorage{}, cfg: cfg}
	var ids []uint64
	for i := 1; i <= n; i++ {
		ids = append(ids, uint64(i))
	}
	for _, id := range ids {
		c.storages[id] = NewMemStorage()
		c.start(id, ids)
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *cluster) start(id uint64, bootstrap []uint64) {
	sm := newKV()
	nd, err := Start(c.cfg(id), c.storages[id], c.net.Transport(id), sm, bootstrap)
	if err != nil {
		c.t.Fatalf("start node %d: %v", id, err)
	}
	c.net.Register(id, nd, c.storages[id])
	c.nodes[id], c.sms[id] = nd, sm
}

func (c *cluster) stop(id uint64) {
	c.net.Unregister(id)
	c.nodes[id].Stop()
	delete(c.nodes, id)
}

func (c *cluster) stopAll() {
	for id := range c.nodes {
		c.stop(id)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// leader waits until some node leads and returns it.
func (c *cluster) leader(ctx context.Context) *Node {
	for {
		for _, nd := range c.nodes {
			if l, err := nd.WaitLeader(ctx); err == nil {
				if ln, ok := c.nodes[l]; ok && ln.Status().State == raft.StateLeader {
					return ln
				}
			} else {
				c.t.Fatalf("no leader: %v", err)
			}
		}
		if ctx.Err() != nil {
			c.t.Fatal("no leader before deadline")
		}
		// The known leader is not (yet) in the cluster map or not yet
		// leading; wait for the next change on one node.
		for _, nd := range c.nodes {
			select {
			case <-nd.leaderChanged():
			case <-time.After(50 * time.Millisecond):
			}
			break
		}
	}
}

// put proposes through whichever node leads, retrying on leader changes.
func (c *cluster) put(ctx context.Context, k, v string) uint64 {
	for {
		ld := c.leader(ctx)
		idx, _, err := ld.Propose(ctx, []byte(k+"="+v))
		if err == nil {
			return idx
		}
		var nle *raft.NotLeaderError
		if errors.As(err, &nle) || errors.Is(err, ErrProposalLost) || errors.Is(err, ErrOutcomeUnknown) {
			if ctx.Err() != nil {
				c.t.Fatalf("put %s: %v", k, err)
			}
			continue
		}
		c.t.Fatalf("put %s: %v", k, err)
	}
}

// linearizableGet reads k through node id after a ReadIndex.
func (c *cluster) linearizableGet(ctx context.Context, id uint64, k string) string {
	for {
		_, err := c.nodes[id].ReadIndex(ctx)
		if err == nil {
			v, _ := c.sms[id].get(k)
			return v
		}
		if ctx.Err() != nil {
			for nid, nd := range c.nodes {
				st := nd.Status()
				c.t.Logf("node %d: %+v; state machine applied %d", nid, st, nd.applied.Load())
			}
			c.t.Fatalf("read %s at %d: %v", k, id, err)
		}
		if _, err := c.nodes[id].WaitLeader(ctx); err != nil {
			c.t.Fatalf("read %s at %d: %v", k, id, err)
		}
	}
}

func TestReplicateAndReadEverywhere(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.put(ctx, fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
		}()
	}
	wg.Wait()
	for id := range c.nodes {
		for i := range 40 {
			if got := c.linearizableGet(ctx, id, fmt.Sprintf("k%d", i)); got != fmt.Sprintf("v%d", i) {
				t.Fatalf("node %d: k%d=%q after acknowledged write", id, i, got)
			}
		}
	}
}

func TestLeaderCrashAndRestartCatchesUpBySnapshot(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	c.put(ctx, "a", "1")
	old := c.leader(ctx).ID()
	c.stop(old)
	// Enough writes to snapshot and compact past the stopped node's log.
	for i := range 120 {
		c.put(ctx, fmt.Sprintf("x%d", i), "y")
	}
	if nl := c.leader(ctx).ID(); nl == old {
		t.Fatalf("stopped node %d still leads", old)
	}
	c.start(old, nil)
	if got := c.linearizableGet(ctx, old, "x119"); got != "y" {
		t.Fatalf("restarted node %d: x119=%q", old, got)
	}
	if c.sms[old].restores == 0 {
		t.Fatalf("restarted node %d caught up without a snapshot; compaction did not happen", old)
	}
}

func TestMembershipAddAndRemove(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	c.put(ctx, "a", "1")
	ld := c.leader(ctx)
	c.storages[4] = NewMemStorage()
	c.start(4, nil)
	if _, err := ld.ProposeConfChange(ctx, raft.ConfChange{Type: raft.ConfChangeAddLearner, NodeID: 4}); err != nil {
		t.Fatalf("add learner: %v", err)
	}
	if _, err := ld.ProposeConfChange(ctx, raft.ConfChange{Type: raft.ConfChangeAddVoter, NodeID: 4}); err != nil {
		t.Fatalf("promote: %v", err)
	}
	if got := c.linearizableGet(ctx, 4, "a"); got != "1" {
		t.Fatalf("new node: a=%q", got)
	}
	victim := uint64(1)
	if victim == ld.ID() {
		victim = 2
	}
	if _, err := ld.ProposeConfChange(ctx, raft.ConfChange{Type: raft.ConfChangeRemove, NodeID: victim}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	c.stop(victim)
	c.put(ctx, "b", "2")
	st := c.leader(ctx).Status()
	if len(st.Config.Voters) != 3 {
		t.Fatalf("voters after add+remove: %v", st.Config.Voters)
	}
}

func TestTransferLeadership(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	c.put(ctx, "a", "1")
	ld := c.leader(ctx)
	target := uint64(1)
	if target == ld.ID() {
		target = 2
	}
	if err := ld.TransferLeadership(ctx, target); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if got := c.leader(ctx).ID(); got != target {
		t.Fatalf("leader %d after transfer to %d", got, target)
	}
	c.put(ctx, "b", "2")
}

func TestStorageFailureStopsNode(t *testing.T) {
	c := newCluster(t, 1)
	ctx := ctxT(t)
	c.put(ctx, "a", "1")
	diskFull := errors.New("no space left on device")
	c.storages[1].SetSaveHook(func() error { return diskFull })
	_, _, err := c.nodes[1].Propose(ctx, []byte("b=2"))
	if err == nil {
		t.Fatal("proposal succeeded on a failing disk")
	}
	<-c.nodes[1].Done()
	if !errors.Is(c.nodes[1].Err(), diskFull) {
		t.Fatalf("node error %v, want the disk error", c.nodes[1].Err())
	}
}

func TestProposeToFollowerNamesLeader(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	ld := c.leader(ctx)
	c.put(ctx, "a", "1")
	for id, nd := range c.nodes {
		if id == ld.ID() {
			continue
		}
		if _, err := nd.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
		_, _, err := nd.Propose(ctx, []byte("x=1"))
		var nle *raft.NotLeaderError
		if !errors.As(err, &nle) || nle.Leader != ld.ID() {
			t.Fatalf("follower %d: err %v, want NotLeaderError naming %d", id, err, ld.ID())
		}
	}
}

func TestSubmitOnFollowerIsForwarded(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	ld := c.leader(ctx)
	c.put(ctx, "a", "1")
	for id, nd := range c.nodes {
		if id == ld.ID() {
			continue
		}
		// A follower forwards only once it knows the leader.
		if _, err := nd.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
		if err := nd.Submit(ctx, []byte("fwd=yes")); err != nil {
			t.Fatalf("submit on follower %d: %v", id, err)
		}
		// The forwarded entry is applied everywhere; a linearizable read
		// on the leader (after the forward) must eventually see it.
		for c.linearizableGet(ctx, ld.ID(), "fwd") != "yes" {
			if ctx.Err() != nil {
				t.Fatal("forwarded proposal never applied")
			}
		}
		return
	}
}

// TestSnapshotDue checks the snapshot trigger: at least SnapshotEntries
// entries, at most SnapshotMaxEntries, and in between only once the
// entries applied since the last snapshot hold as many bytes as it had.
func TestSnapshotDue(t *testing.T) {
	cfg := Config{SnapshotEntries: 10, SnapshotMaxEntries: 100}
	cfg.setDefaults()
	n := &Node{cfg: cfg}
	n.snapIndex = 1000
	n.snapBytes.Store(10000)
	for _, tc := range []struct {
		idx     uint64
		bytes   int64
		snap    bool
		due     bool
		comment string
	}{
		{1009, 1 << 20, false, false, "fewer than SnapshotEntries, however large"},
		{1010, 9999, false, false, "enough entries, less than the last snapshot's size"},
		{1010, 10000, false, true, "enough entries holding the last snapshot's size"},
		{1099, 0, false, false, "just below SnapshotMaxEntries"},
		{1100, 0, false, true, "SnapshotMaxEntries, however small"},
		{1100, 1 << 20, true, false, "a snapshot is being written"},
	} {
		n.appliedBytes, n.snapping = tc.bytes, tc.snap
		if got := n.snapshotDue(tc.idx); got != tc.due {
			t.Errorf("%s: snapshotDue(%d) with %d bytes = %v, want %v", tc.comment, tc.idx, tc.bytes, got, tc.due)
		}
	}
	n.cfg.SnapshotEntries = -1
	n.appliedBytes, n.snapping = 1<<30, false
	if n.snapshotDue(1 << 40) {
		t.Error("snapshotDue with snapshots disabled = true")
	}
	// The defaults: a maximum of five times the minimum, never below it.
	for _, c := range []struct{ min, max, want int64 }{{0, 0, 50000}, {100, 0, 500}, {100, 50, 100}, {100, 300, 300}} {
		cfg := Config{SnapshotEntries: c.min, SnapshotMaxEntries: c.max}
		cfg.setDefaults()
		if cfg.SnapshotMaxEntries != c.want {
			t.Errorf("SnapshotEntries %d, SnapshotMaxEntries %d: default max %d, want %d", c.min, c.max, cfg.SnapshotMaxEntries, c.want)
		}
	}
}

// TestSnapshotIntervalGrowsWithState runs a node whose state is large and
// whose later entries are small: after the first snapshot the next waits
// for SnapshotMaxEntries, where a fixed interval would have rewritten the
// large state every SnapshotEntries.
func TestSnapshotIntervalGrowsWithState(t *testing.T) {
	c := newClusterWith(t, 1, func(id uint64) Config {
		cfg := testConfig(id)
		cfg.SnapshotEntries, cfg.SnapshotMaxEntries = 20, 200
		return cfg
	})
	ctx := ctxT(t)
	big := strings.Repeat("v", 2000)
	for i := 0; i < 20; i++ {
		c.put(ctx, fmt.Sprint("big", i), big)
	}
	st := c.storages[1]
	first := waitSnapshot(t, st, 1)
	for i := 0; i < 150; i++ {
		c.put(ctx, "small", fmt.Sprint(i))
	}
	// 150 small entries hold far less than 40 KB.
	if got := snapshotIndex(st); got != first {
		t.Fatalf("snapshot moved from %d to %d after 150 small entries; want it to wait for 200", first, got)
	}
	for i := 150; i < 250; i++ {
		c.put(ctx, "small", fmt.Sprint(i))
	}
	if got := waitSnapshot(t, st, first+1); got < first+200 {
		t.Fatalf("second snapshot at %d, want at least %d (first at %d)", got, first+200, first)
	}
}

func snapshotIndex(st *MemStorage) uint64 {
	snap, err := st.Snapshot()
	if err != nil {
		return 0
	}
	return snap.Meta.Index
}

// waitSnapshot waits until st holds a snapshot at or above index.
func waitSnapshot(t *testing.T, st *MemStorage, index uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got := snapshotIndex(st); got >= index {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot at or above %d within 10s (have %d)", index, snapshotIndex(st))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Reads interleaved with writes on every node, each right after its own
// write, which it must see, while the appliers of all three run.
func TestReadsRacingApplies(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				k, v := fmt.Sprintf("w%d", w), fmt.Sprintf("v%d", i)
				c.put(ctx, k, v)
				id := uint64(1 + (w+i)%3)
				if got := c.linearizableGet(ctx, id, k); got != v {
					t.Errorf("node %d: %s=%q right after writing %q", id, k, got, v)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// With no ticks and nothing else to wake the Raft loop, a read whose
// index is ahead of the applied index completes only because the applier
// wakes the loop after applying (Node.readsWaiting). A single voter
// answers a read index at once, often before its applier has caught up.
func TestReadWaitsForApplyWithoutTicks(t *testing.T) {
	clock := NewManualClock()
	c := newClusterWith(t, 1, func(id uint64) Config {
		cfg := testConfig(id)
		cfg.Clock = clock
		return cfg
	})
	nd := c.nodes[1]
	for nd.Leader() != 1 {
		clock.Tick()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 200 {
		if err := nd.Submit(ctx, []byte(fmt.Sprintf("k=v%d", i))); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		if _, err := nd.ReadIndex(ctx); err != nil {
			t.Fatalf("read %d (applied %d, status %+v): %v", i, nd.applied.Load(), nd.Status(), err)
		}
	}
}

// TestSubmitAsync checks the non-waiting submissions: SubmitAsync and
// TrySubmitAsync on a follower are forwarded and applied, handed hears
// nil, and a stopped node takes nothing.
func TestSubmitAsync(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t)
	ld := c.leader(ctx)
	c.put(ctx, "a", "1")
	var f *Node
	for id, nd := range c.nodes {
		if id != ld.ID() {
			f = nd
			break
		}
	}
	if _, err := f.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	handed := make(chan error, 2)
	if err := f.SubmitAsync(ctx, []byte("async=1"), func(err error) { handed <- err }); err != nil {
		t.Fatalf("SubmitAsync: %v", err)
	}
	if !f.TrySubmitAsync([]byte("try=1"), func(err error) { handed <- err }) {
		t.Fatal("TrySubmitAsync on a running node with an empty queue took nothing")
	}
	for range 2 {
		if err := <-handed; err != nil {
			t.Fatalf("handed: %v", err)
		}
	}
	for c.linearizableGet(ctx, ld.ID(), "async") != "1" || c.linearizableGet(ctx, ld.ID(), "try") != "1" {
		if ctx.Err() != nil {
			t.Fatal("submitted entries never applied")
		}
	}
	f.Stop()
	if f.TrySubmitAsync([]byte("late=1"), func(error) {}) {
		t.Fatal("TrySubmitAsync on a stopped node took the proposal")
	}
}
