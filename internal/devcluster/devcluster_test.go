package devcluster_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cairn-db/cairn/client"
	"github.com/cairn-db/cairn/internal/cli"
	"github.com/cairn-db/cairn/internal/devcluster"
)

// The test binary doubles as the cairn binary that devcluster starts.
const execCLIEnv = "CAIRN_DEVCLUSTER_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(execCLIEnv) == "1" {
		os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Setenv(execCLIEnv, "1")
	os.Exit(m.Run())
}

var fastArgs = []string{"--tick-interval", "20ms", "--request-timeout", "3s", "--log-level", "warn"}

func TestStartShardedKillRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real server processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := devcluster.StartSharded(ctx, devcluster.Options{Dir: t.TempDir(), Groups: 2, Shards: 8, ExtraArgs: fastArgs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.StopAll()
	defer func() {
		if t.Failed() {
			for i, m := range c.Members {
				t.Logf("--- log of %s (tail) ---\n%s", m.Name, c.Log(i, 3000))
			}
		}
	}()
	if !c.Sharded() || len(c.Members) != 3 || fmt.Sprint(c.GroupIDs()) != "[1 2]" {
		t.Fatalf("cluster: sharded %v, %d members, groups %v", c.Sharded(), len(c.Members), c.GroupIDs())
	}
	cl, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	cfg, err := cl.ShardConfigAt(ctx, -1)
	if err != nil || cfg.Num != 1 || len(cfg.Groups) != 2 || len(cfg.Shards) != 8 {
		t.Fatalf("configuration after StartSharded: %+v %v", cfg, err)
	}
	for i := range 20 {
		if _, err := cl.Put(ctx, fmt.Sprintf("k%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}

	// Kill a member, move a shard while it is down, restart it: it
	// catches up and the groups settle again. JoinAll joins nothing more.
	if err := c.Kill(2); err != nil {
		t.Fatal(err)
	}
	moved, err := cl.ShardMove(ctx, 0, 3-cfg.Shards[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitSettled(ctx, moved.Num); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(2); err != nil {
		t.Fatal(err)
	}
	again, err := c.JoinAll(ctx)
	if err != nil || again.Num != moved.Num {
		t.Fatalf("JoinAll after a restart: configuration %d (want %d), %v", again.Num, moved.Num, err)
	}
	one, err := client.New(client.Config{Endpoints: []string{c.Members[2].ClientAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	r, err := one.Get(ctx, "k", client.WithPrefix())
	if err != nil || len(r.KVs) != 20 {
		t.Fatalf("restarted member: %v keys, %v", len(r.KVs), err)
	}
}

func TestOptionsValidation(t *testing.T) {
	if _, err := devcluster.Start(devcluster.Options{Dir: t.TempDir(), Groups: -1}); err == nil {
		t.Fatal("Start accepted Groups -1")
	}
	if _, err := devcluster.StartSharded(context.Background(), devcluster.Options{Dir: t.TempDir()}); err == nil {
		t.Fatal("StartSharded accepted Groups 0")
	}
}
