package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/client"
	"github.com/cairn-db/cairn/internal/netutil"
)

// Helpers for the sharded end-to-end tests (docs/sharding.md). They start
// real `cairn server` processes with the sharding flags themselves, so
// that a set of processes can host any mix of the controller and shard
// groups, and one cluster can point at another's controller.

// shardedArgs are the flags every sharded test process gets: fast ticks,
// frequent snapshots, short request timeouts.
var shardedArgs = []string{"--tick-interval", "50ms", "--snapshot-count", "300", "--snapshot-catchup-entries", "50",
	"--request-timeout", "3s", "--log-level", "info"}

var shardFlagsOnce sync.Once
var shardFlagsErr error

// requireShardFlags fails the test unless the cairn binary accepts the
// sharding flags of `cairn server`.
func requireShardFlags(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: runs real processes (not in -short mode)")
	}
	shardFlagsOnce.Do(func() {
		out, _ := exec.Command(binary, "server", "--help").CombinedOutput()
		for _, f := range []string{"-controller", "-shard-groups", "-controller-endpoints", "-shards"} {
			if !strings.Contains(string(out), f) {
				shardFlagsErr = fmt.Errorf("`cairn server` does not accept %s; the sharded tests need it", f)
				return
			}
		}
	})
	if shardFlagsErr != nil {
		t.Fatal(shardFlagsErr)
	}
}

// shardProc is one `cairn server` process of a sharded test.
type shardProc struct {
	Name, ClientAddr, PeerAddr, MetricsAddr, DataDir, LogPath string

	args []string // role flags (--controller, --shard-groups, ...)

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	paused bool
}

// shardSet is a set of processes forming one Raft membership (each Raft
// group hosted by the set has one replica per process).
type shardSet struct {
	t       *testing.T
	procs   []*shardProc
	initial string
	token   string
}

// startShardSet starts n processes named prefix1..prefixN with the given
// role flags, sharing one --initial-cluster. It waits until each answers
// the shard status call.
func startShardSet(t *testing.T, prefix string, n int, token string, role ...string) *shardSet {
	t.Helper()
	requireShardFlags(t)
	dir := t.TempDir()
	s := &shardSet{t: t, token: token}
	var parts []string
	for i := range n {
		p := &shardProc{Name: fmt.Sprintf("%s%d", prefix, i+1), args: role}
		p.ClientAddr, p.PeerAddr, p.MetricsAddr = freeLoopback(t), freeLoopback(t), freeLoopback(t)
		p.DataDir = filepath.Join(dir, p.Name)
		p.LogPath = filepath.Join(dir, p.Name+".log")
		s.procs = append(s.procs, p)
		parts = append(parts, p.Name+"="+p.PeerAddr)
	}
	s.initial = strings.Join(parts, ",")
	t.Cleanup(func() {
		s.stopAll()
		if t.Failed() {
			for i, p := range s.procs {
				t.Logf("--- log of %s (tail) ---\n%s", p.Name, s.logTail(i, 6000))
			}
		}
	})
	for i := range s.procs {
		if err := s.start(i); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, p := range s.procs {
		for {
			sctx, scancel := context.WithTimeout(ctx, time.Second)
			_, err := shardStatus(sctx, p.ClientAddr)
			scancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil || !s.running(i) {
				t.Fatalf("%s did not come up: %v\n%s", p.Name, err, s.logTail(i, 3000))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return s
}

// testPorts hands out the addresses of this package's test servers: the
// kernel can repeat a just-probed port, and one cluster must not get it twice.
var testPorts netutil.Picker

func freeLoopback(t *testing.T) string {
	t.Helper()
	addr, err := testPorts.Free()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// start (re)starts process i from its data dir.
func (s *shardSet) start(i int) error {
	p := s.procs[i]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is running", p.Name)
		}
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	args := append([]string{"server",
		"--name", p.Name,
		"--data-dir", p.DataDir,
		"--listen-client", p.ClientAddr,
		"--listen-peer", p.PeerAddr,
		"--listen-metrics", p.MetricsAddr,
		"--initial-cluster", s.initial,
		"--cluster-token", s.token,
	}, shardedArgs...)
	args = append(args, p.args...)
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	p.cmd, p.done, p.paused = cmd, make(chan struct{}), false
	go func(done chan struct{}) {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}(p.done)
	return nil
}

func (s *shardSet) running(i int) bool {
	p := s.procs[i]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// up reports whether process i runs and is not paused.
func (s *shardSet) up(i int) bool {
	p := s.procs[i]
	p.mu.Lock()
	paused := p.paused
	p.mu.Unlock()
	return !paused && s.running(i)
}

func (s *shardSet) signal(i int, sig syscall.Signal, wait time.Duration) error {
	p := s.procs[i]
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	switch sig {
	case syscall.SIGSTOP:
		p.paused = true
	case syscall.SIGCONT, syscall.SIGKILL:
		p.paused = false
	}
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	if wait == 0 {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-time.After(wait):
		return fmt.Errorf("%s did not exit after %v", p.Name, sig)
	}
}

func (s *shardSet) kill(i int) error   { return s.signal(i, syscall.SIGKILL, 10*time.Second) }
func (s *shardSet) pause(i int) error  { return s.signal(i, syscall.SIGSTOP, 0) }
func (s *shardSet) resume(i int) error { return s.signal(i, syscall.SIGCONT, 0) }

// heal resumes paused processes and restarts dead ones.
func (s *shardSet) heal() {
	for i := range s.procs {
		_ = s.resume(i)
		if !s.running(i) {
			if err := s.start(i); err != nil {
				s.t.Errorf("restart %s: %v", s.procs[i].Name, err)
			}
		}
	}
}

func (s *shardSet) stopAll() {
	var wg sync.WaitGroup
	for i := range s.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.resume(i)
			if err := s.signal(i, syscall.SIGTERM, 10*time.Second); err != nil {
				_ = s.kill(i)
			}
		}()
	}
	wg.Wait()
}

func (s *shardSet) endpoints() []string {
	var eps []string
	for _, p := range s.procs {
		eps = append(eps, p.ClientAddr)
	}
	return eps
}

func (s *shardSet) logTail(i int, maxBytes int64) string {
	f, err := os.Open(s.procs[i].LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	if st.Size() > maxBytes {
		_, _ = f.Seek(st.Size()-maxBytes, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// shardStatus asks one process for its shard groups' state.
func shardStatus(ctx context.Context, ep string) (*client.ShardHostStatus, error) {
	cl, err := client.New(client.Config{Endpoints: []string{ep}, AttemptTimeout: time.Second})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return cl.ShardStatus(ctx, ep)
}

// shardClient returns a client of the given endpoints, closed at cleanup.
func shardClient(t *testing.T, eps []string, attempt time.Duration) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Endpoints: eps, AttemptTimeout: attempt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// retryAdmin runs a controller command until it succeeds or ctx ends.
// The client's session makes a retried command exactly-once.
func retryAdmin(ctx context.Context, f func(ctx context.Context) (client.ShardConfig, error)) (client.ShardConfig, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cfg, err := f(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return cfg, err
		}
		if status.Code(err) == codes.InvalidArgument {
			return cfg, err // refused (e.g. the group already joined)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// groupSettled reports whether a replica's view is settled at num.
func groupSettled(g client.ShardGroupStatus, num uint64) bool {
	return g.Config == num && len(g.Pulling)+len(g.Handing)+len(g.GCWait) == 0
}

// waitShardSettled waits until every replica of every group on the given
// processes is at configuration num with no shard in transit, and
// returns the last statuses.
func waitShardSettled(t *testing.T, ctx context.Context, eps []string, num uint64) map[string]*client.ShardHostStatus {
	t.Helper()
	var last map[string]*client.ShardHostStatus
	for {
		last = map[string]*client.ShardHostStatus{}
		ok := true
		for _, ep := range eps {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := shardStatus(sctx, ep)
			cancel()
			if err != nil {
				ok = false
				continue
			}
			last[ep] = st
			for _, g := range st.Groups {
				if !groupSettled(g, num) {
					ok = false
				}
			}
		}
		if ok {
			return last
		}
		if ctx.Err() != nil {
			for ep, st := range last {
				t.Logf("status of %s: %+v", ep, *st)
			}
			t.Fatalf("shard groups did not settle at configuration %d: %v", num, ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// keysInShards returns, for each shard, a few keys with the given prefix
// that fall in it.
func keysInShards(prefix string, nShards, perShard int) map[int][]string {
	out := map[int][]string{}
	for i := 0; ; i++ {
		k := fmt.Sprintf("%s%04d", prefix, i)
		sh := client.ShardOf(k, nShards)
		if len(out[sh]) < perShard {
			out[sh] = append(out[sh], k)
		}
		done := len(out) == nShards
		for _, ks := range out {
			if len(ks) < perShard {
				done = false
			}
		}
		if done {
			return out
		}
	}
}

func sortedShards(m map[int][]string) []int {
	var out []int
	for sh := range m {
		out = append(out, sh)
	}
	slices.Sort(out)
	return out
}

// shardMetrics scrapes the cairn_shard_group_* gauges of one process:
// name{labels} -> value.
func shardMetrics(ctx context.Context, addr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "cairn_shard_group_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}
