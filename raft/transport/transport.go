package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-db/cairn/raft"
)

// Transport carries Raft messages between the nodes of one cluster over
// TCP. All methods are safe for concurrent use.
type Transport struct {
	cfg    Config
	log    *slog.Logger
	ln     net.Listener
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu     sync.RWMutex
	closed bool
	peers  map[uint64]*peer
	conns  map[net.Conn]connOwner // every open connection, for Close
	wg     sync.WaitGroup         // every goroutine the Transport started

	stats counters
}

// connOwner says whom a connection belongs to, so RemovePeer, UpdatePeer
// and a peer's reconnection can close the right ones.
type connOwner struct {
	peer     uint64 // 0 for an inbound connection before its handshake
	kind     connKind
	outbound bool
}

// New starts a Transport: it begins accepting peer connections at once.
func New(cfg Config) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ln := cfg.Listener
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", cfg.ListenAddr)
		if err != nil {
			return nil, fmt.Errorf("transport: listen on %s: %w", cfg.ListenAddr, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Transport{
		cfg:    cfg,
		log:    cfg.Logger.With("node", cfg.ID),
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		peers:  make(map[uint64]*peer),
		conns:  make(map[net.Conn]connOwner),
	}
	t.spawn(t.acceptLoop)
	return t, nil
}

// Addr returns the address the Transport accepts connections on.
func (t *Transport) Addr() net.Addr { return t.ln.Addr() }

// AddPeer makes peer id reachable at addr. Adding a known peer updates its
// address, like UpdatePeer. The connection is opened on the first Send.
func (t *Transport) AddPeer(id uint64, addr string) {
	if id == raft.None || id == t.cfg.ID {
		t.log.Warn("transport: ignoring AddPeer for invalid peer", "peer", id, "addr", addr)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if p, ok := t.peers[id]; ok {
		t.updateLocked(p, addr)
		return
	}
	p := newPeer(t, id, addr)
	t.peers[id] = p
	t.spawnLocked(p.run)
}

// UpdatePeer changes the address of peer id. An open connection to the old
// address is closed; messages in flight on it may be lost.
func (t *Transport) UpdatePeer(id uint64, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok {
		t.updateLocked(p, addr)
	}
}

func (t *Transport) updateLocked(p *peer, addr string) {
	if !p.setAddr(addr) {
		return
	}
	for c, o := range t.conns {
		if o.outbound && o.peer == p.id && o.kind == kindMessages {
			c.Close()
		}
	}
}

// RemovePeer forgets peer id, stops its goroutines and closes its outbound
// connections, including a snapshot stream in progress. It does not wait
// for the goroutines to exit; Close does.
func (t *Transport) RemovePeer(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[id]
	if !ok {
		return
	}
	delete(t.peers, id)
	p.cancel()
	for c, o := range t.conns {
		if o.outbound && o.peer == id {
			c.Close()
		}
	}
}

// Send queues msgs for their recipients (Message.To) and returns without
// blocking. A message whose peer is unknown or whose queue is full is
// dropped, and ReportUnreachable is called: Raft retransmits, and the Raft
// loop must never wait on the network. MsgSnap messages are streamed on
// their own connection, and their outcome is always reported with
// ReportSnapshot, also when they are dropped; the exception is a MsgSnap
// sent while another is in flight to the same peer, which is dropped
// silently because the one in flight will report.
//
// The transport keeps references to the messages' Entries, Context and
// Snapshot until they are written; the caller must not modify them.
func (t *Transport) Send(msgs []raft.Message) {
	for i := range msgs {
		m := &msgs[i]
		t.mu.RLock()
		p, closed := t.peers[m.To], t.closed
		t.mu.RUnlock()
		if closed {
			t.stats.dropped.Add(uint64(len(msgs) - i))
			return
		}
		if p == nil {
			t.stats.dropped.Add(1)
			t.log.Debug("transport: dropping message to unknown peer", "peer", m.To, "type", m.Type)
			t.cfg.Handler.ReportUnreachable(m.To)
			if m.Type == raft.MsgSnap {
				// The leader waits for this before it retries (§7).
				t.cfg.Handler.ReportSnapshot(m.To, false)
			}
			continue
		}
		if m.Type == raft.MsgSnap {
			p.startSnapshot(*m)
			continue
		}
		select {
		case p.queue <- *m:
		default:
			t.stats.dropped.Add(1)
			t.cfg.Handler.ReportUnreachable(m.To)
		}
	}
}

// Close stops every goroutine the Transport started, closes the listener
// and all connections, and waits for the goroutines to exit. Queued
// messages are dropped. Close is idempotent.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.cancel()
	err := t.ln.Close()
	for c := range t.conns {
		c.Close()
	}
	clear(t.conns)
	for _, p := range t.peers {
		p.cancel()
	}
	clear(t.peers)
	t.mu.Unlock()
	t.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("transport: close listener: %w", err)
	}
	return nil
}

// spawn runs f in a goroutine that Close waits for. It reports false, and
// does not run f, once the Transport is closed.
func (t *Transport) spawn(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.spawnLocked(f)
}

func (t *Transport) spawnLocked(f func()) bool {
	if t.closed {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f()
	}()
	return true
}

// track registers c so Close closes it. It closes c and reports false if
// the Transport is already closed.
func (t *Transport) track(c net.Conn, o connOwner) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		c.Close()
		return false
	}
	t.conns[c] = o
	return true
}

// retag records the peer of an inbound connection after its handshake and
// closes older inbound message connections from the same peer: a peer
// has one writer, so a new connection means the old one is dead, and
// closing it stops its reader from delivering stale messages.
func (t *Transport) retag(c net.Conn, o connOwner) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.conns[c]; !ok {
		return false
	}
	if o.kind == kindMessages {
		for old, oo := range t.conns {
			if old != c && !oo.outbound && oo.peer == o.peer && oo.kind == kindMessages {
				old.Close()
				delete(t.conns, old)
			}
		}
	}
	t.conns[c] = o
	return true
}

// untrack closes c and forgets it.
func (t *Transport) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	c.Close()
}

// acceptLoop accepts peer connections until the listener is closed.
func (t *Transport) acceptLoop() {
	var delay time.Duration
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry,
			// as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.log.Warn("transport: accept failed", "err", err, "retry_in", delay)
			timer := time.NewTimer(delay)
			select {
			case <-t.ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			continue
		}
		delay = 0
		if !t.track(c, connOwner{}) {
			return
		}
		if !t.spawn(func() { t.serveConn(c) }) {
			t.untrack(c)
			return
		}
	}
}

// serveConn runs the acceptor side of the handshake and then serves the
// connection according to its kind.
func (t *Transport) serveConn(c net.Conn) {
	defer t.untrack(c)
	remote := c.RemoteAddr().String()
	c.SetDeadline(time.Now().Add(t.cfg.DialTimeout))
	var hb [helloSize]byte
	if _, err := io.ReadFull(c, hb[:]); err != nil {
		if err == io.EOF {
			return // a probe or a peer that gave up; nothing to report
		}
		t.reject(remote, 0, "handshake", err)
		return
	}
	h, err := parseHello(&hb)
	if err != nil {
		t.reject(remote, 0, "handshake", err)
		return
	}
	r := reply{version: protocolVersion, cluster: t.cfg.ClusterID, id: t.cfg.ID}
	switch {
	case h.version != protocolVersion:
		r.status = statusBadVersion
		err = fmt.Errorf("%w: peer speaks version %d, we speak %d", ErrVersion, h.version, protocolVersion)
	case h.cluster != t.cfg.ClusterID:
		r.status = statusClusterMismatch
		err = fmt.Errorf("%w: peer is in cluster %d, we are in cluster %d", ErrClusterMismatch, h.cluster, t.cfg.ClusterID)
	case h.to != t.cfg.ID:
		r.status = statusWrongNode
		err = fmt.Errorf("%w: peer dialed node %d, we are node %d", ErrWrongNode, h.to, t.cfg.ID)
	case h.from == raft.None || h.from == t.cfg.ID:
		r.status = statusBadSender
		err = fmt.Errorf("%w: invalid sender id %d", ErrProtocol, h.from)
	case h.kind != kindMessages && h.kind != kindSnapshot:
		r.status = statusBadKind
		err = fmt.Errorf("%w: unknown connection kind %d", ErrProtocol, h.kind)
	}
	rb := r.marshal()
	if _, werr := c.Write(rb[:]); werr != nil && err == nil {
		err = fmt.Errorf("handshake reply: %w", werr)
	}
	if err != nil {
		t.reject(remote, h.from, "handshake", err)
		return
	}
	c.SetDeadline(time.Time{})
	if !t.retag(c, connOwner{peer: h.from, kind: h.kind}) {
		return
	}
	t.log.Debug("transport: accepted connection", "remote", remote, "peer", h.from, "kind", h.kind)
	switch h.kind {
	case kindMessages:
		t.readMessages(c, h.from, remote)
	case kindSnapshot:
		t.receiveSnapshot(c, h.from, remote)
	}
}

// reject logs why an inbound connection is being closed.
func (t *Transport) reject(remote string, peer uint64, stage string, err error) {
	if t.ctx.Err() != nil {
		return // closing: every connection fails, nothing to report
	}
	t.stats.rejected.Add(1)
	t.log.Warn("transport: closing inbound connection", "remote", remote, "peer", peer, "stage", stage, "reason", err)
}

// readMessages decodes batch frames from a peer and delivers their
// messages in order.
func (t *Transport) readMessages(c net.Conn, from uint64, remote string) {
	fr := frameReader{r: bufio.NewReaderSize(c, 64<<10), max: t.cfg.MaxMessageSize}
	deliver := func(m raft.Message) error {
		if err := t.checkInbound(&m, from); err != nil {
			return err
		}
		t.stats.msgsRecv.Add(1)
		if err := t.cfg.Handler.Process(t.ctx, m); err != nil && t.ctx.Err() == nil {
			t.log.Debug("transport: handler refused message", "peer", from, "type", m.Type, "err", err)
		}
		return nil
	}
	for {
		typ, payload, err := fr.next()
		if err != nil {
			if !isProtocolErr(err) {
				// The peer went away (closed, crashed, reset) or we
				// are closing: not its fault, nothing to warn about.
				t.log.Debug("transport: inbound connection ended", "remote", remote, "peer", from, "err", err)
				return
			}
			t.reject(remote, from, "read frame", err)
			return
		}
		t.stats.framesRecv.Add(1)
		t.stats.bytesRecv.Add(uint64(frameHeaderSize + len(payload)))
		if typ != frameBatch {
			t.reject(remote, from, "read frame", fmt.Errorf("%w: frame type %d on a message connection", ErrProtocol, typ))
			return
		}
		if err := decodeBatch(payload, deliver); err != nil {
			t.reject(remote, from, "decode batch", err)
			return
		}
		if cap(fr.buf) > 2*targetFrameSize {
			fr.buf = nil // do not pin a rare huge frame's buffer per connection
		}
		if t.ctx.Err() != nil {
			return
		}
	}
}

// isProtocolErr tells a misbehaving peer from a failing connection.
func isProtocolErr(err error) bool {
	return errors.Is(err, ErrProtocol) || errors.Is(err, ErrChecksum) || errors.Is(err, ErrFrameTooLarge)
}

// checkInbound rejects messages a peer may not send us.
func (t *Transport) checkInbound(m *raft.Message, from uint64) error {
	switch {
	case m.From != from:
		return fmt.Errorf("%w: %s claims sender %d on a connection from node %d", ErrProtocol, m.Type, m.From, from)
	case m.To != t.cfg.ID:
		return fmt.Errorf("%w: %s addressed to node %d arrived at node %d", ErrProtocol, m.Type, m.To, t.cfg.ID)
	case m.Type.IsLocal():
		return fmt.Errorf("%w: local message type %s from the network", ErrProtocol, m.Type)
	case m.Type == raft.MsgSnap:
		return fmt.Errorf("%w: MsgSnap outside a snapshot stream", ErrProtocol)
	case m.Snapshot != nil:
		return fmt.Errorf("%w: %s carries a snapshot", ErrProtocol, m.Type)
	}
	return nil
}

// Stats are cumulative counters since New, for metrics.
type Stats struct {
	MessagesSent     uint64 // messages written to peers (excluding MsgSnap)
	MessagesReceived uint64 // messages delivered to Handler.Process (excluding MsgSnap)
	BytesSent        uint64 // frame bytes written, headers and snapshot chunks included
	BytesReceived    uint64 // frame bytes read, headers and snapshot chunks included
	FramesSent       uint64 // batch frames written
	FramesReceived   uint64 // batch frames read
	Dropped          uint64 // messages dropped: unknown peer, full queue, failed write, too large, closed
	Reconnects       uint64 // outbound message connections opened after an earlier one to the same peer
	DialFailures     uint64 // failed outbound connection attempts (dial or handshake)
	SnapshotsSent    uint64 // snapshots the receiver acknowledged
	SnapshotsFailed  uint64 // snapshots that failed to send
	SnapshotsSaved   uint64 // snapshots received, saved and processed
	RejectedConns    uint64 // inbound connections closed for protocol violations
}

type counters struct {
	msgsSent, msgsRecv, bytesSent, bytesRecv, framesSent, framesRecv atomic.Uint64
	dropped, reconnects, dialFailures                                atomic.Uint64
	snapsSent, snapsFailed, snapsSaved, rejected                     atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (t *Transport) Stats() Stats {
	s := &t.stats
	return Stats{
		MessagesSent:     s.msgsSent.Load(),
		MessagesReceived: s.msgsRecv.Load(),
		BytesSent:        s.bytesSent.Load(),
		BytesReceived:    s.bytesRecv.Load(),
		FramesSent:       s.framesSent.Load(),
		FramesReceived:   s.framesRecv.Load(),
		Dropped:          s.dropped.Load(),
		Reconnects:       s.reconnects.Load(),
		DialFailures:     s.dialFailures.Load(),
		SnapshotsSent:    s.snapsSent.Load(),
		SnapshotsFailed:  s.snapsFailed.Load(),
		SnapshotsSaved:   s.snapsSaved.Load(),
		RejectedConns:    s.rejected.Load(),
	}
}
