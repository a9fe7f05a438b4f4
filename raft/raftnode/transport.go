package raftnode

import (
	"bytes"
	"context"
	"io"
	"sync"

	"github.com/cairn-db/cairn/raft"
)

// Transport carries messages to peers.
//
// Contract: Send may be called from more than one goroutine at once (the
// node's loop sends what may leave at once, its persister what had to wait
// for a write). It must not block the caller for long (queue and return);
// it may drop messages, since Raft tolerates loss, and should then call
// the sender's ReportUnreachable. For a MsgSnap whose Snapshot.Data is
// empty, the transport streams the bytes from the sender's
// Storage.OpenSnapshot, stores them at the receiver with
// Storage.SaveSnapshot before delivering the message, and reports the
// outcome with ReportSnapshot.
type Transport interface {
	Send(msgs []raft.Message)
}

// Handler is what a Transport delivers to: Node implements it.
type Handler interface {
	Process(ctx context.Context, m raft.Message) error
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, ok bool)
}

// PeerManager is an optional Transport capability: when a membership
// change is applied the node tells the transport to add or drop the peer.
// The ConfChange's Context is the peer's address.
type PeerManager interface {
	AddPeer(id uint64, addr string)
	RemovePeer(id uint64)
}

// MemNetwork connects nodes in one process: the in-memory twin of a
// network transport, with switches to cut links. Delivery is
// asynchronous (one goroutine per link preserves per-link order).
type MemNetwork struct {
	mu      sync.Mutex
	nodes   map[uint64]*memEndpoint
	blocked map[[2]uint64]bool
}

type memEndpoint struct {
	h       Handler
	storage Storage
	queue   chan raft.Message
	done    chan struct{}
}

// NewMemNetwork returns an empty network.
func NewMemNetwork() *MemNetwork {
	return &MemNetwork{nodes: map[uint64]*memEndpoint{}, blocked: map[[2]uint64]bool{}}
}

// Transport returns the Transport for node id.
func (n *MemNetwork) Transport(id uint64) Transport { return &memTransport{net: n, id: id} }

// Register attaches node id's handler and storage. Storage is used to read
// snapshots the node sends.
func (n *MemNetwork) Register(id uint64, h Handler, s Storage) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if old := n.nodes[id]; old != nil {
		close(old.done)
	}
	ep := &memEndpoint{h: h, storage: s, queue: make(chan raft.Message, 4096), done: make(chan struct{})}
	n.nodes[id] = ep
	go ep.loop()
}

// Unregister detaches node id (as if it crashed).
func (n *MemNetwork) Unregister(id uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ep := n.nodes[id]; ep != nil {
		close(ep.done)
		delete(n.nodes, id)
	}
}

// Close detaches every node.
func (n *MemNetwork) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id, ep := range n.nodes {
		close(ep.done)
		delete(n.nodes, id)
	}
}

// Isolate cuts (or, with cut=false, restores) every link of id.
func (n *MemNetwork) Isolate(id uint64, cut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for other := range n.nodes {
		n.setLink(id, other, cut)
		n.setLink(other, id, cut)
	}
}

// Heal restores every link.
func (n *MemNetwork) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.blocked)
}

func (n *MemNetwork) setLink(from, to uint64, cut bool) {
	if cut {
		n.blocked[[2]uint64{from, to}] = true
	} else {
		delete(n.blocked, [2]uint64{from, to})
	}
}

func (ep *memEndpoint) loop() {
	for {
		select {
		case <-ep.done:
			return
		case m := <-ep.queue:
			_ = ep.h.Process(context.Background(), m)
		}
	}
}

type memTransport struct {
	net *MemNetwork
	id  uint64
}

func (t *memTransport) Send(msgs []raft.Message) {
	n := t.net
	for _, m := range msgs {
		n.mu.Lock()
		src, dst := n.nodes[t.id], n.nodes[m.To]
		blocked := n.blocked[[2]uint64{m.From, m.To}]
		n.mu.Unlock()
		if src == nil {
			return
		}
		if dst == nil || blocked {
			src.h.ReportUnreachable(m.To)
			if m.Type == raft.MsgSnap {
				src.h.ReportSnapshot(m.To, false)
			}
			continue
		}
		if m.Type == raft.MsgSnap && m.Snapshot != nil && len(m.Snapshot.Data) == 0 {
			// Stream the snapshot like a real transport: store the bytes
			// at the receiver before delivering the message.
			if err := copySnapshot(src.storage, dst.storage, m.Snapshot.Meta); err != nil {
				src.h.ReportSnapshot(m.To, false)
				continue
			}
			defer src.h.ReportSnapshot(m.To, true)
		}
		select {
		case dst.queue <- m:
		default:
			src.h.ReportUnreachable(m.To)
		}
	}
}

func copySnapshot(from, to Storage, meta raft.SnapshotMeta) error {
	rc, _, err := from.OpenSnapshot(meta.Index)
	if err != nil {
		return err
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, rc); err != nil {
		return err
	}
	return to.SaveSnapshot(meta, &buf)
}
