// Package shard holds the pure parts of Cairn's sharded key/value store:
// the mapping from keys to shards, the numbered shard configurations
// (shard → replica group, group → member addresses) and the shard
// controller's state machine, which turns Join, Leave and Move commands
// into new configurations and answers Query.
//
// Like internal/kv, the package does no I/O of its own, starts no
// goroutines and never reads the clock: the controller changes state only
// through Apply, fed the bytes of committed Raft log entries, and the only
// time it knows is the proposer's clock carried inside those commands. Two
// controllers fed the same commands hold equal configurations and write
// byte-identical snapshots; no output depends on Go's map iteration order.
//
// Rebalancing is even (shard counts per group differ by at most one) and
// minimal (it moves the fewest shards any even assignment allows). The
// key hash, the configuration and command encodings, the snapshot format
// and the rebalancing algorithm are described in docs/sharding.md, together
// with the plan for the parts of sharding not built yet (multi-group
// servers, shard migration, routing).
package shard
