package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/internal/netutil"
	"github.com/cairn-db/cairn/raft/wal"
)

// These tests run members in-process (Start with a Config), which makes
// the fine-grained bad-input cases cheap: requests etcd rejects, garbage
// on both ports, damaged data dirs and a disk that fills up. The real
// process versions of the main cases live in tests/e2e.

// testLog collects a member's log and prints it if the test fails.
type testLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// testPorts hands out the addresses of this package's test servers: the
// kernel can repeat a just-probed port, and one cluster must not get it twice.
var testPorts netutil.Picker

func freeAddr(t testing.TB) string {
	t.Helper()
	addr, err := testPorts.Free()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// testConfig returns the config of a one-member cluster in dir with fast
// ticks and fresh ports.
func testConfig(t testing.TB, dir string) Config {
	t.Helper()
	cfg := Defaults()
	cfg.Name = "m1"
	cfg.DataDir = dir
	cfg.ListenClient = freeAddr(t)
	cfg.ListenPeer = freeAddr(t)
	cfg.InitialCluster = "m1=" + cfg.ListenPeer
	cfg.ClusterToken = "test-" + filepath.Base(dir)
	cfg.TickInterval = 10 * time.Millisecond
	cfg.ElectionTicks = 10
	cfg.RequestTimeout = 3 * time.Second
	lg := &testLog{}
	cfg.Logger = slog.New(slog.NewTextHandler(lg, &slog.HandlerOptions{Level: slog.LevelWarn}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- server log ---\n%s", lg.String())
		}
	})
	return cfg
}

// restartConfig returns cfg for a restart from the same data dir: the
// peer address must stay (the member ID derives from it), the client
// port may change.
func restartConfig(t *testing.T, cfg Config) Config {
	cfg.ListenClient = freeAddr(t)
	cfg.fs = nil
	return cfg
}

func start(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

func etcdClient(t *testing.T, addrs ...string) *clientv3.Client {
	t.Helper()
	cl, err := clientv3.New(clientv3.Config{
		Endpoints:   addrs,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// rawKV is a plain gRPC KV client: it sends requests exactly as built,
// without clientv3's own checks.
func rawKV(t testing.TB, addr string) (pb.KVClient, *grpc.ClientConn) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return pb.NewKVClient(cc), cc
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// putKeys writes prefix0..prefix(n-1) and fails the test on any error.
func putKeys(t *testing.T, cl *clientv3.Client, prefix string, n int) {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	for i := range n {
		if _, err := cl.Put(ctx, fmt.Sprintf("%s%03d", prefix, i), fmt.Sprintf("v%d", i)); err != nil {
			t.Fatalf("put %s%03d: %v", prefix, i, err)
		}
	}
}

// checkKeys asserts prefix0..prefix(n-1) hold the values putKeys wrote.
func checkKeys(t *testing.T, cl *clientv3.Client, prefix string, n int) {
	t.Helper()
	resp, err := cl.Get(ctxT(t, 10*time.Second), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get %s*: %v", prefix, err)
	}
	got := map[string]string{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	for i := range n {
		k := fmt.Sprintf("%s%03d", prefix, i)
		if want := fmt.Sprintf("v%d", i); got[k] != want {
			t.Fatalf("acknowledged write lost: %s = %q, want %q (%d keys under %s)", k, got[k], want, len(got), prefix)
		}
	}
}

// wantCode asserts err is a gRPC error with code and a message holding
// every part.
func wantCode(t *testing.T, what string, err error, code codes.Code, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %v error", what, code)
	}
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("%s: got %v (%v), want code %v", what, st.Code(), err, code)
	}
	for _, p := range parts {
		if !strings.Contains(st.Message(), p) {
			t.Fatalf("%s: message %q does not mention %q", what, st.Message(), p)
		}
	}
}

// TestBadRequests sends every kind of request etcd rejects, through raw
// gRPC so that no client-side check hides a server bug. Each must fail
// with etcd's error, change nothing, and leave the member serving.
func TestBadRequests(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	s := start(t, cfg)
	cl := etcdClient(t, s.ClientAddr())
	kvc, cc := rawKV(t, s.ClientAddr())
	ctx := ctxT(t, 60*time.Second)
	putKeys(t, cl, "k", 5)
	before, err := cl.Get(ctx, "k", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	rev := before.Header.Revision

	big := bytes.Repeat([]byte("x"), cfg.MaxRequestBytes+1)
	huge := bytes.Repeat([]byte("x"), cfg.MaxRequestBytes+grpcOverhead+1)
	put := func(k string, v []byte) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: v}}}
	}
	cases := []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"put empty key", func() error { _, err := kvc.Put(ctx, &pb.PutRequest{Value: []byte("v")}); return err },
			codes.InvalidArgument, "key is not provided"},
		{"range empty key", func() error { _, err := kvc.Range(ctx, &pb.RangeRequest{}); return err },
			codes.InvalidArgument, "key is not provided"},
		{"delete empty key", func() error { _, err := kvc.DeleteRange(ctx, &pb.DeleteRangeRequest{}); return err },
			codes.InvalidArgument, "key is not provided"},
		{"txn compare on empty key", func() error {
			_, err := kvc.Txn(ctx, &pb.TxnRequest{Compare: []*pb.Compare{{Target: pb.Compare_VERSION}}})
			return err
		}, codes.InvalidArgument, "key is not provided"},
		{"txn put empty key", func() error {
			_, err := kvc.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put("", nil)}})
			return err
		}, codes.InvalidArgument, "key is not provided"},
		{"txn empty op", func() error {
			_, err := kvc.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{}}})
			return err
		}, codes.InvalidArgument, "key not found"},
		{"txn duplicate key", func() error {
			_, err := kvc.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put("a", nil), put("a", nil)}})
			return err
		}, codes.InvalidArgument, "duplicate key"},
		{"txn too many ops", func() error {
			var ops []*pb.RequestOp
			for i := range 200 {
				ops = append(ops, put(fmt.Sprint("op", i), nil))
			}
			_, err := kvc.Txn(ctx, &pb.TxnRequest{Success: ops})
			return err
		}, codes.InvalidArgument, "too many operations"},
		{"invalid sort order", func() error {
			_, err := kvc.Range(ctx, &pb.RangeRequest{Key: []byte("k"), SortOrder: 99})
			return err
		}, codes.InvalidArgument, "invalid sort option"},
		{"invalid sort target", func() error {
			_, err := kvc.Range(ctx, &pb.RangeRequest{Key: []byte("k"), SortTarget: -1})
			return err
		}, codes.InvalidArgument, "invalid sort option"},
		{"ignore_value with a value", func() error {
			_, err := kvc.Put(ctx, &pb.PutRequest{Key: []byte("k000"), Value: []byte("v"), IgnoreValue: true})
			return err
		}, codes.InvalidArgument, "value is provided"},
		{"lease on put", func() error { _, err := kvc.Put(ctx, &pb.PutRequest{Key: []byte("k000"), Lease: 42}); return err },
			codes.NotFound, "requested lease not found"},
		{"value over the request limit", func() error { _, err := kvc.Put(ctx, &pb.PutRequest{Key: []byte("big"), Value: big}); return err },
			codes.InvalidArgument, "request is too large"},
		{"txn over the request limit", func() error {
			_, err := kvc.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put("big", big)}})
			return err
		}, codes.InvalidArgument, "request is too large"},
		{"message over the gRPC limit", func() error { _, err := kvc.Put(ctx, &pb.PutRequest{Key: []byte("big"), Value: huge}); return err },
			codes.ResourceExhausted, ""},
		{"future revision", func() error {
			_, err := kvc.Range(ctx, &pb.RangeRequest{Key: []byte("k"), Revision: rev + 100})
			return err
		},
			codes.OutOfRange, "required revision is a future revision"},
		{"historical revision", func() error {
			_, err := kvc.Range(ctx, &pb.RangeRequest{Key: []byte("k"), Revision: rev - 1})
			return err
		},
			codes.Unimplemented, "historical reads are not supported"},
		{"compaction to a future revision", func() error {
			_, err := kvc.Compact(ctx, &pb.CompactionRequest{Revision: rev + 100})
			return err
		}, codes.OutOfRange, "required revision is a future revision"},
		{"malformed session metadata", func() error {
			mctx := metadata.AppendToOutgoingContext(ctx, mdClientID, "x", mdSeq, "1")
			_, err := kvc.Put(mctx, &pb.PutRequest{Key: []byte("k000"), Value: []byte("s")})
			return err
		}, codes.InvalidArgument, "positive integers"},
		{"half a session", func() error {
			mctx := metadata.AppendToOutgoingContext(ctx, mdClientID, "7")
			_, err := kvc.Put(mctx, &pb.PutRequest{Key: []byte("k000"), Value: []byte("s")})
			return err
		}, codes.InvalidArgument, "session"},
		{"lease grant", func() error {
			_, err := pb.NewLeaseClient(cc).LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 10})
			return err
		}, codes.Unimplemented, "leases are not supported"},
		{"watch", func() error {
			w, err := pb.NewWatchClient(cc).Watch(ctx)
			if err != nil {
				return err
			}
			_ = w.Send(&pb.WatchRequest{})
			_, err = w.Recv()
			return err
		}, codes.Unimplemented, "Watch is not supported"},
		{"unknown method", func() error {
			return cc.Invoke(ctx, "/etcdserverpb.Auth/Authenticate", &pb.AuthenticateRequest{}, &pb.AuthenticateResponse{})
		}, codes.Unimplemented, ""},
	}
	for _, c := range cases {
		wantCode(t, c.name, c.call(), c.code, c.msg)
	}

	// Requests etcd accepts that select nothing must not fail.
	for _, r := range []*pb.RangeRequest{
		{Key: []byte("z"), RangeEnd: []byte("a")},       // inverted range
		{Key: []byte("k001"), RangeEnd: []byte("k001")}, // empty range
		{Key: []byte("\xff\xff"), RangeEnd: []byte{0}},  // from beyond every key
		{Key: []byte("k"), RangeEnd: []byte("l"), Limit: -5},
	} {
		resp, err := kvc.Range(ctx, r)
		if err != nil {
			t.Fatalf("range %q..%q: %v", r.Key, r.RangeEnd, err)
		}
		if r.Limit == 0 && (len(resp.Kvs) != 0 || resp.Count != 0) {
			t.Fatalf("range %q..%q selected %d keys, want none", r.Key, r.RangeEnd, len(resp.Kvs))
		}
	}
	dresp, err := kvc.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("z"), RangeEnd: []byte("a")})
	if err != nil || dresp.Deleted != 0 {
		t.Fatalf("inverted delete range: %v, deleted %v", err, dresp)
	}

	// Nothing above wrote anything: the inverted delete is the only write
	// that reached the log, and like etcd's it deletes nothing and keeps
	// the revision.
	after, err := cl.Get(ctx, "k", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if after.Header.Revision != rev {
		t.Fatalf("revision moved from %d to %d through rejected requests", rev, after.Header.Revision)
	}
	checkKeys(t, cl, "k", 5)
	if _, err := cl.Get(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	putKeys(t, cl, "after", 3)
}

// TestGarbageOnClientPort throws junk at the gRPC port: random bytes, a
// plain HTTP request, an HTTP/2 preface followed by garbage frames, a
// gRPC message whose length prefix lies, and connections that open and
// say nothing. The member must keep serving.
func TestGarbageOnClientPort(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	s := start(t, cfg)
	cl := etcdClient(t, s.ClientAddr())
	putKeys(t, cl, "k", 3)

	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	frame := func(typ, flags byte, stream uint32, payload []byte) []byte {
		b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags}
		b = binary.BigEndian.AppendUint32(b, stream)
		return append(b, payload...)
	}
	junk := [][]byte{
		bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 4096),
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		[]byte(preface + "\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
		append([]byte(preface), frame(4, 0, 0, nil)...),                               // settings, then nothing
		append([]byte(preface), frame(0xff, 0xff, 7, make([]byte, 100))...),           // unknown frame type
		append([]byte(preface), frame(1, 4, 1, []byte{0xff, 0xff, 0xff, 0xff})...),    // undecodable HPACK
		append([]byte(preface), frame(0, 1, 1, []byte{0, 0xff, 0xff, 0xff, 0xff})...), // DATA on a stream never opened
		{0x16, 0x03, 0x01, 0x00, 0xff},                                                // a TLS ClientHello header
	}
	var wg sync.WaitGroup
	for i, b := range junk {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", s.ClientAddr())
			if err != nil {
				t.Errorf("junk %d: dial: %v", i, err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = c.Write(b)
			_, _ = io.Copy(io.Discard, c) // until the server hangs up or the deadline
		}()
	}
	// Idle connections: a scanner that connects and never speaks.
	var idle []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", s.ClientAddr())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	wg.Wait()

	// Well-formed gRPC calls whose messages are not protobuf.
	_, cc := rawKV(t, s.ClientAddr())
	for _, m := range []string{"/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range", "/etcdserverpb.KV/Txn", AppendMethod} {
		for _, b := range [][]byte{{0xff, 0xff, 0xff}, bytes.Repeat([]byte{0x0a, 0xff}, 100), {0x12, 0x80, 0x80, 0x80, 0x80, 0x10}} {
			var out []byte
			err := cc.Invoke(ctxT(t, 5*time.Second), m, b, &out, grpc.ForceCodecV2(rawCodec{}))
			wantCode(t, "garbage protobuf to "+m, err, codes.Internal, "unmarshal")
		}
	}

	checkKeys(t, cl, "k", 3)
	putKeys(t, cl, "after", 3)
	for _, c := range idle {
		c.Close()
	}
	select {
	case <-s.Done():
		t.Fatalf("member stopped: %v", s.Err())
	default:
	}
}

// rawCodec sends and receives []byte as they are, to put bytes that are
// not protobuf into well-formed gRPC calls.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

func crc32c(p []byte) uint32 { return crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli)) }

// TestGarbageOnPeerPort sends junk to the Raft port: random bytes, a
// hello with bad magic, a hello from another cluster (which must be
// refused with the cluster-mismatch status), and, after a valid hello,
// frames with bad checksums, absurd lengths and undecodable messages.
func TestGarbageOnPeerPort(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	s := start(t, cfg)
	cl := etcdClient(t, s.ClientAddr())
	putKeys(t, cl, "k", 3)

	hello := func(cluster, from, to uint64) []byte {
		b := []byte{'C', 'R', 'N', 'T', 1, 1, 0, 0}
		b = binary.LittleEndian.AppendUint64(b, cluster)
		b = binary.LittleEndian.AppendUint64(b, from)
		return binary.LittleEndian.AppendUint64(b, to)
	}
	exchange := func(b []byte) (reply []byte) {
		c, err := net.Dial("tcp", cfg.ListenPeer)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		_, _ = c.Write(b)
		reply, _ = io.ReadAll(c)
		return reply
	}

	// Another cluster: refused at the handshake with status 1.
	r := exchange(hello(s.clusterID+1, 99, s.id))
	if len(r) < 24 || string(r[:4]) != "CRNT" || r[5] != 1 {
		t.Fatalf("wrong-cluster hello: reply %x, want a reply with status 1 (cluster mismatch)", r)
	}
	if got := binary.LittleEndian.Uint64(r[8:]); got != s.clusterID {
		t.Fatalf("wrong-cluster reply names cluster %x, want %x", got, s.clusterID)
	}
	if len(r) > 24 {
		t.Fatalf("connection stayed open after a refused handshake (%d more bytes)", len(r)-24)
	}
	// Another node's ID: refused with status 2.
	if r := exchange(hello(s.clusterID, 99, s.id+1)); len(r) < 24 || r[5] != 2 {
		t.Fatalf("wrong-node hello: reply %x, want status 2", r)
	}

	valid := hello(s.clusterID, 99, s.id)
	frame := func(typ byte, payload []byte, crc uint32) []byte {
		b := []byte{typ}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
		b = binary.LittleEndian.AppendUint32(b, crc)
		return append(b, payload...)
	}
	crc := func(p []byte) uint32 { return crc32c(p) }
	undecodable := binary.LittleEndian.AppendUint32(nil, 8)
	undecodable = append(undecodable, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	junk := [][]byte{
		bytes.Repeat([]byte{0x42}, 10000),
		[]byte("XXXX\x01\x01\x00\x00"),
		append(append([]byte{}, valid...), bytes.Repeat([]byte{0xee}, 1000)...),
		append(append([]byte{}, valid...), frame(1, []byte("hello"), 12345)...),              // bad CRC
		append(append([]byte{}, valid...), []byte{1, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0}...), // 2 GiB frame
		append(append([]byte{}, valid...), frame(1, undecodable, crc(undecodable))...),       // undecodable message
		append(append([]byte{}, valid...), frame(9, []byte("?"), crc([]byte("?")))...),       // unknown frame type
		append(hello(s.clusterID, 99, s.id)[:16], 0),                                         // a truncated hello
	}
	for _, b := range junk {
		exchange(b)
	}

	checkKeys(t, cl, "k", 3)
	putKeys(t, cl, "after", 3)
	select {
	case <-s.Done():
		t.Fatalf("member stopped: %v", s.Err())
	default:
	}
}

// dirState maps every file under dir to a hash of its content, so a test
// can check that a refused start modified nothing.
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[p] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameState(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for p, h := range before {
		if after[p] != h {
			t.Fatalf("%s: the refused start modified %s", what, p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok && filepath.Base(p) != "LOCK" {
			t.Fatalf("%s: the refused start created %s", what, p)
		}
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// files returns the paths under dir/raft/sub with the given suffix, sorted.
func files(t *testing.T, dir, sub, suffix string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "raft", sub))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), suffix) {
			out = append(out, filepath.Join(dir, "raft", sub, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// refuse starts a member that should not start, and stops it if it did.
func refuse(c Config) error {
	s, err := Start(c)
	if err == nil {
		s.Stop()
	}
	return err
}

// oneSentence asserts err reads as one clear sentence that names want.
func oneSentence(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: Start succeeded, want a refusal", what)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Fatalf("%s: error spans lines: %q", what, msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Fatalf("%s: error %q does not mention %q", what, msg, w)
		}
	}
}

// TestDamagedDataDir starts a member on copies of one data dir damaged in
// different ways. A torn tail (what a crash mid-write leaves) is repaired
// and every acknowledged write survives; damage to data that was once
// durable makes Start refuse with one sentence naming the file, without
// changing the data dir.
func TestDamagedDataDir(t *testing.T) {
	base := t.TempDir()
	orig := filepath.Join(base, "orig")
	cfg := testConfig(t, orig)
	cfg.SnapshotCount = 40
	cfg.SnapshotCatchupEntries = 10
	cfg.walSegmentSize = 2 << 10
	s := start(t, cfg)
	cl := etcdClient(t, s.ClientAddr())
	putKeys(t, cl, "k", 100) // several snapshots, WAL released behind them
	s.Stop()
	cl.Close()
	if segs := files(t, orig, "wal", ".wal"); len(segs) < 2 || strings.HasSuffix(segs[0], "-0000000000000001.wal") {
		t.Fatalf("WAL segments %v: want several, the first ones released", segs)
	}

	n := 0
	variant := func(damage func(dir string)) (Config, map[string]string) {
		n++
		dir := filepath.Join(base, fmt.Sprint("v", n))
		copyDir(t, orig, dir)
		damage(dir)
		c := restartConfig(t, cfg)
		c.DataDir = dir
		return c, dirState(t, dir)
	}
	lastSeg := func(dir string) string {
		segs := files(t, dir, "wal", ".wal")
		return segs[len(segs)-1]
	}
	restartAndCheck := func(t *testing.T, what string, c Config) {
		t.Helper()
		s, err := Start(c)
		if err != nil {
			t.Fatalf("%s: Start: %v", what, err)
		}
		defer s.Stop()
		checkKeys(t, etcdClient(t, s.ClientAddr()), "k", 100)
	}

	t.Run("torn tail", func(t *testing.T) {
		c, _ := variant(func(dir string) {
			f, err := os.OpenFile(lastSeg(dir), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			// Half a record header: a write torn by a crash.
			f.Write([]byte{0x17, 0x00, 0x00})
			f.Close()
		})
		restartAndCheck(t, "torn tail", c)
	})
	t.Run("garbage tail", func(t *testing.T) {
		c, _ := variant(func(dir string) {
			f, err := os.OpenFile(lastSeg(dir), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(bytes.Repeat([]byte{0xa5}, 333))
			f.Close()
		})
		restartAndCheck(t, "garbage tail", c)
	})
	t.Run("truncated tail", func(t *testing.T) {
		c, _ := variant(func(dir string) {
			p := lastSeg(dir)
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, fi.Size()-3); err != nil {
				t.Fatal(err)
			}
		})
		// The cut may remove the last acknowledged record, so only check
		// that the member starts and serves.
		s, err := Start(c)
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		defer s.Stop()
		putKeys(t, etcdClient(t, s.ClientAddr()), "new", 2)
	})
	t.Run("corrupt middle record", func(t *testing.T) {
		var seg string
		c, before := variant(func(dir string) {
			seg = lastSeg(dir)
			b, err := os.ReadFile(seg)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0xff
			os.WriteFile(seg, b, 0o600)
		})
		err := refuse(c)
		oneSentence(t, "corrupt middle record", err, seg)
		sameState(t, "corrupt middle record", before, dirState(t, c.DataDir))
	})
	t.Run("corrupt older segment", func(t *testing.T) {
		var seg string
		c, before := variant(func(dir string) {
			segs := files(t, dir, "wal", ".wal")
			if len(segs) < 2 {
				t.Skip("one WAL segment only")
			}
			seg = segs[0]
			b, _ := os.ReadFile(seg)
			b[len(b)-1] ^= 0xff
			os.WriteFile(seg, b, 0o600)
		})
		err := refuse(c)
		oneSentence(t, "corrupt older segment", err, seg)
		sameState(t, "corrupt older segment", before, dirState(t, c.DataDir))
	})
	t.Run("corrupt member.json", func(t *testing.T) {
		c, before := variant(func(dir string) {
			os.WriteFile(filepath.Join(dir, "member.json"), []byte(`{"cluster_id": 12, "mem`), 0o600)
		})
		err := refuse(c)
		oneSentence(t, "corrupt member.json", err, filepath.Join(c.DataDir, "member.json"))
		sameState(t, "corrupt member.json", before, dirState(t, c.DataDir))
	})
	t.Run("empty member.json", func(t *testing.T) {
		c, before := variant(func(dir string) {
			os.WriteFile(filepath.Join(dir, "member.json"), nil, 0o600)
		})
		err := refuse(c)
		oneSentence(t, "empty member.json", err, filepath.Join(c.DataDir, "member.json"))
		sameState(t, "empty member.json", before, dirState(t, c.DataDir))
	})
	t.Run("missing member.json", func(t *testing.T) {
		c, before := variant(func(dir string) {
			os.Remove(filepath.Join(dir, "member.json"))
		})
		err := refuse(c)
		oneSentence(t, "missing member.json", err, "member.json", c.DataDir)
		sameState(t, "missing member.json", before, dirState(t, c.DataDir))
	})
	t.Run("corrupt raft metadata", func(t *testing.T) {
		var p string
		c, before := variant(func(dir string) {
			p = filepath.Join(dir, "raft", "metadata")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Skip("no raft/metadata file")
			}
			b[len(b)-1] ^= 0xff
			os.WriteFile(p, b, 0o600)
		})
		err := refuse(c)
		oneSentence(t, "corrupt raft metadata", err, p)
		sameState(t, "corrupt raft metadata", before, dirState(t, c.DataDir))
	})
	t.Run("newest snapshot corrupt", func(t *testing.T) {
		// An older snapshot and the WAL behind it still hold everything:
		// the member recovers from them (with a warning).
		c, _ := variant(func(dir string) {
			snaps := files(t, dir, "snap", ".snap")
			if len(snaps) < 2 {
				t.Fatalf("%d snapshots, want at least two", len(snaps))
			}
			p := snaps[len(snaps)-1]
			b, _ := os.ReadFile(p)
			b[len(b)-20] ^= 0xff // in the data
			os.WriteFile(p, b, 0o600)
		})
		restartAndCheck(t, "newest snapshot corrupt", c)
	})
	t.Run("every snapshot corrupt", func(t *testing.T) {
		// The WAL was released behind the snapshots: nothing holds the
		// early writes any more.
		var snaps []string
		c, before := variant(func(dir string) {
			snaps = files(t, dir, "snap", ".snap")
			for _, p := range snaps {
				b, _ := os.ReadFile(p)
				b[len(b)-20] ^= 0xff
				os.WriteFile(p, b, 0o600)
			}
		})
		err := refuse(c)
		oneSentence(t, "every snapshot corrupt", err, snaps[len(snaps)-1])
		sameState(t, "every snapshot corrupt", before, dirState(t, c.DataDir))
	})
	t.Run("another member's data dir", func(t *testing.T) {
		c, before := variant(func(string) {})
		c.Name = "m2"
		c.InitialCluster = "m2=" + c.ListenPeer
		err := refuse(c)
		oneSentence(t, "another member", err, c.DataDir, `"m1"`, `"m2"`)
		sameState(t, "another member", before, dirState(t, c.DataDir))
	})
	t.Run("another cluster's data dir", func(t *testing.T) {
		c, before := variant(func(string) {})
		c.ClusterToken = "someone-else"
		err := refuse(c)
		oneSentence(t, "another cluster", err, c.DataDir, "someone-else")
		sameState(t, "another cluster", before, dirState(t, c.DataDir))
	})
	t.Run("data dir in use", func(t *testing.T) {
		c, _ := variant(func(string) {})
		s := start(t, c)
		defer s.Stop()
		c2 := restartConfig(t, c)
		c2.ListenPeer = freeAddr(t)
		c2.InitialCluster = "m1=" + c2.ListenPeer
		err := refuse(c2)
		oneSentence(t, "data dir in use", err, c.DataDir, "in use")
	})
	t.Run("client port in use", func(t *testing.T) {
		c, before := variant(func(string) {})
		ln, err := net.Listen("tcp", c.ListenClient)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		err = refuse(c)
		oneSentence(t, "client port in use", err, c.ListenClient, "address already in use")
		sameState(t, "client port in use", before, dirState(t, c.DataDir))
		// The refused start released the data dir: a retry works.
		ln.Close()
		restartAndCheck(t, "after the port was freed", c)
	})
	t.Run("peer port in use", func(t *testing.T) {
		c, before := variant(func(string) {})
		ln, err := net.Listen("tcp", c.ListenPeer)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		err = refuse(c)
		oneSentence(t, "peer port in use", err, c.ListenPeer, "address already in use")
		sameState(t, "peer port in use", before, dirState(t, c.DataDir))
	})
}

// TestPortInUseOnFreshDataDir: a refused first start must not leave a
// half-made data dir behind that a corrected retry then refuses.
func TestPortInUseOnFreshDataDir(t *testing.T) {
	cfg := testConfig(t, filepath.Join(t.TempDir(), "d"))
	ln, err := net.Listen("tcp", cfg.ListenClient)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = refuse(cfg)
	oneSentence(t, "client port in use", err, cfg.ListenClient)
	// The operator fixes the port and, say, the cluster token.
	cfg.ListenClient = freeAddr(t)
	cfg.ClusterToken = "fixed-token"
	s := start(t, cfg)
	putKeys(t, etcdClient(t, s.ClientAddr()), "k", 1)
}

// TestContradictoryConfig checks that each contradiction is refused with
// one sentence naming the flag, before anything is created on disk.
func TestContradictoryConfig(t *testing.T) {
	for _, c := range []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"empty name", func(c *Config) { c.Name = "" }, "--name"},
		{"same listen addresses", func(c *Config) { c.ListenClient = c.ListenPeer }, "must differ"},
		{"bad client address", func(c *Config) { c.ListenClient = "nonsense" }, "--listen-client"},
		{"name not in cluster", func(c *Config) { c.InitialCluster = "other=127.0.0.1:1" }, "does not appear"},
		{"peer address disagrees", func(c *Config) { c.InitialCluster = "m1=127.0.0.1:1" }, "--listen-peer"},
		{"duplicate member", func(c *Config) { c.InitialCluster += ",m1=127.0.0.1:1" }, "twice"},
		{"bad cluster state", func(c *Config) { c.InitialClusterState = "maybe" }, "--initial-cluster-state"},
		{"pprof without metrics", func(c *Config) { c.EnablePprof = true }, "--enable-pprof"},
		{"metrics clashes", func(c *Config) { c.ListenMetrics = c.ListenClient }, "--listen-metrics"},
		{"zero ticks", func(c *Config) { c.ElectionTicks = 1 }, "--election-ticks"},
		{"no request size", func(c *Config) { c.MaxRequestBytes = 0 }, "--max-request-bytes"},
	} {
		dir := filepath.Join(t.TempDir(), "d")
		cfg := testConfig(t, dir)
		c.modify(&cfg)
		err := refuse(cfg)
		oneSentence(t, c.name, err, c.want)
		if !errors.Is(err, ErrConfig) {
			t.Fatalf("%s: error %v does not wrap ErrConfig", c.name, err)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Fatalf("%s: a refused configuration created the data dir", c.name)
		}
	}
}

// fullDisk wraps a file system whose disk can fill up: once full, a write
// stores at most the bytes still free and fails with ENOSPC, as a real
// one does (a write may be torn at any byte).
type fullDisk struct {
	wal.FS
	full  atomic.Bool
	free  atomic.Int64 // bytes that still fit once full
	match func(name string) bool
	fails atomic.Int64
}

func (d *fullDisk) wrap(name string, f wal.File, err error) (wal.File, error) {
	if err != nil {
		return nil, err
	}
	if d.match != nil && !d.match(name) {
		return f, nil
	}
	return &fullFile{File: f, d: d, name: name}, nil
}

func (d *fullDisk) Create(name string) (wal.File, error) {
	f, err := d.FS.Create(name)
	return d.wrap(name, f, err)
}

func (d *fullDisk) OpenAppend(name string) (wal.File, error) {
	f, err := d.FS.OpenAppend(name)
	return d.wrap(name, f, err)
}

type fullFile struct {
	wal.File
	d    *fullDisk
	name string
}

func (f *fullFile) Write(p []byte) (int, error) {
	if !f.d.full.Load() {
		return f.File.Write(p)
	}
	n := int(min(int64(len(p)), max(f.d.free.Add(-int64(len(p)))+int64(len(p)), 0)))
	if n == len(p) {
		return f.File.Write(p)
	}
	if n > 0 {
		if _, err := f.File.Write(p[:n]); err != nil {
			return 0, err
		}
	}
	f.d.fails.Add(1)
	return n, &fs.PathError{Op: "write", Path: f.name, Err: syscall.ENOSPC}
}

// prefixes records every file's content under dir.
func prefixes(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".wal") {
			b, _ := os.ReadFile(p)
			out[p] = b
		}
		return nil
	})
	return out
}

// TestFullDisk fills the disk under a running member: first while it
// writes its WAL, then while it writes a snapshot. The failing write must
// fail with an error that says what happened; the member stops rather than
// run on with a WAL it cannot extend; the WAL it leaves holds every byte
// it held before (nothing overwritten), and a restart on a healthy disk
// finds every acknowledged write.
func TestFullDisk(t *testing.T) {
	for _, tc := range []struct {
		name  string
		match func(string) bool
		free  int64
	}{
		{"wal write torn", func(n string) bool { return strings.HasSuffix(n, ".wal") }, 7},
		{"wal write fails whole", func(n string) bool { return strings.HasSuffix(n, ".wal") }, 0},
		{"snapshot write", func(n string) bool { return strings.Contains(n, ".snap") }, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			disk := &fullDisk{FS: wal.OSFS{}, match: tc.match}
			cfg.fs = disk
			cfg.SnapshotCount = 60
			cfg.SnapshotCatchupEntries = 10
			s := start(t, cfg)
			cl := etcdClient(t, s.ClientAddr())
			putKeys(t, cl, "k", 50)
			before := prefixes(t, dir)

			disk.free.Store(tc.free)
			disk.full.Store(true)
			var werr error
			for i := 0; i < 100 && werr == nil; i++ { // a snapshot comes after a few more writes
				_, werr = cl.Put(ctxT(t, 5*time.Second), fmt.Sprint("full", i), "x")
			}
			if werr == nil {
				t.Fatal("writes kept succeeding on a full disk")
			}
			if !strings.Contains(werr.Error(), "no space left on device") {
				// A snapshot is written after the write that triggered it
				// was answered; the next write then finds the member gone
				// (and the reason is in s.Err, checked below).
				select {
				case <-s.Done():
				default:
					t.Errorf("write on a full disk failed with %q, want an error that says the disk is full", werr)
				}
			}
			select {
			case <-s.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("member kept running after its disk filled")
			}
			if err := s.Err(); err == nil || !strings.Contains(err.Error(), "no space left on device") {
				t.Fatalf("member stopped with %v, want the ENOSPC that stopped it", err)
			}
			if disk.fails.Load() == 0 {
				t.Fatal("the full disk never failed a write")
			}
			for p, b := range before {
				now, err := os.ReadFile(p)
				if err != nil {
					t.Fatalf("WAL segment %s: %v", p, err)
				}
				if !bytes.HasPrefix(now, b) {
					t.Fatalf("WAL segment %s changed within the %d bytes that were durable before the disk filled", p, len(b))
				}
			}

			s2 := start(t, restartConfig(t, cfg))
			cl2 := etcdClient(t, s2.ClientAddr())
			checkKeys(t, cl2, "k", 50)
			putKeys(t, cl2, "again", 5)
			checkKeys(t, cl2, "again", 5)
		})
	}
}

// TestFullDiskFollower fills one follower's disk in a three-member
// cluster: the cluster keeps serving writes through the others, and the
// follower, restarted on a healthy disk, catches up.
func TestFullDiskFollower(t *testing.T) {
	base := t.TempDir()
	var cfgs []Config
	var parts []string
	var disks []*fullDisk
	for i := range 3 {
		c := testConfig(t, filepath.Join(base, fmt.Sprint("m", i+1)))
		c.Name = fmt.Sprint("m", i+1)
		c.ClusterToken = "full-follower"
		d := &fullDisk{FS: wal.OSFS{}}
		c.fs = d
		disks = append(disks, d)
		cfgs = append(cfgs, c)
		parts = append(parts, c.Name+"="+c.ListenPeer)
	}
	servers := make([]*Server, 3)
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(parts, ",")
		servers[i] = start(t, cfgs[i])
	}
	cl := etcdClient(t, servers[0].ClientAddr(), servers[1].ClientAddr(), servers[2].ClientAddr())
	putKeys(t, cl, "k", 20)

	// Fill the disk of a follower, so the other two keep a quorum.
	lead := servers[0].main.node.Leader()
	f := 0
	for i, s := range servers {
		if s.id != lead {
			f = i
		}
	}
	var healthy []string
	for i, s := range servers {
		if i != f {
			healthy = append(healthy, s.ClientAddr())
		}
	}
	// A write sent to the failing member itself has an unknown outcome
	// (it fails with the cause); the others must take every write.
	cl = etcdClient(t, healthy...)
	disks[f].full.Store(true)
	putKeys(t, cl, "during", 30)
	select {
	case <-servers[f].Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the follower with a full disk kept running")
	}
	if err := servers[f].Err(); err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("follower stopped with %v, want ENOSPC", err)
	}
	putKeys(t, cl, "after", 10)
	servers[f] = start(t, restartConfig(t, cfgs[f]))
	clf := etcdClient(t, servers[f].ClientAddr())
	checkKeys(t, clf, "k", 20)
	checkKeys(t, clf, "during", 30)
	checkKeys(t, clf, "after", 10)
}
