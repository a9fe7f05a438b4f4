package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cairn-db/cairn/internal/chaos"
)

// runChaos runs the containerized fault-injection harness once: a
// 3-member cluster in Docker, concurrent clients, a seeded fault
// schedule, then the linearizability, append and recovery checks.
func runChaos(args []string, stdout, stderr io.Writer) int {
	var cfg chaos.Config
	fs := flag.NewFlagSet("cairn chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Image, "image", "cairn:dev", "server image to test (build it with deploy/build-image.sh)")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "seed for the fault schedule and workload (0: from the clock; printed)")
	fs.DurationVar(&cfg.Duration, "duration", time.Minute, "how long the workload runs under faults")
	fs.IntVar(&cfg.MaxOps, "ops", 100000, "bound on operations")
	fs.IntVar(&cfg.Clients, "clients", 5, "concurrent clients")
	fs.IntVar(&cfg.Groups, "groups", 0, "run a sharded cluster: every member hosts the controller and shard groups 1..N, and shards are joined, left and moved during the run (0: unsharded)")
	fs.IntVar(&cfg.Shards, "shards", 0, fmt.Sprintf("shard count with --groups (0: %d)", chaos.DefaultShards))
	faults := fs.String("faults", "all", fmt.Sprintf("comma-separated fault kinds, or all (%v)", chaos.AllKinds))
	fs.StringVar(&cfg.ArtifactDir, "artifacts", "", "parent directory for the evidence directory (default $TMPDIR)")
	fs.BoolVar(&cfg.Keep, "keep", false, "save the evidence directory even when the run passes")
	quiet := fs.Bool("quiet", false, "print only the summary")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: cairn chaos [flags]\n\nRuns a 3-member cluster in Docker under a seeded fault schedule and checks linearizability,\nacknowledged appends and recovery. With --groups N the cluster is sharded: groups join, leave\nand shards move during the run, and at the end every group must settle and garbage collection\nmust be complete. Exit status 1 on any violation. See docs/reliability.md.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if cfg.Groups < 0 || cfg.Shards < 0 || (cfg.Shards > 0 && cfg.Groups == 0) {
		fmt.Fprintln(stderr, "cairn chaos: --groups must be ≥ 0, and --shards needs --groups")
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "cairn chaos: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var err error
	if cfg.Kinds, err = chaos.ParseKinds(*faults); err != nil {
		fmt.Fprintf(stderr, "cairn chaos: %v\n", err)
		return 2
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	if !*quiet {
		cfg.Logf = func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(stdout, "seed %d\n", cfg.Seed)
	res, err := chaos.Run(ctx, cfg)
	if res != nil {
		fmt.Fprint(stdout, res.Summary())
	}
	if err != nil {
		fmt.Fprintf(stderr, "cairn chaos: %v\n", err)
		return 1
	}
	if res.Failed() {
		hint := chaos.ReplayHint(cfg.Seed, cfg.Duration)
		if cfg.Groups > 0 {
			hint = chaos.ShardedReplayHint(cfg.Seed, cfg.Duration, cfg.Groups)
		}
		fmt.Fprintf(stdout, "replay: %s\n", hint)
		return 1
	}
	return 0
}
