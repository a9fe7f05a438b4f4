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

// TestLinearizableUnderCrashes runs concurrent clients doing get, put,
// append and compare-and-swap on a few keys while members are killed with
// SIGKILL, paused and restarted, and checks the history with porcupine.
func TestLinearizableUnderCrashes(t *testing.T) {
	c := startCluster(t, 3)
	rng := rand.New(rand.NewPCG(seed(t), 7))
	duration := 10 * time.Second
	if v := os.Getenv("CAIRN_E2E_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		duration = d
	}
	statusClient := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var nem sync.WaitGroup
	nem.Add(1)
	nemRng := rand.New(rand.NewPCG(rng.Uint64(), 1))
	go func() {
		defer nem.Done()
		nemesis(ctx, t, c, nemRng, func() int { return leaderOf(statusClient, c) })
	}()

	rec := chaos.NewRecorder()
	keys := []string{"x", "y", "z"}
	const clients = 6
	var wg sync.WaitGroup
	for id := range clients {
		crng := rand.New(rand.NewPCG(rng.Uint64(), uint64(id)))
		cl := newClient(t, c, client.Config{AttemptTimeout: 700 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			runRegisterClient(ctx, crng, cl, id, keys, 20, rec)
		}()
	}
	wg.Wait()
	nem.Wait()
	// Heal: every member up, then a final read of every key.
	for i := range c.Members {
		if !c.Running(i) {
			if err := c.Restart(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	final := newClient(t, c, client.Config{})
	fctx, fcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer fcancel()
	for _, k := range keys {
		in := chaos.Input{Op: "get", Key: k}
		call := rec.Now()
		out, outcome, err := chaos.Do(fctx, final, in)
		if outcome != chaos.OutcomeOK {
			t.Fatalf("cluster did not serve a read of %s within 30s after the faults stopped: %v", k, err)
		}
		rec.Add(clients, in, call, out, outcome, nil)
	}

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
	res, info := porcupine.CheckOperationsVerbose(chaos.Model, chaos.Operations(ents), 2*time.Minute)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Logf("porcupine timed out; history not fully checked")
	default:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("cairn-porcupine-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(chaos.Model, info, path); err != nil {
			t.Logf("writing visualization: %v", err)
		}
		t.Fatalf("history is not linearizable; visualization: %s", path)
	}
}
