package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cairn-db/cairn/internal/shard"
)

// Sharded clusters (docs/sharding.md). The client learns the shard
// configuration from any member, keeps it, and sends each single-key
// request straight to a member of the group that owns the key's shard,
// naming the group. A wrong-group answer (the shard moved) makes it fetch
// a newer configuration and retry, with the same exactly-once session
// sequence number, so a retried write is still applied once. Ranges that
// span shards go to any member, which gathers them from every group.

// ShardConfig is one numbered shard configuration.
type ShardConfig struct {
	Num    uint64              `json:"num"`
	Shards []uint64            `json:"shards"` // shard -> group (0: none)
	Groups map[uint64][]string `json:"groups"` // group -> member client addresses
}

func fromShardConfig(c shard.Config) ShardConfig {
	out := ShardConfig{Num: c.Num, Shards: make([]uint64, len(c.Shards)), Groups: map[uint64][]string{}}
	for i, g := range c.Shards {
		out.Shards[i] = uint64(g)
	}
	for g, addrs := range c.Groups {
		out.Groups[uint64(g)] = slices.Clone(addrs)
	}
	return out
}

// ShardOf returns the shard key belongs to in a cluster of n shards.
func ShardOf(key string, n int) int { return shard.ShardOf([]byte(key), n) }

// Shard service method names (the server's cairn.v1.Shard service).
const (
	methodShardController = "/cairn.v1.Shard/Controller"
	methodShardStatus     = "/cairn.v1.Shard/Status"
	mdGroup               = "cairn-group"
	wrongGroupPrefix      = "cairn: wrong group"
)

// ErrNotSharded is returned by the shard administration calls when the
// cluster is not sharded.
var ErrNotSharded = errors.New("client: the cluster is not sharded")

func isWrongGroup(err error) bool {
	s, ok := status.FromError(err)
	return ok && s.Code() == codes.FailedPrecondition && strings.HasPrefix(s.Message(), wrongGroupPrefix)
}

func isNotSharded(err error) bool {
	s, ok := status.FromError(err)
	return ok && (s.Code() == codes.Unimplemented ||
		(s.Code() == codes.FailedPrecondition && strings.Contains(s.Message(), "not part of a sharded cluster")))
}

// controller runs a shard controller command at any member.
func (c *Client) controller(ctx context.Context, cmd *shard.Command) (ShardConfig, error) {
	var out *wrapperspb.BytesValue
	err := c.do(ctx, false, func(ctx context.Context, cc *grpc.ClientConn) error {
		out = new(wrapperspb.BytesValue)
		return cc.Invoke(ctx, methodShardController, wrapperspb.Bytes(cmd.Marshal()), out)
	})
	if err != nil {
		if isNotSharded(err) {
			return ShardConfig{}, fmt.Errorf("%w: %w", ErrNotSharded, err)
		}
		return ShardConfig{}, err
	}
	var cfg shard.Config
	if err := cfg.UnmarshalBinary(out.Value); err != nil {
		return ShardConfig{}, fmt.Errorf("client: the controller sent a bad configuration: %w", err)
	}
	c.router.learn(cfg)
	return fromShardConfig(cfg), nil
}

// adminCommand stamps a controller command with an exactly-once session.
func (c *Client) adminCommand(cmd *shard.Command) *shard.Command {
	if !c.cfg.DisableSessions {
		l := c.takeLane()
		l.seq++
		cmd.ClientID, cmd.Seq = l.id, l.seq
		c.putLane(l)
	}
	return cmd
}

// ShardConfigAt returns configuration num, or the newest with num < 0.
func (c *Client) ShardConfigAt(ctx context.Context, num int64) (ShardConfig, error) {
	return c.controller(ctx, &shard.Command{Op: shard.OpQuery, Num: num})
}

// ShardJoin adds shard groups (group ID -> member client addresses); the
// controller rebalances shards onto them.
func (c *Client) ShardJoin(ctx context.Context, groups map[uint64][]string) (ShardConfig, error) {
	g := map[shard.GroupID][]string{}
	for id, addrs := range groups {
		g[shard.GroupID(id)] = addrs
	}
	return c.controller(ctx, c.adminCommand(&shard.Command{Op: shard.OpJoin, Groups: g}))
}

// ShardLeave removes shard groups; their shards move to the others.
func (c *Client) ShardLeave(ctx context.Context, gids ...uint64) (ShardConfig, error) {
	var ids []shard.GroupID
	for _, id := range gids {
		ids = append(ids, shard.GroupID(id))
	}
	return c.controller(ctx, c.adminCommand(&shard.Command{Op: shard.OpLeave, GIDs: ids}))
}

// ShardMove assigns one shard to one group.
func (c *Client) ShardMove(ctx context.Context, sh int, gid uint64) (ShardConfig, error) {
	return c.controller(ctx, c.adminCommand(&shard.Command{Op: shard.OpMove, Shard: sh, GID: shard.GroupID(gid)}))
}

// ShardHostStatus is one member's view of its shard groups.
type ShardHostStatus struct {
	Member     string             `json:"member"`
	Shards     int                `json:"shards"`
	Controller bool               `json:"controller"`
	Latest     uint64             `json:"latest_config"`
	Groups     []ShardGroupStatus `json:"groups"`
}

// ShardGroupStatus is one shard group replica's view.
type ShardGroupStatus struct {
	GID      uint64      `json:"gid"`
	Leader   bool        `json:"leader"`
	Config   uint64      `json:"config"`
	Serving  []int       `json:"serving,omitempty"`
	Pulling  []int       `json:"pulling,omitempty"`
	Handing  []int       `json:"handing_off,omitempty"`
	GCWait   []int       `json:"gc_pending,omitempty"`
	Keys     int         `json:"keys"`
	KeysHeld map[int]int `json:"keys_held"`
}

// ShardStatus asks the member at endpoint for its shard groups' state,
// without retrying elsewhere.
func (c *Client) ShardStatus(ctx context.Context, endpoint string) (*ShardHostStatus, error) {
	cc, err := grpc.NewClient(trimScheme(endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	out := new(wrapperspb.BytesValue)
	if err := cc.Invoke(ctx, methodShardStatus, wrapperspb.Bytes(nil), out); err != nil {
		if isNotSharded(err) {
			return nil, fmt.Errorf("%w: %w", ErrNotSharded, err)
		}
		return nil, err
	}
	var st ShardHostStatus
	if err := json.Unmarshal(out.Value, &st); err != nil {
		return nil, fmt.Errorf("client: bad shard status from %s: %w", endpoint, err)
	}
	return &st, nil
}

// router is the client's shard routing state.
type router struct {
	mu      sync.Mutex
	known   bool // whether the cluster's kind is known
	sharded bool
	cfg     shard.Config
	conns   map[string]*grpc.ClientConn
	dial    []grpc.DialOption
}

func (r *router) learn(cfg shard.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.known, r.sharded = true, true
	if cfg.Num >= r.cfg.Num || len(r.cfg.Shards) == 0 {
		r.cfg = cfg
	}
}

// target returns where a request for key should go: a connection to a
// member of the owning group and the group, or ok=false to use the
// configured endpoints.
func (r *router) target(key []byte, attempt int) (cc *grpc.ClientConn, gid shard.GroupID, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.sharded || len(r.cfg.Shards) == 0 {
		return nil, 0, false
	}
	gid = r.cfg.Owner(key)
	addrs := r.cfg.Groups[gid]
	if gid == shard.NoGroup || len(addrs) == 0 {
		return nil, 0, false
	}
	addr := addrs[attempt%len(addrs)]
	cc = r.conns[addr]
	if cc == nil {
		var err error
		opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, r.dial...)
		if cc, err = grpc.NewClient(addr, opts...); err != nil {
			return nil, 0, false
		}
		if r.conns == nil {
			r.conns = map[string]*grpc.ClientConn{}
		}
		r.conns[addr] = cc
	}
	return cc, gid, true
}

func (r *router) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cc := range r.conns {
		cc.Close()
	}
	r.conns = nil
}

// discover learns once whether the cluster is sharded.
func (c *Client) discover(ctx context.Context) {
	c.router.mu.Lock()
	known := c.router.known
	c.router.mu.Unlock()
	if known {
		return
	}
	_, err := c.controller(ctx, &shard.Command{Op: shard.OpQuery, Num: -1})
	if err != nil && errors.Is(err, ErrNotSharded) {
		c.router.mu.Lock()
		c.router.known, c.router.sharded = true, false
		c.router.mu.Unlock()
	}
}

// refresh fetches the newest configuration after a wrong-group answer.
func (c *Client) refresh(ctx context.Context) {
	_, _ = c.controller(ctx, &shard.Command{Op: shard.OpQuery, Num: -1})
}

// withGroupMD names gid on an outgoing request.
func withGroupMD(ctx context.Context, gid shard.GroupID) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	md.Set(mdGroup, strconv.FormatUint(uint64(gid), 10))
	return metadata.NewOutgoingContext(ctx, md)
}
