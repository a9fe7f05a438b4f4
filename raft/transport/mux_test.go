package transport

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-db/cairn/raft"
)

type muxHost struct {
	mux *Mux
	log *logBuf
}

func (h *muxHost) addr() string { return h.mux.Addr().String() }

// newMuxHost starts a Mux on 127.0.0.1:0. Close runs at test cleanup,
// after the cleanups of the nodes created later.
func newMuxHost(t *testing.T, helloTimeout time.Duration) *muxHost {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb := &logBuf{}
	m := NewMux(ln, MuxOptions{
		Logger:       slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})),
		HelloTimeout: helloTimeout,
	})
	t.Cleanup(func() { m.Close() })
	return &muxHost{mux: m, log: lb}
}

// muxNode starts a Transport for node id of cluster on the Mux.
func muxNode(t *testing.T, h *muxHost, id, cluster uint64, mod func(*Config)) *node {
	t.Helper()
	ln, err := h.mux.Listener(cluster)
	if err != nil {
		t.Fatal(err)
	}
	return newNode(t, id, func(c *Config) {
		c.ClusterID = cluster
		c.ListenAddr = ""
		c.Listener = ln
		if mod != nil {
			mod(c)
		}
	})
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readReply reads a handshake reply from c.
func readReply(t *testing.T, c net.Conn) reply {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	var rb [replySize]byte
	if _, err := io.ReadFull(c, rb[:]); err != nil {
		t.Fatalf("reading reply: %v", err)
	}
	r, err := parseReply(&rb)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// sendUntilLog sends m every few milliseconds until from's log has a
// line containing all of subs.
func sendUntilLog(t *testing.T, from *node, m raft.Message, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		from.tr.Send([]raft.Message{m})
		for _, line := range strings.Split(from.log.String(), "\n") {
			all := true
			for _, sub := range subs {
				all = all && strings.Contains(line, sub)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line contains all of %q; log:\n%s", subs, from.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stillOpen reports whether the server has not closed c.
func stillOpen(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Two Raft groups whose node IDs coincide share one port per process; each
// group's messages reach only that group's Transport, in order.
func TestMuxGroupsShareOnePort(t *testing.T) {
	checkNoLeaks(t)
	h1, h2 := newMuxHost(t, 0), newMuxHost(t, 0)
	a1, b1 := muxNode(t, h1, 1, 100, nil), muxNode(t, h1, 1, 200, nil)
	a2, b2 := muxNode(t, h2, 2, 100, nil), muxNode(t, h2, 2, 200, nil)
	if a1.addr() != h1.addr() || b1.addr() != h1.addr() || a2.addr() != b2.addr() {
		t.Fatalf("addresses %s %s %s, mux %s", a1.addr(), b1.addr(), a2.addr(), h1.addr())
	}
	connect(a1, a2)
	connect(b1, b2)
	const n = 300
	pairs := []struct {
		from, to *node
		cluster  uint64
	}{{a1, a2, 100}, {a2, a1, 100}, {b1, b2, 200}, {b2, b1, 200}}
	for i := range n {
		for _, p := range pairs {
			// Commit tags the group, Index the order.
			p.from.tr.Send([]raft.Message{{Type: raft.MsgHeartbeat, From: p.from.id, To: p.to.id, Term: 1, Commit: p.cluster, Index: uint64(i)}})
		}
	}
	for _, p := range pairs {
		for i := range n {
			m := recvMsg(t, p.to)
			if m.Commit != p.cluster || m.Index != uint64(i) || m.From != p.from.id {
				t.Fatalf("cluster %d node %d: message %d is %v", p.cluster, p.to.id, i, m)
			}
		}
	}
	time.Sleep(50 * time.Millisecond)
	for _, nd := range []*node{a1, a2, b1, b2} {
		if len(nd.h.msgs) != 0 {
			t.Fatalf("node %d got %d extra messages", nd.id, len(nd.h.msgs))
		}
		if s := nd.tr.Stats(); s.Dropped != 0 || s.RejectedConns != 0 || s.DialFailures != 0 {
			t.Fatalf("node %d stats %+v", nd.id, s)
		}
	}
	h1.log.waitLog(t, "mux routed connection", "cluster=100")
	h1.log.waitLog(t, "mux routed connection", "cluster=200")
}

// Snapshot streams, which use their own connections, go through the Mux.
func TestMuxSnapshot(t *testing.T) {
	checkNoLeaks(t)
	h1, h2 := newMuxHost(t, 0), newMuxHost(t, 0)
	snap := seededSnapshot{seed: [32]byte{9}, size: 8 << 20}
	send, recv := &memStore{snap: snap}, &memStore{}
	a := muxNode(t, h1, 1, 100, func(c *Config) { c.Snapshots = send })
	b := muxNode(t, h2, 2, 100, func(c *Config) {
		c.Snapshots = recv
		c.Handler = orderHandler{newTestHandler(), recv}
	})
	b.h = b.tr.cfg.Handler.(orderHandler).testHandler
	other := muxNode(t, h2, 2, 200, nil) // same node ID, other group
	connect(a, b)
	a.tr.Send([]raft.Message{snapMsg(1, 2, 100)})
	if r := recvSnap(t, a); r != (snapReport{2, true}) {
		t.Fatalf("ReportSnapshot = %+v", r)
	}
	if m := recvMsg(t, b); m.Type != raft.MsgSnap || m.Snapshot.Meta.Index != 100 {
		t.Fatalf("processed %v", m)
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if recv.sizes[100] != snap.size || recv.saved[100] != snap.sum() {
		t.Fatalf("saved %d bytes, want %d", recv.sizes[100], snap.size)
	}
	if fmt.Sprint(recv.ordered) != "[saved processed]" {
		t.Fatalf("order %v", recv.ordered)
	}
	if len(other.h.msgs) != 0 {
		t.Fatal("the other group received a message")
	}
	h2.log.waitLog(t, "mux routed connection", "cluster=100", "kind=snapshot")
}

// A hello for a cluster no group here belongs to gets the cluster-mismatch
// reply: the dialing Transport fails with ErrClusterMismatch and logs it.
func TestMuxUnknownCluster(t *testing.T) {
	checkNoLeaks(t)
	h := newMuxHost(t, 0)
	a := muxNode(t, h, 1, 100, nil)
	x := newNode(t, 2, func(c *Config) { c.ClusterID = 300 })
	x.tr.AddPeer(1, h.addr())
	sendUntil(t, x, heartbeat(2, 1), x.h.unreachable)
	x.log.waitLog(t, "peer unreachable", "cluster ID mismatch", "peer 1", "is in cluster 0, we are in cluster 300")
	if s := x.tr.Stats(); s.DialFailures == 0 {
		t.Fatalf("dialer stats %+v", s)
	}
	h.log.waitLog(t, "mux refused connection", "cluster=300", "no group of cluster 300 is hosted here")
	if len(a.h.msgs) != 0 || a.tr.Stats().RejectedConns != 0 {
		t.Fatal("the hosted group saw the refused connection")
	}

	// The raw replies.
	c := dialRaw(t, h.addr())
	c.Write(validHello(300, 2, 1))
	if r := readReply(t, c); r.status != statusClusterMismatch || r.cluster != 0 {
		t.Fatalf("reply %+v", r)
	}
	expectClosed(t, c)
	c = dialRaw(t, h.addr())
	v := validHello(300, 2, 1)
	v[4] = 9
	c.Write(v)
	if r := readReply(t, c); r.status != statusBadVersion || r.version != protocolVersion {
		t.Fatalf("reply %+v", r)
	}
	expectClosed(t, c)
	// A hosted cluster with another version reaches its Transport, which
	// refuses it with the same precision as without a Mux.
	c = dialRaw(t, h.addr())
	v = validHello(100, 2, 1)
	v[4] = 9
	c.Write(v)
	if r := readReply(t, c); r.status != statusBadVersion || r.cluster != 100 || r.id != 1 {
		t.Fatalf("reply %+v", r)
	}
	a.log.waitLog(t, "closing inbound connection", "unsupported protocol version")
}

// Garbage, short hellos and silent connections are closed, and while they
// are open a good peer still gets through.
func TestMuxSlowAndGarbageConnections(t *testing.T) {
	checkNoLeaks(t)
	const helloTimeout = 3 * time.Second
	h := newMuxHost(t, helloTimeout)
	a := muxNode(t, h, 1, 100, nil)
	b := newNode(t, 2, func(c *Config) { c.ClusterID = 100 })
	silent := dialRaw(t, h.addr())
	short := dialRaw(t, h.addr())
	short.Write(validHello(100, 2, 1)[:20])
	start := time.Now()

	garbage := dialRaw(t, h.addr())
	garbage.Write(bytes.Repeat([]byte("garbage!"), 512))
	if got := expectClosed(t, garbage); len(got) != 0 {
		t.Fatalf("garbage got a reply %q", got)
	}
	h.log.waitLog(t, "mux closing connection", "remote="+garbage.LocalAddr().String(), "bad magic")

	probe := dialRaw(t, h.addr())
	probe.Close()
	h.log.waitLog(t, "mux connection closed before its hello")

	connect(a, b)
	sendUntil(t, b, heartbeat(2, 1), a.h.msgs)
	if !stillOpen(silent) || !stillOpen(short) {
		if time.Since(start) < helloTimeout {
			t.Fatal("slow connections closed before HelloTimeout")
		}
		t.Skipf("machine too slow: a good peer took over %v", helloTimeout)
	}
	a.tr.Send([]raft.Message{heartbeat(1, 2)})
	recvMsg(t, b)

	expectClosed(t, silent)
	expectClosed(t, short)
	if d := time.Since(start); d < helloTimeout-100*time.Millisecond {
		t.Fatalf("slow connections closed after %v, before HelloTimeout", d)
	}
	h.log.waitLog(t, "mux closing connection", "remote="+silent.LocalAddr().String(), "no hello within 3s (0 of 32 bytes)")
	h.log.waitLog(t, "mux closing connection", "remote="+short.LocalAddr().String(), "no hello within 3s (20 of 32 bytes)")
	if a.tr.Stats().RejectedConns != 0 {
		t.Fatal("a bad connection reached the Transport")
	}
}

// After a group's listener is closed, connections for its cluster are
// refused like an unknown cluster's, and the cluster can register again.
func TestMuxListenerCloseRefuses(t *testing.T) {
	checkNoLeaks(t)
	h := newMuxHost(t, 0)
	a := muxNode(t, h, 1, 100, nil)
	keep := muxNode(t, h, 1, 200, nil)
	b := newNode(t, 2, func(c *Config) { c.ClusterID = 100 })
	connect(a, b)
	sendUntil(t, b, heartbeat(2, 1), a.h.msgs)
	if _, err := h.mux.Listener(100); !errors.Is(err, ErrClusterRegistered) {
		t.Fatalf("duplicate Listener: %v", err)
	}

	a.tr.Close() // closes its listener
	c := dialRaw(t, h.addr())
	c.Write(validHello(100, 2, 1))
	if r := readReply(t, c); r.status != statusClusterMismatch {
		t.Fatalf("reply %+v", r)
	}
	// The first send may die on the connection the Transport closed; the
	// redial is refused.
	sendUntilLog(t, b, heartbeat(2, 1), "peer unreachable", "cluster ID mismatch", "is in cluster 0, we are in cluster 100")

	// The other group is unaffected, and cluster 100 can come back.
	k := newNode(t, 3, func(c *Config) { c.ClusterID = 200 })
	connect(keep, k)
	sendUntil(t, k, heartbeat(3, 1), keep.h.msgs)
	a2 := muxNode(t, h, 1, 100, nil)
	sendUntil(t, b, heartbeat(2, 1), a2.h.msgs)
}

// A group that does not Accept holds at most the queue size of
// connections; the rest are closed after HelloTimeout, and closing its
// listener closes the queued ones.
func TestMuxQueueFull(t *testing.T) {
	checkNoLeaks(t)
	h := newMuxHost(t, 300*time.Millisecond)
	ln, err := h.mux.Listener(500)
	if err != nil {
		t.Fatal(err)
	}
	const extra = 6
	conns := make([]net.Conn, muxQueueSize+extra)
	for i := range conns {
		conns[i] = dialRaw(t, h.addr())
		conns[i].Write(validHello(500, 2, 1))
	}
	deadline := time.Now().Add(waitTimeout)
	for strings.Count(h.log.String(), "accept queue of cluster 500 full") < extra {
		if time.Now().After(deadline) {
			t.Fatalf("log:\n%s", h.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for {
		open := 0
		for _, c := range conns {
			if stillOpen(c) {
				open++
			}
		}
		if open == muxQueueSize {
			break
		}
		if open < muxQueueSize || time.Now().After(deadline) {
			t.Fatalf("%d connections open, want %d", open, muxQueueSize)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A queued connection replays its hello.
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var hb [helloSize]byte
	if _, err := io.ReadFull(c, hb[:]); err != nil || !bytes.Equal(hb[:], validHello(500, 2, 1)) {
		t.Fatalf("replayed hello %x, %v", hb, err)
	}
	c.Close()
	ln.Close()
	for _, c := range conns {
		expectClosed(t, c)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}

// countStacks counts the goroutines whose stack mentions sub.
func countStacks(sub string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, sub) {
			n++
		}
	}
	return n
}

// Close ends the Mux's goroutines and every listener's Accept, closes
// connections whose hello is pending, and makes the Transports' accept
// loops end cleanly.
func TestMuxClose(t *testing.T) {
	checkNoLeaks(t)
	h := newMuxHost(t, time.Minute)
	a, b := muxNode(t, h, 1, 100, nil), muxNode(t, h, 1, 200, nil)
	peer := newNode(t, 2, func(c *Config) { c.ClusterID = 100 })
	connect(a, peer)
	sendUntil(t, peer, heartbeat(2, 1), a.h.msgs)
	idle, err := h.mux.Listener(300)
	if err != nil {
		t.Fatal(err)
	}
	acceptErr := make(chan error)
	go func() {
		_, err := idle.Accept()
		acceptErr <- err
	}()
	silent := dialRaw(t, h.addr())
	time.Sleep(20 * time.Millisecond) // let the Mux accept it; if not, Close still closes it

	done := make(chan error)
	go func() { done <- h.mux.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close hangs")
	}
	if err := <-acceptErr; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept returned %v", err)
	}
	expectClosed(t, silent)
	if _, err := h.mux.Listener(400); !errors.Is(err, ErrMuxClosed) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Listener after Close: %v", err)
	}
	if err := h.mux.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", h.addr()); err == nil {
		c.Close()
		t.Fatal("the shared port still accepts")
	}
	deadline := time.Now().Add(waitTimeout)
	for countStacks("(*Transport).acceptLoop(") != 1 { // the peer's own
		if time.Now().After(deadline) {
			t.Fatalf("Transport accept loops did not end: %d", countStacks("(*Transport).acceptLoop("))
		}
		time.Sleep(time.Millisecond)
	}
	if countStacks("(*Mux)") != 0 {
		t.Fatal("Mux goroutines left")
	}
	// Established connections belong to the Transport and still work.
	peer.tr.Send([]raft.Message{heartbeat(2, 1)})
	recvMsg(t, a)
	for _, n := range []*node{a, b} {
		if err := n.tr.Close(); err != nil {
			t.Fatalf("Transport.Close: %v", err)
		}
		if n.tr.Stats().RejectedConns != 0 {
			t.Fatal("rejected connections")
		}
	}
}

// If the shared listener is closed under the Mux, the Mux shuts down.
func TestMuxListenerClosedUnderneath(t *testing.T) {
	checkNoLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(ln, MuxOptions{})
	defer m.Close()
	sub, err := m.Listener(1)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := sub.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept: %v", err)
	}
	if _, err := m.Listener(2); !errors.Is(err, ErrMuxClosed) {
		t.Fatalf("Listener: %v", err)
	}
}

// helloConn replays the hello however it is read, then reads the socket;
// deadlines reach the socket.
func TestHelloConnReplay(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	hb := [helloSize]byte(validHello(5, 1, 2))
	c := &helloConn{Conn: server, hello: hb}
	defer c.Close()
	go client.Write([]byte("after"))
	var got []byte
	buf := make([]byte, 5)
	for len(got) < helloSize+5 {
		n, err := c.Read(buf[:1+len(got)%5])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if want := append(hb[:], "after"...); !bytes.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	c.SetReadDeadline(time.Now().Add(-time.Second))
	var ne net.Error
	if _, err := c.Read(buf); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past deadline: %v", err)
	}
	if c.NetConn() != server || c.RemoteAddr() != server.RemoteAddr() {
		t.Fatal("not delegated")
	}
}

// pipeListener is a net.Listener fed with net.Pipe connections.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// FuzzMuxHello feeds arbitrary bytes to the Mux's accept path. It never
// panics, and a connection is routed with its bytes intact exactly when it
// starts with a hello of a hosted cluster; any other full hello with a good
// magic gets a refusal reply, and everything else is closed silently.
func FuzzMuxHello(f *testing.F) {
	const hosted = 7
	pl := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	m := NewMux(pl, MuxOptions{HelloTimeout: 2 * time.Second})
	f.Cleanup(func() { m.Close() })
	sub, err := m.Listener(hosted)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(validHello(hosted, 1, 2))
	f.Add(append(validHello(hosted, 1, 2), batchFrame(heartbeat(1, 2))...))
	f.Add(validHello(8, 1, 2))
	f.Add(validHello(hosted, 1, 2)[:31])
	f.Add([]byte("CRNT"))
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		defer client.Close()
		pl.conns <- server
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			client.Write(data)
			if len(data) < helloSize {
				client.Close() // the Mux sees EOF instead of waiting
			}
		}()
		defer func() { client.Close(); <-wrote }()
		goodMagic := len(data) >= 4 && bytes.Equal(data[:4], magic[:])
		if len(data) >= helloSize && goodMagic && [8]byte(data[8:16]) == [8]byte(validHello(hosted, 0, 0)[8:16]) {
			c, err := sub.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(waitTimeout))
			got := make([]byte, len(data))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("routed connection read %x, %v; sent %x", got, err, data)
			}
			return
		}
		if len(data) < helloSize {
			<-wrote
			return
		}
		client.SetReadDeadline(time.Now().Add(waitTimeout))
		got, err := io.ReadAll(client)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if !goodMagic {
			if len(got) != 0 {
				t.Fatalf("bad magic answered %x", got)
			}
			return
		}
		if len(got) != replySize {
			t.Fatalf("refusal of %d bytes", len(got))
		}
		r, err := parseReply((*[replySize]byte)(got))
		want := uint8(statusClusterMismatch)
		if data[4] != protocolVersion {
			want = statusBadVersion
		}
		if err != nil || r.status != want {
			t.Fatalf("refusal %+v, %v", r, err)
		}
	})
}
