package mrtest

import (
	"errors"
	"fmt"
	"iter"
	"math/rand"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/apps"
	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/worker"
)

// corpus is a shared small corpus: 6 files of 24 KiB plus the odd ones.
func corpus(t *testing.T) (files []string, glob string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "in")
	files = GenCorpus(t, dir, 7, 6, 24<<10)
	return files, filepath.Join(dir, "*.txt")
}

func wcSpec(t *testing.T, glob string, r int) job.Spec {
	return job.Spec{App: "wordcount", Inputs: []string{glob}, Output: filepath.Join(t.TempDir(), "out"), NReduce: r, SplitSize: 8 << 10}
}

// Workers crash, hang and freeze at random points of map and reduce tasks,
// repeatedly, while a job runs; crashed workers are replaced. The job
// completes and its output equals the reference. A failing seed is printed
// and replays the same fault decisions (thread timing aside).
func TestCrashesDuringJob(t *testing.T) {
	files, glob := corpus(t)
	want := RefWordCount(t, files)
	for seed := int64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			var c *Cluster
			var faults, extra atomic.Int64
			stop := make(chan struct{})
			opts := Options{Workers: 3, Respawn: 40}
			opts.Hook = func(i int) worker.FaultHook {
				rng := rand.New(rand.NewSource(seed*1000 + int64(i)))
				var mu sync.Mutex
				return func(point string, task int) worker.Fault {
					mu.Lock()
					x, kind := rng.Float64(), rng.Intn(10)
					mu.Unlock()
					if x >= 0.12 || faults.Load() >= 10 {
						return worker.FaultNone
					}
					faults.Add(1)
					switch {
					case kind < 6:
						return worker.FaultCrash
					case kind < 8 && extra.Add(1) <= 6:
						go c.AddWorker() // the hung machine's capacity is gone
						return worker.FaultHang
					case extra.Add(1) <= 6:
						go c.AddWorker()
						return worker.FaultFreeze
					}
					return worker.FaultError
				}
			}
			c = Start(t, opts)
			t.Cleanup(func() { close(stop) })
			spec := wcSpec(t, glob, 3)
			st := c.Run(spec, 60*time.Second)
			SameLines(t, "wordcount under faults", ReadOutput(t, spec.Output, 3), want, false)
			t.Logf("seed %d: %d faults injected, %d map tasks; job took %.1fs", seed, faults.Load(), st.NMap, st.ElapsedSec)
			if faults.Load() == 0 {
				t.Fatal("no fault injected: test is vacuous")
			}
		})
	}
}

// Map tasks of one job run on several workers at the same time, and
// reduce tasks likewise: each task waits at its start until a second task
// of its phase has started (or fails the test after a timeout).
func TestParallelism(t *testing.T) {
	_, glob := corpus(t)
	var mu sync.Mutex
	running := map[string]map[int]bool{} // phase -> worker -> running
	maxPar := map[string]int{}
	opts := Options{Workers: 2}
	opts.Hook = func(i int) worker.FaultHook {
		return func(point string, task int) worker.Fault {
			phase, _, _ := strings.Cut(point, "-")
			if !strings.HasSuffix(point, "-start") {
				if strings.HasSuffix(point, "-end") {
					mu.Lock()
					delete(running[phase], i)
					mu.Unlock()
				}
				return worker.FaultNone
			}
			mu.Lock()
			if running[phase] == nil {
				running[phase] = map[int]bool{}
			}
			running[phase][i] = true
			mu.Unlock()
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				mu.Lock()
				n := len(running[phase])
				maxPar[phase] = max(maxPar[phase], n)
				mu.Unlock()
				if n >= 2 {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			return worker.FaultNone
		}
	}
	c := Start(t, opts)
	spec := wcSpec(t, glob, 2)
	c.Run(spec, 60*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if maxPar["map"] < 2 || maxPar["reduce"] < 2 {
		t.Fatalf("max concurrent tasks on distinct workers: map %d, reduce %d; want 2 each", maxPar["map"], maxPar["reduce"])
	}
}

// A worker that becomes very slow (30s per task) does not hold the job up:
// backup executions (§3.6) let it finish close to the time it takes
// without the straggler.
func TestStragglerBackup(t *testing.T) {
	files, glob := corpus(t)
	stop := make(chan struct{})

	// Reference time: two healthy workers.
	base := Start(t, Options{Workers: 2})
	spec := wcSpec(t, glob, 2)
	t0 := time.Now()
	base.Run(spec, 60*time.Second)
	without := time.Since(t0)

	// The straggler (worker 0) starts alone, so it is sure to hold a task;
	// the two healthy workers join once it is stuck in one.
	entered := make(chan struct{}, 1)
	opts := Options{Workers: 1}
	opts.Hook = func(i int) worker.FaultHook {
		if i != 0 {
			return nil
		}
		return func(point string, task int) worker.Fault {
			if point == worker.PointMapMid || point == worker.PointReduceMid {
				select {
				case entered <- struct{}{}:
				default:
				}
				select {
				case <-time.After(30 * time.Second):
				case <-stop:
				}
			}
			return worker.FaultNone
		}
	}
	c := Start(t, opts)
	t.Cleanup(func() { close(stop) }) // before the cluster's cleanup
	spec = wcSpec(t, glob, 2)
	t1 := time.Now()
	id, err := c.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the straggler never started a task")
	}
	c.AddWorker()
	c.AddWorker()
	st := c.Wait(id, 25*time.Second)
	with := time.Since(t1)
	if st.Status != sched.JobSucceeded {
		t.Fatalf("job %s: %s", st.Status, st.Error)
	}
	SameLines(t, "wordcount with straggler", ReadOutput(t, spec.Output, 2), RefWordCount(t, files), false)
	backups := 0
	for _, tk := range c.Tasks(id) {
		if tk.Executions > 1 {
			backups++
		}
	}
	t.Logf("without straggler %v, with straggler %v, %d task(s) backed up", without, with, backups)
	if backups == 0 {
		t.Fatal("no backup execution")
	}
	if with > without+5*time.Second {
		t.Fatalf("job took %v with a straggler, %v without", with, without)
	}
}

// A restarted coordinator resumes the job from its data directory: map
// tasks and the committed reduce task are not executed again.
func TestCoordinatorRestart(t *testing.T) {
	files, glob := corpus(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	// No false worker deaths under load: they would re-run maps.
	sc := FastSched
	sc.HeartbeatTimeout = 5 * time.Second
	opts := Options{Workers: 2, Sched: sc}
	opts.Hook = func(i int) worker.FaultHook {
		return func(point string, task int) worker.Fault {
			if point == worker.PointReduceStart && task > 0 {
				<-release
			}
			return worker.FaultNone
		}
	}
	c := Start(t, opts)
	spec := wcSpec(t, glob, 3)
	id, err := c.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	// Wait until every map and reduce 0 are committed.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := c.Coord.Job(id)
		if err != nil {
			t.Fatal(err)
		}
		if st.MapsDone == st.NMap && st.ReducesDone == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job stuck before restart: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.RestartCoordinator()
	releaseOnce.Do(func() { close(release) })
	st := c.Wait(id, 30*time.Second)
	if st.Status != sched.JobSucceeded {
		t.Fatalf("job %s: %s", st.Status, st.Error)
	}
	SameLines(t, "wordcount across restart", ReadOutput(t, spec.Output, 3), RefWordCount(t, files), false)
	for _, tk := range c.Tasks(id) {
		if (tk.Kind == sched.KindMap || tk.Index == 0) && tk.Executions != 1 {
			t.Errorf("%s task %d executed %d times across the restart, want 1", tk.Kind, tk.Index, tk.Executions)
		}
	}
}

// Workers have separate local directories (no shared intermediate files).
// Losing a worker after its map tasks finished forces those maps to run
// again, because reducers can no longer fetch their output.
func TestLostMapOutputReexecuted(t *testing.T) {
	files, glob := corpus(t)
	var c *Cluster
	w0Mapped := make(chan struct{})
	var once sync.Once
	opts := Options{Workers: 2}
	opts.Hook = func(i int) worker.FaultHook {
		return func(point string, task int) worker.Fault {
			switch {
			case i == 0 && point == worker.PointMapEnd:
				once.Do(func() { close(w0Mapped) })
			case i == 0 && point == worker.PointReduceStart:
				return worker.FaultCrash // w0 is lost after its maps finished
			case i == 1 && point == worker.PointMapStart:
				select { // make sure w0 gets some maps
				case <-w0Mapped:
				case <-time.After(5 * time.Second):
				}
			case i == 1 && point == worker.PointReduceStart:
				c.mu.Lock()
				w0 := c.workers[0]
				c.mu.Unlock()
				w0.Wait(10 * time.Second) // fetch only after w0 is gone
			}
			return worker.FaultNone
		}
	}
	c = Start(t, opts)
	spec := wcSpec(t, glob, 2)
	id, err := c.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for w0's crash, then give its capacity back as a new worker.
	c.mu.Lock()
	w0 := c.workers[0]
	c.mu.Unlock()
	if ok, err := w0.Wait(30 * time.Second); !ok {
		t.Fatal("w0 never reached its reduce")
	} else if !errors.Is(err, worker.ErrCrashed) {
		t.Fatalf("w0 ended with %v", err)
	}
	c.AddWorker()
	st := c.Wait(id, 30*time.Second)
	if st.Status != sched.JobSucceeded {
		t.Fatalf("job %s: %s", st.Status, st.Error)
	}
	SameLines(t, "wordcount after losing a worker", ReadOutput(t, spec.Output, 2), RefWordCount(t, files), false)
	rerun := 0
	for _, tk := range c.Tasks(id) {
		if tk.Kind != sched.KindMap {
			continue
		}
		if tk.Done.Worker == "w0" {
			t.Errorf("map %d still committed on the lost worker", tk.Index)
		}
		if tk.Executions > 1 {
			rerun++
		}
	}
	if rerun == 0 {
		t.Fatal("no map task re-executed")
	}
}

// User code that fails is retried a bounded number of times, then the job
// fails with the task's error; a panic is a failure too.
func TestFailingUserCode(t *testing.T) {
	reg := &job.Registry{}
	apps.Register(reg)
	var calls atomic.Int64
	reg.Register(&job.App{Name: "bad", New: func(job.Args) (*job.Funcs, error) {
		return &job.Funcs{
			Map: func(rec job.Record, out job.Output) error {
				if strings.Contains(rec.Text, "zebra") {
					if calls.Add(1)%2 == 0 {
						panic("zebra crossing")
					}
					return errors.New("no zebras allowed")
				}
				return nil
			},
			Reduce: func(string, iter.Seq[string], job.Output) error { return nil },
		}, nil
	}})
	_, glob := corpus(t)
	c := Start(t, Options{Workers: 2, Registry: reg})
	spec := wcSpec(t, glob, 1)
	spec.App = "bad"
	id, err := c.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	st := c.Wait(id, 30*time.Second)
	if st.Status != sched.JobFailed || !strings.Contains(st.Error, "failed 4 times") ||
		!(strings.Contains(st.Error, "no zebras allowed") || strings.Contains(st.Error, "zebra crossing")) {
		t.Fatalf("job %s: %q", st.Status, st.Error)
	}
}

// Garbage from a would-be worker gets a clear 400 and changes nothing; bad
// submissions are refused with a clear message.
func TestBadRequests(t *testing.T) {
	_, glob := corpus(t)
	c := Start(t, Options{Workers: 1})
	for _, body := range []string{"garbage", `{"id": 5}`, `{"id":"x","bogus":1}`, `{"id":"x"} trailing`} {
		resp, err := http.Post("http://"+c.Addr+"/api/worker/done", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("body %q: status %d, want 400", body, resp.StatusCode)
		}
	}
	out := t.TempDir() // exists
	for _, tc := range []struct {
		spec job.Spec
		want string
	}{
		{job.Spec{App: "nope", Inputs: []string{glob}, Output: out + "/x", NReduce: 1}, `unknown app "nope"`},
		{job.Spec{App: "wordcount", Inputs: []string{"/does/not/exist"}, Output: out + "/x", NReduce: 1}, "no such file"},
		{job.Spec{App: "wordcount", Inputs: []string{"/does/not/*.txt"}, Output: out + "/x", NReduce: 1}, "matches no files"},
		{job.Spec{App: "wordcount", Inputs: []string{glob}, Output: out, NReduce: 1}, "output directory exists"},
		{job.Spec{App: "wordcount", Inputs: []string{glob}, Output: out + "/x", NReduce: 0}, "reduce tasks"},
		{job.Spec{App: "grep", Inputs: []string{glob}, Output: out + "/x", NReduce: 1}, "needs --pattern"},
		{job.Spec{App: "wordcount", Args: job.Args{"colour": "red"}, Inputs: []string{glob}, Output: out + "/x", NReduce: 1}, "no flag --colour"},
	} {
		_, err := c.Submit(tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("submit %+v: err = %v, want %q", tc.spec, err, tc.want)
		}
	}
	spec := wcSpec(t, glob, 1)
	c.Run(spec, 30*time.Second) // still works
	spec.Overwrite = true
	c.Run(spec, 30*time.Second)
}
