package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cairn-db/cairn/client"
	"github.com/cairn-db/cairn/internal/devcluster"
)

// probeRead does a linearizable read against one endpoint only.
func probeRead(ctx context.Context, endpoint string) error {
	cl, err := client.New(client.Config{Endpoints: []string{endpoint}, AttemptTimeout: 500 * time.Millisecond})
	if err != nil {
		return err
	}
	defer cl.Close()
	_, err = cl.Get(ctx, "cairn-ready-probe")
	return err
}

func runDev(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cairn dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("data-dir", "cairn-dev", "directory for the members' data and logs (kept between runs)")
	members := fs.Int("members", 3, "number of members")
	port := fs.Int("port", 2379, "first client port; member i uses port+10000*i for clients and that +1 for peers")
	groups := fs.Int("groups", 0, "start a sharded cluster: every member hosts the shard controller and shard groups 1..N, which are joined (0: unsharded)")
	shards := fs.Int("shards", 0, "with --groups: the number of shards (0: the server's default, 64)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: cairn dev [--data-dir DIR] [--members N] [--port P] [--groups N [--shards S]]\n\nStarts a local cluster of real cairn server processes and keeps it running until Ctrl-C.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 || *members < 1 || *members > 9 {
		fs.Usage()
		return 2
	}
	switch {
	case *groups < 0:
		fmt.Fprintf(stderr, "cairn dev: --groups must be at least 1 for a sharded cluster (or 0), not %d\n", *groups)
		return 2
	case *shards < 0:
		fmt.Fprintf(stderr, "cairn dev: --shards must be positive, not %d\n", *shards)
		return 2
	case *shards > 0 && *groups == 0:
		fmt.Fprintln(stderr, "cairn dev: --shards needs --groups (a sharded cluster)")
		return 2
	}
	var ports []int
	for i := range *members {
		ports = append(ports, *port+10000*i)
	}
	abs, _ := filepath.Abs(*dir)
	c, err := devcluster.Start(devcluster.Options{Dir: abs, Members: *members, Ports: ports, Token: "cairn-dev",
		Groups: *groups, Shards: *shards})
	if err != nil {
		fmt.Fprintf(stderr, "cairn dev: %v\n", err)
		return 1
	}
	defer c.StopAll()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	var cfg client.ShardConfig
	if *groups > 0 {
		cfg, err = c.JoinAll(rctx)
	} else {
		err = c.WaitReady(rctx, probeRead)
	}
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "cairn dev: %v\n", err)
		return 1
	}
	eps := strings.Join(c.Endpoints(), ",")
	if *groups > 0 {
		fmt.Fprintf(stdout, "Cairn sharded dev cluster: %d members, each hosting the shard controller and groups %s; data and logs in %s\n\n",
			*members, rangesU(c.GroupIDs()), abs)
	} else {
		fmt.Fprintf(stdout, "Cairn dev cluster: %d members, data and logs in %s\n\n", *members, abs)
	}
	for _, m := range c.Members {
		fmt.Fprintf(stdout, "  %s  client %s  peer %s  log %s\n", m.Name, m.ClientAddr, m.PeerAddr, m.LogPath)
	}
	if *groups > 0 {
		fmt.Fprintf(stdout, "\nShard configuration %d: %d shards over %d groups.\n", cfg.Num, len(cfg.Shards), len(cfg.Groups))
	}
	fmt.Fprintf(stdout, "\nTry:\n  export CAIRN_ENDPOINTS=%s\n  go run ./cmd/cairn put greeting hello\n  go run ./cmd/cairn get greeting\n  go run ./cmd/cairn status\n", eps)
	if *groups > 0 {
		fmt.Fprintln(stdout, "  go run ./cmd/cairn shard config")
		if *groups > 1 {
			fmt.Fprintln(stdout, "  go run ./cmd/cairn shard move 3 2      # move shard 3 to group 2, then watch 'cairn status'")
		}
	}
	fmt.Fprintf(stdout, "  etcdctl --endpoints=%s put foo bar && etcdctl --endpoints=%s get foo\n", eps, eps)
	fmt.Fprintln(stdout, "\nCtrl-C stops the cluster.")
	dead := make(chan int, len(c.Members))
	for i := range c.Members {
		go func() {
			<-c.Done(i)
			dead <- i
		}()
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(stdout, "\nstopping...")
		return 0
	case i := <-dead:
		fmt.Fprintf(stderr, "cairn dev: member %s exited unexpectedly; last log lines:\n%s\n", c.Members[i].Name, c.Log(i, 2000))
		return 1
	}
}

// rangesU is ranges for group IDs.
func rangesU(ids []uint64) string {
	var s []int
	for _, id := range ids {
		s = append(s, int(id))
	}
	return ranges(s)
}

// runDemo is the README's first command: it shows a cluster surviving the
// loss of its leader without losing an acknowledged write.
func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cairn demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keep := fs.Bool("keep", false, "keep the demo's data directory")
	writes := fs.Int("writes", 200, "writes before and after the failure")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	if err := demo(stdout, *writes, *keep); err != nil {
		fmt.Fprintf(stderr, "cairn demo: FAILED: %v\n", err)
		return 1
	}
	return 0
}

func demo(out io.Writer, writes int, keep bool) error {
	dir, err := os.MkdirTemp("", "cairn-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	step := func(format string, a ...any) { fmt.Fprintf(out, "==> "+format+"\n", a...) }

	step("starting a 3-member cluster of real processes in %s", dir)
	c, err := devcluster.Start(devcluster.Options{Dir: dir, Members: 3, ExtraArgs: []string{"--tick-interval", "50ms"}})
	if err != nil {
		return err
	}
	defer c.StopAll()
	if err := c.WaitReady(ctx, probeRead); err != nil {
		return err
	}
	cl, err := client.New(client.Config{Endpoints: c.Endpoints(), AttemptTimeout: time.Second})
	if err != nil {
		return err
	}
	defer cl.Close()

	step("writing %d keys", writes)
	acked := map[string]string{}
	for i := range writes {
		k, v := fmt.Sprintf("demo/%04d", i), fmt.Sprintf("value-%d", i)
		if _, err := cl.Put(ctx, k, v); err != nil {
			return fmt.Errorf("put %s: %w", k, err)
		}
		acked[k] = v
	}
	leader, err := findLeader(ctx, cl, c)
	if err != nil {
		return err
	}
	st, _ := cl.Status(ctx, c.Members[leader].ClientAddr)
	step("leader is %s (term %d); killing it with SIGKILL", c.Members[leader].Name, st.Term)
	if err := c.Kill(leader); err != nil {
		return err
	}
	start := time.Now()
	var newLeader int
	for {
		newLeader, err = findLeader(ctx, cl, c)
		if err == nil && newLeader != leader {
			break
		}
		if ctx.Err() != nil {
			return errors.New("no new leader was elected")
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, _ = cl.Status(ctx, c.Members[newLeader].ClientAddr)
	step("new leader %s elected in %v (term %d)", c.Members[newLeader].Name, time.Since(start).Round(time.Millisecond), st.Term)

	step("writing %d more keys with one member down", writes)
	for i := writes; i < 2*writes; i++ {
		k, v := fmt.Sprintf("demo/%04d", i), fmt.Sprintf("value-%d", i)
		if _, err := cl.Put(ctx, k, v); err != nil {
			return fmt.Errorf("put %s: %w", k, err)
		}
		acked[k] = v
	}
	if err := checkAll(ctx, cl, acked); err != nil {
		return err
	}
	step("all %d acknowledged writes are readable (linearizable reads)", len(acked))

	step("restarting %s from its data dir", c.Members[leader].Name)
	if err := c.Restart(leader); err != nil {
		return err
	}
	one, err := client.New(client.Config{Endpoints: []string{c.Members[leader].ClientAddr}, AttemptTimeout: time.Second})
	if err != nil {
		return err
	}
	defer one.Close()
	last := fmt.Sprintf("demo/%04d", 2*writes-1)
	for {
		r, err := one.Get(ctx, last, client.WithSerializable())
		if err == nil && len(r.KVs) == 1 {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s did not catch up", c.Members[leader].Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := checkAll(ctx, one, acked); err != nil {
		return fmt.Errorf("restarted member: %w", err)
	}
	step("%s caught up: it serves all %d keys", c.Members[leader].Name, len(acked))
	fmt.Fprintf(out, "\ndemo OK: %d writes acknowledged, leader killed with SIGKILL, no acknowledged write lost, failover in %v\n",
		len(acked), time.Since(start).Round(time.Millisecond))
	return nil
}

func findLeader(ctx context.Context, cl *client.Client, c *devcluster.Cluster) (int, error) {
	for i, m := range c.Members {
		if !c.Running(i) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, err := cl.Status(sctx, m.ClientAddr)
		cancel()
		if err == nil && st.Leader != 0 && st.Leader == st.MemberID {
			return i, nil
		}
	}
	return -1, errors.New("no leader")
}

func checkAll(ctx context.Context, cl *client.Client, acked map[string]string) error {
	r, err := cl.Get(ctx, "demo/", client.WithPrefix())
	if err != nil {
		return err
	}
	got := map[string]string{}
	for _, kv := range r.KVs {
		got[kv.Key] = kv.Value
	}
	for k, v := range acked {
		if got[k] != v {
			return fmt.Errorf("acknowledged write %s=%s reads back as %q", k, v, got[k])
		}
	}
	return nil
}
