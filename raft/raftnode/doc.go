// Package raftnode runs a raft.RawNode for real: one goroutine owns the
// core, ticks it from an injected clock, hands each Ready's write to a
// persister goroutine that writes it to a Storage with one fsync per batch
// (group commit, merging the Readies queued meanwhile) and then sends the
// messages that depend on it, sends the other messages at once, in
// parallel with the disk write (Raft thesis §10.2.1), applies committed
// entries to a StateMachine, takes snapshots past a threshold, and serves
// blocking Propose, ReadIndex, membership and transfer calls to other
// goroutines. Config.SyncStorageWrites keeps the write on the loop.
//
// Goroutines: Node.run is the only goroutine that touches the RawNode and
// the StateMachine; the persister is the only one that calls the
// Storage's Save and ApplySnapshot. Node.run is fed by channels:
// proposals, reads, membership changes and status queries from callers,
// messages from the Transport (Process), reports from the Transport
// (ReportUnreachable, ReportSnapshot), and ticks from the Clock. The
// Transport owns its own goroutines (see package transport).
//
// Storage and Transport are interfaces with written contracts; MemStorage
// and MemNetwork are their in-memory twins for tests.
package raftnode
