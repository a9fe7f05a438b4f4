package client_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cairn-db/cairn/client"
	"github.com/cairn-db/cairn/internal/netutil"
	"github.com/cairn-db/cairn/internal/server"
)

// startServer runs a single-member cluster in this process.
func startServer(t *testing.T) *server.Server {
	t.Helper()
	cfg := server.Defaults()
	cfg.Name = "solo"
	cfg.DataDir = t.TempDir()
	cfg.ListenClient = "127.0.0.1:0"
	cfg.ListenPeer = freeAddr(t)
	cfg.TickInterval = 10 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := server.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// testPorts hands out the addresses of this package's test servers: the
// kernel can repeat a just-probed port, and one cluster must not get it twice.
var testPorts netutil.Picker

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := testPorts.Free()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func newClient(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestKVOperations(t *testing.T) {
	s := startServer(t)
	c := newClient(t, client.Config{Endpoints: []string{s.ClientAddr()}})
	ctx := ctx(t)

	p1, err := c.Put(ctx, "fruit/apple", "red")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := c.Put(ctx, "fruit/apple", "green", client.WithPrevKV())
	if err != nil {
		t.Fatal(err)
	}
	if p2.Revision != p1.Revision+1 || p2.Prev == nil || p2.Prev.Value != "red" {
		t.Fatalf("second put: %+v (first at revision %d)", p2, p1.Revision)
	}
	for _, k := range []string{"fruit/banana", "fruit/cherry", "veg/leek"} {
		if _, err := c.Put(ctx, k, "x"); err != nil {
			t.Fatal(err)
		}
	}
	g, err := c.Get(ctx, "fruit/apple")
	if err != nil || len(g.KVs) != 1 {
		t.Fatalf("get: %+v %v", g, err)
	}
	if kv := g.KVs[0]; kv.Value != "green" || kv.Version != 2 || kv.CreateRevision != p1.Revision || kv.ModRevision != p2.Revision {
		t.Fatalf("metadata: %+v", kv)
	}
	r, err := c.Get(ctx, "fruit/", client.WithPrefix(), client.WithLimit(2), client.WithSortByKey())
	if err != nil || len(r.KVs) != 2 || r.Count != 3 || !r.More || r.KVs[0].Key != "fruit/apple" {
		t.Fatalf("prefix with limit: %+v %v", r, err)
	}
	r, err = c.Get(ctx, "fruit/", client.WithPrefix(), client.WithCountOnly())
	if err != nil || r.Count != 3 || len(r.KVs) != 0 {
		t.Fatalf("count only: %+v %v", r, err)
	}
	r, err = c.Get(ctx, "fruit/b", client.WithRange("fruit/d"), client.WithKeysOnly(), client.WithSerializable())
	if err != nil || len(r.KVs) != 2 || r.KVs[0].Value != "" {
		t.Fatalf("range keys only: %+v %v", r, err)
	}
	a, err := c.Append(ctx, "log", "one;")
	if err != nil || a.Length != 4 {
		t.Fatalf("append: %+v %v", a, err)
	}
	if a, err = c.Append(ctx, "log", "two;"); err != nil || a.Length != 8 {
		t.Fatalf("append: %+v %v", a, err)
	}
	d, err := c.Delete(ctx, "fruit/", client.WithPrefix(), client.WithPrevKV())
	if err != nil || d.Deleted != 3 || len(d.Prev) != 3 {
		t.Fatalf("delete prefix: %+v %v", d, err)
	}
	if r, err = c.Get(ctx, "fruit/", client.WithPrefix()); err != nil || len(r.KVs) != 0 {
		t.Fatalf("after delete: %+v %v", r, err)
	}
}

func TestTxnCompareAndSwap(t *testing.T) {
	s := startServer(t)
	c := newClient(t, client.Config{Endpoints: []string{s.ClientAddr()}})
	ctx := ctx(t)
	// Create only if absent.
	res, err := c.Txn().If(client.CompareVersion("lock", "=", 0)).Then(client.OpPut("lock", "a")).Commit(ctx)
	if err != nil || !res.Succeeded {
		t.Fatalf("create: %+v %v", res, err)
	}
	res, err = c.Txn().If(client.CompareVersion("lock", "=", 0)).Then(client.OpPut("lock", "b")).
		Else(client.OpGet("lock")).Commit(ctx)
	if err != nil || res.Succeeded || len(res.Gets) != 1 || res.Gets[0][0].Value != "a" {
		t.Fatalf("second create must fail and read the holder: %+v %v", res, err)
	}
	res, err = c.Txn().If(client.CompareValue("lock", "=", "a")).Then(client.OpDelete("lock")).Commit(ctx)
	if err != nil || !res.Succeeded {
		t.Fatalf("release: %+v %v", res, err)
	}
}

func TestFailsOverToALiveEndpoint(t *testing.T) {
	s := startServer(t)
	dead := freeAddr(t) // nothing listens here
	c := newClient(t, client.Config{Endpoints: []string{dead, s.ClientAddr()}, AttemptTimeout: 500 * time.Millisecond})
	ctx := ctx(t)
	for i := range 5 {
		if _, err := c.Put(ctx, "k", "v"); err != nil {
			t.Fatalf("put %d with one dead endpoint: %v", i, err)
		}
	}
}

func TestOutcomeUnknownWhenTheClusterIsGone(t *testing.T) {
	s := startServer(t)
	c := newClient(t, client.Config{Endpoints: []string{s.ClientAddr()}, AttemptTimeout: 200 * time.Millisecond})
	if _, err := c.Put(ctx(t), "k", "v"); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	short, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.Put(short, "k", "w")
	if err == nil {
		t.Fatal("put succeeded against a stopped server")
	}
	// Nothing listens any more, so the write provably never left: the
	// client may say so; any other failure must be "outcome unknown".
	if !errors.Is(err, client.ErrOutcomeUnknown) {
		t.Logf("put against a stopped server: %v", err)
	}
	if _, err := c.Get(short, "k"); err == nil {
		t.Fatal("get succeeded against a stopped server")
	}
}

func TestNoEndpoints(t *testing.T) {
	if _, err := client.New(client.Config{}); !errors.Is(err, client.ErrNoEndpoints) {
		t.Fatalf("err %v, want ErrNoEndpoints", err)
	}
}

func TestPrefixEnd(t *testing.T) {
	for in, want := range map[string]string{"a": "b", "a\xff": "b", "\xff\xff": "\x00", "": "\x00"} {
		if got := string(client.PrefixEnd(in)); got != want {
			t.Errorf("PrefixEnd(%q) = %q, want %q", in, got, want)
		}
	}
}
