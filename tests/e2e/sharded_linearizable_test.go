package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/cairn-db/cairn/client"
	"github.com/cairn-db/cairn/internal/chaos"
)

// TestShardedLinearizable runs concurrent clients doing get, put, append
// and compare-and-swap on keys spread over the shards of a sharded
// cluster (3 processes, each hosting the controller and shard groups 1-3,
// 16 shards) while a fault schedule joins groups 2 and 3, makes them
// leave, moves random shards, SIGKILLs and restarts a process and
// SIGSTOPs one for a while. The history must be linearizable (porcupine)
// and every group must settle at the newest configuration afterwards.
func TestShardedLinearizable(t *testing.T) {
	const nShards = 16
	s := startShardSet(t, "m", 3, "sharded-lin", "--controller", "--shard-groups", "1,2,3", "--shards", fmt.Sprint(nShards))
	rng := rand.New(rand.NewPCG(seed(t), 11))
	duration := 15 * time.Second
	if v := os.Getenv("CAIRN_E2E_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		duration = d
	}
	eps := s.endpoints()
	admin := shardClient(t, eps, time.Second)
	setup, setupCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer setupCancel()
	cfg, err := retryAdmin(setup, func(ctx context.Context) (client.ShardConfig, error) {
		return admin.ShardJoin(ctx, map[uint64][]string{1: eps})
	})
	if err != nil {
		t.Fatalf("join group 1: %v", err)
	}
	waitShardSettled(t, setup, eps, cfg.Num)

	// Keys in distinct shards.
	byShard := keysInShards("lin", nShards, 1)
	var keys []string
	for _, sh := range sortedShards(byShard)[:8] {
		keys = append(keys, byShard[sh][0])
	}
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var nem sync.WaitGroup
	nem.Add(1)
	nemRng := rand.New(rand.NewPCG(rng.Uint64(), 1))
	actions := map[string]int{}
	go func() {
		defer nem.Done()
		shardNemesis(ctx, t, s, admin, nemRng, nShards, actions)
	}()

	rec := chaos.NewRecorder()
	const clients = 5
	var wg sync.WaitGroup
	for id := range clients {
		crng := rand.New(rand.NewPCG(rng.Uint64(), uint64(id)))
		cl := shardClient(t, eps, 700*time.Millisecond)
		wg.Add(1)
		go func() {
			defer wg.Done()
			runRegisterClient(ctx, crng, cl, id, keys, 30, rec)
		}()
	}
	wg.Wait()
	nem.Wait()
	t.Logf("fault schedule: %v", actions)

	// Heal, read every key, and wait for the groups to settle.
	s.heal()
	final := shardClient(t, eps, time.Second)
	fctx, fcancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer fcancel()
	for _, k := range keys {
		in := chaos.Input{Op: "get", Key: k}
		call := rec.Now()
		out, outcome, err := chaos.Do(fctx, final, in)
		if outcome != chaos.OutcomeOK {
			t.Fatalf("cluster did not serve a read of %s within 40s after the faults stopped: %v", k, err)
		}
		rec.Add(clients, in, call, out, outcome, nil)
	}
	latest, err := retryAdmin(fctx, func(ctx context.Context) (client.ShardConfig, error) { return final.ShardConfigAt(ctx, -1) })
	if err != nil {
		t.Fatalf("query the newest configuration: %v", err)
	}
	waitShardSettled(t, fctx, eps, latest.Num)
	t.Logf("settled at configuration %d: shards %v", latest.Num, latest.Shards)

	ents := rec.Entries()
	counts := map[string]int{}
	for _, e := range ents {
		if e.Outcome == chaos.OutcomeOK {
			counts[e.Input.Op]++
		} else {
			counts[e.Outcome]++
		}
	}
	t.Logf("history: %d operations %v", len(ents), counts)
	if counts["put"]+counts["append"]+counts["cas"] < 20 {
		t.Fatalf("too few writes completed (%v): the cluster was unavailable most of the time", counts)
	}
	if latest.Num < 3 {
		t.Fatalf("only %d configurations were made: the fault schedule did not move shards", latest.Num)
	}
	res, info := porcupine.CheckOperationsVerbose(chaos.Model, chaos.Operations(ents), 2*time.Minute)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Logf("porcupine timed out; history not fully checked")
	default:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("cairn-sharded-porcupine-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(chaos.Model, info, path); err != nil {
			t.Logf("writing visualization: %v", err)
		}
		t.Fatalf("history is not linearizable; visualization: %s", path)
	}
}

// shardNemesis runs a seeded schedule until ctx ends: joins of groups 2
// and 3, leaves, moves of random shards, SIGKILL and restart of a
// process, SIGSTOP of a process for a while. At most one process is down
// at a time. actions counts what it did.
func shardNemesis(ctx context.Context, t *testing.T, s *shardSet, admin *client.Client, rng *rand.Rand, nShards int, actions map[string]int) {
	eps := s.endpoints()
	sleep := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	for ctx.Err() == nil {
		sleep(time.Duration(300+rng.IntN(700)) * time.Millisecond)
		if ctx.Err() != nil {
			return
		}
		switch r := rng.IntN(10); {
		case r < 5:
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			cfg, err := admin.ShardConfigAt(actx, -1)
			if err != nil {
				cancel()
				t.Logf("nemesis: query configuration: %v", err)
				continue
			}
			var joined, missing []uint64
			for _, g := range []uint64{1, 2, 3} {
				if _, ok := cfg.Groups[g]; ok {
					joined = append(joined, g)
				} else {
					missing = append(missing, g)
				}
			}
			var what string
			switch c := rng.IntN(3); {
			case len(missing) > 0 && (c == 0 || len(joined) == 0):
				g := missing[rng.IntN(len(missing))]
				what = fmt.Sprintf("join %d", g)
				_, err = admin.ShardJoin(actx, map[uint64][]string{g: eps})
			case c == 1 && len(joined) > 1:
				g := joined[rng.IntN(len(joined))]
				what = fmt.Sprintf("leave %d", g)
				_, err = admin.ShardLeave(actx, g)
			default:
				sh, g := rng.IntN(nShards), joined[rng.IntN(len(joined))]
				what = fmt.Sprintf("move shard %d to %d", sh, g)
				_, err = admin.ShardMove(actx, sh, g)
			}
			cancel()
			t.Logf("nemesis: %s (config was %d): err=%v", what, cfg.Num, err)
			if err == nil {
				actions[what[:4]]++
			}
		case r < 8:
			victim := rng.IntN(len(s.procs))
			down := time.Duration(300+rng.IntN(1200)) * time.Millisecond
			t.Logf("nemesis: SIGKILL %s, restart after %v", s.procs[victim].Name, down)
			if err := s.kill(victim); err != nil {
				t.Errorf("kill: %v", err)
			}
			actions["kill"]++
			time.Sleep(down)
			if err := s.start(victim); err != nil {
				t.Errorf("restart: %v", err)
			}
		default:
			victim := rng.IntN(len(s.procs))
			down := time.Duration(300+rng.IntN(1500)) * time.Millisecond
			t.Logf("nemesis: SIGSTOP %s for %v", s.procs[victim].Name, down)
			_ = s.pause(victim)
			actions["pause"]++
			time.Sleep(down)
			_ = s.resume(victim)
		}
	}
}
