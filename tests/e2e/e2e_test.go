// Package e2e runs real `cairn server` processes and checks, from the
// outside, what users are promised: linearizability under crashes and
// pauses (checked with porcupine), no acknowledged write lost, exactly-once
// appends, and etcd client compatibility.
package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/cairn-db/cairn/client"
	"github.com/cairn-db/cairn/internal/devcluster"
)

var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "cairn-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "cairn")
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	cmd := exec.Command("go", "build", "-o", binary, "./cmd/cairn")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building cairn:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startCluster starts n real members with fast ticks and frequent
// snapshots, so failovers are quick and catch-up by snapshot happens.
func startCluster(t *testing.T, n int, extra ...string) *devcluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: runs real processes (not in -short mode)")
	}
	args := append([]string{"--tick-interval", "50ms", "--snapshot-count", "300", "--snapshot-catchup-entries", "50",
		"--request-timeout", "3s", "--log-level", "warn"}, extra...)
	c, err := devcluster.Start(devcluster.Options{Binary: binary, Dir: t.TempDir(), Members: n, ExtraArgs: args})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.StopAll()
		if t.Failed() {
			for i, m := range c.Members {
				t.Logf("--- log of %s (tail) ---\n%s", m.Name, c.Log(i, 4000))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, probe); err != nil {
		t.Fatal(err)
	}
	return c
}

func probe(ctx context.Context, ep string) error {
	cl, err := client.New(client.Config{Endpoints: []string{ep}, AttemptTimeout: 500 * time.Millisecond})
	if err != nil {
		return err
	}
	defer cl.Close()
	_, err = cl.Get(ctx, "probe")
	return err
}

func newClient(t *testing.T, c *devcluster.Cluster, cfg client.Config) *client.Client {
	t.Helper()
	cfg.Endpoints = c.Endpoints()
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = time.Second
	}
	cl, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// seed returns the test's random seed (CAIRN_SEED overrides) and logs it.
func seed(t *testing.T) uint64 {
	s := uint64(time.Now().UnixNano())
	if v := os.Getenv("CAIRN_SEED"); v != "" {
		p, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CAIRN_SEED=%q: %v", v, err)
		}
		s = p
	}
	t.Logf("seed %d (replay the fault schedule with CAIRN_SEED=%d)", s, s)
	return s
}

// nemesis kills, pauses and restarts members from a seeded schedule until
// ctx ends, then restarts everyone. It never takes down more than one
// member at a time, so a majority stays up.
func nemesis(ctx context.Context, t *testing.T, c *devcluster.Cluster, rng *rand.Rand, leader func() int) {
	for {
		wait := time.Duration(500+rng.IntN(1000)) * time.Millisecond
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		victim := rng.IntN(len(c.Members))
		if rng.IntN(2) == 0 {
			if l := leader(); l >= 0 {
				victim = l
			}
		}
		down := time.Duration(300+rng.IntN(1200)) * time.Millisecond
		if rng.IntN(4) == 0 {
			t.Logf("nemesis: pausing %s for %v", c.Members[victim].Name, down)
			_ = c.Pause(victim)
			time.Sleep(down)
			_ = c.Resume(victim)
			continue
		}
		t.Logf("nemesis: SIGKILL %s, restart after %v", c.Members[victim].Name, down)
		if err := c.Kill(victim); err != nil {
			t.Errorf("kill: %v", err)
		}
		time.Sleep(down)
		if err := c.Restart(victim); err != nil {
			t.Errorf("restart: %v", err)
		}
	}
}

// leaderOf asks each running member for its status and returns the index
// of the one that leads, or -1.
func leaderOf(cl *client.Client, c *devcluster.Cluster) int {
	for i, m := range c.Members {
		if !c.Running(i) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		st, err := cl.Status(ctx, m.ClientAddr)
		cancel()
		if err == nil && st.Leader != 0 && st.Leader == st.MemberID {
			return i
		}
	}
	return -1
}

func isUnknown(err error) bool { return errors.Is(err, client.ErrOutcomeUnknown) }
