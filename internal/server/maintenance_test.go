package server

import (
	"fmt"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

func maintenanceClient(t *testing.T, addr string) pb.MaintenanceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return pb.NewMaintenanceClient(cc)
}

// startThree starts a three-member cluster (threeMembers) in this process.
func startThree(t *testing.T, token string) []*Server {
	t.Helper()
	var servers []*Server
	for _, c := range threeMembers(t, token) {
		servers = append(servers, start(t, c))
	}
	return servers
}

// TestMoveLeader: etcd's MoveLeader hands the leadership to the target
// and returns once it leads; a follower refuses it with "not leader", and
// a target that is not a voting member is a bad transferee.
func TestMoveLeader(t *testing.T) {
	servers := startThree(t, "move-leader")
	ctx := ctxT(t, 20*time.Second)
	byID := map[uint64]*Server{}
	for _, s := range servers {
		byID[s.ID()] = s
	}
	lead, err := servers[0].main.node.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := byID[lead]
	var target *Server
	for _, s := range servers {
		if s != leader {
			target = s
			break
		}
	}

	_, err = maintenanceClient(t, target.ClientAddr()).MoveLeader(ctx, &pb.MoveLeaderRequest{TargetID: target.ID()})
	wantCode(t, "move-leader sent to a follower", err, codes.FailedPrecondition, "not leader")
	_, err = maintenanceClient(t, leader.ClientAddr()).MoveLeader(ctx, &pb.MoveLeaderRequest{TargetID: 12345})
	wantCode(t, "move-leader to a non-member", err, codes.FailedPrecondition, "bad leader transferee")

	if _, err := maintenanceClient(t, leader.ClientAddr()).MoveLeader(ctx, &pb.MoveLeaderRequest{TargetID: target.ID()}); err != nil {
		t.Fatalf("move-leader to %x: %v", target.ID(), err)
	}
	if got := leader.main.node.Leader(); got != target.ID() {
		t.Fatalf("after move-leader the old leader sees leader %x, want %x", got, target.ID())
	}
	// The new leader serves writes.
	kv, _ := rawKV(t, target.ClientAddr())
	if _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("put after move-leader: %v", err)
	}
}

// Defragment has nothing to do in Cairn and succeeds, so maintenance
// scripts written for etcd keep working.
func TestDefragmentSucceeds(t *testing.T) {
	s := start(t, testConfig(t, t.TempDir()))
	resp, err := maintenanceClient(t, s.ClientAddr()).Defragment(ctxT(t, 10*time.Second), &pb.DefragmentRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header == nil || resp.Header.MemberId != s.ID() {
		t.Fatalf("defragment header %v, want this member's", resp.Header)
	}
}

// TestHashKV: members that applied the same writes report the same hash
// at the same revision; a write changes it; revisions other than the
// current one are refused.
func TestHashKV(t *testing.T) {
	servers := startThree(t, "hashkv")
	ctx := ctxT(t, 20*time.Second)
	kv, _ := rawKV(t, servers[0].ClientAddr())
	for i := range 50 {
		if _, err := kv.Put(ctx, &pb.PutRequest{Key: fmt.Appendf(nil, "k%02d", i), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	// Followers apply a moment after the write returns: ask until every
	// member answers at the same revision.
	agreed := func() *pb.HashKVResponse {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			var resps []*pb.HashKVResponse
			for _, s := range servers {
				r, err := maintenanceClient(t, s.ClientAddr()).HashKV(ctx, &pb.HashKVRequest{})
				if err != nil {
					t.Fatal(err)
				}
				resps = append(resps, r)
			}
			same := true
			for _, r := range resps[1:] {
				if r.HashRevision != resps[0].HashRevision {
					same = false
				} else if r.Hash != resps[0].Hash {
					t.Fatalf("members disagree at revision %d: %08x and %08x", r.HashRevision, resps[0].Hash, r.Hash)
				}
			}
			if same {
				return resps[0]
			}
			if time.Now().After(deadline) {
				t.Fatalf("members never reached one revision: %v", resps)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	first := agreed()
	if first.Header.Revision != first.HashRevision || first.CompactRevision != first.HashRevision {
		t.Fatalf("header revision %d, hash revision %d, compact revision %d: want all equal", first.Header.Revision, first.HashRevision, first.CompactRevision)
	}
	if _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("k00"), Value: []byte("changed")}); err != nil {
		t.Fatal(err)
	}
	second := agreed()
	if second.HashRevision <= first.HashRevision || second.Hash == first.Hash {
		t.Fatalf("after a write: %08x@%d, before %08x@%d", second.Hash, second.HashRevision, first.Hash, first.HashRevision)
	}
	mc := maintenanceClient(t, servers[0].ClientAddr())
	_, err := mc.HashKV(ctx, &pb.HashKVRequest{Revision: second.HashRevision + 100})
	wantCode(t, "HashKV at a future revision", err, codes.OutOfRange, "future revision")
	_, err = mc.HashKV(ctx, &pb.HashKVRequest{Revision: 1})
	wantCode(t, "HashKV at an old revision", err, codes.Unimplemented, "earlier revision")
}

// Compaction has nothing to do (only the latest version of each key is
// kept) and succeeds up to the current revision; the store is unchanged.
func TestCompactSucceeds(t *testing.T) {
	s := start(t, testConfig(t, t.TempDir()))
	kv, _ := rawKV(t, s.ClientAddr())
	ctx := ctxT(t, 10*time.Second)
	put, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	rev := put.Header.Revision
	if _, err := kv.Compact(ctx, &pb.CompactionRequest{Revision: rev, Physical: true}); err != nil {
		t.Fatalf("compact at the current revision %d: %v", rev, err)
	}
	if _, err := kv.Compact(ctx, &pb.CompactionRequest{Revision: rev}); err != nil {
		t.Fatalf("compact again at %d: %v", rev, err)
	}
	got, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("k")})
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
		t.Fatalf("after compaction: %v, %v", got, err)
	}
}
