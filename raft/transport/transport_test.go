package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cairn-db/cairn/raft"
)

// Three transports exchange messages in every direction; each receiver
// sees each sender's messages complete and in order.
func TestExchangeOrdered(t *testing.T) {
	checkNoLeaks(t)
	nodes := []*node{newNode(t, 1, nil), newNode(t, 2, nil), newNode(t, 3, nil)}
	connect(nodes...)
	const perPeer = 500
	for i := 1; i <= perPeer; i++ {
		for _, a := range nodes {
			for _, b := range nodes {
				if a == b {
					continue
				}
				m := raft.Message{Type: raft.MsgApp, From: a.id, To: b.id, Term: 2, Index: uint64(i),
					Entries: []raft.Entry{{Term: 2, Index: uint64(i), Data: []byte("payload")}}}
				a.tr.Send([]raft.Message{m})
			}
		}
	}
	for _, b := range nodes {
		next := map[uint64]uint64{}
		for range 2 * perPeer {
			m := recvMsg(t, b)
			next[m.From]++
			if m.Index != next[m.From] || m.To != b.id || len(m.Entries) != 1 || string(m.Entries[0].Data) != "payload" {
				t.Fatalf("node %d: got %v (entries %v), want index %d from %d", b.id, m, m.Entries, next[m.From], m.From)
			}
		}
	}
	// A writer counts a batch after its flush, which may be after the
	// receiver saw it; Close waits for the writers.
	for _, n := range nodes {
		n.tr.Close()
	}
	for _, n := range nodes {
		s := n.tr.Stats()
		if s.MessagesSent != 2*perPeer || s.MessagesReceived != 2*perPeer || s.Dropped != 0 {
			t.Errorf("node %d stats: %+v", n.id, s)
		}
	}
}

// Messages queued while the writer is busy connecting go out as one frame.
func TestBatching(t *testing.T) {
	checkNoLeaks(t)
	g := newGate()
	a := newNode(t, 1, func(c *Config) { c.Dialer = g.dial })
	b := newNode(t, 2, nil)
	a.tr.AddPeer(2, b.addr())
	const n = 1000
	for i := range n {
		a.tr.Send([]raft.Message{{Type: raft.MsgApp, From: 1, To: 2, Index: uint64(i)}})
	}
	close(g.release)
	for i := range n {
		if m := recvMsg(t, b); m.Index != uint64(i) {
			t.Fatalf("message %d has index %d", i, m.Index)
		}
	}
	a.tr.Close() // the writer counts after its flush
	sa, sb := a.tr.Stats(), b.tr.Stats()
	if sa.MessagesSent != n || sa.FramesSent != 1 || sb.FramesReceived != 1 || sb.MessagesReceived != n {
		t.Fatalf("want %d messages in 1 frame; sender %+v receiver %+v", n, sa, sb)
	}
	if sa.BytesSent != sb.BytesReceived {
		t.Fatalf("sent %d bytes, received %d", sa.BytesSent, sb.BytesReceived)
	}
}

// A batch bigger than MaxMessageSize is split into several frames, each
// within the limit, without losing or reordering messages.
func TestBatchSplitsAtMaxMessageSize(t *testing.T) {
	checkNoLeaks(t)
	g := newGate()
	const limit = 8 << 10
	a := newNode(t, 1, func(c *Config) { c.Dialer = g.dial; c.MaxMessageSize = limit })
	b := newNode(t, 2, func(c *Config) { c.MaxMessageSize = limit })
	a.tr.AddPeer(2, b.addr())
	const n = 100
	data := bytes.Repeat([]byte("x"), 1000)
	for i := range n {
		a.tr.Send([]raft.Message{{Type: raft.MsgApp, From: 1, To: 2, Index: uint64(i), Entries: []raft.Entry{{Data: data}}}})
	}
	close(g.release)
	for i := range n {
		if m := recvMsg(t, b); m.Index != uint64(i) {
			t.Fatalf("message %d has index %d", i, m.Index)
		}
	}
	a.tr.Close()
	s := a.tr.Stats()
	// ~1030 bytes per message, so 7 per 8 KiB frame.
	if s.FramesSent < n/8 || s.FramesSent > n/6 || s.Dropped != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// Send never blocks: with the writer stuck dialing, a full queue drops
// messages and reports the peer unreachable.
func TestSendNeverBlocks(t *testing.T) {
	checkNoLeaks(t)
	g := newGate()
	a := newNode(t, 1, func(c *Config) { c.Dialer = g.dial; c.QueueSize = 8 })
	a.tr.AddPeer(2, "127.0.0.1:1")
	a.tr.Send([]raft.Message{heartbeat(1, 2)})
	select {
	case <-g.dialing: // the writer took the first message and is stuck
	case <-time.After(waitTimeout):
		t.Fatal("writer never dialed")
	}
	for range 20 {
		a.tr.Send([]raft.Message{heartbeat(1, 2)})
	}
	if s := a.tr.Stats(); s.Dropped != 12 {
		t.Fatalf("dropped %d, want 12 (20 sent into a queue of 8)", s.Dropped)
	}
	if got := len(a.h.unreachable); got != 12 {
		t.Fatalf("%d unreachable reports, want 12", got)
	}
	// Unknown peers are dropped too.
	a.tr.Send([]raft.Message{heartbeat(1, 9)})
	if id := <-a.h.unreachable; id != 2 {
		t.Fatalf("report for %d", id)
	}
	if s := a.tr.Stats(); s.Dropped != 13 {
		t.Fatalf("dropped %d, want 13", s.Dropped)
	}
	close(g.release) // let Close finish promptly
}

// A dead peer makes sends fail with ReportUnreachable; once it is back on
// the same address, traffic resumes over a new connection.
func TestReconnect(t *testing.T) {
	checkNoLeaks(t)
	a, b := newNode(t, 1, nil), newNode(t, 2, nil)
	connect(a, b)
	a.tr.Send([]raft.Message{heartbeat(1, 2)})
	recvMsg(t, b)
	addr := b.addr()
	if err := b.tr.Close(); err != nil {
		t.Fatal(err)
	}
	if id := sendUntil(t, a, heartbeat(1, 2), a.h.unreachable); id != 2 {
		t.Fatalf("unreachable report for %d", id)
	}
	a.log.waitLog(t, "peer unreachable", "peer=2")

	b2 := newNode(t, 2, func(c *Config) { c.ListenAddr = addr })
	b2.tr.AddPeer(1, a.addr())
	if m := sendUntil(t, a, heartbeat(1, 2), b2.h.msgs); m.From != 1 {
		t.Fatalf("got %v", m)
	}
	b2.tr.Send([]raft.Message{heartbeat(2, 1)})
	for m := recvMsg(t, a); m.From != 2; m = recvMsg(t, a) {
	}
	if s := a.tr.Stats(); s.Reconnects < 1 || s.Dropped == 0 {
		t.Fatalf("stats %+v", s)
	}
}

// UpdatePeer moves traffic to the new address.
func TestUpdatePeer(t *testing.T) {
	checkNoLeaks(t)
	a, b, b2 := newNode(t, 1, nil), newNode(t, 2, nil), newNode(t, 2, nil)
	a.tr.AddPeer(2, b.addr())
	a.tr.Send([]raft.Message{heartbeat(1, 2)})
	recvMsg(t, b)
	a.tr.UpdatePeer(2, b2.addr())
	sendUntil(t, a, heartbeat(1, 2), b2.h.msgs)
	a.tr.RemovePeer(2)
	a.tr.Send([]raft.Message{heartbeat(1, 2)})
	if id := <-a.h.unreachable; id != 2 {
		t.Fatalf("report for %d", id)
	}
}

// Peers of another cluster, or a stale address now serving another node,
// are refused at handshake with a clear error on both sides.
func TestHandshakeRefusals(t *testing.T) {
	checkNoLeaks(t)
	a := newNode(t, 1, nil)
	other := newNode(t, 2, func(c *Config) { c.ClusterID = 8 })
	a.tr.AddPeer(2, other.addr())
	sendUntil(t, a, heartbeat(1, 2), a.h.unreachable)
	a.log.waitLog(t, "peer unreachable", "cluster ID mismatch", "peer 2", "is in cluster 8, we are in cluster 7")
	other.log.waitLog(t, "closing inbound connection", "remote=", "cluster ID mismatch")

	c := newNode(t, 3, nil)
	a.tr.AddPeer(4, c.addr()) // node 3 listens where we expect 4
	sendUntil(t, a, heartbeat(1, 4), a.h.unreachable)
	a.log.waitLog(t, "reached the wrong node", "dialed node 4", "reached node 3")
	if len(other.h.msgs)+len(c.h.msgs) != 0 {
		t.Fatal("a refused peer delivered messages")
	}
}

func validHello(cluster, from, to uint64) []byte {
	h := hello{version: protocolVersion, kind: kindMessages, cluster: cluster, from: from, to: to}
	b := h.marshal()
	return b[:]
}

// Connections speaking garbage are closed with a warning naming the remote
// address and the reason; the transport keeps serving good peers.
func TestGarbageConnections(t *testing.T) {
	checkNoLeaks(t)
	a, b := newNode(t, 1, nil), newNode(t, 2, nil)
	connect(a, b)
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 4096)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	badMsg := appendFrame(nil, frameBatch, []byte{3, 0, 0, 0, 0xff, 0xff, 0xff})
	var spoof []byte
	{
		m := heartbeat(4, 2) // claims to be node 4 on node 3's connection
		p := binary.LittleEndian.AppendUint32(nil, uint32(len(raft.AppendMessage(nil, &m))))
		spoof = appendFrame(nil, frameBatch, raft.AppendMessage(p, &m))
	}
	local := func() []byte {
		m := raft.Message{Type: raft.MsgHup, From: 3, To: 2}
		p := binary.LittleEndian.AppendUint32(nil, uint32(len(raft.AppendMessage(nil, &m))))
		return appendFrame(nil, frameBatch, raft.AppendMessage(p, &m))
	}()
	badCRC := appendFrame(nil, frameBatch, []byte("abcdefgh"))
	badCRC[len(badCRC)-1] ^= 1
	huge := []byte{frameBatch, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0}
	wrongVersion := validHello(7, 3, 2)
	wrongVersion[4] = 9
	cases := []struct {
		name   string
		send   []byte
		reason string
	}{
		{"random bytes", random, "bad magic"},
		{"short hello", []byte("CRN"), "unexpected EOF"},
		{"wrong cluster", validHello(99, 1, 2), "cluster ID mismatch"},
		{"wrong version", wrongVersion, "unsupported protocol version"},
		{"wrong node", validHello(7, 1, 5), "reached the wrong node"},
		{"huge length", append(validHello(7, 3, 2), huge...), "frame of 2147483647 bytes, limit 16777216"},
		{"bad checksum", append(validHello(7, 3, 2), badCRC...), "checksum mismatch"},
		{"undecodable message", append(validHello(7, 3, 2), badMsg...), "corrupt encoding"},
		{"spoofed sender", append(validHello(7, 3, 2), spoof...), "claims sender 4"},
		{"local message", append(validHello(7, 3, 2), local...), "local message type MsgHup"},
		{"unknown frame type", append(validHello(7, 3, 2), 0x42, 0, 0, 0, 0, 0, 0, 0, 0), "unknown frame type 66"},
		{"random after hello", append(validHello(7, 3, 2), random...), "transport:"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", b.addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			if tc.name == "short hello" {
				c.(*net.TCPConn).CloseWrite()
			}
			expectClosed(t, c)
			b.log.waitLog(t, "closing inbound connection", "remote="+c.LocalAddr().String(), tc.reason)
			if got := b.tr.Stats().RejectedConns; got != uint64(i+1) {
				t.Fatalf("RejectedConns = %d, want %d", got, i+1)
			}
			// Good peers are unaffected.
			a.tr.Send([]raft.Message{{Type: raft.MsgHeartbeat, From: 1, To: 2, Index: uint64(i)}})
			if m := recvMsg(t, b); m.Index != uint64(i) {
				t.Fatalf("got %v", m)
			}
		})
	}
	if strings.Contains(b.log.String(), "panic") {
		t.Fatal("panic in log")
	}
}

// A message bigger than MaxMessageSize is dropped on the sending side with
// an error naming the peer and size; a receiver with a smaller limit than
// its sender disconnects it and names the size.
func TestMaxMessageSize(t *testing.T) {
	checkNoLeaks(t)
	big := raft.Message{Type: raft.MsgApp, From: 1, To: 2, Entries: []raft.Entry{{Data: make([]byte, 8<<10)}}}
	t.Run("sender", func(t *testing.T) {
		a := newNode(t, 1, func(c *Config) { c.MaxMessageSize = 4 << 10 })
		b := newNode(t, 2, nil)
		a.tr.AddPeer(2, b.addr())
		a.tr.Send([]raft.Message{big, heartbeat(1, 2)})
		if m := recvMsg(t, b); m.Type != raft.MsgHeartbeat {
			t.Fatalf("got %v", m)
		}
		a.log.waitLog(t, "larger than MaxMessageSize", "peer=2", "size=82", "limit=4096")
		a.tr.Close()
		if s := a.tr.Stats(); s.Dropped != 1 || s.MessagesSent != 1 {
			t.Fatalf("stats %+v", s)
		}
	})
	t.Run("receiver", func(t *testing.T) {
		a := newNode(t, 1, nil)
		b := newNode(t, 2, func(c *Config) { c.MaxMessageSize = 4 << 10 })
		a.tr.AddPeer(2, b.addr())
		a.tr.Send([]raft.Message{big})
		b.log.waitLog(t, "closing inbound connection", "peer=1", "frame of 82", "limit 4096")
		if m := sendUntil(t, a, heartbeat(1, 2), b.h.msgs); m.Type != raft.MsgHeartbeat {
			t.Fatalf("got %v", m)
		}
	})
}

// Close stops everything, even with traffic in flight and a handler that
// blocks until cancelled, and later calls are harmless.
func TestCloseNoLeaks(t *testing.T) {
	checkNoLeaks(t)
	// Node 2's handler blocks after one message, until Close cancels it.
	blocked := newTestHandler()
	blocked.msgs = make(chan raft.Message, 1)
	nodes := []*node{newNode(t, 1, nil), newNode(t, 2, func(c *Config) { c.Handler = blocked }), newNode(t, 3, nil)}
	nodes[1].h = blocked
	connect(nodes...)
	for i := range 3000 {
		for _, n := range nodes {
			to := n.id%3 + 1
			n.tr.Send([]raft.Message{{Type: raft.MsgApp, From: n.id, To: to, Index: uint64(i)}})
		}
	}
	recvMsg(t, nodes[1])                  // wait until traffic flows; node 1 -> 2 then blocks
	nodes[0].tr.AddPeer(9, "127.0.0.1:1") // unreachable: writer in backoff
	nodes[0].tr.Send([]raft.Message{heartbeat(1, 9)})
	for _, n := range nodes {
		if err := n.tr.Close(); err != nil {
			t.Fatal(err)
		}
		if err := n.tr.Close(); err != nil {
			t.Fatal(err)
		}
		n.tr.Send([]raft.Message{heartbeat(n.id, 2)})
		n.tr.AddPeer(5, "127.0.0.1:1")
	}
	// checkNoLeaks verifies at cleanup that every goroutine has ended. (A
	// goroutine may still be unwinding its deferred wg.Done for a moment
	// after Close returns, so the check polls, as goleak does.)
}

func TestConfigValidate(t *testing.T) {
	h := newTestHandler()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no id", Config{Handler: h, ListenAddr: ":0"}},
		{"no handler", Config{ID: 1, ListenAddr: ":0"}},
		{"no listener", Config{ID: 1, Handler: h}},
		{"tiny max", Config{ID: 1, Handler: h, ListenAddr: ":0", MaxMessageSize: 10}},
		{"chunk above max", Config{ID: 1, Handler: h, ListenAddr: ":0", MaxMessageSize: 4096, SnapshotChunkSize: 8192}},
		{"backoff", Config{ID: 1, Handler: h, ListenAddr: ":0", BackoffMin: time.Second, BackoffMax: time.Millisecond}},
	} {
		if err := tc.cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
	cfg := Config{ID: 1, Handler: h, ListenAddr: ":0"}
	if err := cfg.Validate(); err != nil || cfg.MaxMessageSize != 16<<20 || cfg.SnapshotChunkSize != 1<<20 {
		t.Fatalf("defaults: %v %+v", err, cfg)
	}
}

func TestBackoffBounds(t *testing.T) {
	tr := &Transport{cfg: Config{ID: 1, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}, ctx: context.Background()}
	p := newPeer(tr, 2, "")
	for n := 1; n < 100; n++ {
		want := min(100*time.Millisecond<<min(n-1, 20), time.Second)
		d := p.backoff(n)
		if d < want/2 || d > want {
			t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, want/2, want)
		}
	}
}

// A peer that accepts the connection and then stops reading: once the
// socket buffers are full the batch's write times out (WriteTimeout, whose
// deadline is moved only now and then), the writer reports the peer
// unreachable and dials again instead of hanging.
func TestStalledPeerWriteTimesOut(t *testing.T) {
	checkNoLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var hb [helloSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				c.Close()
				continue
			}
			r := reply{version: protocolVersion, status: statusOK, cluster: 7, id: 2}
			rb := r.marshal()
			c.Write(rb[:])
			conns <- c // and never read again
		}
	}()
	a := newNode(t, 1, func(c *Config) { c.WriteTimeout = 300 * time.Millisecond })
	a.tr.AddPeer(2, ln.Addr().String())
	big := raft.Message{Type: raft.MsgApp, From: 1, To: 2, Term: 1,
		Entries: []raft.Entry{{Term: 1, Index: 1, Data: make([]byte, 256<<10)}}}
	first := sendUntil(t, a, big, conns)
	defer first.Close()
	if id := sendUntil(t, a, big, a.h.unreachable); id != 2 {
		t.Fatalf("unreachable report for %d", id)
	}
	a.log.waitLog(t, "write to peer 2", "i/o timeout")
	second := sendUntil(t, a, big, conns)
	second.Close()
}
