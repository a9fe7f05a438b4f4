package server

import (
	"context"
	"encoding/json"
	"errors"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cairn-db/cairn/internal/shard"
	"github.com/cairn-db/cairn/internal/shardkv"
)

// The shard service, between members and for tools. Every method takes
// and returns a google.protobuf.BytesValue holding Cairn's own binary
// encodings, so no extra protobuf definitions are needed:
//
//	Controller  shard.Command (Join, Leave, Move, Query) -> shard.Config
//	Pull        shard reference (group, config, shard)  -> shard blob
//	Delete      shard reference                         -> empty
//	Status      empty                                   -> JSON HostStatus
const shardServiceName = "cairn.v1.Shard"

// Full method names of the shard service.
const (
	methodController = "/" + shardServiceName + "/Controller"
	methodPull       = "/" + shardServiceName + "/Pull"
	methodDelete     = "/" + shardServiceName + "/Delete"
	methodStatus     = "/" + shardServiceName + "/Status"
)

// Exported names for clients and tools.
const (
	ShardControllerMethod = methodController
	ShardStatusMethod     = methodStatus
)

// invokeBytes calls a shard service method.
func invokeBytes(ctx context.Context, cc *grpc.ClientConn, method string, req []byte) ([]byte, error) {
	out := new(wrapperspb.BytesValue)
	if err := cc.Invoke(ctx, method, wrapperspb.Bytes(req), out); err != nil {
		return nil, err
	}
	return out.Value, nil
}

// HostStatus is what Status reports about one process.
type HostStatus struct {
	Member     string        `json:"member"`
	Shards     int           `json:"shards"`
	Controller bool          `json:"controller"`
	Latest     uint64        `json:"latest_config"` // newest configuration this process knows
	Groups     []GroupStatus `json:"groups"`
}

// GroupStatus is one shard group replica's view.
type GroupStatus struct {
	GID      shard.GroupID `json:"gid"`
	Leader   bool          `json:"leader"`
	Config   uint64        `json:"config"`
	Serving  []int         `json:"serving,omitempty"`
	Pulling  []int         `json:"pulling,omitempty"`
	Handing  []int         `json:"handing_off,omitempty"`
	GCWait   []int         `json:"gc_pending,omitempty"`
	Keys     int           `json:"keys"`      // keys held, including frozen ones
	KeysHeld map[int]int   `json:"keys_held"` // per shard with keys
}

// shardRPC runs a shard service method locally.
func (s *Server) shardRPC(ctx context.Context, method string, req []byte) ([]byte, error) {
	h := s.sh
	if h == nil {
		return nil, status.Error(codes.FailedPrecondition, "cairn: this member is not part of a sharded cluster")
	}
	switch method {
	case methodController:
		cmd, err := shard.UnmarshalCommand(req)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "cairn: "+err.Error())
		}
		cfg, err := h.controller(ctx, cmd)
		if err != nil {
			return nil, err
		}
		return cfg.MarshalBinary()
	case methodPull, methodDelete:
		gid, num, sh, err := decodeShardRef(req)
		if err != nil {
			return nil, err
		}
		g, app := h.groups[gid], h.apps[gid]
		if g == nil {
			return nil, status.Errorf(codes.Unavailable, "cairn: group %d is not hosted by member %s", gid, s.cfg.Name)
		}
		if method == methodPull {
			blob, err := app.Export(num, sh)
			switch {
			case errors.Is(err, shardkv.ErrNotReady):
				return nil, status.Error(codes.Unavailable, "cairn: "+err.Error())
			case err != nil:
				return nil, status.Error(codes.FailedPrecondition, "cairn: "+err.Error())
			case len(blob) > MaxShardBytes:
				s.logger.Error("shard too large to move", "group", gid, "shard", sh, "bytes", len(blob), "limit", MaxShardBytes)
				return nil, status.Errorf(codes.ResourceExhausted, "cairn: shard %d of group %d holds %d bytes, more than the %d a move can carry", sh, gid, len(blob), MaxShardBytes)
			}
			return blob, nil
		}
		out, err := g.propose(ctx, kindKV, shardkv.EncodeDelete(num, sh))
		if err != nil {
			return nil, err
		}
		res, _ := out.(*shardkv.DeleteResult)
		if res == nil || !res.Done {
			msg := "not done"
			if res != nil && res.Err != nil {
				msg = res.Err.Error()
			}
			return nil, status.Error(codes.Unavailable, "cairn: delete shard: "+msg)
		}
		return nil, nil
	case methodStatus:
		return json.Marshal(s.hostStatus())
	}
	return nil, status.Errorf(codes.Unimplemented, "cairn: unknown method %s", method)
}

func (s *Server) hostStatus() HostStatus {
	h := s.sh
	st := HostStatus{Member: s.cfg.Name, Shards: h.nShards, Controller: h.ctrl != nil, Latest: h.config().Num}
	for _, gid := range sortedGIDs(h.groups) {
		g, app := h.groups[gid], h.apps[gid]
		as := app.Status()
		gs := GroupStatus{GID: gid, Leader: g.node.Leader() == g.id, Config: as.Config.Num, KeysHeld: map[int]int{}}
		for sh, state := range as.States {
			switch state {
			case shardkv.Serving:
				gs.Serving = append(gs.Serving, sh)
			case shardkv.Pulling:
				gs.Pulling = append(gs.Pulling, sh)
			case shardkv.HandingOff:
				gs.Handing = append(gs.Handing, sh)
			case shardkv.GCPending:
				gs.GCWait = append(gs.GCWait, sh)
				gs.Serving = append(gs.Serving, sh)
			}
		}
		for sh, n := range app.KeysPerShard() {
			if n > 0 {
				gs.KeysHeld[sh] = n
				gs.Keys += n
			}
		}
		st.Groups = append(st.Groups, gs)
	}
	return st
}

func sortedGIDs[V any](m map[shard.GroupID]V) []shard.GroupID {
	out := make([]shard.GroupID, 0, len(m))
	for gid := range m {
		out = append(out, gid)
	}
	slices.Sort(out)
	return out
}

type shardServer interface {
	call(ctx context.Context, method string, req []byte) ([]byte, error)
}

type shardService struct{ s *Server }

func (x *shardService) call(ctx context.Context, method string, req []byte) ([]byte, error) {
	return x.s.shardRPC(ctx, method, req)
}

func shardMethod(name string) grpc.MethodDesc {
	full := "/" + shardServiceName + "/" + name
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.BytesValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			run := func(ctx context.Context, req any) (any, error) {
				out, err := srv.(shardServer).call(ctx, full, req.(*wrapperspb.BytesValue).Value)
				if err != nil {
					return nil, err
				}
				return wrapperspb.Bytes(out), nil
			}
			if ic == nil {
				return run(ctx, in)
			}
			return ic(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: full}, run)
		},
	}
}

var shardServiceDesc = grpc.ServiceDesc{
	ServiceName: shardServiceName,
	HandlerType: (*shardServer)(nil),
	Methods: []grpc.MethodDesc{
		shardMethod("Controller"), shardMethod("Pull"), shardMethod("Delete"), shardMethod("Status"),
	},
	Streams:  []grpc.StreamDesc{},
	Metadata: "cairn/v1/shard.proto",
}
