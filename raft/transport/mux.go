package transport

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// MuxOptions configures a Mux. Zero values get the defaults named in the
// comments.
type MuxOptions struct {
	// Logger receives connection events. Default: discard.
	Logger *slog.Logger
	// HelloTimeout bounds how long an accepted connection may take to
	// send its 32-byte hello, and how long a routed connection may wait
	// for room in its group's accept queue. Default 5s.
	HelloTimeout time.Duration
}

const (
	defaultHelloTimeout = 5 * time.Second
	// muxQueueSize bounds the connections routed to one group and not
	// yet taken by its Accept.
	muxQueueSize = 64
)

// ErrMuxClosed is returned by Mux.Listener after Close. It wraps
// net.ErrClosed.
var ErrMuxClosed = fmt.Errorf("transport: mux closed: %w", net.ErrClosed)

// ErrClusterRegistered is returned by Mux.Listener for a cluster ID that
// already has an open listener.
var ErrClusterRegistered = errors.New("transport: cluster already registered with the mux")

// Mux lets the Transports of many Raft groups share one listener. Each
// group's Transport gets its own net.Listener from Listener(clusterID) and
// is configured with that cluster ID; the Mux reads the hello of every
// incoming connection, and hands the connection, hello included, to the
// listener of the cluster the hello names. A connection for a cluster
// without a listener is refused with the handshake's cluster-mismatch
// reply, as a Transport of another cluster would refuse it.
//
// The Mux owns a connection only until its group's Accept returns it.
// All methods are safe for concurrent use.
type Mux struct {
	ln           net.Listener
	log          *slog.Logger
	helloTimeout time.Duration
	done         chan struct{} // closed by Close

	mu      sync.Mutex
	closed  bool
	subs    map[uint64]*muxListener
	pending map[net.Conn]struct{} // connections whose hello is being read
	wg      sync.WaitGroup        // the accept loop and every connection goroutine
}

// NewMux starts accepting on ln at once. The Mux owns ln and closes it on
// Close.
func NewMux(ln net.Listener, opts MuxOptions) *Mux {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.HelloTimeout <= 0 {
		opts.HelloTimeout = defaultHelloTimeout
	}
	m := &Mux{
		ln:           ln,
		log:          opts.Logger,
		helloTimeout: opts.HelloTimeout,
		done:         make(chan struct{}),
		subs:         make(map[uint64]*muxListener),
		pending:      make(map[net.Conn]struct{}),
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.acceptLoop()
	}()
	return m
}

// Addr returns the address of the shared listener. It is also the Addr of
// every listener the Mux hands out, and the address peers dial for any
// group hosted here.
func (m *Mux) Addr() net.Addr { return m.ln.Addr() }

// Listener registers clusterID and returns the listener whose Accept
// yields the connections whose hello names that cluster. Closing it
// unregisters the cluster: its queued connections are closed, and later
// connections for it are refused like those of an unknown cluster. The
// cluster can then be registered again. Listener fails with
// ErrClusterRegistered if the cluster has an open listener, and with
// ErrMuxClosed after Close.
func (m *Mux) Listener(clusterID uint64) (net.Listener, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrMuxClosed
	}
	if _, ok := m.subs[clusterID]; ok {
		return nil, fmt.Errorf("%w: cluster %d", ErrClusterRegistered, clusterID)
	}
	l := &muxListener{
		m:       m,
		cluster: clusterID,
		queue:   make(chan net.Conn, muxQueueSize),
		done:    make(chan struct{}),
	}
	m.subs[clusterID] = l
	return l, nil
}

// Close closes the shared listener, every listener handed out (their
// Accept returns an error wrapping net.ErrClosed) and every connection not
// yet accepted, and waits for the Mux's goroutines to exit. Connections
// already accepted belong to their Transports and stay open. Close is
// idempotent.
func (m *Mux) Close() error {
	m.mu.Lock()
	err := m.shutdownLocked()
	m.mu.Unlock()
	m.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("transport: close mux listener: %w", err)
	}
	return nil
}

// shutdownLocked does Close's work except waiting. It also runs when the
// shared listener fails for good.
func (m *Mux) shutdownLocked() error {
	if m.closed {
		return nil
	}
	m.closed = true
	close(m.done)
	err := m.ln.Close()
	for c := range m.pending {
		c.Close()
	}
	clear(m.pending)
	for _, l := range m.subs {
		l.shutdown()
	}
	clear(m.subs)
	return err
}

// acceptLoop accepts connections until the shared listener is closed and
// starts a goroutine per connection, so a peer that is slow to send its
// hello holds up nobody.
func (m *Mux) acceptLoop() {
	var delay time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				m.log.Error("transport: mux listener closed underneath the mux; closing the mux", "err", err)
				m.mu.Lock()
				m.shutdownLocked()
				m.mu.Unlock()
				return
			}
			// Out of file descriptors and the like: wait and retry.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			m.log.Warn("transport: mux accept failed", "err", err, "retry_in", delay)
			timer := time.NewTimer(delay)
			select {
			case <-m.done:
				timer.Stop()
				return
			case <-timer.C:
			}
			continue
		}
		delay = 0
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			c.Close()
			return
		}
		m.pending[c] = struct{}{}
		m.wg.Add(1)
		m.mu.Unlock()
		go func() {
			defer m.wg.Done()
			m.serveConn(c)
		}()
	}
}

// serveConn reads the hello of c and routes c by its cluster.
func (m *Mux) serveConn(c net.Conn) {
	remote := c.RemoteAddr().String()
	c.SetDeadline(time.Now().Add(m.helloTimeout))
	var hb [helloSize]byte
	n, err := io.ReadFull(c, hb[:])
	if err != nil {
		m.forget(c)
		switch {
		case m.isClosed():
		case n == 0 && err == io.EOF:
			// A probe or a peer that gave up; nothing to report.
			m.log.Debug("transport: mux connection closed before its hello", "remote", remote)
		default:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				err = fmt.Errorf("no hello within %v (%d of %d bytes): %w", m.helloTimeout, n, helloSize, err)
			}
			m.log.Warn("transport: mux closing connection", "remote", remote, "reason", err)
		}
		c.Close()
		return
	}
	h, err := parseHello(&hb)
	if err != nil {
		m.forget(c)
		m.log.Warn("transport: mux closing connection", "remote", remote, "reason", err)
		c.Close()
		return
	}
	m.mu.Lock()
	l := m.subs[h.cluster]
	closed := m.closed
	delete(m.pending, c)
	m.mu.Unlock()
	if closed {
		c.Close() // Close closed it already, or missed it just now
		return
	}
	if l == nil {
		m.refuse(c, remote, h)
		return
	}
	// Hand the connection on as a fresh one: no deadline, and the hello
	// still to be read by the group's Transport.
	c.SetDeadline(time.Time{})
	if !l.deliver(&helloConn{Conn: c, hello: hb}, m.helloTimeout) {
		select {
		case <-m.done:
		case <-l.done:
			// Unregistered while we waited: refuse like an unknown
			// cluster so the dialer learns why.
			c.SetDeadline(time.Now().Add(m.helloTimeout))
			m.refuse(c, remote, h)
			return
		default:
			c.Close()
			m.log.Warn("transport: mux closing connection", "remote", remote, "cluster", h.cluster,
				"reason", fmt.Sprintf("accept queue of cluster %d full for %v", h.cluster, m.helloTimeout))
			return
		}
		c.Close()
		return
	}
	m.log.Debug("transport: mux routed connection", "remote", remote, "cluster", h.cluster, "peer", h.from, "kind", h.kind)
}

// refuse answers a hello naming a cluster not hosted here the way a
// Transport of another cluster would, and closes c. The reply's cluster ID
// is 0: no group of the dialer's cluster lives at this address. A hello of
// another protocol version gets a version refusal instead, because its
// cluster field may mean something else.
func (m *Mux) refuse(c net.Conn, remote string, h hello) {
	defer c.Close()
	r := reply{version: protocolVersion, status: statusClusterMismatch}
	reason := fmt.Errorf("%w: no group of cluster %d is hosted here", ErrClusterMismatch, h.cluster)
	if h.version != protocolVersion {
		r.status = statusBadVersion
		reason = fmt.Errorf("%w: peer speaks version %d, we speak %d", ErrVersion, h.version, protocolVersion)
	}
	rb := r.marshal()
	c.Write(rb[:]) // best effort: the connection is closed either way
	if !m.isClosed() {
		m.log.Warn("transport: mux refused connection", "remote", remote, "cluster", h.cluster, "peer", h.from, "reason", reason)
	}
}

func (m *Mux) forget(c net.Conn) {
	m.mu.Lock()
	delete(m.pending, c)
	m.mu.Unlock()
}

func (m *Mux) isClosed() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// muxListener is the net.Listener of one cluster on a Mux.
type muxListener struct {
	m       *Mux
	cluster uint64
	queue   chan net.Conn
	done    chan struct{} // closed when unregistered or the Mux closes
	once    sync.Once
}

// Accept waits for the next connection for this cluster. After Close, or
// after the Mux closed, it returns an error wrapping net.ErrClosed.
func (l *muxListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.queue:
		if l.isDone() {
			// Closed concurrently: a closed listener yields nothing.
			c.Close()
			return nil, l.closedErr()
		}
		return c, nil
	case <-l.done:
		return nil, l.closedErr()
	}
}

// Close unregisters the cluster and closes the connections queued for it.
// It never closes the Mux's shared listener.
func (l *muxListener) Close() error {
	l.m.mu.Lock()
	if l.m.subs[l.cluster] == l {
		delete(l.m.subs, l.cluster)
	}
	l.m.mu.Unlock()
	l.shutdown()
	return nil
}

// Addr returns the Mux's address.
func (l *muxListener) Addr() net.Addr { return l.m.Addr() }

func (l *muxListener) shutdown() {
	l.once.Do(func() { close(l.done) })
	l.drain()
}

// drain closes every queued connection.
func (l *muxListener) drain() {
	for {
		select {
		case c := <-l.queue:
			c.Close()
		default:
			return
		}
	}
}

// deliver queues c for Accept, waiting up to wait for room. It reports
// false, leaving c to the caller, if the queue stayed full or the listener
// or the Mux closed.
func (l *muxListener) deliver(c net.Conn, wait time.Duration) bool {
	select {
	case l.queue <- c:
	default:
		timer := time.NewTimer(wait)
		defer timer.Stop()
		select {
		case l.queue <- c:
		case <-l.done:
			return false
		case <-l.m.done:
			return false
		case <-timer.C:
			return false
		}
	}
	// If the listener closed while we queued c, its drain may have run
	// before c arrived: drain again so c is not stranded. Whoever takes c
	// from the queue closes it, so it is closed exactly once.
	if l.isDone() {
		l.drain()
	}
	return true
}

func (l *muxListener) isDone() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *muxListener) closedErr() error {
	return fmt.Errorf("transport: mux listener for cluster %d closed: %w", l.cluster, net.ErrClosed)
}

// helloConn is a routed connection whose hello the Mux already read: Read
// returns the hello bytes first, then reads the socket. Every other method
// is the socket's.
type helloConn struct {
	net.Conn
	hello [helloSize]byte

	replayed atomic.Bool // all hello bytes returned
	mu       sync.Mutex  // guards off
	off      int
}

func (c *helloConn) Read(p []byte) (int, error) {
	if !c.replayed.Load() {
		c.mu.Lock()
		if c.off < helloSize {
			n := copy(p, c.hello[c.off:])
			c.off += n
			if c.off == helloSize {
				c.replayed.Store(true)
			}
			c.mu.Unlock()
			return n, nil
		}
		c.mu.Unlock()
	}
	return c.Conn.Read(p)
}

// NetConn returns the underlying connection, as tls.Conn does.
func (c *helloConn) NetConn() net.Conn { return c.Conn }
