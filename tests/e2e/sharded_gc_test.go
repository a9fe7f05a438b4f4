package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cairn-db/cairn/client"
)

// TestShardedGarbageCollection writes keys into every shard, then moves
// shards around (two joins, two moves, a leave) and checks, through each
// process's shard status and /metrics, that once the groups settle no
// group holds keys of a shard it does not own (the old owners deleted
// what they handed off), that the keys across groups add up to the number
// written, and that no shard is left pulling, handing off or awaiting
// deletion.
func TestShardedGarbageCollection(t *testing.T) {
	const nShards = 12
	s := startShardSet(t, "m", 3, "sharded-gc", "--controller", "--shard-groups", "1,2,3", "--shards", fmt.Sprint(nShards))
	eps := s.endpoints()
	cl := shardClient(t, eps, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg, err := retryAdmin(ctx, func(ctx context.Context) (client.ShardConfig, error) {
		return cl.ShardJoin(ctx, map[uint64][]string{1: eps})
	})
	if err != nil {
		t.Fatal(err)
	}
	waitShardSettled(t, ctx, eps, cfg.Num)
	byShard := keysInShards("gc", nShards, 5)
	written := 0
	for _, sh := range sortedShards(byShard) {
		for _, k := range byShard[sh] {
			if _, err := cl.Put(ctx, k, "v"); err != nil {
				t.Fatal(err)
			}
			written++
		}
	}
	owners := map[int][]uint64{} // shard -> every owner it had
	note := func(cfg client.ShardConfig) {
		for sh, g := range cfg.Shards {
			if o := owners[sh]; len(o) == 0 || o[len(o)-1] != g {
				owners[sh] = append(owners[sh], g)
			}
		}
	}
	note(cfg)
	steps := []func(ctx context.Context) (client.ShardConfig, error){
		func(ctx context.Context) (client.ShardConfig, error) {
			return cl.ShardJoin(ctx, map[uint64][]string{2: eps})
		},
		func(ctx context.Context) (client.ShardConfig, error) {
			return cl.ShardJoin(ctx, map[uint64][]string{3: eps})
		},
		func(ctx context.Context) (client.ShardConfig, error) { return cl.ShardMove(ctx, 0, 3) },
		func(ctx context.Context) (client.ShardConfig, error) { return cl.ShardMove(ctx, nShards-1, 1) },
		func(ctx context.Context) (client.ShardConfig, error) { return cl.ShardLeave(ctx, 2) },
	}
	for i, step := range steps {
		cfg, err = retryAdmin(ctx, step)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		note(cfg)
		// Let some steps overlap with the previous move; settle on others.
		if i%2 == 1 {
			waitShardSettled(t, ctx, eps, cfg.Num)
		}
	}
	sts := waitShardSettled(t, ctx, eps, cfg.Num)
	moved := 0
	for _, o := range owners {
		if len(o) > 1 {
			moved++
		}
	}
	t.Logf("configuration %d: owners over time per shard %v (%d shards moved at least once)", cfg.Num, owners, moved)
	for _, ep := range eps {
		st := sts[ep]
		total := 0
		for _, g := range st.Groups {
			for sh, n := range g.KeysHeld {
				if cfg.Shards[sh] != g.GID {
					t.Errorf("%s: group %d still holds %d keys of shard %d, owned by group %d (owners over time %v)", st.Member, g.GID, n, sh, cfg.Shards[sh], owners[sh])
				}
			}
			for sh, owner := range cfg.Shards {
				if owner == g.GID && g.KeysHeld[sh] != len(byShard[sh]) {
					t.Errorf("%s: group %d holds %d keys of its shard %d, want %d", st.Member, g.GID, g.KeysHeld[sh], sh, len(byShard[sh]))
				}
			}
			total += g.Keys
		}
		if total != written {
			t.Errorf("%s: groups hold %d keys in all, want %d: %+v", st.Member, total, written, st.Groups)
		}
	}

	// The same through /metrics (sampled about once a second).
	for i, p := range s.procs {
		var m map[string]float64
		for {
			m, err = shardMetrics(ctx, p.MetricsAddr)
			if err == nil && metricsAgree(m, cfg, written) == "" {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%s metrics never matched the settled configuration: %v %s\n%v", s.procs[i].Name, err, metricsAgree(m, cfg, written), m)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// metricsAgree returns what in the shard gauges disagrees with a settled
// configuration holding written keys, or "".
func metricsAgree(m map[string]float64, cfg client.ShardConfig, written int) string {
	keys := 0.0
	for _, g := range []uint64{1, 2, 3} {
		keys += m[fmt.Sprintf(`cairn_shard_group_keys{group="%d"}`, g)]
		want := 0
		for _, o := range cfg.Shards {
			if o == g {
				want++
			}
		}
		if v := m[fmt.Sprintf(`cairn_shard_group_shards{group="%d",state="serving"}`, g)]; v != float64(want) {
			return fmt.Sprintf("group %d serves %v shards, want %d", g, v, want)
		}
		for _, st := range []string{"pulling", "handing-off", "gc-pending"} {
			if v, ok := m[fmt.Sprintf(`cairn_shard_group_shards{group="%d",state=%q}`, g, st)]; !ok || v != 0 {
				return fmt.Sprintf("group %d has %v shards %s (present %v)", g, v, st, ok)
			}
		}
	}
	if keys != float64(written) {
		return fmt.Sprintf("%v keys across groups, want %d", keys, written)
	}
	return ""
}
