package raftnode

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-db/cairn/raft"
)

// slowStorage is a MemStorage whose synced writes take as long as an fsync
// on the benchmark machine (docs/performance.md: p50 about 0.23 ms), so
// the driver's handling of the disk wait is what is measured, without the
// noise of a shared disk.
type slowStorage struct {
	*MemStorage
	fsync time.Duration
}

func (s *slowStorage) Save(hs raft.HardState, ents []raft.Entry, sync bool) error {
	if sync || len(ents) > 0 {
		time.Sleep(s.fsync)
	}
	return s.MemStorage.Save(hs, ents, sync)
}

const benchFsync = 250 * time.Microsecond

// benchCluster starts three nodes on a MemNetwork with slow storage and
// returns the leader.
func benchCluster(b *testing.B, syncWrites bool) *Node {
	b.Helper()
	net := NewMemNetwork()
	ids := []uint64{1, 2, 3}
	var nodes []*Node
	for _, id := range ids {
		st := &slowStorage{MemStorage: NewMemStorage(), fsync: benchFsync}
		cfg := Config{
			Raft:              raft.Config{ID: id, ElectionTick: 10, HeartbeatTick: 1, PreVote: true, CheckQuorum: true},
			TickInterval:      10 * time.Millisecond,
			SnapshotEntries:   -1,
			SyncStorageWrites: syncWrites,
		}
		nd, err := Start(cfg, st, net.Transport(id), newKV(), ids)
		if err != nil {
			b.Fatal(err)
		}
		net.Register(id, nd, st)
		nodes = append(nodes, nd)
	}
	b.Cleanup(func() {
		net.Close()
		for _, nd := range nodes {
			nd.Stop()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		l, err := nodes[0].WaitLeader(ctx)
		if err != nil {
			b.Fatal(err)
		}
		ld := nodes[l-1]
		if _, _, err := ld.Propose(ctx, []byte("warm=up")); err == nil {
			return ld
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkPropose measures Node.Propose on the leader of a three-node
// in-memory cluster whose storage takes benchFsync per synced write:
// with one client (latency bound) and with many (throughput bound), for
// the synchronous driver (SyncStorageWrites) and the default
// asynchronous one. One op is one proposal committed and applied on the
// leader; p50 and p99 are the proposals' latencies.
func BenchmarkPropose(b *testing.B) {
	for _, mode := range []string{"sync", "async"} {
		for _, clients := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/clients=%d", mode, clients), func(b *testing.B) {
				ld := benchCluster(b, mode == "sync")
				data := []byte("key=" + strings.Repeat("v", 256))
				var mu sync.Mutex
				var lat []time.Duration
				b.ReportAllocs()
				b.ResetTimer()
				var wg sync.WaitGroup
				work := make(chan struct{})
				go func() {
					for range b.N {
						work <- struct{}{}
					}
					close(work)
				}()
				for range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						var mine []time.Duration
						for range work {
							start := time.Now()
							if _, _, err := ld.Propose(context.Background(), data); err != nil {
								b.Error(err)
								return
							}
							mine = append(mine, time.Since(start))
						}
						mu.Lock()
						lat = append(lat, mine...)
						mu.Unlock()
					}()
				}
				wg.Wait()
				b.StopTimer()
				slices.Sort(lat)
				if len(lat) > 0 {
					b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
					b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
				}
			})
		}
	}
}
