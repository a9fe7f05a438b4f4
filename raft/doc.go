// Package raft implements the Raft consensus protocol (Ongaro and
// Ousterhout, "In Search of an Understandable Consensus Algorithm", and
// Ongaro's PhD thesis) as a pure state machine.
//
// RawNode is the protocol core. It has no goroutines, no clock, no I/O and
// no global randomness: the caller advances time with Tick, delivers
// messages with Step, submits work with Propose, ProposeConfChange,
// ReadIndex and TransferLeadership, and drains the results with Ready and
// Advance. Everything random (election jitter) comes from the *rand.Rand in
// Config, so a run is reproducible from its seed.
//
// The Ready contract, which every driver must follow:
//
//  1. Persist Ready.HardState, Ready.Entries and Ready.Snapshot durably
//     (one fsync for the whole batch is enough).
//  2. Ready.Messages may be sent at any time, even before or while step 1
//     runs: they do not depend on this node's durable state. A leader's
//     appends to followers are here, which lets the leader's disk write
//     overlap replication (thesis §10.2.1).
//  3. Ready.PersistedMessages must be sent only after step 1 completed:
//     votes and append acknowledgements promise that state is on disk.
//  4. Apply Ready.CommittedEntries in order, install Ready.Snapshot into
//     the state machine if present, and then call Advance(rd).
//
// Package raft/raftnode runs a RawNode in a goroutine with a real WAL and
// network transport; tests and the simulator drive RawNode directly.
package raft
