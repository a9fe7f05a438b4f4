package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/cairn-db/cairn/client"
)

// Config configures one chaos run.
type Config struct {
	// Image is the cairn server image to run.
	Image string
	// Seed drives the fault schedule, the victims, the workload and the
	// proxy. Print it; pass it back to replay the run's choices.
	Seed uint64
	// Duration is how long the workload runs under faults. Default 1m.
	Duration time.Duration
	// MaxOps bounds the operations (0: 100000).
	MaxOps int
	// Clients is the number of concurrent clients. Default 5.
	Clients int
	// Kinds are the fault kinds to draw from. Default AllKinds.
	Kinds []Kind
	// Recovery bounds how long the cluster may take, after the last heal,
	// to serve a linearizable read on every member. Default 30s.
	Recovery time.Duration
	// CheckTimeout bounds the porcupine check. Default 2m; on timeout the
	// history is reported as not fully checked, not as a violation.
	CheckTimeout time.Duration
	// ArtifactDir is where a run's evidence directory is created
	// (default os.TempDir()). Evidence is saved on any violation or error,
	// or always with Keep.
	ArtifactDir string
	Keep        bool
	// UnsafeSerializableReads makes the workload's reads serializable
	// (served from a member's local state, possibly stale). Cairn does
	// not promise linearizability for them, so a run with this set should
	// find violations: it is the harness's own canary.
	UnsafeSerializableReads bool
	// Groups, when ≥ 1, runs a sharded cluster: every member hosts the
	// shard controller and shard groups 1..Groups, all joined at the
	// start, and a second, seeded schedule joins and removes groups and
	// moves shards while the other faults run (membership changes are
	// left out: sharded clusters refuse them). At the end every group
	// must settle and garbage collection must be complete.
	Groups int
	// Shards is the shard count of a sharded run. Default DefaultShards.
	Shards int
	// Logf receives progress lines. Default: discard.
	Logf func(format string, args ...any)
	// Docker runs the docker CLI.
	Docker Docker
}

// Server settings for chaos runs: fast elections so faults cause them
// often, frequent snapshots so catch-up by snapshot happens.
var chaosServerArgs = []string{
	"--tick-interval", "50ms", "--election-ticks", "10",
	"--snapshot-count", "500", "--snapshot-catchup-entries", "100",
	"--request-timeout", "3s", "--log-level", "info",
}

// electionTimeout is the longest election timeout of chaosServerArgs
// (raft randomizes it in [10, 20) ticks).
const electionTimeout = time.Second

// Event is one line of a run's fault timeline.
type Event struct {
	At   time.Duration `json:"at"` // since the history clock started
	What string        `json:"what"`
}

// Result is what a run found.
type Result struct {
	Seed     uint64
	Duration time.Duration
	Steps    []Step // planned
	Injected int    // faults actually injected (the run may end first)
	Timeline []Event
	// Counts maps "op/outcome" to the number of operations.
	Counts map[string]int
	Ops    int
	// Linearizable is porcupine's verdict on the history.
	Linearizable porcupine.CheckResult
	Lists        ListReport
	// Shards is the sharded run's report (zero when not sharded).
	Shards ShardReport
	// Bank is the transfer workload's report: every atomic read of all
	// accounts must show the same total.
	Bank BankReport
	// Recovery is how long the cluster took to serve again after the
	// last heal.
	Recovery time.Duration
	// Violations lists every failed check, in words. Empty means the run
	// passed.
	Violations []string
	// ArtifactDir holds the evidence, when saved.
	ArtifactDir string
}

// Failed reports whether any check failed.
func (r *Result) Failed() bool { return len(r.Violations) > 0 }

// Summary is a multi-line human summary.
func (r *Result) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, duration %v, %d operations, %d faults injected (%d planned)\n", r.Seed, r.Duration, r.Ops, r.Injected, len(r.Steps))
	keys := make([]string, 0, len(r.Counts))
	for k := range r.Counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  %-16s %d\n", k, r.Counts[k])
	}
	fmt.Fprintf(&b, "linearizable: %s\n", verdict(r.Linearizable))
	fmt.Fprintf(&b, "lists: %s\n", r.Lists)
	fmt.Fprintf(&b, "bank: %s\n", r.Bank)
	if r.Shards.Ops != nil {
		fmt.Fprintf(&b, "shards: %s\n", r.Shards)
	}
	fmt.Fprintf(&b, "recovery after last heal: %v\n", r.Recovery.Round(time.Millisecond))
	if len(r.Violations) == 0 {
		b.WriteString("no violations\n")
	}
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "VIOLATION: %s\n", v)
	}
	if r.ArtifactDir != "" {
		fmt.Fprintf(&b, "evidence: %s\n", r.ArtifactDir)
	}
	return b.String()
}

func verdict(c porcupine.CheckResult) string {
	switch c {
	case porcupine.Ok:
		return "yes"
	case porcupine.Illegal:
		return "NO"
	}
	return "unknown (check timed out; not fully checked)"
}

// ReplayHint is how to replay a run with the given seed and duration.
func ReplayHint(seed uint64, d time.Duration) string {
	return fmt.Sprintf("go test ./tests/chaos -run 'TestChaos$' -v -args -seed %d -duration %v   (or: cairn chaos --seed %d --duration %v)", seed, d, seed, d)
}

// ShardedReplayHint is how to replay a sharded run.
func ShardedReplayHint(seed uint64, d time.Duration, groups int) string {
	return fmt.Sprintf("go test ./tests/chaos -run 'TestChaosSharded$' -v -args -seed %d -duration %v -groups %d   (or: cairn chaos --groups %d --seed %d --duration %v)", seed, d, groups, groups, seed, d)
}

func (cfg Config) replayHint() string {
	if cfg.Groups > 0 {
		return ShardedReplayHint(cfg.Seed, cfg.Duration, cfg.Groups)
	}
	return ReplayHint(cfg.Seed, cfg.Duration)
}

// Workload keys: registers (get/put/cas) and append-only lists. A
// sharded run uses more, each in a shard of its own.
var (
	registerKeys = []string{"r0", "r1", "r2", "r3"}
	listKeys     = []string{"l0", "l1"}
)

type runner struct {
	cfg  Config
	c    *Cluster
	rec  *Recorder
	logf func(string, ...any)

	mu       sync.Mutex
	timeline []Event

	registerKeys, listKeys []string
	shardOps               []ShardOp

	porcupineInfo *porcupine.LinearizationInfo
	injected      atomic.Int64
	lastHealAt    atomic.Int64 // history clock: the last fault healed
}

func (r *runner) event(format string, args ...any) {
	e := Event{At: time.Duration(r.rec.Now()), What: fmt.Sprintf(format, args...)}
	r.mu.Lock()
	r.timeline = append(r.timeline, e)
	r.mu.Unlock()
	r.logf("[%7.2fs] %s", e.At.Seconds(), e.What)
}

// Run starts a containerized cluster, runs the workload under the seeded
// fault schedule, heals, and checks the history. The returned error is an
// infrastructure failure (docker, the harness); correctness failures are
// Result.Violations. Everything the run created is removed before it
// returns.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Duration == 0 {
		cfg.Duration = time.Minute
	}
	if cfg.MaxOps == 0 {
		cfg.MaxOps = 100000
	}
	if cfg.Clients == 0 {
		cfg.Clients = 5
	}
	if len(cfg.Kinds) == 0 {
		cfg.Kinds = AllKinds
	}
	if cfg.Recovery == 0 {
		cfg.Recovery = 30 * time.Second
	}
	if cfg.CheckTimeout == 0 {
		cfg.CheckTimeout = 2 * time.Minute
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Groups > 0 {
		if cfg.Shards == 0 {
			cfg.Shards = DefaultShards
		}
		var kinds []Kind
		for _, k := range cfg.Kinds {
			if k != Membership { // refused by sharded clusters
				kinds = append(kinds, k)
			}
		}
		if len(kinds) == 0 {
			return nil, errors.New("chaos: a sharded run cannot change membership; pick other fault kinds")
		}
		cfg.Kinds = kinds
	}
	if cfg.Image == "" {
		return nil, errors.New("chaos: Config.Image is required (build one with deploy/build-image.sh)")
	}
	if err := cfg.Docker.Available(ctx); err != nil {
		return nil, err
	}
	res := &Result{Seed: cfg.Seed, Duration: cfg.Duration, Counts: map[string]int{}}
	cfg.Logf("chaos: seed %d; replay: %s", cfg.Seed, cfg.replayHint())
	// Every run is bounded: the workload, then at most ~10 minutes of
	// healing, checking and cleanup.
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration+cfg.CheckTimeout+8*time.Minute)
	defer cancel()

	const spares = 2
	res.Steps = Schedule(cfg.Seed, ScheduleConfig{Duration: cfg.Duration, Kinds: cfg.Kinds,
		MaxMembership: spares, ElectionTimeout: electionTimeout})
	c, err := StartCluster(ctx, ClusterConfig{Image: cfg.Image, Spares: spares, ServerArgs: chaosServerArgs,
		Lifetime: cfg.Duration + 30*time.Minute, Seed: cfg.Seed, Logf: cfg.Logf, Docker: cfg.Docker,
		Groups: cfg.Groups, Shards: cfg.Shards})
	if err != nil {
		return nil, fmt.Errorf("chaos: starting the cluster: %w", err)
	}
	r := &runner{cfg: cfg, c: c, rec: NewRecorder(), logf: cfg.Logf,
		registerKeys: registerKeys, listKeys: listKeys}
	if c.Sharded() {
		r.registerKeys = keysInDistinctShards("r", 8, cfg.Shards)
		r.listKeys = keysInDistinctShards("l", 4, cfg.Shards)
		r.shardOps = ShardSchedule(cfg.Seed, cfg.Duration)
		res.Shards.Ops = map[string]int{}
	}
	defer func() {
		if res.Failed() || err != nil || cfg.Keep {
			dir, serr := r.save(res, err)
			if serr != nil {
				cfg.Logf("chaos: saving evidence: %v", serr)
			}
			res.ArtifactDir = dir
			cfg.Logf("chaos: evidence saved in %s", dir)
		}
		c.Close()
	}()
	r.event("cluster %s up: %d members; schedule of %d faults", c.Run, len(c.Live()), len(res.Steps))
	if c.Sharded() {
		r.event("sharded: groups %v, %d shards, %d shard operations planned; register keys %v, list keys %v",
			c.GroupIDs(), c.Shards(), len(r.shardOps), r.registerKeys, r.listKeys)
	}
	err = r.run(ctx, res)
	return res, err
}

func (r *runner) run(ctx context.Context, res *Result) error {
	cfg := r.cfg
	rng := rand.New(rand.NewPCG(cfg.Seed, 1))
	wctx, wcancel := context.WithTimeout(ctx, cfg.Duration)
	defer wcancel()

	var ops atomic.Int64
	var wg sync.WaitGroup
	// The bank workload runs beside the register and list clients.
	bank := &Bank{Prefix: "chaos/bank/", Accounts: 5, Initial: 100}
	if r.c.Sharded() {
		// A transaction must stay in one shard: every account is in the
		// same one. The accounts are read by a range over the prefix,
		// which members gather from every group.
		bank.Keys = keysInOneShard(bank.Prefix, bank.Accounts, r.c.Shards())
	}
	bankClient, err := client.New(client.Config{Endpoints: r.c.ProxyEndpoints(), AttemptTimeout: time.Second, DialTimeout: time.Second})
	if err != nil {
		return err
	}
	defer bankClient.Close()
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	err = bank.Setup(sctx, bankClient)
	scancel()
	if err != nil {
		return err
	}
	brng := rand.New(rand.NewPCG(rng.Uint64(), 99))
	wg.Add(1)
	go func() {
		defer wg.Done()
		for wctx.Err() == nil {
			opCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if brng.IntN(3) == 0 {
				_, _ = bank.Check(opCtx, bankClient)
			} else {
				_ = bank.Transfer(opCtx, bankClient, brng)
			}
			cancel()
		}
	}()
	for id := range cfg.Clients {
		crng := rand.New(rand.NewPCG(rng.Uint64(), uint64(id)))
		cl, err := client.New(client.Config{Endpoints: r.c.ProxyEndpoints(), AttemptTimeout: time.Second, DialTimeout: time.Second})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.Close()
			r.client(wctx, wcancel, id, cl, crng, &ops)
		}()
	}
	var nemErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		nemErr = r.nemesis(wctx, res.Steps)
	}()
	if len(r.shardOps) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.shardNemesis(wctx, r.shardOps, res.Shards.Ops)
		}()
	}
	wg.Wait()
	if nemErr != nil {
		return nemErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chaos: interrupted before the checks: %w", err)
	}

	// Heal everything, then measure recovery.
	r.c.Proxy.Heal()
	for _, i := range r.c.Live() {
		if r.c.member(i).State == StateRunning {
			continue
		}
		if err := r.c.Restore(ctx, i); err != nil {
			return fmt.Errorf("chaos: final heal of %s: %w", r.c.member(i).Name, err)
		}
		r.lastHealAt.Store(r.rec.Now())
	}
	r.event("all faults healed")
	for _, crash := range r.c.Crashed(ctx) {
		r.event("%s", crash)
		res.Violations = append(res.Violations, "member crashed: "+crash)
	}
	if err := r.c.WaitServing(ctx, cfg.Recovery); err != nil {
		res.Violations = append(res.Violations, fmt.Sprintf("no recovery: %v after the last heal", err))
	}
	// Recovery is measured from the last heal to the first acknowledged
	// write invoked after it (the workload's own view), or to the sweep
	// above when the workload had stopped by then.
	healAt := r.lastHealAt.Load()
	res.Recovery = time.Duration(r.rec.Now() - healAt)
	for _, e := range r.rec.Entries() {
		if e.Outcome == OutcomeOK && e.Input.Op != "get" && e.Call >= healAt {
			res.Recovery = min(res.Recovery, time.Duration(e.Return-healAt))
		}
	}
	if res.Recovery > cfg.Recovery {
		res.Violations = append(res.Violations, fmt.Sprintf("recovery took %v after the last heal, bound %v", res.Recovery, cfg.Recovery))
	}
	r.event("every live member serves linearizable reads; first write after the last heal acknowledged %v after it", res.Recovery.Round(time.Millisecond))

	// Final reads of every key, part of the checked history.
	final := map[string]string{}
	fc, err := client.New(client.Config{Endpoints: r.c.ProxyEndpoints(), AttemptTimeout: time.Second})
	if err != nil {
		return err
	}
	defer fc.Close()
	for _, k := range append(append([]string(nil), r.registerKeys...), r.listKeys...) {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		call := r.rec.Now()
		in := Input{Op: "get", Key: k}
		out, outcome, err := Do(fctx, fc, in)
		cancel()
		r.rec.Add(cfg.Clients, in, call, out, outcome, err)
		if outcome != OutcomeOK {
			res.Violations = append(res.Violations, fmt.Sprintf("final read of %s failed: %v", k, err))
			continue
		}
		final[k] = out.Value
	}
	fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
	if _, err := bank.Check(fctx, fc); err != nil {
		res.Violations = append(res.Violations, fmt.Sprintf("final bank read failed: %v", err))
	}
	fcancel()
	res.Bank = bank.Report()
	if !res.Bank.OK() {
		res.Violations = append(res.Violations, "bank: "+res.Bank.String())
	}
	r.event("bank: %s", res.Bank)
	if r.c.Sharded() {
		known := map[string]bool{}
		for _, k := range append(append(append([]string(nil), r.registerKeys...), r.listKeys...), bank.Keys...) {
			known[k] = true
		}
		r.checkShards(ctx, &res.Shards, known)
		for _, p := range res.Shards.Problems {
			res.Violations = append(res.Violations, "shards: "+p)
		}
	}
	listFinal := map[string]string{}
	for _, l := range r.listKeys {
		if v, ok := final[l]; ok {
			listFinal[l] = v
		}
	}

	ents := r.rec.Entries()
	res.Ops = len(ents)
	acked := 0
	for _, e := range ents {
		res.Counts[e.Input.Op+"/"+e.Outcome]++
		if e.Outcome == OutcomeOK && e.Input.Op != "get" {
			acked++
		}
	}
	r.event("history: %d operations %v", len(ents), res.Counts)
	if acked < 10 {
		res.Violations = append(res.Violations, fmt.Sprintf("only %d writes acknowledged: the cluster was unavailable most of the run", acked))
	}
	res.Lists = CheckLists(ents, listFinal)
	if !res.Lists.OK() {
		res.Violations = append(res.Violations, "append-only lists: "+res.Lists.String())
	}
	start := time.Now()
	var info porcupine.LinearizationInfo
	res.Linearizable, info = porcupine.CheckOperationsVerbose(Model, Operations(ents), cfg.CheckTimeout)
	r.event("porcupine: %s in %v", verdict(res.Linearizable), time.Since(start).Round(time.Millisecond))
	if res.Linearizable == porcupine.Illegal {
		res.Violations = append(res.Violations, "history is not linearizable (see porcupine.html)")
	}
	r.porcupineInfo = &info
	res.Injected = int(r.injected.Load())
	res.Timeline = r.events()
	return nil
}

func (r *runner) events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.timeline...)
}

// client runs one client's closed loop until ctx ends or the operation
// budget is spent.
func (r *runner) client(ctx context.Context, stop context.CancelFunc, id int, cl *client.Client, rng *rand.Rand, ops *atomic.Int64) {
	for n := 0; ctx.Err() == nil; n++ {
		if ops.Add(1) > int64(r.cfg.MaxOps) {
			stop()
			return
		}
		token := fmt.Sprintf("c%d.%d;", id, n)
		var in Input
		switch p := rng.IntN(100); {
		case p < 25:
			in = Input{Op: "get", Key: r.registerKeys[rng.IntN(len(r.registerKeys))]}
		case p < 45:
			in = Input{Op: "put", Key: r.registerKeys[rng.IntN(len(r.registerKeys))], Value: token}
		case p < 65:
			in = Input{Op: "cas", Key: r.registerKeys[rng.IntN(len(r.registerKeys))], Value: token}
			// Expect what a recent (possibly stale) read saw, so some succeed.
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			if g, err := cl.Get(sctx, in.Key, client.WithSerializable()); err == nil && len(g.KVs) == 1 {
				in.Expect = g.KVs[0].Value
			}
			cancel()
		case p < 90:
			in = Input{Op: "append", Key: r.listKeys[rng.IntN(len(r.listKeys))], Value: token}
		default:
			in = Input{Op: "get", Key: r.listKeys[rng.IntN(len(r.listKeys))]}
		}
		// Not ctx: an operation in flight when the workload ends still
		// gets its answer.
		opCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		call := r.rec.Now()
		var opts []client.Option
		if r.cfg.UnsafeSerializableReads {
			opts = append(opts, client.WithSerializable())
		}
		out, outcome, err := Do(opCtx, cl, in, opts...)
		cancel()
		r.rec.Add(id, in, call, out, outcome, err)
		time.Sleep(time.Duration(rng.IntN(10)) * time.Millisecond)
	}
}

// nemesis runs the schedule until ctx ends; each fault is healed before
// the next one starts, and the one in progress is healed when ctx ends.
func (r *runner) nemesis(ctx context.Context, steps []Step) error {
	start := time.Now()
	for _, s := range steps {
		if wait := time.Until(start.Add(s.At)); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		// Docker commands get their own context: a fault half-injected
		// when the workload ends must still be healed.
		bg, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		heal, err := r.inject(bg, s)
		if err != nil {
			cancel()
			return fmt.Errorf("chaos: injecting %v: %w", s.Kind, err)
		}
		r.injected.Add(1)
		if heal != nil {
			select {
			case <-ctx.Done():
			case <-time.After(s.Hold):
			}
			if err := heal(bg); err != nil {
				cancel()
				return fmt.Errorf("chaos: healing %v: %w", s.Kind, err)
			}
			r.lastHealAt.Store(r.rec.Now())
		}
		cancel()
	}
	return nil
}

// victim picks a live, running member: the leader for leader kinds when
// one answers, otherwise by the step's seeded pick.
func (r *runner) victim(ctx context.Context, s Step, leader bool) int {
	if leader && r.c.Sharded() {
		// Every member hosts a replica of every group: the leader of
		// one group (picked by the step) is the victim.
		if l := r.c.shardLeader(ctx, s.Pick); l >= 0 {
			return l
		}
	} else if leader {
		if l := r.c.Leader(ctx); l >= 0 {
			return l
		}
	}
	live := r.c.Live()
	return live[s.Pick%uint64(len(live))]
}

// inject starts step s and returns the function that heals it (nil when
// there is nothing to heal).
func (r *runner) inject(ctx context.Context, s Step) (func(context.Context) error, error) {
	name := func(i int) string { return r.c.member(i).Name }
	switch s.Kind {
	case PartitionLeader, PartitionOne:
		v := r.victim(ctx, s, s.Kind == PartitionLeader)
		r.event("%s: disconnect %s from the network for %v", s.Kind, name(v), s.Hold)
		if err := r.c.Disconnect(ctx, v); err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			r.event("%s: reconnect %s", s.Kind, name(v))
			return r.c.Connect(ctx, v)
		}, nil
	case KillLeader, Kill:
		v := r.victim(ctx, s, s.Kind == KillLeader)
		r.event("%s: SIGKILL %s, restart after %v", s.Kind, name(v), s.Hold)
		if err := r.c.Kill(ctx, v); err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			r.event("%s: restart %s", s.Kind, name(v))
			return r.c.Start(ctx, v)
		}, nil
	case PauseLeader, Pause:
		v := r.victim(ctx, s, s.Kind == PauseLeader)
		r.event("%s: pause (freeze) %s for %v", s.Kind, name(v), s.Hold)
		if err := r.c.Pause(ctx, v); err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			r.event("%s: unpause %s", s.Kind, name(v))
			return r.c.Unpause(ctx, v)
		}, nil
	case OneWay:
		v := r.victim(ctx, s, true)
		r.event("%s: drop everything %s sends to its peers for %v", s.Kind, name(v), s.Hold)
		for _, j := range r.c.Live() {
			if j != v {
				r.c.Proxy.Set(name(v), name(j), Faults{Blackhole: true})
			}
		}
		return r.healProxy(s), nil
	case Bridge:
		live := r.c.Live()
		if len(live) < 3 {
			r.event("%s: skipped, fewer than 3 live members", s.Kind)
			return nil, nil
		}
		off := int(s.Pick % uint64(len(live)))
		a, b, mid := live[off], live[(off+1)%len(live)], live[(off+2)%len(live)]
		r.event("%s: %s and %s cannot reach each other, %s reaches both, for %v", s.Kind, name(a), name(b), name(mid), s.Hold)
		r.c.Proxy.Set(name(a), name(b), Faults{Blackhole: true})
		r.c.Proxy.Set(name(b), name(a), Faults{Blackhole: true})
		return r.healProxy(s), nil
	case Latency:
		r.event("%s: delay every stream by %v (+ up to %v) for %v", s.Kind, s.Delay, s.Delay/2, s.Hold)
		for _, m := range r.c.Members() {
			r.c.Proxy.Set("*", m.Name, Faults{Delay: s.Delay, Jitter: s.Delay / 2})
		}
		return r.healProxy(s), nil
	case Loss:
		r.event("%s: cut connections with p=%.3f per chunk for %v", s.Kind, s.Loss, s.Hold)
		for _, m := range r.c.Members() {
			r.c.Proxy.Set("*", m.Name, Faults{Loss: s.Loss})
		}
		return r.healProxy(s), nil
	case Membership:
		v := r.victim(ctx, s, false)
		r.event("%s: remove %s", s.Kind, name(v))
		if err := r.c.RemoveMember(ctx, v); err != nil {
			r.event("%s: remove failed: %v", s.Kind, err)
			return nil, nil
		}
		slot, err := r.c.AddMember(ctx)
		if errors.Is(err, ErrNoSlot) {
			r.event("%s: no spare slot to add a member", s.Kind)
			return nil, nil
		}
		if err != nil {
			r.event("%s: add failed: %v", s.Kind, err)
			return nil, nil
		}
		r.event("%s: added %s (%s), waiting for it to serve", s.Kind, name(slot), r.c.member(slot).IP)
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		one, err := client.New(client.Config{Endpoints: []string{r.c.member(slot).ClientAddr}, AttemptTimeout: time.Second})
		if err != nil {
			return nil, err
		}
		defer one.Close()
		for {
			_, err = one.Get(wctx, "/chaos/probe")
			if err == nil || wctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			r.event("%s: %s did not serve within 30s: %v", s.Kind, name(slot), err)
		} else {
			r.event("%s: %s serves", s.Kind, name(slot))
		}
		return nil, nil
	}
	return nil, fmt.Errorf("chaos: unknown fault kind %q", s.Kind)
}

func (r *runner) healProxy(s Step) func(context.Context) error {
	return func(context.Context) error {
		r.event("%s: heal the proxy", s.Kind)
		r.c.Proxy.Heal()
		return nil
	}
}

// save writes the run's evidence into a new directory and returns it.
func (r *runner) save(res *Result, runErr error) (string, error) {
	parent := r.cfg.ArtifactDir
	if parent == "" {
		parent = os.TempDir()
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(parent, fmt.Sprintf("cairn-chaos-seed%d-", r.cfg.Seed))
	if err != nil {
		return "", err
	}
	var errs []error
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	hist, _ := json.MarshalIndent(struct {
		Seed    uint64  `json:"seed"`
		Start   string  `json:"start"`
		Entries []Entry `json:"entries"`
	}{r.cfg.Seed, r.rec.Start().UTC().Format(time.RFC3339Nano), r.rec.Entries()}, "", " ")
	write("history.json", hist)
	var tl strings.Builder
	fmt.Fprintf(&tl, "# fault timeline, seed %d (seconds since the history clock started)\n", r.cfg.Seed)
	for _, s := range res.Steps {
		fmt.Fprintf(&tl, "# planned: %s\n", s)
	}
	for _, o := range r.shardOps {
		fmt.Fprintf(&tl, "# planned: %s\n", o)
	}
	for _, e := range r.events() {
		fmt.Fprintf(&tl, "%9.3f  %s\n", e.At.Seconds(), e.What)
	}
	write("timeline.txt", []byte(tl.String()))
	summary := res.Summary()
	if runErr != nil {
		summary += "ERROR: " + runErr.Error() + "\n"
	}
	summary += "replay: " + r.cfg.replayHint() + "\n"
	write("summary.txt", []byte(summary))
	if r.porcupineInfo != nil {
		if err := porcupine.VisualizePath(Model, *r.porcupineInfo, filepath.Join(dir, "porcupine.html")); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		errs = append(errs, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if r.c.Sharded() {
		sts, err := r.c.ShardStatuses(ctx)
		var cfgs []client.ShardConfig
		if admin, aerr := r.c.Admin(); aerr == nil {
			for n := int64(1); ; n++ {
				qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
				c, qerr := admin.ShardConfigAt(qctx, n)
				qcancel()
				if qerr != nil || (len(cfgs) > 0 && c.Num == cfgs[len(cfgs)-1].Num) {
					break
				}
				cfgs = append(cfgs, c)
			}
			admin.Close()
		}
		out, _ := json.MarshalIndent(struct {
			Status  map[string]*client.ShardHostStatus `json:"status"`
			Err     string                             `json:"status_error,omitempty"`
			Configs []client.ShardConfig               `json:"configs"`
		}{sts, errString(err), cfgs}, "", " ")
		write("shards.json", out)
	}
	for i, m := range r.c.Members() {
		if m.State == StateNew {
			continue
		}
		write(filepath.Join("logs", m.Name+".log"), []byte(r.c.Logs(ctx, i)))
	}
	return dir, errors.Join(errs...)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
