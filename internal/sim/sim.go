package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/cairn-db/cairn/raft"
)

// Options configures one simulated run. The zero value of a fault rate
// disables that fault; Default returns every fault enabled.
type Options struct {
	Seed uint64
	// Nodes is the initial cluster size; 0 picks 3 or 5 from the seed.
	Nodes int
	// Ticks is the length of the faulty phase in ticks of the logical
	// clock (each node ticks once per tick).
	Ticks int

	// Network faults, per message.
	LossRate float64
	DupRate  float64
	// MaxDelay is the largest message delay in sub-tick steps; delays are
	// uniform in [1, MaxDelay], which reorders messages.
	MaxDelay int

	// Per-tick probabilities of fault events.
	PartitionRate  float64
	CrashRate      float64
	MembershipRate float64
	// TransferRate is the per-tick probability of a leadership transfer.
	TransferRate float64
	// TornRate is the probability that a crash happens in the middle of
	// persisting a Ready (losing part of it) rather than between Readies.
	TornRate float64

	// Client load per tick.
	ProposeRate float64
	ReadRate    float64

	// SnapshotEvery makes nodes snapshot and compact after this many
	// applied entries; 0 disables snapshots.
	SnapshotEvery uint64

	PreVote     bool
	CheckQuorum bool

	// LogicalDisk replaces the real WAL on a crash-simulating filesystem
	// with a faster logical model of a disk.
	LogicalDisk bool

	// AsyncWrites runs the nodes with raft.Config.AsyncStorageWrites: a
	// Ready's write is queued when the Ready is taken and completes later
	// (in the same step or several steps on), while the node goes on
	// stepping messages; crashes lose the queued writes or tear the one
	// being completed.
	AsyncWrites bool
	// ElectionTickAdvance sets raft.Config.ElectionTickAdvance: started
	// and restarted nodes campaign (pre-vote) within one election timeout.
	ElectionTickAdvance bool
	// BroadcastCommit sets raft.Config.BroadcastCommit. Without it
	// followers learn commit indexes lazily, and a follower that forwarded
	// a proposal may commit it on its own (MsgDurable).
	BroadcastCommit bool

	// Log, if set, receives a line per event (for replaying a seed).
	Log io.Writer
}

// Default returns options with every fault enabled.
func Default(seed uint64) Options {
	return Options{
		Seed:           seed,
		Ticks:          600,
		LossRate:       0.05,
		DupRate:        0.02,
		MaxDelay:       15,
		PartitionRate:  0.02,
		CrashRate:      0.01,
		MembershipRate: 0.01,
		TransferRate:   0.01,
		TornRate:       0.5,
		ProposeRate:    0.6,
		ReadRate:       0.3,
		SnapshotEvery:  20,
		PreVote:        true,
		CheckQuorum:    true,
		// Three seeds in four run the asynchronous write path (the
		// driver's default); the rest keep the synchronous one covered.
		AsyncWrites: seed%4 != 0,
		// Every other seed: restarted nodes campaign early.
		ElectionTickAdvance: seed%2 == 1,
		// One seed in three: every commit index goes to every follower.
		BroadcastCommit: seed%3 == 0,
	}
}

const (
	stepsPerTick  = 10
	electionTick  = 10
	heartbeatTick = 2
	// livenessTicks bounds how long a healed cluster may take to elect a
	// leader and commit a proposal.
	livenessTicks = 200
)

// Result summarizes a run.
type Result struct {
	Seed       uint64
	Nodes      int
	TraceHash  uint64
	Committed  uint64
	Acked      int
	Reads      int
	Elections  int
	Crashes    int
	TornTails  int // restarts whose WAL recovery cut off a torn record
	Transfers  int
	Snapshots  int
	ConfChange int
}

// Violation is a safety or liveness failure found by the simulator.
type Violation struct {
	Seed uint64
	Step int
	What string
}

func (v *Violation) Error() string {
	return fmt.Sprintf("sim: seed %d: step %d: %s", v.Seed, v.Step, v.What)
}

type message struct {
	at  int // delivery step
	seq uint64
	m   raft.Message
	// snapStatus, if set, makes this a local report to m.From of whether
	// its snapshot to m.To arrived, as a real transport would give.
	snapStatus *bool
}

type simNode struct {
	id      uint64
	rn      *raft.RawNode
	storage disk
	sm      *stateMachine
	up      bool
	// removed nodes are no longer members; they are stopped for good.
	removed bool
	// isLeader and memCommit let the oracle learn in which term each
	// entry was committed; lastCommit is the commit index on disk.
	isLeader   bool
	memCommit  uint64
	lastCommit uint64
	// pending holds Readies whose writes are queued (AsyncWrites), oldest
	// first. slowDisk makes them wait longer (many steps), which widens
	// the windows in which a leader's or candidate's own state is not yet
	// durable.
	pending  []raft.Ready
	slowDisk bool
}

type proposal struct {
	node, index, term uint64
	key, value        string
}

type pendingRead struct {
	node     uint64
	minIndex uint64 // highest index acknowledged before the read began
	index    uint64 // read index, once known
	ready    bool
	key      string
}

// Sim is one simulated cluster.
type Sim struct {
	opts  Options
	rng   *rand.Rand
	step  int
	nodes map[uint64]*simNode
	ids   []uint64 // every node ever created, sorted
	next  uint64   // next node ID to allocate
	// network
	queue   []message
	seq     uint64
	blocked map[[2]uint64]bool
	// oracle state
	leaders    map[uint64]uint64 // term -> leader
	committed  map[uint64]entryID
	commitTerm map[uint64]uint64 // index -> term in which it was committed
	maxCommit  uint64
	stateHash  map[uint64]uint64 // applied index -> state hash
	proposals  []proposal
	forwarded  []proposal // index and term unknown: acknowledged when their node applies them
	reads      map[string]*pendingRead
	readSeq    int
	maxAcked   uint64
	ackedVals  map[string][]ackedWrite
	opSeq      int
	trace      uint64
	result     Result
	pendingCC  bool
	violations []*Violation
}

type entryID struct {
	term uint64
	hash uint64
}

type ackedWrite struct {
	index uint64
	value string
}

// Run simulates one seed and returns the result, or the first violation.
func Run(opts Options) (Result, error) {
	s := newSim(opts)
	err := s.run()
	s.result.TraceHash = s.trace
	return s.result, err
}

func newSim(opts Options) *Sim {
	s := &Sim{
		opts:       opts,
		rng:        rand.New(rand.NewPCG(opts.Seed, 0x5eed)),
		nodes:      map[uint64]*simNode{},
		blocked:    map[[2]uint64]bool{},
		leaders:    map[uint64]uint64{},
		committed:  map[uint64]entryID{},
		commitTerm: map[uint64]uint64{},
		stateHash:  map[uint64]uint64{},
		reads:      map[string]*pendingRead{},
		ackedVals:  map[string][]ackedWrite{},
		trace:      14695981039346656037,
	}
	if s.opts.Nodes == 0 {
		s.opts.Nodes = 3 + 2*s.rng.IntN(2)
	}
	if s.opts.MaxDelay <= 0 {
		s.opts.MaxDelay = 1
	}
	s.result.Seed = opts.Seed
	s.result.Nodes = s.opts.Nodes
	return s
}

func (s *Sim) logf(format string, args ...any) {
	line := fmt.Sprintf("%6d ", s.step) + fmt.Sprintf(format, args...)
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], s.trace)
	h.Write(b[:])
	h.Write([]byte(line))
	s.trace = h.Sum64()
	if s.opts.Log != nil {
		fmt.Fprintln(s.opts.Log, line)
	}
}

func (s *Sim) fail(format string, args ...any) {
	v := &Violation{Seed: s.opts.Seed, Step: s.step, What: fmt.Sprintf(format, args...)}
	s.logf("VIOLATION %s", v.What)
	s.violations = append(s.violations, v)
}

func (s *Sim) newDisk() (disk, error) {
	if s.opts.LogicalDisk {
		return newMemDisk(), nil
	}
	return newWALDisk()
}

func (s *Sim) newNode(id uint64, storage disk) (*simNode, error) {
	n := &simNode{id: id, storage: storage, sm: newStateMachine(), up: true}
	snap, err := storage.Snapshot()
	if err != nil {
		return nil, err
	}
	if !snap.IsEmpty() {
		data, err := storage.snapshotData(snap.Meta.Index)
		if err != nil {
			return nil, fmt.Errorf("node %d: reading snapshot %d: %w", id, snap.Meta.Index, err)
		}
		if err := n.sm.restore(data); err != nil {
			return nil, fmt.Errorf("node %d: restoring snapshot: %w", id, err)
		}
	}
	cfg := &raft.Config{
		ID:            id,
		ElectionTick:  electionTick,
		HeartbeatTick: heartbeatTick,
		Storage:       storage,
		Applied:       snap.Meta.Index,
		// Small messages and windows make flow control and batching
		// paths run (FoundationDB's BUGGIFY idea).
		MaxSizePerMsg:       64,
		MaxInflightMsgs:     4,
		MaxInflightBytes:    256,
		PreVote:             s.opts.PreVote,
		CheckQuorum:         s.opts.CheckQuorum,
		AsyncStorageWrites:  s.opts.AsyncWrites,
		ElectionTickAdvance: s.opts.ElectionTickAdvance,
		BroadcastCommit:     s.opts.BroadcastCommit,
		Rand:                rand.New(rand.NewPCG(s.opts.Seed, id)),
		Logger:              slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	rn, err := raft.NewRawNode(cfg)
	if err != nil {
		return nil, err
	}
	n.rn = rn
	return n, nil
}

func (s *Sim) run() error {
	initial := make([]uint64, s.opts.Nodes)
	for i := range initial {
		initial[i] = uint64(i + 1)
	}
	s.next = uint64(s.opts.Nodes + 1)
	for _, id := range initial {
		d, err := s.newDisk()
		if err != nil {
			return err
		}
		n, err := s.newNode(id, d)
		if err != nil {
			return err
		}
		if err := n.rn.Bootstrap(initial); err != nil {
			return err
		}
		s.nodes[id] = n
		s.ids = append(s.ids, id)
	}
	s.logf("start seed=%d nodes=%d", s.opts.Seed, s.opts.Nodes)

	total := s.opts.Ticks * stepsPerTick
	for s.step = 0; s.step < total; s.step++ {
		s.stepOnce(true)
		if len(s.violations) > 0 {
			return s.violations[0]
		}
	}
	return s.checkLiveness()
}

// stepOnce advances the simulation by one sub-tick step.
func (s *Sim) stepOnce(faults bool) {
	// Each node ticks once per stepsPerTick, at its own phase.
	for _, id := range s.ids {
		n := s.nodes[id]
		if n.up && (s.step+int(id))%stepsPerTick == 0 {
			n.rn.Tick()
			s.handleReady(n)
		}
	}
	s.deliver()
	if s.opts.AsyncWrites {
		// Writes in progress complete at random times: some before the
		// next message, some many steps later.
		for _, id := range s.ids {
			n := s.nodes[id]
			if !n.up {
				continue
			}
			if s.rng.IntN(200) == 0 {
				n.slowDisk = !n.slowDisk
				s.logf("node %d disk slow=%v", n.id, n.slowDisk)
			}
			odds := 3
			if n.slowDisk {
				odds = 25
			}
			if len(n.pending) > 0 && s.rng.IntN(odds) == 0 {
				s.completeWrites(n, 1+s.rng.IntN(len(n.pending)))
			}
		}
	}
	if s.step%stepsPerTick == 0 {
		if faults {
			s.injectFaults()
		}
		s.clientLoad()
	}
	s.checkSafety()
}

func (s *Sim) deliver() {
	var due []message
	rest := s.queue[:0]
	for _, m := range s.queue {
		if m.at <= s.step {
			due = append(due, m)
		} else {
			rest = append(rest, m)
		}
	}
	s.queue = rest
	slices.SortFunc(due, func(a, b message) int {
		if a.at != b.at {
			return a.at - b.at
		}
		return int(a.seq) - int(b.seq)
	})
	for _, dm := range due {
		if dm.snapStatus != nil {
			if n := s.nodes[dm.m.From]; n != nil && n.up {
				s.logf("report snapshot %d->%d ok=%v", dm.m.From, dm.m.To, *dm.snapStatus)
				n.rn.ReportSnapshot(dm.m.To, *dm.snapStatus)
				s.handleReady(n)
			}
			continue
		}
		n := s.nodes[dm.m.To]
		if n == nil || !n.up {
			continue
		}
		s.logf("deliver %s", dm.m)
		if err := n.rn.Step(dm.m); err != nil {
			s.logf("step error node %d: %v", n.id, err)
		}
		s.handleReady(n)
		if dm.m.Type == raft.MsgSnap {
			s.reportSnap(dm.m, true)
		}
	}
}

func (s *Sim) send(msgs []raft.Message) {
	for _, m := range msgs {
		if s.blocked[[2]uint64{m.From, m.To}] {
			s.logf("blocked %s", m)
			s.reportSnap(m, false)
			continue
		}
		if s.rng.Float64() < s.opts.LossRate {
			s.logf("lost %s", m)
			s.reportSnap(m, false)
			continue
		}
		if m.Type == raft.MsgSnap && m.Snapshot != nil && len(m.Snapshot.Data) == 0 {
			// A transport streams the bytes from the sender's snapshot
			// file; here they ride in the message.
			src := s.nodes[m.From]
			data, err := src.storage.snapshotData(m.Snapshot.Meta.Index)
			if err != nil {
				s.fail("node %d: reading snapshot %d to send: %v", m.From, m.Snapshot.Meta.Index, err)
				continue
			}
			snap := *m.Snapshot
			snap.Data = data
			m.Snapshot = &snap
		}
		copies := 1
		if s.rng.Float64() < s.opts.DupRate {
			copies = 2
		}
		for range copies {
			s.seq++
			s.queue = append(s.queue, message{at: s.step + 1 + s.rng.IntN(s.opts.MaxDelay), seq: s.seq, m: m})
		}
	}
}

// reportSnap queues the transport's report on a snapshot message.
func (s *Sim) reportSnap(m raft.Message, ok bool) {
	if m.Type != raft.MsgSnap {
		return
	}
	s.seq++
	s.queue = append(s.queue, message{at: s.step + 1, seq: s.seq, m: m, snapStatus: &ok})
}

// handleReady drains n's Ready batches, following the contract, and may
// crash n in the middle of persisting one.
func (s *Sim) handleReady(n *simNode) {
	for n.up && n.rn.HasReady() {
		rd := n.rn.Ready()
		if rd.SoftState != nil {
			s.logf("node %d soft %s lead=%d", n.id, rd.SoftState.State, rd.SoftState.Lead)
			n.isLeader = rd.SoftState.State == raft.StateLeader
			if n.isLeader {
				s.result.Elections++
				s.onLeader(n)
			}
		}
		if !rd.HardState.IsEmpty() {
			s.onHardState(n, rd.HardState)
		}
		// Messages that do not depend on durability go out first, in
		// parallel with the (simulated) disk write.
		s.send(rd.Messages)
		if s.opts.AsyncWrites {
			s.takeAsync(n, rd)
			if !n.up {
				return
			}
			continue
		}

		if s.opts.CrashRate > 0 && s.rng.Float64() < s.opts.CrashRate*s.opts.TornRate/4 && rd.MustSync {
			s.crashMidPersist(n, rd)
			return
		}
		if err := n.storage.persist(rd); err != nil {
			s.fail("node %d: persist: %v", n.id, err)
			return
		}
		n.lastCommit = max(n.lastCommit, rd.HardState.Commit)
		if rd.Snapshot != nil {
			if err := n.sm.restore(rd.Snapshot.Data); err != nil {
				s.fail("node %d: restore snapshot: %v", n.id, err)
			}
			s.logf("node %d installed snapshot %d/%d", n.id, rd.Snapshot.Meta.Index, rd.Snapshot.Meta.Term)
			s.checkStateHash(n)
		}
		s.send(rd.PersistedMessages)
		s.apply(n, rd.CommittedEntries)
		for _, rs := range rd.ReadStates {
			s.onReadState(n, rs)
		}
		n.rn.Advance(rd)
		if n.removed {
			s.logf("node %d removed; stopping it", n.id)
			n.up = false
			n.rn = nil
			n.sm = nil
			return
		}
		s.maybeSnapshot(n)
		s.serveReads(n)
	}
}

// takeAsync handles a Ready with asynchronous writes: its write is
// queued (and may complete at once), the committed entries, all durable
// here, are applied, and the Ready is advanced.
func (s *Sim) takeAsync(n *simNode, rd raft.Ready) {
	if len(rd.Entries) > 0 || rd.Snapshot != nil || !rd.HardState.IsEmpty() || len(rd.PersistedMessages) > 0 {
		n.pending = append(n.pending, rd)
	}
	s.apply(n, rd.CommittedEntries)
	for _, rs := range rd.ReadStates {
		s.onReadState(n, rs)
	}
	n.rn.Advance(rd)
	if n.removed {
		s.logf("node %d removed; stopping it", n.id)
		n.up = false
		n.rn = nil
		n.sm = nil
		n.pending = nil
		return
	}
	s.maybeSnapshot(n)
	s.serveReads(n)
	if !n.slowDisk && s.rng.IntN(4) == 0 {
		// Sometimes the disk is fast: the write completes before the node
		// sees anything else.
		s.completeWrites(n, len(n.pending))
	}
}

// completeWrites makes the oldest k queued writes of n durable, in order,
// sends the messages that waited for them and acknowledges them to the
// core. The node may crash in the middle of one, losing the rest.
func (s *Sim) completeWrites(n *simNode, k int) {
	for range k {
		if !n.up || len(n.pending) == 0 {
			return
		}
		rd := n.pending[0]
		n.pending = n.pending[1:]
		if s.opts.CrashRate > 0 && rd.MustSync && s.rng.Float64() < s.opts.CrashRate*s.opts.TornRate/4 {
			s.logf("node %d crashes with %d writes queued", n.id, len(n.pending))
			s.crashMidPersist(n, rd)
			return
		}
		if s.opts.CrashRate > 0 && s.rng.Float64() < s.opts.CrashRate/4 {
			// A power blip before this write started: it and every later
			// queued write are lost; the node is back at once, before its
			// peers have moved on.
			s.logf("node %d crashes before a write, %d more queued; restarting", n.id, len(n.pending))
			s.crash(n)
			if s.rng.IntN(2) == 0 {
				s.restart(n)
			}
			return
		}
		if err := n.storage.persist(rd); err != nil {
			s.fail("node %d: persist: %v", n.id, err)
			return
		}
		n.lastCommit = max(n.lastCommit, rd.HardState.Commit)
		if rd.Snapshot != nil {
			if err := n.sm.restore(rd.Snapshot.Data); err != nil {
				s.fail("node %d: restore snapshot: %v", n.id, err)
			}
			s.logf("node %d installed snapshot %d/%d", n.id, rd.Snapshot.Meta.Index, rd.Snapshot.Meta.Term)
			s.checkStateHash(n)
		}
		s.logf("node %d wrote %d entries, hs %+v; %d queued", n.id, len(rd.Entries), rd.HardState, len(n.pending))
		s.send(rd.PersistedMessages)
		n.rn.AckWrite(rd.Ack)
	}
	s.handleReady(n)
}

// crashMidPersist models a crash while the Ready's write was not yet
// synced: the disk keeps what a real one might (a torn prefix), the rest is
// lost.
func (s *Sim) crashMidPersist(n *simNode, rd raft.Ready) {
	d, err := n.storage.crashDuring(rd, s.rng)
	if err != nil {
		s.fail("node %d: recovering storage after a crash mid-write: %v", n.id, err)
		return
	}
	s.logf("node %d crashed mid-persist of %d entries (torn %d bytes)", n.id, len(rd.Entries), d.tornBytes())
	if d.tornBytes() > 0 {
		s.result.TornTails++
	}
	s.down(n)
	s.setDisk(n, d)
}

// setDisk installs the storage a crashed node restarts from. What the node
// believed committed before the crash is forgotten: only the durable
// commit index counts now (an unsynced commit index, or a snapshot whose
// install was cut short, is gone).
func (s *Sim) setDisk(n *simNode, d disk) {
	n.storage = d
	hs, _, _ := d.InitialState()
	n.lastCommit = hs.Commit
	n.memCommit = hs.Commit
	n.isLeader = false
	n.pending = nil
}

// crash models a power loss between Readies.
func (s *Sim) crash(n *simNode) {
	d, err := n.storage.crash(s.rng)
	if err != nil {
		s.fail("node %d: recovering storage after a crash: %v", n.id, err)
		return
	}
	s.logf("node %d crashed", n.id)
	s.down(n)
	s.setDisk(n, d)
}

func (s *Sim) down(n *simNode) {
	n.up = false
	n.rn = nil
	n.sm = nil
	n.pending = nil
	s.result.Crashes++
	for ctx, r := range s.reads {
		if r.node == n.id {
			delete(s.reads, ctx)
		}
	}
	s.proposals = slices.DeleteFunc(s.proposals, func(p proposal) bool { return p.node == n.id })
}

func (s *Sim) restart(n *simNode) {
	nn, err := s.newNode(n.id, n.storage)
	if err != nil {
		s.fail("node %d: restart: %v", n.id, err)
		return
	}
	*n = *nn
	s.logf("node %d restarted", n.id)
	s.checkStateHash(n)
	s.handleReady(n)
}

func (s *Sim) apply(n *simNode, ents []raft.Entry) {
	for _, e := range ents {
		if e.Index != n.sm.applied+1 {
			s.fail("node %d applied index %d after %d: gap or repeat", n.id, e.Index, n.sm.applied)
			return
		}
		n.sm.apply(e)
		s.recordCommitted(n, e)
		s.checkStateHash(n)
		if e.Type == raft.EntryConfChange {
			s.onConfChangeApplied(n, e)
		}
		for i, p := range s.forwarded {
			if p.node == n.id && string(e.Data) == p.key+"="+p.value {
				s.ack(p, e.Index)
				s.forwarded = slices.Delete(s.forwarded, i, i+1)
				break
			}
		}
		for i := 0; i < len(s.proposals); i++ {
			p := s.proposals[i]
			if p.node != n.id || p.index != e.Index {
				continue
			}
			if p.term == e.Term {
				s.ack(p, e.Index)
			} else {
				s.logf("proposal %s=%s at %d/%d lost to term %d", p.key, p.value, p.index, p.term, e.Term)
			}
			s.proposals = slices.Delete(s.proposals, i, i+1)
			i--
		}
	}
}

func (s *Sim) maybeSnapshot(n *simNode) {
	every := s.opts.SnapshotEvery
	if every == 0 || !n.up {
		return
	}
	for _, rd := range n.pending {
		if rd.Snapshot != nil {
			// The core's membership is the incoming snapshot's already;
			// the state machine is restored only when it is durable.
			return
		}
	}
	snap, _ := n.storage.Snapshot()
	applied := n.sm.applied
	if applied < snap.Meta.Index+every {
		return
	}
	last, _ := n.storage.LastIndex()
	if applied > last {
		return
	}
	if err := n.storage.snapshot(applied, n.rn.ConfState(), n.sm.snapshot()); err != nil {
		s.fail("node %d: snapshot at %d: %v", n.id, applied, err)
		return
	}
	s.result.Snapshots++
	s.logf("node %d snapshot at %d", n.id, applied)
}

// injectFaults draws this tick's fault events.
func (s *Sim) injectFaults() {
	r := s.rng
	if r.Float64() < s.opts.PartitionRate {
		s.partition()
	}
	if r.Float64() < s.opts.CrashRate {
		// Crash a random live node, or restart a dead one.
		var up, down []*simNode
		for _, id := range s.ids {
			n := s.nodes[id]
			if n.removed {
				continue
			}
			if n.up {
				up = append(up, n)
			} else {
				down = append(down, n)
			}
		}
		if len(down) > 0 && (len(up) == 0 || r.IntN(2) == 0) {
			s.restart(down[r.IntN(len(down))])
		} else if len(up) > 0 {
			s.crash(up[r.IntN(len(up))])
		}
	}
	if r.Float64() < s.opts.MembershipRate {
		s.changeMembership()
	}
	if r.Float64() < s.opts.TransferRate {
		s.transferLeadership()
	}
}

func (s *Sim) partition() {
	r := s.rng
	clear(s.blocked)
	members := s.liveIDs()
	switch r.IntN(5) {
	case 0:
		s.logf("heal")
	case 1: // isolate the leader
		if l := s.currentLeader(); l != 0 {
			for _, id := range s.ids {
				if id != l {
					s.blocked[[2]uint64{l, id}] = true
					s.blocked[[2]uint64{id, l}] = true
				}
			}
			s.logf("isolate leader %d", l)
		}
	case 2: // split into two sides
		side := map[uint64]bool{}
		for _, id := range members {
			side[id] = r.IntN(2) == 0
		}
		for _, a := range s.ids {
			for _, b := range s.ids {
				if side[a] != side[b] {
					s.blocked[[2]uint64{a, b}] = true
				}
			}
		}
		s.logf("split %v", side)
	case 3: // one-way loss on a few links
		for range 1 + r.IntN(3) {
			a, b := s.ids[r.IntN(len(s.ids))], s.ids[r.IntN(len(s.ids))]
			if a != b {
				s.blocked[[2]uint64{a, b}] = true
				s.logf("block %d->%d", a, b)
			}
		}
	case 4: // bridge: two sides that only one node can reach
		if len(members) >= 3 {
			bridge := members[r.IntN(len(members))]
			side := map[uint64]bool{}
			for _, id := range members {
				side[id] = r.IntN(2) == 0
			}
			for _, a := range s.ids {
				for _, b := range s.ids {
					if a != bridge && b != bridge && side[a] != side[b] {
						s.blocked[[2]uint64{a, b}] = true
					}
				}
			}
			s.logf("bridge via %d %v", bridge, side)
		}
	}
}

func (s *Sim) liveIDs() []uint64 {
	var ids []uint64
	for _, id := range s.ids {
		if n := s.nodes[id]; n.up && !n.removed {
			ids = append(ids, id)
		}
	}
	return ids
}

func (s *Sim) currentLeader() uint64 {
	var best, bestTerm uint64
	for _, id := range s.ids {
		n := s.nodes[id]
		if !n.up {
			continue
		}
		st := n.rn.Status()
		if st.State == raft.StateLeader && st.Term >= bestTerm {
			best, bestTerm = id, st.Term
		}
	}
	return best
}

// changeMembership proposes adding a new node (as learner, then voter) or
// removing a voter, through the current leader.
func (s *Sim) changeMembership() {
	l := s.currentLeader()
	if l == 0 {
		return
	}
	ln := s.nodes[l]
	cs := ln.rn.ConfState()
	var cc raft.ConfChange
	switch {
	case len(cs.Learners) > 0:
		cc = raft.ConfChange{Type: raft.ConfChangeAddVoter, NodeID: cs.Learners[0]}
	case len(cs.Voters) > 3 && s.rng.IntN(2) == 0:
		cc = raft.ConfChange{Type: raft.ConfChangeRemove, NodeID: cs.Voters[s.rng.IntN(len(cs.Voters))]}
	case len(cs.Voters) < 7:
		id := s.next
		s.next++
		d, err := s.newDisk()
		if err != nil {
			s.fail("new node %d: %v", id, err)
			return
		}
		n, err := s.newNode(id, d)
		if err != nil {
			s.fail("new node %d: %v", id, err)
			return
		}
		s.nodes[id] = n
		s.ids = append(s.ids, id)
		cc = raft.ConfChange{Type: raft.ConfChangeAddLearner, NodeID: id}
	default:
		return
	}
	_, _, err := ln.rn.ProposeConfChange(cc)
	s.logf("propose conf change %s %d via %d: %v", cc.Type, cc.NodeID, l, err)
	s.handleReady(ln)
}

// transferLeadership asks the current leader to hand over to a random
// voter.
func (s *Sim) transferLeadership() {
	l := s.currentLeader()
	if l == 0 {
		return
	}
	ln := s.nodes[l]
	voters := ln.rn.ConfState().Voters
	target := voters[s.rng.IntN(len(voters))]
	err := ln.rn.TransferLeadership(target)
	s.logf("transfer leadership %d -> %d: %v", l, target, err)
	s.result.Transfers++
	s.handleReady(ln)
}

func (s *Sim) onConfChangeApplied(n *simNode, e raft.Entry) {
	cc, err := raft.UnmarshalConfChange(e.Data)
	if err != nil {
		s.fail("node %d: bad conf change at %d: %v", n.id, e.Index, err)
		return
	}
	if cc.Type == raft.ConfChangeRemove && cc.NodeID == n.id {
		// Stopped after this Ready is handled (see handleReady).
		n.removed = true
	}
}

// clientLoad issues proposals and reads.
func (s *Sim) clientLoad() {
	r := s.rng
	live := s.liveIDs()
	if len(live) == 0 {
		return
	}
	if r.Float64() < s.opts.ProposeRate {
		target := live[r.IntN(len(live))]
		key := fmt.Sprintf("k%d", r.IntN(4))
		s.opSeq++
		value := fmt.Sprintf("v%d", s.opSeq)
		s.propose(target, key, value, 2)
	}
	if r.Float64() < s.opts.ReadRate {
		target := live[r.IntN(len(live))]
		n := s.nodes[target]
		if !n.up { // crashed by the proposal above
			return
		}
		s.readSeq++
		ctx := fmt.Sprintf("r%d", s.readSeq)
		key := fmt.Sprintf("k%d", r.IntN(4))
		if err := n.rn.ReadIndex([]byte(ctx)); err == nil {
			s.reads[ctx] = &pendingRead{node: target, minIndex: s.maxAcked, key: key}
			s.result.Reads++
			s.logf("read %s %s via %d (acked<=%d)", ctx, key, target, s.maxAcked)
		}
		s.handleReady(n)
	}
}

func (s *Sim) propose(target uint64, key, value string, hops int) {
	n := s.nodes[target]
	if n == nil || !n.up {
		return
	}
	idx, term, err := n.rn.Propose([]byte(key + "=" + value))
	var nle *raft.NotLeaderError
	if errors.As(err, &nle) && nle.Leader != raft.None && s.rng.IntN(2) == 0 {
		// As a server does: the follower forwards it, and the client is
		// answered once this follower applies it.
		if n.rn.Forward([]byte(key+"="+value)) == nil {
			s.forwarded = append(s.forwarded, proposal{node: target, key: key, value: value})
			s.logf("forward %s=%s via %d", key, value, target)
		}
		s.handleReady(n)
		return
	}
	if errors.As(err, &nle) && nle.Leader != raft.None && hops > 0 {
		s.propose(nle.Leader, key, value, hops-1)
		return
	}
	if err == nil {
		s.proposals = append(s.proposals, proposal{node: target, index: idx, term: term, key: key, value: value})
		s.logf("propose %s=%s at %d/%d via %d", key, value, idx, term, target)
	}
	s.handleReady(n)
}

// ack records that a client was told its write p succeeded, at index.
func (s *Sim) ack(p proposal, index uint64) {
	s.result.Acked++
	s.maxAcked = max(s.maxAcked, index)
	s.ackedVals[p.key] = append(s.ackedVals[p.key], ackedWrite{index: index, value: p.value})
	s.logf("ack %s=%s at %d", p.key, p.value, index)
}

func (s *Sim) onReadState(n *simNode, rs raft.ReadState) {
	r := s.reads[string(rs.RequestCtx)]
	if r == nil || r.node != n.id {
		return
	}
	r.index = rs.Index
	r.ready = true
	s.logf("read %s index %d at node %d", rs.RequestCtx, rs.Index, n.id)
}

// serveReads completes reads whose index the node has applied, checking
// that the read observes every write acknowledged before it began.
func (s *Sim) serveReads(n *simNode) {
	if !n.up {
		return
	}
	for _, ctx := range sortedKeys(s.reads) {
		r := s.reads[ctx]
		if r.node != n.id || !r.ready || n.sm.applied < r.index {
			continue
		}
		if r.index < r.minIndex {
			s.fail("stale read %s at node %d: read index %d is below acknowledged write index %d", ctx, n.id, r.index, r.minIndex)
		}
		got := n.sm.kv[r.key]
		// Every acknowledged write to this key before the read began must
		// be visible: the value must be that write or a later one.
		var lastAcked ackedWrite
		for _, w := range s.ackedVals[r.key] {
			if w.index <= r.minIndex && w.index > lastAcked.index {
				lastAcked = w
			}
		}
		if lastAcked.value != "" && got != lastAcked.value {
			// The key may have been overwritten later; check the state's
			// version of the key is at least as new.
			if n.sm.version[r.key] < lastAcked.index {
				s.fail("stale read %s of %s at node %d: got %q (written at %d), acknowledged %q at %d before the read", ctx, r.key, n.id, got, n.sm.version[r.key], lastAcked.value, lastAcked.index)
			}
		}
		s.logf("read %s done: %s=%q", ctx, r.key, got)
		delete(s.reads, ctx)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// stateMachine is a tiny key/value store. Its state hash chains every
// applied entry, so two replicas with equal hashes at an index applied
// the same sequence.
type stateMachine struct {
	applied uint64
	hash    uint64
	kv      map[string]string
	version map[string]uint64
}

func newStateMachine() *stateMachine {
	return &stateMachine{kv: map[string]string{}, version: map[string]uint64{}}
}

func (sm *stateMachine) apply(e raft.Entry) {
	sm.applied = e.Index
	h := fnv.New64a()
	var b [24]byte
	binary.LittleEndian.PutUint64(b[0:], sm.hash)
	binary.LittleEndian.PutUint64(b[8:], e.Index)
	binary.LittleEndian.PutUint64(b[16:], uint64(e.Type))
	h.Write(b[:])
	h.Write(e.Data)
	sm.hash = h.Sum64()
	if e.Type == raft.EntryNormal && len(e.Data) > 0 {
		k, v, _ := strings.Cut(string(e.Data), "=")
		sm.kv[k] = v
		sm.version[k] = e.Index
	}
}

func (sm *stateMachine) snapshot() []byte {
	var b []byte
	b = binary.AppendUvarint(b, sm.applied)
	b = binary.AppendUvarint(b, sm.hash)
	keys := sortedKeys(sm.kv)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		v := sm.kv[k]
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
		b = binary.AppendUvarint(b, sm.version[k])
	}
	return b
}

func (sm *stateMachine) restore(b []byte) error {
	*sm = *newStateMachine()
	next := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			panic("sim: corrupt snapshot")
		}
		b = b[n:]
		return v
	}
	str := func() string {
		l := next()
		s := string(b[:l])
		b = b[l:]
		return s
	}
	sm.applied = next()
	sm.hash = next()
	for range next() {
		k := str()
		sm.kv[k] = str()
		sm.version[k] = next()
	}
	return nil
}
