package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/client"
)

// startTwoSets starts processes A (controller and shard group 1) and
// processes B (shard group 2, using A's controller), joins group 1, and
// returns both sets.
func startTwoSets(t *testing.T, token string, nShards int) (a, b *shardSet) {
	t.Helper()
	a = startShardSet(t, "a", 3, token, "--controller", "--shard-groups", "1", "--shards", fmt.Sprint(nShards))
	b = startShardSet(t, "b", 3, token, "--shard-groups", "2", "--controller-endpoints", strings.Join(a.endpoints(), ","), "--shards", fmt.Sprint(nShards))
	return a, b
}

// TestShardedAvailabilityDuringMove holds a move up by making the source
// group unreachable (every process of group 2 SIGSTOPped) and checks
// that group 1 keeps serving the shards that are not moving, with no
// errors, while the moving shard is not served by anyone; then resumes
// group 2 and checks the move completes with the data intact.
func TestShardedAvailabilityDuringMove(t *testing.T) {
	const nShards = 8
	a, b := startTwoSets(t, "sharded-avail", nShards)
	all := append(a.endpoints(), b.endpoints()...)
	admin := shardClient(t, a.endpoints(), time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	cfg, err := retryAdmin(ctx, func(ctx context.Context) (client.ShardConfig, error) {
		return admin.ShardJoin(ctx, map[uint64][]string{1: a.endpoints()})
	})
	if err != nil {
		t.Fatalf("join group 1: %v", err)
	}
	waitShardSettled(t, ctx, all, cfg.Num)
	byShard := keysInShards("av", nShards, 4)
	writer := shardClient(t, all, time.Second)
	want := map[string]string{}
	for _, sh := range sortedShards(byShard) {
		for _, k := range byShard[sh] {
			if _, err := writer.Put(ctx, k, "v-"+k); err != nil {
				t.Fatalf("put %s: %v", k, err)
			}
			want[k] = "v-" + k
		}
	}
	cfg, err = retryAdmin(ctx, func(ctx context.Context) (client.ShardConfig, error) {
		return admin.ShardJoin(ctx, map[uint64][]string{2: b.endpoints()})
	})
	if err != nil {
		t.Fatalf("join group 2: %v", err)
	}
	waitShardSettled(t, ctx, all, cfg.Num)
	var g1Shards, g2Shards []int
	for sh, g := range cfg.Shards {
		switch g {
		case 1:
			g1Shards = append(g1Shards, sh)
		case 2:
			g2Shards = append(g2Shards, sh)
		}
	}
	if len(g1Shards) == 0 || len(g2Shards) == 0 {
		t.Fatalf("configuration %d does not split the shards: %v", cfg.Num, cfg.Shards)
	}
	moving := g2Shards[0]
	t.Logf("configuration %d: group 1 has %v, group 2 has %v; moving shard %d from 2 to 1", cfg.Num, g1Shards, g2Shards, moving)

	// Make the source unreachable, then move one of its shards to group 1.
	for i := range b.procs {
		if err := b.pause(i); err != nil {
			t.Fatal(err)
		}
	}
	moved, err := retryAdmin(ctx, func(ctx context.Context) (client.ShardConfig, error) {
		return admin.ShardMove(ctx, moving, 1)
	})
	if err != nil {
		t.Fatalf("move shard %d: %v", moving, err)
	}
	// Group 1 reaches the new configuration with the shard Pulling.
	for {
		st, err := shardStatus(ctx, a.procs[0].ClientAddr)
		if err == nil && len(st.Groups) == 1 && st.Groups[0].Config == moved.Num && slices.Contains(st.Groups[0].Pulling, moving) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("group 1 never started pulling shard %d at configuration %d: %+v %v", moving, moved.Num, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// While the move is held: keys of group 1's other shards keep working.
	var stable []string
	for _, sh := range g1Shards {
		stable = append(stable, byShard[sh]...)
	}
	const hold = 3 * time.Second
	hctx, hcancel := context.WithTimeout(ctx, hold)
	var mu sync.Mutex
	var lat []time.Duration
	var errs []error
	var wg sync.WaitGroup
	for w := range 4 {
		cl := shardClient(t, a.endpoints(), time.Second)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; hctx.Err() == nil; n++ {
				k := stable[(w*7+n)%len(stable)]
				start := time.Now()
				octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
				var err error
				if n%2 == 0 {
					_, err = cl.Put(octx, k, "v-"+k)
				} else {
					var r *client.GetResult
					r, err = cl.Get(octx, k)
					if err == nil && (len(r.KVs) != 1 || r.KVs[0].Value != "v-"+k) {
						err = fmt.Errorf("get %s = %+v", k, r.KVs)
					}
				}
				ocancel()
				d := time.Since(start)
				mu.Lock()
				lat = append(lat, d)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", k, err))
				}
				mu.Unlock()
			}
		}()
	}
	// Meanwhile, the moving shard's keys are not served by group 1.
	cc, err := grpc.NewClient(a.procs[1].ClientAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	mk := byShard[moving][0]
	rctx, rcancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "cairn-group", "1"), 2*time.Second)
	_, err = pb.NewKVClient(cc).Range(rctx, &pb.RangeRequest{Key: []byte(mk)})
	rcancel()
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "wrong group") {
		t.Errorf("group 1 answered a read of %s (shard %d, still pulling) with %v, want a wrong-group error", mk, moving, err)
	}
	gctx, gcancel := context.WithTimeout(ctx, time.Second)
	r, err := shardClient(t, a.endpoints(), 300*time.Millisecond).Get(gctx, mk)
	gcancel()
	if err == nil {
		t.Errorf("a read of %s (shard %d, held up) succeeded during the move: %+v", mk, moving, r.KVs)
	}
	wg.Wait()
	hcancel()
	slices.Sort(lat)
	p99 := lat[len(lat)*99/100]
	t.Logf("during the held move: %d operations on group 1's other shards, %d errors, p50 %v, p99 %v, max %v",
		len(lat), len(errs), lat[len(lat)/2], p99, lat[len(lat)-1])
	if len(errs) > 0 {
		t.Errorf("operations on shards that are not moving failed during the move: %d, first %v", len(errs), errs[0])
	}
	if len(lat) < 100 {
		t.Errorf("only %d operations completed in %v on shards that are not moving", len(lat), hold)
	}
	if p99 > time.Second {
		t.Errorf("p99 latency %v on shards that are not moving", p99)
	}

	// Resume group 2: the move completes and every key is there.
	for i := range b.procs {
		_ = b.resume(i)
	}
	waitShardSettled(t, ctx, all, moved.Num)
	reader := shardClient(t, b.endpoints(), time.Second)
	for k, v := range want {
		r, err := reader.Get(ctx, k)
		if err != nil || len(r.KVs) != 1 || r.KVs[0].Value != v {
			t.Fatalf("after the move, get %s: %+v %v (want %q)", k, r, err, v)
		}
	}
	st, err := shardStatus(ctx, a.procs[2].ClientAddr)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(st.Groups[0].Serving, moving) || st.Groups[0].KeysHeld[moving] != len(byShard[moving]) {
		t.Fatalf("group 1 does not serve shard %d with its %d keys after the move: %+v", moving, len(byShard[moving]), st.Groups[0])
	}
}
