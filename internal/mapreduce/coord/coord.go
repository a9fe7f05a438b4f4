package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
)

// ErrOutputExists means the output directory exists and Overwrite is off.
var ErrOutputExists = errors.New("output directory exists (use --overwrite to replace it)")

// Clock tells the time. Tests may inject a fake one.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Config configures a Coordinator.
type Config struct {
	// DataDir holds the persisted job state; empty means no persistence.
	DataDir string
	// Registry resolves app names. Required.
	Registry *job.Registry
	// Sched holds the scheduling policy.
	Sched sched.Config
	// Clock defaults to the wall clock.
	Clock Clock
	// TickInterval is how often the scheduler's Tick runs (default 200ms).
	TickInterval time.Duration
	// LongPoll is how long a task request waits for work before answering
	// "wait" (default 1s).
	LongPoll time.Duration
	// Logf logs; nil discards.
	Logf func(format string, args ...any)
}

const stateFile = "state.json"

// Coordinator serves one scheduler over HTTP.
type Coordinator struct {
	cfg     Config
	mu      sync.Mutex
	s       *sched.Scheduler
	changed chan struct{} // closed and replaced whenever state changes
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	srv     *http.Server
}

// New returns a coordinator, resuming from DataDir's state if there is one.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Registry == nil {
		return nil, errors.New("coord: Config.Registry is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.TickInterval <= 0 {
		cfg.TickInterval = 200 * time.Millisecond
	}
	if cfg.LongPoll <= 0 {
		cfg.LongPoll = time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	c := &Coordinator{cfg: cfg, changed: make(chan struct{}), stop: make(chan struct{})}
	c.s = sched.New(cfg.Sched)
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(filepath.Join(cfg.DataDir, stateFile))
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, err
		default:
			var st sched.State
			if err := json.Unmarshal(data, &st); err != nil {
				return nil, fmt.Errorf("coord: corrupt state file %s: %w", filepath.Join(cfg.DataDir, stateFile), err)
			}
			c.s = sched.Restore(cfg.Sched, st)
			for _, j := range c.s.Jobs() {
				if j.Status == sched.JobSucceeded {
					finalizeOutput(j.Spec.Output, true)
				}
			}
			c.cfg.Logf("resumed %d job(s) from %s", len(st.Jobs), cfg.DataDir)
			if err := c.persistLocked(); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// Serve serves the API on ln and runs the tick loop until Close.
func (c *Coordinator) Serve(ln net.Listener) error {
	c.mu.Lock()
	c.srv = &http.Server{Handler: c.Handler(), ReadHeaderTimeout: 10 * time.Second}
	srv := c.srv
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		t := time.NewTicker(c.cfg.TickInterval)
		defer t.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-t.C:
				c.Tick()
			}
		}
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops serving. It does not wait for workers.
func (c *Coordinator) Close() error {
	c.once.Do(func() { close(c.stop) })
	c.mu.Lock()
	srv := c.srv
	c.mu.Unlock()
	var err error
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err = srv.Shutdown(ctx)
		if err != nil {
			srv.Close()
		}
	}
	c.wg.Wait()
	return err
}

// Shutdown tells every worker asking for work to exit.
func (c *Coordinator) Shutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s.Shutdown()
	c.afterLocked()
}

// Tick runs one scheduler tick.
func (c *Coordinator) Tick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s.Tick(c.cfg.Clock.Now())
	c.afterLocked()
}

// afterLocked persists, handles finished jobs and wakes long polls after
// a state change.
func (c *Coordinator) afterLocked() {
	if c.s.Dirty() {
		if err := c.persistLocked(); err != nil {
			c.cfg.Logf("persist state: %v", err)
		}
	}
	for _, ev := range c.s.TakeEvents() {
		j, err := c.s.Job(ev.Job)
		if err != nil {
			continue
		}
		c.cfg.Logf("%s %s (%s)", ev.Job, ev.Status, j.Error)
		if err := finalizeOutput(j.Spec.Output, ev.Status == sched.JobSucceeded); err != nil {
			c.cfg.Logf("%s: finalize output: %v", ev.Job, err)
		}
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Coordinator) persistLocked() error {
	if c.cfg.DataDir == "" {
		c.s.ClearDirty()
		return nil
	}
	data, err := json.Marshal(c.s.State())
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(c.cfg.DataDir, stateFile), data); err != nil {
		return err
	}
	c.s.ClearDirty()
	return nil
}

// WriteFileAtomic replaces name with data so that a crash leaves either
// the old or the new content: temp file, fsync, rename, fsync directory.
func WriteFileAtomic(name string, data []byte) error {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so a rename in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// TempDirName is the directory under a job's output where reducers write
// before renaming into place.
const TempDirName = "_temporary"

// finalizeOutput removes the output's temporary directory and, on success,
// writes the _SUCCESS marker.
func finalizeOutput(out string, ok bool) error {
	if err := os.RemoveAll(filepath.Join(out, TempDirName)); err != nil {
		return err
	}
	if ok {
		if _, err := os.Stat(filepath.Join(out, "_SUCCESS")); err == nil {
			return nil
		}
		if err := os.WriteFile(filepath.Join(out, "_SUCCESS"), nil, 0o644); err != nil {
			return err
		}
		return SyncDir(out)
	}
	// A failed job leaves no empty output directory behind, so the same
	// command can be run again.
	os.Remove(out)
	return nil
}

// prepareOutput refuses an existing output directory unless overwrite, in
// which case it removes what a previous job wrote there.
func prepareOutput(out string, overwrite bool) error {
	ents, err := os.ReadDir(out)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("output directory: %w", err)
	case !overwrite:
		return fmt.Errorf("%w: %s", ErrOutputExists, out)
	default:
		for _, e := range ents {
			n := e.Name()
			if strings.HasPrefix(n, "part-") || n == "_SUCCESS" || n == TempDirName {
				if err := os.RemoveAll(filepath.Join(out, n)); err != nil {
					return err
				}
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(out, TempDirName), 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	return nil
}

// Submit plans and queues a job. Errors are meant for the user: unknown
// app or flag, missing or unreadable input, existing output.
func (c *Coordinator) Submit(spec job.Spec) (string, error) {
	if err := spec.Validate(); err != nil {
		return "", err
	}
	app, err := c.cfg.Registry.Lookup(spec.App)
	if err != nil {
		return "", err
	}
	known := map[string]bool{}
	for _, f := range app.Flags {
		known[f.Name] = true
	}
	for k := range spec.Args {
		if !known[k] {
			return "", fmt.Errorf("%w: app %s has no flag --%s", job.ErrBadSpec, app.Name, k)
		}
	}
	files, err := job.ExpandInputs(spec.Inputs)
	if err != nil {
		return "", err
	}
	if abs, err := filepath.Abs(spec.Output); err == nil {
		spec.Output = abs
	}
	args := app.WithDefaults(spec.Args)
	if app.Plan != nil {
		args, err = app.Plan(job.PlanInput{Files: files, NReduce: spec.NReduce, Args: args})
		if err != nil {
			return "", fmt.Errorf("%s: plan: %w", app.Name, err)
		}
	}
	// Build the task functions once here, so bad flags fail the submit,
	// not every task.
	if _, err := app.New(args); err != nil {
		return "", fmt.Errorf("%s: %w", app.Name, err)
	}
	splits, err := job.PlanSplits(files, spec.SplitSize, app.LineNumbers)
	if err != nil {
		return "", err
	}
	if err := prepareOutput(spec.Output, spec.Overwrite); err != nil {
		return "", err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.s.Submit(spec, args, splits, c.cfg.Clock.Now())
	c.cfg.Logf("%s submitted: app %s, %d map and %d reduce tasks, output %s", id, spec.App, len(splits), spec.NReduce, spec.Output)
	c.afterLocked()
	return id, nil
}

// Unfinished returns the ID of a queued or running job with the same
// specification as spec, if there is one: a restarted `run` resumes it
// instead of submitting the job again.
func (c *Coordinator) Unfinished(spec job.Spec) (string, bool) {
	if abs, err := filepath.Abs(spec.Output); err == nil {
		spec.Output = abs
	}
	want, _ := json.Marshal(normalize(spec))
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, j := range c.s.Jobs() {
		if j.Status != sched.JobQueued && j.Status != sched.JobRunning {
			continue
		}
		got, _ := json.Marshal(normalize(j.Spec))
		if string(got) == string(want) {
			return j.ID, true
		}
	}
	return "", false
}

func normalize(s job.Spec) job.Spec {
	if len(s.Args) == 0 {
		s.Args = nil
	}
	if s.SplitSize == 0 {
		s.SplitSize = job.DefaultSplitSize
	}
	s.Overwrite = false
	return s
}

// Status returns the coordinator's state for the status page.
func (c *Coordinator) Status() wire.Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Clock.Now()
	st := wire.Status{Now: now, Tasks: map[string][]*sched.Task{}}
	for _, j := range c.s.Jobs() {
		st.Jobs = append(st.Jobs, wire.Summarize(j, now))
		var ts []*sched.Task
		for _, t := range append(append([]*sched.Task(nil), j.Maps...), j.Reduces...) {
			cp := *t
			cp.Running = append([]sched.Attempt(nil), t.Running...)
			cp.Counters = nil
			ts = append(ts, &cp)
		}
		st.Tasks[j.ID] = ts
	}
	for _, w := range c.s.Workers() {
		cp := *w
		st.Workers = append(st.Workers, &cp)
	}
	return st
}

// Job returns one job's summary.
func (c *Coordinator) Job(id string) (wire.JobStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j, err := c.s.Job(id)
	if err != nil {
		return wire.JobStatus{}, err
	}
	return wire.Summarize(j, c.cfg.Clock.Now()), nil
}

// Wait blocks until the job finishes or ctx ends.
func (c *Coordinator) Wait(ctx context.Context, id string) (wire.JobStatus, error) {
	for {
		c.mu.Lock()
		j, err := c.s.Job(id)
		ch := c.changed
		var st wire.JobStatus
		if err == nil {
			st = wire.Summarize(j, c.cfg.Clock.Now())
		}
		c.mu.Unlock()
		if err != nil {
			return st, err
		}
		if st.Status == sched.JobSucceeded || st.Status == sched.JobFailed {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-ch:
		}
	}
}
