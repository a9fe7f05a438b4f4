// Package server is `cairn server`: one member of a replicated key/value
// cluster. It wires the durable Raft log (raft/wal), the peer transport
// (raft/transport) and the Raft driver (raft/raftnode) to the key/value
// state machine (internal/kv), and serves the etcd v3 gRPC API plus
// Cairn's extensions to clients.
//
// Writes from any member are submitted to Raft (followers forward them to
// the leader) and answered when the local replica applies them; each
// request carries a member-unique ID so the member that accepted it can
// recognize it in the log. Linearizable reads wait for a ReadIndex round
// and then read the local replica; serializable reads read it directly.
package server
