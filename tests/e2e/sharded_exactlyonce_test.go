package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/cairn-db/cairn/client"
)

// TestShardedExactlyOnceAcrossMove applies an Append with an explicit
// exactly-once session at the owning group, moves the key's shard to the
// other group, and retries the same Append (same client ID and sequence
// number) through a member without naming a group, and naming the new
// group: the retries must return the first answer, and the piece must be
// in the value exactly once. Naming the old group gets a wrong-group
// error.
func TestShardedExactlyOnceAcrossMove(t *testing.T) {
	const nShards = 8
	// Processes A host the controller and group 1, processes B group 2:
	// a retry through a member of A for a shard now owned by group 2 is
	// forwarded to B with its session.
	a, b := startTwoSets(t, "sharded-eo", nShards)
	eps := append(a.endpoints(), b.endpoints()...)
	admin := shardClient(t, eps, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg, err := retryAdmin(ctx, func(ctx context.Context) (client.ShardConfig, error) {
		return admin.ShardJoin(ctx, map[uint64][]string{1: a.endpoints(), 2: b.endpoints()})
	})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	waitShardSettled(t, ctx, eps, cfg.Num)

	// A key of group 1, to be moved to group 2.
	var key string
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("eo-key%d", i); cfg.Shards[client.ShardOf(k, nShards)] == 1 {
			key = k
		}
	}
	sh := client.ShardOf(key, nShards)
	const from, to = 1, 2
	if _, err := admin.Put(ctx, key, "base:"); err != nil {
		t.Fatal(err)
	}
	// Other traffic in the same shard, so the shard carries more than one
	// session.
	for i := range 5 {
		if _, err := admin.Append(ctx, key, fmt.Sprintf("o%d;", i)); err != nil {
			t.Fatal(err)
		}
	}
	before := "base:o0;o1;o2;o3;o4;"

	// conns[0..2]: processes A (group 1), conns[3..5]: processes B (group 2).
	conns := make([]*grpc.ClientConn, len(eps))
	for i, ep := range eps {
		cc, err := grpc.NewClient(ep, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		conns[i] = cc
	}
	clientID := strconv.FormatUint(rand.Uint64()|1, 10)
	const piece = "PIECE;"
	appendOnce := func(cc *grpc.ClientConn, group uint64) (length string, rev int64, err error) {
		md := []string{"cairn-client-id", clientID, "cairn-seq", "1"}
		if group != 0 {
			md = append(md, "cairn-group", fmt.Sprint(group))
		}
		actx, acancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, md...), 5*time.Second)
		defer acancel()
		var hdr metadata.MD
		resp := new(pb.PutResponse)
		err = cc.Invoke(actx, "/cairn.v1.Cairn/Append", &pb.PutRequest{Key: []byte(key), Value: []byte(piece)}, resp, grpc.Header(&hdr))
		if err != nil {
			return "", 0, err
		}
		if v := hdr.Get("cairn-append-length"); len(v) == 1 {
			length = v[0]
		}
		return length, resp.GetHeader().GetRevision(), nil
	}
	var length0 string
	var rev0 int64
	for {
		length0, rev0, err = appendOnce(conns[0], from)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("append at group %d: %v", from, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if want := fmt.Sprint(len(before + piece)); length0 != want {
		t.Fatalf("append answered length %q, want %s", length0, want)
	}
	t.Logf("append (client %s seq 1) applied by group %d: length %s revision %d; moving shard %d to group %d", clientID, from, length0, rev0, sh, to)

	moved, err := retryAdmin(ctx, func(ctx context.Context) (client.ShardConfig, error) { return admin.ShardMove(ctx, sh, to) })
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	waitShardSettled(t, ctx, eps, moved.Num)

	// The retries.
	for _, try := range []struct {
		name  string
		cc    *grpc.ClientConn
		group uint64
	}{
		{"through a member of the old group, no group named (forwarded)", conns[1], 0},
		{fmt.Sprintf("naming the new group %d", to), conns[4], to},
		{"through a member of the new group, no group named", conns[5], 0},
	} {
		length, rev, err := appendOnce(try.cc, try.group)
		if err != nil {
			t.Fatalf("retry %s: %v", try.name, err)
		}
		if length != length0 || rev != rev0 {
			t.Errorf("retry %s answered length %s revision %d, want the first answer: length %s revision %d", try.name, length, rev, length0, rev0)
		}
	}
	// Naming the old owner is refused as wrong-group, not applied.
	if _, _, err := appendOnce(conns[2], from); err == nil || !strings.Contains(err.Error(), "wrong group") {
		t.Errorf("retry naming the old group %d: %v, want a wrong-group error", from, err)
	}
	r, err := admin.Get(ctx, key)
	if err != nil || len(r.KVs) != 1 {
		t.Fatalf("get: %+v %v", r, err)
	}
	if got := r.KVs[0].Value; got != before+piece {
		t.Fatalf("value after the retries = %q, want %q (the piece exactly once)", got, before+piece)
	}
	// A new sequence number is applied normally by the new owner.
	if _, err := admin.Append(ctx, key, "after;"); err != nil {
		t.Fatal(err)
	}
	if r, err := admin.Get(ctx, key); err != nil || r.KVs[0].Value != before+piece+"after;" {
		t.Fatalf("get after a fresh append: %+v %v", r, err)
	}
}
