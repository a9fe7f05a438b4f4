package e2e

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cairn-db/cairn/client"
	"github.com/cairn-db/cairn/internal/chaos"
)

// TestBankUnderCrashes moves money between accounts in guarded
// transactions while members are killed and paused; every atomic read of
// all accounts must show the same total, before, during and after.
func TestBankUnderCrashes(t *testing.T) {
	c := startCluster(t, 3)
	rng := rand.New(rand.NewPCG(seed(t), 11))
	bank := &chaos.Bank{Prefix: "bank/", Accounts: 5, Initial: 100}
	setup := newClient(t, c, client.Config{})
	sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer scancel()
	if err := bank.Setup(sctx, setup); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	statusClient := newClient(t, c, client.Config{})
	nemRng := rand.New(rand.NewPCG(rng.Uint64(), 1))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		nemesis(ctx, t, c, nemRng, func() int { return leaderOf(statusClient, c) })
	}()
	for id := range 4 {
		crng := rand.New(rand.NewPCG(rng.Uint64(), uint64(id)))
		cl := newClient(t, c, client.Config{AttemptTimeout: 700 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				opCtx, opCancel := context.WithTimeout(context.Background(), 4*time.Second)
				if crng.IntN(3) == 0 {
					_, _ = bank.Check(opCtx, cl)
				} else {
					_ = bank.Transfer(opCtx, cl, crng)
				}
				opCancel()
			}
		}()
	}
	wg.Wait()
	for i := range c.Members {
		if !c.Running(i) {
			if err := c.Restart(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	fctx, fcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer fcancel()
	for i, m := range c.Members {
		one, err := client.New(client.Config{Endpoints: []string{m.ClientAddr}, AttemptTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer one.Close()
		if _, err := bank.Check(fctx, one); err != nil {
			t.Fatalf("final read on %s (member %d): %v", m.Name, i, err)
		}
	}
	rep := bank.Report()
	t.Logf("bank: %s", rep)
	if !rep.OK() {
		t.Fatalf("bank invariant broken: %s", rep)
	}
	if rep.Transfers < 20 {
		t.Fatalf("only %d transfers went through: the test did not exercise much", rep.Transfers)
	}
}
