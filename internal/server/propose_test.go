package server

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/internal/kv"
)

// TestWriteWaitsForLeader checks the two outcomes of a write sent while no
// leader is known: it fails with etcd's "no leader" once its time is up,
// and it succeeds, without the client retrying, when a leader appears
// within that time.
func TestWriteWaitsForLeader(t *testing.T) {
	cfgs := threeMembers(t, "wait-leader")
	for i := range cfgs {
		cfgs[i].RequestTimeout = 400 * time.Millisecond
	}
	// One member of three: no quorum, so no leader.
	s1 := start(t, cfgs[0])
	kv, _ := rawKV(t, s1.ClientAddr())
	_, err := kv.Put(ctxT(t, 10*time.Second), &pb.PutRequest{Key: []byte("k"), Value: []byte("v1")})
	wantCode(t, "put without a leader", err, codes.Unavailable, "no leader")

	// A write waiting for a leader succeeds once a second member makes a
	// quorum.
	cfgs[0].RequestTimeout = 20 * time.Second
	s1.Stop()
	s1 = start(t, restartConfig(t, cfgs[0]))
	kv, _ = rawKV(t, s1.ClientAddr())
	done := make(chan error, 1)
	go func() {
		_, err := kv.Put(ctxT(t, 30*time.Second), &pb.PutRequest{Key: []byte("k"), Value: []byte("v2")})
		done <- err
	}()
	// The put must be waiting, not failed, before the quorum exists.
	select {
	case err := <-done:
		t.Fatalf("put returned before any leader could exist: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	start(t, cfgs[1])
	if err := <-done; err != nil {
		t.Fatalf("put waiting for a leader: %v", err)
	}
	resp, err := kv.Range(ctxT(t, 10*time.Second), &pb.RangeRequest{Key: []byte("k")})
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v2" {
		t.Fatalf("range after the put: %v %v", resp, err)
	}
}

// threeMembers returns the configs of a fresh three-member cluster, data
// under a temporary directory, each member listing the others.
func threeMembers(t testing.TB, token string) []Config {
	base := t.TempDir()
	var cfgs []Config
	var parts []string
	for i := range 3 {
		c := testConfig(t, filepath.Join(base, fmt.Sprint("m", i+1)))
		c.Name = fmt.Sprint("m", i+1)
		c.ClusterToken = token
		cfgs = append(cfgs, c)
		parts = append(parts, c.Name+"="+c.ListenPeer)
	}
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(parts, ",")
	}
	return cfgs
}

// A successful write is counted in cairn_write_duration_seconds; one that
// fails validation is not (it never reaches Raft).
func TestWriteDurationMetric(t *testing.T) {
	s := start(t, testConfig(t, t.TempDir()))
	kv, _ := rawKV(t, s.ClientAddr())
	ctx := ctxT(t, 10*time.Second)
	for i := 0; i < 3; i++ {
		if _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Put(ctx, &pb.PutRequest{}); err == nil {
		t.Fatal("a put without a key succeeded")
	}
	families, err := s.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "cairn_write_duration_seconds" {
			continue
		}
		h := f.GetMetric()[0].GetHistogram()
		if h.GetSampleCount() != 3 || h.GetSampleSum() <= 0 {
			t.Fatalf("cairn_write_duration_seconds: count %d sum %v, want 3 writes with a positive sum", h.GetSampleCount(), h.GetSampleSum())
		}
		return
	}
	t.Fatal("no cairn_write_duration_seconds metric")
}

// TestWritesRefusedWhileApplyLags: past maxApplyBacklog committed entries
// waiting for the state machine, a write is refused with etcd's "too
// many requests" before anything is proposed, and counted; once the
// backlog is down, writes go through again. (raftnode's TestApplyBacklog
// checks the backlog itself against a held state machine.)
func TestWritesRefusedWhileApplyLags(t *testing.T) {
	s := start(t, testConfig(t, t.TempDir()))
	g := s.main
	ctx := ctxT(t, 10*time.Second)
	put := func(k string) error {
		_, err := g.write(ctx, &kv.Command{Put: &pb.PutRequest{Key: []byte(k), Value: []byte("v")}})
		return err
	}
	if err := put("before"); err != nil {
		t.Fatal(err)
	}
	backlog := uint64(maxApplyBacklog + 1)
	g.applyBacklog = func() uint64 { return backlog }
	proposed := testutil.ToFloat64(s.metrics.proposals)
	err := put("refused")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "etcdserver: too many requests") {
		t.Fatalf("write with a backlog of %d: %v, want etcd's too many requests", backlog, err)
	}
	if got := testutil.ToFloat64(s.metrics.proposals); got != proposed {
		t.Fatalf("a refused write was proposed (proposals %v -> %v)", proposed, got)
	}
	if got := testutil.ToFloat64(s.metrics.writesRefused); got != 1 {
		t.Fatalf("cairn_writes_refused_total = %v, want 1", got)
	}
	backlog = maxApplyBacklog // at the limit, not past it
	if err := put("after"); err != nil {
		t.Fatalf("write at the backlog limit: %v", err)
	}
	if res, err := g.kv().Range(&pb.RangeRequest{Key: []byte("refused")}); err != nil || len(res.Kvs) != 0 {
		t.Fatalf("the refused key: %v, %v; want absent", res, err)
	}
}
