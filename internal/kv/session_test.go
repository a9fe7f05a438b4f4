package kv

import (
	"errors"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func sessionPut(client, seq uint64, at time.Duration, key, value string) *Command {
	return &Command{ClientID: client, Seq: seq, Time: int64(at), Put: &pb.PutRequest{Key: []byte(key), Value: []byte(value), PrevKv: true}}
}

func TestExactlyOnce(t *testing.T) {
	h := newHarness(t)
	h.put("k", "0")
	first := h.must(sessionPut(7, 1, 0, "k", "1"))
	if first.Put.Header.Revision != 3 {
		t.Fatalf("revision %d", first.Put.Header.Revision)
	}
	// The retry returns the original answer (including prev_kv "0") and
	// applies nothing, even though the retried payload differs.
	dup := h.must(sessionPut(7, 1, time.Second, "k", "other"))
	sameMsg(t, "duplicate result", dup.Put, first.Put)
	if h.s.Revision() != 3 || string(h.get("k").Value) != "1" {
		t.Fatalf("duplicate applied: revision %d, k=%q", h.s.Revision(), h.get("k").Value)
	}
	// The next sequence number applies.
	if r := h.must(sessionPut(7, 2, 2*time.Second, "k", "2")); r.Put.Header.Revision != 4 {
		t.Fatalf("seq 2 revision %d", r.Put.Header.Revision)
	}
	// An older one is refused.
	if r := h.apply(sessionPut(7, 1, 3*time.Second, "k", "x")); !errors.Is(r.Err, ErrStaleSequence) || h.s.Revision() != 4 {
		t.Fatalf("stale seq: %v, revision %d", r.Err, h.s.Revision())
	}
	// Sequence numbers may skip (a client gives up on a request).
	h.must(sessionPut(7, 5, 4*time.Second, "k", "5"))
	// Request errors are remembered too.
	bad := &Command{ClientID: 7, Seq: 6, Put: &pb.PutRequest{Key: []byte("k"), Lease: 9}}
	sameErr(t, "lease", h.apply(bad).Err, rpctypes.ErrGRPCLeaseNotFound)
	sameErr(t, "cached lease error", h.apply(bad).Err, rpctypes.ErrGRPCLeaseNotFound)
	// Other clients and session-less commands are independent.
	h.must(sessionPut(8, 1, 0, "j", "1"))
	h.must(&Command{Seq: 1, Put: &pb.PutRequest{Key: []byte("j"), Value: []byte("2")}})
	h.must(&Command{Seq: 1, Put: &pb.PutRequest{Key: []byte("j"), Value: []byte("3")}})
	if got := h.s.Stats().Sessions; got != 2 {
		t.Fatalf("%d sessions, want 2", got)
	}
	if r := h.apply(&Command{ClientID: 9, Put: &pb.PutRequest{Key: []byte("j")}}); status.Code(r.Err) != codes.InvalidArgument {
		t.Fatalf("seq 0: %v", r.Err)
	}
}

func TestExactlyOnceEveryRequestKind(t *testing.T) {
	cmds := []*Command{
		{DeleteRange: &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), PrevKv: true}},
		{Txn: &pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("a", eq, 1)}, Success: []*pb.RequestOp{opPut("a", "t"), opGet("a", "z")}}},
		{Append: &AppendRequest{Key: []byte("a"), Value: []byte("+")}},
	}
	for _, c := range cmds {
		h := newHarness(t)
		h.put("a", "1")
		h.put("b", "2")
		c.ClientID, c.Seq = 1, 1
		first := h.must(c)
		rev := h.s.Revision()
		again := h.must(c)
		if h.s.Revision() != rev {
			t.Errorf("%s: duplicate moved the revision", describe(c))
		}
		if string(encodeResult(first)) != string(encodeResult(again)) {
			t.Errorf("%s: duplicate result differs:\n%+v\n%+v", describe(c), first, again)
		}
	}
}

func TestSessionExpiry(t *testing.T) {
	h := &harness{t: t, s: NewStore(Options{SessionTTL: time.Minute})}
	h.must(sessionPut(1, 1, 0, "a", "1"))
	h.must(sessionPut(2, 1, 30*time.Second, "b", "1"))
	// Exactly the TTL idle: kept.
	h.must(&Command{Time: int64(time.Minute), Put: &pb.PutRequest{Key: []byte("x")}})
	if got := h.s.Stats().Sessions; got != 2 {
		t.Fatalf("%d sessions at the TTL, want 2", got)
	}
	// Client 1 idle for more than the TTL: forgotten; client 2 is not.
	h.must(&Command{Time: int64(time.Minute + 1), Put: &pb.PutRequest{Key: []byte("x")}})
	if got := h.s.Stats().Sessions; got != 1 {
		t.Fatalf("%d sessions after the TTL, want 1", got)
	}
	// A proposer with a slow clock does not move time backwards.
	h.must(&Command{Time: 0, Put: &pb.PutRequest{Key: []byte("x")}})
	// Client 2's duplicate still hits its cache; client 1's is applied
	// again, because its session is gone.
	rev := h.s.Revision()
	h.must(sessionPut(2, 1, 0, "b", "1"))
	if h.s.Revision() != rev {
		t.Fatal("client 2 lost its session early")
	}
	h.must(sessionPut(1, 1, 0, "a", "1"))
	if h.s.Revision() != rev+1 {
		t.Fatal("client 1 kept its session past the TTL")
	}
	// Using a session keeps it alive.
	for i := 2; i < 10; i++ {
		h.must(sessionPut(2, uint64(i), time.Duration(i)*time.Minute, "b", "1"))
	}
	if got := h.s.Stats().Sessions; got != 1 {
		t.Fatalf("%d sessions, want only client 2", got)
	}
}

func TestSessionsSurviveSnapshot(t *testing.T) {
	h := &harness{t: t, s: NewStore(Options{SessionTTL: time.Minute})}
	first := h.must(sessionPut(1, 1, 0, "a", "1"))
	h.must(sessionPut(2, 1, 50*time.Second, "b", "1"))
	s2 := NewStore(Options{SessionTTL: time.Minute})
	if err := s2.Restore(bytesReader(snapshotBytes(t, h.s))); err != nil {
		t.Fatal(err)
	}
	h.s = s2
	dup := h.must(sessionPut(1, 1, 55*time.Second, "a", "x"))
	sameMsg(t, "cached result after restore", dup.Put, first.Put)
	// Expiry order is rebuilt from the snapshot: at 1m51s client 2 (last
	// used at 50s) expires, client 1 (touched at 55s) does not.
	h.must(&Command{Time: int64(time.Minute + 51*time.Second), Put: &pb.PutRequest{Key: []byte("x")}})
	if _, ok := h.s.sessions[1]; !ok || len(h.s.sessions) != 1 {
		t.Fatalf("sessions after expiry: %v", h.s.sessions)
	}
}
