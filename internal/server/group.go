package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-db/cairn/raft"
	"github.com/cairn-db/cairn/raft/raftnode"
	"github.com/cairn-db/cairn/raft/transport"
	"github.com/cairn-db/cairn/raft/wal"
)

// group is this process's replica of one Raft group: its log and
// snapshots, its peer transport, its Raft node and its replicated state
// machine. An unsharded server runs one group; a sharded one runs the
// shard controller's group and any number of shard groups side by side,
// sharing the process's listeners.
type group struct {
	s         *Server
	label     string // "kv", "controller" or "group <gid>", for logs and errors
	primary   bool
	id        uint64 // this member's Raft ID in the group
	clusterID uint64 // the group's transport cluster ID
	logger    *slog.Logger

	storage   *wal.DiskStorage
	transport *transport.Transport
	node      *raftnode.Node
	sm        *stateMachine

	peerAddr string // this member's peer address as listed in --initial-cluster
	peersMu  sync.Mutex
	peers    map[uint64]string

	// wrapKV, if set, wraps an encoded kv.Command into the application's
	// payload (a shard group's entry kind).
	wrapKV func([]byte) []byte

	// applyBacklog is node.ApplyBacklog; tests replace it to see a
	// member whose state machine has fallen behind.
	applyBacklog func() uint64

	reqIDs atomic.Uint64
	term   atomic.Uint64
	done   chan struct{} // closed when the group's goroutines should stop
	bg     sync.WaitGroup
}

// groupSpec says how to start one group replica.
type groupSpec struct {
	label     string
	raftDir   string
	clusterID uint64
	peerLn    net.Listener // owned by the group's transport from then on
	app       application
	members   []Member // the initial members (for the member table and bootstrap)
	self      Member
	bootstrap bool // bootstrap a new group from members
	primary   bool // the process reports this group's metrics
	// maxMessage bounds one peer message (0: the transport's default). A
	// shard group's log carries whole shards when they move, so its
	// messages must hold the largest shard.
	maxMessage int
}

// startGroup opens the group's storage and starts its transport and Raft
// node. On error, everything it started is closed again, including
// spec.peerLn.
func (s *Server) startGroup(spec groupSpec) (_ *group, err error) {
	g := &group{
		s:         s,
		label:     spec.label,
		primary:   spec.primary,
		id:        spec.self.ID,
		clusterID: spec.clusterID,
		logger:    s.logger.With("group", spec.label),
		peerAddr:  spec.self.PeerAddr,
		peers:     map[uint64]string{},
		done:      make(chan struct{}),
	}
	defer func() {
		if err != nil {
			if g.transport == nil {
				spec.peerLn.Close()
			}
			g.close()
		}
	}()
	var fsys wal.FS = wal.OSFS{}
	if s.cfg.fs != nil {
		fsys = s.cfg.fs
	}
	g.storage, err = wal.OpenDiskStorage(fsys, spec.raftDir, wal.StorageOptions{
		Logger:      g.logger,
		KeepEntries: s.cfg.SnapshotCatchupEntries,
		SegmentSize: s.cfg.walSegmentSize,
		Preallocate: s.cfg.WALPreallocate,
	})
	if err != nil {
		if errors.Is(err, wal.ErrCorrupt) {
			// The WAL's error names the gap; the operator needs the file.
			if bad := damagedSnapshots(spec.raftDir); len(bad) > 0 {
				return nil, fmt.Errorf("cannot open the Raft log in %s: %w (damaged snapshot files: %s)", spec.raftDir, err, strings.Join(bad, ", "))
			}
		}
		return nil, fmt.Errorf("cannot open the Raft log in %s: %w", spec.raftDir, err)
	}
	storage := &timedStorage{DiskStorage: raftnode.DiskStorage{DiskStorage: g.storage}, m: s.metrics}

	g.sm = newStateMachine(g.id, spec.app, spec.members)
	handler := &lateHandler{}
	g.transport, err = transport.New(transport.Config{
		ID:             g.id,
		ClusterID:      g.clusterID,
		Listener:       spec.peerLn,
		Handler:        handler,
		Snapshots:      storage,
		Logger:         g.logger,
		MaxMessageSize: spec.maxMessage,
	})
	if err != nil {
		return nil, fmt.Errorf("cannot start the peer transport of %s: %w", spec.label, err)
	}
	g.syncPeers(g.sm.memberTable())
	g.sm.onMembers = g.syncPeers

	var bootstrap []uint64
	if spec.bootstrap {
		for _, m := range spec.members {
			bootstrap = append(bootstrap, m.ID)
		}
	}
	g.node, err = raftnode.Start(raftnode.Config{
		Raft: raft.Config{
			ID:            g.id,
			ElectionTick:  s.cfg.ElectionTicks,
			HeartbeatTick: 1,
			PreVote:       true,
			CheckQuorum:   true,
		},
		TickInterval:       s.cfg.TickInterval,
		SnapshotEntries:    s.cfg.SnapshotCount,
		SnapshotMaxEntries: s.cfg.SnapshotCountMax,
		KeepEntries:        s.cfg.SnapshotCatchupEntries,
		Logger:             g.logger,
	}, storage, &countingTransport{Transport: g.transport, m: s.metrics}, g.sm, bootstrap)
	if err != nil {
		return nil, fmt.Errorf("cannot start Raft for %s: %w", spec.label, err)
	}
	g.applyBacklog = g.node.ApplyBacklog
	handler.set(g.node)
	g.syncPeers(g.sm.memberTable())
	g.bg.Add(2)
	go g.publishLoop()
	go g.watchNode()
	return g, nil
}

// close stops the group's goroutines, node, transport and storage.
func (g *group) close() {
	select {
	case <-g.done:
	default:
		close(g.done)
	}
	if g.node != nil {
		g.node.Stop()
	}
	if g.transport != nil {
		g.transport.Close()
	}
	g.bg.Wait()
	if g.storage != nil {
		g.storage.Close()
	}
}

// watchNode stops the server when the Raft node dies (e.g. a disk error)
// and keeps the cached term fresh for response headers.
func (g *group) watchNode() {
	defer g.bg.Done()
	t := time.NewTicker(g.s.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-g.done:
			return
		case <-g.node.Done():
			if err := g.node.Err(); err != nil {
				g.logger.Error("raft stopped; shutting down", "err", err)
				go g.s.Stop()
			}
			return
		case <-t.C:
			g.term.Store(g.node.Term())
			if g.primary {
				g.s.metrics.observe(g)
			}
		}
	}
}

// publishLoop announces this member's name and client address through the
// log, so every member can list it and forward to it.
func (g *group) publishLoop() {
	defer g.bg.Done()
	info := MemberInfo{ID: g.id, Name: g.s.cfg.Name, PeerAddr: g.peerAddr, ClientAddr: g.s.cfg.AdvertiseClient}
	payload, _ := json.Marshal(info)
	backoff := 50 * time.Millisecond
	for {
		if m, ok := g.sm.memberTable()[g.id]; ok && m.ClientAddr == info.ClientAddr && m.Name == info.Name {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), g.s.cfg.RequestTimeout)
		go func() {
			select {
			case <-g.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		_, err := g.propose(ctx, kindPublish, payload)
		cancel()
		if err == nil {
			continue
		}
		select {
		case <-g.done:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// syncPeers makes the transport's peer set follow the member table.
func (g *group) syncPeers(table map[uint64]MemberInfo) {
	if g.transport == nil {
		return
	}
	g.peersMu.Lock()
	defer g.peersMu.Unlock()
	for id, m := range table {
		if id != g.id && m.PeerAddr != "" && g.peers[id] != m.PeerAddr {
			g.transport.AddPeer(id, m.PeerAddr)
			g.peers[id] = m.PeerAddr
		}
	}
	for id := range g.peers {
		if _, ok := table[id]; !ok {
			g.transport.RemovePeer(id)
			delete(g.peers, id)
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
