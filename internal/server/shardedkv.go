package server

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/internal/shard"
	"github.com/cairn-db/cairn/internal/shardkv"
)

// shardedKV serves etcd's KV API in a sharded cluster. A request that
// names its group (cairn-group metadata, sent by Cairn's client and by
// forwarding members) is served by that local replica or refused as
// wrong-group. Any other request is routed by key with this member's
// newest configuration: served locally if the owning group has a replica
// here, forwarded otherwise; a range is gathered from every group.
type shardedKV struct {
	pb.UnimplementedKVServer
	s *Server
}

// mdServed is the trailer in which a group's ranged read says which
// shards it served (hex bitmap), so the gathering member can check that
// every shard was covered.
const mdServed = "cairn-served"

func (k *shardedKV) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := k.s.checkSize(req); err != nil {
		return nil, err
	}
	if err := kv.ValidateRange(req); err != nil {
		return nil, err
	}
	h := k.s.sh
	gid, err := requestGroup(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.RangeEnd) != 0 && gid == 0 {
		return h.gatherRange(ctx, req)
	}
	return routeShard(ctx, h, h.shardOf(req.Key), func(ctx context.Context, g *group, app *shardkv.Group) (*pb.RangeResponse, error) {
		resp, served, err := h.localRange(ctx, g, app, req)
		if err == nil && len(req.RangeEnd) != 0 {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(mdServed, encodeServed(served)))
		}
		return resp, err
	}, func(ctx context.Context, cc *grpc.ClientConn) (*pb.RangeResponse, error) {
		return pb.NewKVClient(cc).Range(ctx, req)
	})
}

func (h *shardHost) shardOf(key []byte) int { return shard.ShardOf(key, h.nShards) }

// localRange reads from a local shard group replica.
func (h *shardHost) localRange(ctx context.Context, g *group, app *shardkv.Group, req *pb.RangeRequest) (*pb.RangeResponse, []bool, error) {
	if !req.Serializable {
		if err := g.linearizableRead(ctx); err != nil {
			return nil, nil, err
		}
	}
	resp, served, err := app.RangeServed(req)
	if err != nil {
		return nil, nil, errWrongGroup(err)
	}
	g.fillHeader(&resp.Header)
	return resp, served, nil
}

func (k *shardedKV) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := k.s.checkSize(req); err != nil {
		return nil, err
	}
	if err := kv.ValidatePut(req); err != nil {
		return nil, err
	}
	h := k.s.sh
	return routeShard(ctx, h, h.shardOf(req.Key), func(ctx context.Context, g *group, _ *shardkv.Group) (*pb.PutResponse, error) {
		res, err := g.write(ctx, &kv.Command{Put: req})
		if err != nil {
			return nil, err
		}
		g.fillHeader(&res.Put.Header)
		return res.Put, nil
	}, func(ctx context.Context, cc *grpc.ClientConn) (*pb.PutResponse, error) {
		return pb.NewKVClient(cc).Put(ctx, req)
	})
}

func (k *shardedKV) DeleteRange(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := k.s.checkSize(req); err != nil {
		return nil, err
	}
	if err := kv.ValidateDeleteRange(req); err != nil {
		return nil, err
	}
	h := k.s.sh
	gid, err := requestGroup(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.RangeEnd) == 0 {
		return routeShard(ctx, h, h.shardOf(req.Key), func(ctx context.Context, g *group, _ *shardkv.Group) (*pb.DeleteRangeResponse, error) {
			res, err := g.write(ctx, &kv.Command{DeleteRange: req})
			if err != nil {
				return nil, err
			}
			g.fillHeader(&res.DeleteRange.Header)
			return res.DeleteRange, nil
		}, func(ctx context.Context, cc *grpc.ClientConn) (*pb.DeleteRangeResponse, error) {
			return pb.NewKVClient(cc).DeleteRange(ctx, req)
		})
	}
	if gid != 0 {
		// One group's part of a gathered ranged delete.
		g := h.groups[gid]
		if g == nil {
			return nil, errWrongGroup(fmt.Errorf("group %d has no replica on member %s", gid, k.s.cfg.Name))
		}
		resp, served, err := localRangedDelete(ctx, g, req)
		if err != nil {
			return nil, err
		}
		_ = grpc.SetTrailer(ctx, metadata.Pairs(mdServed, encodeServed(served)))
		return resp, nil
	}
	return h.gatherDelete(ctx, req)
}

// localRangedDelete runs a ranged delete in a local group replica. It
// carries no exactly-once session: the gathering member may run it again
// when a shard was in transit, and then it must delete again (so a
// retried ranged delete deletes whatever is in the range at that time).
func localRangedDelete(ctx context.Context, g *group, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, []bool, error) {
	res, served, err := g.writeServed(withoutSession(ctx), &kv.Command{DeleteRange: req})
	if err != nil {
		return nil, nil, err
	}
	g.fillHeader(&res.DeleteRange.Header)
	return res.DeleteRange, served, nil
}

// withoutSession drops the exactly-once session from a request's metadata.
func withoutSession(ctx context.Context) context.Context {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ctx
	}
	md = md.Copy()
	md.Delete(mdClientID)
	md.Delete(mdSeq)
	return metadata.NewIncomingContext(ctx, md)
}

// gatherDelete runs a ranged delete in every group, each deleting the
// keys of the shards it serves, until every owned shard was served by
// some group when the delete applied there. It is not atomic across
// groups.
func (h *shardHost) gatherDelete(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	out := &pb.DeleteRangeResponse{}
	err := gather(withoutSession(ctx), h, covered,
		func(ctx context.Context, g *group, _ *shardkv.Group) (*pb.DeleteRangeResponse, []bool, error) {
			return localRangedDelete(ctx, g, req)
		},
		func(ctx context.Context, cc *grpc.ClientConn, tr *metadata.MD) (*pb.DeleteRangeResponse, error) {
			return pb.NewKVClient(cc).DeleteRange(ctx, req, grpc.Trailer(tr))
		},
		func(parts []*pb.DeleteRangeResponse) {
			// Every attempt's deletions count, also those of an attempt
			// that missed a shard in transit.
			for _, p := range parts {
				if p == nil {
					continue
				}
				out.Deleted += p.Deleted
				out.PrevKvs = append(out.PrevKvs, p.PrevKvs...)
				if out.Header == nil || (p.Header != nil && p.Header.Revision > out.Header.Revision) {
					out.Header = p.Header
				}
			}
		})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out.PrevKvs, func(a, b *mvccpb.KeyValue) int { return bytes.Compare(a.Key, b.Key) })
	if out.Header == nil {
		out.Header = &pb.ResponseHeader{}
	}
	h.s.main.fillHeader(&out.Header)
	return out, nil
}

// gather runs a request in every group of the newest configuration, each
// answering for the shards it serves and saying which those were, until
// done accepts the coverage (refreshing the configuration and retrying
// while a shard is in transit). take receives every attempt's parts; the
// parts of a group that failed are nil.
func gather[T any](ctx context.Context, h *shardHost, done func(shard.Config, [][]bool) bool,
	local func(context.Context, *group, *shardkv.Group) (T, []bool, error),
	remote func(context.Context, *grpc.ClientConn, *metadata.MD) (T, error),
	take func([]T)) error {
	ctx, cancel := context.WithTimeout(ctx, h.s.cfg.RequestTimeout)
	defer cancel()
	backoff := 10 * time.Millisecond
	for {
		cfg := h.config()
		if cfg.Num == 0 {
			var rerr error
			if cfg, rerr = h.refresh(ctx); rerr == nil && cfg.Num == 0 {
				return errNoGroups
			}
		}
		gids := cfg.GroupIDs()
		idx := map[shard.GroupID]int{}
		for i, gid := range gids {
			idx[gid] = i
		}
		served := make([][]bool, len(gids))
		var mu sync.Mutex
		record := func(gid shard.GroupID, sv []bool) {
			mu.Lock()
			served[idx[gid]] = sv
			mu.Unlock()
		}
		parts, err := scatter(ctx, h, gids, func(ctx context.Context, g *group, app *shardkv.Group) (T, error) {
			out, sv, err := local(ctx, g, app)
			record(app.GID(), sv)
			return out, err
		}, func(ctx context.Context, cc *grpc.ClientConn) (T, error) {
			var tr metadata.MD
			out, err := remote(ctx, cc, &tr)
			if err == nil {
				md, _ := metadata.FromOutgoingContext(ctx)
				if v := md.Get(mdGroup); len(v) == 1 {
					if gid, perr := strconv.ParseUint(v[0], 10, 64); perr == nil {
						record(shard.GroupID(gid), decodeServed(tr.Get(mdServed), h.nShards))
					}
				}
			}
			return out, err
		})
		take(parts)
		if err == nil && done(cfg, served) {
			return nil
		}
		if err != nil && !isWrongGroup(err) {
			return err
		}
		if err == nil {
			err = status.Error(codes.Unavailable, "cairn: some shards are moving between groups and could not be reached in time")
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 300*time.Millisecond)
		_, _ = h.refresh(ctx)
	}
}

func (k *shardedKV) Txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := k.s.checkSize(req); err != nil {
		return nil, err
	}
	if err := kv.ValidateTxn(req); err != nil {
		return nil, err
	}
	h := k.s.sh
	sh, err := shardkv.TxnShard(req, h.nShards)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "cairn: "+err.Error())
	}
	if sh < 0 {
		sh = 0 // a transaction without keys: any group answers it
	}
	return routeShard(ctx, h, sh, func(ctx context.Context, g *group, _ *shardkv.Group) (*pb.TxnResponse, error) {
		res, err := g.write(ctx, &kv.Command{Txn: req})
		if err != nil {
			return nil, err
		}
		g.fillHeader(&res.Txn.Header)
		return res.Txn, nil
	}, func(ctx context.Context, cc *grpc.ClientConn) (*pb.TxnResponse, error) {
		return pb.NewKVClient(cc).Txn(ctx, req)
	})
}

// Compact succeeds without doing anything, as in an unsharded cluster
// (kvService.Compact): no shard group keeps history to compact. Each group
// numbers its own revisions, so there is no one current revision to
// check the request against.
func (k *shardedKV) Compact(ctx context.Context, _ *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	resp := &pb.CompactionResponse{}
	k.s.main.fillHeader(&resp.Header)
	return resp, nil
}

// shardedAppend routes the Append extension.
func (s *Server) shardedAppend(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	h := s.sh
	var length string
	resp, err := routeShard(ctx, h, h.shardOf(req.Key), func(ctx context.Context, g *group, _ *shardkv.Group) (*pb.PutResponse, error) {
		res, err := g.write(ctx, &kv.Command{Append: &kv.AppendRequest{Key: req.Key, Value: req.Value}})
		if err != nil {
			return nil, err
		}
		length = fmt.Sprint(res.Append.Length)
		resp := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: res.Append.Revision}}
		g.fillHeader(&resp.Header)
		return resp, nil
	}, func(ctx context.Context, cc *grpc.ClientConn) (*pb.PutResponse, error) {
		var hdr metadata.MD
		out := new(pb.PutResponse)
		if err := cc.Invoke(ctx, AppendMethod, req, out, grpc.Header(&hdr)); err != nil {
			return nil, err
		}
		if v := hdr.Get(mdAppendLength); len(v) == 1 {
			length = v[0]
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(mdAppendLength, length))
	return resp, nil
}

// routeShard runs a request for shard sh where that shard lives. A
// request naming its group runs on the local replica of that group. Any
// other follows this member's newest configuration, refreshing it and
// retrying on a wrong-group answer until the request's time is up.
// Retrying is safe: a wrong-group answer means the request was not
// applied.
func routeShard[T any](ctx context.Context, h *shardHost, sh int,
	local func(context.Context, *group, *shardkv.Group) (T, error),
	remote func(context.Context, *grpc.ClientConn) (T, error)) (T, error) {
	var zero T
	gid, err := requestGroup(ctx)
	if err != nil {
		return zero, err
	}
	if gid != 0 {
		g := h.groups[gid]
		if g == nil {
			return zero, errWrongGroup(fmt.Errorf("group %d has no replica on member %s", gid, h.s.cfg.Name))
		}
		return local(ctx, g, h.apps[gid])
	}
	ctx, cancel := context.WithTimeout(ctx, h.s.cfg.RequestTimeout)
	defer cancel()
	backoff := 10 * time.Millisecond
	for {
		cfg := h.config()
		if cfg.Num == 0 {
			var rerr error
			cfg, rerr = h.refresh(ctx) // a member that has just started
			if rerr == nil && cfg.Num == 0 {
				return zero, errNoGroups
			}
		}
		owner := cfg.Shards[sh]
		var out T
		var err error
		switch g := h.groups[owner]; {
		case owner == shard.NoGroup:
			err = status.Errorf(codes.Unavailable, "cairn: no shard group serves shard %d yet (configuration %d); add groups with 'cairn shard join'", sh, cfg.Num)
		case g != nil:
			out, err = local(ctx, g, h.apps[owner])
		default:
			out, err = callRemote(ctx, h, owner, cfg.Groups[owner], remote)
		}
		if err == nil || !(isWrongGroup(err) || owner == shard.NoGroup) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return zero, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 300*time.Millisecond)
		_, _ = h.refresh(ctx)
	}
}

// errNoGroups answers requests before the first group joined.
var errNoGroups = status.Error(codes.FailedPrecondition,
	"cairn: no shard group has joined this sharded cluster yet; add one with 'cairn shard join GID=addr,...'")

// callRemote calls a group's members in turn until one answers.
func callRemote[T any](ctx context.Context, h *shardHost, gid shard.GroupID, addrs []string,
	remote func(context.Context, *grpc.ClientConn) (T, error)) (T, error) {
	var zero T
	err := status.Errorf(codes.Unavailable, "cairn: group %d has no known members", gid)
	ctx = withGroup(ctx, gid)
	for _, addr := range addrs {
		cc, cerr := h.s.peerClient(addr)
		if cerr != nil {
			err = cerr
			continue
		}
		var out T
		out, err = remote(ctx, cc)
		if err == nil || status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return out, err
		}
	}
	return zero, err
}

// scatter runs a request in every group of gids in parallel. Failed
// groups leave a zero part.
func scatter[T any](ctx context.Context, h *shardHost, gids []shard.GroupID,
	local func(context.Context, *group, *shardkv.Group) (T, error),
	remote func(context.Context, *grpc.ClientConn) (T, error)) ([]T, error) {
	cfg := h.config()
	out := make([]T, len(gids))
	errs := make([]error, len(gids))
	var wg sync.WaitGroup
	for i, gid := range gids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g := h.groups[gid]; g != nil {
				out[i], errs[i] = local(ctx, g, h.apps[gid])
			} else {
				out[i], errs[i] = callRemote(ctx, h, gid, cfg.Groups[gid], remote)
			}
		}()
	}
	wg.Wait()
	// The parts that succeeded are returned with the first error: a
	// ranged delete counts what it deleted even when a group failed.
	for _, err := range errs {
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// gatherRange answers a range that spans shards: every group returns the
// keys of the shards it serves, and the parts are merged in key order.
// If some shard was served by no group at the moment it read (a shard in
// transit), the whole gather is retried with a newer configuration.
func (h *shardHost) gatherRange(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	sub := *req
	order := req.SortOrder
	if req.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND // as etcd: a sort target implies ascending
	}
	fullSort := !(order == pb.RangeRequest_NONE || (order == pb.RangeRequest_ASCEND && req.SortTarget == pb.RangeRequest_KEY))
	if fullSort {
		sub.Limit = 0 // each group's top few are not the merged top few
	}
	var parts []*pb.RangeResponse
	// Each owned shard must come from exactly one group: a shard read at
	// its old owner before it moved and at its new owner after it arrived
	// would otherwise appear twice.
	err := gather(ctx, h, coveredOnce,
		func(ctx context.Context, g *group, app *shardkv.Group) (*pb.RangeResponse, []bool, error) {
			return h.localRange(ctx, g, app, &sub)
		},
		func(ctx context.Context, cc *grpc.ClientConn, tr *metadata.MD) (*pb.RangeResponse, error) {
			return pb.NewKVClient(cc).Range(ctx, &sub, grpc.Trailer(tr))
		},
		func(p []*pb.RangeResponse) { parts = p })
	if err != nil {
		return nil, err
	}
	return h.mergeRange(req, order, parts, fullSort), nil
}

// covered reports whether every shard that some group owns was served by
// at least one of the groups that answered.
func covered(cfg shard.Config, served [][]bool) bool {
	return coverage(cfg, served, false)
}

// coveredOnce reports whether every owned shard was served by exactly one
// of the groups that answered.
func coveredOnce(cfg shard.Config, served [][]bool) bool {
	return coverage(cfg, served, true)
}

func coverage(cfg shard.Config, served [][]bool, once bool) bool {
	for sh, owner := range cfg.Shards {
		if owner == shard.NoGroup {
			continue
		}
		n := 0
		for _, sv := range served {
			if sh < len(sv) && sv[sh] {
				n++
			}
		}
		if n == 0 || (once && n > 1) {
			return false
		}
	}
	return true
}

func (h *shardHost) mergeRange(req *pb.RangeRequest, order pb.RangeRequest_SortOrder, parts []*pb.RangeResponse, fullSort bool) *pb.RangeResponse {
	out := &pb.RangeResponse{}
	for _, p := range parts {
		out.Count += p.Count
		out.More = out.More || p.More
		out.Kvs = append(out.Kvs, p.Kvs...)
		if out.Header == nil || (p.Header != nil && p.Header.Revision > out.Header.Revision) {
			out.Header = p.Header
		}
	}
	slices.SortFunc(out.Kvs, func(a, b *mvccpb.KeyValue) int { return bytes.Compare(a.Key, b.Key) })
	if fullSort {
		sortKVs(out.Kvs, order, req.SortTarget)
	}
	if req.Limit > 0 && int64(len(out.Kvs)) > req.Limit {
		out.Kvs = out.Kvs[:req.Limit]
		out.More = true
	}
	if out.Header == nil {
		out.Header = &pb.ResponseHeader{}
	}
	h.s.main.fillHeader(&out.Header)
	return out
}

// sortKVs orders key-sorted kvs as etcd's sort options ask; ties keep key
// order.
func sortKVs(kvs []*mvccpb.KeyValue, order pb.RangeRequest_SortOrder, target pb.RangeRequest_SortTarget) {
	by := func(a, b *mvccpb.KeyValue) int {
		switch target {
		case pb.RangeRequest_VERSION:
			return cmp.Compare(a.Version, b.Version)
		case pb.RangeRequest_CREATE:
			return cmp.Compare(a.CreateRevision, b.CreateRevision)
		case pb.RangeRequest_MOD:
			return cmp.Compare(a.ModRevision, b.ModRevision)
		case pb.RangeRequest_VALUE:
			return bytes.Compare(a.Value, b.Value)
		}
		return bytes.Compare(a.Key, b.Key)
	}
	if order == pb.RangeRequest_DESCEND {
		slices.SortStableFunc(kvs, func(a, b *mvccpb.KeyValue) int { return -by(a, b) })
		return
	}
	slices.SortStableFunc(kvs, by)
}

func encodeServed(served []bool) string {
	b := make([]byte, (len(served)+7)/8)
	for i, ok := range served {
		if ok {
			b[i/8] |= 1 << (i % 8)
		}
	}
	return hex.EncodeToString(b)
}

func decodeServed(v []string, n int) []bool {
	out := make([]bool, n)
	if len(v) != 1 {
		return out
	}
	b, err := hex.DecodeString(v[0])
	if err != nil {
		return out
	}
	for i := range n {
		if i/8 < len(b) && b[i/8]&(1<<(i%8)) != 0 {
			out[i] = true
		}
	}
	return out
}
