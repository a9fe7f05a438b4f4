package server

import (
	"context"
	"errors"
	"strconv"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/internal/shardkv"
	"github.com/cairn-db/cairn/raft"
	"github.com/cairn-db/cairn/raft/raftnode"
)

// Metadata keys with which Cairn's client attaches an exactly-once session
// to a write. etcd's clients never send them, so their writes carry no
// session.
const (
	mdClientID = "cairn-client-id"
	mdSeq      = "cairn-seq"
)

// kvService implements etcd's KV service.
type kvService struct {
	pb.UnimplementedKVServer
	s *Server
}

func (k *kvService) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := k.s.checkSize(req); err != nil {
		return nil, err
	}
	if err := kv.ValidateRange(req); err != nil {
		return nil, err
	}
	if !req.Serializable {
		if err := k.s.main.linearizableRead(ctx); err != nil {
			return nil, err
		}
	}
	resp, err := k.s.main.kv().Range(req)
	if err != nil {
		return nil, err
	}
	k.s.main.fillHeader(&resp.Header)
	return resp, nil
}

func (k *kvService) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := k.s.checkSize(req); err != nil {
		return nil, err
	}
	if err := kv.ValidatePut(req); err != nil {
		return nil, err
	}
	res, err := k.s.main.write(ctx, &kv.Command{Put: req})
	if err != nil {
		return nil, err
	}
	k.s.main.fillHeader(&res.Put.Header)
	return res.Put, nil
}

func (k *kvService) DeleteRange(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := k.s.checkSize(req); err != nil {
		return nil, err
	}
	if err := kv.ValidateDeleteRange(req); err != nil {
		return nil, err
	}
	res, err := k.s.main.write(ctx, &kv.Command{DeleteRange: req})
	if err != nil {
		return nil, err
	}
	k.s.main.fillHeader(&res.DeleteRange.Header)
	return res.DeleteRange, nil
}

func (k *kvService) Txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := k.s.checkSize(req); err != nil {
		return nil, err
	}
	if err := kv.ValidateTxn(req); err != nil {
		return nil, err
	}
	res, err := k.s.main.write(ctx, &kv.Command{Txn: req})
	if err != nil {
		return nil, err
	}
	k.s.main.fillHeader(&res.Txn.Header)
	return res.Txn, nil
}

// Compact succeeds without doing anything for any revision up to the
// current one: etcd compacts the history of older versions, and Cairn
// keeps only the latest version of each key, so there is never history to
// compact. Tools that compact periodically (etcd's benchmark tool with
// --compact-interval, Kubernetes' API server) therefore keep working. As
// in etcd, a revision that does not exist yet is refused; the check
// follows a linearizable read so that a lagging member does not refuse a
// revision the cluster has reached. Unlike etcd, compacting again to an
// already compacted revision also succeeds.
func (k *kvService) Compact(ctx context.Context, req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	if err := k.s.main.linearizableRead(ctx); err != nil {
		return nil, err
	}
	if req.Revision > k.s.main.revision() {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	resp := &pb.CompactionResponse{}
	k.s.main.fillHeader(&resp.Header)
	return resp, nil
}

// checkSize rejects requests over MaxRequestBytes with etcd's error.
func (s *Server) checkSize(m interface{ Size() int }) error {
	if m.Size() > s.cfg.MaxRequestBytes {
		return rpctypes.ErrGRPCRequestTooLarge
	}
	return nil
}

// session reads the exactly-once session from the request metadata.
func session(ctx context.Context) (clientID, seq uint64, err error) {
	// ValueFromIncomingContext looks the two keys up without copying
	// the whole metadata map, as FromIncomingContext would on every
	// write (the keys are lower case, as gRPC stores them).
	ids, seqs := metadata.ValueFromIncomingContext(ctx, mdClientID), metadata.ValueFromIncomingContext(ctx, mdSeq)
	if len(ids) == 0 && len(seqs) == 0 {
		return 0, 0, nil
	}
	if len(ids) != 1 || len(seqs) != 1 {
		return 0, 0, status.Errorf(codes.InvalidArgument, "cairn: a session needs exactly one %s and one %s", mdClientID, mdSeq)
	}
	clientID, err1 := strconv.ParseUint(ids[0], 10, 64)
	seq, err2 := strconv.ParseUint(seqs[0], 10, 64)
	if err1 != nil || err2 != nil || clientID == 0 || seq == 0 {
		return 0, 0, status.Errorf(codes.InvalidArgument, "cairn: %s and %s must be positive integers", mdClientID, mdSeq)
	}
	return clientID, seq, nil
}

// maxApplyBacklog is how many committed entries may wait for this
// member's state machine before it refuses new writes with etcd's "too
// many requests" (etcd's own limit). Committed entries wait in memory, so
// a state machine that falls behind, under more writes than it can
// apply, would otherwise let them grow without bound. Reads are not
// refused: they wait for the backlog instead.
const maxApplyBacklog = 5000

// write replicates a command and waits for this member to apply it.
func (g *group) write(ctx context.Context, cmd *kv.Command) (*kv.Result, error) {
	res, _, err := g.writeServed(ctx, cmd)
	return res, err
}

// writeServed is write that also returns, for a ranged command in a shard
// group, which shards the group served when the command applied.
func (g *group) writeServed(ctx context.Context, cmd *kv.Command) (*kv.Result, []bool, error) {
	clientID, seq, err := session(ctx)
	if err != nil {
		return nil, nil, err
	}
	if g.applyBacklog() > maxApplyBacklog {
		// Refused before anything is proposed, so the write did not
		// happen and the client may retry it.
		g.s.metrics.writesRefused.Inc()
		return nil, nil, rpctypes.ErrGRPCRequestTooManyRequests
	}
	cmd.ClientID, cmd.Seq = clientID, seq
	cmd.Time = time.Now().UnixNano()
	var out any
	if g.wrapKV != nil {
		out, err = g.propose(ctx, kindKV, g.wrapKV(cmd.Marshal()))
	} else {
		// Encoded once, with room for the envelope in front.
		buf := make([]byte, envelopeRoom, envelopeRoom+cmd.MaxSize())
		out, err = g.proposeInPlace(ctx, kindKV, cmd.AppendMarshal(buf))
	}
	if err != nil {
		return nil, nil, err
	}
	var served []bool
	if r, ok := out.(*shardkv.RangedResult); ok {
		out, served = r.Result, r.Served
	}
	res := out.(*kv.Result)
	if res.Err != nil {
		switch {
		case errors.Is(res.Err, kv.ErrStaleSequence):
			return nil, nil, status.Error(codes.FailedPrecondition, res.Err.Error())
		case errors.Is(res.Err, shardkv.ErrWrongGroup):
			return nil, nil, errWrongGroup(res.Err)
		case errors.Is(res.Err, shardkv.ErrCrossShard):
			return nil, nil, status.Error(codes.InvalidArgument, "cairn: "+res.Err.Error())
		case errors.Is(res.Err, kv.ErrCorruptCommand):
			return nil, nil, status.Error(codes.Internal, "cairn: the replicated command could not be decoded: "+res.Err.Error())
		}
		if _, ok := status.FromError(res.Err); ok {
			return nil, nil, res.Err // already an etcd/gRPC error
		}
		return nil, nil, status.Error(codes.Internal, res.Err.Error())
	}
	return res, served, nil
}

// propose submits an entry and waits until this member applies it. It
// maps failures to the errors etcd's clients understand: Unavailable
// errors (no leader, timeout, stopping) are retried by them.
func (g *group) propose(ctx context.Context, kind byte, payload []byte) (any, error) {
	buf := make([]byte, envelopeRoom, envelopeRoom+len(payload))
	return g.proposeInPlace(ctx, kind, append(buf, payload...))
}

// proposeInPlace is propose for a payload that starts envelopeRoom bytes
// into buf; the envelope is written into that room.
func (g *group) proposeInPlace(ctx context.Context, kind byte, buf []byte) (any, error) {
	id := g.reqIDs.Add(1)
	ch := g.sm.register(id)
	defer g.sm.unregister(id)
	// A timer rather than context.WithTimeout: a derived context costs
	// allocations and a registration with the parent on every write, and
	// only the wait below needs the deadline.
	start := time.Now()
	deadline := start.Add(g.s.cfg.RequestTimeout)
	timer := time.NewTimer(g.s.cfg.RequestTimeout)
	defer timer.Stop()
	g.s.metrics.proposals.Inc()
	data := envelope{kind: kind, origin: g.id, reqID: id}.wrapInPlace(buf)
	handed := func(err error) {
		if err != nil {
			g.sm.fail(id, err)
		}
	}
	for {
		// The loop tells handed only of a failure to hand the entry
		// on; success shows as the entry's result on ch.
		if err := g.submit(ctx, deadline, data, handed); err != nil {
			g.s.metrics.proposalsFailed.Inc()
			return nil, g.mapError(ctx, err)
		}
		var res any
		select {
		case res = <-ch:
		case <-timer.C:
			g.s.metrics.proposalsFailed.Inc()
			return nil, rpctypes.ErrGRPCTimeout
		case <-ctx.Done():
			g.s.metrics.proposalsFailed.Inc()
			return nil, g.mapError(ctx, ctx.Err())
		case <-g.node.Done():
			return nil, g.errStopped()
		}
		failed, ok := res.(submitFailed)
		if !ok {
			if kind == kindKV { // not the member's own proposals
				g.s.metrics.writeDuration.Observe(time.Since(start).Seconds())
			}
			return res, nil
		}
		// With no leader known (an election in progress, or a member that
		// has just started) nothing was submitted: wait for a leader
		// within the request's time instead of failing a write that
		// would succeed a moment later. etcd's clients do not retry a
		// write on "no leader" themselves.
		var nle *raft.NotLeaderError
		if errors.As(failed.err, &nle) && g.waitLeader(ctx, deadline) {
			continue
		}
		g.s.metrics.proposalsFailed.Inc()
		return nil, g.mapError(ctx, failed.err)
	}
}

// submit queues data for the Raft loop. The queue almost always has
// room; only when it is full does the write wait for room, until
// deadline, under a derived context (which costs allocations every write
// would otherwise pay).
func (g *group) submit(ctx context.Context, deadline time.Time, data []byte, handed func(error)) error {
	if g.node.TrySubmitAsync(data, handed) {
		return nil
	}
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	return g.node.SubmitAsync(wctx, data, handed)
}

// waitLeader waits, until deadline, for a leader to be known, and then a
// moment more for it to take proposals. It reports whether to retry.
func (g *group) waitLeader(ctx context.Context, deadline time.Time) bool {
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if _, err := g.node.WaitLeader(wctx); err != nil {
		return false
	}
	select {
	case <-time.After(5 * time.Millisecond):
		return true
	case <-wctx.Done():
		return false
	}
}

// errStopped is etcd's "server stopped", with the cause when a fatal
// error (a failed disk, a full one) stopped this member, so the client
// learns why instead of a bare "stopped".
func (g *group) errStopped() error {
	if err := g.node.Err(); err != nil {
		return status.Errorf(codes.Unavailable, "%s: this member stopped after a fatal error, so the request may or may not have been applied: %v",
			rpctypes.ErrStopped.Error(), err)
	}
	return rpctypes.ErrGRPCStopped
}

func (g *group) mapError(ctx context.Context, err error) error {
	var nle *raft.NotLeaderError
	switch {
	case errors.As(err, &nle):
		return rpctypes.ErrGRPCNoLeader
	case errors.Is(err, raftnode.ErrStopped):
		return g.errStopped()
	case errors.Is(err, raftnode.ErrLeaderChanged):
		return rpctypes.ErrGRPCLeaderChanged
	case errors.Is(ctx.Err(), context.Canceled):
		return status.Error(codes.Canceled, "cairn: request canceled; a write may or may not have been applied")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, raftnode.ErrOutcomeUnknown):
		// etcd's "request timed out": the write may or may not apply.
		return rpctypes.ErrGRPCTimeout
	}
	return status.Error(codes.Internal, err.Error())
}

// linearizableRead waits until the local replica reflects every write
// committed before the call (ReadIndex, thesis §6.4).
func (g *group) linearizableRead(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, g.s.cfg.RequestTimeout)
	defer cancel()
	for {
		_, err := g.node.ReadIndex(ctx)
		if err == nil {
			return nil
		}
		var nle *raft.NotLeaderError
		if errors.Is(err, raftnode.ErrLeaderChanged) || errors.As(err, &nle) {
			// Wait for a (new) leader, then retry: reads are idempotent.
			if _, werr := g.node.WaitLeader(ctx); werr == nil {
				continue
			}
		}
		return g.mapError(ctx, err)
	}
}

// fillHeader sets the header fields etcd's clients read.
func (g *group) fillHeader(h **pb.ResponseHeader) {
	if *h == nil {
		*h = &pb.ResponseHeader{}
	}
	(*h).ClusterId = g.clusterID
	(*h).MemberId = g.id
	(*h).RaftTerm = g.term.Load()
	if (*h).Revision == 0 {
		(*h).Revision = g.revision()
	}
}

// kv returns the group's key/value store; only unsharded groups have one
// directly.
func (g *group) kv() *kv.Store { return g.sm.app.(kvApp).Store }

// revision is the revision reported in response headers.
func (g *group) revision() int64 {
	if a, ok := g.sm.app.(interface{ Revision() int64 }); ok {
		return a.Revision()
	}
	return 0
}

// stats summarises the group's data for Status and metrics.
func (g *group) stats() kv.Stats {
	if a, ok := g.sm.app.(interface{ Stats() kv.Stats }); ok {
		return a.Stats()
	}
	return kv.Stats{}
}
