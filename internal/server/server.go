package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/raft"
	"github.com/cairn-db/cairn/raft/raftnode"
	"github.com/cairn-db/cairn/raft/transport"
	"github.com/cairn-db/cairn/raft/wal"
)

// grpcOverhead is allowed on top of MaxRequestBytes for gRPC framing, so
// that an oversized request reaches checkSize and gets etcd's clear
// "request is too large" instead of a transport error.
const grpcOverhead = 512 * 1024

// Server is a running member.
type Server struct {
	cfg       Config
	id        uint64
	clusterID uint64
	logger    *slog.Logger

	dir       *dataDir
	storage   *wal.DiskStorage
	transport *transport.Transport
	node      *raftnode.Node
	sm        *stateMachine
	grpc      *grpc.Server
	clientLn  net.Listener
	metricsLn net.Listener
	httpSrv   *http.Server
	metrics   *metrics

	peerAddr string // as listed in --initial-cluster
	peers    map[uint64]string

	reqIDs atomic.Uint64
	term   atomic.Uint64

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
		peerAddr:  self.PeerAddr,
		peers:     map[uint64]string{},
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

	var fsys wal.FS = wal.OSFS{}
	if cfg.fs != nil {
		fsys = cfg.fs
	}
	s.storage, err = wal.OpenDiskStorage(fsys, s.dir.raftDir(), wal.StorageOptions{
		Logger:      s.logger,
		KeepEntries: cfg.SnapshotCatchupEntries,
		SegmentSize: cfg.walSegmentSize,
	})
	if err != nil {
		peerLn.Close()
		if errors.Is(err, wal.ErrCorrupt) {
			// The WAL's error names the gap; the operator needs the file.
			if bad := damagedSnapshots(s.dir.raftDir()); len(bad) > 0 {
				return nil, fmt.Errorf("cannot open the Raft log in %s: %w (damaged snapshot files: %s)", s.dir.raftDir(), err, strings.Join(bad, ", "))
			}
		}
		return nil, fmt.Errorf("cannot open the Raft log in %s: %w", s.dir.raftDir(), err)
	}
	storage := &timedStorage{DiskStorage: raftnode.DiskStorage{DiskStorage: s.storage}, m: s.metrics}

	s.sm = newStateMachine(s.id, kv.Options{SessionTTL: cfg.SessionTTL}, members)
	handler := &lateHandler{}
	s.transport, err = transport.New(transport.Config{
		ID:        s.id,
		ClusterID: s.clusterID,
		Listener:  peerLn,
		Handler:   handler,
		Snapshots: storage,
		Logger:    s.logger,
	})
	if err != nil {
		peerLn.Close()
		return nil, fmt.Errorf("cannot start the peer transport: %w", err)
	}
	s.syncPeers(s.sm.memberTable())
	s.sm.onMembers = s.syncPeers

	var bootstrap []uint64
	if cfg.InitialClusterState == "new" {
		for _, m := range members {
			bootstrap = append(bootstrap, m.ID)
		}
	}
	s.node, err = raftnode.Start(raftnode.Config{
		Raft: raft.Config{
			ID:            s.id,
			ElectionTick:  cfg.ElectionTicks,
			HeartbeatTick: 1,
			PreVote:       true,
			CheckQuorum:   true,
		},
		TickInterval:    cfg.TickInterval,
		SnapshotEntries: cfg.SnapshotCount,
		KeepEntries:     cfg.SnapshotCatchupEntries,
		Logger:          s.logger,
	}, storage, &countingTransport{Transport: s.transport, m: s.metrics}, s.sm, bootstrap)
	if err != nil {
		return nil, fmt.Errorf("cannot start Raft: %w", err)
	}
	handler.set(s.node)
	s.syncPeers(s.sm.memberTable())

	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(cfg.MaxRequestBytes+grpcOverhead),
		grpc.MaxConcurrentStreams(1024),
	)
	pb.RegisterKVServer(s.grpc, &kvService{s: s})
	pb.RegisterMaintenanceServer(s.grpc, &maintenanceService{s: s})
	pb.RegisterClusterServer(s.grpc, &clusterService{s: s})
	pb.RegisterWatchServer(s.grpc, watchService{})
	pb.RegisterLeaseServer(s.grpc, leaseService{})
	s.grpc.RegisterService(&cairnServiceDesc, &cairnService{s: s})

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
	s.bg.Add(2)
	go s.publishLoop()
	go s.watchNode()
	ok = true
	s.logger.Info("cairn member started", "id", fmt.Sprintf("%x", s.id), "cluster", fmt.Sprintf("%x", s.clusterID),
		"client", cfg.ListenClient, "peer", cfg.ListenPeer, "data_dir", cfg.DataDir, "fresh", s.dir.fresh)
	return s, nil
}

// ID returns the member ID.
func (s *Server) ID() uint64 { return s.id }

// ClientAddr returns the address clients connect to.
func (s *Server) ClientAddr() string { return s.clientLn.Addr().String() }

// Done is closed when the server has stopped (Stop, or a fatal error).
func (s *Server) Done() <-chan struct{} { return s.stopped }

// Err returns the fatal error that stopped the server, if any.
func (s *Server) Err() error {
	if s.node == nil {
		return nil
	}
	return s.node.Err()
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
	if s.node != nil {
		s.node.Stop()
	}
	if s.transport != nil {
		s.transport.Close()
	}
	if s.storage != nil {
		s.storage.Close()
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

// watchNode stops the server when the Raft node dies (e.g. a disk error)
// and keeps the cached term fresh for response headers.
func (s *Server) watchNode() {
	defer s.bg.Done()
	t := time.NewTicker(s.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stopped:
			return
		case <-s.node.Done():
			if err := s.node.Err(); err != nil {
				s.logger.Error("raft stopped; shutting down", "err", err)
				go s.Stop()
			}
			return
		case <-t.C:
			s.term.Store(s.node.Term())
			s.metrics.observe(s)
		}
	}
}

// publishLoop announces this member's name and client address through the
// log, so every member can list it and forward to it.
func (s *Server) publishLoop() {
	defer s.bg.Done()
	info := MemberInfo{ID: s.id, Name: s.cfg.Name, PeerAddr: s.peerAddr, ClientAddr: s.cfg.AdvertiseClient}
	payload, _ := json.Marshal(info)
	backoff := 50 * time.Millisecond
	for {
		if m, ok := s.sm.memberTable()[s.id]; ok && m.ClientAddr == info.ClientAddr && m.Name == info.Name {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		go func() {
			select {
			case <-s.stopped:
				cancel()
			case <-ctx.Done():
			}
		}()
		_, err := s.propose(ctx, kindPublish, payload)
		cancel()
		if err == nil {
			continue
		}
		select {
		case <-s.stopped:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// syncPeers makes the transport's peer set follow the member table.
func (s *Server) syncPeers(table map[uint64]MemberInfo) {
	if s.transport == nil {
		return
	}
	s.connMu.Lock()
	defer s.connMu.Unlock()
	for id, m := range table {
		if id != s.id && m.PeerAddr != "" && s.peers[id] != m.PeerAddr {
			s.transport.AddPeer(id, m.PeerAddr)
			s.peers[id] = m.PeerAddr
		}
	}
	for id := range s.peers {
		if _, ok := table[id]; !ok {
			s.transport.RemovePeer(id)
			delete(s.peers, id)
		}
	}
}

// lateHandler lets the transport start before the node exists.
type lateHandler struct {
	mu sync.RWMutex
	h  transport.Handler
}

func (l *lateHandler) set(h transport.Handler) {
	l.mu.Lock()
	l.h = h
	l.mu.Unlock()
}

func (l *lateHandler) get() transport.Handler {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.h
}

func (l *lateHandler) Process(ctx context.Context, m raft.Message) error {
	if h := l.get(); h != nil {
		return h.Process(ctx, m)
	}
	return errors.New("server: node not started yet")
}

func (l *lateHandler) ReportUnreachable(id uint64) {
	if h := l.get(); h != nil {
		h.ReportUnreachable(id)
	}
}

func (l *lateHandler) ReportSnapshot(id uint64, ok bool) {
	if h := l.get(); h != nil {
		h.ReportSnapshot(id, ok)
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
