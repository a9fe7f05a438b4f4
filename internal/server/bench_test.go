package server

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/metadata"
)

// BenchmarkSession is the session lookup every write makes, with the
// metadata gRPC attaches to a request from etcd's client (no session) and
// from Cairn's (a session).
func BenchmarkSession(b *testing.B) {
	base := metadata.Pairs(":authority", "127.0.0.1:2379", "content-type", "application/grpc",
		"user-agent", "grpc-go/1.59.0", "te", "trailers")
	withSession := metadata.Join(base, metadata.Pairs(mdClientID, "12345", mdSeq, "678"))
	for _, c := range []struct {
		name string
		md   metadata.MD
	}{{"etcd-client", base}, {"cairn-session", withSession}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := metadata.NewIncomingContext(context.Background(), c.md)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := session(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPutThreeMembers is workload b of bench/compare.sh in one
// process: concurrent puts (8-byte keys, 256-byte values) spread over the
// members of a three-member cluster, most of them forwarded by a
// follower. It reports the process's CPU per put (servers and clients
// together) besides allocations. Allocations per put compare two builds
// exactly; CPU per put here moves with the host as much as
// bench/compare.sh's does (bench/pair.sh compares builds fairly).
func BenchmarkPutThreeMembers(b *testing.B) {
	cfgs := threeMembers(b, "bench-put")
	var clients []pb.KVClient
	for i := range cfgs {
		cfgs[i].TickInterval = 100 * time.Millisecond
		s := start(b, cfgs[i])
		kv, _ := rawKV(b, s.ClientAddr())
		clients = append(clients, kv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, kv := range clients { // every member serving
		for {
			if _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("warm"), Value: []byte("x")}); err == nil {
				break
			} else if ctx.Err() != nil {
				b.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	value := make([]byte, 256)
	var seq atomic.Uint64
	b.SetParallelism(50) // 100 clients on two CPUs, as in workload b
	b.ReportAllocs()
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb_ *testing.PB) {
		for pb_.Next() {
			n := seq.Add(1)
			key := binary.BigEndian.AppendUint64(nil, n%100000)
			if _, err := clients[n%3].Put(ctx, &pb.PutRequest{Key: key, Value: value}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
}

// processCPU is the user and system CPU this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
