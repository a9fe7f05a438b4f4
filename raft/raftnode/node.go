package raftnode

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-db/cairn/raft"
)

// StateMachine is the application replicated by Raft. The node calls it
// from one goroutine only (its applier, or with SyncStorageWrites its
// Raft loop), in log order.
type StateMachine interface {
	// Apply applies one committed entry and returns the result handed to
	// the proposer. Entries with empty Data (leader no-ops) and membership
	// changes are passed too, so the state machine can track the index.
	Apply(e raft.Entry) any
	// Snapshot writes the state as of the last applied entry.
	Snapshot(w io.Writer) error
	// Restore replaces the state with a snapshot written by Snapshot.
	Restore(r io.Reader) error
}

// SnapshotCapturer is an optional StateMachine capability: capture a
// point-in-time image cheaply (on the Raft goroutine) and return the
// function that writes it, which the node then runs on a goroutine of its
// own while applying goes on. Without it, Snapshot runs on the Raft
// goroutine and the node neither replicates nor applies while it writes.
type SnapshotCapturer interface {
	CaptureSnapshot() (write func(io.Writer) error, err error)
}

var (
	// ErrStopped is returned once the node has stopped.
	ErrStopped = errors.New("raftnode: node stopped")
	// ErrProposalLost means a different entry was committed at the
	// proposal's index: the proposal was certainly not applied.
	ErrProposalLost = errors.New("raftnode: proposal lost to a leader change; it was not applied")
	// ErrOutcomeUnknown means the node cannot tell whether the proposal
	// was applied (the wait was cut short, or a snapshot replaced the log).
	ErrOutcomeUnknown = errors.New("raftnode: outcome unknown")
	// ErrLeaderChanged is returned to reads pending when leadership
	// changed; retry them.
	ErrLeaderChanged = errors.New("raftnode: leader changed; retry")
)

// Config configures a Node.
type Config struct {
	// ID, and the protocol settings: see raft.Config. Storage, Applied
	// and Rand in it are filled in by the node.
	Raft raft.Config
	// TickInterval is the duration of one raft tick. Default 100ms.
	TickInterval time.Duration
	// Clock supplies ticks. Default RealClock.
	Clock Clock
	// SnapshotEntries: snapshot after this many applied entries since the
	// last snapshot, at the least. Default 10000; negative disables.
	SnapshotEntries int64
	// SnapshotMaxEntries: snapshot after this many applied entries at the
	// most. Between the two, a snapshot waits until the entries applied
	// since the last one hold at least as many bytes as that snapshot
	// had: writing a snapshot costs time proportional to the
	// state's size, so a fixed interval would make every entry cost more
	// as the state grows (a store of a million keys was serialized whole
	// every ten thousand puts). The cap bounds the log kept in memory
	// and replayed on restart. Default 5×SnapshotEntries; below
	// SnapshotEntries means SnapshotEntries.
	SnapshotMaxEntries int64
	// KeepEntries is how many entries to keep behind a snapshot for
	// lagging followers. Default 5000.
	KeepEntries uint64
	// MaxBatch bounds how many queued requests one loop iteration takes
	// before handling a Ready: the group-commit batch. Default 1024.
	MaxBatch int
	// SyncStorageWrites makes the Raft goroutine write and fsync each
	// Ready itself before it takes the next (the synchronous contract).
	// By default a persister goroutine writes them (raft.Config's
	// AsyncStorageWrites), so the loop keeps taking acknowledgements,
	// proposals and reads while an fsync runs.
	SyncStorageWrites bool
	// NoElectionTickAdvance turns off raft.Config.ElectionTickAdvance,
	// which the node otherwise sets (it takes effect with PreVote and CheckQuorum only): a
	// started node campaigns within one election timeout, not two.
	NoElectionTickAdvance bool
	Logger                *slog.Logger
}

func (c *Config) setDefaults() {
	if c.TickInterval == 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.Clock == nil {
		c.Clock = RealClock{}
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = 10000
	}
	if c.SnapshotMaxEntries == 0 {
		c.SnapshotMaxEntries = 5 * c.SnapshotEntries
	}
	c.SnapshotMaxEntries = max(c.SnapshotMaxEntries, c.SnapshotEntries)
	if c.KeepEntries == 0 {
		c.KeepEntries = 5000
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 1024
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Node runs a Raft core. Its methods are safe for concurrent use.
type Node struct {
	cfg       Config
	id        uint64
	rn        *raft.RawNode
	storage   Storage
	transport Transport
	sm        StateMachine
	logger    *slog.Logger

	propc   chan *proposalReq
	readc   chan *readReq
	recvc   chan raft.Message
	reportc chan report
	statusc chan chan raft.Status
	xferc   chan uint64
	stopc   chan struct{}
	donec   chan struct{}
	stopOne sync.Once

	// Owned by run.
	reads   map[string][]*readReq // by request context
	readSeq uint64
	// proposed counts the proposals taken since the last Ready.
	proposed int
	// waiters are proposals waiting for their entry to apply, by index.
	waitMu  sync.Mutex
	waiters map[uint64]*proposalReq
	// Owned by whichever goroutine applies (the applier, or run with
	// SyncStorageWrites); applied is read by run to serve reads.
	snapIndex uint64
	// appliedBytes is the size of the entries applied since snapIndex;
	// owned where entries are applied. snapBytes is the size of the last
	// snapshot this node wrote, set when writing it finishes.
	appliedBytes int64
	snapBytes    atomic.Int64
	applied      atomic.Uint64
	// handed is the index of the last committed entry handed to the
	// applier (set by run); handed - applied is the backlog that
	// ApplyBacklog reports.
	handed atomic.Uint64
	// readsWaiting is set while the loop holds reads that wait for the
	// applied index: only then does the applier wake the loop after a
	// batch (see completeReads for the ordering that makes this safe).
	readsWaiting atomic.Bool
	// snapping is set while a background snapshot is being written;
	// snapDone receives its outcome.
	snapping bool
	snapDone chan error
	snapWG   sync.WaitGroup
	// applier applies committed entries off the loop (nil with
	// SyncStorageWrites).
	applier *applier
	// persist writes Readies off the loop (nil with SyncStorageWrites);
	// pendingSnap is a snapshot from the leader handed to it and not yet
	// acknowledged durable, which the loop installs on the ack.
	persist     *persister
	pendingSnap *raft.SnapshotMeta
	ackBuf      []raft.WriteAck
	// unsavedHS is a hard state that differs from the last one handed
	// to the persister only in its commit index: it is written with the
	// next write instead of on its own (see handleReady).
	unsavedHS raft.HardState

	lead    atomic.Uint64
	term    atomic.Uint64
	errMu   sync.Mutex
	err     error
	leaderc chan struct{} // closed and replaced on every leader change
	leaderM sync.Mutex
}

type proposalReq struct {
	data    []byte
	forward bool        // Submit: forward to the leader, do not wait
	handed  func(error) // with forward: told the outcome of Forward
	cc      *raft.ConfChange
	index   uint64
	term    uint64
	done    chan proposalResult
}

type proposalResult struct {
	index  uint64
	result any
	err    error
}

type readReq struct {
	done  chan readResult
	index uint64
	ready bool
}

type readResult struct {
	index uint64
	err   error
}

type report struct {
	id          uint64
	snapshot    bool
	ok          bool
	unreachable bool
}

// Start creates a node over storage and starts its goroutine. If storage
// is empty and bootstrap is non-empty, the node bootstraps a new cluster
// with those voters; a node joining an existing cluster passes none.
// The state machine is restored from the latest snapshot in storage.
func Start(cfg Config, storage Storage, transport Transport, sm StateMachine, bootstrap []uint64) (*Node, error) {
	cfg.setDefaults()
	snap, err := storage.Snapshot()
	if err != nil {
		return nil, fmt.Errorf("raftnode: reading snapshot: %w", err)
	}
	if !snap.IsEmpty() {
		rc, _, err := storage.OpenSnapshot(snap.Meta.Index)
		if err != nil {
			return nil, fmt.Errorf("raftnode: opening snapshot %d: %w", snap.Meta.Index, err)
		}
		err = sm.Restore(rc)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("raftnode: restoring snapshot %d: %w", snap.Meta.Index, err)
		}
	}
	rc := cfg.Raft
	rc.Storage = storage
	rc.Applied = snap.Meta.Index
	rc.AsyncStorageWrites = !cfg.SyncStorageWrites
	rc.ElectionTickAdvance = rc.ElectionTickAdvance || !cfg.NoElectionTickAdvance
	if rc.Rand == nil {
		rc.Rand = rand.New(rand.NewPCG(rc.ID, uint64(time.Now().UnixNano())))
	}
	if rc.Logger == nil {
		rc.Logger = cfg.Logger
	}
	rn, err := raft.NewRawNode(&rc)
	if err != nil {
		return nil, err
	}
	if len(bootstrap) > 0 {
		last, err := storage.LastIndex()
		if err != nil {
			return nil, err
		}
		hs, _, err := storage.InitialState()
		if err != nil {
			return nil, err
		}
		if last == 0 && hs.IsEmpty() {
			if err := rn.Bootstrap(bootstrap); err != nil {
				return nil, err
			}
		}
	}
	hs, _, err := storage.InitialState()
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:       cfg,
		id:        rc.ID,
		rn:        rn,
		storage:   storage,
		transport: transport,
		sm:        sm,
		logger:    cfg.Logger.With("node", rc.ID),
		propc:     make(chan *proposalReq, 256),
		readc:     make(chan *readReq, 256),
		recvc:     make(chan raft.Message, 1024),
		reportc:   make(chan report, 1024),
		statusc:   make(chan chan raft.Status),
		xferc:     make(chan uint64),
		stopc:     make(chan struct{}),
		donec:     make(chan struct{}),
		waiters:   map[uint64]*proposalReq{},
		reads:     map[string][]*readReq{},
		snapIndex: snap.Meta.Index,
		leaderc:   make(chan struct{}),
		snapDone:  make(chan error, 1),
	}
	n.term.Store(hs.Term)
	n.applied.Store(snap.Meta.Index)
	if !cfg.SyncStorageWrites {
		n.persist = newPersister(storage, transport)
		n.applier = newApplier(n, rn.ConfState())
	}
	go n.run()
	return n, nil
}

// ID returns the node's ID.
func (n *Node) ID() uint64 { return n.id }

// Leader returns the leader this node knows of, or raft.None.
func (n *Node) Leader() uint64 { return n.lead.Load() }

// Term returns the current Raft term as last persisted.
func (n *Node) Term() uint64 { return n.term.Load() }

// ApplyBacklog is the number of committed entries waiting to be applied
// to the state machine. Entries are applied off the Raft loop, so when
// the state machine falls behind, committed entries queue in memory
// without bound; a server can refuse new proposals while the backlog is
// large (etcd refuses them past 5,000 entries). Always 0 with
// SyncStorageWrites, which applies on the loop.
func (n *Node) ApplyBacklog() uint64 {
	handed, applied := n.handed.Load(), n.applied.Load()
	if handed <= applied {
		return 0
	}
	return handed - applied
}

// Err returns the error that stopped the node, if any.
func (n *Node) Err() error {
	n.errMu.Lock()
	defer n.errMu.Unlock()
	return n.err
}

// Stop stops the node's goroutine and waits for it. Pending calls fail
// with ErrStopped.
func (n *Node) Stop() {
	n.stopOne.Do(func() { close(n.stopc) })
	<-n.donec
}

// Done is closed when the node has stopped.
func (n *Node) Done() <-chan struct{} { return n.donec }

// Propose replicates data and waits until it is applied on this node. It
// returns the entry's index and the state machine's result. Errors: a
// *raft.NotLeaderError (retry at the leader it names), ErrProposalLost
// (safe to retry), ErrOutcomeUnknown wrapping the context's error, or
// ErrStopped.
func (n *Node) Propose(ctx context.Context, data []byte) (uint64, any, error) {
	return n.propose(ctx, &proposalReq{data: data})
}

// Submit hands data to Raft without waiting for it to commit: the leader
// appends it, a follower forwards it to the leader. The caller identifies
// its entry when the state machine applies it (by an ID inside data) and
// must treat a missing entry after a timeout as outcome unknown, since a
// forwarded proposal can be lost in a leader change. It returns a
// *raft.NotLeaderError when no leader is known.
func (n *Node) Submit(ctx context.Context, data []byte) error {
	done := make(chan error, 1)
	if err := n.SubmitAsync(ctx, data, func(err error) { done <- err }); err != nil {
		return err
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
	case <-n.donec:
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, n.stoppedErr())
	}
}

// SubmitAsync is Submit without waiting for the Raft loop to take the
// proposal: it returns once data is queued (waiting only while the queue
// is full, until ctx ends), and the loop later calls handed with the
// outcome of handing it on: nil, or the error Submit would have returned
// (a *raft.NotLeaderError when no leader is known). handed runs on the
// loop's goroutine and must not block; if the node stops first it is
// not called at all (watch Done). A caller that waits for its
// entry anyway (by an ID inside data) saves a wake-up of its goroutine
// per proposal.
func (n *Node) SubmitAsync(ctx context.Context, data []byte, handed func(error)) error {
	return n.enqueueProposal(ctx, &proposalReq{data: data, forward: true, handed: handed})
}

// TrySubmitAsync is SubmitAsync that never waits: it reports false, and
// queues nothing, when the proposal queue is full or the node has
// stopped.
func (n *Node) TrySubmitAsync(data []byte, handed func(error)) bool {
	select {
	case <-n.donec:
		return false
	default:
	}
	select {
	case n.propc <- &proposalReq{data: data, forward: true, handed: handed}:
		return true
	default:
		return false
	}
}

// ProposeConfChange proposes a membership change and waits until it is
// applied here.
func (n *Node) ProposeConfChange(ctx context.Context, cc raft.ConfChange) (uint64, error) {
	idx, _, err := n.propose(ctx, &proposalReq{cc: &cc})
	return idx, err
}

func (n *Node) propose(ctx context.Context, p *proposalReq) (uint64, any, error) {
	p.done = make(chan proposalResult, 1)
	if err := n.enqueueProposal(ctx, p); err != nil {
		return 0, nil, err // never submitted: certainly not applied
	}
	select {
	case r := <-p.done:
		return r.index, r.result, r.err
	case <-ctx.Done():
		return 0, nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
	case <-n.donec:
		return 0, nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, n.stoppedErr())
	}
}

// enqueueProposal hands p to the loop, waiting while the queue is full.
func (n *Node) enqueueProposal(ctx context.Context, p *proposalReq) error {
	if err := enqueue(ctx, n.propc, p, n.donec); err != ErrStopped {
		return err
	}
	return n.stoppedErr()
}

// enqueue sends v to the loop on ch, waiting while ch is full, until ctx
// ends (its error) or the node stops (ErrStopped). The first attempt is a
// send on the one channel: a select over three locks all three, and most
// sends find room.
func enqueue[T any](ctx context.Context, ch chan<- T, v T, stopped <-chan struct{}) error {
	select {
	case ch <- v:
		return nil
	default:
	}
	select {
	case ch <- v:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-stopped:
		return ErrStopped
	}
}

func (n *Node) stoppedErr() error {
	if err := n.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrStopped, err)
	}
	return ErrStopped
}

// ReadIndex returns once this node's state machine reflects every write
// committed before the call: a read of the local state machine right after
// it returns is linearizable (thesis §6.4). Concurrent calls share one
// round of leader confirmation. It fails with a *raft.NotLeaderError when
// no leader is known, and ErrLeaderChanged if leadership changed while
// waiting; both are safe to retry.
func (n *Node) ReadIndex(ctx context.Context) (uint64, error) {
	r := &readReq{done: make(chan readResult, 1)}
	if err := enqueue(ctx, n.readc, r, n.donec); err == ErrStopped {
		return 0, n.stoppedErr()
	} else if err != nil {
		return 0, err
	}
	select {
	case res := <-r.done:
		return res.index, res.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.donec:
		return 0, n.stoppedErr()
	}
}

// TransferLeadership asks the leader to hand over to transferee and waits
// until this node sees the new leader, or ctx ends.
func (n *Node) TransferLeadership(ctx context.Context, transferee uint64) error {
	for {
		if n.Leader() == transferee {
			return nil
		}
		ch := n.leaderChanged()
		select {
		case n.xferc <- transferee:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.donec:
			return n.stoppedErr()
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.donec:
			return n.stoppedErr()
		}
	}
}

// WaitLeader blocks until this node knows of a leader, and returns it.
func (n *Node) WaitLeader(ctx context.Context) (uint64, error) {
	for {
		ch := n.leaderChanged()
		if l := n.Leader(); l != raft.None {
			return l, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-n.donec:
			return 0, n.stoppedErr()
		}
	}
}

func (n *Node) leaderChanged() <-chan struct{} {
	n.leaderM.Lock()
	defer n.leaderM.Unlock()
	return n.leaderc
}

// Status returns the core's status.
func (n *Node) Status() raft.Status {
	ch := make(chan raft.Status, 1)
	select {
	case n.statusc <- ch:
		return <-ch
	case <-n.donec:
		return raft.Status{ID: n.id}
	}
}

// Process implements Handler: it delivers a message from a peer. A
// MsgSnap carrying Data (from an in-memory transport) has its bytes stored
// first, as a streaming transport would have done.
func (n *Node) Process(ctx context.Context, m raft.Message) error {
	if m.Type == raft.MsgSnap && m.Snapshot != nil && len(m.Snapshot.Data) > 0 {
		if err := n.storage.SaveSnapshot(m.Snapshot.Meta, bytesReader(m.Snapshot.Data)); err != nil {
			return fmt.Errorf("raftnode: storing snapshot from %d: %w", m.From, err)
		}
		s := *m.Snapshot
		s.Data = nil
		m.Snapshot = &s
	}
	return enqueue(ctx, n.recvc, m, n.donec)
}

// ReportUnreachable implements Handler. It never blocks.
func (n *Node) ReportUnreachable(id uint64) {
	select {
	case n.reportc <- report{id: id, unreachable: true}:
	default:
	}
}

// ReportSnapshot implements Handler. It never blocks.
func (n *Node) ReportSnapshot(id uint64, ok bool) {
	select {
	case n.reportc <- report{id: id, snapshot: true, ok: ok}:
	default:
	}
}

func (n *Node) fatal(err error) {
	n.errMu.Lock()
	if n.err == nil {
		n.err = err
	}
	n.errMu.Unlock()
	n.logger.Error("raftnode: stopping after a fatal error", "err", err)
}

func (n *Node) run() {
	defer close(n.donec)
	defer n.snapWG.Wait() // storage may be closed once run returns
	tickc, stopTicker := n.cfg.Clock.NewTicker(n.cfg.TickInterval)
	defer stopTicker()
	defer n.failAll()
	var ackc, appliedc chan struct{}
	var lastReady time.Time // when the loop last took Readies
	snapDone := n.snapDone
	if n.persist != nil {
		defer n.persist.stop() // before storage may be closed
		defer n.applier.stop() // before failAll reads the waiters
		ackc = n.persist.ackc
		appliedc = n.applier.appliedc
		snapDone = nil // the applier's
	}
	for {
		// Block for one event, then take whatever else is already queued
		// (up to MaxBatch), so that one Ready, one disk write and one
		// fsync serve many requests: group commit.
		select {
		case <-tickc:
			n.rn.Tick()
		case m := <-n.recvc:
			n.step(m)
		case p := <-n.propc:
			n.handlePropose(p)
		case r := <-n.readc:
			n.handleReads([]*readReq{r})
		case rep := <-n.reportc:
			n.handleReport(rep)
		case ch := <-n.statusc:
			ch <- n.rn.Status()
		case to := <-n.xferc:
			_ = n.rn.TransferLeadership(to)
		case <-appliedc:
			if err := n.applier.error(); err != nil {
				n.fatal(err)
				return
			}
			n.completeReads()
		case err := <-snapDone:
			n.snapping = false
			if err != nil && !errors.Is(err, raft.ErrSnapOutOfDate) {
				n.fatal(fmt.Errorf("raftnode: snapshot: %w", err))
				return
			}
		case <-ackc:
			if err := n.handleAcks(); err != nil {
				n.fatal(err)
				return
			}
		case <-n.stopc:
			return
		}
		if err := n.drainQueued(ackc); err != nil {
			n.fatal(err)
			return
		}
		if n.persist != nil && n.proposed > 0 && time.Since(lastReady) < busyWithin {
			// Under load (proposals arriving less than busyWithin after
			// the last Ready), let the handlers and readers that are
			// ready to run queue their proposals and messages first:
			// more of them share this Ready's append, fsync and
			// messages. Not for a Ready without proposals: a commit
			// or an acknowledgement is what one client waits for.
			runtime.Gosched()
			if err := n.drainQueued(ackc); err != nil {
				n.fatal(err)
				return
			}
		}
		lastReady, n.proposed = time.Now(), 0
		if err := n.handleReadies(); err != nil {
			n.fatal(err)
			return
		}
	}
}

func (n *Node) drainQueued(ackc chan struct{}) error {
	// Each queue is drained with plain receives, guarded by len: only
	// this goroutine receives from them, so a non-zero length means the
	// receive cannot block. A select over all of them per item (as the
	// blocking select in run does) locks every channel each time, which
	// under many concurrent proposals was most of the loop's own CPU.
	var reads []*readReq
	var err error
	budget := n.cfg.MaxBatch
	for budget > 0 && err == nil {
		before := budget
		for ; budget > 0 && len(n.recvc) > 0; budget-- {
			n.step(<-n.recvc)
		}
		for ; budget > 0 && len(n.propc) > 0; budget-- {
			n.handlePropose(<-n.propc)
		}
		for ; budget > 0 && len(n.readc) > 0; budget-- {
			reads = append(reads, <-n.readc)
		}
		for ; budget > 0 && len(n.reportc) > 0; budget-- {
			n.handleReport(<-n.reportc)
		}
		if ackc != nil && len(ackc) > 0 {
			<-ackc
			err = n.handleAcks()
			budget--
		}
		if budget == before {
			break
		}
	}
	if len(reads) > 0 {
		n.handleReads(reads)
	}
	return err
}

// handleAcks passes the persister's completed writes to the core, and
// installs a snapshot from the leader once it is durable.
func (n *Node) handleAcks() error {
	acks, err := n.persist.takeAcks(n.ackBuf[:0])
	n.ackBuf = acks
	for _, a := range acks {
		n.rn.AckWrite(a)
		n.term.Store(a.HardState.Term)
		if a.Snapshot != 0 && n.pendingSnap != nil && n.pendingSnap.Index == a.Snapshot {
			// Durable now: install it, in order with the entries
			// applied before it and after it.
			n.applier.submit(applyJob{restore: n.pendingSnap})
			n.pendingSnap = nil
		}
	}
	return err
}

func (n *Node) step(m raft.Message) {
	if err := n.rn.Step(m); err != nil {
		n.logger.Debug("raftnode: step", "msg", m.String(), "err", err)
	}
}

func (n *Node) handleReport(rep report) {
	if rep.unreachable {
		n.rn.ReportUnreachable(rep.id)
	}
	if rep.snapshot {
		n.rn.ReportSnapshot(rep.id, rep.ok)
	}
}

func (n *Node) handlePropose(p *proposalReq) {
	n.proposed++
	var idx, term uint64
	var err error
	if p.forward {
		p.handed(n.rn.Forward(p.data))
		return
	}
	if p.cc != nil {
		idx, term, err = n.rn.ProposeConfChange(*p.cc)
	} else {
		idx, term, err = n.rn.Propose(p.data)
	}
	if err != nil {
		p.done <- proposalResult{err: err}
		return
	}
	p.index, p.term = idx, term
	n.waitMu.Lock()
	n.waiters[idx] = p
	n.waitMu.Unlock()
}

// handleReads issues one ReadIndex request for a batch of callers: a
// single heartbeat round then confirms all of them.
func (n *Node) handleReads(rs []*readReq) {
	n.readSeq++
	var ctx [16]byte
	binary.BigEndian.PutUint64(ctx[:8], n.id)
	binary.BigEndian.PutUint64(ctx[8:], n.readSeq)
	if err := n.rn.ReadIndex(ctx[:]); err != nil {
		for _, r := range rs {
			r.done <- readResult{err: err}
		}
		return
	}
	n.reads[string(ctx[:])] = rs
}

func (n *Node) handleReadies() error {
	for n.rn.HasReady() {
		if err := n.handleReady(); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) handleReady() error {
	if n.persist == nil {
		return n.handleReadySync()
	}
	rd := n.rn.Ready()
	if rd.SoftState != nil {
		n.onSoftState(*rd.SoftState)
	}
	// Messages do not depend on this Ready's write: they leave now, so
	// the leader's appends reach followers while its own fsync runs.
	n.transport.Send(rd.Messages)
	job := persistJob{hs: rd.HardState, ents: rd.Entries, sync: rd.MustSync, msgs: rd.PersistedMessages, ack: rd.Ack}
	if rd.Snapshot != nil {
		meta := rd.Snapshot.Meta
		job.snap = &meta
		n.pendingSnap = &meta
	}
	switch {
	case !job.hs.IsEmpty() && !job.sync && len(job.ents) == 0 && job.snap == nil:
		// Only the commit index moved. It need not be durable (a
		// restarted member learns it again from the leader, and never
		// below its snapshot), so it waits for the next write rather
		// than costing a write and a wake of the persister per round:
		// one client's every put makes such a Ready on every member.
		// Its acknowledgement would change nothing in the core.
		n.unsavedHS, job.hs = job.hs, raft.HardState{}
	case !job.hs.IsEmpty():
		n.unsavedHS = raft.HardState{} // superseded: the newer one is whole
	case job.writes() && !n.unsavedHS.IsEmpty():
		job.hs, n.unsavedHS = n.unsavedHS, raft.HardState{}
	}
	switch {
	case job.writes():
		n.persist.submit(job)
	case len(job.msgs) > 0 && n.persist.idle():
		// Nothing new to write and every earlier write is durable.
		n.transport.Send(job.msgs)
	case len(job.msgs) > 0:
		// They depend on writes still in progress: after them.
		n.persist.submit(job)
	}
	for _, rs := range rd.ReadStates {
		for _, r := range n.reads[string(rs.RequestCtx)] {
			r.index, r.ready = rs.Index, true
		}
	}
	n.rn.Advance(rd)
	// The core hands out only entries that are durable here. They apply
	// on the applier; a batch with a membership change carries the
	// membership after it (Advance has applied it to the core), for the
	// snapshots the applier takes.
	if len(rd.CommittedEntries) > 0 {
		n.handed.Store(rd.CommittedEntries[len(rd.CommittedEntries)-1].Index)
		job := applyJob{ents: rd.CommittedEntries}
		for i := range rd.CommittedEntries {
			if rd.CommittedEntries[i].Type == raft.EntryConfChange {
				cs := n.rn.ConfState()
				job.cs = &cs
				break
			}
		}
		n.applier.submit(job)
	}
	n.completeReads()
	return nil
}

// handleReadySync handles a Ready with SyncStorageWrites: persist, then
// send what depends on it, on this goroutine.
func (n *Node) handleReadySync() error {
	rd := n.rn.Ready()
	if rd.SoftState != nil {
		n.onSoftState(*rd.SoftState)
	}
	// These do not depend on the write below, so they go out while it
	// runs: the leader's appends reach followers in parallel with its own
	// fsync (thesis §10.2.1).
	n.transport.Send(rd.Messages)
	// Committed entries that were already durable here before this Ready
	// (below its first new entry) are applied before the disk write, so
	// their clients do not wait for an fsync of unrelated new entries.
	committed := rd.CommittedEntries
	if len(rd.Entries) > 0 {
		first := rd.Entries[0].Index
		k := 0
		for k < len(committed) && committed[k].Index < first {
			k++
		}
		n.apply(committed[:k])
		committed = committed[k:]
	} else {
		n.apply(committed)
		committed = nil
	}
	if rd.Snapshot != nil {
		if err := n.storage.ApplySnapshot(rd.Snapshot.Meta); err != nil {
			return fmt.Errorf("raftnode: persisting snapshot %d: %w", rd.Snapshot.Meta.Index, err)
		}
	}
	if err := n.storage.Save(rd.HardState, rd.Entries, rd.MustSync); err != nil {
		return fmt.Errorf("raftnode: persisting ready: %w", err)
	}
	if rd.HardState.Term != 0 {
		n.term.Store(rd.HardState.Term)
	}
	// Durable now: votes and acks may leave.
	n.transport.Send(rd.PersistedMessages)
	if rd.Snapshot != nil {
		if err := n.restore(rd.Snapshot.Meta); err != nil {
			return err
		}
	}
	n.apply(committed)
	for _, rs := range rd.ReadStates {
		for _, r := range n.reads[string(rs.RequestCtx)] {
			r.index, r.ready = rs.Index, true
		}
	}
	n.rn.Advance(rd)
	n.completeReads()
	return n.maybeSnapshot(n.rn.ConfState())
}

func (n *Node) onSoftState(ss raft.SoftState) {
	old := n.lead.Swap(ss.Lead)
	if old == ss.Lead {
		return
	}
	n.logger.Info("raftnode: leader changed", "from", old, "to", ss.Lead, "state", ss.State.String())
	n.leaderM.Lock()
	close(n.leaderc)
	n.leaderc = make(chan struct{})
	n.leaderM.Unlock()
	// Reads not yet confirmed may never be: fail them so callers retry.
	for ctx, rs := range n.reads {
		keep := rs[:0]
		for _, r := range rs {
			if r.ready {
				keep = append(keep, r)
			} else {
				r.done <- readResult{err: ErrLeaderChanged}
			}
		}
		if len(keep) == 0 {
			delete(n.reads, ctx)
		} else {
			n.reads[ctx] = keep
		}
	}
}

func (n *Node) restore(meta raft.SnapshotMeta) error {
	rc, _, err := n.storage.OpenSnapshot(meta.Index)
	if err != nil {
		return fmt.Errorf("raftnode: opening received snapshot %d: %w", meta.Index, err)
	}
	defer rc.Close()
	if err := n.sm.Restore(rc); err != nil {
		return fmt.Errorf("raftnode: restoring snapshot %d: %w", meta.Index, err)
	}
	n.logger.Info("raftnode: installed snapshot", "index", meta.Index, "term", meta.Term)
	n.applied.Store(meta.Index)
	n.snapIndex = meta.Index
	n.appliedBytes = 0
	// Proposals at or below the snapshot may or may not be in it.
	n.waitMu.Lock()
	for idx, p := range n.waiters {
		if idx <= meta.Index {
			p.done <- proposalResult{index: idx, err: ErrOutcomeUnknown}
			delete(n.waiters, idx)
		}
	}
	n.waitMu.Unlock()
	return nil
}

func (n *Node) apply(ents []raft.Entry) {
	applied := n.applied.Load()
	for _, e := range ents {
		if e.Index <= applied {
			continue
		}
		result := n.sm.Apply(e)
		n.appliedBytes += int64(len(e.Data))
		applied = e.Index
		n.applied.Store(applied)
		if e.Type == raft.EntryConfChange {
			n.onConfChange(e)
		}
		n.waitMu.Lock()
		p, ok := n.waiters[e.Index]
		if ok {
			delete(n.waiters, e.Index)
		}
		n.waitMu.Unlock()
		if ok {
			if p.term == e.Term {
				p.done <- proposalResult{index: e.Index, result: result}
			} else {
				p.done <- proposalResult{index: e.Index, err: ErrProposalLost}
			}
		}
	}
	// Waiters below the applied index whose entries were never applied
	// here cannot exist: every index is applied in order.
}

func (n *Node) onConfChange(e raft.Entry) {
	cc, err := raft.UnmarshalConfChange(e.Data)
	if err != nil {
		return
	}
	pm, ok := n.transport.(PeerManager)
	if !ok {
		return
	}
	switch cc.Type {
	case raft.ConfChangeAddVoter, raft.ConfChangeAddLearner:
		if cc.NodeID != n.id && len(cc.Context) > 0 {
			pm.AddPeer(cc.NodeID, string(cc.Context))
		}
	case raft.ConfChangeRemove:
		if cc.NodeID != n.id {
			pm.RemovePeer(cc.NodeID)
		}
	}
}

func (n *Node) completeReads() {
	if len(n.reads) == 0 {
		n.readsWaiting.Store(false)
		return
	}
	// Set before loading applied; the applier stores applied before
	// loading this. Either we see its new applied index or it sees the
	// flag and wakes us: a read cannot be left waiting for a signal.
	n.readsWaiting.Store(true)
	applied := n.applied.Load()
	for ctx, rs := range n.reads {
		keep := rs[:0]
		for _, r := range rs {
			if r.ready && r.index <= applied {
				r.done <- readResult{index: r.index}
			} else {
				keep = append(keep, r)
			}
		}
		if len(keep) == 0 {
			delete(n.reads, ctx)
		} else {
			n.reads[ctx] = keep
		}
	}
}

// snapshotDue reports whether enough was applied since the last snapshot
// to take the next at index idx (Config.SnapshotMaxEntries).
func (n *Node) snapshotDue(idx uint64) bool {
	if n.cfg.SnapshotEntries < 0 || n.snapping {
		return false
	}
	since := idx - min(idx, n.snapIndex)
	switch {
	case since < uint64(n.cfg.SnapshotEntries):
		return false
	case since >= uint64(n.cfg.SnapshotMaxEntries):
		return true
	}
	// At most one byte of snapshot written per byte of entries applied.
	return n.appliedBytes >= n.snapBytes.Load()
}

// maybeSnapshot snapshots the state machine at its applied index, whose
// membership is cs, once snapshotDue. It runs where entries are applied.
func (n *Node) maybeSnapshot(cs raft.ConfState) error {
	idx := n.applied.Load()
	if !n.snapshotDue(idx) {
		return nil
	}
	if n.applier == nil && n.pendingSnap != nil {
		// The core's membership is already the incoming snapshot's, but
		// the state machine is not restored from it yet.
		return nil
	}
	if capt, ok := n.sm.(SnapshotCapturer); ok {
		write, err := capt.CaptureSnapshot()
		if err != nil {
			return fmt.Errorf("raftnode: capturing snapshot at %d: %w", idx, err)
		}
		n.snapping = true
		n.snapIndex = idx
		n.appliedBytes = 0
		n.snapWG.Add(1)
		go func() {
			defer n.snapWG.Done()
			cw := &countingWriter{}
			err := n.storage.CreateSnapshot(idx, cs, n.cfg.KeepEntries, cw.wrap(write))
			if err == nil {
				n.snapBytes.Store(cw.n)
				n.logger.Info("raftnode: snapshot taken", "index", idx, "bytes", cw.n)
			}
			n.snapDone <- err
		}()
		return nil
	}
	cw := &countingWriter{}
	err := n.storage.CreateSnapshot(idx, cs, n.cfg.KeepEntries, cw.wrap(n.sm.Snapshot))
	if err != nil {
		return fmt.Errorf("raftnode: snapshot at %d: %w", idx, err)
	}
	n.snapIndex = idx
	n.appliedBytes = 0
	n.snapBytes.Store(cw.n)
	n.logger.Info("raftnode: snapshot taken", "index", idx, "bytes", cw.n)
	return nil
}

// countingWriter counts the bytes a snapshot writer produces.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	c.n += int64(k)
	return k, err
}

// wrap returns write with its output counted in c.
func (c *countingWriter) wrap(write func(io.Writer) error) func(io.Writer) error {
	return func(w io.Writer) error {
		c.w = w
		return write(c)
	}
}

// busyWithin: a loop that took Readies less than this long ago is under
// load, and yields once before the next (see run). One client's requests
// come a round trip (hundreds of microseconds) apart.
const busyWithin = 200 * time.Microsecond

// failAll answers every pending call when the node stops.
func (n *Node) failAll() {
	err := n.stoppedErr()
	n.waitMu.Lock()
	for idx, p := range n.waiters {
		p.done <- proposalResult{index: idx, err: fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)}
	}
	n.waiters = map[uint64]*proposalReq{}
	n.waitMu.Unlock()
	for _, rs := range n.reads {
		for _, r := range rs {
			r.done <- readResult{err: err}
		}
	}
}
