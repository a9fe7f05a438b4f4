package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-db/cairn/raft"
)

// peer is the sending side towards one remote node: a bounded queue
// drained by one writer goroutine that owns the persistent connection.
type peer struct {
	t      *Transport
	id     uint64
	queue  chan raft.Message
	ctx    context.Context // cancelled by RemovePeer and Close
	cancel context.CancelFunc
	// redial wakes a writer waiting out a backoff when the address
	// changes, so a moved peer is reached at once.
	redial chan struct{}

	mu   sync.Mutex
	addr string

	snapBusy atomic.Bool // a snapshot stream is in flight

	// Owned by the writer goroutine.
	rng *rand.Rand
	// The write deadline last set on deadlineConn (see refreshDeadline).
	deadlineConn net.Conn
	deadline     time.Time
}

func newPeer(t *Transport, id uint64, addr string) *peer {
	ctx, cancel := context.WithCancel(t.ctx)
	return &peer{
		t:      t,
		id:     id,
		queue:  make(chan raft.Message, t.cfg.QueueSize),
		ctx:    ctx,
		cancel: cancel,
		redial: make(chan struct{}, 1),
		addr:   addr,
		// Backoff jitter only spreads reconnection storms; it is not
		// protocol randomness, so a per-pair deterministic seed is fine
		// and keeps runs reproducible.
		rng: rand.New(rand.NewPCG(t.cfg.ID, id)),
	}
}

func (p *peer) getAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

// setAddr reports whether the address changed.
func (p *peer) setAddr(addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.addr == addr {
		return false
	}
	p.addr = addr
	select {
	case p.redial <- struct{}{}:
	default:
	}
	return true
}

// backoff returns the jittered delay before connection attempt n+1 after
// n consecutive failures (n >= 1).
func (p *peer) backoff(n int) time.Duration {
	lo, hi := p.t.cfg.BackoffMin, p.t.cfg.BackoffMax
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	if d <= 1 {
		return d
	}
	return d/2 + time.Duration(p.rng.Int64N(int64(d/2)+1))
}

// run is the writer goroutine: it waits for a message, makes sure there is
// a connection, takes everything else already queued, and writes it all as
// batch frames with one flush.
func (p *peer) run() {
	t := p.t
	var (
		conn      net.Conn
		bw        *bufio.Writer
		connAddr  string
		failures  int  // consecutive failures since the last good write
		connected bool // a connection was ever established
		nextDial  time.Time
		lastErr   string
		batch     []raft.Message
		buf       []byte
		lastWrite time.Time // when the last batch was written
	)
	defer func() {
		if conn != nil {
			t.untrack(conn)
		}
	}()
	fail := func(err error) {
		failures++
		nextDial = time.Now().Add(p.backoff(failures))
		n := len(batch) + p.drop()
		batch = batch[:0]
		t.stats.dropped.Add(uint64(n))
		// Log a failure when it starts or changes, not on every retry
		// of a peer that is simply down.
		level, msg := slog.LevelDebug, err.Error()
		if msg != lastErr {
			level = slog.LevelWarn
			lastErr = msg
		}
		t.log.Log(p.ctx, level, "transport: peer unreachable", "peer", p.id, "addr", connAddr, "dropped", n, "failures", failures, "err", err)
		t.cfg.Handler.ReportUnreachable(p.id)
	}
	for {
		var first raft.Message
		select {
		case <-p.ctx.Done():
			return
		case first = <-p.queue:
		}
		batch = append(batch[:0], first)
		if conn != nil && p.getAddr() != connAddr {
			t.untrack(conn)
			conn = nil
		}
		if conn == nil {
			if !p.waitUntil(nextDial) {
				return
			}
			connAddr = p.getAddr()
			c, err := p.connect(kindMessages, connAddr)
			if err != nil {
				if p.ctx.Err() != nil {
					return
				}
				t.stats.dialFailures.Add(1)
				fail(err)
				continue
			}
			if connected {
				t.stats.reconnects.Add(1)
			}
			connected = true
			conn = c
			if bw == nil {
				bw = bufio.NewWriterSize(c, 64<<10)
			} else {
				bw.Reset(c)
			}
			t.log.Debug("transport: connected to peer", "peer", p.id, "addr", connAddr)
		}
		// Everything queued while we waited or dialed goes out in this
		// batch; the queue bound keeps it bounded.
		batch = p.drainInto(batch)
		if len(batch) < coalesceBelow && time.Since(lastWrite) < busyWithin {
			// Under load, let the goroutines that are ready to run (the
			// Raft loop, request handlers proposing) queue their
			// messages before the write: one syscall for several
			// messages, instead of a write per message. A write on
			// loopback costs more CPU than the whole encoding of a
			// small batch. Only under load: the yield puts this
			// goroutine behind everything runnable, which with one
			// client (other writers, the persister, runnable) delayed
			// each append by tens of microseconds.
			runtime.Gosched()
			batch = p.drainInto(batch)
		}
		var err error
		lastWrite = time.Now()
		buf, err = p.writeBatch(conn, bw, batch, buf)
		if err != nil {
			t.untrack(conn)
			conn = nil
			if p.ctx.Err() != nil {
				return
			}
			fail(fmt.Errorf("write to peer %d at %s: %w", p.id, connAddr, err))
			continue
		}
		failures, lastErr = 0, ""
		// Do not pin references to sent entries, nor a huge buffer.
		clear(batch)
		batch = batch[:0]
		if cap(buf) > 2*targetFrameSize {
			buf = nil // a rare huge message; do not pin its buffer
		}
	}
}

// coalesceBelow is the batch size under which the writer yields once
// before writing, to let more messages join the batch.
const coalesceBelow = 8

// busyWithin: a writer that wrote its previous batch less than this long
// ago is under load, and yields to coalesce (see run). One client's
// appends come a round trip (hundreds of microseconds) apart.
const busyWithin = 200 * time.Microsecond

// drainInto appends to batch everything already queued.
func (p *peer) drainInto(batch []raft.Message) []raft.Message {
	for {
		select {
		case m := <-p.queue:
			batch = append(batch, m)
		default:
			return batch
		}
	}
}

// drop empties the queue and returns how many messages it held.
func (p *peer) drop() int {
	n := 0
	for {
		select {
		case <-p.queue:
			n++
		default:
			return n
		}
	}
}

// waitUntil waits for the backoff deadline, an address change or
// cancellation; it reports false when the peer is stopping.
func (p *peer) waitUntil(deadline time.Time) bool {
	d := time.Until(deadline)
	if d <= 0 {
		return p.ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.ctx.Done():
		return false
	case <-p.redial:
		return true
	case <-timer.C:
		return true
	}
}

// targetFrameSize is where the writer closes a batch frame and starts
// another: big enough that a frame header and CRC call are noise, small
// enough that the encode buffer and the receiver's read buffer are reused
// rather than reallocated. Frames are still one flush per batch.
const targetFrameSize = 1 << 20

// refreshDeadline moves conn's write deadline to WriteTimeout from now
// when less than three quarters of that is left, so a batch's write gets
// between 3/4 and all of WriteTimeout. Not on every batch: setting a
// deadline re-arms a runtime timer, which under load cost more than the
// rest of a batch's bookkeeping.
func (p *peer) refreshDeadline(conn net.Conn) {
	now := time.Now()
	w := p.t.cfg.WriteTimeout
	if conn == p.deadlineConn && p.deadline.Sub(now) > w-w/4 {
		return
	}
	p.deadline = now.Add(w)
	p.deadlineConn = conn
	conn.SetWriteDeadline(p.deadline)
}

// writeBatch encodes batch into frames of about targetFrameSize and at
// most MaxMessageSize payload bytes, writes them through bw and flushes. It returns the (possibly
// grown) encoding buffer for reuse. Each message is encoded once, directly
// into the frame buffer.
func (p *peer) writeBatch(conn net.Conn, bw *bufio.Writer, batch []raft.Message, buf []byte) ([]byte, error) {
	t := p.t
	limit := t.cfg.MaxMessageSize
	var frames, msgs, bytes int
	inFrame := 0
	buf = append(buf[:0], make([]byte, frameHeaderSize)...)
	emit := func(frame []byte) error {
		putFrameHeader(frame, frameBatch)
		if _, err := bw.Write(frame); err != nil {
			return err
		}
		frames++
		msgs += inFrame
		bytes += len(frame)
		return nil
	}
	p.refreshDeadline(conn)
	for i := range batch {
		start := len(buf)
		buf = append(buf, 0, 0, 0, 0)
		buf = raft.AppendMessage(buf, &batch[i])
		n := len(buf) - start - msgHeaderSize
		binary.LittleEndian.PutUint32(buf[start:], uint32(n))
		if n+msgHeaderSize > limit {
			buf = buf[:start]
			t.stats.dropped.Add(1)
			t.log.Error("transport: dropping message larger than MaxMessageSize",
				"peer", p.id, "type", batch[i].Type, "size", n+msgHeaderSize, "limit", limit,
				"err", ErrFrameTooLarge)
			continue
		}
		if len(buf)-frameHeaderSize > limit {
			// This message overflows the frame: send the frame without
			// it, then move it to the front of the next one.
			if err := emit(buf[:start]); err != nil {
				return buf, err
			}
			m := copy(buf[frameHeaderSize:], buf[start:])
			buf = buf[:frameHeaderSize+m]
			inFrame = 0
		}
		inFrame++
		if len(buf)-frameHeaderSize >= targetFrameSize {
			// Keep frames near the target so the buffers on both
			// sides stay reusable instead of growing per batch.
			if err := emit(buf); err != nil {
				return buf, err
			}
			buf, inFrame = buf[:frameHeaderSize], 0
		}
	}
	if inFrame > 0 {
		if err := emit(buf); err != nil {
			return buf, err
		}
	}
	if err := bw.Flush(); err != nil {
		return buf, err
	}
	t.stats.framesSent.Add(uint64(frames))
	t.stats.msgsSent.Add(uint64(msgs))
	t.stats.bytesSent.Add(uint64(bytes))
	return buf, nil
}

// connect dials the peer, registers the connection with the Transport and
// runs the dialer side of the handshake.
func (p *peer) connect(kind connKind, addr string) (net.Conn, error) {
	t := p.t
	ctx, cancel := context.WithTimeout(p.ctx, t.cfg.DialTimeout)
	defer cancel()
	c, err := t.cfg.Dialer(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial peer %d at %s: %w", p.id, addr, err)
	}
	if !t.track(c, connOwner{peer: p.id, kind: kind, outbound: true}) {
		return nil, ErrClosed
	}
	if p.ctx.Err() != nil { // removed while dialing: RemovePeer missed c
		t.untrack(c)
		return nil, ErrClosed
	}
	if err := p.handshake(c, kind, addr); err != nil {
		t.untrack(c)
		return nil, err
	}
	return c, nil
}

func (p *peer) handshake(c net.Conn, kind connKind, addr string) error {
	t := p.t
	c.SetDeadline(time.Now().Add(t.cfg.DialTimeout))
	h := hello{version: protocolVersion, kind: kind, cluster: t.cfg.ClusterID, from: t.cfg.ID, to: p.id}
	hb := h.marshal()
	if _, err := c.Write(hb[:]); err != nil {
		return fmt.Errorf("handshake with peer %d at %s: %w", p.id, addr, err)
	}
	var rb [replySize]byte
	if _, err := io.ReadFull(c, rb[:]); err != nil {
		return fmt.Errorf("handshake with peer %d at %s: %w", p.id, addr, err)
	}
	r, err := parseReply(&rb)
	if err != nil {
		return fmt.Errorf("handshake with peer %d at %s: %w", p.id, addr, err)
	}
	switch r.status {
	case statusOK:
	case statusClusterMismatch:
		return fmt.Errorf("%w: peer %d at %s is in cluster %d, we are in cluster %d", ErrClusterMismatch, p.id, addr, r.cluster, t.cfg.ClusterID)
	case statusWrongNode:
		return fmt.Errorf("%w: dialed node %d at %s but reached node %d", ErrWrongNode, p.id, addr, r.id)
	case statusBadVersion:
		return fmt.Errorf("%w: peer %d at %s speaks version %d, we speak %d", ErrVersion, p.id, addr, r.version, protocolVersion)
	default:
		return fmt.Errorf("%w: peer %d at %s refused the handshake with status %d", ErrProtocol, p.id, addr, r.status)
	}
	if r.id != p.id || r.cluster != t.cfg.ClusterID {
		return fmt.Errorf("%w: peer %d at %s accepted as node %d of cluster %d", ErrProtocol, p.id, addr, r.id, r.cluster)
	}
	c.SetDeadline(time.Time{})
	return nil
}
