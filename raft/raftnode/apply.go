package raftnode

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/cairn-db/cairn/raft"
)

// applyJob is a batch of committed entries (or a snapshot to install)
// handed from Node.run to the applier, in log order.
type applyJob struct {
	ents []raft.Entry
	// cs, if non-nil, is the membership as of the last entry of ents:
	// the batch holds a membership change. Local snapshots carry the
	// membership as of their index.
	cs *raft.ConfState
	// restore installs the durable snapshot received from the leader.
	restore *raft.SnapshotMeta
}

// applier owns the StateMachine when the node writes asynchronously: it
// applies committed entries, installs snapshots received from the leader
// and captures local snapshots on its own goroutine, so the Raft loop
// keeps replicating (and the next batch's fsync overlaps this batch's
// apply). It answers proposals as their entries apply and tells the loop
// its applied index, which serves reads.
type applier struct {
	n *Node

	mu      sync.Mutex
	queue   []applyJob
	spare   []applyJob // the last batch's array, reused for the queue
	err     error
	stopped bool

	wake     chan struct{} // cap 1: jobs, or stop
	appliedc chan struct{} // cap 1: applied index advanced while reads wait, or err set
	done     chan struct{}

	// Owned by the applier goroutine.
	cs raft.ConfState // membership as of the applied index
}

func newApplier(n *Node, cs raft.ConfState) *applier {
	a := &applier{n: n, cs: cs, wake: make(chan struct{}, 1), appliedc: make(chan struct{}, 1), done: make(chan struct{})}
	go a.run()
	return a
}

func (a *applier) submit(j applyJob) {
	a.mu.Lock()
	a.queue = append(a.queue, j)
	a.mu.Unlock()
	signal(a.wake)
}

// error returns the error that stopped the applier, if any.
func (a *applier) error() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// stop makes the applier exit after the batch in progress and waits.
// Queued batches are dropped: their proposals fail as outcome unknown.
func (a *applier) stop() {
	a.mu.Lock()
	a.stopped = true
	a.mu.Unlock()
	signal(a.wake)
	<-a.done
}

func (a *applier) fail(err error) {
	a.mu.Lock()
	if a.err == nil {
		a.err = err
	}
	a.mu.Unlock()
	signal(a.appliedc)
}

func (a *applier) run() {
	defer close(a.done)
	n := a.n
	for {
		select {
		case <-a.wake:
		case err := <-n.snapDone:
			n.snapping = false
			if err != nil && !errors.Is(err, raft.ErrSnapOutOfDate) {
				a.fail(fmt.Errorf("raftnode: snapshot: %w", err))
				return
			}
			// The applied index may have passed the threshold meanwhile.
			if err := n.maybeSnapshot(a.cs); err != nil {
				a.fail(err)
				return
			}
			continue
		}
		for {
			a.mu.Lock()
			if a.stopped || a.err != nil {
				a.mu.Unlock()
				return
			}
			jobs := a.queue
			a.queue = a.spare[:0]
			a.spare = nil
			a.mu.Unlock()
			if len(jobs) == 0 {
				a.mu.Lock()
				a.spare = jobs
				a.mu.Unlock()
				break
			}
			for _, j := range jobs {
				if err := a.do(j); err != nil {
					a.fail(err)
					return
				}
			}
			clear(jobs) // drop references to applied entries
			a.mu.Lock()
			a.spare = jobs[:0]
			a.mu.Unlock()
			// Let the request handlers this batch woke send their
			// responses before the loop, which only serves reads with
			// the new applied index, takes this P (the goroutine woken
			// last runs first); and wake the loop only if it holds
			// reads (see Node.completeReads).
			runtime.Gosched()
			if n.readsWaiting.Load() {
				signal(a.appliedc)
			}
		}
	}
}

func (a *applier) do(j applyJob) error {
	n := a.n
	if j.restore != nil {
		if err := n.restore(*j.restore); err != nil {
			return err
		}
		a.cs = j.restore.ConfState
		return nil
	}
	n.apply(j.ents)
	if j.cs != nil {
		a.cs = *j.cs
	}
	return n.maybeSnapshot(a.cs)
}
