package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/raft"
)

// EtcdVersion is the etcd API version Cairn reports in Status, so that
// clients which gate features on the server version enable the v3.6 API.
const EtcdVersion = "3.6.0"

// maintenanceService implements the parts of etcd's Maintenance service
// that clients and etcdctl use for health and status.
type maintenanceService struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

func (m *maintenanceService) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	st := m.s.main.node.Status()
	stats := m.s.main.stats()
	resp := &pb.StatusResponse{
		Version:     EtcdVersion,
		DbSize:      stats.Bytes,
		DbSizeInUse: stats.Bytes,
		Leader:      st.Lead,
		RaftIndex:   st.LastIndex,
		RaftTerm:    st.Term,
		// The state machine's own index: with the apply goroutine, the
		// core's applied index runs ahead of what a read would see.
		RaftAppliedIndex: m.s.main.sm.appliedIndex(),
		IsLearner:        slices.Contains(st.Config.Learners, m.s.main.id),
		StorageVersion:   EtcdVersion,
	}
	if st.Lead == raft.None {
		resp.Errors = append(resp.Errors, "no leader")
	}
	m.s.main.fillHeader(&resp.Header)
	return resp, nil
}

func (m *maintenanceService) Alarm(ctx context.Context, req *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	// Cairn raises no alarms (yet): report none, as a healthy etcd does.
	resp := &pb.AlarmResponse{}
	m.s.main.fillHeader(&resp.Header)
	return resp, nil
}

// errLeaderTransferTimeout is etcd's answer when the target did not take
// over in time (the same text; etcd's client library has no variable
// for it).
var errLeaderTransferTimeout = status.Error(codes.Unavailable, "etcdserver: request timed out, leader transfer took too long")

// MoveLeader hands the leadership of this member's Raft group to another
// voting member (Raft's leadership transfer, thesis §3.10), for example
// before restarting the leader. As in etcd, only the leader takes the
// request (etcdctl move-leader finds it), and it returns once the target
// leads, or fails after the request timeout.
func (m *maintenanceService) MoveLeader(ctx context.Context, req *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	g := m.s.main
	if g.node.Leader() != g.id {
		return nil, rpctypes.ErrGRPCNotLeader
	}
	if !slices.Contains(g.node.Status().Config.Voters, req.TargetID) {
		return nil, rpctypes.ErrGRPCBadLeaderTransferee
	}
	tctx, cancel := context.WithTimeout(ctx, m.s.cfg.RequestTimeout)
	defer cancel()
	if err := g.node.TransferLeadership(tctx, req.TargetID); err != nil {
		if ctx.Err() == nil && tctx.Err() != nil {
			return nil, errLeaderTransferTimeout
		}
		return nil, g.mapError(ctx, err)
	}
	resp := &pb.MoveLeaderResponse{}
	g.fillHeader(&resp.Header)
	return resp, nil
}

// HashKV answers etcd's HashKV (etcdctl endpoint hashkv) with a hash of
// every key this member holds, with its value and metadata, at its
// current revision (kv.Store.Hash): members that report the same revision
// must report the same hash. Only the current revision can be hashed,
// since only the latest version of each key is kept; the compact revision
// is therefore the hash revision. etcd hashes its history as well, so the
// numbers are comparable between Cairn members only.
func (m *maintenanceService) HashKV(ctx context.Context, req *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	store, ok := m.s.main.sm.app.(interface{ Hash() (uint32, int64) })
	if !ok {
		return nil, status.Error(codes.Unimplemented, "cairn: HashKV is not supported by the members of a sharded cluster yet")
	}
	hash, rev := store.Hash()
	switch {
	case req.Revision > rev:
		return nil, rpctypes.ErrGRPCFutureRev
	case req.Revision > 0 && req.Revision < rev:
		return nil, status.Errorf(codes.Unimplemented,
			"cairn: HashKV at an earlier revision is not supported: only the latest version of each key is kept (requested revision %d, current revision %d)",
			req.Revision, rev)
	}
	resp := &pb.HashKVResponse{Header: &pb.ResponseHeader{Revision: rev}, Hash: hash, CompactRevision: rev, HashRevision: rev}
	m.s.main.fillHeader(&resp.Header)
	return resp, nil
}

// Defragment succeeds at once: etcd compacts its bbolt file, while
// Cairn's WAL segments and snapshots are removed as they fall behind the
// latest snapshot, so there is nothing to give back. Maintenance scripts
// that defragment every member keep working.
func (m *maintenanceService) Defragment(ctx context.Context, _ *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	resp := &pb.DefragmentResponse{}
	m.s.main.fillHeader(&resp.Header)
	return resp, nil
}

// clusterService implements etcd's Cluster service over Raft membership.
type clusterService struct {
	pb.UnimplementedClusterServer
	s *Server
}

func (c *clusterService) MemberList(ctx context.Context, req *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	if req.Linearizable {
		if err := c.s.main.linearizableRead(ctx); err != nil {
			return nil, err
		}
	}
	resp := &pb.MemberListResponse{Members: c.s.main.memberList()}
	c.s.main.fillHeader(&resp.Header)
	return resp, nil
}

func (g *group) memberList() []*pb.Member {
	table := g.sm.memberTable()
	ids := make([]uint64, 0, len(table))
	for id := range table {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []*pb.Member
	for _, id := range ids {
		m := table[id]
		pm := &pb.Member{ID: id, Name: m.Name, IsLearner: m.IsLearner}
		if m.PeerAddr != "" {
			pm.PeerURLs = []string{"http://" + m.PeerAddr}
		}
		if m.ClientAddr != "" {
			pm.ClientURLs = []string{"http://" + m.ClientAddr}
		}
		out = append(out, pm)
	}
	return out
}

func (c *clusterService) MemberAdd(ctx context.Context, req *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	if c.s.sh != nil {
		return nil, errShardedMembership
	}
	if len(req.PeerURLs) != 1 {
		return nil, status.Error(codes.InvalidArgument, "cairn: a member has exactly one peer URL")
	}
	addr, err := trimURL(req.PeerURLs[0])
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	for _, m := range c.s.main.sm.memberTable() {
		if m.PeerAddr == addr {
			return nil, rpctypes.ErrGRPCPeerURLExist
		}
	}
	if leader, err := c.s.main.forwardToLeader(ctx); err != nil || leader != nil {
		if err != nil {
			return nil, err
		}
		return pb.NewClusterClient(leader).MemberAdd(ctx, req)
	}
	id := MemberID(addr, c.s.cfg.ClusterToken)
	cc := raft.ConfChange{Type: raft.ConfChangeAddVoter, NodeID: id}
	if req.IsLearner {
		cc.Type = raft.ConfChangeAddLearner
	}
	cc.Context, _ = json.Marshal(confContext{PeerAddr: addr})
	if err := c.s.main.confChange(ctx, cc); err != nil {
		return nil, err
	}
	resp := &pb.MemberAddResponse{
		Member:  &pb.Member{ID: id, PeerURLs: []string{"http://" + addr}, IsLearner: req.IsLearner},
		Members: c.s.main.memberList(),
	}
	c.s.main.fillHeader(&resp.Header)
	return resp, nil
}

func (c *clusterService) MemberRemove(ctx context.Context, req *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	if c.s.sh != nil {
		return nil, errShardedMembership
	}
	if _, ok := c.s.main.sm.memberTable()[req.ID]; !ok {
		return nil, rpctypes.ErrGRPCMemberNotFound
	}
	if leader, err := c.s.main.forwardToLeader(ctx); err != nil || leader != nil {
		if err != nil {
			return nil, err
		}
		return pb.NewClusterClient(leader).MemberRemove(ctx, req)
	}
	if err := c.s.main.confChange(ctx, raft.ConfChange{Type: raft.ConfChangeRemove, NodeID: req.ID}); err != nil {
		return nil, err
	}
	resp := &pb.MemberRemoveResponse{Members: c.s.main.memberList()}
	c.s.main.fillHeader(&resp.Header)
	return resp, nil
}

func (c *clusterService) MemberPromote(ctx context.Context, req *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	if c.s.sh != nil {
		return nil, errShardedMembership
	}
	m, ok := c.s.main.sm.memberTable()[req.ID]
	if !ok {
		return nil, rpctypes.ErrGRPCMemberNotFound
	}
	if !m.IsLearner {
		return nil, rpctypes.ErrGRPCMemberNotLearner
	}
	if leader, err := c.s.main.forwardToLeader(ctx); err != nil || leader != nil {
		if err != nil {
			return nil, err
		}
		return pb.NewClusterClient(leader).MemberPromote(ctx, req)
	}
	if err := c.s.main.confChange(ctx, raft.ConfChange{Type: raft.ConfChangeAddVoter, NodeID: req.ID}); err != nil {
		return nil, err
	}
	resp := &pb.MemberPromoteResponse{Members: c.s.main.memberList()}
	c.s.main.fillHeader(&resp.Header)
	return resp, nil
}

// forwardToLeader returns nil if this member leads, or a connection to the
// leader's client address.
func (g *group) forwardToLeader(ctx context.Context) (*grpc.ClientConn, error) {
	lead, err := g.node.WaitLeader(ctx)
	if err != nil {
		return nil, rpctypes.ErrGRPCNoLeader
	}
	if lead == g.id {
		return nil, nil
	}
	// A leader that has just started may not have published its client
	// address yet; wait for it rather than fail a request that will work
	// in a moment.
	for {
		if m, ok := g.sm.memberTable()[lead]; ok && m.ClientAddr != "" {
			return g.s.peerClient(m.ClientAddr)
		}
		select {
		case <-ctx.Done():
			return nil, rpctypes.ErrGRPCNoLeader
		case <-g.done:
			return nil, rpctypes.ErrGRPCStopped
		case <-time.After(20 * time.Millisecond):
		}
		if l := g.node.Leader(); l == g.id {
			return nil, nil
		} else if l != raft.None {
			lead = l
		}
	}
}

// peerClient returns a cached client connection to another member.
func (s *Server) peerClient(addr string) (*grpc.ClientConn, error) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if cc, ok := s.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Shard data moves between members in one message.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxShardBytes+1<<20)))
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "cairn: cannot reach member at %s: %v", addr, err)
	}
	s.conns[addr] = cc
	return cc, nil
}

func (g *group) confChange(ctx context.Context, cc raft.ConfChange) error {
	ctx, cancel := context.WithTimeout(ctx, g.s.cfg.RequestTimeout)
	defer cancel()
	_, err := g.node.ProposeConfChange(ctx, cc)
	// A change still being applied (or a new leader's first entry) blocks
	// the next one only briefly: wait for it instead of failing.
	for errors.Is(err, raft.ErrConfChangePending) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
		_, err = g.node.ProposeConfChange(ctx, cc)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrConfChangePending):
		return status.Error(codes.FailedPrecondition, "cairn: another membership change is in progress; retry when it completes")
	case errors.Is(err, raft.ErrInvalidConfChange):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return g.mapError(ctx, err)
}

var errShardedMembership = status.Error(codes.Unimplemented,
	"cairn: membership changes of a sharded cluster are not supported yet; add capacity by starting a new shard group and 'cairn shard join'")

func trimURL(u string) (string, error) {
	for _, p := range []string{"http://", "https://"} {
		if len(u) > len(p) && u[:len(p)] == p {
			return u[len(p):], nil
		}
	}
	if u == "" {
		return "", fmt.Errorf("cairn: empty peer URL")
	}
	return u, nil
}

// unsupported answers the etcd services Cairn does not offer yet with a
// clear Unimplemented error rather than a generic one.
type watchService struct{ pb.UnimplementedWatchServer }

func (watchService) Watch(pb.Watch_WatchServer) error {
	return status.Error(codes.Unimplemented, "cairn: Watch is not supported yet; it is planned with leases and locks")
}

type leaseService struct{ pb.UnimplementedLeaseServer }

func (leaseService) LeaseGrant(context.Context, *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return nil, status.Error(codes.Unimplemented, "cairn: leases are not supported yet")
}

func (leaseService) LeaseRevoke(context.Context, *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "cairn: leases are not supported yet")
}

func (leaseService) LeaseKeepAlive(pb.Lease_LeaseKeepAliveServer) error {
	return status.Error(codes.Unimplemented, "cairn: leases are not supported yet")
}

func (leaseService) LeaseTimeToLive(context.Context, *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	return nil, status.Error(codes.Unimplemented, "cairn: leases are not supported yet")
}

func (leaseService) LeaseLeases(context.Context, *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return nil, status.Error(codes.Unimplemented, "cairn: leases are not supported yet")
}

// The Cairn extension service. Its messages reuse etcd's PutRequest and
// PutResponse so no extra protobuf definitions are needed:
//
//	/cairn.v1.Cairn/Append  PutRequest{key, value} -> PutResponse{header}
//	                        with the new value's length in the
//	                        cairn-append-length response header
//
// Writes on it, like KV writes, take an exactly-once session from the
// cairn-client-id and cairn-seq metadata.
const cairnServiceName = "cairn.v1.Cairn"

// AppendMethod is the full gRPC method name of Append.
const AppendMethod = "/" + cairnServiceName + "/Append"

// mdAppendLength is the response header carrying the appended value's
// new length.
const mdAppendLength = "cairn-append-length"

type cairnServer interface {
	Append(context.Context, *pb.PutRequest) (*pb.PutResponse, error)
}

type cairnService struct{ s *Server }

func (c *cairnService) Append(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := c.s.checkSize(req); err != nil {
		return nil, err
	}
	if len(req.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
	}
	if c.s.sh != nil {
		return c.s.shardedAppend(ctx, req)
	}
	res, err := c.s.main.write(ctx, &kv.Command{Append: &kv.AppendRequest{Key: req.Key, Value: req.Value}})
	if err != nil {
		return nil, err
	}
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: res.Append.Revision}}
	_ = grpc.SetHeader(ctx, metadata.Pairs(mdAppendLength, strconv.FormatInt(res.Append.Length, 10)))
	c.s.main.fillHeader(&resp.Header)
	return resp, nil
}

var cairnServiceDesc = grpc.ServiceDesc{
	ServiceName: cairnServiceName,
	HandlerType: (*cairnServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Append",
		Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := new(pb.PutRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			if ic == nil {
				return srv.(cairnServer).Append(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: AppendMethod}
			return ic(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(cairnServer).Append(ctx, req.(*pb.PutRequest))
			})
		},
	}},
	Streams:  []grpc.StreamDesc{},
	Metadata: "cairn/v1/cairn.proto",
}
