package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cairn-db/cairn/client"
)

// Sharded clusters (docs/sharding.md, docs/reliability.md). With
// ClusterConfig.Groups ≥ 1 every member container hosts a replica of the
// shard controller and of shard groups 1..Groups. Each group is joined
// with the members' group addresses: proxy links on the network's
// gateway, reachable from the host (the workload's clients, which the
// Go client routes straight to the owning group) and from the members
// (forwarded requests), so client traffic to a group passes the
// fault-injecting proxy too.

// DefaultShards is the shard count of a sharded chaos cluster when
// ClusterConfig.Shards is 0: small, so moves are frequent and every
// shard sees traffic.
const DefaultShards = 16

// Sharded reports whether the cluster runs in sharded mode.
func (c *Cluster) Sharded() bool { return c.cfg.Groups > 0 }

// Shards is the cluster's shard count (0 when not sharded).
func (c *Cluster) Shards() int {
	if !c.Sharded() {
		return 0
	}
	return c.cfg.Shards
}

// GroupIDs returns the shard groups every member hosts (1..Groups).
func (c *Cluster) GroupIDs() []uint64 {
	var out []uint64
	for g := 1; g <= c.cfg.Groups; g++ {
		out = append(out, uint64(g))
	}
	return out
}

// GroupEndpoints returns the addresses a group is joined with: each
// initial member's client proxy link on the gateway.
func (c *Cluster) GroupEndpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.members[:c.cfg.Members] {
		out = append(out, m.GroupClientAddr)
	}
	return out
}

func shardServerArgs(groups, shards int) []string {
	var ids []string
	for g := 1; g <= groups; g++ {
		ids = append(ids, strconv.Itoa(g))
	}
	return []string{"--controller", "--shard-groups", strings.Join(ids, ","), "--shards", strconv.Itoa(shards)}
}

// singleClient is a client of one member's own address.
func singleClient(addr string) (*client.Client, error) {
	return client.New(client.Config{Endpoints: []string{addr}, AttemptTimeout: time.Second, DialTimeout: time.Second})
}

// waitShardedServing waits until every live member answers a controller
// query (a linearizable read of the controller group) and, once groups
// have joined, a range gathered from every group through it.
func (c *Cluster) waitShardedServing(ctx context.Context, bound time.Duration, gather bool) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for _, i := range c.Live() {
		m := c.member(i)
		cl, err := singleClient(m.ClientAddr)
		if err != nil {
			return err
		}
		for {
			_, err = cl.ShardConfigAt(ctx, -1)
			if err == nil && gather {
				_, err = cl.Get(ctx, "/chaos/probe", client.WithPrefix())
			}
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		cl.Close()
		if err != nil {
			return fmt.Errorf("%s did not serve a controller query and a gathered range within %v: %w", m.Name, bound, err)
		}
	}
	return nil
}

// JoinAll joins every hosted group the newest configuration lacks and
// waits until the groups settle. It returns the resulting configuration.
func (c *Cluster) JoinAll(ctx context.Context, bound time.Duration) (client.ShardConfig, error) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	admin, err := c.Admin()
	if err != nil {
		return client.ShardConfig{}, err
	}
	defer admin.Close()
	var cfg client.ShardConfig
	for {
		cfg, err = admin.ShardConfigAt(ctx, -1)
		if err == nil {
			missing := map[uint64][]string{}
			for _, gid := range c.GroupIDs() {
				if _, ok := cfg.Groups[gid]; !ok {
					missing[gid] = c.GroupEndpoints()
				}
			}
			if len(missing) == 0 {
				break
			}
			if cfg, err = admin.ShardJoin(ctx, missing); err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			return client.ShardConfig{}, fmt.Errorf("chaos: joining groups %v: %w", c.GroupIDs(), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.cfg.Logf("joined groups %v: configuration %d, shards %v", c.GroupIDs(), cfg.Num, cfg.Shards)
	if _, err := c.WaitSettled(ctx, bound); err != nil {
		return client.ShardConfig{}, err
	}
	return cfg, nil
}

// ShardStatuses asks every live, running member for its shard status.
func (c *Cluster) ShardStatuses(ctx context.Context) (map[string]*client.ShardHostStatus, error) {
	admin, err := c.Admin()
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	out := map[string]*client.ShardHostStatus{}
	var errs []error
	for _, i := range c.Live() {
		m := c.member(i)
		if m.State != StateRunning {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := admin.ShardStatus(sctx, m.ClientAddr)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.Name, err))
			continue
		}
		out[m.Name] = st
	}
	return out, errors.Join(errs...)
}

// WaitSettled waits until every live member reports every hosted group
// at the controller's newest configuration with nothing pulling, handing
// off or awaiting garbage collection, and the newest configuration did
// not change meanwhile. It returns that configuration.
func (c *Cluster) WaitSettled(ctx context.Context, bound time.Duration) (client.ShardConfig, error) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	admin, err := c.Admin()
	if err != nil {
		return client.ShardConfig{}, err
	}
	defer admin.Close()
	why := "not checked yet"
	for {
		qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
		cfg, err := admin.ShardConfigAt(qctx, -1)
		qcancel()
		if err != nil {
			why = fmt.Sprintf("controller query: %v", err)
		} else if why = c.unsettled(ctx, cfg); why == "" {
			return cfg, nil
		}
		select {
		case <-ctx.Done():
			return client.ShardConfig{}, fmt.Errorf("shard groups did not settle within %v: %s", bound, why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) unsettled(ctx context.Context, cfg client.ShardConfig) string {
	sts, err := c.ShardStatuses(ctx)
	if err != nil {
		return err.Error()
	}
	for _, i := range c.Live() {
		name := c.member(i).Name
		st := sts[name]
		if st == nil {
			return name + " is not running"
		}
		if len(st.Groups) < c.cfg.Groups {
			return fmt.Sprintf("%s hosts %d groups, want %d", name, len(st.Groups), c.cfg.Groups)
		}
		for _, g := range st.Groups {
			switch {
			case g.Config != cfg.Num:
				return fmt.Sprintf("%s: group %d is at configuration %d, newest %d", name, g.GID, g.Config, cfg.Num)
			case len(g.Pulling)+len(g.Handing)+len(g.GCWait) > 0:
				return fmt.Sprintf("%s: group %d has shards in transit (pulling %v, handing off %v, awaiting GC %v)",
					name, g.GID, g.Pulling, g.Handing, g.GCWait)
			}
		}
	}
	return ""
}

// shardLeader returns a member leading some shard group (the group
// chosen by pick among the groups that have a leader in sight), or -1.
func (c *Cluster) shardLeader(ctx context.Context, pick uint64) int {
	sts, _ := c.ShardStatuses(ctx)
	leaders := map[uint64]string{}
	for name, st := range sts {
		for _, g := range st.Groups {
			if g.Leader {
				leaders[g.GID] = name
			}
		}
	}
	if len(leaders) == 0 {
		return -1
	}
	gids := make([]uint64, 0, len(leaders))
	for g := range leaders {
		gids = append(gids, g)
	}
	slices.Sort(gids)
	name := leaders[gids[pick%uint64(len(gids))]]
	for _, i := range c.Live() {
		if c.member(i).Name == name {
			return i
		}
	}
	return -1
}

// keysInDistinctShards returns n keys prefix0, prefix1, ... that fall in
// n distinct shards (as many as there are, when n exceeds the shards).
func keysInDistinctShards(prefix string, n, shards int) []string {
	used := map[int]bool{}
	var out []string
	for i := 0; len(out) < n && i < 100000; i++ {
		k := prefix + strconv.Itoa(i)
		sh := client.ShardOf(k, shards)
		if used[sh] && len(used) < shards {
			continue
		}
		used[sh] = true
		out = append(out, k)
	}
	return out
}

// keysInOneShard returns n sorted keys prefix+NNN that share one shard
// (the shard of prefix+"000"), so a transaction over them runs in one
// group.
func keysInOneShard(prefix string, n, shards int) []string {
	want := client.ShardOf(prefix+"000", shards)
	var out []string
	for i := 0; len(out) < n; i++ {
		k := fmt.Sprintf("%s%03d", prefix, i)
		if client.ShardOf(k, shards) == want {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// ShardOp is a planned shard operation: join, leave or move. Which group
// joins or leaves, and which shard moves where, is chosen at run time
// from Pick and the configuration then current (a join when every group
// has joined becomes a move, as does a leave of the last group).
type ShardOp struct {
	At   time.Duration `json:"at"`
	Op   string        `json:"op"` // join, leave, move
	Pick uint64        `json:"pick"`
}

func (o ShardOp) String() string { return fmt.Sprintf("shard %s at %v", o.Op, o.At) }

// ShardSchedule derives the shard operations of a run from seed: one
// every 1.5 to 5 seconds, about a third each joins, leaves and moves,
// the last one at least 3 seconds before the end.
func ShardSchedule(seed uint64, duration time.Duration) []ShardOp {
	rng := rand.New(rand.NewPCG(seed, 0x5a4d))
	var out []ShardOp
	t := 3 * time.Second
	for t < duration-3*time.Second {
		op := []string{"join", "leave", "move", "move"}[rng.IntN(4)]
		out = append(out, ShardOp{At: t, Op: op, Pick: rng.Uint64()})
		t += 1500*time.Millisecond + time.Duration(rng.Int64N(int64(3500*time.Millisecond)))
	}
	return out
}

// shardNemesis runs the shard operations until ctx ends. It records each
// in the timeline and counts successes in counts (op -> n).
func (r *runner) shardNemesis(ctx context.Context, ops []ShardOp, counts map[string]int) {
	start := time.Now()
	admin, err := client.New(client.Config{Endpoints: r.c.DirectEndpoints(), AttemptTimeout: time.Second, DialTimeout: time.Second})
	if err != nil {
		r.event("shard: no admin client: %v", err)
		return
	}
	defer admin.Close()
	shards := r.c.Shards()
	for _, o := range ops {
		if wait := time.Until(start.Add(o.At)); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			return
		}
		actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cfg, err := admin.ShardConfigAt(actx, -1)
		if err != nil {
			cancel()
			r.event("shard %s: configuration query failed: %v", o.Op, err)
			counts["failed"]++
			continue
		}
		var joined, missing []uint64
		for _, g := range r.c.GroupIDs() {
			if _, ok := cfg.Groups[g]; ok {
				joined = append(joined, g)
			} else {
				missing = append(missing, g)
			}
		}
		op := o.Op
		if op == "join" && len(missing) == 0 {
			op = "move"
		}
		if op == "leave" && len(joined) < 2 {
			op = "join"
			if len(missing) == 0 {
				op = "move"
			}
		}
		var what string
		var next client.ShardConfig
		switch op {
		case "join":
			g := missing[o.Pick%uint64(len(missing))]
			what = fmt.Sprintf("join group %d", g)
			next, err = admin.ShardJoin(actx, map[uint64][]string{g: r.c.GroupEndpoints()})
		case "leave":
			g := joined[o.Pick%uint64(len(joined))]
			what = fmt.Sprintf("leave group %d", g)
			next, err = admin.ShardLeave(actx, g)
		default:
			// A shard to a group other than its owner, when there is one.
			sh := int(o.Pick % uint64(shards))
			targets := joined
			if others := slices.DeleteFunc(slices.Clone(joined), func(g uint64) bool { return g == cfg.Shards[sh] }); len(others) > 0 {
				targets = others
			}
			g := targets[(o.Pick/uint64(shards))%uint64(len(targets))]
			what = fmt.Sprintf("move shard %d (group %d) to group %d", sh, cfg.Shards[sh], g)
			next, err = admin.ShardMove(actx, sh, g)
		}
		cancel()
		if err != nil {
			// Not a violation: the controller may be partitioned, or
			// refuse (a leave of the last group).
			r.event("shard: %s from configuration %d: %v", what, cfg.Num, err)
			counts["failed"]++
			continue
		}
		counts[op]++
		r.event("shard: %s: configuration %d -> %d, shards %v", what, cfg.Num, next.Num, next.Shards)
	}
}

// ShardReport is what the end-of-run shard checks found.
type ShardReport struct {
	Ops       map[string]int // shard operations made (join, leave, move) and failed
	Config    uint64         // the newest configuration, at which every group settled
	Owners    []uint64       // shard -> group in it
	Settle    time.Duration  // how long settling took after the workload stopped
	GroupKeys map[uint64]int // group -> keys held (every replica agrees)
	Keys      int            // keys in a gathered range of the whole key space
	Problems  []string
}

func (s ShardReport) String() string {
	if s.Ops == nil {
		return "not sharded"
	}
	str := fmt.Sprintf("ops %v; settled at configuration %d (owners %v) in %v; keys per group %v, %d in a full range",
		s.Ops, s.Config, s.Owners, s.Settle.Round(time.Millisecond), s.GroupKeys, s.Keys)
	if len(s.Problems) > 0 {
		str += fmt.Sprintf("; %d problems, first: %s", len(s.Problems), s.Problems[0])
	}
	return str
}

// checkShards waits for the groups to settle, then checks garbage
// collection: no replica holds keys of a shard its group does not own,
// every replica of a group holds the same number of keys per shard, and
// the groups together hold exactly the keys a gathered range of the whole
// key space returns, all of them keys the workload wrote.
func (r *runner) checkShards(ctx context.Context, rep *ShardReport, known map[string]bool) {
	start := time.Now()
	cfg, err := r.c.WaitSettled(ctx, r.cfg.Recovery+30*time.Second)
	rep.Settle = time.Since(start)
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
		return
	}
	rep.Config, rep.Owners = cfg.Num, cfg.Shards
	r.event("shard groups settled at configuration %d in %v: owners %v", cfg.Num, rep.Settle.Round(time.Millisecond), cfg.Shards)

	// Replicas apply the last entries at their own pace: retry the
	// replica agreement for a while before calling it a problem.
	deadline := time.Now().Add(20 * time.Second)
	var problems []string
	for {
		problems = nil
		sts, err := r.c.ShardStatuses(ctx)
		if err != nil {
			problems = append(problems, fmt.Sprintf("shard status: %v", err))
		}
		rep.GroupKeys = map[uint64]int{}
		perShard := map[uint64]map[int]int{} // group -> shard -> keys, first replica seen
		names := make([]string, 0, len(sts))
		for n := range sts {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, name := range names {
			for _, g := range sts[name].Groups {
				if g.Config != cfg.Num {
					problems = append(problems, fmt.Sprintf("%s: group %d at configuration %d after settling at %d", name, g.GID, g.Config, cfg.Num))
				}
				for sh, n := range g.KeysHeld {
					if n > 0 && (sh >= len(cfg.Shards) || cfg.Shards[sh] != g.GID) {
						problems = append(problems, fmt.Sprintf("%s: group %d holds %d keys of shard %d, owned by group %d (not garbage collected)", name, g.GID, n, sh, cfg.Shards[sh]))
					}
				}
				if prev, ok := perShard[g.GID]; !ok {
					perShard[g.GID] = g.KeysHeld
					rep.GroupKeys[g.GID] = g.Keys
				} else if !mapsEqual(prev, g.KeysHeld) {
					problems = append(problems, fmt.Sprintf("%s: group %d holds keys per shard %v, another replica %v", name, g.GID, g.KeysHeld, prev))
				}
			}
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	rep.Problems = append(rep.Problems, problems...)

	// The whole key space, gathered from every group.
	cl, err := client.New(client.Config{Endpoints: r.c.DirectEndpoints(), AttemptTimeout: 2 * time.Second})
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
		return
	}
	defer cl.Close()
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	all, err := cl.Get(gctx, "\x00", client.WithFromKey(), client.WithKeysOnly())
	cancel()
	if err != nil {
		rep.Problems = append(rep.Problems, fmt.Sprintf("full range read: %v", err))
		return
	}
	rep.Keys = len(all.KVs)
	total := 0
	for _, n := range rep.GroupKeys {
		total += n
	}
	if total != rep.Keys {
		rep.Problems = append(rep.Problems, fmt.Sprintf("groups hold %d keys in all (%v), a full range returns %d", total, rep.GroupKeys, rep.Keys))
	}
	seen := map[string]bool{}
	for _, kv := range all.KVs {
		if seen[kv.Key] {
			rep.Problems = append(rep.Problems, fmt.Sprintf("a full range returned key %q twice", kv.Key))
		}
		seen[kv.Key] = true
		if !known[kv.Key] {
			rep.Problems = append(rep.Problems, fmt.Sprintf("a full range returned key %q, which the workload never wrote", kv.Key))
		}
		if sh := client.ShardOf(kv.Key, r.c.Shards()); cfg.Shards[sh] == 0 {
			rep.Problems = append(rep.Problems, fmt.Sprintf("key %q of shard %d is served, but no group owns the shard", kv.Key, sh))
		}
	}
	r.event("shards: %s", rep)
}

func mapsEqual(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
