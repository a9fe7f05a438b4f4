package raftnode

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/cairn-db/cairn/raft"
)

// persistJob is one Ready's write, handed from Node.run to the persister.
type persistJob struct {
	hs   raft.HardState
	ents []raft.Entry
	snap *raft.SnapshotMeta
	sync bool
	// msgs are the Ready's PersistedMessages: sent once this write and
	// every earlier one are durable.
	msgs []raft.Message
	ack  raft.WriteAck
}

func (j *persistJob) writes() bool {
	return j.snap != nil || len(j.ents) > 0 || !j.hs.IsEmpty()
}

// persister makes Ready writes durable on its own goroutine, in the order
// they were queued, so that the Raft loop keeps stepping messages and
// proposals while an fsync runs. Jobs queued while a write is in progress
// are merged into the next write: one fsync for all of them. After each
// write it sends the jobs' PersistedMessages and hands their acks back to
// the loop, which passes them to RawNode.AckWrite.
//
// Ordering: one goroutine writes, in queue order, and a write starts only
// after the previous one returned, so a later write never lands before an
// earlier one (a truncating write after the write it truncates, a
// snapshot after the entries it replaces).
type persister struct {
	storage   Storage
	transport Transport

	mu      sync.Mutex
	queue   []persistJob
	spare   []persistJob // the last batch's array, reused for the queue
	acks    []raft.WriteAck
	err     error
	stopped bool
	busy    bool // a write is in progress

	wake chan struct{} // cap 1: new jobs, or stop
	ackc chan struct{} // cap 1: acks or an error for the loop
	done chan struct{}
}

func newPersister(s Storage, t Transport) *persister {
	p := &persister{storage: s, transport: t, wake: make(chan struct{}, 1), ackc: make(chan struct{}, 1), done: make(chan struct{})}
	go p.run()
	return p
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// submit queues a job. It never blocks.
func (p *persister) submit(j persistJob) {
	p.mu.Lock()
	p.queue = append(p.queue, j)
	p.mu.Unlock()
	signal(p.wake)
}

// idle reports whether nothing is queued or being written, and no write
// failed: after a failed write, messages that promise durable state (an
// append acknowledgement for entries the failed write held) must never be
// sent, so the caller must hand them to the persister, which drops them.
func (p *persister) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue) == 0 && !p.busy && p.err == nil
}

// takeAcks appends the acks of completed writes, in order, to dst and
// returns it, with the persister's error if a write failed.
func (p *persister) takeAcks(dst []raft.WriteAck) ([]raft.WriteAck, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	dst = append(dst, p.acks...)
	p.acks = p.acks[:0]
	return dst, p.err
}

// stop makes the persister exit after the write in progress, if any, and
// waits for it. Queued jobs are dropped, as a crash would drop them: their
// messages were never sent and their acks never given.
func (p *persister) stop() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	signal(p.wake)
	<-p.done
}

func (p *persister) run() {
	defer close(p.done)
	for range p.wake {
		for {
			p.mu.Lock()
			if p.stopped || p.err != nil || len(p.queue) == 0 {
				stopped := p.stopped || p.err != nil
				p.mu.Unlock()
				if stopped {
					return
				}
				break
			}
			// Take a batch: everything queued, up to (not including) a
			// second snapshot, which must be written on its own.
			n := 1
			for n < len(p.queue) && p.queue[n].snap == nil {
				n++
			}
			var batch []persistJob
			if n == len(p.queue) {
				// The usual case: take the whole queue and give it the
				// spare array, so that queueing does not allocate.
				batch = p.queue
				p.queue = p.spare[:0]
				p.spare = nil
			} else {
				batch = append([]persistJob(nil), p.queue[:n]...)
				p.queue = append(p.queue[:0], p.queue[n:]...)
			}
			p.busy = true
			p.mu.Unlock()

			// Let the goroutines the Raft loop just woke run first: the
			// peer writers carrying this Ready's appends to the
			// followers. An fsync holds this goroutine's P for its whole
			// duration (the runtime takes a P from a syscall only on
			// its next sysmon check, up to milliseconds later when
			// idle), and a writer queued behind it on the same P would
			// send the appends only after the leader's own fsync: the
			// two are meant to overlap.
			runtime.Gosched()
			err := p.write(batch)
			p.mu.Lock()
			p.busy = false
			if err != nil {
				p.err = err
			} else {
				for i := range batch {
					p.acks = append(p.acks, batch[i].ack)
				}
			}
			p.mu.Unlock()
			// Wake the loop before the peer writers, not after: the
			// goroutine woken last runs first on this P, and a
			// follower's acknowledgement to the leader is what the
			// client is waiting for, while the loop only records it.
			signal(p.ackc)
			if err == nil {
				for i := range batch {
					p.transport.Send(batch[i].msgs)
				}
			}
			clear(batch) // drop references to entries and messages
			p.mu.Lock()
			if p.spare == nil {
				p.spare = batch[:0]
			}
			p.mu.Unlock()
		}
	}
}

// write persists a batch of jobs with one Save (one fsync).
func (p *persister) write(batch []persistJob) error {
	if s := batch[0].snap; s != nil {
		if err := p.storage.ApplySnapshot(*s); err != nil {
			return fmt.Errorf("raftnode: persisting snapshot %d: %w", s.Index, err)
		}
	}
	var hs raft.HardState
	var ents []raft.Entry
	sync, any := false, false
	for i := range batch {
		j := &batch[i]
		if !j.writes() {
			continue
		}
		any = true
		sync = sync || j.sync
		if !j.hs.IsEmpty() {
			hs = j.hs
		}
		ents = mergeEntries(ents, j.ents)
	}
	if !any || (hs.IsEmpty() && len(ents) == 0) {
		return nil
	}
	if err := p.storage.Save(hs, ents, sync); err != nil {
		return fmt.Errorf("raftnode: persisting ready: %w", err)
	}
	return nil
}

// mergeEntries appends next to ents the way storage would apply them in
// sequence: entries at or after next[0].Index are replaced. ents is
// copied before it is modified unless owned is false and nothing changes:
// the slices come from the core's log and must not be written to.
func mergeEntries(ents, next []raft.Entry) []raft.Entry {
	if len(next) == 0 {
		return ents
	}
	if len(ents) == 0 {
		return next
	}
	first := next[0].Index
	keep := len(ents)
	for keep > 0 && ents[keep-1].Index >= first {
		keep--
	}
	out := make([]raft.Entry, 0, keep+len(next))
	out = append(out, ents[:keep]...)
	return append(out, next...)
}
