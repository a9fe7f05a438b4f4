// Package shardkv is the replicated state machine of one shard group: a
// key/value store (internal/kv) that serves only the shards the group
// owns, plus the per-shard migration state that moves shards between
// groups one configuration at a time.
//
// Like internal/kv it starts no goroutines, does no I/O and never reads
// the clock: replicas fed the same log entries make the same decisions.
// The server proposes entries (Encode*) and drives migration (pulling
// shards from their old owner, confirming garbage collection); this
// package decides, at each log position, what those entries mean. The
// protocol and why it is safe are in docs/sharding.md.
package shardkv
