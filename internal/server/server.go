package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/raft/wal"
)

// grpcOverhead is allowed on top of MaxRequestBytes for gRPC framing, so
// that an oversized request reaches checkSize and gets etcd's clear
// "request is too large" instead of a transport error.
const grpcOverhead = 512 * 1024

// Server is a running member: one process with one client listener, one
// peer listener and one or more Raft group replicas.
type Server struct {
	cfg       Config
	id        uint64 // this process's member ID
	clusterID uint64
	logger    *slog.Logger

	dir       *dataDir
	main      *group     // the group whose status, members and health the process reports
	sh        *shardHost // sharded mode only
	grpc      *grpc.Server
	clientLn  net.Listener
	metricsLn net.Listener
	httpSrv   *http.Server
	metrics   *metrics

	connMu sync.Mutex
	conns  map[string]*grpc.ClientConn

	stopOnce sync.Once
	stopped  chan struct{}
	bg       sync.WaitGroup
}

// Start starts a member. It refuses to start, with one clear sentence, on
// contradictory flags, a data dir of another member or cluster, corrupt
// data, or a port in use.
func Start(cfg Config) (*Server, error) {
	// A member restarting from its data dir keeps the identity stored
	// there; --initial-cluster and --cluster-token matter only when the
	// data dir is created.
	stored, err := readIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if stored != nil && cfg.ClusterToken == Defaults().ClusterToken {
		cfg.ClusterToken = stored.Token
	}
	members, err := cfg.Validate()
	if err != nil {
		return nil, err
	}
	var self Member
	for _, m := range members {
		if m.Name == cfg.Name {
			self = m
		}
	}
	if stored != nil && stored.Name == cfg.Name {
		self.ID = stored.MemberID
	}
	s := &Server{
		cfg:       cfg,
		id:        self.ID,
		clusterID: ClusterID(cfg.ClusterToken),
		logger:    cfg.Logger.With("member", cfg.Name),
		conns:     map[string]*grpc.ClientConn{},
		stopped:   make(chan struct{}),
	}
	ok := false
	defer func() {
		if !ok {
			s.closeAll()
		}
	}()

	s.dir, err = openDataDir(cfg.DataDir, identity{ClusterID: s.clusterID, MemberID: s.id, Name: cfg.Name, Token: cfg.ClusterToken})
	if err != nil {
		return nil, err
	}
	if s.clientLn, err = net.Listen("tcp", cfg.ListenClient); err != nil {
		return nil, fmt.Errorf("cannot listen for clients on %s: %w", cfg.ListenClient, err)
	}
	peerLn, err := net.Listen("tcp", cfg.ListenPeer)
	if err != nil {
		return nil, fmt.Errorf("cannot listen for peers on %s: %w", cfg.ListenPeer, err)
	}
	if cfg.ListenMetrics != "" {
		if s.metricsLn, err = net.Listen("tcp", cfg.ListenMetrics); err != nil {
			peerLn.Close()
			return nil, fmt.Errorf("cannot listen for metrics on %s: %w", cfg.ListenMetrics, err)
		}
	}
	s.metrics = newMetrics()
	if err := s.dir.create(); err != nil {
		peerLn.Close()
		return nil, err
	}
	if cfg.Sharded() {
		if err := s.startSharded(peerLn, members, self); err != nil {
			return nil, err
		}
		s.startServing(&shardedKV{s: s})
		ok = true
		s.logger.Info("cairn sharded member started", "id", fmt.Sprintf("%x", s.id), "controller", cfg.Controller,
			"groups", cfg.ShardGroups, "shards", s.sh.nShards, "client", cfg.ListenClient, "peer", cfg.ListenPeer, "data_dir", cfg.DataDir)
		return s, nil
	}
	s.main, err = s.startGroup(groupSpec{
		label:     "kv",
		raftDir:   s.dir.raftDir(),
		clusterID: s.clusterID,
		peerLn:    peerLn,
		app:       kvApp{kv.NewStore(kv.Options{SessionTTL: cfg.SessionTTL})},
		members:   members,
		self:      self,
		bootstrap: cfg.InitialClusterState == "new",
		primary:   true,
	})
	if err != nil {
		return nil, err
	}
	s.startServing(&kvService{s: s})
	ok = true
	s.logger.Info("cairn member started", "id", fmt.Sprintf("%x", s.id), "cluster", fmt.Sprintf("%x", s.clusterID),
		"client", cfg.ListenClient, "peer", cfg.ListenPeer, "data_dir", cfg.DataDir, "fresh", s.dir.fresh)
	return s, nil
}

// streamWorkers is the number of gRPC handler goroutines kept for reuse
// (grpc.NumStreamWorkers). Idle workers cost only their stacks.
const streamWorkers = 256

// startServing registers the client services and starts the client and
// metrics servers.
func (s *Server) startServing(kvs pb.KVServer) {
	s.grpc = grpc.NewServer(
		grpc.ForceServerCodecV2(newGogoCodec()),
		// Fixed flow-control windows instead of gRPC's bandwidth-delay
		// estimation, which pings every connection once per round trip
		// for as long as data flows: with many small requests that is
		// an extra frame written and read per round trip on both sides,
		// for windows that small requests never fill.
		grpc.InitialWindowSize(1<<20),
		grpc.InitialConnWindowSize(4<<20),
		grpc.MaxRecvMsgSize(s.cfg.MaxRequestBytes+grpcOverhead),
		grpc.MaxConcurrentStreams(1024),
		// Reuse handler goroutines instead of starting one per
		// request: a fresh goroutine grows its stack on every unary
		// call (runtime.newstack/copystack were 4-5% of a member's CPU
		// under 100 concurrent puts). A write handler blocks until its
		// entry commits, so the pool is sized for that many requests in
		// flight; beyond it gRPC falls back to a goroutine per stream.
		grpc.NumStreamWorkers(streamWorkers),
	)
	pb.RegisterKVServer(s.grpc, kvs)
	pb.RegisterMaintenanceServer(s.grpc, &maintenanceService{s: s})
	pb.RegisterClusterServer(s.grpc, &clusterService{s: s})
	pb.RegisterWatchServer(s.grpc, watchService{})
	pb.RegisterLeaseServer(s.grpc, leaseService{})
	s.grpc.RegisterService(&cairnServiceDesc, &cairnService{s: s})
	s.grpc.RegisterService(&shardServiceDesc, &shardService{s: s})

	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		if err := s.grpc.Serve(s.clientLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.logger.Error("client server stopped", "err", err)
		}
	}()
	if s.metricsLn != nil {
		s.httpSrv = &http.Server{Handler: s.metricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			_ = s.httpSrv.Serve(s.metricsLn)
		}()
	}
}

// ID returns the member ID.
func (s *Server) ID() uint64 { return s.id }

// ClientAddr returns the address clients connect to.
func (s *Server) ClientAddr() string { return s.clientLn.Addr().String() }

// Done is closed when the server has stopped (Stop, or a fatal error).
func (s *Server) Done() <-chan struct{} { return s.stopped }

// Err returns the fatal error that stopped the server, if any.
func (s *Server) Err() error {
	for _, g := range s.allGroups() {
		if g.node != nil {
			if err := g.node.Err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// allGroups lists the group replicas this process runs.
func (s *Server) allGroups() []*group {
	if s.sh != nil {
		var out []*group
		if s.sh.ctrl != nil {
			out = append(out, s.sh.ctrl)
		}
		for _, g := range s.sh.groups {
			out = append(out, g)
		}
		return out
	}
	if s.main == nil {
		return nil
	}
	return []*group{s.main}
}

// Stop stops serving and closes everything.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.closeAll()
		close(s.stopped)
	})
	s.bg.Wait()
}

func (s *Server) closeAll() {
	if s.grpc != nil {
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			s.grpc.Stop()
		}
	} else if s.clientLn != nil {
		s.clientLn.Close()
	}
	if s.httpSrv != nil {
		s.httpSrv.Close()
	} else if s.metricsLn != nil {
		s.metricsLn.Close()
	}
	for _, g := range s.allGroups() {
		g.close()
	}
	if s.sh != nil && s.sh.mux != nil {
		s.sh.mux.Close()
	}
	s.connMu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = map[string]*grpc.ClientConn{}
	s.connMu.Unlock()
	if s.dir != nil {
		s.dir.close()
	}
}

// damagedSnapshots returns the snapshot files under raftDir that fail
// their checksum, for the message of a refused start. It only reads: a
// refused start leaves the data dir as it found it.
func damagedSnapshots(raftDir string) []string {
	dir := filepath.Join(raftDir, "snap")
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	sn, err := wal.NewSnapshotter(readOnlyFS{}, dir, nil)
	if err != nil {
		return nil
	}
	idx, err := sn.List()
	if err != nil {
		return nil
	}
	var bad []string
	for _, i := range idx {
		if _, err := sn.Verify(i); errors.Is(err, wal.ErrCorrupt) {
			bad = append(bad, filepath.Join(dir, fmt.Sprintf("%016x.snap", i))) // the Snapshotter's file name
		}
	}
	return bad
}

// readOnlyFS is the OS file system with removals turned into no-ops (the
// Snapshotter deletes leftover temporary files when it opens a directory).
type readOnlyFS struct{ wal.OSFS }

func (readOnlyFS) Remove(string) error { return nil }
