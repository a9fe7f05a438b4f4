package cli

import (
	"testing"

	"github.com/anishathalye/porcupine"
	"github.com/google/btree"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

func TestDeps(t *testing.T) {
	_ = porcupine.Model{}
	_ = btree.New
	_ = &pb.PutRequest{}
	_ = &mvccpb.KeyValue{}
	_ = clientv3.Config{}
	_ = grpc.NewServer
	_ = prometheus.NewRegistry
}
