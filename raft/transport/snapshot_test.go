package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

// seededSnapshot is a snapshot of a given size whose bytes come from a
// seeded generator, so neither side needs it in memory.
type seededSnapshot struct {
	seed [32]byte
	size int64
}

func (s seededSnapshot) reader() *seededReader {
	return &seededReader{g: rand.NewChaCha8(s.seed), left: s.size}
}

func (s seededSnapshot) sum() [32]byte {
	h := sha256.New()
	io.Copy(h, s.reader())
	return [32]byte(h.Sum(nil))
}

type seededReader struct {
	g       *rand.ChaCha8
	left    int64
	maxRead int // largest buffer a caller passed to Read
	closed  bool
}

func (r *seededReader) Read(p []byte) (int, error) {
	r.maxRead = max(r.maxRead, len(p))
	if r.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.left)]
	n, _ := r.g.Read(p)
	r.left -= int64(n)
	return n, nil
}

func (r *seededReader) Close() error { r.closed = true; return nil }

// memStore is a SnapshotStore that serves seeded snapshots and records a
// hash of what it saves.
type memStore struct {
	snap seededSnapshot

	mu      sync.Mutex
	opened  []*seededReader
	saved   map[uint64][32]byte // index -> sha256 of bytes saved
	sizes   map[uint64]int64
	errs    []error // errors SaveSnapshot saw or returned
	failAt  int64   // if > 0, SaveSnapshot fails after this many bytes
	ordered []string
}

func (s *memStore) OpenSnapshot(index uint64) (io.ReadCloser, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.snap.reader()
	s.opened = append(s.opened, r)
	return r, s.snap.size, nil
}

func (s *memStore) SaveSnapshot(meta raft.SnapshotMeta, r io.Reader) error {
	h := sha256.New()
	var src io.Reader = r
	if s.failAt > 0 {
		src = io.LimitReader(r, s.failAt)
	}
	n, err := io.Copy(h, src)
	if err == nil && s.failAt > 0 {
		err = fmt.Errorf("disk full after %d bytes", n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errs = append(s.errs, err)
		return err
	}
	if s.saved == nil {
		s.saved, s.sizes = map[uint64][32]byte{}, map[uint64]int64{}
	}
	s.saved[meta.Index] = [32]byte(h.Sum(nil))
	s.sizes[meta.Index] = n
	s.ordered = append(s.ordered, "saved")
	return nil
}

// orderHandler records Process calls next to the store's saves, to check
// that a snapshot is processed only after it is durable.
type orderHandler struct {
	*testHandler
	store *memStore
}

func (h orderHandler) Process(ctx context.Context, m raft.Message) error {
	if m.Type == raft.MsgSnap {
		h.store.mu.Lock()
		h.store.ordered = append(h.store.ordered, "processed")
		h.store.mu.Unlock()
	}
	return h.testHandler.Process(ctx, m)
}

func snapMsg(from, to, index uint64) raft.Message {
	return raft.Message{Type: raft.MsgSnap, From: from, To: to, Term: 3,
		Snapshot: &raft.Snapshot{Meta: raft.SnapshotMeta{Index: index, Term: 3,
			ConfState: raft.ConfState{Voters: []uint64{1, 2, 3}}}}}
}

func snapPair(t *testing.T, sendStore, recvStore *memStore, mod func(*Config)) (a, b *node) {
	a = newNode(t, 1, func(c *Config) {
		c.Snapshots = sendStore
		if mod != nil {
			mod(c)
		}
	})
	b = newNode(t, 2, func(c *Config) {
		c.Snapshots = recvStore
		c.Handler = orderHandler{newTestHandler(), recvStore}
	})
	b.h = b.tr.cfg.Handler.(orderHandler).testHandler
	connect(a, b)
	return a, b
}

// A 64 MiB snapshot streams from the sender's store to the receiver's
// byte for byte, in chunks, and is processed only after it was saved.
func TestSnapshotStream64MiB(t *testing.T) {
	checkNoLeaks(t)
	snap := seededSnapshot{seed: [32]byte{42}, size: 64 << 20}
	send, recv := &memStore{snap: snap}, &memStore{}
	a, b := snapPair(t, send, recv, nil)
	a.tr.Send([]raft.Message{snapMsg(1, 2, 100)})
	if r := recvSnap(t, a); r != (snapReport{2, true}) {
		t.Fatalf("ReportSnapshot = %+v", r)
	}
	m := recvMsg(t, b)
	if m.Type != raft.MsgSnap || m.Snapshot == nil || m.Snapshot.Meta.Index != 100 || len(m.Snapshot.Data) != 0 ||
		!m.Snapshot.Meta.ConfState.Equal(raft.ConfState{Voters: []uint64{1, 2, 3}}) {
		t.Fatalf("processed %v", m)
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if recv.sizes[100] != snap.size || recv.saved[100] != snap.sum() {
		t.Fatalf("saved %d bytes, want %d; hash match %v", recv.sizes[100], snap.size, recv.saved[100] == snap.sum())
	}
	if fmt.Sprint(recv.ordered) != "[saved processed]" {
		t.Fatalf("order %v", recv.ordered)
	}
	send.mu.Lock()
	defer send.mu.Unlock()
	if len(send.opened) != 1 || !send.opened[0].closed || send.opened[0].maxRead > 1<<20 {
		t.Fatalf("sender reads: %d opened, max read %d", len(send.opened), send.opened[0].maxRead)
	}
	if s := a.tr.Stats(); s.SnapshotsSent != 1 || s.BytesSent < uint64(snap.size) {
		t.Fatalf("sender stats %+v", s)
	}
	if s := b.tr.Stats(); s.SnapshotsSaved != 1 {
		t.Fatalf("receiver stats %+v", s)
	}
}

// Small snapshots carried in Snapshot.Data are streamed the same way,
// without touching the sender's store.
func TestSnapshotInlineData(t *testing.T) {
	checkNoLeaks(t)
	recv := &memStore{}
	a, b := snapPair(t, nil, recv, func(c *Config) { c.SnapshotChunkSize = 1000 })
	m := snapMsg(1, 2, 7)
	m.Snapshot.Data = bytes.Repeat([]byte("snapshot"), 1000)
	a.tr.Send([]raft.Message{m})
	if r := recvSnap(t, a); !r.ok {
		t.Fatal("snapshot failed")
	}
	recvMsg(t, b)
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if recv.saved[7] != sha256.Sum256(m.Snapshot.Data) {
		t.Fatal("saved bytes differ")
	}
}

// flipConn corrupts one byte of what it writes at a fixed stream offset.
type flipConn struct {
	net.Conn
	off, at int64
}

func (c *flipConn) Write(p []byte) (int, error) {
	if c.at >= c.off && c.at < c.off+int64(len(p)) {
		q := bytes.Clone(p)
		q[c.at-c.off] ^= 0x80
		p = q
	}
	c.off += int64(len(p))
	return c.Conn.Write(p)
}

// A chunk corrupted in flight fails its CRC: SaveSnapshot sees an error
// instead of EOF, the node never processes the snapshot, and the sender
// reports failure.
func TestSnapshotCorruptChunk(t *testing.T) {
	checkNoLeaks(t)
	snap := seededSnapshot{seed: [32]byte{1}, size: 1 << 20}
	send, recv := &memStore{snap: snap}, &memStore{}
	a, b := snapPair(t, send, recv, func(c *Config) {
		c.SnapshotChunkSize = 64 << 10
		c.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &flipConn{Conn: conn, at: 300 << 10}, nil // inside the fifth chunk
		}
	})
	a.tr.Send([]raft.Message{snapMsg(1, 2, 100)})
	if r := recvSnap(t, a); r != (snapReport{2, false}) {
		t.Fatalf("ReportSnapshot = %+v", r)
	}
	b.log.waitLog(t, "snapshot not installed", "checksum mismatch")
	a.log.waitLog(t, "sending snapshot failed", "peer=2")
	b.tr.Close() // no receive work can still be under way
	if len(b.h.msgs) != 0 {
		t.Fatalf("snapshot processed: %v", <-b.h.msgs)
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if len(recv.saved) != 0 || len(recv.errs) != 1 || !errors.Is(recv.errs[0], ErrChecksum) {
		t.Fatalf("store saved %d, errors %v", len(recv.saved), recv.errs)
	}
	if s := a.tr.Stats(); s.SnapshotsFailed != 1 || s.SnapshotsSent != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// A SaveSnapshot failure is reported to the sender, and the node never
// processes the snapshot.
func TestSnapshotSaveError(t *testing.T) {
	checkNoLeaks(t)
	snap := seededSnapshot{seed: [32]byte{2}, size: 4 << 20}
	send, recv := &memStore{snap: snap}, &memStore{failAt: 1 << 20}
	a, b := snapPair(t, send, recv, nil)
	a.tr.Send([]raft.Message{snapMsg(1, 2, 100)})
	if r := recvSnap(t, a); r != (snapReport{2, false}) {
		t.Fatalf("ReportSnapshot = %+v", r)
	}
	a.log.waitLog(t, "sending snapshot failed", "disk full after 1048576 bytes")
	b.tr.Close()
	if len(b.h.msgs) != 0 {
		t.Fatalf("snapshot processed: %v", <-b.h.msgs)
	}
	// A later snapshot to the same peer goes through again.
}

// A receiver without a store refuses; a sender without one cannot send
// a snapshot whose bytes live in the store.
func TestSnapshotNoStore(t *testing.T) {
	checkNoLeaks(t)
	a, b := newNode(t, 1, nil), newNode(t, 2, nil)
	connect(a, b)
	a.tr.Send([]raft.Message{snapMsg(1, 2, 5)})
	if r := recvSnap(t, a); r.ok {
		t.Fatal("snapshot without store succeeded")
	}
	m := snapMsg(1, 2, 5)
	m.Snapshot.Data = []byte("data")
	a.tr.Send([]raft.Message{m})
	if r := recvSnap(t, a); r.ok {
		t.Fatal("snapshot to a receiver without store succeeded")
	}
	b.log.waitLog(t, "no SnapshotStore")
	// Dropped snapshots are reported too, or the leader would wait forever.
	a.tr.Send([]raft.Message{snapMsg(1, 9, 5)})
	if r := recvSnap(t, a); r != (snapReport{9, false}) {
		t.Fatalf("ReportSnapshot = %+v", r)
	}
	m = snapMsg(1, 2, 5)
	m.Snapshot = nil
	a.tr.Send([]raft.Message{m})
	if r := recvSnap(t, a); r != (snapReport{2, false}) {
		t.Fatalf("ReportSnapshot = %+v", r)
	}
}

// Raft has one snapshot in flight per follower; a second MsgSnap sent
// meanwhile is dropped without a report, since the first one reports.
func TestSnapshotOneInFlight(t *testing.T) {
	checkNoLeaks(t)
	g := newGate()
	recv := &memStore{}
	a, b := snapPair(t, nil, recv, func(c *Config) { c.Dialer = g.dial })
	m := snapMsg(1, 2, 7)
	m.Snapshot.Data = []byte("first")
	a.tr.Send([]raft.Message{m})
	<-g.dialing // the stream is under way
	m2 := snapMsg(1, 2, 8)
	m2.Snapshot.Data = []byte("second")
	a.tr.Send([]raft.Message{m2})
	if s := a.tr.Stats(); s.Dropped != 1 {
		t.Fatalf("stats %+v", s)
	}
	close(g.release)
	if r := recvSnap(t, a); r != (snapReport{2, true}) {
		t.Fatalf("ReportSnapshot = %+v", r)
	}
	if m := recvMsg(t, b); m.Snapshot.Meta.Index != 7 {
		t.Fatalf("processed %v", m)
	}
	a.tr.Close()
	if len(a.h.snaps) != 0 {
		t.Fatal("dropped snapshot was reported")
	}
}
