package transport

import (
	"context"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

// countHandler counts delivered messages and signals every time a
// multiple of step arrived, so the sender can keep a bounded window.
type countHandler struct {
	got  chan int
	n    int
	step int
}

func (h *countHandler) Process(ctx context.Context, m raft.Message) error {
	h.n++
	if h.n%h.step == 0 {
		select {
		case h.got <- h.n:
		case <-ctx.Done():
		}
	}
	return nil
}
func (h *countHandler) ReportUnreachable(uint64)    {}
func (h *countHandler) ReportSnapshot(uint64, bool) {}

// BenchmarkSendBatch measures messages per second from one transport to
// another over loopback: the sender hands batches of 64 MsgApp messages
// (one entry each) to Send and keeps at most half a queue in flight, so
// nothing is dropped.
//
//	go test -run '^$' -bench SendBatch -benchtime 2000000x ./raft/transport
func BenchmarkSendBatch(b *testing.B) {
	for _, size := range []int{0, 128, 1024} {
		b.Run(sizeName(size), func(b *testing.B) { benchSend(b, size) })
	}
}

func sizeName(n int) string {
	switch n {
	case 0:
		return "heartbeat"
	case 1024:
		return "entry=1KiB"
	}
	return "entry=128B"
}

func benchSend(b *testing.B, size int) {
	const batch, step, queue = 64, 1024, 8192
	h := &countHandler{got: make(chan int, 1), step: step}
	discard := slog.New(slog.DiscardHandler)
	recv, err := New(Config{ID: 2, ClusterID: 1, ListenAddr: "127.0.0.1:0", Handler: h, Logger: discard})
	if err != nil {
		b.Fatal(err)
	}
	defer recv.Close()
	send, err := New(Config{ID: 1, ClusterID: 1, ListenAddr: "127.0.0.1:0", Handler: &countHandler{step: 1 << 30},
		Logger: discard, QueueSize: queue})
	if err != nil {
		b.Fatal(err)
	}
	defer send.Close()
	send.AddPeer(2, recv.Addr().String())

	msgs := make([]raft.Message, batch)
	for i := range msgs {
		m := raft.Message{Type: raft.MsgHeartbeat, From: 1, To: 2, Term: 5, Commit: 100}
		if size > 0 {
			m.Type = raft.MsgApp
			m.Entries = []raft.Entry{{Term: 5, Index: uint64(i), Data: make([]byte, size)}}
		}
		msgs[i] = m
	}
	total := (b.N + step - 1) / step * step // the handler signals per step
	b.ReportAllocs()
	b.SetBytes(int64(raft.MessageSize(&msgs[0])))
	b.ResetTimer()
	sent, acked := 0, 0
	for acked < total {
		for sent < total && sent-acked < queue/2 {
			n := min(batch, total-sent)
			send.Send(msgs[:n])
			sent += n
		}
		acked = <-h.got
	}
	b.StopTimer()
	if s := send.Stats(); s.Dropped != 0 {
		b.Fatalf("dropped %d", s.Dropped)
	}
	s := send.Stats()
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(s.MessagesSent)/float64(max(s.FramesSent, 1)), "msgs/frame")
}

// atomicHandler counts delivered messages.
type atomicHandler struct{ n atomic.Int64 }

func (h *atomicHandler) Process(context.Context, raft.Message) error { h.n.Add(1); return nil }
func (h *atomicHandler) ReportUnreachable(uint64)                    {}
func (h *atomicHandler) ReportSnapshot(uint64, bool)                 {}

// BenchmarkSendConcurrent is the pattern of a follower forwarding
// proposals: many goroutines each hand Send one small message at a time,
// with at most 1,024 undelivered. msgs/frame is how many messages each
// write carried; the writer's yield before a small batch (coalesceBelow)
// is what raises it above 1.
//
//	go test -run '^$' -bench SendConcurrent -benchtime 200000x ./raft/transport
func BenchmarkSendConcurrent(b *testing.B) {
	const window = 1024
	h := &atomicHandler{}
	discard := slog.New(slog.DiscardHandler)
	recv, err := New(Config{ID: 2, ClusterID: 1, ListenAddr: "127.0.0.1:0", Handler: h, Logger: discard})
	if err != nil {
		b.Fatal(err)
	}
	defer recv.Close()
	send, err := New(Config{ID: 1, ClusterID: 1, ListenAddr: "127.0.0.1:0", Handler: &atomicHandler{},
		Logger: discard, QueueSize: 4 * window})
	if err != nil {
		b.Fatal(err)
	}
	defer send.Close()
	send.AddPeer(2, recv.Addr().String())
	m := raft.Message{Type: raft.MsgProp, From: 1, To: 2, Term: 5,
		Entries: []raft.Entry{{Data: make([]byte, 300)}}}
	var sent atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		msg := []raft.Message{m}
		for pb.Next() {
			for sent.Load()-h.n.Load() >= window {
				runtime.Gosched()
			}
			sent.Add(1)
			send.Send(msg)
			runtime.Gosched() // a request handler does other work between sends
		}
	})
	for h.n.Load() < sent.Load() {
		runtime.Gosched()
		if s := send.Stats(); s.Dropped != 0 {
			b.Fatalf("dropped %d", s.Dropped)
		}
	}
	b.StopTimer()
	s := send.Stats()
	b.ReportMetric(float64(s.MessagesSent)/float64(max(s.FramesSent, 1)), "msgs/frame")
}
