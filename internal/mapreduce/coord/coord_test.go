package coord

import (
	"iter"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
)

type fakeClock struct{ t time.Time }

func (f *fakeClock) Now() time.Time { return f.t }

func newCoord(t *testing.T, dir string, clk Clock) *Coordinator {
	t.Helper()
	reg := &job.Registry{}
	reg.Register(&job.App{Name: "id", New: func(job.Args) (*job.Funcs, error) {
		return &job.Funcs{
			Map:    func(r job.Record, o job.Output) error { o.Emit(r.Text, ""); return nil },
			Reduce: func(k string, _ iter.Seq[string], o job.Output) error { o.Emit(k, ""); return nil },
		}, nil
	}})
	c, err := New(Config{DataDir: dir, Registry: reg, Clock: clk, LongPoll: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The state file is replaced atomically and a new coordinator resumes
// from it; the status page and JSON show jobs, tasks and workers.
func TestPersistAndStatusPage(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(t.TempDir(), "in.txt")
	os.WriteFile(in, []byte("b\na\n"), 0o644)
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := newCoord(t, dir, clk)
	out := filepath.Join(t.TempDir(), "out")
	id, err := c.Submit(job.Spec{App: "id", Inputs: []string{in}, Output: out, NReduce: 2})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	cl := wire.NewClient(srv.URL, time.Second)
	ctx := t.Context()
	if err := cl.Call(ctx, wire.PathRegister, wire.RegisterReq{ID: "w1", Addr: "127.0.0.1:1"}, nil); err != nil {
		t.Fatal(err)
	}
	var a sched.Assignment
	if err := cl.Call(ctx, wire.PathTask, wire.WorkerReq{ID: "w1"}, &a); err != nil || a.Kind != sched.KindMap {
		t.Fatalf("task: %+v %v", a, err)
	}
	clk.t = clk.t.Add(time.Second)
	var rep wire.DoneReply
	if err := cl.Call(ctx, wire.PathDone, wire.DoneReq{ID: "w1", Attempt: a.Attempt, Counters: job.Counters{"c": 2}}, &rep); err != nil || !rep.Committed {
		t.Fatalf("done: %+v %v", rep, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != stateFile {
		t.Fatalf("data dir holds %v, want only %s (no temp files)", ents, stateFile)
	}
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	var page strings.Builder
	buf := make([]byte, 1<<16)
	n, _ := resp.Body.Read(buf)
	page.Write(buf[:n])
	resp.Body.Close()
	for _, want := range []string{id, "w1", "map 0", "done", "reduce 1", "idle"} {
		if !strings.Contains(page.String(), want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	var st wire.Status
	if err := cl.Call(ctx, wire.PathStatus, nil, &st); err != nil || len(st.Jobs) != 1 || st.Jobs[0].MapsDone != 1 {
		t.Fatalf("status.json: %+v %v", st, err)
	}

	// A new coordinator on the same directory resumes the job.
	c2 := newCoord(t, dir, clk)
	js, err := c2.Job(id)
	if err != nil || js.MapsDone != 1 || js.Counters["c"] != 2 || js.Status != sched.JobRunning {
		t.Fatalf("resumed job: %+v %v", js, err)
	}
	// A corrupt state file is refused, not silently reset.
	os.WriteFile(filepath.Join(dir, stateFile), []byte("{torn"), 0o644)
	if _, err := New(Config{DataDir: dir, Registry: &job.Registry{}}); err == nil || !strings.Contains(err.Error(), "corrupt state file") {
		t.Fatalf("corrupt state: %v", err)
	}
}
