package server

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairn-db/cairn/client"
	"github.com/cairn-db/cairn/internal/shard"
)

// startShardedCluster starts n members that each host the controller and
// the given shard groups.
func startShardedCluster(t *testing.T, n int, groups string, shards int, tweaks ...func(*Config)) []*Server {
	t.Helper()
	base := t.TempDir()
	cfgs := make([]Config, n)
	var ic []string
	for i := range cfgs {
		cfgs[i] = testConfig(t, filepath.Join(base, fmt.Sprintf("m%d", i+1)))
		cfgs[i].Name = fmt.Sprintf("m%d", i+1)
		cfgs[i].ClusterToken = "sharded-" + filepath.Base(base)
		cfgs[i].Controller = true
		cfgs[i].ShardGroups = groups
		cfgs[i].Shards = shards
		for _, tw := range tweaks {
			tw(&cfgs[i])
		}
		ic = append(ic, cfgs[i].Name+"="+cfgs[i].ListenPeer)
	}
	servers := make([]*Server, n)
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(ic, ",")
		servers[i] = start(t, cfgs[i])
	}
	return servers
}

func ctrlCall(t *testing.T, addr string, cmd *shard.Command) shard.Config {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		out, err := invokeBytes(ctx, cc, methodController, cmd.Marshal())
		if err == nil {
			var cfg shard.Config
			if err := cfg.UnmarshalBinary(out); err != nil {
				t.Fatal(err)
			}
			return cfg
		}
		if ctx.Err() != nil {
			t.Fatalf("controller %v: %v", cmd.Op, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hostStatusOf(t *testing.T, addr string) HostStatus {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := invokeBytes(ctx, cc, methodStatus, nil)
	if err != nil {
		t.Fatal(err)
	}
	var st HostStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitSettled waits until every member's replicas of every group are at
// configuration num with nothing in transit.
func waitSettled(t *testing.T, servers []*Server, num uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for _, s := range servers {
			for _, g := range hostStatusOf(t, s.ClientAddr()).Groups {
				if g.Config != num || len(g.Pulling)+len(g.Handing)+len(g.GCWait) > 0 {
					ok = false
				}
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			for _, s := range servers {
				t.Logf("%+v", hostStatusOf(t, s.ClientAddr()))
			}
			t.Fatalf("groups did not settle at configuration %d", num)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestShardedPutGetMove(t *testing.T) {
	servers := startShardedCluster(t, 3, "1,2", 8)
	addr := servers[0].ClientAddr()
	cfg := ctrlCall(t, addr, &shard.Command{Op: shard.OpJoin, Groups: map[shard.GroupID][]string{
		1: {servers[0].ClientAddr(), servers[1].ClientAddr(), servers[2].ClientAddr()},
	}})
	if cfg.Num != 1 {
		t.Fatalf("join made configuration %d", cfg.Num)
	}
	waitSettled(t, servers, 1)
	cl := etcdClient(t, servers[1].ClientAddr())
	ctx := context.Background()
	for i := range 100 {
		if _, err := cl.Put(ctx, fmt.Sprintf("k%03d", i), fmt.Sprint(i)); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	// Group 2 joins: about half the shards move from group 1 to group 2.
	cfg = ctrlCall(t, addr, &shard.Command{Op: shard.OpJoin, Groups: map[shard.GroupID][]string{
		2: {servers[0].ClientAddr(), servers[1].ClientAddr(), servers[2].ClientAddr()},
	}})
	waitSettled(t, servers, cfg.Num)
	for i := range 100 {
		resp, err := cl.Get(ctx, fmt.Sprintf("k%03d", i))
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != fmt.Sprint(i) {
			t.Fatalf("get k%03d after move: %v %v", i, resp, err)
		}
	}
	resp, err := cl.Get(ctx, "k", clientv3.WithPrefix(), clientv3.WithLimit(10))
	if err != nil || len(resp.Kvs) != 10 || resp.Count != 100 || !resp.More || string(resp.Kvs[0].Key) != "k000" || string(resp.Kvs[9].Key) != "k009" {
		t.Fatalf("prefix get: %v %v", resp, err)
	}
	// Other sort orders sort the merged parts before the limit.
	resp, err = cl.Get(ctx, "k", clientv3.WithPrefix(), clientv3.WithLimit(3), clientv3.WithSort(clientv3.SortByValue, clientv3.SortDescend))
	if err != nil || len(resp.Kvs) != 3 || string(resp.Kvs[0].Value) != "99" || string(resp.Kvs[2].Value) != "97" || !resp.More {
		t.Fatalf("sorted prefix get: %v %v", resp, err)
	}
	// Every group holds exactly the keys of its shards.
	st := hostStatusOf(t, servers[2].ClientAddr())
	total := 0
	for _, g := range st.Groups {
		for sh := range g.KeysHeld {
			if cfg.Shards[sh] != g.GID {
				t.Fatalf("group %d still holds keys of shard %d owned by %d: %+v", g.GID, sh, cfg.Shards[sh], st)
			}
		}
		total += g.Keys
	}
	if total != 100 {
		t.Fatalf("groups hold %d keys, want 100: %+v", total, st)
	}
	// A ranged delete runs in every group.
	del, err := cl.Delete(ctx, "k", clientv3.WithPrefix(), clientv3.WithPrevKV())
	if err != nil || del.Deleted != 100 || len(del.PrevKvs) != 100 || string(del.PrevKvs[0].Key) != "k000" {
		t.Fatalf("prefix delete: %v %v", del, err)
	}
	if resp, err := cl.Get(ctx, "k", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Fatalf("after prefix delete: %v %v", resp, err)
	}
	// Cross-shard transactions are refused.
	_, err = cl.Txn(ctx).Then(clientv3.OpPut("k000", "x"), clientv3.OpPut("k001", "y"), clientv3.OpPut("k002", "z"), clientv3.OpPut("k003", "w")).Commit()
	if err == nil || !strings.Contains(err.Error(), "cross-shard") {
		t.Fatalf("cross-shard txn: %v", err)
	}
}

// TestShardedRestart restarts every member of a sharded cluster from its
// data dir after snapshots were taken, and checks that the controller's
// configurations, the shard groups' states and the data survive.
func TestShardedRestart(t *testing.T) {
	base := t.TempDir()
	cfgs := make([]Config, 3)
	var ic []string
	for i := range cfgs {
		cfgs[i] = testConfig(t, filepath.Join(base, fmt.Sprintf("m%d", i+1)))
		cfgs[i].Name = fmt.Sprintf("m%d", i+1)
		cfgs[i].ClusterToken = "restart-" + filepath.Base(base)
		cfgs[i].Controller = true
		cfgs[i].ShardGroups = "1,2"
		cfgs[i].Shards = 8
		cfgs[i].SnapshotCount = 20
		cfgs[i].SnapshotCatchupEntries = 5
		ic = append(ic, cfgs[i].Name+"="+cfgs[i].ListenPeer)
	}
	servers := make([]*Server, 3)
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(ic, ",")
		s, err := Start(cfgs[i])
		if err != nil {
			t.Fatal(err)
		}
		servers[i] = s
	}
	addrs := func() []string {
		var out []string
		for _, s := range servers {
			out = append(out, s.ClientAddr())
		}
		return out
	}
	ctrlCall(t, servers[0].ClientAddr(), &shard.Command{Op: shard.OpJoin, Groups: map[shard.GroupID][]string{1: addrs()}})
	cl := etcdClient(t, servers[0].ClientAddr())
	ctx := context.Background()
	for i := range 100 {
		if _, err := cl.Put(ctx, fmt.Sprintf("r%03d", i), fmt.Sprint(i)); err != nil {
			t.Fatalf("put: %v", err)
		}
	}
	cfg := ctrlCall(t, servers[0].ClientAddr(), &shard.Command{Op: shard.OpJoin, Groups: map[shard.GroupID][]string{2: addrs()}})
	waitSettled(t, servers, cfg.Num)
	cl.Close()
	for _, s := range servers {
		s.Stop()
	}
	// A different shard count is refused.
	bad := restartConfig(t, cfgs[0])
	bad.Shards = 16
	if _, err := Start(bad); err == nil || !strings.Contains(err.Error(), "--shards 8") {
		t.Fatalf("restart with another shard count: %v", err)
	}
	for i := range cfgs {
		servers[i] = start(t, restartConfig(t, cfgs[i]))
	}
	waitSettled(t, servers, cfg.Num)
	cl = etcdClient(t, servers[2].ClientAddr())
	resp, err := cl.Get(ctx, "r", clientv3.WithPrefix())
	if err != nil || resp.Count != 100 || len(resp.Kvs) != 100 {
		t.Fatalf("after restart: %v keys, err %v", resp.Count, err)
	}
	got := ctrlCall(t, servers[1].ClientAddr(), &shard.Command{Op: shard.OpQuery, Num: -1})
	if !got.Equal(cfg) {
		t.Fatalf("controller after restart: %+v, want %+v", got, cfg)
	}
}

func TestShardedBeforeJoin(t *testing.T) {
	servers := startShardedCluster(t, 1, "1", 4)
	cl := etcdClient(t, servers[0].ClientAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := cl.Put(ctx, "a", "b")
	if err == nil || !strings.Contains(err.Error(), "no shard group has joined") {
		t.Fatalf("put before any join: %v", err)
	}
}

func TestCoverage(t *testing.T) {
	cfg := shard.Config{Num: 3, Shards: []shard.GroupID{1, 1, 2}}
	a := []bool{true, true, false}
	b := []bool{false, false, true}
	both := []bool{false, true, true}
	if !covered(cfg, [][]bool{a, b}) || !coveredOnce(cfg, [][]bool{a, b}) {
		t.Fatal("a disjoint cover is a cover")
	}
	if covered(cfg, [][]bool{a, {false, false, false}}) {
		t.Fatal("shard 2 served by no group counts as covered")
	}
	if !covered(cfg, [][]bool{a, both}) || coveredOnce(cfg, [][]bool{a, both}) {
		t.Fatal("shard 1 served twice must fail coveredOnce only")
	}
	if !coveredOnce(shard.InitialConfig(3), nil) {
		t.Fatal("configuration 0 owns nothing")
	}
}

// TestShardedLargeShardMoves moves a shard bigger than the transport's
// default message limit (16 MiB; this one holds 17 MiB): it travels as
// one log entry.
func TestShardedLargeShardMoves(t *testing.T) {
	// Replicating a 17 MiB entry under the race detector takes longer
	// than the tests' usual 100 ms election timeout; give it the default.
	servers := startShardedCluster(t, 3, "1,2", 2, func(c *Config) {
		c.TickInterval = 100 * time.Millisecond
		c.RequestTimeout = 20 * time.Second
	})
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.ClientAddr())
	}
	ctrlCall(t, addrs[0], &shard.Command{Op: shard.OpJoin, Groups: map[shard.GroupID][]string{1: addrs}})
	cl := etcdClient(t, addrs[0])
	ctx := context.Background()
	value := strings.Repeat("v", 1<<20)
	var keys []string
	for i := 0; len(keys) < 17; i++ {
		k := fmt.Sprintf("big%d", i)
		if shard.ShardOf([]byte(k), 2) != 1 {
			continue
		}
		keys = append(keys, k)
		if _, err := cl.Put(ctx, k, value); err != nil {
			t.Fatal(err)
		}
	}
	cfg := ctrlCall(t, addrs[0], &shard.Command{Op: shard.OpJoin, Groups: map[shard.GroupID][]string{2: addrs}})
	if cfg.Shards[1] != 2 {
		cfg = ctrlCall(t, addrs[0], &shard.Command{Op: shard.OpMove, Shard: 1, GID: 2})
	}
	waitSettled(t, servers, cfg.Num)
	for _, k := range keys {
		resp, err := cl.Get(ctx, k)
		if err != nil || len(resp.Kvs) != 1 || len(resp.Kvs[0].Value) != 1<<20 {
			t.Fatalf("get %s after the move: %v", k, err)
		}
	}
}

// TestShardedClientFallsBack: Cairn's client goes straight to the owning
// group, but when the group's listed address cannot be reached from the
// client it falls back to the configured endpoints, which route.
func TestShardedClientFallsBack(t *testing.T) {
	servers := startShardedCluster(t, 1, "1", 4)
	addr := servers[0].ClientAddr()
	unreachable := freeAddr(t) // nothing listens there
	ctrlCall(t, addr, &shard.Command{Op: shard.OpJoin, Groups: map[shard.GroupID][]string{1: {unreachable}}})
	c, err := client.New(client.Config{Endpoints: []string{addr}, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	if _, err := c.Append(ctx, "k", "w"); err != nil {
		t.Fatalf("append: %v", err)
	}
	res, err := c.Get(ctx, "k")
	if err != nil || len(res.KVs) != 1 || res.KVs[0].Value != "vw" {
		t.Fatalf("get: %+v %v", res, err)
	}
}
