package server

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cairn-db/cairn/internal/shard"
	"github.com/cairn-db/cairn/raft/wal"
)

// Config configures a server. Fields map one-to-one to `cairn server`
// flags (kebab-case) and CAIRN_* environment variables.
type Config struct {
	// Name identifies this member in InitialCluster.
	Name string
	// DataDir holds the WAL, snapshots and the member's identity.
	DataDir string
	// ListenClient is the gRPC address for clients (host:port).
	ListenClient string
	// AdvertiseClient is the client address other members and clients
	// should use; default ListenClient.
	AdvertiseClient string
	// ListenPeer is the address for Raft traffic (host:port).
	ListenPeer string
	// InitialCluster lists every initial member as name=peerhost:port,
	// comma-separated. This member's entry must equal ListenPeer's
	// advertised address.
	InitialCluster string
	// InitialClusterState is "new" to bootstrap a cluster, or "existing"
	// to join one after `cairn member add`.
	InitialClusterState string
	// ClusterToken distinguishes clusters created with the same members.
	ClusterToken string
	// ListenMetrics serves /metrics and /health; empty disables.
	ListenMetrics string
	// EnablePprof also serves Go's profiler at /debug/pprof/ on the
	// metrics address.
	EnablePprof bool
	// TickInterval is one Raft tick; ElectionTicks ticks without a leader
	// start an election.
	TickInterval  time.Duration
	ElectionTicks int
	// SnapshotCount: applied entries between snapshots, at the least.
	SnapshotCount int64
	// SnapshotCountMax: applied entries between snapshots, at the most;
	// between the two, a snapshot waits until the entries since the last
	// one hold as many bytes as it had (raftnode.Config.SnapshotMaxEntries). Zero
	// means five times SnapshotCount.
	SnapshotCountMax int64
	// WALPreallocate zero-fills each WAL segment (64 MiB) before use, so
	// an fsync flushes only data and not also the file system's journal
	// (docs/wal.md). It costs the segment's size on disk up front.
	WALPreallocate bool
	// SnapshotCatchupEntries: entries kept behind a snapshot so a slightly
	// lagging follower catches up from the log instead of a snapshot.
	SnapshotCatchupEntries uint64
	// SessionTTL: exactly-once sessions idle this long are forgotten.
	SessionTTL time.Duration
	// MaxRequestBytes bounds a client request.
	MaxRequestBytes int
	// RequestTimeout bounds how long a write waits to be applied before
	// the client is told the outcome is unknown.
	RequestTimeout time.Duration
	Logger         *slog.Logger

	// Sharding (docs/sharding.md). A process that hosts the controller or
	// any shard group runs in sharded mode; otherwise it is the unsharded
	// key/value member above.

	// Controller makes this process host a replica of the shard
	// controller's Raft group. Every member of InitialCluster does too.
	Controller bool
	// ShardGroups lists the shard groups (comma-separated positive IDs)
	// this process hosts a replica of. Every member of InitialCluster
	// hosts the same ones.
	ShardGroups string
	// ControllerEndpoints lists client addresses of controller members
	// (comma-separated), for a sharded process that does not host the
	// controller itself.
	ControllerEndpoints string
	// Shards is the cluster's number of shards, fixed when the cluster is
	// created.
	Shards int

	// fs, when set by an in-package test, replaces the operating system's
	// file system under the Raft directory (WAL and snapshots), so tests
	// can make writes fail the way a full disk does.
	fs wal.FS
	// walSegmentSize, when set by an in-package test, makes WAL segments
	// small, so a few writes roll segments and snapshots release them.
	walSegmentSize int64
}

// Defaults returns a Config with every default filled in.
func Defaults() Config {
	return Config{
		Name:                   "default",
		DataDir:                "default.cairn",
		ListenClient:           "127.0.0.1:2379",
		ListenPeer:             "127.0.0.1:2380",
		InitialClusterState:    "new",
		ClusterToken:           "cairn-cluster",
		TickInterval:           100 * time.Millisecond,
		ElectionTicks:          10,
		SnapshotCount:          10000,
		SnapshotCatchupEntries: 5000,
		WALPreallocate:         true,
		SessionTTL:             time.Hour,
		MaxRequestBytes:        1536 * 1024,
		RequestTimeout:         7 * time.Second,
		Shards:                 shard.DefaultShards,
	}
}

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid configuration")

// Member is one entry of the initial cluster.
type Member struct {
	ID       uint64
	Name     string
	PeerAddr string
}

// Validate checks c for contradictions and returns the parsed initial
// cluster. Every error is one clear sentence.
func (c *Config) Validate() ([]Member, error) {
	if c.Name == "" {
		return nil, fmt.Errorf("%w: --name must not be empty", ErrConfig)
	}
	if c.DataDir == "" {
		return nil, fmt.Errorf("%w: --data-dir must not be empty", ErrConfig)
	}
	for flag, addr := range map[string]string{"--listen-client": c.ListenClient, "--listen-peer": c.ListenPeer} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%w: %s %q is not host:port", ErrConfig, flag, addr)
		}
	}
	if c.ListenClient == c.ListenPeer {
		return nil, fmt.Errorf("%w: --listen-client and --listen-peer must differ (both %s)", ErrConfig, c.ListenClient)
	}
	if c.EnablePprof && c.ListenMetrics == "" {
		return nil, fmt.Errorf("%w: --enable-pprof needs --listen-metrics", ErrConfig)
	}
	if c.ListenMetrics != "" && (c.ListenMetrics == c.ListenClient || c.ListenMetrics == c.ListenPeer) {
		return nil, fmt.Errorf("%w: --listen-metrics %s clashes with another listener", ErrConfig, c.ListenMetrics)
	}
	if c.AdvertiseClient == "" {
		c.AdvertiseClient = c.ListenClient
	}
	if c.InitialClusterState != "new" && c.InitialClusterState != "existing" {
		return nil, fmt.Errorf("%w: --initial-cluster-state must be new or existing, not %q", ErrConfig, c.InitialClusterState)
	}
	if c.TickInterval <= 0 || c.ElectionTicks < 2 {
		return nil, fmt.Errorf("%w: --tick-interval must be positive and --election-ticks at least 2", ErrConfig)
	}
	if c.MaxRequestBytes <= 0 {
		return nil, fmt.Errorf("%w: --max-request-bytes must be positive", ErrConfig)
	}
	if c.InitialCluster == "" {
		c.InitialCluster = c.Name + "=" + c.ListenPeer
	}
	members, err := ParseInitialCluster(c.InitialCluster, c.ClusterToken)
	if err != nil {
		return nil, err
	}
	var self *Member
	for i := range members {
		if members[i].Name == c.Name {
			self = &members[i]
		}
	}
	if self == nil {
		return nil, fmt.Errorf("%w: --name %q does not appear in --initial-cluster %q", ErrConfig, c.Name, c.InitialCluster)
	}
	if self.PeerAddr != c.ListenPeer {
		_, lport, _ := net.SplitHostPort(c.ListenPeer)
		_, aport, _ := net.SplitHostPort(self.PeerAddr)
		if lport != aport {
			return nil, fmt.Errorf("%w: --initial-cluster gives %s the peer address %s, but --listen-peer is %s", ErrConfig, c.Name, self.PeerAddr, c.ListenPeer)
		}
	}
	if _, err := c.shardGroups(); err != nil {
		return nil, err
	}
	if c.Shards < 1 || c.Shards > shard.MaxShards {
		return nil, fmt.Errorf("%w: --shards must be between 1 and %d, not %d", ErrConfig, shard.MaxShards, c.Shards)
	}
	if c.ShardGroups != "" && !c.Controller && len(c.controllerEndpoints()) == 0 {
		return nil, fmt.Errorf("%w: a process hosting shard groups needs --controller or --controller-endpoints", ErrConfig)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return members, nil
}

// Sharded reports whether the process runs in sharded mode.
func (c *Config) Sharded() bool { return c.Controller || c.ShardGroups != "" }

// shardGroups parses ShardGroups.
func (c *Config) shardGroups() ([]shard.GroupID, error) {
	var out []shard.GroupID
	if strings.TrimSpace(c.ShardGroups) == "" {
		return nil, nil
	}
	seen := map[uint64]bool{}
	for _, part := range strings.Split(c.ShardGroups, ",") {
		part = strings.TrimSpace(part)
		id, err := strconv.ParseUint(part, 10, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("%w: --shard-groups entry %q is not a positive group ID", ErrConfig, part)
		}
		if seen[id] {
			return nil, fmt.Errorf("%w: --shard-groups lists group %d twice", ErrConfig, id)
		}
		seen[id] = true
		out = append(out, shard.GroupID(id))
	}
	slices.Sort(out)
	return out, nil
}

// controllerEndpoints parses ControllerEndpoints.
func (c *Config) controllerEndpoints() []string {
	var out []string
	for _, e := range strings.Split(c.ControllerEndpoints, ",") {
		e = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(e), "http://"), "https://")
		if e != "" {
			out = append(out, e)
		}
	}
	return out
}

// ParseInitialCluster parses name=host:port,... into members whose IDs
// derive from the peer address and the cluster token, so every member
// computes the same IDs.
func ParseInitialCluster(s, token string) ([]Member, error) {
	var members []Member
	names := map[string]bool{}
	addrs := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		name, addr, ok := strings.Cut(part, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("%w: --initial-cluster entry %q is not name=host:port", ErrConfig, part)
		}
		addr = strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%w: --initial-cluster entry %q: %q is not host:port", ErrConfig, part, addr)
		}
		if names[name] {
			return nil, fmt.Errorf("%w: --initial-cluster names %q twice", ErrConfig, name)
		}
		if addrs[addr] {
			return nil, fmt.Errorf("%w: --initial-cluster lists peer address %s twice", ErrConfig, addr)
		}
		names[name], addrs[addr] = true, true
		members = append(members, Member{ID: MemberID(addr, token), Name: name, PeerAddr: addr})
	}
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return members, nil
}

// MemberID derives a member's ID from its peer address and the cluster
// token. IDs are never 0.
func MemberID(peerAddr, token string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(token))
	h.Write([]byte{0})
	h.Write([]byte(peerAddr))
	id := h.Sum64()
	if id == 0 {
		id = 1
	}
	return id
}

// ClusterID derives the cluster's ID from the cluster token alone, so a
// member joining later (with a longer --initial-cluster) computes the same
// ID. Give every cluster its own --cluster-token.
func ClusterID(token string) uint64 {
	h := fnv.New64a()
	h.Write([]byte("cairn-cluster\x00"))
	h.Write([]byte(token))
	id := h.Sum64()
	if id == 0 {
		id = 1
	}
	return id
}
