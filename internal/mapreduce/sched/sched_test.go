package sched

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

const sec = time.Second

// newJob returns a scheduler with workers w1..wn and one job of m maps and
// r reduces.
func newJob(t *testing.T, n, m, r int) (*Scheduler, string) {
	t.Helper()
	s := New(Config{HeartbeatTimeout: 5 * sec, BackupMinAge: 1 * sec, TaskTimeout: 60 * sec})
	for i := 1; i <= n; i++ {
		id := "w" + string(rune('0'+i))
		s.RegisterWorker(id, id+":1", t0)
	}
	var splits []job.Split
	for i := 0; i < m; i++ {
		splits = append(splits, job.Split{File: "f", Start: int64(i), End: int64(i + 1)})
	}
	id := s.Submit(job.Spec{App: "wc", Inputs: []string{"f"}, Output: "out", NReduce: r}, nil, splits, t0)
	return s, id
}

func mustKind(t *testing.T, a Assignment, kind string, task int) {
	t.Helper()
	if a.Kind != kind || (kind != KindWait && a.Task != task) {
		t.Fatalf("assignment = %+v, want %s %d", a, kind, task)
	}
}

func TestHappyPathAndExactlyOnceCounters(t *testing.T) {
	s, id := newJob(t, 2, 2, 2)
	a := s.RequestTask("w1", at(0))
	b := s.RequestTask("w2", at(0))
	mustKind(t, a, KindMap, 0)
	mustKind(t, b, KindMap, 1)
	mustKind(t, s.RequestTask("w3", at(0)), KindRegister, 0)
	c := job.Counters{"n": 1}
	if !s.ReportDone("w1", a.Attempt, Result{Counters: c}, at(sec)) {
		t.Fatal("first completion not committed")
	}
	if s.ReportDone("w1", a.Attempt, Result{Counters: c}, at(sec)) {
		t.Fatal("duplicate completion committed")
	}
	// Reduces wait for every map.
	mustKind(t, s.RequestTask("w1", at(sec)), KindWait, 0)
	s.ReportDone("w2", b.Attempt, Result{Counters: c}, at(sec))
	r0 := s.RequestTask("w1", at(2*sec))
	mustKind(t, r0, KindReduce, 0)
	if len(r0.Inputs) != 2 || r0.Inputs[1].Addr != "w2:1" || r0.Inputs[0].Attempt != a.Attempt {
		t.Fatalf("reduce inputs = %+v", r0.Inputs)
	}
	r1 := s.RequestTask("w2", at(2*sec))
	s.ReportDone("w1", r0.Attempt, Result{Counters: c}, at(3*sec))
	s.ReportDone("w2", r1.Attempt, Result{Counters: c}, at(3*sec))
	j, _ := s.Job(id)
	if j.Status != JobSucceeded {
		t.Fatalf("status %s", j.Status)
	}
	if got := j.Counters()["n"]; got != 4 {
		t.Fatalf("counter n = %d, want 4 (each task once)", got)
	}
	if ev := s.TakeEvents(); len(ev) != 1 || ev[0].Status != JobSucceeded {
		t.Fatalf("events %v", ev)
	}
}

// §3.3: a dead worker's in-progress and completed map tasks are re-executed;
// its completed reduce tasks are not.
func TestDeadWorkerReexecutesMaps(t *testing.T) {
	s, id := newJob(t, 2, 2, 2)
	a := s.RequestTask("w1", at(0))
	b := s.RequestTask("w2", at(0))
	s.ReportDone("w1", a.Attempt, Result{}, at(sec))
	s.ReportDone("w2", b.Attempt, Result{}, at(sec))
	r0 := s.RequestTask("w1", at(sec))
	s.ReportDone("w1", r0.Attempt, Result{}, at(2*sec))
	r1 := s.RequestTask("w2", at(2*sec))
	mustKind(t, r1, KindReduce, 1)
	// w1 keeps heartbeating, w2 goes silent.
	s.Heartbeat("w1", at(6*sec))
	s.Tick(at(6 * sec))
	s.Tick(at(7*sec + 1))
	j, _ := s.Job(id)
	if j.Maps[1].State != TaskIdle || j.Maps[0].State != TaskDone {
		t.Fatalf("maps after w2 died: %s %s", j.Maps[0].State, j.Maps[1].State)
	}
	if j.Reduces[0].State != TaskDone || j.Reduces[1].State != TaskIdle {
		t.Fatalf("reduces after w2 died: %s %s", j.Reduces[0].State, j.Reduces[1].State)
	}
	// The map runs again on w1 before the reduce.
	m := s.RequestTask("w1", at(8*sec))
	mustKind(t, m, KindMap, 1)
	if s.ReportDone("w2", r1.Attempt, Result{}, at(8*sec)) {
		t.Fatal("dead worker's attempt committed")
	}
	s.ReportDone("w1", m.Attempt, Result{}, at(9*sec))
	r := s.RequestTask("w1", at(9*sec))
	mustKind(t, r, KindReduce, 1)
	if r.Inputs[1].Worker != "w1" {
		t.Fatalf("reduce reads map 1 from %s", r.Inputs[1].Worker)
	}
	// A dead worker that comes back must register again.
	if hb := s.Heartbeat("w2", at(9*sec)); hb.Known {
		t.Fatal("dead worker still known")
	}
}

// §3.6: backups only in the tail of a phase, only for tasks much slower
// than their completed peers; the first finisher wins and the loser is
// cancelled.
func TestBackupTasks(t *testing.T) {
	s, id := newJob(t, 3, 4, 1)
	m0 := s.RequestTask("w1", at(0))
	m1 := s.RequestTask("w2", at(0))
	m2 := s.RequestTask("w3", at(0)) // the straggler
	s.ReportDone("w1", m0.Attempt, Result{}, at(sec))
	// An idle task exists: it is handed out, no backup.
	m3 := s.RequestTask("w1", at(sec))
	mustKind(t, m3, KindMap, 3)
	s.ReportDone("w2", m1.Attempt, Result{}, at(sec))
	s.ReportDone("w1", m3.Attempt, Result{}, at(2*sec))
	// Median duration 1s, factor 2: the straggler (age 1.5s) is not slow yet.
	mustKind(t, s.RequestTask("w1", at(1500*time.Millisecond)), KindWait, 0)
	// w3 asks for work: it lost its attempt (say it restarted), so the
	// task is idle again and handed straight back out.
	m2b := s.RequestTask("w3", at(3*sec))
	mustKind(t, m2b, KindMap, 2)
	j, _ := s.Job(id)
	if len(j.Maps[2].Running) != 1 || j.Maps[2].Running[0].ID == m2.Attempt {
		t.Fatalf("attempt of a worker asking for work not dropped: %+v", j.Maps[2])
	}
	// At age 2.5s > 2 x median, w1 gets a backup.
	bk := s.RequestTask("w1", at(5500*time.Millisecond))
	mustKind(t, bk, KindMap, 2)
	if j.Maps[2].Running[1].Backup != true || j.Maps[2].Executions != 3 {
		t.Fatalf("backup attempt: %+v", j.Maps[2])
	}
	// Only one backup per task.
	mustKind(t, s.RequestTask("w2", at(6*sec)), KindWait, 0)
	if !s.ReportDone("w1", bk.Attempt, Result{}, at(6*sec)) {
		t.Fatal("backup not committed")
	}
	if hb := s.Heartbeat("w3", at(6*sec)); len(hb.Cancel) != 1 || hb.Cancel[0] != m2b.Attempt {
		t.Fatalf("straggler not cancelled: %+v", hb)
	}
	if s.ReportDone("w3", m2b.Attempt, Result{}, at(7*sec)) {
		t.Fatal("straggler's late completion committed")
	}
}

func TestHungTaskGetsBackupAfterTaskTimeout(t *testing.T) {
	s, _ := newJob(t, 3, 1, 1)
	s.RequestTask("w1", at(0))
	mustKind(t, s.RequestTask("w2", at(59*sec)), KindWait, 0)
	mustKind(t, s.RequestTask("w2", at(60*sec)), KindMap, 0)
	// The backup hangs too: a third attempt only once it is as old.
	mustKind(t, s.RequestTask("w3", at(119*sec)), KindWait, 0)
	mustKind(t, s.RequestTask("w3", at(120*sec)), KindMap, 0)
}

func TestBoundedRetriesFailJob(t *testing.T) {
	s, id := newJob(t, 1, 1, 1)
	for i := 0; i < DefaultMaxFailures; i++ {
		a := s.RequestTask("w1", at(time.Duration(i)*sec))
		mustKind(t, a, KindMap, 0)
		s.ReportFailed("w1", a.Attempt, "boom", at(time.Duration(i)*sec))
	}
	j, _ := s.Job(id)
	if j.Status != JobFailed || !strings.Contains(j.Error, "map task 0 failed 4 times") || !strings.Contains(j.Error, "boom") {
		t.Fatalf("job %s: %q", j.Status, j.Error)
	}
	mustKind(t, s.RequestTask("w1", at(9*sec)), KindWait, 0)
}

func TestFetchFailureReexecutesMap(t *testing.T) {
	s, id := newJob(t, 2, 2, 1)
	a := s.RequestTask("w1", at(0))
	b := s.RequestTask("w2", at(0))
	s.ReportDone("w1", a.Attempt, Result{}, at(sec))
	s.ReportDone("w2", b.Attempt, Result{}, at(sec))
	r := s.RequestTask("w1", at(sec))
	// A stale report (wrong map attempt) changes nothing but ends the
	// reduce attempt.
	s.ReportFetchFailed("w1", r.Attempt, []MapOutput{{1, 12345}}, at(2*sec))
	j, _ := s.Job(id)
	if j.Maps[1].State != TaskDone || j.Reduces[0].State != TaskIdle || j.Reduces[0].Failures != 0 {
		t.Fatal("stale fetch failure handled wrongly")
	}
	r = s.RequestTask("w1", at(2*sec))
	s.ReportFetchFailed("w1", r.Attempt, []MapOutput{{1, b.Attempt}}, at(2*sec))
	if j.Maps[1].State != TaskIdle || j.Reduces[0].Failures != 0 {
		t.Fatal("map output loss not handled")
	}
	mustKind(t, s.RequestTask("w1", at(3*sec)), KindMap, 1)
}

// A restarted coordinator keeps committed tasks and forgets running ones.
func TestRestoreResumes(t *testing.T) {
	s, id := newJob(t, 2, 2, 1)
	a := s.RequestTask("w1", at(0))
	b := s.RequestTask("w2", at(0))
	s.ReportDone("w1", a.Attempt, Result{Counters: job.Counters{"x": 7}}, at(sec))
	data, err := json.Marshal(s.State())
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	s2 := Restore(Config{}, st)
	j, _ := s2.Job(id)
	if j.Maps[0].State != TaskDone || j.Maps[1].State != TaskIdle || j.Counters()["x"] != 7 {
		t.Fatalf("restored maps: %+v %+v", j.Maps[0], j.Maps[1])
	}
	mustKind(t, s2.RequestTask("w2", at(2*sec)), KindRegister, 0)
	s2.RegisterWorker("w2", "w2:1", at(2*sec))
	m := s2.RequestTask("w2", at(2*sec))
	mustKind(t, m, KindMap, 1)
	if m.Attempt>>32 == b.Attempt>>32 {
		t.Fatal("attempt IDs not in a new epoch")
	}
	if s2.ReportDone("w2", b.Attempt, Result{}, at(3*sec)) {
		t.Fatal("attempt of the previous incarnation committed")
	}
}

func TestJobsRunFIFO(t *testing.T) {
	s, id1 := newJob(t, 1, 1, 1)
	id2 := s.Submit(job.Spec{App: "wc", NReduce: 1}, nil, nil, t0)
	a := s.RequestTask("w1", at(0))
	if a.Job != id1 {
		t.Fatalf("got job %s first", a.Job)
	}
	s.ReportDone("w1", a.Attempt, Result{}, at(sec))
	r := s.RequestTask("w1", at(sec))
	s.ReportDone("w1", r.Attempt, Result{}, at(sec))
	// The second job has no maps: its reduce runs at once, with no inputs.
	r2 := s.RequestTask("w1", at(sec))
	if r2.Job != id2 || r2.Kind != KindReduce || len(r2.Inputs) != 0 {
		t.Fatalf("second job assignment %+v", r2)
	}
}
