package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cairn-db/cairn/client"
)

// ClusterConfig describes a containerized cluster.
type ClusterConfig struct {
	// Image is the cairn server image (deploy/build-image.sh builds one).
	Image string
	// Members is the initial cluster size. Default 3.
	Members int
	// Spares are extra member slots (addresses, proxy links) for members
	// added later. Default 2.
	Spares int
	// ServerArgs are appended to every member's command line.
	ServerArgs []string
	// Lifetime is how long the cluster may live; its resources are
	// labelled with the deadline so a later run reaps them if this one is
	// killed before cleaning up. Default 1 hour.
	Lifetime time.Duration
	// Seed drives the proxy's loss decisions.
	Seed uint64
	// Groups, when ≥ 1, makes the cluster sharded (docs/sharding.md):
	// every member hosts the shard controller and shard groups
	// 1..Groups, and StartCluster joins every group once the members
	// serve. Membership changes are refused in sharded clusters.
	Groups int
	// Shards is the shard count of a sharded cluster. Default
	// DefaultShards.
	Shards int
	// Logf logs infrastructure steps. Default: discard.
	Logf   func(format string, args ...any)
	Docker Docker
}

// Member states.
const (
	StateNew          = "new" // slot not used yet
	StateRunning      = "running"
	StateKilled       = "killed"
	StatePaused       = "paused"
	StateDisconnected = "disconnected"
	StateRemoved      = "removed"
)

// Member is one member slot of the cluster.
type Member struct {
	Name      string
	Container string
	Volume    string
	IP        string
	// ClientAddr is the member's own client address (host -> container).
	ClientAddr string
	// PeerAddr is the member's advertised peer address: a proxy link on
	// the network's gateway that forwards to the container, so every
	// peer connection passes the fault-injecting proxy.
	PeerAddr string
	// ProxyClientAddr is the proxy link clients use to reach the member.
	ProxyClientAddr string
	// GroupClientAddr is a proxy link to the member's client port on the
	// network's gateway, reachable from the host and from the members: a
	// sharded cluster's groups are joined with these addresses.
	GroupClientAddr string
	State           string
}

// Cluster is a running containerized cluster. Its methods are safe for
// concurrent use.
type Cluster struct {
	cfg     ClusterConfig
	d       Docker
	Run     string // unique run name: prefix of every resource
	Network string
	Gateway string
	Proxy   *Proxy
	token   string

	mu      sync.Mutex
	members []*Member
	created []string // containers, for cleanup
	volumes []string
}

// StartCluster creates a network, proxy links for every slot, and the
// initial members, and waits until they serve a linearizable read. On
// error it cleans up what it created.
func StartCluster(ctx context.Context, cfg ClusterConfig) (c *Cluster, err error) {
	if cfg.Members == 0 {
		cfg.Members = 3
	}
	if cfg.Spares == 0 {
		cfg.Spares = 2
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = time.Hour
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Groups > 0 && cfg.Shards == 0 {
		cfg.Shards = DefaultShards
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	c = &Cluster{cfg: cfg, d: cfg.Docker, Run: "cairn-chaos-" + hex.EncodeToString(b[:])}
	c.token = c.Run
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	c.d.Reap(ctx)
	labels := []string{"--label", labelRun + "=" + c.Run,
		"--label", labelExpires + "=" + strconv.FormatInt(time.Now().Add(cfg.Lifetime).Unix(), 10)}

	// A private /24 with fixed addresses. The subnet is picked at random
	// (not from the seed: it has no effect on the run) and retried when it
	// overlaps another network on this host.
	var prefix string
	for attempt := 0; ; attempt++ {
		prefix = fmt.Sprintf("10.%d.%d", 100+mrand.IntN(150), mrand.IntN(256))
		args := append([]string{"network", "create", "--driver", "bridge",
			"--subnet", prefix + ".0/24", "--gateway", prefix + ".1"}, labels...)
		_, err = c.d.Run(ctx, append(args, c.Run)...)
		if err == nil {
			break
		}
		if attempt == 20 || !strings.Contains(err.Error(), "overlap") {
			return nil, err
		}
	}
	c.Network, c.Gateway = c.Run, prefix+".1"
	cfg.Logf("network %s (%s.0/24)", c.Network, prefix)

	ipName := map[string]string{}
	for i := range cfg.Members + cfg.Spares {
		m := &Member{Name: fmt.Sprintf("n%d", i+1), IP: fmt.Sprintf("%s.%d", prefix, 11+i), State: StateNew}
		m.Container, m.Volume = c.Run+"-"+m.Name, c.Run+"-"+m.Name
		m.ClientAddr = m.IP + ":2379"
		ipName[m.IP] = m.Name
		c.members = append(c.members, m)
	}
	c.Proxy = NewProxy(cfg.Seed, func(a net.Addr) string {
		host, _, _ := net.SplitHostPort(a.String())
		if n, ok := ipName[host]; ok {
			return n
		}
		return "client"
	})
	for _, m := range c.members {
		// The member listens on the same port its proxy link has on the
		// gateway (cairn checks the two ports agree).
		if m.PeerAddr, err = c.Proxy.Listen(m.Name, c.Gateway+":0", ""); err != nil {
			return nil, err
		}
		_, port, _ := net.SplitHostPort(m.PeerAddr)
		c.Proxy.SetTarget(m.PeerAddr, m.IP+":"+port)
		if m.ProxyClientAddr, err = c.Proxy.Listen(m.Name, "127.0.0.1:0", ""); err != nil {
			return nil, err
		}
		if cfg.Groups > 0 {
			if m.GroupClientAddr, err = c.Proxy.Listen(m.Name, c.Gateway+":0", ""); err != nil {
				return nil, err
			}
		}
	}
	var initial []string
	for _, m := range c.members[:cfg.Members] {
		initial = append(initial, m.Name+"="+m.PeerAddr)
	}
	for i := range cfg.Members {
		if err := c.create(ctx, i, strings.Join(initial, ","), "new", labels); err != nil {
			return nil, err
		}
	}
	if c.Sharded() {
		if err := c.waitShardedServing(ctx, 60*time.Second, false); err != nil {
			return nil, err
		}
		if _, err := c.JoinAll(ctx, 60*time.Second); err != nil {
			return nil, err
		}
	}
	if err := c.WaitServing(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) labels() []string {
	return []string{"--label", labelRun + "=" + c.Run,
		"--label", labelExpires + "=" + strconv.FormatInt(time.Now().Add(c.cfg.Lifetime).Unix(), 10)}
}

// create runs slot i's container.
func (c *Cluster) create(ctx context.Context, i int, initial, state string, labels []string) error {
	m := c.members[i]
	if _, err := c.d.Run(ctx, append(append([]string{"volume", "create"}, labels...), m.Volume)...); err != nil {
		return err
	}
	c.mu.Lock()
	c.volumes = append(c.volumes, m.Volume)
	c.created = append(c.created, m.Container)
	c.mu.Unlock()
	_, port, _ := net.SplitHostPort(m.PeerAddr)
	args := []string{"run", "-d", "--name", m.Container, "--hostname", m.Name,
		"--network", c.Network, "--ip", m.IP, "-v", m.Volume + ":/data",
		"-e", "CAIRN_NAME=" + m.Name,
		"-e", "CAIRN_INITIAL_CLUSTER=" + initial,
		"-e", "CAIRN_INITIAL_CLUSTER_STATE=" + state,
		"-e", "CAIRN_CLUSTER_TOKEN=" + c.token,
		"-e", "CAIRN_LISTEN_PEER=0.0.0.0:" + port,
		"-e", "CAIRN_ADVERTISE_CLIENT=" + m.ClientAddr,
	}
	args = append(args, labels...)
	args = append(args, c.cfg.Image)
	args = append(args, c.cfg.ServerArgs...)
	if c.Sharded() {
		args = append(args, shardServerArgs(c.cfg.Groups, c.cfg.Shards)...)
	}
	if _, err := c.d.Run(ctx, args...); err != nil {
		return err
	}
	c.Proxy.SetTarget(m.ProxyClientAddr, m.ClientAddr)
	if m.GroupClientAddr != "" {
		c.Proxy.SetTarget(m.GroupClientAddr, m.ClientAddr)
	}
	c.mu.Lock()
	m.State = StateRunning
	c.mu.Unlock()
	c.cfg.Logf("started %s (%s, peer %s)", m.Name, m.IP, m.PeerAddr)
	return nil
}

// Members returns a snapshot of every slot.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Member, len(c.members))
	for i, m := range c.members {
		out[i] = *m
	}
	return out
}

// Live returns the indexes of members that are part of the cluster (not
// unused slots, not removed), in slot order.
func (c *Cluster) Live() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i, m := range c.members {
		if m.State != StateNew && m.State != StateRemoved {
			out = append(out, i)
		}
	}
	return out
}

// ProxyEndpoints returns the client proxy address of every slot: clients
// given these reach members added later too.
func (c *Cluster) ProxyEndpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.members {
		out = append(out, m.ProxyClientAddr)
	}
	return out
}

// DirectEndpoints returns the live members' own client addresses.
func (c *Cluster) DirectEndpoints() []string {
	var out []string
	for _, i := range c.Live() {
		out = append(out, c.members[i].ClientAddr)
	}
	return out
}

func (c *Cluster) setState(i int, s string) {
	c.mu.Lock()
	c.members[i].State = s
	c.mu.Unlock()
}

func (c *Cluster) member(i int) Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return *c.members[i]
}

// Kill sends SIGKILL to member i.
func (c *Cluster) Kill(ctx context.Context, i int) error {
	_, err := c.d.Run(ctx, "kill", "--signal", "KILL", c.member(i).Container)
	if err == nil {
		c.setState(i, StateKilled)
	}
	return err
}

// Start starts a killed member i from its volume.
func (c *Cluster) Start(ctx context.Context, i int) error {
	_, err := c.d.Run(ctx, "start", c.member(i).Container)
	if err == nil {
		c.setState(i, StateRunning)
	}
	return err
}

// Pause freezes member i's processes (the cgroup freezer: SIGSTOP-like,
// invisible to the process).
func (c *Cluster) Pause(ctx context.Context, i int) error {
	_, err := c.d.Run(ctx, "pause", c.member(i).Container)
	if err == nil {
		c.setState(i, StatePaused)
	}
	return err
}

// Unpause resumes member i.
func (c *Cluster) Unpause(ctx context.Context, i int) error {
	_, err := c.d.Run(ctx, "unpause", c.member(i).Container)
	if err == nil {
		c.setState(i, StateRunning)
	}
	return err
}

// Disconnect removes member i from the network: it can reach no one and
// no one can reach it.
func (c *Cluster) Disconnect(ctx context.Context, i int) error {
	_, err := c.d.Run(ctx, "network", "disconnect", "--force", c.Network, c.member(i).Container)
	if err == nil {
		c.setState(i, StateDisconnected)
	}
	return err
}

// Connect puts member i back on the network at its address.
func (c *Cluster) Connect(ctx context.Context, i int) error {
	m := c.member(i)
	_, err := c.d.Run(ctx, "network", "connect", "--ip", m.IP, c.Network, m.Container)
	if err == nil {
		c.setState(i, StateRunning)
	}
	return err
}

// Restore brings member i back to running from whatever fault it is in.
func (c *Cluster) Restore(ctx context.Context, i int) error {
	switch c.member(i).State {
	case StateKilled:
		return c.Start(ctx, i)
	case StatePaused:
		return c.Unpause(ctx, i)
	case StateDisconnected:
		return c.Connect(ctx, i)
	}
	return nil
}

// Admin returns a client talking to the live members directly (not
// through the proxy).
func (c *Cluster) Admin() (*client.Client, error) {
	return client.New(client.Config{Endpoints: c.DirectEndpoints(), AttemptTimeout: time.Second, DialTimeout: time.Second})
}

// Leader returns the slot of the member that leads, asked directly, or
// -1 if none answers as leader.
func (c *Cluster) Leader(ctx context.Context) int {
	cl, err := c.Admin()
	if err != nil {
		return -1
	}
	defer cl.Close()
	for _, i := range c.Live() {
		m := c.member(i)
		if m.State != StateRunning {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, err := cl.Status(sctx, m.ClientAddr)
		cancel()
		if err == nil && st.Leader != 0 && st.Leader == st.MemberID {
			return i
		}
	}
	return -1
}

// WaitServing waits until every live member answers a linearizable read
// by its own address. In a sharded cluster that is a controller query and
// a range gathered from every group through the member.
func (c *Cluster) WaitServing(ctx context.Context, bound time.Duration) error {
	if c.Sharded() {
		return c.waitShardedServing(ctx, bound, true)
	}
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for _, i := range c.Live() {
		m := c.member(i)
		cl, err := client.New(client.Config{Endpoints: []string{m.ClientAddr}, AttemptTimeout: time.Second, DialTimeout: time.Second})
		if err != nil {
			return err
		}
		for {
			_, err = cl.Get(ctx, "/chaos/probe")
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		cl.Close()
		if err != nil {
			return fmt.Errorf("%s did not serve a linearizable read within %v: %w", m.Name, bound, err)
		}
	}
	return nil
}

// ErrNoSlot is returned by ReplaceMember when every spare slot is used.
var ErrNoSlot = errors.New("chaos: no spare member slot left")

// RemoveMember removes live member i from the membership and stops its
// container (kept for its logs).
func (c *Cluster) RemoveMember(ctx context.Context, i int) error {
	m := c.member(i)
	admin, err := c.Admin()
	if err != nil {
		return err
	}
	defer admin.Close()
	id, err := c.memberID(ctx, admin, m.Name)
	if err != nil {
		return err
	}
	if id != 0 {
		if err := admin.MemberRemove(ctx, id); err != nil {
			// The removal may have happened anyway: look again.
			if id2, err2 := c.memberID(ctx, admin, m.Name); err2 != nil || id2 != 0 {
				return fmt.Errorf("member remove %s: %w", m.Name, err)
			}
		}
	}
	c.setState(i, StateRemoved)
	c.Proxy.SetTarget(m.ProxyClientAddr, "")
	if m.GroupClientAddr != "" {
		c.Proxy.SetTarget(m.GroupClientAddr, "")
	}
	_, err = c.d.Run(ctx, "stop", "--time", "5", m.Container)
	return err
}

func (c *Cluster) memberID(ctx context.Context, admin *client.Client, name string) (uint64, error) {
	ms, err := admin.MemberList(ctx)
	if err != nil {
		return 0, fmt.Errorf("member list: %w", err)
	}
	for _, x := range ms {
		if x.Name == name {
			return x.ID, nil
		}
	}
	return 0, nil
}

// AddMember adds a fresh member in the next unused slot: `member add`,
// then a new container with --initial-cluster-state existing. It returns
// the slot.
func (c *Cluster) AddMember(ctx context.Context) (int, error) {
	slot := -1
	c.mu.Lock()
	for i, m := range c.members {
		if m.State == StateNew {
			slot = i
			break
		}
	}
	c.mu.Unlock()
	if slot < 0 {
		return -1, ErrNoSlot
	}
	m := c.member(slot)
	admin, err := c.Admin()
	if err != nil {
		return -1, err
	}
	defer admin.Close()
	if _, err := admin.MemberAdd(ctx, "http://"+m.PeerAddr, false); err != nil {
		return -1, fmt.Errorf("member add %s: %w", m.Name, err)
	}
	ms, err := admin.MemberList(ctx)
	if err != nil {
		return -1, fmt.Errorf("member list: %w", err)
	}
	var initial []string
	for _, x := range ms {
		name := x.Name
		if name == "" { // not started yet: the member being added
			name = m.Name
		}
		if len(x.PeerURLs) == 1 {
			initial = append(initial, name+"="+strings.TrimPrefix(x.PeerURLs[0], "http://"))
		}
	}
	return slot, c.create(ctx, slot, strings.Join(initial, ","), "existing", c.labels())
}

// Crashed returns, for each live member the harness believes running
// whose container has exited on its own, a line naming it with its exit
// code and last log line.
func (c *Cluster) Crashed(ctx context.Context) []string {
	var out []string
	for _, i := range c.Live() {
		m := c.member(i)
		if m.State != StateRunning {
			continue
		}
		st, err := c.d.Run(ctx, "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", m.Container)
		if err != nil || !strings.HasPrefix(st, "false") {
			continue
		}
		logs := strings.Split(strings.TrimSpace(c.Logs(ctx, i)), "\n")
		out = append(out, fmt.Sprintf("%s exited on its own (exit code %s); last log line: %s",
			m.Name, strings.TrimPrefix(st, "false "), logs[len(logs)-1]))
	}
	return out
}

// Logs returns member i's container output.
func (c *Cluster) Logs(ctx context.Context, i int) string {
	out, err := c.d.Logs(ctx, c.member(i).Container)
	if err != nil {
		out += "\n(docker logs: " + err.Error() + ")"
	}
	return out
}

// Close removes every container, volume and the network, and stops the
// proxy. It is safe to call more than once and on a partly started
// cluster.
func (c *Cluster) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.mu.Lock()
	containers, volumes := c.created, c.volumes
	c.created, c.volumes = nil, nil
	var paused []string
	for _, m := range c.members {
		if m.State == StatePaused {
			paused = append(paused, m.Container)
		}
	}
	c.mu.Unlock()
	for _, ct := range paused {
		_, _ = c.d.Run(ctx, "unpause", ct) // a paused container cannot always be removed
	}
	if len(containers) > 0 {
		if _, err := c.d.Run(ctx, append([]string{"rm", "-f", "-v"}, containers...)...); err != nil {
			c.cfg.Logf("cleanup: %v", err)
		}
	}
	for _, v := range volumes {
		if _, err := c.d.Run(ctx, "volume", "rm", "-f", v); err != nil {
			c.cfg.Logf("cleanup: %v", err)
		}
	}
	if c.Network != "" {
		if _, err := c.d.Run(ctx, "network", "rm", c.Network); err != nil {
			c.cfg.Logf("cleanup: %v", err)
		}
		c.Network = ""
	}
	if c.Proxy != nil {
		c.Proxy.Close()
	}
}
