package server

import (
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cairn-db/cairn/raft"
	"github.com/cairn-db/cairn/raft/raftnode"
)

// metrics are the server's Prometheus metrics, in a registry of its own
// (no global state: several servers can run in one test process).
type metrics struct {
	reg             *prometheus.Registry
	proposals       prometheus.Counter
	proposalsFailed prometheus.Counter
	writesRefused   prometheus.Counter
	fsync           prometheus.Histogram
	writeDuration   prometheus.Histogram
	snapshotBytes   prometheus.Histogram
	leaderChanges   prometheus.Counter
	peerSent        prometheus.Counter
	applied         prometheus.Gauge
	committed       prometheus.Gauge
	lastIndex       prometheus.Gauge
	term            prometheus.Gauge
	isLeader        prometheus.Gauge
	hasLeader       prometheus.Gauge
	keys            prometheus.Gauge
	shardStates     *prometheus.GaugeVec // sharded: shards per group and state
	shardKeys       *prometheus.GaugeVec // sharded: keys held per group
	lastLeader      uint64
}

func newMetrics() *metrics {
	m := &metrics{
		reg:             prometheus.NewRegistry(),
		proposals:       prometheus.NewCounter(prometheus.CounterOpts{Name: "cairn_proposals_total", Help: "Writes submitted to Raft by this member."}),
		proposalsFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "cairn_proposals_failed_total", Help: "Writes that failed or timed out (outcome unknown)."}),
		writesRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "cairn_writes_refused_total",
			Help: "Writes refused with \"too many requests\" because too many committed entries waited to be applied (never proposed)."}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cairn_wal_save_duration_seconds", Help: "Time to append a Ready batch to the WAL and fsync it.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		writeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cairn_write_duration_seconds",
			Help:    "Time from a write's submission to Raft to this member applying it, for writes that succeed (client-facing write latency inside the server).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		snapshotBytes: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cairn_snapshot_bytes", Help: "Size of snapshots taken.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 12)}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "cairn_leader_changes_total", Help: "Leader changes seen by this member."}),
		peerSent:      prometheus.NewCounter(prometheus.CounterOpts{Name: "cairn_peer_messages_sent_total", Help: "Raft messages handed to the peer transport."}),
		applied:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "cairn_applied_index", Help: "Last Raft index applied to the state machine."}),
		committed:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cairn_committed_index", Help: "Highest Raft index known to be committed."}),
		lastIndex:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cairn_last_index", Help: "Last index in the local Raft log."}),
		term:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "cairn_raft_term", Help: "Current Raft term."}),
		isLeader:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "cairn_is_leader", Help: "1 if this member leads."}),
		hasLeader:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cairn_has_leader", Help: "1 if this member knows a leader."}),
		keys:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "cairn_keys", Help: "Keys in the store."}),
	}
	m.shardStates = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cairn_shard_group_shards",
		Help: "Shards this member's replica of a shard group holds, by state (serving, pulling, handing-off, gc-pending)."}, []string{"group", "state"})
	m.shardKeys = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cairn_shard_group_keys",
		Help: "Keys held by this member's replica of a shard group, including frozen ones awaiting hand-off."}, []string{"group"})
	m.reg.MustRegister(m.shardStates, m.shardKeys)
	m.reg.MustRegister(m.proposals, m.proposalsFailed, m.writesRefused, m.fsync, m.writeDuration, m.snapshotBytes, m.leaderChanges, m.peerSent,
		m.applied, m.committed, m.lastIndex, m.term, m.isLeader, m.hasLeader, m.keys,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// observe samples gauges; called on a timer by watchNode.
func (m *metrics) observe(g *group) {
	lead := g.node.Leader()
	if lead != m.lastLeader {
		if m.lastLeader != raft.None || lead != raft.None {
			m.leaderChanges.Inc()
		}
		m.lastLeader = lead
	}
	m.applied.Set(float64(g.sm.appliedIndex()))
	st := g.node.Status()
	m.committed.Set(float64(st.Commit))
	m.lastIndex.Set(float64(st.LastIndex))
	m.term.Set(float64(g.node.Term()))
	m.isLeader.Set(b2f(lead == g.id))
	m.hasLeader.Set(b2f(lead != raft.None))
	m.keys.Set(float64(g.stats().Keys))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (s *Server) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	if s.cfg.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if s.main.node.Leader() == raft.None {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, `{"health":"false","reason":"no leader"}`)
			return
		}
		fmt.Fprintln(w, `{"health":"true"}`)
	})
	return mux
}

// timedStorage measures WAL saves and snapshot sizes.
type timedStorage struct {
	raftnode.DiskStorage
	m *metrics
}

func (t *timedStorage) Save(hs raft.HardState, ents []raft.Entry, sync bool) error {
	if len(ents) == 0 && hs.IsEmpty() {
		return nil
	}
	start := time.Now()
	err := t.DiskStorage.Save(hs, ents, sync)
	t.m.fsync.Observe(time.Since(start).Seconds())
	return err
}

func (t *timedStorage) CreateSnapshot(index uint64, cs raft.ConfState, keep uint64, write func(io.Writer) error) error {
	var n int64
	err := t.DiskStorage.CreateSnapshot(index, cs, keep, func(w io.Writer) error {
		cw := &countWriter{w: w}
		err := write(cw)
		n = cw.n
		return err
	})
	if err == nil {
		t.m.snapshotBytes.Observe(float64(n))
	}
	return err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// countingTransport counts messages sent to peers.
type countingTransport struct {
	raftnode.Transport
	m *metrics
}

func (c *countingTransport) Send(msgs []raft.Message) {
	c.m.peerSent.Add(float64(len(msgs)))
	c.Transport.Send(msgs)
}
