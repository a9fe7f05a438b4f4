package transport

import (
	"bytes"
	"context"
	"errors"
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

// waitTimeout bounds every wait for an event; reaching it fails the test.
const waitTimeout = 10 * time.Second

type snapReport struct {
	id uint64
	ok bool
}

// testHandler records what the transport hands to the node.
type testHandler struct {
	msgs        chan raft.Message
	unreachable chan uint64
	snaps       chan snapReport
}

func newTestHandler() *testHandler {
	return &testHandler{
		msgs:        make(chan raft.Message, 1<<16),
		unreachable: make(chan uint64, 1<<16),
		snaps:       make(chan snapReport, 16),
	}
}

func (h *testHandler) Process(ctx context.Context, m raft.Message) error {
	select {
	case h.msgs <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *testHandler) ReportUnreachable(id uint64) {
	select {
	case h.unreachable <- id:
	default:
	}
}

func (h *testHandler) ReportSnapshot(id uint64, ok bool) {
	h.snaps <- snapReport{id, ok}
}

// logBuf collects log output for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitLog waits until the log contains every one of subs. Log lines are
// written before the event that follows them, so this mostly returns at
// once; the loop covers lines logged concurrently with the event.
func (l *logBuf) waitLog(t *testing.T, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		s := l.String()
		for _, line := range strings.Split(s, "\n") {
			all := true
			for _, sub := range subs {
				if !strings.Contains(line, sub) {
					all = false
					break
				}
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line contains all of %q; log:\n%s", subs, s)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

type node struct {
	tr  *Transport
	h   *testHandler
	log *logBuf
	id  uint64
}

func (n *node) addr() string { return n.tr.Addr().String() }

// newNode starts a transport on 127.0.0.1:0 (or cfg's address) with fast
// backoff; mod may change the config. Close runs at test cleanup.
func newNode(t *testing.T, id uint64, mod func(*Config)) *node {
	t.Helper()
	h := newTestHandler()
	lb := &logBuf{}
	cfg := Config{
		ID:         id,
		ClusterID:  7,
		ListenAddr: "127.0.0.1:0",
		Handler:    h,
		Logger:     slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})),
		BackoffMin: 5 * time.Millisecond,
		BackoffMax: 50 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%d): %v", id, err)
	}
	t.Cleanup(func() { tr.Close() })
	return &node{tr: tr, h: h, log: lb, id: id}
}

func connect(nodes ...*node) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.tr.AddPeer(b.id, b.addr())
			}
		}
	}
}

func recvMsg(t *testing.T, n *node) raft.Message {
	t.Helper()
	select {
	case m := <-n.h.msgs:
		return m
	case <-time.After(waitTimeout):
		t.Fatalf("node %d: no message within %v", n.id, waitTimeout)
	}
	panic("unreachable")
}

func recvSnap(t *testing.T, n *node) snapReport {
	t.Helper()
	select {
	case r := <-n.h.snaps:
		return r
	case <-time.After(waitTimeout):
		t.Fatalf("node %d: no ReportSnapshot within %v", n.id, waitTimeout)
	}
	panic("unreachable")
}

// sendUntil sends m every few milliseconds until done yields, for waits
// whose trigger is lossy by design (a dead connection eats a message).
func sendUntil[T any](t *testing.T, from *node, m raft.Message, done <-chan T) T {
	t.Helper()
	deadline := time.After(waitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		from.tr.Send([]raft.Message{m})
		select {
		case v := <-done:
			return v
		case <-tick.C:
		case <-deadline:
			t.Fatalf("node %d: condition not met within %v of sending %v", from.id, waitTimeout, m)
		}
	}
}

func heartbeat(from, to uint64) raft.Message {
	return raft.Message{Type: raft.MsgHeartbeat, From: from, To: to, Term: 1}
}

// checkNoLeaks registers a cleanup, run after every other cleanup, that
// waits for all goroutines running package code (not test code) to end:
// a stdlib-only version of goleak.
func checkNoLeaks(t *testing.T) {
	t.Cleanup(func() {
		deadline := time.Now().Add(waitTimeout)
		for {
			leaked := packageGoroutines()
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
			}
			runtime.Gosched()
			time.Sleep(time.Millisecond)
		}
	})
}

func packageGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			line = strings.TrimSpace(line)
			if strings.Contains(line, "/raft/transport/") && strings.Contains(line, ".go:") && !strings.Contains(line, "_test.go:") {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// gate is a Dialer that holds every dial until released.
type gate struct {
	release chan struct{}
	dialing chan struct{}
}

func newGate() *gate {
	return &gate{release: make(chan struct{}), dialing: make(chan struct{}, 64)}
}

func (g *gate) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	select {
	case g.dialing <- struct{}{}:
	default:
	}
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// expectClosed fails unless the server closes c (EOF or reset) in time.
func expectClosed(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server did not close the connection within %v", waitTimeout)
	}
	return b
}
