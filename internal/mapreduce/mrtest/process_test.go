package mrtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/apps"
	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/mrcli"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
	"github.com/cairn-db/cairn/internal/netutil"
)

// helperEnv marks a re-executed test binary that must act as the mr
// command (a worker or coordinator process) instead of running tests.
const helperEnv = "CAIRN_MR_TEST_PROCESS=1"

func TestMain(m *testing.M) {
	if os.Getenv("CAIRN_MR_TEST_PROCESS") == "1" {
		os.Exit(mrcli.Main(cliEnv(os.Stdout, os.Stderr), os.Args[1:]))
	}
	os.Exit(m.Run())
}

func cliEnv(stdout, stderr *os.File) mrcli.Env {
	reg := &job.Registry{}
	apps.Register(reg)
	return mrcli.Env{
		Prog: "mr", Registry: reg, WorkerArgv: []string{os.Args[0], "worker"}, WorkerEnv: []string{helperEnv},
		Stdout: stdout, Stderr: stderr,
	}
}

// cli runs the command line in-process and returns stdout, stderr and the
// exit code.
func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	dir := t.TempDir()
	out, _ := os.Create(filepath.Join(dir, "stdout"))
	errf, _ := os.Create(filepath.Join(dir, "stderr"))
	code := mrcli.Main(cliEnv(out, errf), args)
	out.Close()
	errf.Close()
	o, _ := os.ReadFile(out.Name())
	e, _ := os.ReadFile(errf.Name())
	return string(o), string(e), code
}

// process starts the test binary as `mr args...`; it is killed at cleanup.
func process(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), helperEnv)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, buf.String())
		}
	})
	return cmd
}

// testPorts hands out the addresses of this package's test servers: the
// kernel can repeat a just-probed port, and one cluster must not get it twice.
var testPorts netutil.Picker

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := testPorts.Free()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// `run` with real worker processes, which crash (exit 3) at random points
// and are restarted: the output equals the reference.
func TestRunWithWorkerProcesses(t *testing.T) {
	files, glob := corpus(t)
	out := filepath.Join(t.TempDir(), "out")
	stdout, stderr, code := cli(t, "run", "--app", "wordcount", "--input", glob, "--output", out,
		"--workers", "2", "--reduce", "3", "--split-size", "8192", "--heartbeat-timeout", "1s",
		"--worker-arg=--test-fault=rate=0.15,seed=11,kinds=crash,gens=1", "--respawn", "4")
	if code != 0 {
		t.Fatalf("run: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "succeeded") || !strings.Contains(stdout, out+"/part-00000") || !strings.Contains(stdout, job.MapInputRecords) {
		t.Errorf("summary lacks status, output or counters:\n%s", stdout)
	}
	if !strings.Contains(stderr, "exit status 3") {
		t.Errorf("no worker process crashed; stderr:\n%s", stderr)
	}
	SameLines(t, "run wordcount", ReadOutput(t, out, 3), RefWordCount(t, files), false)

	// The same output directory is refused, then replaced with --overwrite.
	_, stderr, code = cli(t, "run", "--app", "wordcount", "--input", glob, "--output", out, "--workers", "1")
	if code != 1 || !strings.Contains(stderr, "output directory exists") {
		t.Errorf("existing output: exit %d, stderr %q", code, stderr)
	}
	_, _, code = cli(t, "run", "--mapper", "cat", "--input", glob, "--output", out, "--workers", "1", "--overwrite", "--quiet")
	if code != 0 {
		t.Errorf("streaming run with --overwrite: exit %d", code)
	}
}

// Usage errors and bad input give a clear message and a non-zero exit.
func TestCLIErrors(t *testing.T) {
	_, glob := corpus(t)
	out := filepath.Join(t.TempDir(), "out")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--app", "nope", "--input", glob, "--output", out}, 2, `unknown app "nope"`},
		{[]string{"run", "--app", "wordcount", "--input", "/no/such/*.txt", "--output", out}, 1, "matches no files"},
		{[]string{"run", "--app", "wordcount", "--output", out}, 2, "--input is required"},
		{[]string{"run", "--app", "grep", "--input", glob, "--output", out}, 1, "needs --pattern"},
		{[]string{"run", "--mapper", "exit 3", "--input", glob, "--output", out, "--workers", "1", "--max-failures", "2"}, 1, `mapper "exit 3" failed: exit status 3`},
		{[]string{"frobnicate"}, 2, "unknown subcommand"},
		{[]string{"status", "--coordinator", freeAddr(t)}, 1, "connection refused"},
	} {
		stdout, stderr, code := cli(t, tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
			t.Errorf("%v: exit %d, want %d; output %q, want %q", tc.args, code, tc.code, stdout+stderr, tc.want)
		}
	}
}

func statusJSON(t *testing.T, addr string) wire.Status {
	t.Helper()
	var st wire.Status
	if err := wire.NewClient(addr, 5*time.Second).Call(context.Background(), wire.PathStatus, nil, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// A coordinator process, worker processes and the submit and status
// clients, as on separate hosts. The coordinator is killed with SIGKILL in
// the middle of the job and restarted on the same data directory: the job
// completes without re-running the tasks committed before the kill.
func TestCoordinatorProcessKilled(t *testing.T) {
	files, glob := corpus(t)
	addr := freeAddr(t)
	data := t.TempDir()
	coordArgs := []string{"coordinator", "--listen", addr, "--data-dir", data, "--heartbeat-timeout", "2s"}
	co := process(t, coordArgs...)
	for i := 0; i < 2; i++ {
		process(t, "worker", "--coordinator", addr, "--heartbeat", "100ms", "--data-dir", filepath.Join(t.TempDir(), fmt.Sprint("w", i)))
	}
	out := filepath.Join(t.TempDir(), "out")
	// A slow streaming mapper, so the job is still running at the kill.
	var stdout, stderr string
	var code int
	for try := 0; try < 50; try++ {
		stdout, stderr, code = cli(t, "submit", "--coordinator", addr, "--wait=false", "--input", glob, "--output", out, "--reduce", "2", "--split-size", "8192",
			"--mapper", `sleep 0.15; awk '{ for (i = 1; i <= NF; i++) print $i "\t1" }'`,
			"--reducer", `awk -F'\t' '{ c[$1] += $2 } END { for (k in c) print k "\t" c[k] }'`)
		if code == 0 || !strings.Contains(stderr, "connection refused") {
			break
		}
		time.Sleep(100 * time.Millisecond) // coordinator still starting
	}
	if code != 0 {
		t.Fatalf("submit: exit %d: %s %s", code, stdout, stderr)
	}
	id := strings.TrimSpace(stdout)
	var before map[int]bool
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := statusJSON(t, addr)
		before = map[int]bool{}
		for _, tk := range st.Tasks[id] {
			if tk.Kind == sched.KindMap && tk.State == sched.TaskDone {
				before[tk.Index] = true
			}
		}
		if len(before) >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job made no progress: %+v", st.Jobs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	co.Process.Kill()
	co.Wait()
	process(t, coordArgs...)
	deadline = time.Now().Add(60 * time.Second)
	for {
		stdout, _, code = cli(t, "status", "--coordinator", addr, id)
		if code == 0 && (strings.Contains(stdout, sched.JobSucceeded) || strings.Contains(stdout, sched.JobFailed)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job did not finish after the restart: %s", stdout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(stdout, "succeeded") {
		t.Fatalf("job: %s", stdout)
	}
	SameLines(t, "streaming across a coordinator kill", ReadOutput(t, out, 2), RefBlankWordCount(t, files), false)
	st := statusJSON(t, addr)
	for _, tk := range st.Tasks[id] {
		if tk.Kind == sched.KindMap && before[tk.Index] && tk.Executions != 1 {
			t.Errorf("map %d committed before the kill ran %d times", tk.Index, tk.Executions)
		}
	}
	// The status page and the list command work too.
	stdout, _, code = cli(t, "status", "--coordinator", addr)
	if code != 0 || !strings.Contains(stdout, id) || !strings.Contains(stdout, "2 worker(s) alive") {
		t.Errorf("status: %d %s", code, stdout)
	}
	stdout, _, _ = cli(t, "status", "--coordinator", addr, "--json")
	var raw map[string]any
	if err := json.Unmarshal([]byte(stdout), &raw); err != nil || raw["jobs"] == nil {
		t.Errorf("status --json: %v\n%s", err, stdout)
	}
}

// readState reads a coordinator's persisted state.
func readState(t *testing.T, dir string) sched.State {
	t.Helper()
	var st sched.State
	data, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err == nil {
		err = json.Unmarshal(data, &st)
	}
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return st
}

// `run` killed with SIGKILL mid-job (its worker processes die with it)
// and started again with the same --data-dir resumes the job: reduce tasks
// committed before the kill are not run again. (Committed map tasks are:
// their output died with the worker processes' shuffle servers, §3.3.)
func TestRunResumesAfterKill(t *testing.T) {
	files, glob := corpus(t)
	data := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"run", "--data-dir", data, "--input", glob, "--output", out, "--workers", "2", "--reduce", "5", "--split-size", "8192",
		"--mapper", `awk '{ for (i = 1; i <= NF; i++) print $i "\t1" }'`,
		"--reducer", `sleep 0.5; awk -F'\t' '{ c[$1] += $2 } END { for (k in c) print k "\t" c[k] }'`}
	first := process(t, args...)
	before := map[int]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(before) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("first run made no progress")
		}
		time.Sleep(10 * time.Millisecond)
		for _, j := range readState(t, filepath.Join(data, "coordinator")).Jobs {
			for _, r := range j.Reduces {
				if r.State == sched.TaskDone {
					before[r.Index] = true
				}
			}
		}
	}
	first.Process.Kill()
	first.Wait()
	stdout, stderr, code := cli(t, args...)
	if code != 0 || !strings.Contains(stderr, "resuming job-0001") {
		t.Fatalf("second run: exit %d\n%s\n%s", code, stdout, stderr)
	}
	SameLines(t, "resumed run", ReadOutput(t, out, 5), RefBlankWordCount(t, files), false)
	st := readState(t, filepath.Join(data, "coordinator"))
	if len(st.Jobs) != 1 {
		t.Fatalf("%d jobs in the state, want 1", len(st.Jobs))
	}
	for _, r := range st.Jobs[0].Reduces {
		if before[r.Index] && r.Executions != 1 {
			t.Errorf("reduce %d committed before the kill ran %d times", r.Index, r.Executions)
		}
	}
}
