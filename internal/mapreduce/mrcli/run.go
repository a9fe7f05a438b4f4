package mrcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/coord"
	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
)

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}

// Local configures RunLocal.
type Local struct {
	Env  Env
	Spec job.Spec
	// Workers is the number of worker processes.
	Workers int
	// DataDir holds the coordinator state and the workers' directories; a
	// temporary directory, removed afterwards, if empty.
	DataDir string
	Sched   sched.Config
	// WorkerArgs are extra flags for every worker process.
	WorkerArgs []string
	// Respawn is how many times crashed worker processes are restarted.
	Respawn int
	Verbose bool
	// Progress draws a progress bar on Env.Stderr.
	Progress bool
	// Listen is the coordinator's address (default 127.0.0.1:0).
	Listen string
}

// RunLocal runs one job with an in-process coordinator and Workers worker
// processes, and returns the job's final status.
func RunLocal(ctx context.Context, l Local) (wire.JobStatus, error) {
	dir := l.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "cairn-mr-run-")
		if err != nil {
			return wire.JobStatus{}, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	c, err := coord.New(coord.Config{
		DataDir: filepath.Join(dir, "coordinator"), Registry: l.Env.Registry, Sched: l.Sched,
		Logf: logger(l.Env.Stderr, l.Verbose, "coordinator"), TickInterval: 100 * time.Millisecond,
	})
	if err != nil {
		return wire.JobStatus{}, err
	}
	listen := l.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return wire.JobStatus{}, err
	}
	go c.Serve(ln)
	defer c.Close()
	id, resumed := c.Unfinished(l.Spec)
	if resumed {
		fmt.Fprintf(l.Env.Stderr, "%s run: resuming %s from %s\n", l.Env.Prog, id, dir)
	} else if id, err = c.Submit(l.Spec); err != nil {
		return wire.JobStatus{}, err
	}
	argv := l.Env.WorkerArgv
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return wire.JobStatus{}, err
		}
		argv = append([]string{exe}, l.Env.WorkerSubcommand...)
	}
	env := l.Env
	env.Stderr = &syncWriter{w: l.Env.Stderr} // shared by every worker process
	sup := &supervisor{env: env, respawn: l.Respawn, verbose: l.Verbose}
	for i := 0; i < l.Workers; i++ {
		args := append(append([]string(nil), argv[1:]...),
			"--coordinator", ln.Addr().String(),
			"--data-dir", filepath.Join(dir, "worker-"+strconv.Itoa(i)),
			"--heartbeat", "500ms", "--exit-with-stdin")
		if l.Verbose {
			args = append(args, "-v")
		}
		args = append(args, l.WorkerArgs...)
		sup.start(argv[0], args)
	}
	st, ferr := follow(ctx, func() (wire.JobStatus, error) {
		if sup.allGone() {
			return wire.JobStatus{}, errors.New("every worker process exited and none is left to restart")
		}
		return c.Job(id)
	}, l.Env.Stderr, l.Progress)
	c.Shutdown()
	sup.stop(5 * time.Second)
	if ferr != nil {
		return st, ferr
	}
	return st, nil
}

// supervisor runs worker processes, restarting crashed ones.
type supervisor struct {
	env     Env
	verbose bool
	mu      sync.Mutex
	respawn int
	done    bool
	procs   map[*exec.Cmd]bool
	started int // worker slots started
	ended   int // worker slots that gave up
	wg      sync.WaitGroup
}

// allGone reports whether every worker slot ended for good.
func (s *supervisor) allGone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started > 0 && s.ended == s.started
}

func (s *supervisor) start(name string, args []string) {
	s.wg.Add(1)
	s.mu.Lock()
	s.started++
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			s.ended++
			s.mu.Unlock()
		}()
		for gen := 0; ; gen++ {
			cmd := exec.Command(name, args...)
			cmd.Env = append(os.Environ(), s.env.WorkerEnv...)
			cmd.Env = append(cmd.Env, "CAIRN_MR_WORKER_GENERATION="+strconv.Itoa(gen))
			cmd.Stdout = s.env.Stderr
			cmd.Stderr = s.env.Stderr
			// The worker exits when this pipe closes, that is when this
			// process dies, however it dies: no orphaned workers.
			if _, err := cmd.StdinPipe(); err != nil {
				fmt.Fprintf(s.env.Stderr, "%s run: start worker: %v\n", s.env.Prog, err)
				return
			}
			s.mu.Lock()
			if s.done {
				s.mu.Unlock()
				return
			}
			if s.procs == nil {
				s.procs = map[*exec.Cmd]bool{}
			}
			err := cmd.Start()
			if err == nil {
				s.procs[cmd] = true
			}
			s.mu.Unlock()
			if err != nil {
				fmt.Fprintf(s.env.Stderr, "%s run: start worker: %v\n", s.env.Prog, err)
				return
			}
			err = cmd.Wait()
			s.mu.Lock()
			delete(s.procs, cmd)
			again := !s.done && err != nil && s.respawn > 0
			if again {
				s.respawn--
			}
			done := s.done
			s.mu.Unlock()
			if err == nil || done {
				return
			}
			what := "; not restarting it (no restarts left)"
			if again {
				what = "; restarting it"
			}
			fmt.Fprintf(s.env.Stderr, "%s run: worker process exited: %v%s\n", s.env.Prog, err, what)
			if !again {
				return
			}
		}
	}()
}

// stop waits for the workers to exit (the coordinator told them to) and
// kills those still running after the grace period.
func (s *supervisor) stop(grace time.Duration) {
	s.mu.Lock()
	s.done = true
	s.mu.Unlock()
	ch := make(chan struct{})
	go func() { s.wg.Wait(); close(ch) }()
	select {
	case <-ch:
		return
	case <-time.After(grace):
	}
	s.mu.Lock()
	for cmd := range s.procs {
		cmd.Process.Kill()
	}
	s.mu.Unlock()
	<-ch
}

func runRun(env Env, args []string) int {
	fs := newFlags(env, "run")
	workers := fs.Int("workers", defaultWorkers(), "number of worker processes")
	dataDir := fs.String("data-dir", "", "directory for coordinator state and worker intermediate files (default: temporary)")
	verbose := fs.Bool("v", false, "log coordinator and worker events")
	respawn := fs.Int("respawn", -1, "restart crashed worker processes up to this many times in all (-1: 2 x workers)")
	var workerArgs listFlag
	fs.Var(&workerArgs, "worker-arg", "extra flag passed to every worker process (repeatable)")
	var sc sched.Config
	addSchedFlags(fs, &sc)
	jf, err := addJobFlags(env, fs, args, 0)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s run: %v\n", env.Prog, err)
		return 2
	}
	if code, ok := parse(fs, args, true); !ok {
		return code
	}
	if *workers < 1 {
		fmt.Fprintf(env.Stderr, "%s run: --workers must be at least 1\n", env.Prog)
		return 2
	}
	if jf.reduce == 0 {
		jf.reduce = *workers
	}
	spec, err := jf.spec(fs)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s run: %v\n", env.Prog, err)
		return 2
	}
	if *respawn < 0 {
		*respawn = 2 * *workers
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	st, err := RunLocal(ctx, Local{
		Env: env, Spec: spec, Workers: *workers, DataDir: *dataDir, Sched: sc, WorkerArgs: workerArgs,
		Respawn: *respawn, Verbose: *verbose, Progress: jf.showProgress(env.Stderr),
	})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintf(env.Stderr, "%s run: interrupted\n", env.Prog)
		} else {
			fmt.Fprintf(env.Stderr, "%s run: %v\n", env.Prog, err)
		}
		return 1
	}
	summary(env.Stdout, st, jf.quiet)
	if st.Status != sched.JobSucceeded {
		return 1
	}
	return 0
}

// syncWriter serializes writes, for a writer shared by several processes'
// output copiers.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
