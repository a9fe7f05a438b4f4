package devcluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cairn-db/cairn/client"
)

// Sharded clusters (docs/sharding.md). With Options.Groups ≥ 1 every
// member process hosts a replica of the shard controller and one replica
// of each shard group 1..Groups, behind its one client and one peer port.

// shardArgs returns the `cairn server` flags that make a member sharded.
func (c *Cluster) shardArgs() []string {
	if c.opts.Groups < 1 {
		return nil
	}
	args := []string{"--controller", "--shard-groups", groupList(c.opts.Groups)}
	if c.opts.Shards > 0 {
		args = append(args, "--shards", strconv.Itoa(c.opts.Shards))
	}
	return args
}

func groupList(n int) string {
	var ids []string
	for g := 1; g <= n; g++ {
		ids = append(ids, strconv.Itoa(g))
	}
	return strings.Join(ids, ",")
}

// Sharded reports whether the cluster was started with Options.Groups ≥ 1.
func (c *Cluster) Sharded() bool { return c.opts.Groups > 0 }

// GroupIDs returns the shard groups every member hosts (1..Groups).
func (c *Cluster) GroupIDs() []uint64 {
	var out []uint64
	for g := 1; g <= c.opts.Groups; g++ {
		out = append(out, uint64(g))
	}
	return out
}

// StartSharded starts a sharded cluster (opts.Groups ≥ 1; Members
// defaults to 3), waits until every member answers controller queries,
// joins every group not yet in the configuration (each with every
// member's client address), and waits until every group replica has
// settled at the resulting configuration. On error the members are
// stopped. The returned cluster is the same handle Start returns: Kill,
// Stop, Pause, Restart and Log work per member.
func StartSharded(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Groups < 1 {
		return nil, fmt.Errorf("devcluster: StartSharded needs Groups ≥ 1, not %d", opts.Groups)
	}
	c, err := Start(opts)
	if err != nil {
		return nil, err
	}
	if _, err := c.JoinAll(ctx); err != nil {
		c.StopAll()
		return nil, err
	}
	return c, nil
}

// JoinAll waits until every running member serves controller queries,
// joins the hosted groups the configuration lacks, and waits until every
// group has settled. It returns the resulting configuration. It is what
// StartSharded does after starting the processes, and is safe to repeat
// (on a restarted dev cluster whose groups already joined it joins
// nothing).
func (c *Cluster) JoinAll(ctx context.Context) (client.ShardConfig, error) {
	if !c.Sharded() {
		return client.ShardConfig{}, errors.New("devcluster: the cluster is not sharded (Options.Groups is 0)")
	}
	if err := c.WaitReady(ctx, ProbeController); err != nil {
		return client.ShardConfig{}, err
	}
	cl, err := c.Client()
	if err != nil {
		return client.ShardConfig{}, err
	}
	defer cl.Close()
	cfg, err := cl.ShardConfigAt(ctx, -1)
	if err != nil {
		return client.ShardConfig{}, fmt.Errorf("devcluster: querying the controller: %w", err)
	}
	missing := map[uint64][]string{}
	for _, gid := range c.GroupIDs() {
		if _, ok := cfg.Groups[gid]; !ok {
			missing[gid] = c.Endpoints()
		}
	}
	if len(missing) > 0 {
		if cfg, err = cl.ShardJoin(ctx, missing); err != nil {
			return client.ShardConfig{}, fmt.Errorf("devcluster: joining groups: %w", err)
		}
	}
	if err := c.WaitSettled(ctx, cfg.Num); err != nil {
		return client.ShardConfig{}, err
	}
	return cfg, nil
}

// Client returns a Go client for every member's client address, with a
// short per-attempt timeout so a dead member is skipped quickly. The
// caller closes it.
func (c *Cluster) Client() (*client.Client, error) {
	return client.New(client.Config{Endpoints: c.Endpoints(), AttemptTimeout: time.Second})
}

// ProbeController is a WaitReady probe for sharded clusters: it asks the
// member at endpoint (only that one) for the newest shard configuration,
// which needs a controller leader.
func ProbeController(ctx context.Context, endpoint string) error {
	cl, err := client.New(client.Config{Endpoints: []string{endpoint}, AttemptTimeout: 500 * time.Millisecond})
	if err != nil {
		return err
	}
	defer cl.Close()
	_, err = cl.ShardConfigAt(ctx, -1)
	return err
}

// WaitSettled waits until, on every running member, every hosted shard
// group replica is at configuration num or later with no shard pulling,
// handing off or awaiting garbage collection.
func (c *Cluster) WaitSettled(ctx context.Context, num uint64) error {
	cl, err := c.Client()
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		why := c.unsettled(ctx, cl, num)
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devcluster: shard groups did not settle at configuration %d: %s", num, why)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// unsettled returns why the groups have not settled, or "".
func (c *Cluster) unsettled(ctx context.Context, cl *client.Client, num uint64) string {
	for i, m := range c.Members {
		if !c.Running(i) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cl.ShardStatus(sctx, m.ClientAddr)
		cancel()
		if err != nil {
			return fmt.Sprintf("%s: %v", m.Name, err)
		}
		if len(st.Groups) < c.opts.Groups {
			return fmt.Sprintf("%s hosts %d groups, want %d", m.Name, len(st.Groups), c.opts.Groups)
		}
		for _, g := range st.Groups {
			switch {
			case g.Config < num:
				return fmt.Sprintf("%s: group %d is at configuration %d", m.Name, g.GID, g.Config)
			case len(g.Pulling)+len(g.Handing)+len(g.GCWait) > 0:
				return fmt.Sprintf("%s: group %d has shards in transit (pulling %v, handing off %v, awaiting GC %v)",
					m.Name, g.GID, g.Pulling, g.Handing, g.GCWait)
			}
		}
	}
	return ""
}
