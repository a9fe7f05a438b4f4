package mrtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/apps"
	"github.com/cairn-db/cairn/internal/mapreduce/coord"
	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
	"github.com/cairn-db/cairn/internal/mapreduce/worker"
)

// FastSched is a scheduling policy for tests: failures are detected in
// about a second.
var FastSched = sched.Config{
	HeartbeatTimeout: 700 * time.Millisecond,
	TaskTimeout:      3 * time.Second,
	BackupMinAge:     300 * time.Millisecond,
	BackupFactor:     2,
}

// Options configure a Cluster.
type Options struct {
	Workers  int
	Sched    sched.Config // FastSched if zero
	DataDir  string       // coordinator state; a temp dir if empty
	Registry *job.Registry
	// Hook returns the fault hook of the i-th worker started (nil: none).
	Hook func(i int) worker.FaultHook
	// Respawn starts a replacement whenever a worker crashes, up to this
	// many times.
	Respawn int
}

// Cluster is an in-process coordinator with workers.
type Cluster struct {
	T        testing.TB
	Opts     Options
	Registry *job.Registry
	Addr     string
	Coord    *coord.Coordinator

	mu       sync.Mutex
	coordErr chan error
	workers  []*Worker
	started  int
	respawns int
	closed   bool
}

// Worker is one in-process worker.
type Worker struct {
	W      *worker.Worker
	Dir    string
	cancel context.CancelFunc
	Done   chan error
}

// Start starts a cluster; it is shut down by t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Sched == (sched.Config{}) {
		opts.Sched = FastSched
	}
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	reg := opts.Registry
	if reg == nil {
		reg = &job.Registry{}
		if err := apps.Register(reg); err != nil {
			t.Fatal(err)
		}
	}
	c := &Cluster{T: t, Opts: opts, Registry: reg}
	c.startCoord("127.0.0.1:0")
	for i := 0; i < opts.Workers; i++ {
		c.AddWorker()
	}
	t.Cleanup(c.Close)
	return c
}

func (c *Cluster) startCoord(addr string) {
	c.T.Helper()
	co, err := coord.New(coord.Config{
		DataDir: c.Opts.DataDir, Registry: c.Registry, Sched: c.Opts.Sched,
		TickInterval: 50 * time.Millisecond, LongPoll: 500 * time.Millisecond,
		Logf: c.logf("coord"),
	})
	if err != nil {
		c.T.Fatal(err)
	}
	var ln net.Listener
	for i := 0; ; i++ {
		ln, err = net.Listen("tcp", addr)
		if err == nil || i > 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		c.T.Fatal(err)
	}
	c.Addr = ln.Addr().String()
	c.Coord = co
	ch := make(chan error, 1)
	c.coordErr = ch
	go func() { ch <- co.Serve(ln) }()
}

func (c *Cluster) logf(who string) func(string, ...any) {
	return func(format string, args ...any) {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if !closed && testing.Verbose() {
			c.T.Logf("%s: %s", who, fmt.Sprintf(format, args...))
		}
	}
}

// AddWorker starts one more worker with its own directory.
func (c *Cluster) AddWorker() *Worker {
	c.T.Helper()
	c.mu.Lock()
	i := c.started
	c.started++
	c.mu.Unlock()
	var hook worker.FaultHook
	if c.Opts.Hook != nil {
		hook = c.Opts.Hook(i)
	}
	dir := filepath.Join(c.T.TempDir(), fmt.Sprintf("worker-%d", i))
	w, err := worker.New(worker.Config{
		Coordinator: c.Addr, DataDir: dir, ID: fmt.Sprintf("w%d", i), Registry: c.Registry,
		HeartbeatInterval: 100 * time.Millisecond, FaultHook: hook, Logf: c.logf(fmt.Sprintf("w%d", i)),
		SortMemory: 1 << 20,
	})
	if err != nil {
		c.T.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Worker{W: w, Dir: dir, cancel: cancel, Done: make(chan error, 1)}
	go func() {
		err := w.Run(ctx)
		h.Done <- err
		if errors.Is(err, worker.ErrCrashed) {
			c.mu.Lock()
			again := !c.closed && c.respawns < c.Opts.Respawn
			if again {
				c.respawns++
			}
			c.mu.Unlock()
			if again {
				c.AddWorker()
			}
		}
	}()
	c.mu.Lock()
	c.workers = append(c.workers, h)
	c.mu.Unlock()
	return h
}

// Wait waits up to timeout for the worker's Run to return, and returns
// whether it returned and with which error.
func (w *Worker) Wait(timeout time.Duration) (bool, error) {
	select {
	case err := <-w.Done:
		w.Done <- err
		return true, err
	case <-time.After(timeout):
		return false, nil
	}
}

// Stop stops the worker (it returns from Run).
func (w *Worker) Stop() {
	w.cancel()
}

// RestartCoordinator stops the coordinator and starts a new one on the
// same address and data directory.
func (c *Cluster) RestartCoordinator() {
	c.T.Helper()
	c.Coord.Close()
	<-c.coordErr
	c.startCoord(c.Addr)
}

// Close stops everything.
func (c *Cluster) Close() {
	c.mu.Lock()
	c.closed = true
	ws := c.workers
	c.mu.Unlock()
	c.Coord.Close()
	for _, w := range ws {
		w.cancel()
	}
	for _, w := range ws {
		if ok, _ := w.Wait(10 * time.Second); !ok {
			c.T.Errorf("worker %s did not stop", w.W.ID())
		}
	}
}

// Submit submits a job and returns its ID.
func (c *Cluster) Submit(spec job.Spec) (string, error) {
	var rep wire.SubmitReply
	err := wire.NewClient(c.Addr, 30*time.Second).Call(context.Background(), wire.PathJobs, spec, &rep)
	return rep.Job, err
}

// Wait waits up to timeout for the job to finish on the current
// coordinator.
func (c *Cluster) Wait(id string, timeout time.Duration) wire.JobStatus {
	c.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := c.Coord.Wait(ctx, id)
	if err != nil {
		c.T.Fatalf("job %s: %v (status %+v)", id, err, st)
	}
	return st
}

// Run submits a job, waits for it and fails the test unless it succeeded.
func (c *Cluster) Run(spec job.Spec, timeout time.Duration) wire.JobStatus {
	c.T.Helper()
	id, err := c.Submit(spec)
	if err != nil {
		c.T.Fatalf("submit: %v", err)
	}
	st := c.Wait(id, timeout)
	if st.Status != sched.JobSucceeded {
		c.T.Fatalf("job %s %s: %s", id, st.Status, st.Error)
	}
	return st
}

// Tasks returns the tasks of a job as the coordinator sees them.
func (c *Cluster) Tasks(id string) []*sched.Task {
	return c.Coord.Status().Tasks[id]
}

// ReadOutput checks an output directory holds exactly part-00000 ..
// part-(r-1), _SUCCESS and nothing else, and returns the lines of the
// parts in order.
func ReadOutput(t testing.TB, dir string, r int) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := []string{"_SUCCESS"}
	for i := 0; i < r; i++ {
		want = append(want, job.OutputName(i))
	}
	sort.Strings(want)
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("output directory holds %v, want %v", names, want)
	}
	var lines []string
	for i := 0; i < r; i++ {
		data, err := os.ReadFile(filepath.Join(dir, job.OutputName(i)))
		if err != nil {
			t.Fatal(err)
		}
		s := string(data)
		if s == "" {
			continue
		}
		if !strings.HasSuffix(s, "\n") {
			t.Fatalf("%s does not end with a newline", job.OutputName(i))
		}
		lines = append(lines, strings.Split(strings.TrimSuffix(s, "\n"), "\n")...)
	}
	return lines
}
