// Package transport is the peer network of Cairn's Raft nodes: it carries
// raft.Message values between the nodes of one cluster over plain TCP,
// using a small framed binary protocol and the hand-written raft codec
// (raft.AppendMessage / raft.UnmarshalMessage).
//
// # Shape
//
// A Transport has a bounded queue per peer. Send only enqueues and never
// blocks the Raft loop: when a queue is full, or the peer is unknown, the
// message is dropped and Handler.ReportUnreachable is called; Raft
// retransmits what matters. One writer goroutine per peer owns a
// persistent connection, takes everything queued at once and writes it as
// one batch frame (split only at MaxMessageSize) followed by one flush, so
// under load many messages share one frame and one system call. If the
// peer cannot be reached the writer drops what is queued, reports the peer
// unreachable and retries with jittered exponential backoff.
//
// Every connection starts with a fixed-size handshake naming protocol
// version, cluster ID, sender and intended receiver. The acceptor refuses
// another cluster, another version, or a dialer that meant another node,
// and says why, so both sides log a precise error. After the handshake
// each frame carries a type, a length checked against MaxMessageSize
// before anything is allocated, and a CRC32C. A peer that sends anything
// malformed is disconnected with a warning naming its address and the
// reason; nothing a peer sends can make this package panic or allocate
// more than MaxMessageSize for one frame.
//
// MsgSnap never travels in a batch. It gets its own connection: a header
// frame (the message, with Snapshot.Data empty, and the byte count), the
// snapshot bytes in SnapshotChunkSize chunks each with its own CRC32C, an
// end frame, and an acknowledgement back. The bytes come from
// SnapshotStore.OpenSnapshot (or from Snapshot.Data when the caller filled
// it), and on the receiver go through an io.Pipe into
// SnapshotStore.SaveSnapshot, so neither side holds the snapshot in
// memory. The receiver calls Handler.Process with the MsgSnap only after
// SaveSnapshot returned, that is after the bytes are durable, and then
// acknowledges; the sender reports the outcome with Handler.ReportSnapshot.
//
// # Goroutines
//
// Every goroutine below is started through one WaitGroup; Close cancels
// them, closes the listener and every connection, and waits.
//
//   - accept loop (one per Transport): fed by the listener; starts a
//     connection goroutine per accepted connection.
//   - inbound connection (one per accepted connection): fed by the socket;
//     runs the handshake, then either decodes batch frames and calls
//     Handler.Process for each message in order, or receives one snapshot
//     stream and pumps its chunks into the pipe.
//   - snapshot saver (one per inbound snapshot stream): fed by the io.Pipe
//     from its connection goroutine; runs SnapshotStore.SaveSnapshot.
//   - peer writer (one per peer added with AddPeer): fed by the peer's
//     queue, which Send fills; owns the outbound connection, dials,
//     backs off, batches, writes.
//   - snapshot sender (at most one per peer at a time): started by Send
//     for a MsgSnap; reads OpenSnapshot, streams it on its own connection,
//     waits for the acknowledgement, calls Handler.ReportSnapshot.
//
// The wire format, the reasons for it and benchmark numbers are in
// docs/transport.md.
package transport
