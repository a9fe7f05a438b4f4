package sched

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
)

// ErrUnknownJob means no job has the given ID.
var ErrUnknownJob = errors.New("sched: unknown job")

// Config holds the scheduling policy knobs. Zero fields take defaults.
type Config struct {
	// HeartbeatTimeout: a worker not heard from for this long is dead.
	HeartbeatTimeout time.Duration
	// TaskTimeout: an attempt running this long may get a backup even
	// without a median to compare with (a hung task).
	TaskTimeout time.Duration
	// BackupFactor and BackupMinAge: see the package comment (§3.6).
	BackupFactor float64
	BackupMinAge time.Duration
	// MaxFailures: reported failures of one task before the job fails.
	MaxFailures int
}

// Defaults for Config.
const (
	DefaultHeartbeatTimeout = 10 * time.Second
	DefaultTaskTimeout      = 10 * time.Minute
	DefaultBackupFactor     = 2.0
	DefaultBackupMinAge     = 2 * time.Second
	DefaultMaxFailures      = 4
)

func (c Config) withDefaults() Config {
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.TaskTimeout <= 0 {
		c.TaskTimeout = DefaultTaskTimeout
	}
	if c.BackupFactor <= 0 {
		c.BackupFactor = DefaultBackupFactor
	}
	if c.BackupMinAge <= 0 {
		c.BackupMinAge = DefaultBackupMinAge
	}
	if c.MaxFailures <= 0 {
		c.MaxFailures = DefaultMaxFailures
	}
	return c
}

// Kind of a task or an assignment.
const (
	KindMap      = "map"
	KindReduce   = "reduce"
	KindWait     = "wait"     // nothing to do now; ask again
	KindRegister = "register" // the coordinator does not know this worker
	KindExit     = "exit"     // the coordinator is shutting down
)

// Job status values.
const (
	JobQueued    = "queued"
	JobRunning   = "running"
	JobSucceeded = "succeeded"
	JobFailed    = "failed"
)

// Task state values.
const (
	TaskIdle    = "idle"
	TaskRunning = "running"
	TaskDone    = "done"
)

// Location says where a committed map task's output can be fetched.
type Location struct {
	Task    int    `json:"task"`
	Attempt uint64 `json:"attempt"`
	Worker  string `json:"worker"`
	Addr    string `json:"addr"`
}

// Assignment is the answer to RequestTask.
type Assignment struct {
	Kind    string   `json:"kind"`
	Job     string   `json:"job,omitempty"`
	Task    int      `json:"task"`
	Attempt uint64   `json:"attempt,omitempty"`
	App     string   `json:"app,omitempty"`
	Args    job.Args `json:"args,omitempty"`
	NMap    int      `json:"nMap,omitempty"`
	NReduce int      `json:"nReduce,omitempty"`
	// Split is the input of a map task.
	Split *job.Split `json:"split,omitempty"`
	// Output and Inputs are for a reduce task: the output directory and
	// the location of every map task's output.
	Output string     `json:"output,omitempty"`
	Inputs []Location `json:"inputs,omitempty"`
}

// Attempt is one execution of a task on a worker.
type Attempt struct {
	ID     uint64    `json:"id"`
	Worker string    `json:"worker"`
	Start  time.Time `json:"start"`
	Backup bool      `json:"backup,omitempty"`
}

// Task is one map or reduce task of a job.
type Task struct {
	Kind     string       `json:"kind"`
	Index    int          `json:"index"`
	State    string       `json:"state"`
	Running  []Attempt    `json:"running,omitempty"`
	Done     *Location    `json:"done,omitempty"` // committed attempt
	Start    time.Time    `json:"start,omitzero"` // committed attempt's start
	End      time.Time    `json:"end,omitzero"`
	Counters job.Counters `json:"counters,omitempty"`
	Failures int          `json:"failures,omitempty"`
	LastErr  string       `json:"lastErr,omitempty"`
	// Executions counts attempts started, for tests and the status page.
	Executions int `json:"executions"`
}

func (t *Task) duration() time.Duration { return t.End.Sub(t.Start) }

// Job is a submitted job and its tasks.
type Job struct {
	ID        string      `json:"id"`
	Spec      job.Spec    `json:"spec"`
	Args      job.Args    `json:"args"` // planned args, given to every task
	Splits    []job.Split `json:"splits"`
	Status    string      `json:"status"`
	Error     string      `json:"error,omitempty"`
	Submitted time.Time   `json:"submitted"`
	Finished  time.Time   `json:"finished,omitzero"`
	Maps      []*Task     `json:"maps"`
	Reduces   []*Task     `json:"reduces"`
}

// MapsDone and ReducesDone count committed tasks.
func (j *Job) MapsDone() int    { return countDone(j.Maps) }
func (j *Job) ReducesDone() int { return countDone(j.Reduces) }

func countDone(ts []*Task) int {
	n := 0
	for _, t := range ts {
		if t.State == TaskDone {
			n++
		}
	}
	return n
}

// Counters sums the counters of committed tasks: each task counted once.
func (j *Job) Counters() job.Counters {
	c := job.Counters{}
	for _, ts := range [][]*Task{j.Maps, j.Reduces} {
		for _, t := range ts {
			if t.State == TaskDone {
				c.Add(t.Counters)
			}
		}
	}
	return c
}

func (j *Job) finished() bool { return j.Status == JobSucceeded || j.Status == JobFailed }

// Worker is what the scheduler knows of a worker.
type Worker struct {
	ID       string    `json:"id"`
	Addr     string    `json:"addr"`
	Alive    bool      `json:"alive"`
	LastSeen time.Time `json:"lastSeen"`
	// cancel holds attempts the worker should abandon, delivered by the
	// next heartbeat.
	cancel []uint64
}

// Event tells the shell about a job that just finished, so it can do the
// I/O that goes with it (finalize or clean the output directory).
type Event struct {
	Job    string
	Status string
}

type ref struct {
	job  *Job
	task *Task
}

// Scheduler is the scheduling state machine. It is not safe for concurrent
// use: the shell serializes calls.
type Scheduler struct {
	cfg      Config
	epoch    uint64
	seq      uint64
	nextJob  int
	jobs     []*Job
	workers  map[string]*Worker
	attempts map[uint64]ref
	events   []Event
	dirty    bool
	shutdown bool
}

// New returns an empty scheduler.
func New(cfg Config) *Scheduler {
	return &Scheduler{cfg: cfg.withDefaults(), epoch: 1, workers: map[string]*Worker{}, attempts: map[uint64]ref{}}
}

// Dirty reports whether durable state changed since the last ClearDirty:
// a job was submitted or finished, or a task was committed or reset.
func (s *Scheduler) Dirty() bool { return s.dirty }

// ClearDirty is called by the shell after it persisted State.
func (s *Scheduler) ClearDirty() { s.dirty = false }

// TakeEvents returns and clears the pending events.
func (s *Scheduler) TakeEvents() []Event {
	e := s.events
	s.events = nil
	return e
}

// Shutdown makes every later RequestTask answer KindExit.
func (s *Scheduler) Shutdown() { s.shutdown = true }

// Submit adds a job whose inputs were already planned into splits. It
// returns the job ID.
func (s *Scheduler) Submit(spec job.Spec, args job.Args, splits []job.Split, now time.Time) string {
	s.nextJob++
	j := &Job{
		ID: fmt.Sprintf("job-%04d", s.nextJob), Spec: spec, Args: args, Splits: splits,
		Status: JobQueued, Submitted: now,
	}
	for i := range splits {
		j.Maps = append(j.Maps, &Task{Kind: KindMap, Index: i, State: TaskIdle})
	}
	for i := 0; i < spec.NReduce; i++ {
		j.Reduces = append(j.Reduces, &Task{Kind: KindReduce, Index: i, State: TaskIdle})
	}
	s.jobs = append(s.jobs, j)
	s.dirty = true
	return j.ID
}

// Job returns the job with the given ID.
func (s *Scheduler) Job(id string) (*Job, error) {
	for _, j := range s.jobs {
		if j.ID == id {
			return j, nil
		}
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownJob, id)
}

// Jobs returns all jobs in submission order. The caller must not modify
// them.
func (s *Scheduler) Jobs() []*Job { return s.jobs }

// Workers returns the known workers sorted by ID.
func (s *Scheduler) Workers() []*Worker {
	out := make([]*Worker, 0, len(s.workers))
	for _, w := range s.workers {
		out = append(out, w)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// active returns the job being run: the first unfinished job, FIFO.
func (s *Scheduler) active() *Job {
	for _, j := range s.jobs {
		if !j.finished() {
			return j
		}
	}
	return nil
}

// RegisterWorker adds or revives a worker.
func (s *Scheduler) RegisterWorker(id, addr string, now time.Time) {
	w := s.workers[id]
	if w == nil {
		w = &Worker{ID: id}
		s.workers[id] = w
	}
	w.Addr, w.Alive, w.LastSeen = addr, true, now
}

func (s *Scheduler) seen(id string, now time.Time) *Worker {
	w := s.workers[id]
	if w == nil || !w.Alive {
		return nil
	}
	w.LastSeen = now
	return w
}

// HeartbeatReply is the answer to Heartbeat.
type HeartbeatReply struct {
	// Known is false if the worker must register (again).
	Known bool `json:"known"`
	// Cancel lists attempts the worker should abandon: their task was
	// committed by another attempt, or their job failed.
	Cancel []uint64 `json:"cancel,omitempty"`
	// Finished lists jobs that are over; the worker may delete their
	// intermediate files.
	Finished []string `json:"finished,omitempty"`
}

// Heartbeat records that the worker is alive.
func (s *Scheduler) Heartbeat(id string, now time.Time) HeartbeatReply {
	w := s.seen(id, now)
	if w == nil {
		return HeartbeatReply{}
	}
	r := HeartbeatReply{Known: true, Cancel: w.cancel}
	w.cancel = nil
	for _, j := range s.jobs {
		if j.finished() {
			r.Finished = append(r.Finished, j.ID)
		}
	}
	return r
}

// RequestTask gives the worker a task, or tells it to wait, register or
// exit. A worker asks only when it runs nothing, so any attempt the
// scheduler still has on it is lost and goes back to idle.
func (s *Scheduler) RequestTask(id string, now time.Time) Assignment {
	if s.shutdown {
		return Assignment{Kind: KindExit}
	}
	w := s.seen(id, now)
	if w == nil {
		return Assignment{Kind: KindRegister}
	}
	s.dropAttemptsOf(id)
	j := s.active()
	if j == nil {
		return Assignment{Kind: KindWait}
	}
	if j.Status == JobQueued {
		j.Status = JobRunning
	}
	tasks := j.Maps
	if j.MapsDone() == len(j.Maps) {
		tasks = j.Reduces
	}
	t := s.pick(tasks, id, now)
	if t == nil {
		return Assignment{Kind: KindWait}
	}
	s.seq++
	a := Attempt{ID: s.epoch<<32 | s.seq, Worker: id, Start: now, Backup: t.State == TaskRunning}
	t.State = TaskRunning
	t.Running = append(t.Running, a)
	t.Executions++
	s.attempts[a.ID] = ref{j, t}
	as := Assignment{
		Kind: t.Kind, Job: j.ID, Task: t.Index, Attempt: a.ID, App: j.Spec.App, Args: j.Args,
		NMap: len(j.Maps), NReduce: len(j.Reduces),
	}
	if t.Kind == KindMap {
		sp := j.Splits[t.Index]
		as.Split = &sp
	} else {
		as.Output = j.Spec.Output
		for _, m := range j.Maps {
			as.Inputs = append(as.Inputs, *m.Done)
		}
	}
	return as
}

// pick chooses the lowest idle task, or else a task deserving a backup.
func (s *Scheduler) pick(tasks []*Task, worker string, now time.Time) *Task {
	for _, t := range tasks {
		if t.State == TaskIdle {
			return t
		}
	}
	// §3.6: the phase's tail. Back up the longest-running single-attempt
	// task that is slow compared with its completed peers.
	var durs []time.Duration
	for _, t := range tasks {
		if t.State == TaskDone {
			durs = append(durs, t.duration())
		}
	}
	threshold := time.Duration(-1)
	if len(durs) > 0 {
		slices.Sort(durs)
		threshold = time.Duration(s.cfg.BackupFactor * float64(durs[len(durs)/2]))
		threshold = max(threshold, s.cfg.BackupMinAge)
	}
	var best *Task
	var bestAge time.Duration
	for _, t := range tasks {
		if t.State != TaskRunning || slices.ContainsFunc(t.Running, func(a Attempt) bool { return a.Worker == worker }) {
			continue
		}
		// The youngest attempt decides: a task gets one backup when it is
		// slow, and one more only when every attempt it has is hung.
		age := now.Sub(t.Running[len(t.Running)-1].Start)
		slow := age >= s.cfg.TaskTimeout || (len(t.Running) == 1 && threshold >= 0 && age >= threshold)
		if slow && (best == nil || age > bestAge) {
			best, bestAge = t, age
		}
	}
	return best
}

// dropAttemptsOf forgets every running attempt of the worker.
func (s *Scheduler) dropAttemptsOf(worker string) {
	for _, j := range s.jobs {
		for _, t := range j.tasks() {
			for _, a := range slices.Clone(t.Running) {
				if a.Worker == worker {
					s.removeAttempt(a.ID)
				}
			}
		}
	}
}

func (j *Job) tasks() []*Task {
	return append(slices.Clip(j.Maps), j.Reduces...)
}

func (t *Task) running(id uint64) Attempt {
	for _, a := range t.Running {
		if a.ID == id {
			return a
		}
	}
	return Attempt{}
}

// removeAttempt forgets a running attempt; its task goes back to idle if no
// other attempt runs.
func (s *Scheduler) removeAttempt(id uint64) {
	r, ok := s.attempts[id]
	if !ok {
		return
	}
	delete(s.attempts, id)
	t := r.task
	t.Running = slices.DeleteFunc(t.Running, func(a Attempt) bool { return a.ID == id })
	if len(t.Running) == 0 && t.State == TaskRunning {
		t.State = TaskIdle
	}
}

// Result is what a worker reports with a completed attempt.
type Result struct {
	Counters job.Counters `json:"counters,omitempty"`
}

// ReportDone commits the attempt if it is the first to complete its task.
// It returns whether the attempt was committed.
func (s *Scheduler) ReportDone(worker string, attempt uint64, res Result, now time.Time) bool {
	s.seen(worker, now)
	r, ok := s.attempts[attempt]
	if !ok {
		return false
	}
	a := r.task.running(attempt)
	if a.Worker != worker {
		return false
	}
	t, j := r.task, r.job
	for _, other := range t.Running {
		delete(s.attempts, other.ID)
		if other.ID != attempt {
			s.cancel(other)
		}
	}
	addr := ""
	if w := s.workers[worker]; w != nil {
		addr = w.Addr
	}
	t.Running = nil
	t.State = TaskDone
	t.Done = &Location{Task: t.Index, Attempt: attempt, Worker: worker, Addr: addr}
	t.Start, t.End = a.Start, now
	t.Counters = res.Counters
	s.dirty = true
	if j.ReducesDone() == len(j.Reduces) && j.MapsDone() == len(j.Maps) {
		s.finish(j, JobSucceeded, "", now)
	}
	return true
}

func (s *Scheduler) cancel(a Attempt) {
	if w := s.workers[a.Worker]; w != nil {
		w.cancel = append(w.cancel, a.ID)
	}
}

func (s *Scheduler) finish(j *Job, status, msg string, now time.Time) {
	j.Status, j.Error, j.Finished = status, msg, now
	for _, t := range j.tasks() {
		for _, a := range slices.Clone(t.Running) {
			s.cancel(a)
			s.removeAttempt(a.ID)
		}
	}
	s.events = append(s.events, Event{Job: j.ID, Status: status})
	s.dirty = true
}

// ReportFailed records that user code failed the attempt. The task is
// retried, or after Config.MaxFailures failures the job fails.
func (s *Scheduler) ReportFailed(worker string, attempt uint64, msg string, now time.Time) {
	s.seen(worker, now)
	r, ok := s.attempts[attempt]
	if !ok || r.task.running(attempt).Worker != worker {
		return
	}
	t, j := r.task, r.job
	s.removeAttempt(attempt)
	t.Failures++
	t.LastErr = msg
	if t.Failures >= s.cfg.MaxFailures {
		s.finish(j, JobFailed, fmt.Sprintf("%s task %d failed %d times; last error: %s", t.Kind, t.Index, t.Failures, msg), now)
	}
}

// MapOutput names one committed map attempt's output.
type MapOutput struct {
	Task    int    `json:"task"`
	Attempt uint64 `json:"attempt"`
}

// ReportFetchFailed records that a reduce attempt could not fetch the
// outputs of the given map attempts. Those map tasks, if those attempts
// are still the committed ones, are re-executed (their output is lost,
// §3.3), and the reduce attempt ends without counting as a failure.
func (s *Scheduler) ReportFetchFailed(worker string, attempt uint64, lost []MapOutput, now time.Time) {
	s.seen(worker, now)
	r, ok := s.attempts[attempt]
	if !ok || r.task.running(attempt).Worker != worker {
		return
	}
	j := r.job
	s.removeAttempt(attempt)
	for _, l := range lost {
		if l.Task >= 0 && l.Task < len(j.Maps) {
			m := j.Maps[l.Task]
			if m.State == TaskDone && m.Done.Attempt == l.Attempt {
				s.resetDone(m)
			}
		}
	}
}

func (s *Scheduler) resetDone(t *Task) {
	t.State, t.Done, t.Counters = TaskIdle, nil, nil
	s.dirty = true
}

// Tick advances time: workers silent for longer than HeartbeatTimeout are
// declared dead (§3.3).
func (s *Scheduler) Tick(now time.Time) {
	for _, w := range s.Workers() {
		if w.Alive && now.Sub(w.LastSeen) > s.cfg.HeartbeatTimeout {
			s.workerDied(w)
		}
	}
}

func (s *Scheduler) workerDied(w *Worker) {
	w.Alive = false
	w.cancel = nil
	s.dropAttemptsOf(w.ID)
	for _, j := range s.jobs {
		if j.finished() {
			continue
		}
		for _, m := range j.Maps {
			if m.State == TaskDone && m.Done.Worker == w.ID {
				s.resetDone(m)
			}
		}
	}
}

// State is the scheduler's durable state.
type State struct {
	Epoch   uint64 `json:"epoch"`
	NextJob int    `json:"nextJob"`
	Jobs    []*Job `json:"jobs"`
}

// State returns the durable state. It shares memory with the scheduler:
// marshal it before the next call.
func (s *Scheduler) State() State {
	return State{Epoch: s.epoch, NextJob: s.nextJob, Jobs: s.jobs}
}

// Restore returns a scheduler resuming from st, as after a coordinator
// restart: committed tasks stay committed, attempts that were running are
// forgotten (their tasks are idle), no worker is known until it registers
// again, and attempt IDs start a new epoch so they never collide with
// attempts of the previous incarnation.
func Restore(cfg Config, st State) *Scheduler {
	s := New(cfg)
	s.epoch = st.Epoch + 1
	s.nextJob = st.NextJob
	s.jobs = st.Jobs
	for _, j := range s.jobs {
		for _, t := range j.tasks() {
			t.Running = nil
			if t.State == TaskRunning {
				t.State = TaskIdle
			}
			if t.State == TaskDone && t.Done == nil {
				t.State = TaskIdle
			}
		}
	}
	s.dirty = true
	return s
}
