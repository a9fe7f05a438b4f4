package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/client"
)

// TestExactlyOnceWhenRepliesAreLost drops the reply of the first attempt of
// every append (the server applied it; the client never hears), so the
// client retries with the same session and sequence number. Each append
// must appear exactly once.
func TestExactlyOnceWhenRepliesAreLost(t *testing.T) {
	c := startCluster(t, 3)
	var dropped atomic.Int64
	seen := sync.Map{} // lane+seq metadata of attempts already made
	lossy := grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err != nil || !strings.HasSuffix(method, "/Append") {
			return err
		}
		// Drop the reply of the first attempt of each request, after the
		// server has applied it.
		key := fmt.Sprint(outgoingSession(ctx))
		if _, again := seen.LoadOrStore(key, true); !again {
			dropped.Add(1)
			return status.Error(codes.Unavailable, "injected: reply lost")
		}
		return nil
	})
	cl := newClient(t, c, client.Config{DialOptions: []grpc.DialOption{lossy}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const writers, perWriter = 4, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				if _, err := cl.Append(ctx, "list", fmt.Sprintf("<%d.%d>", w, i)); err != nil {
					t.Errorf("append: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if dropped.Load() < writers*perWriter {
		t.Fatalf("only %d replies dropped; the test did not exercise retries", dropped.Load())
	}
	r, err := cl.Get(ctx, "list")
	if err != nil || len(r.KVs) != 1 {
		t.Fatalf("get list: %v %v", r, err)
	}
	v := r.KVs[0].Value
	for w := range writers {
		for i := range perWriter {
			tok := fmt.Sprintf("<%d.%d>", w, i)
			if n := strings.Count(v, tok); n != 1 {
				t.Fatalf("append %s applied %d times, want exactly once (value %q)", tok, n, v)
			}
		}
	}
}

// outgoingSession returns the session metadata the client attached.
func outgoingSession(ctx context.Context) []string {
	md, _ := metadata.FromOutgoingContext(ctx)
	return append(md.Get("cairn-client-id"), md.Get("cairn-seq")...)
}

// TestNoAcknowledgedWriteLostAndCatchUpBySnapshot kills a member, writes
// far past the snapshot and compaction thresholds, SIGKILLs the leader
// once too, restarts everyone, and checks that every acknowledged write is
// readable from every member, including the one that had to be caught up
// by a snapshot.
func TestNoAcknowledgedWriteLostAndCatchUpBySnapshot(t *testing.T) {
	c := startCluster(t, 3, "--log-level", "info")
	cl := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	laggard := 0
	if err := c.Kill(laggard); err != nil {
		t.Fatal(err)
	}
	acked := map[string]string{}
	var mu sync.Mutex
	write := func(from, to int) {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := from + w; i < to; i += 4 {
					k, v := fmt.Sprintf("k%05d", i), fmt.Sprintf("v%d", i)
					if _, err := cl.Put(ctx, k, v); err == nil {
						mu.Lock()
						acked[k] = v
						mu.Unlock()
					} else if !isUnknown(err) {
						t.Errorf("put %s: %v", k, err)
					}
				}
			}()
		}
		wg.Wait()
	}
	// --snapshot-count 300 and --snapshot-catchup-entries 50 (startCluster):
	// 1000 writes force several snapshots and compactions.
	write(0, 1000)
	if l := leaderOf(cl, c); l >= 0 {
		if err := c.Kill(l); err != nil {
			t.Fatal(err)
		}
		if err := c.Restart(laggard); err != nil {
			t.Fatal(err)
		}
		write(1000, 1200)
		if err := c.Restart(l); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Fatal("no leader after the first writes")
	}
	if err := c.Restart(laggard); err != nil && !strings.Contains(err.Error(), "running") {
		t.Fatal(err)
	}
	if len(acked) < 1000 {
		t.Fatalf("only %d of 1200 writes acknowledged", len(acked))
	}
	// Every member, read locally after a ReadIndex round, has everything.
	for i, m := range c.Members {
		one, err := client.New(client.Config{Endpoints: []string{m.ClientAddr}, AttemptTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer one.Close()
		var r *client.GetResult
		for {
			r, err = one.Get(ctx, "k", client.WithPrefix())
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%s never served a read: %v", m.Name, err)
			}
		}
		got := map[string]string{}
		for _, kv := range r.KVs {
			got[kv.Key] = kv.Value
		}
		for k, v := range acked {
			if got[k] != v {
				t.Fatalf("%s (member %d): acknowledged %s=%s reads back as %q", m.Name, i, k, v, got[k])
			}
		}
	}
	if !strings.Contains(c.Log(laggard, 1<<20), "installed snapshot") {
		t.Fatalf("%s caught up without installing a snapshot; compaction did not force one", c.Members[laggard].Name)
	}
}
