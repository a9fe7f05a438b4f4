package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
)

// ErrCrashed is returned by Run when a fault hook crashed the worker.
var ErrCrashed = errors.New("worker: crashed by fault hook")

// Fault is what a FaultHook asks the worker to do at a fault point.
type Fault int

// Faults.
const (
	// FaultNone: carry on.
	FaultNone Fault = iota
	// FaultCrash: stop at once, as if the process died: no report, no
	// more heartbeats, the shuffle server closes. Run returns ErrCrashed.
	FaultCrash
	// FaultHang: the task blocks forever; heartbeats continue (a stuck
	// task in a live process).
	FaultHang
	// FaultFreeze: the task blocks forever, heartbeats stop and the
	// shuffle server answers 503 (a stopped or partitioned machine).
	FaultFreeze
	// FaultError: the task fails as if user code returned an error.
	FaultError
)

// Fault points, the phase argument of a FaultHook.
const (
	PointMapStart    = "map-start"
	PointMapMid      = "map-mid" // half of the split's bytes read
	PointMapEnd      = "map-end" // output written, before the report
	PointReduceStart = "reduce-start"
	PointReduceMid   = "reduce-mid" // inputs fetched, first key reduced
	PointReduceEnd   = "reduce-end" // output renamed, before the report
)

// FaultHook is a test-only knob called at each fault point with the task
// index. It may also sleep, to make a slow worker.
type FaultHook func(point string, task int) Fault

// Config configures a worker.
type Config struct {
	// Coordinator is the coordinator's host:port. Required.
	Coordinator string
	// Listener serves the shuffle. If nil, Listen is used (default
	// "127.0.0.1:0").
	Listener net.Listener
	Listen   string
	// Advertise is the host:port reducers use to reach this worker
	// (default: the listener's address).
	Advertise string
	// DataDir is the local directory for intermediate files. Required.
	DataDir string
	// ID defaults to a random one.
	ID string
	// Registry resolves app names. Required.
	Registry *job.Registry
	// HeartbeatInterval defaults to 1s.
	HeartbeatInterval time.Duration
	// SortMemory bounds buffered map output (kv.DefaultSortMemory if 0).
	SortMemory int
	// FaultHook is for tests; nil means no faults.
	FaultHook FaultHook
	// Logf logs; nil discards.
	Logf func(format string, args ...any)
}

// Worker is a running worker.
type Worker struct {
	cfg    Config
	rpc    *wire.Client
	poll   *wire.Client
	fetch  *http.Client
	ln     net.Listener
	srv    *http.Server
	addr   string
	mu     sync.Mutex
	cancel map[uint64]context.CancelFunc // running attempt
	frozen bool
}

// New validates cfg and opens the shuffle listener.
func New(cfg Config) (*Worker, error) {
	if cfg.Coordinator == "" || cfg.DataDir == "" || cfg.Registry == nil {
		return nil, errors.New("worker: Coordinator, DataDir and Registry are required")
	}
	if cfg.ID == "" {
		var b [4]byte
		rand.Read(b[:])
		host, _ := os.Hostname()
		cfg.ID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, err
	}
	ln := cfg.Listener
	if ln == nil {
		l := cfg.Listen
		if l == "" {
			l = "127.0.0.1:0"
		}
		var err error
		if ln, err = net.Listen("tcp", l); err != nil {
			return nil, fmt.Errorf("worker: shuffle listener: %w", err)
		}
	}
	addr := cfg.Advertise
	if addr == "" {
		addr = ln.Addr().String()
	}
	w := &Worker{
		cfg: cfg, ln: ln, addr: addr,
		rpc:    wire.NewClient(cfg.Coordinator, 10*time.Second),
		poll:   wire.NewClient(cfg.Coordinator, 60*time.Second),
		cancel: map[uint64]context.CancelFunc{},
		fetch: &http.Client{Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			ResponseHeaderTimeout: 10 * time.Second,
			MaxIdleConnsPerHost:   4,
		}},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /shuffle/{job}/{m}/{a}/{r}", w.serveShuffle)
	w.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return w, nil
}

// ID returns the worker's ID.
func (w *Worker) ID() string { return w.cfg.ID }

// Addr returns the shuffle address the worker advertises.
func (w *Worker) Addr() string { return w.addr }

var jobIDRe = regexp.MustCompile(`^job-[0-9]+$`)

func (w *Worker) serveShuffle(rw http.ResponseWriter, r *http.Request) {
	w.mu.Lock()
	frozen := w.frozen
	w.mu.Unlock()
	if frozen {
		http.Error(rw, "frozen", http.StatusServiceUnavailable)
		return
	}
	j := r.PathValue("job")
	m, err1 := strconv.Atoi(r.PathValue("m"))
	a, err2 := strconv.ParseUint(r.PathValue("a"), 10, 64)
	p, err3 := strconv.Atoi(r.PathValue("r"))
	if !jobIDRe.MatchString(j) || err1 != nil || err2 != nil || err3 != nil {
		http.Error(rw, "bad shuffle path", http.StatusBadRequest)
		return
	}
	f, err := os.Open(filepath.Join(w.mapDir(j, m, a), partName(p)))
	if err != nil {
		http.Error(rw, "no such map output", http.StatusNotFound)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	http.ServeContent(rw, r, "", st.ModTime(), f)
}

func (w *Worker) jobDir(j string) string { return filepath.Join(w.cfg.DataDir, j) }

func (w *Worker) mapDir(j string, m int, a uint64) string {
	return filepath.Join(w.jobDir(j), fmt.Sprintf("map-%d-%d", m, a))
}

func partName(r int) string { return fmt.Sprintf("part-%d", r) }

// Run registers and runs tasks until ctx ends (returns nil), the
// coordinator says exit (nil), or a fault hook crashes it (ErrCrashed).
func (w *Worker) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go w.srv.Serve(w.ln)
	defer w.srv.Close()

	if err := w.register(ctx); err != nil {
		return nil
	}
	var hb sync.WaitGroup
	hb.Add(1)
	go func() {
		defer hb.Done()
		w.heartbeats(ctx)
	}()
	defer hb.Wait()
	defer stop()

	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		var a sched.Assignment
		if err := w.poll.Call(ctx, wire.PathTask, wire.WorkerReq{ID: w.cfg.ID}, &a); err != nil {
			if ctx.Err() != nil {
				break
			}
			w.cfg.Logf("worker %s: ask for task: %v", w.cfg.ID, err)
			sleep(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		switch a.Kind {
		case sched.KindExit:
			return nil
		case sched.KindRegister:
			if err := w.register(ctx); err != nil {
				return nil
			}
		case sched.KindWait:
		case sched.KindMap, sched.KindReduce:
			if err := w.runAttempt(ctx, a); errors.Is(err, ErrCrashed) {
				w.cfg.Logf("worker %s: crashed by fault hook", w.cfg.ID)
				stop()
				w.srv.Close()
				return ErrCrashed
			}
		default:
			w.cfg.Logf("worker %s: unknown assignment kind %q", w.cfg.ID, a.Kind)
			sleep(ctx, time.Second)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (w *Worker) register(ctx context.Context) error {
	backoff := 50 * time.Millisecond
	for {
		err := w.rpc.Call(ctx, wire.PathRegister, wire.RegisterReq{ID: w.cfg.ID, Addr: w.addr}, nil)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.cfg.Logf("worker %s: register: %v", w.cfg.ID, err)
		sleep(ctx, backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (w *Worker) heartbeats(ctx context.Context) {
	t := time.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		frozen := w.frozen
		w.mu.Unlock()
		if frozen {
			continue
		}
		var rep sched.HeartbeatReply
		if err := w.rpc.Call(ctx, wire.PathHeartbeat, wire.WorkerReq{ID: w.cfg.ID}, &rep); err != nil {
			continue
		}
		if !rep.Known {
			w.register(ctx)
			continue
		}
		w.mu.Lock()
		for _, id := range rep.Cancel {
			if c := w.cancel[id]; c != nil {
				c()
			}
		}
		w.mu.Unlock()
		for _, j := range rep.Finished {
			if jobIDRe.MatchString(j) {
				os.RemoveAll(w.jobDir(j))
			}
		}
	}
}

// errCancelled means the coordinator cancelled the attempt.
var errCancelled = errors.New("attempt cancelled")

// fetchError is a reduce attempt's failure to fetch map outputs.
type fetchError struct {
	lost []sched.MapOutput
	err  error // the first failure
}

func (e *fetchError) Error() string {
	return fmt.Sprintf("cannot fetch %d map output(s); first: %v", len(e.lost), e.err)
}

func (w *Worker) runAttempt(ctx context.Context, a sched.Assignment) error {
	actx, cancel := context.WithCancel(ctx)
	w.mu.Lock()
	w.cancel[a.Attempt] = cancel
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.cancel, a.Attempt)
		w.mu.Unlock()
		cancel()
	}()
	t := &task{w: w, ctx: actx, wctx: ctx, a: a, counters: job.Counters{}}
	err := t.run()
	var fe *fetchError
	switch {
	case errors.Is(err, ErrCrashed):
		return err
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, errCancelled) || actx.Err() != nil:
		w.cfg.Logf("worker %s: %s task %d attempt %d cancelled", w.cfg.ID, a.Kind, a.Task, a.Attempt)
	case errors.As(err, &fe):
		w.report(ctx, wire.PathFetchFailed, wire.FetchFailedReq{ID: w.cfg.ID, Attempt: a.Attempt, Lost: fe.lost, Error: fe.Error()})
	case err != nil:
		msg := err.Error()
		w.cfg.Logf("worker %s: %s task %d failed: %s", w.cfg.ID, a.Kind, a.Task, msg)
		w.report(ctx, wire.PathFailed, wire.FailedReq{ID: w.cfg.ID, Attempt: a.Attempt, Error: msg})
	default:
		w.report(ctx, wire.PathDone, wire.DoneReq{ID: w.cfg.ID, Attempt: a.Attempt, Counters: t.counters})
	}
	return nil
}

// report retries a report until the coordinator answers: a coordinator
// restart must not lose it (if it is stale by then, it is ignored).
func (w *Worker) report(ctx context.Context, path string, req any) {
	backoff := 50 * time.Millisecond
	for i := 0; i < 50 && ctx.Err() == nil; i++ {
		err := w.rpc.Call(ctx, path, req, nil)
		if err == nil || errors.Is(err, wire.ErrRemote) {
			if err != nil {
				w.cfg.Logf("worker %s: report rejected: %v", w.cfg.ID, err)
			}
			return
		}
		sleep(ctx, backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

// fault runs the hook at a fault point.
func (t *task) fault(point string) error {
	h := t.w.cfg.FaultHook
	if h == nil {
		return nil
	}
	switch h(point, t.a.Task) {
	case FaultCrash:
		return ErrCrashed
	case FaultHang:
		<-t.wctx.Done()
		return t.wctx.Err()
	case FaultFreeze:
		t.w.mu.Lock()
		t.w.frozen = true
		t.w.mu.Unlock()
		<-t.wctx.Done()
		return t.wctx.Err()
	case FaultError:
		return fmt.Errorf("injected fault at %s", point)
	}
	return nil
}
