package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// ErrOutcomeUnknown is matched (errors.Is) by the error a write returns
// when the client gave up after the write may have been applied. With a
// session on, retrying the same call is still safe only within the same
// Client; a new Client starts a new session.
var ErrOutcomeUnknown = errors.New("client: outcome unknown: the write may or may not have been applied")

// ErrNoEndpoints is returned by New without endpoints.
var ErrNoEndpoints = errors.New("client: no endpoints")

// Config configures a Client.
type Config struct {
	// Endpoints are the members' client addresses (host:port).
	Endpoints []string
	// DialTimeout bounds connection setup per attempt. Default 2s.
	DialTimeout time.Duration
	// AttemptTimeout bounds one attempt at one member before the client
	// tries the next. Default 5s.
	AttemptTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between attempts.
	// Defaults 20ms and 1s.
	BackoffMin, BackoffMax time.Duration
	// DisableSessions turns off exactly-once sessions; writes are then
	// never retried once they may have reached a member.
	DisableSessions bool
	// DialOptions are added to every connection (e.g. interceptors).
	DialOptions []grpc.DialOption
}

// Client is safe for concurrent use.
type Client struct {
	cfg   Config
	conns []*grpc.ClientConn
	next  atomic.Uint32 // preferred endpoint

	// Exactly-once sessions. The server remembers only the last sequence
	// number per client ID, so each in-flight write needs its own ID: a
	// write borrows a lane (an ID with its own sequence) for its duration.
	baseID uint64
	router router // shard routing (sharded clusters only)
	mu     sync.Mutex
	free   []*lane
	nLanes uint64
}

type lane struct {
	id  uint64
	seq uint64
}

// New connects to the endpoints (lazily: no member needs to be up yet).
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, ErrNoEndpoints
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = 5 * time.Second
	}
	if cfg.BackoffMin == 0 {
		cfg.BackoffMin = 20 * time.Millisecond
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = time.Second
	}
	c := &Client{cfg: cfg}
	c.router.dial = cfg.DialOptions
	for _, ep := range cfg.Endpoints {
		dopts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cfg.DialOptions...)
		cc, err := grpc.NewClient(trimScheme(ep), dopts...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("client: endpoint %q: %w", ep, err)
		}
		c.conns = append(c.conns, cc)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	// Leave room below 2^63 for lanes; never 0.
	c.baseID = (binary.BigEndian.Uint64(b[:]) >> 2) | 1<<40
	// Start at a random endpoint so many clients spread over the members.
	c.next.Store(uint32(b[7]) % uint32(len(c.conns)))
	return c, nil
}

func trimScheme(ep string) string {
	for _, p := range []string{"http://", "https://"} {
		if len(ep) > len(p) && ep[:len(p)] == p {
			return ep[len(p):]
		}
	}
	return ep
}

// Close closes the connections.
func (c *Client) Close() error {
	c.router.close()
	var first error
	for _, cc := range c.conns {
		if err := cc.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (c *Client) takeLane() *lane {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.free); n > 0 {
		l := c.free[n-1]
		c.free = c.free[:n-1]
		return l
	}
	c.nLanes++
	return &lane{id: c.baseID + c.nLanes}
}

func (c *Client) putLane(l *lane) {
	c.mu.Lock()
	c.free = append(c.free, l)
	c.mu.Unlock()
}

// retryable reports whether err means the request was not executed, or
// was a read, so it can go to the next member.
func retryable(err error) bool {
	s, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch s.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return tooManyRequests(err)
}

// tooManyRequests reports etcd's "too many requests": the member refused
// the request without proposing it because its state machine had fallen
// behind, so another member, or the same one a moment later, can take it.
func tooManyRequests(err error) bool {
	return rpctypes.ErrorDesc(err) == rpctypes.ErrTooManyRequests.Error()
}

// notSent reports whether err shows that a write never reached Raft.
func notSent(err error) bool {
	switch rpctypes.ErrorDesc(err) {
	// ErrorDesc is a status error's message, which is what an
	// EtcdError's Error returns (a status error's Error adds the code).
	case rpctypes.ErrNoLeader.Error(), rpctypes.ErrNotLeader.Error(), rpctypes.ErrTooManyRequests.Error():
		return true
	}
	s, ok := status.FromError(err)
	// A connection that could not be established carries no request.
	return ok && s.Code() == codes.Unavailable && (containsAny(s.Message(), "connection refused", "no such host", "connection error"))
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// do runs op against members until it succeeds, fails for good, or ctx
// ends. write says whether op changes state; for writes without a session
// only errors that prove the request was not sent are retried.
func (c *Client) do(ctx context.Context, write bool, op func(ctx context.Context, cc *grpc.ClientConn) error) error {
	return c.doKey(ctx, write, nil, op)
}

// doKey is do for a request about one key: in a sharded cluster it goes
// straight to the group that owns the key's shard, and a wrong-group
// answer (which proves the request was not applied) refreshes the
// configuration and retries.
func (c *Client) doKey(ctx context.Context, write bool, key []byte, op func(ctx context.Context, cc *grpc.ClientConn) error) error {
	if key != nil {
		c.discover(ctx)
	}
	var l *lane
	if write && !c.cfg.DisableSessions {
		l = c.takeLane()
		defer c.putLane(l)
		l.seq++
		ctx = metadata.AppendToOutgoingContext(ctx,
			"cairn-client-id", strconv.FormatUint(l.id, 10),
			"cairn-seq", strconv.FormatUint(l.seq, 10))
	}
	backoff := c.cfg.BackoffMin
	mayHaveApplied := false
	var last error
	for attempt := 0; ; attempt++ {
		cur := c.next.Load()
		i := int(cur) % len(c.conns)
		conn := c.conns[i]
		actx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
		// In a sharded cluster every other attempt goes through the
		// configured endpoints without naming a group, so the members
		// route it: the group addresses in the configuration may not be
		// reachable from this client (another network, a proxy).
		if key != nil && attempt%2 == 0 {
			if cc, gid, ok := c.router.target(key, attempt/2); ok {
				conn, actx = cc, withGroupMD(actx, gid)
			}
		}
		err := op(actx, conn)
		cancel()
		if err == nil {
			return nil
		}
		last = err
		if isWrongGroup(err) && ctx.Err() == nil {
			// The shard moved: nothing was applied, so retrying with the
			// same session sequence number is safe.
			c.refresh(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, c.cfg.BackoffMax)
			continue
		}
		if ctx.Err() != nil || !retryable(err) && status.Code(err) != codes.Canceled {
			break
		}
		if write && !notSent(err) {
			mayHaveApplied = true
			if l == nil {
				break // no session: a retry could apply the write twice
			}
		}
		// Move on to the next member, unless another call already did.
		c.next.CompareAndSwap(cur, uint32((i+1)%len(c.conns)))
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		if ctx.Err() != nil {
			break
		}
		backoff = min(2*backoff, c.cfg.BackoffMax)
	}
	if write && (mayHaveApplied || ctx.Err() != nil) && !isDefinite(last) {
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, last)
	}
	return last
}

// isDefinite reports errors that prove the write was not applied by any
// attempt. A wrong-group answer proves it only for the attempt it
// answers: an earlier attempt at the shard's old owner may have been
// applied. So does "too many requests" (an earlier attempt may have
// timed out after proposing).
func isDefinite(err error) bool {
	if isWrongGroup(err) || tooManyRequests(err) {
		return false
	}
	switch status.Code(err) {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound, codes.OutOfRange, codes.ResourceExhausted, codes.Unimplemented, codes.PermissionDenied, codes.Unauthenticated:
		return true
	}
	return false
}

// KeyValue is one key with its metadata.
type KeyValue struct {
	Key            string
	Value          string
	CreateRevision int64
	ModRevision    int64
	Version        int64
}

func fromPB(kv *mvccpb.KeyValue) KeyValue {
	return KeyValue{Key: string(kv.Key), Value: string(kv.Value), CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Version: kv.Version}
}

// PutResult is the answer to Put.
type PutResult struct {
	Revision int64
	Prev     *KeyValue // with WithPrevKV, if the key existed
}

// GetResult is the answer to Get.
type GetResult struct {
	KVs      []KeyValue
	Count    int64
	More     bool
	Revision int64
}

// DeleteResult is the answer to Delete.
type DeleteResult struct {
	Deleted  int64
	Revision int64
	Prev     []KeyValue
}

// AppendResult is the answer to Append.
type AppendResult struct {
	Revision int64
	Length   int64 // the value's length after the append
}

// Put sets key to value.
func (c *Client) Put(ctx context.Context, key, value string, opts ...Option) (*PutResult, error) {
	o := collect(opts)
	req := &pb.PutRequest{Key: []byte(key), Value: []byte(value), PrevKv: o.prevKV}
	var resp *pb.PutResponse
	err := c.doKey(ctx, true, req.Key, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).Put(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	r := &PutResult{Revision: resp.Header.GetRevision()}
	if resp.PrevKv != nil {
		p := fromPB(resp.PrevKv)
		r.Prev = &p
	}
	return r, nil
}

// Get reads key (or a range with WithPrefix / WithRange). Reads are
// linearizable unless WithSerializable is given.
func (c *Client) Get(ctx context.Context, key string, opts ...Option) (*GetResult, error) {
	o := collect(opts)
	req := &pb.RangeRequest{Key: []byte(key), RangeEnd: o.rangeEnd(key), Limit: o.limit,
		Serializable: o.serializable, KeysOnly: o.keysOnly, CountOnly: o.countOnly}
	if o.sortByKey {
		req.SortOrder, req.SortTarget = pb.RangeRequest_ASCEND, pb.RangeRequest_KEY
	}
	var resp *pb.RangeResponse
	err := c.doKey(ctx, false, pointKey(req.Key, req.RangeEnd), func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).Range(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	r := &GetResult{Count: resp.Count, More: resp.More, Revision: resp.Header.GetRevision()}
	for _, kv := range resp.Kvs {
		r.KVs = append(r.KVs, fromPB(kv))
	}
	return r, nil
}

// Delete deletes key (or a range with WithPrefix / WithRange).
func (c *Client) Delete(ctx context.Context, key string, opts ...Option) (*DeleteResult, error) {
	o := collect(opts)
	req := &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: o.rangeEnd(key), PrevKv: o.prevKV}
	var resp *pb.DeleteRangeResponse
	err := c.doKey(ctx, true, pointKey(req.Key, req.RangeEnd), func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).DeleteRange(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	r := &DeleteResult{Deleted: resp.Deleted, Revision: resp.Header.GetRevision()}
	for _, kv := range resp.PrevKvs {
		r.Prev = append(r.Prev, fromPB(kv))
	}
	return r, nil
}

// Append atomically appends value to key's value (creating the key).
func (c *Client) Append(ctx context.Context, key, value string) (*AppendResult, error) {
	req := &pb.PutRequest{Key: []byte(key), Value: []byte(value)}
	var resp pb.PutResponse
	var hdr metadata.MD
	err := c.doKey(ctx, true, req.Key, func(ctx context.Context, cc *grpc.ClientConn) error {
		hdr = nil
		return cc.Invoke(ctx, "/cairn.v1.Cairn/Append", req, &resp, grpc.Header(&hdr))
	})
	if err != nil {
		return nil, err
	}
	r := &AppendResult{Revision: resp.Header.GetRevision()}
	if v := hdr.Get("cairn-append-length"); len(v) == 1 {
		r.Length, _ = strconv.ParseInt(v[0], 10, 64)
	}
	return r, nil
}

// Status is one member's view of the cluster.
type Status struct {
	Endpoint     string
	MemberID     uint64
	Leader       uint64
	Term         uint64
	RaftIndex    uint64
	AppliedIndex uint64
	Revision     int64
	DBSize       int64
	Version      string
	Errors       []string
}

// Status asks the member at endpoint (one of the configured ones, or any
// address) for its status, without retrying elsewhere.
func (c *Client) Status(ctx context.Context, endpoint string) (*Status, error) {
	cc, err := grpc.NewClient(trimScheme(endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	resp, err := pb.NewMaintenanceClient(cc).Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return nil, err
	}
	return &Status{Endpoint: endpoint, MemberID: resp.Header.GetMemberId(), Leader: resp.Leader, Term: resp.RaftTerm,
		RaftIndex: resp.RaftIndex, AppliedIndex: resp.RaftAppliedIndex, Revision: resp.Header.GetRevision(),
		DBSize: resp.DbSize, Version: resp.Version, Errors: resp.Errors}, nil
}

// Member describes a cluster member.
type Member struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

// MemberList lists the members.
func (c *Client) MemberList(ctx context.Context) ([]Member, error) {
	var resp *pb.MemberListResponse
	err := c.do(ctx, false, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewClusterClient(cc).MemberList(ctx, &pb.MemberListRequest{Linearizable: true})
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]Member, 0, len(resp.Members))
	for _, m := range resp.Members {
		out = append(out, Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner})
	}
	return out, nil
}

// MemberAdd adds a member (as a learner if learner is true) and returns
// its ID. Start the new member with --initial-cluster-state existing.
func (c *Client) MemberAdd(ctx context.Context, peerURL string, learner bool) (uint64, error) {
	var resp *pb.MemberAddResponse
	err := c.do(ctx, false, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewClusterClient(cc).MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{peerURL}, IsLearner: learner})
		return err
	})
	if err != nil {
		return 0, err
	}
	return resp.Member.ID, nil
}

// MemberRemove removes a member.
func (c *Client) MemberRemove(ctx context.Context, id uint64) error {
	return c.do(ctx, false, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := pb.NewClusterClient(cc).MemberRemove(ctx, &pb.MemberRemoveRequest{ID: id})
		return err
	})
}

// MemberPromote promotes a learner to voter.
func (c *Client) MemberPromote(ctx context.Context, id uint64) error {
	return c.do(ctx, false, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := pb.NewClusterClient(cc).MemberPromote(ctx, &pb.MemberPromoteRequest{ID: id})
		return err
	})
}

// pointKey returns key if the request is about that one key, else nil.
func pointKey(key, end []byte) []byte {
	if len(end) != 0 {
		return nil
	}
	return key
}
