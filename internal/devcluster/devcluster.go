// Package devcluster starts a local Cairn cluster of real `cairn server`
// processes on loopback, for `cairn dev`, `cairn demo` and end-to-end
// tests. It can kill (SIGKILL), stop and restart members.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cairn-db/cairn/internal/netutil"
)

// Options configures a cluster.
type Options struct {
	// Binary is the cairn executable. Default: this process's executable.
	Binary string
	// Dir holds each member's data dir and log file.
	Dir string
	// Members is the cluster size. Default 3.
	Members int
	// Ports, if set, gives each member's client port; its peer port is the
	// client port + 1. Default: free ports chosen at random.
	Ports []int
	// ExtraArgs are passed to every server.
	ExtraArgs []string
	// Token is the cluster token. Default derived from Dir.
	Token string
	// Groups, when at least 1, makes the cluster sharded: every member
	// hosts a replica of the shard controller and of shard groups 1 to
	// Groups (--controller --shard-groups 1,...,Groups). Default 0: an
	// unsharded cluster. StartSharded also joins the groups.
	Groups int
	// Shards is the sharded cluster's shard count (--shards); 0 leaves the
	// server's default.
	Shards int
}

// Member is one server process.
type Member struct {
	Name       string
	ClientAddr string
	PeerAddr   string
	DataDir    string
	LogPath    string

	// existing makes the member join (--initial-cluster-state existing).
	existing bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Cluster is a running local cluster.
type Cluster struct {
	opts    Options
	Members []*Member
	initial string
	ports   netutil.Picker // addresses of members without fixed ports
}

// Start launches the members and returns without waiting for a leader;
// call WaitReady for that.
func Start(opts Options) (*Cluster, error) {
	if opts.Groups < 0 || opts.Shards < 0 {
		return nil, fmt.Errorf("devcluster: Groups (%d) and Shards (%d) must not be negative", opts.Groups, opts.Shards)
	}
	if opts.Members == 0 {
		opts.Members = 3
	}
	if opts.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		opts.Binary = exe
	}
	if opts.Token == "" {
		opts.Token = "dev-" + filepath.Base(opts.Dir)
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts}
	var parts []string
	for i := range opts.Members {
		var client, peer string
		if len(opts.Ports) > i {
			client = fmt.Sprintf("127.0.0.1:%d", opts.Ports[i])
			peer = fmt.Sprintf("127.0.0.1:%d", opts.Ports[i]+1)
		} else {
			var err error
			if client, err = c.ports.Free(); err != nil {
				return nil, err
			}
			if peer, err = c.ports.Free(); err != nil {
				return nil, err
			}
		}
		name := fmt.Sprintf("m%d", i+1)
		m := &Member{Name: name, ClientAddr: client, PeerAddr: peer,
			DataDir: filepath.Join(opts.Dir, name), LogPath: filepath.Join(opts.Dir, name+".log")}
		c.Members = append(c.Members, m)
		parts = append(parts, name+"="+peer)
	}
	c.initial = strings.Join(parts, ",")
	for i := range c.Members {
		if err := c.Restart(i); err != nil {
			c.StopAll()
			return nil, err
		}
	}
	return c, nil
}

// Endpoints returns every member's client address.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientAddr)
	}
	return eps
}

// InitialCluster returns the --initial-cluster value.
func (c *Cluster) InitialCluster() string { return c.initial }

// Restart (re)starts member i from its data dir. It fails if the member
// is running.
func (c *Cluster) Restart(i int) error {
	m := c.Members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		select {
		case <-m.done:
		default:
			return fmt.Errorf("devcluster: member %s is running", m.Name)
		}
	}
	logf, err := os.OpenFile(m.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	args := append([]string{"server",
		"--name", m.Name,
		"--data-dir", m.DataDir,
		"--listen-client", m.ClientAddr,
		"--listen-peer", m.PeerAddr,
		"--initial-cluster", c.initial,
		"--cluster-token", c.opts.Token,
	}, c.opts.ExtraArgs...)
	args = append(args, c.shardArgs()...)
	if m.existing {
		args = append(args, "--initial-cluster-state", "existing")
	}
	cmd := exec.Command(c.opts.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C in the terminal reaches only the
	// parent, which then stops the members in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("devcluster: starting %s: %w", m.Name, err)
	}
	m.cmd = cmd
	m.done = make(chan struct{})
	go func(done chan struct{}) {
		err := cmd.Wait()
		logf.Close()
		m.mu.Lock()
		m.err = err
		m.mu.Unlock()
		close(done)
	}(m.done)
	return nil
}

// AddMember prepares a new member (not started) that will join the
// running cluster: call the cluster's MemberAdd with its PeerAddr, then
// Restart(i) to start it. It returns the new member's index.
func (c *Cluster) AddMember() (int, error) {
	client, err := c.ports.Free()
	if err != nil {
		return 0, err
	}
	peer, err := c.ports.Free()
	if err != nil {
		return 0, err
	}
	name := fmt.Sprintf("m%d", len(c.Members)+1)
	m := &Member{Name: name, ClientAddr: client, PeerAddr: peer, existing: true,
		DataDir: filepath.Join(c.opts.Dir, name), LogPath: filepath.Join(c.opts.Dir, name+".log")}
	c.Members = append(c.Members, m)
	c.initial += "," + name + "=" + peer
	return len(c.Members) - 1, nil
}

// Running reports whether member i's process is alive.
func (c *Cluster) Running(i int) bool {
	m := c.Members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Done returns a channel closed when member i's current process exits.
func (c *Cluster) Done(i int) <-chan struct{} {
	m := c.Members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.done
}

// Kill sends SIGKILL to member i and waits for it to die.
func (c *Cluster) Kill(i int) error { return c.signal(i, syscall.SIGKILL, 10*time.Second) }

// Stop sends SIGTERM to member i and waits (escalating to SIGKILL).
func (c *Cluster) Stop(i int) error {
	if err := c.signal(i, syscall.SIGTERM, 10*time.Second); err != nil {
		return c.Kill(i)
	}
	return nil
}

// Pause and Resume send SIGSTOP and SIGCONT.
func (c *Cluster) Pause(i int) error  { return c.signal(i, syscall.SIGSTOP, 0) }
func (c *Cluster) Resume(i int) error { return c.signal(i, syscall.SIGCONT, 0) }

func (c *Cluster) signal(i int, sig syscall.Signal, wait time.Duration) error {
	m := c.Members[i]
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
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
		return fmt.Errorf("devcluster: %s did not exit after %v", m.Name, sig)
	}
}

// StopAll stops every member.
func (c *Cluster) StopAll() {
	var wg sync.WaitGroup
	for i := range c.Members {
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Stop(i) }()
	}
	wg.Wait()
}

// Log returns the tail of member i's log, for failure reports.
func (c *Cluster) Log(i int, maxBytes int64) string {
	f, err := os.Open(c.Members[i].LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	if st.Size() > maxBytes {
		f.Seek(st.Size()-maxBytes, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// WaitReady waits until every running member answers a linearizable read
// through probe (which should do a read against the given endpoint).
func (c *Cluster) WaitReady(ctx context.Context, probe func(ctx context.Context, endpoint string) error) error {
	for i, m := range c.Members {
		if !c.Running(i) {
			continue
		}
		for {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			err := probe(pctx, m.ClientAddr)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("devcluster: %s not ready: %w", m.Name, err)
			}
			if !c.Running(i) {
				return fmt.Errorf("devcluster: %s exited; log:\n%s", m.Name, c.Log(i, 2000))
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}
