package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/internal/shard"
	"github.com/cairn-db/cairn/internal/shardkv"
	"github.com/cairn-db/cairn/raft/transport"
)

// shardHost is the sharded part of a process: the controller replica (if
// hosted), the shard group replicas, the peer listener they share, and the
// newest shard configuration this process knows (its routing cache).
type shardHost struct {
	s             *Server
	nShards       int
	mux           *transport.Mux
	ctrl          *group // nil if the process does not host the controller
	ctrlApp       *ctrlApp
	groups        map[shard.GroupID]*group
	apps          map[shard.GroupID]*shardkv.Group
	ctrlEndpoints []string

	cfgMu  sync.RWMutex
	latest shard.Config
}

// MaxShardBytes bounds the encoded size of one shard: a moving shard
// travels as one log entry of the receiving group, and so as one peer
// message. With the default 64 shards that allows a 16 GiB cluster.
const MaxShardBytes = 256 << 20

// shardingFile records the shard count chosen when the data dir was made.
const shardingFile = "sharding.json"

// groupClusterID gives every Raft group of a cluster its own transport
// cluster ID, so a connection for one group can never reach another.
func groupClusterID(token, label string) uint64 {
	h := fnv.New64a()
	h.Write([]byte("cairn-group\x00"))
	h.Write([]byte(token))
	h.Write([]byte{0})
	h.Write([]byte(label))
	id := h.Sum64()
	if id == 0 {
		id = 1
	}
	return id
}

// startSharded starts the controller and shard group replicas this
// process hosts, all behind one peer listener.
func (s *Server) startSharded(peerLn net.Listener, members []Member, self Member) error {
	gids, _ := s.cfg.shardGroups()
	nShards, err := s.checkShardCount()
	if err != nil {
		peerLn.Close()
		return err
	}
	h := &shardHost{
		s:             s,
		nShards:       nShards,
		groups:        map[shard.GroupID]*group{},
		apps:          map[shard.GroupID]*shardkv.Group{},
		ctrlEndpoints: s.cfg.controllerEndpoints(),
		latest:        shard.InitialConfig(nShards),
	}
	s.sh = h
	h.mux = transport.NewMux(peerLn, transport.MuxOptions{Logger: s.logger})
	start := func(label, dir string, app application, primary bool, maxMessage int) (*group, error) {
		cid := groupClusterID(s.cfg.ClusterToken, label)
		ln, err := h.mux.Listener(cid)
		if err != nil {
			return nil, err
		}
		return s.startGroup(groupSpec{
			label:      label,
			raftDir:    filepath.Join(s.dir.path, "groups", dir, "raft"),
			clusterID:  cid,
			peerLn:     ln,
			app:        app,
			members:    members,
			self:       self,
			bootstrap:  s.cfg.InitialClusterState == "new",
			primary:    primary,
			maxMessage: maxMessage,
		})
	}
	if s.cfg.Controller {
		h.ctrlApp = newCtrlApp(nShards, s.cfg.SessionTTL)
		if h.ctrl, err = start("controller", "controller", h.ctrlApp, true, 0); err != nil {
			return err
		}
	}
	for i, gid := range gids {
		app := shardkv.New(gid, nShards, kv.Options{SessionTTL: s.cfg.SessionTTL})
		g, err := start(fmt.Sprintf("group-%d", gid), strconv.FormatUint(uint64(gid), 10), app, h.ctrl == nil && i == 0, MaxShardBytes+1<<20)
		if err != nil {
			return err
		}
		g.wrapKV = shardkv.EncodeKV
		h.groups[gid], h.apps[gid] = g, app
	}
	if h.ctrl != nil {
		s.main = h.ctrl
	} else {
		s.main = h.groups[gids[0]]
	}
	for gid, g := range h.groups {
		g.bg.Add(1)
		go h.migrate(gid, g)
	}
	s.bg.Add(1)
	go h.refreshLoop()
	return nil
}

// checkShardCount stores the shard count in a fresh data dir and refuses
// a different --shards later (it would move almost every key).
func (s *Server) checkShardCount() (int, error) {
	path := filepath.Join(s.dir.path, shardingFile)
	var stored struct {
		Shards int `json:"shards"`
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := writeFileAtomic(path, mustJSON(map[string]int{"shards": s.cfg.Shards})); err != nil {
			return 0, err
		}
		return s.cfg.Shards, nil
	case err != nil:
		return 0, fmt.Errorf("cannot read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &stored); err != nil || stored.Shards < 1 || stored.Shards > shard.MaxShards {
		return 0, fmt.Errorf("data dir %s is corrupt: %s does not parse", s.dir.path, path)
	}
	if stored.Shards != s.cfg.Shards && s.cfg.Shards != shard.DefaultShards {
		return 0, fmt.Errorf("%w: data dir %s was created with --shards %d; the shard count cannot change (--shards %d given)", ErrConfig, s.dir.path, stored.Shards, s.cfg.Shards)
	}
	return stored.Shards, nil
}

// config returns the newest configuration this process knows.
func (h *shardHost) config() shard.Config {
	h.cfgMu.RLock()
	defer h.cfgMu.RUnlock()
	return h.latest
}

func (h *shardHost) learn(cfg shard.Config) {
	h.cfgMu.Lock()
	if cfg.Num > h.latest.Num && len(cfg.Shards) == h.nShards {
		h.latest = cfg
	}
	h.cfgMu.Unlock()
}

// refresh asks the controller for its newest configuration.
func (h *shardHost) refresh(ctx context.Context) (shard.Config, error) {
	cfg, err := h.controller(ctx, &shard.Command{Op: shard.OpQuery, Num: -1})
	if err != nil {
		return h.config(), err
	}
	h.learn(cfg)
	return h.config(), nil
}

// refreshLoop keeps the routing cache fresh.
func (h *shardHost) refreshLoop() {
	defer h.s.bg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), h.s.cfg.RequestTimeout)
		go func() {
			select {
			case <-h.s.stopped:
				cancel()
			case <-ctx.Done():
			}
		}()
		_, _ = h.refresh(ctx)
		cancel()
		h.observe()
		select {
		case <-h.s.stopped:
			return
		case <-t.C:
		}
	}
}

// observe updates the shard metrics.
func (h *shardHost) observe() {
	for gid, app := range h.apps {
		label := strconv.FormatUint(uint64(gid), 10)
		counts := map[shardkv.State]int{}
		for _, st := range app.Status().States {
			counts[st]++
		}
		for _, st := range []shardkv.State{shardkv.Serving, shardkv.Pulling, shardkv.HandingOff, shardkv.GCPending} {
			h.s.metrics.shardStates.WithLabelValues(label, st.String()).Set(float64(counts[st]))
		}
		h.s.metrics.shardKeys.WithLabelValues(label).Set(float64(app.Stats().Keys))
	}
}

// controller runs a controller command: locally if this process hosts a
// controller replica, otherwise at the controller endpoints.
func (h *shardHost) controller(ctx context.Context, cmd *shard.Command) (shard.Config, error) {
	if cmd.Time == 0 {
		cmd.Time = time.Now().UnixNano()
	}
	if h.ctrl == nil {
		return h.remoteController(ctx, cmd)
	}
	g := h.ctrl
	if cmd.Op == shard.OpQuery {
		if err := g.linearizableRead(ctx); err != nil {
			return shard.Config{}, err
		}
		return h.ctrlApp.c.Query(cmd.Num), nil
	}
	out, err := g.propose(ctx, kindKV, cmd.Marshal())
	if err != nil {
		return shard.Config{}, err
	}
	res, _ := out.(*shard.Result)
	if res == nil {
		return shard.Config{}, status.Error(codes.Internal, "cairn: controller returned no result")
	}
	if res.Err != nil {
		switch {
		case errors.Is(res.Err, shard.ErrInvalidCommand), errors.Is(res.Err, shard.ErrGroupExists),
			errors.Is(res.Err, shard.ErrUnknownGroup):
			return shard.Config{}, status.Error(codes.InvalidArgument, "cairn: "+res.Err.Error())
		case errors.Is(res.Err, shard.ErrStaleSequence):
			return shard.Config{}, status.Error(codes.FailedPrecondition, "cairn: "+res.Err.Error())
		}
		return shard.Config{}, status.Error(codes.Internal, "cairn: "+res.Err.Error())
	}
	h.learn(res.Config)
	return res.Config, nil
}

func (h *shardHost) remoteController(ctx context.Context, cmd *shard.Command) (shard.Config, error) {
	var lastErr error = status.Error(codes.Unavailable, "cairn: no controller endpoint configured")
	for _, addr := range h.ctrlEndpoints {
		cc, err := h.s.peerClient(addr)
		if err != nil {
			lastErr = err
			continue
		}
		out, err := invokeBytes(ctx, cc, methodController, cmd.Marshal())
		if err != nil {
			lastErr = err
			if status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded {
				continue
			}
			return shard.Config{}, err
		}
		var cfg shard.Config
		if err := cfg.UnmarshalBinary(out); err != nil {
			return shard.Config{}, status.Errorf(codes.Internal, "cairn: controller at %s sent a bad configuration: %v", addr, err)
		}
		h.learn(cfg)
		return cfg, nil
	}
	return shard.Config{}, lastErr
}

// migrate is a shard group's reconfiguration driver. On the group's
// leader it moves the group to the next configuration once every shard is
// settled, pulls the shards the group gained from their previous owners,
// and confirms deletions. Everything it does goes through the group's
// log, so a new leader simply carries on.
func (h *shardHost) migrate(gid shard.GroupID, g *group) {
	defer g.bg.Done()
	app := h.apps[gid]
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-g.done:
			return
		case <-t.C:
		}
		if g.node.Leader() != g.id {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), h.s.cfg.RequestTimeout)
		go func() {
			select {
			case <-g.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := h.migrateStep(ctx, g, app); err != nil && ctx.Err() == nil {
			g.logger.Debug("migration step", "err", err)
		}
		cancel()
	}
}

func (h *shardHost) migrateStep(ctx context.Context, g *group, app *shardkv.Group) error {
	st := app.Status()
	var wg sync.WaitGroup
	settled := true
	for sh, state := range st.States {
		switch state {
		case shardkv.Pulling:
			settled = false
			wg.Add(1)
			go func() {
				defer wg.Done()
				from := st.Prev.Shards[sh]
				blob, err := h.callGroup(ctx, from, st.Prev.Groups[from], methodPull, encodeShardRef(from, st.Config.Num, sh))
				if err != nil {
					g.logger.Debug("pull shard", "shard", sh, "from", from, "config", st.Config.Num, "err", err)
					return
				}
				if _, err := g.propose(ctx, kindKV, shardkv.EncodeInstall(st.Config.Num, sh, blob)); err != nil {
					g.logger.Debug("install shard", "shard", sh, "err", err)
				}
			}()
		case shardkv.GCPending:
			settled = false
			wg.Add(1)
			go func() {
				defer wg.Done()
				from := st.Prev.Shards[sh]
				if _, err := h.callGroup(ctx, from, st.Prev.Groups[from], methodDelete, encodeShardRef(from, st.Config.Num, sh)); err != nil {
					g.logger.Debug("confirm shard deletion", "shard", sh, "at", from, "err", err)
					return
				}
				if _, err := g.propose(ctx, kindKV, shardkv.EncodeGCDone(st.Config.Num, sh)); err != nil {
					g.logger.Debug("record shard deletion", "shard", sh, "err", err)
				}
			}()
		case shardkv.HandingOff:
			settled = false // the new owner drives it
		}
	}
	wg.Wait()
	if !settled {
		return nil
	}
	next, err := h.controller(ctx, &shard.Command{Op: shard.OpQuery, Num: int64(st.Config.Num + 1)})
	if err != nil {
		return err
	}
	if next.Num != st.Config.Num+1 {
		return nil
	}
	payload, err := shardkv.EncodeReconfigure(next)
	if err != nil {
		return err
	}
	_, err = g.propose(ctx, kindKV, payload)
	if err == nil {
		g.logger.Info("moved to shard configuration", "config", next.Num)
	}
	return err
}

// callGroup calls a method on a group, locally if this process hosts it,
// else at its members' addresses in turn.
func (h *shardHost) callGroup(ctx context.Context, gid shard.GroupID, addrs []string, method string, req []byte) ([]byte, error) {
	if _, ok := h.groups[gid]; ok {
		return h.s.shardRPC(ctx, method, req)
	}
	var lastErr error = status.Errorf(codes.Unavailable, "cairn: group %d has no known members", gid)
	for _, addr := range addrs {
		cc, err := h.s.peerClient(addr)
		if err != nil {
			lastErr = err
			continue
		}
		out, err := invokeBytes(ctx, cc, method, req)
		if err == nil {
			return out, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// encodeShardRef names shard sh of group gid in configuration num.
func encodeShardRef(gid shard.GroupID, num uint64, sh int) []byte {
	b := binary.AppendUvarint(nil, uint64(gid))
	b = binary.AppendUvarint(b, num)
	return binary.AppendUvarint(b, uint64(sh))
}

func decodeShardRef(b []byte) (gid shard.GroupID, num uint64, sh int, err error) {
	var v [3]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, 0, 0, status.Error(codes.InvalidArgument, "cairn: malformed shard reference")
		}
		v[i], b = x, b[n:]
	}
	return shard.GroupID(v[0]), v[1], int(v[2]), nil
}

// ctrlApp is the shard controller as a group application.
type ctrlApp struct {
	c       *shard.Controller
	mu      sync.Mutex
	applied uint64
}

func newCtrlApp(nShards int, ttl time.Duration) *ctrlApp {
	return &ctrlApp{c: shard.NewController(shard.Options{Shards: nShards, SessionTTL: ttl})}
}

func (a *ctrlApp) Apply(index uint64, payload []byte) any {
	res := a.c.Apply(payload)
	a.Skip(index)
	return &res
}

func (a *ctrlApp) Skip(index uint64) {
	a.mu.Lock()
	a.applied = max(a.applied, index)
	a.mu.Unlock()
}

func (a *ctrlApp) AppliedIndex() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.applied
}

// CaptureSnapshot writes the applied index and the controller's snapshot;
// the controller's state is small, so it is copied now.
func (a *ctrlApp) CaptureSnapshot() (func(io.Writer) error, error) {
	var buf bytes.Buffer
	buf.Write(binary.AppendUvarint(nil, a.AppliedIndex()))
	if err := a.c.Snapshot(&buf); err != nil {
		return nil, err
	}
	return func(w io.Writer) error {
		_, err := w.Write(buf.Bytes())
		return err
	}, nil
}

func (a *ctrlApp) Restore(r io.Reader) error {
	br, ok := r.(io.ByteReader)
	if !ok {
		return errors.New("server: controller snapshot reader cannot read bytes")
	}
	idx, err := binary.ReadUvarint(br)
	if err != nil {
		return fmt.Errorf("server: controller snapshot truncated: %w", err)
	}
	if err := a.c.Restore(r); err != nil {
		return err
	}
	a.mu.Lock()
	a.applied = idx
	a.mu.Unlock()
	return nil
}

// Metadata a request carries to name the shard group it is for.
const mdGroup = "cairn-group"

// requestGroup returns the group a request names, or 0.
func requestGroup(ctx context.Context) (shard.GroupID, error) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return 0, nil
	}
	v := md.Get(mdGroup)
	if len(v) == 0 {
		return 0, nil
	}
	id, err := strconv.ParseUint(v[0], 10, 64)
	if err != nil || id == 0 || len(v) != 1 {
		return 0, status.Errorf(codes.InvalidArgument, "cairn: %s must be one positive group ID", mdGroup)
	}
	return shard.GroupID(id), nil
}

// withGroup names gid in an outgoing request.
func withGroup(ctx context.Context, gid shard.GroupID) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	md = md.Copy()
	md.Set(mdGroup, strconv.FormatUint(uint64(gid), 10))
	return metadata.NewOutgoingContext(ctx, md)
}

// WrongGroupPrefix starts the message of every wrong-group error, which
// carries codes.FailedPrecondition; the client refreshes its
// configuration and retries on it.
const WrongGroupPrefix = "cairn: wrong group"

func errWrongGroup(err error) error {
	return status.Error(codes.FailedPrecondition, WrongGroupPrefix+": "+err.Error())
}

func isWrongGroup(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.FailedPrecondition && len(st.Message()) >= len(WrongGroupPrefix) && st.Message()[:len(WrongGroupPrefix)] == WrongGroupPrefix
}
