package chaos

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Faults is what a proxy does to the bytes of one directed link (src
// dials dst). The zero value forwards everything at once.
type Faults struct {
	// Delay holds every chunk this long (plus up to Jitter more) before
	// forwarding it. Order within a connection is kept.
	Delay, Jitter time.Duration
	// Loss is the probability, per forwarded chunk, that the connection
	// is cut (both ends reset): over TCP, losing a message means losing
	// the connection it was on, and the sender must reconnect and resend.
	Loss float64
	// Blackhole drops every byte silently, in both directions, on
	// connections src opened to dst: as if packets were dropped, the ends
	// see silence, not a reset. When the blackhole is lifted, connections
	// that lost bytes are closed (their streams have holes).
	Blackhole bool
}

func (f Faults) zero() bool { return f == Faults{} }

// Proxy is a fault-injecting TCP proxy. Each link listens on one address
// and forwards to a target; the faults applied depend on the link's
// destination name and on the source, named by a function of the remote
// address (a member's container IP, or "client"). Rules are directed: the
// source is the side that opened the connection.
type Proxy struct {
	srcName func(net.Addr) string

	mu     sync.Mutex
	rng    *rand.Rand
	links  map[string]*link
	rules  map[[2]string]Faults // {src, dst}; src "*" matches any source
	conns  map[*pconn]struct{}
	closed bool
	wg     sync.WaitGroup
}

type link struct {
	dst    string
	ln     net.Listener
	target string // "" refuses connections
}

// NewProxy returns a proxy with no links. srcName names the source of a
// connection from its remote address; seed drives the loss decisions.
func NewProxy(seed uint64, srcName func(net.Addr) string) *Proxy {
	return &Proxy{srcName: srcName, rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)),
		links: map[string]*link{}, rules: map[[2]string]Faults{}, conns: map[*pconn]struct{}{}}
}

// Listen adds a link named dst listening on addr (host:port, port 0 picks
// one) that forwards to target. It returns the listening address.
func (p *Proxy) Listen(dst, addr, target string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	l := &link{dst: dst, ln: ln, target: target}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		ln.Close()
		return "", net.ErrClosed
	}
	p.links[ln.Addr().String()] = l
	p.wg.Add(1)
	p.mu.Unlock()
	go p.accept(l)
	return ln.Addr().String(), nil
}

// SetTarget points the link listening on addr at target ("" refuses new
// connections); open connections through it are closed.
func (p *Proxy) SetTarget(addr, target string) {
	p.mu.Lock()
	var stale []*pconn
	if l, ok := p.links[addr]; ok && l.target != target {
		l.target = target
		for c := range p.conns {
			if c.link == l {
				stale = append(stale, c)
			}
		}
	}
	p.mu.Unlock()
	for _, c := range stale {
		c.close()
	}
}

// Set replaces the faults on connections from src to dst. src "*" means
// any source that has no rule of its own.
func (p *Proxy) Set(src, dst string, f Faults) {
	p.mu.Lock()
	if f.zero() {
		delete(p.rules, [2]string{src, dst})
	} else {
		p.rules[[2]string{src, dst}] = f
	}
	holed := p.holedLocked()
	p.mu.Unlock()
	for _, c := range holed {
		c.close()
	}
}

// Heal removes every rule.
func (p *Proxy) Heal() {
	p.mu.Lock()
	clear(p.rules)
	holed := p.holedLocked()
	p.mu.Unlock()
	for _, c := range holed {
		c.close()
	}
}

// holedLocked returns connections that dropped bytes and are no longer
// blackholed: they must be closed, not resumed.
func (p *Proxy) holedLocked() []*pconn {
	var out []*pconn
	for c := range p.conns {
		if c.holed.Load() && !p.faultsLocked(c.src, c.dst).Blackhole {
			out = append(out, c)
		}
	}
	return out
}

func (p *Proxy) faultsLocked(src, dst string) Faults {
	if f, ok := p.rules[[2]string{src, dst}]; ok {
		return f
	}
	return p.rules[[2]string{"*", dst}]
}

func (p *Proxy) faults(src, dst string) Faults {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faultsLocked(src, dst)
}

func (p *Proxy) lose(prob float64) bool {
	if prob <= 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rng.Float64() < prob
}

func (p *Proxy) jitter(j time.Duration) time.Duration {
	if j <= 0 {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Duration(p.rng.Int64N(int64(j)))
}

// Close stops every link and connection and waits for them.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	var conns []*pconn
	for c := range p.conns {
		conns = append(conns, c)
	}
	for _, l := range p.links {
		l.ln.Close()
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	p.wg.Wait()
}

func (p *Proxy) accept(l *link) {
	defer p.wg.Done()
	for {
		in, err := l.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := l.target
		if p.closed || target == "" {
			p.mu.Unlock()
			in.Close()
			continue
		}
		c := &pconn{p: p, link: l, src: p.srcName(in.RemoteAddr()), dst: l.dst, in: in, done: make(chan struct{})}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go c.run(target)
	}
}

// pconn is one proxied connection.
type pconn struct {
	p        *Proxy
	link     *link
	src, dst string
	in, out  net.Conn
	outMu    sync.Mutex
	holed    atomic.Bool
	once     sync.Once
	done     chan struct{}
}

func (c *pconn) close() {
	c.once.Do(func() {
		close(c.done)
		c.in.Close()
		c.outMu.Lock()
		if c.out != nil {
			c.out.Close()
		}
		c.outMu.Unlock()
	})
}

func (c *pconn) run(target string) {
	defer c.p.wg.Done()
	defer func() {
		c.close()
		c.p.mu.Lock()
		delete(c.p.conns, c)
		c.p.mu.Unlock()
	}()
	// A blackholed link never reaches the target: the dialer sees a
	// connection that accepts and then says nothing, like dropped SYN-ACKs
	// would look after the handshake.
	for c.p.faults(c.src, c.dst).Blackhole {
		c.holed.Store(true)
		if !c.drain(c.in) {
			return
		}
	}
	if c.holed.Load() {
		return
	}
	out, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		return
	}
	c.outMu.Lock()
	c.out = out
	c.outMu.Unlock()
	select {
	case <-c.done:
		return
	default:
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.pipe(c.in, out) }()
	go func() { defer wg.Done(); c.pipe(out, c.in) }()
	wg.Wait()
}

// drain reads and discards one chunk; false when the connection ended.
func (c *pconn) drain(r io.Reader) bool {
	buf := make([]byte, 32<<10)
	_, err := r.Read(buf)
	return err == nil
}

type chunk struct {
	b  []byte
	at time.Time
}

// pipe copies r to w, applying the link's faults chunk by chunk. A writer
// goroutine releases chunks when their delay is over, in order.
func (c *pconn) pipe(r io.Reader, w io.Writer) {
	q := make(chan chunk, 256)
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		for ch := range q {
			if d := time.Until(ch.at); d > 0 {
				select {
				case <-time.After(d):
				case <-c.done:
					return
				}
			}
			if _, err := w.Write(ch.b); err != nil {
				c.close()
				return
			}
		}
	}()
	eof := c.read(r, q)
	close(q)
	if eof {
		// Pass the end of the stream on once the queued data is out.
		select {
		case <-wdone:
		case <-c.done:
		}
	}
	c.close()
	<-wdone
}

// read queues chunks from r until the connection ends or a fault cuts it.
// It reports whether r ended with EOF.
func (c *pconn) read(r io.Reader, q chan<- chunk) bool {
	var last time.Time
	for {
		buf := make([]byte, 32<<10)
		n, err := r.Read(buf)
		if n > 0 {
			f := c.p.faults(c.src, c.dst)
			switch {
			case f.Blackhole:
				c.holed.Store(true)
				continue
			case c.holed.Load():
				return false // the stream has a hole: never resume it
			case c.p.lose(f.Loss):
				c.reset()
				return false
			}
			at := time.Now()
			if f.Delay > 0 || f.Jitter > 0 {
				at = at.Add(f.Delay + c.p.jitter(f.Jitter))
			}
			if at.Before(last) {
				at = last
			}
			last = at
			select {
			case q <- chunk{buf[:n], at}:
			case <-c.done:
				return false
			}
		}
		if err != nil {
			return errors.Is(err, io.EOF)
		}
	}
}

// reset makes the coming close send RSTs, as a lost connection would.
func (c *pconn) reset() {
	for _, conn := range []net.Conn{c.in, c.outConn()} {
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	}
}

func (c *pconn) outConn() net.Conn {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	return c.out
}
