package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	binenc "encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-db/cairn/internal/devcluster"
)

// These tests feed real `cairn server` processes bad input: junk on their
// ports, requests etcd rejects, damaged data dirs, busy ports and
// contradictory flags. Finer-grained cases (a full disk among them) run
// in process in internal/server.

// TestGarbageOnPortsOfRealCluster sends junk to every member's client and
// peer ports, a handshake from another cluster, and requests etcd
// rejects, while a client writes. Every member must keep running, every
// acknowledged write must survive, and the cluster must keep serving.
func TestGarbageOnPortsOfRealCluster(t *testing.T) {
	c := startCluster(t, 3)
	cl := etcdClient(t, c.Endpoints()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	junk := [][]byte{
		bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 8192),
		[]byte("GET / HTTP/1.1\r\nHost: cairn\r\n\r\n"),
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\x00\x00\x00\x01garbage"),
		// A transport hello from another cluster, then a frame.
		append(append([]byte("CRNT\x01\x01\x00\x00"), make([]byte, 24)...), 1, 0, 0, 0, 1, 0, 0, 0, 0, 'x'),
		// A hello with a huge, bogus frame length after it.
		append([]byte("CRNT\x01\x01\x00\x00"), bytes.Repeat([]byte{0xff}, 64)...),
	}
	send := func(addr string, b []byte) {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Errorf("dial %s: %v", addr, err)
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = conn.Write(b)
		_, _ = io.Copy(io.Discard, conn)
	}

	stop := make(chan struct{})
	writerDone := make(chan map[string]string)
	go func() {
		acked := map[string]string{}
		for i := 0; ; i++ {
			select {
			case <-stop:
				writerDone <- acked
				return
			default:
			}
			k, v := fmt.Sprintf("w/%05d", i), fmt.Sprint(i)
			octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := cl.Put(octx, k, v); err == nil {
				acked[k] = v
			}
			ocancel()
		}
	}()
	var wg sync.WaitGroup
	for _, m := range c.Members {
		for _, b := range junk {
			for _, addr := range []string{m.ClientAddr, m.PeerAddr} {
				wg.Add(1)
				go func() { defer wg.Done(); send(addr, b) }()
			}
		}
	}
	wg.Wait()
	// Requests etcd rejects, and ranges that select nothing.
	if _, err := cl.Put(ctx, "", "x"); err != rpctypes.ErrEmptyKey {
		t.Errorf("empty key: %v", err)
	}
	if _, err := cl.Put(ctx, "big", strings.Repeat("x", 2<<20-4096)); err != rpctypes.ErrRequestTooLarge {
		t.Errorf("oversized value: %v", err)
	}
	if g, err := cl.Get(ctx, "z", clientv3.WithRange("a")); err != nil || g.Count != 0 {
		t.Errorf("inverted range: %v %v", g, err)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	acked := <-writerDone
	if len(acked) == 0 {
		t.Fatal("no write succeeded while the ports took junk")
	}
	for i, m := range c.Members {
		if !c.Running(i) {
			t.Fatalf("%s exited after junk on its ports; log:\n%s", m.Name, c.Log(i, 4000))
		}
	}
	g, err := cl.Get(ctx, "w/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range g.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	for k, v := range acked {
		if got[k] != v {
			t.Fatalf("acknowledged %s=%s reads back as %q", k, v, got[k])
		}
	}
	if g, err := cl.Get(ctx, "big"); err != nil || g.Count != 0 {
		t.Fatalf("the rejected oversized value was stored: %v %v", g, err)
	}
}

// serverRun runs `cairn server args...` in the foreground, expecting it to
// refuse to start, and returns its exit code and stderr. A server that
// does start is killed after 15 seconds and reported.
func serverRun(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"server"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("cairn server %s started instead of refusing; stderr:\n%s", strings.Join(args, " "), stderr.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// refusal asserts a refused start: the exit code, exactly one line on
// stderr, and that line naming each of want.
func refusal(t *testing.T, what string, code int, stderr string, wantCode int, want ...string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("%s: exit code %d, want %d; stderr:\n%s", what, code, wantCode, stderr)
	}
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "cairn server: ") {
		t.Fatalf("%s: stderr is not one line starting \"cairn server: \":\n%s", what, stderr)
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Fatalf("%s: %q does not mention %q", what, lines[0], w)
		}
	}
}

func treeHash(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "LOCK" {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = sha256.Sum256(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func unchanged(t *testing.T, what string, before, after map[string][32]byte) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("%s: the refused start changed the set of files (%d before, %d after)", what, len(before), len(after))
	}
	for p, h := range before {
		if after[p] != h {
			t.Fatalf("%s: the refused start modified %s", what, p)
		}
	}
}

// TestServerRefusesBadStarts runs the real binary against contradictory
// flags, busy ports and damaged data dirs. Each refusal is exit code 1 (2
// for usage errors) with one sentence on stderr naming what is wrong, and
// leaves the data dir as it was. A torn WAL tail is not a refusal: the
// member repairs it and keeps every acknowledged write.
func TestServerRefusesBadStarts(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: runs real processes (not in -short mode)")
	}
	c, err := devcluster.Start(devcluster.Options{Binary: binary, Dir: t.TempDir(), Members: 1, Token: "refusals",
		ExtraArgs: []string{"--tick-interval", "20ms", "--log-level", "warn"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.StopAll)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, probe); err != nil {
		t.Fatal(err)
	}
	m := c.Members[0]
	cl := etcdClient(t, m.ClientAddr)
	for i := range 50 {
		if _, err := cl.Put(ctx, fmt.Sprintf("k%02d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Stop(0); err != nil {
		t.Fatal(err)
	}
	args := func(extra ...string) []string {
		return append([]string{"--name", m.Name, "--data-dir", m.DataDir, "--listen-client", m.ClientAddr,
			"--listen-peer", m.PeerAddr, "--initial-cluster", c.InitialCluster(), "--cluster-token", "refusals",
			"--log-level", "error"}, extra...)
	}

	// Usage errors and contradictions: nothing is created.
	fresh := filepath.Join(t.TempDir(), "fresh")
	code, stderr := serverRun(t, "--data-dir", fresh, "--listen-client", "127.0.0.1:5000", "--listen-peer", "127.0.0.1:5000")
	refusal(t, "same client and peer address", code, stderr, 1, "--listen-client and --listen-peer must differ")
	code, stderr = serverRun(t, "--data-dir", fresh, "--name", "x", "--initial-cluster", "y=127.0.0.1:5001", "--listen-peer", "127.0.0.1:5001")
	refusal(t, "name not in the initial cluster", code, stderr, 1, `"x"`, "--initial-cluster")
	code, stderr = serverRun(t, "--data-dir", fresh, "--initial-cluster-state", "sometimes")
	refusal(t, "bad cluster state", code, stderr, 1, "--initial-cluster-state")
	code, stderr = serverRun(t, "--data-dir", fresh, "stray")
	refusal(t, "stray argument", code, stderr, 2, `"stray"`)
	if _, err := os.Stat(fresh); err == nil {
		t.Fatal("a refused configuration created the data dir")
	}
	code, _ = serverRun(t, "--no-such-flag")
	if code != 2 {
		t.Fatalf("unknown flag: exit code %d, want 2", code)
	}

	// Busy ports.
	for _, addr := range []string{m.ClientAddr, m.PeerAddr} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		before := treeHash(t, m.DataDir)
		code, stderr := serverRun(t, args()...)
		ln.Close()
		refusal(t, "port in use", code, stderr, 1, addr, "address already in use")
		unchanged(t, "port in use", before, treeHash(t, m.DataDir))
	}

	// Another member's or cluster's data dir.
	before := treeHash(t, m.DataDir)
	code, stderr = serverRun(t, "--name", "intruder", "--data-dir", m.DataDir, "--listen-client", m.ClientAddr,
		"--listen-peer", m.PeerAddr, "--initial-cluster", "intruder="+m.PeerAddr, "--cluster-token", "refusals")
	refusal(t, "another member's data dir", code, stderr, 1, m.DataDir, `"m1"`, `"intruder"`)
	unchanged(t, "another member's data dir", before, treeHash(t, m.DataDir))
	a := args()
	for i := range a {
		if a[i] == "refusals" {
			a[i] = "another-cluster"
		}
	}
	code, stderr = serverRun(t, a...)
	refusal(t, "another cluster's data dir", code, stderr, 1, m.DataDir, "another-cluster")
	unchanged(t, "another cluster's data dir", before, treeHash(t, m.DataDir))

	// Damage, on copies of the data dir.
	segments := func(dir string) []string {
		ms, _ := filepath.Glob(filepath.Join(dir, "raft", "wal", "*.wal"))
		sort.Strings(ms)
		if len(ms) == 0 {
			t.Fatalf("no WAL segment in %s", dir)
		}
		return ms
	}
	damaged := func(what string, damage func(dir string) string) {
		t.Helper()
		backup := filepath.Join(t.TempDir(), "backup")
		if err := os.CopyFS(backup, os.DirFS(m.DataDir)); err != nil {
			t.Fatal(err)
		}
		file := damage(m.DataDir)
		before := treeHash(t, m.DataDir)
		code, stderr := serverRun(t, args()...)
		refusal(t, what, code, stderr, 1, file)
		unchanged(t, what, before, treeHash(t, m.DataDir))
		if err := os.RemoveAll(m.DataDir); err != nil {
			t.Fatal(err)
		}
		if err := os.CopyFS(m.DataDir, os.DirFS(backup)); err != nil {
			t.Fatal(err)
		}
	}
	damaged("corrupt WAL record", func(dir string) string {
		seg := segments(dir)[len(segments(dir))-1]
		b, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		// A third of the way into the records, not of the file: a
		// preallocated segment is mostly zeros after its records, and a
		// byte flipped there is not inside any record.
		end := len(b)
		for end > 0 && b[end-1] == 0 {
			end--
		}
		b[end/3] ^= 0x40
		os.WriteFile(seg, b, 0o600)
		return seg
	})
	damaged("corrupt member.json", func(dir string) string {
		p := filepath.Join(dir, "member.json")
		os.WriteFile(p, []byte("{\"cluster_id\":"), 0o600)
		return p
	})

	// A torn tail: what a crash in the middle of a write leaves. The
	// member truncates it and starts with everything acknowledged.
	seg := segments(m.DataDir)[len(segments(m.DataDir))-1]
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	var torn []byte
	torn = binenc.LittleEndian.AppendUint32(torn, 4096) // a record header promising more than follows
	f.Write(append(torn, "half a rec"...))
	f.Close()
	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(ctx, probe); err != nil {
		t.Fatal(err)
	}
	cl = etcdClient(t, m.ClientAddr)
	g, err := cl.Get(ctx, "k", clientv3.WithPrefix())
	if err != nil || g.Count != 50 {
		t.Fatalf("after the torn tail: %v keys, %v; want all 50", g.Count, err)
	}
	if !strings.Contains(c.Log(0, 1<<20), "torn tail") {
		t.Fatalf("the member did not report truncating the torn tail; log:\n%s", c.Log(0, 4000))
	}
}
