package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cairn-db/cairn/internal/gctune"
	"github.com/cairn-db/cairn/internal/server"
)

// bindServerFlags binds `cairn server` flags to cfg. Every flag can also
// be set with a CAIRN_* environment variable (upper case, dashes as
// underscores); a flag on the command line wins.
func bindServerFlags(fs *flag.FlagSet, cfg *server.Config, logLevel *string) {
	fs.StringVar(&cfg.Name, "name", cfg.Name, "member name, as in --initial-cluster")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the WAL, snapshots and member identity")
	fs.StringVar(&cfg.ListenClient, "listen-client", cfg.ListenClient, "gRPC address for clients (etcd v3 API)")
	fs.StringVar(&cfg.AdvertiseClient, "advertise-client", cfg.AdvertiseClient, "client address to announce to other members (default --listen-client)")
	fs.StringVar(&cfg.ListenPeer, "listen-peer", cfg.ListenPeer, "address for Raft traffic between members")
	fs.StringVar(&cfg.InitialCluster, "initial-cluster", cfg.InitialCluster, "initial members: name=host:port,... (peer addresses)")
	fs.StringVar(&cfg.InitialClusterState, "initial-cluster-state", cfg.InitialClusterState, "new (bootstrap) or existing (join after 'cairn member add')")
	fs.StringVar(&cfg.ClusterToken, "cluster-token", cfg.ClusterToken, "token that makes this cluster's ID unique")
	fs.StringVar(&cfg.ListenMetrics, "listen-metrics", cfg.ListenMetrics, "address for /metrics and /health (empty disables)")
	fs.BoolVar(&cfg.EnablePprof, "enable-pprof", cfg.EnablePprof, "serve /debug/pprof/ on --listen-metrics")
	fs.DurationVar(&cfg.TickInterval, "tick-interval", cfg.TickInterval, "duration of one Raft tick")
	fs.IntVar(&cfg.ElectionTicks, "election-ticks", cfg.ElectionTicks, "ticks without a leader before an election")
	fs.Int64Var(&cfg.SnapshotCount, "snapshot-count", cfg.SnapshotCount, "applied entries between snapshots, at the least")
	fs.Int64Var(&cfg.SnapshotCountMax, "snapshot-count-max", cfg.SnapshotCountMax, "applied entries between snapshots, at the most (0: 5x --snapshot-count); in between, a snapshot waits until the entries since the last one hold as many bytes as it had")
	fs.BoolVar(&cfg.WALPreallocate, "wal-preallocate", cfg.WALPreallocate, "zero-fill each 64 MiB WAL segment before use, for cheaper fsyncs")
	fs.Uint64Var(&cfg.SnapshotCatchupEntries, "snapshot-catchup-entries", cfg.SnapshotCatchupEntries, "entries kept behind a snapshot for lagging followers")
	fs.DurationVar(&cfg.SessionTTL, "session-ttl", cfg.SessionTTL, "forget exactly-once sessions idle this long")
	fs.IntVar(&cfg.MaxRequestBytes, "max-request-bytes", cfg.MaxRequestBytes, "largest client request accepted")
	fs.DurationVar(&cfg.RequestTimeout, "request-timeout", cfg.RequestTimeout, "how long a write waits to apply before the client is told the outcome is unknown")
	fs.StringVar(logLevel, "log-level", *logLevel, "debug, info, warn or error")
	fs.BoolVar(&cfg.Controller, "controller", cfg.Controller, "sharded mode: host a replica of the shard controller (every --initial-cluster member must too)")
	fs.StringVar(&cfg.ShardGroups, "shard-groups", cfg.ShardGroups, "sharded mode: shard group IDs to host a replica of, e.g. 1,2,3 (every --initial-cluster member hosts the same)")
	fs.StringVar(&cfg.ControllerEndpoints, "controller-endpoints", cfg.ControllerEndpoints, "sharded mode without --controller: client addresses (host:port,...) of controller members")
	fs.IntVar(&cfg.Shards, "shards", cfg.Shards, "sharded mode: number of shards, fixed when the data dir is created")
}

// checkShardFlags rejects sharding flags that would be silently ignored
// because the process is not sharded. set names the flags given on the
// command line or through CAIRN_* variables.
func checkShardFlags(cfg *server.Config, set map[string]bool) error {
	if cfg.Sharded() {
		return nil
	}
	for _, f := range []string{"controller-endpoints", "shards"} {
		if set[f] {
			return fmt.Errorf("--%s applies only to a sharded server; add --controller or --shard-groups", f)
		}
	}
	return nil
}

// applyEnv sets flags from CAIRN_* variables for flags not given on the
// command line.
func applyEnv(fs *flag.FlagSet, given map[string]bool) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		env := "CAIRN_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
		}
	})
	return err
}

func parseWithEnv(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	return applyEnv(fs, given)
}

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

func runServer(args []string, stdout, stderr io.Writer) int {
	cfg := server.Defaults()
	logLevel := "info"
	fs := flag.NewFlagSet("cairn server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bindServerFlags(fs, &cfg, &logLevel)
	version := fs.Bool("version", false, "print the version and exit")
	gcHeadroom := fs.Int("gc-headroom-mb", 64, "heap growth allowed between garbage collections once the data is large (MiB); 0 keeps Go's default GOGC=100, as does a GOGC environment variable")
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: cairn server [flags]

Runs one member of a Cairn key/value cluster. Flags can also be set as
CAIRN_<FLAG> environment variables.

Sharded mode: with --controller and/or --shard-groups the process hosts a
replica of the shard controller and of the listed shard groups, all behind
its one client and one peer port. Start every member with the same
--controller, --shard-groups and --shards, then add the groups with
'cairn shard join' (see docs/operations.md, "Sharded clusters").`)
		fs.PrintDefaults()
	}
	if err := parseWithEnv(fs, args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		if strings.HasPrefix(err.Error(), "CAIRN_") { // the flag package already reported parse errors
			fmt.Fprintf(stderr, "cairn server: %v\n", err)
		}
		return 2
	}
	if *version {
		return runVersion(nil, stdout, stderr)
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "cairn server: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if err := checkShardFlags(&cfg, set); err != nil {
		fmt.Fprintf(stderr, "cairn server: %v\n", err)
		return 2
	}
	if *gcHeadroom < 0 {
		fmt.Fprintf(stderr, "cairn server: --gc-headroom-mb must be 0 (off) or positive, not %d\n", *gcHeadroom)
		return 2
	}
	level, err := parseLogLevel(logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "cairn server: --log-level %q: want debug, info, warn or error\n", logLevel)
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	srv, err := server.Start(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "cairn server: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *gcHeadroom > 0 {
		// A member's live heap is its data: keep the collector's headroom
		// near a fixed size instead of doubling the data (docs/operations.md).
		go gctune.Run(ctx, gctune.Options{Headroom: uint64(*gcHeadroom) << 20, Logger: cfg.Logger})
	}
	select {
	case <-ctx.Done():
		cfg.Logger.Info("shutting down")
		done := make(chan struct{})
		go func() { srv.Stop(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			fmt.Fprintln(stderr, "cairn server: shutdown timed out")
			return 1
		}
		return 0
	case <-srv.Done():
		if err := srv.Err(); err != nil {
			fmt.Fprintf(stderr, "cairn server: stopped: %v\n", err)
			return 1
		}
		return 0
	}
}
