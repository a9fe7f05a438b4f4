// Package sim is a deterministic simulator for the raft core.
//
// One seed drives everything: the number of nodes, message delays, loss,
// duplication and reordering, symmetric and one-way partitions, isolation
// of the leader, crashes (including crashes in the middle of persisting a
// Ready, which lose unsynced writes or leave a torn prefix), restarts,
// membership changes, snapshots, and the clients' proposals and ReadIndex
// reads. All nodes run in one goroutine on a virtual clock, so a run is a
// pure function of its seed: a failing seed replays exactly, and a trace
// hash proves it.
//
// After every step the simulator checks Raft's safety properties (Figure 3
// of the paper): election safety (one leader per term), log matching,
// leader completeness, state machine safety, and linearizable reads (a
// ReadIndex read never observes a state older than a write acknowledged
// before the read began). At the end it heals every fault and checks
// liveness: a leader appears and a new proposal commits within a bound.
package sim
