// Package kv is Cairn's key/value state machine: a pure, deterministic,
// ordered in-memory store with etcd v3 MVCC metadata (a cluster-wide
// revision, and per key create_revision, mod_revision and version) that the
// Raft driver feeds committed log entries and the gRPC server reads from.
//
// The package does no I/O of its own, starts no goroutines and never reads
// the clock: every input that changes state arrives through Apply as the
// bytes of a committed log entry (an encoded Command), and the only time the
// store knows is the proposer's wall clock carried inside those commands.
// Two stores fed the same entries therefore hold the same state and write
// byte-identical snapshots.
//
// Requests and responses are the generated etcd v3 protobuf types from
// go.etcd.io/etcd/api/v3/etcdserverpb, and errors are the rpctypes errors
// etcd's clients expect, so the gRPC layer can hand them through unchanged.
// Only the latest version of each key is kept: reads at an old revision are
// answered with a gRPC Unimplemented error. docs/kv.md describes the data
// model, the revision rules, the command encoding, the snapshot format and
// the exactly-once session table.
//
// For sharding, ExportShard, InstallShard and DeleteShard move the keys of
// a shard (chosen by a key predicate) and the session table between
// groups, SetVisible hides the keys of shards a group does not serve, and
// RangeFiltered and CountMatching read a subset of the keys (docs/kv.md,
// "Shard operations").
package kv
