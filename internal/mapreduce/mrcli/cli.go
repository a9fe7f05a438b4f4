package mrcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/coord"
	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
	"github.com/cairn-db/cairn/internal/mapreduce/worker"
)

// Env is what differs between `cairn mr` and a user's job binary.
type Env struct {
	// Prog is the command prefix shown in messages, e.g. "cairn mr".
	Prog string
	// Registry holds the apps.
	Registry *job.Registry
	// WorkerArgv starts a worker process: the flags of the worker
	// subcommand are appended. Empty means: this executable followed by
	// WorkerSubcommand.
	WorkerArgv []string
	// WorkerSubcommand is the argument(s) before the worker flags, e.g.
	// ["mr", "worker"] for cairn.
	WorkerSubcommand []string
	// WorkerEnv is added to worker processes' environment.
	WorkerEnv []string
	Stdout    io.Writer
	Stderr    io.Writer
}

// Main runs a subcommand and returns the exit code: 0 success, 1 failure,
// 2 usage error.
func Main(env Env, args []string) int {
	if env.Prog == "" {
		env.Prog = filepath.Base(os.Args[0])
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmds := map[string]func(Env, []string) int{
		"coordinator": runCoordinator,
		"worker":      runWorker,
		"submit":      runSubmit,
		"status":      runStatus,
		"run":         runRun,
		"apps":        runApps,
		"bench":       runBench,
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(env.Stderr, "%s: unknown subcommand %q\n", env.Prog, args[0])
		usage(env)
		return 2
	}
	return c(env, args[1:])
}

func usage(env Env) {
	fmt.Fprintf(env.Stderr, `usage: %[1]s <subcommand> [flags]

subcommands:
  run          run a job locally: a coordinator and N worker processes
  coordinator  serve jobs to workers (--listen ADDR --data-dir DIR)
  worker       run tasks for a coordinator (--coordinator ADDR)
  submit       submit a job to a coordinator and wait for it
  status       show a coordinator's jobs, or one job
  apps         list the registered apps and their flags
  bench        word-count throughput benchmark against plain Go

Run '%[1]s <subcommand> -h' for its flags.
`, env.Prog)
}

func newFlags(env Env, name string) *flag.FlagSet {
	fs := flag.NewFlagSet(env.Prog+" "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	return fs
}

// parse parses flags; it returns an exit code if the caller must stop.
func parse(fs *flag.FlagSet, args []string, positional bool) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if !positional && fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func envDefault(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func logger(w io.Writer, verbose bool, who string) func(string, ...any) {
	if !verbose {
		return nil
	}
	return func(format string, args ...any) {
		fmt.Fprintf(w, "%s %s: %s\n", time.Now().Format("15:04:05.000"), who, fmt.Sprintf(format, args...))
	}
}

func addSchedFlags(fs *flag.FlagSet, c *sched.Config) {
	fs.DurationVar(&c.HeartbeatTimeout, "heartbeat-timeout", sched.DefaultHeartbeatTimeout, "declare a silent worker dead after this long")
	fs.DurationVar(&c.TaskTimeout, "task-timeout", sched.DefaultTaskTimeout, "give an attempt running this long a backup even without peers to compare with")
	fs.Float64Var(&c.BackupFactor, "backup-factor", sched.DefaultBackupFactor, "back up tail tasks running longer than this many times the median task")
	fs.DurationVar(&c.BackupMinAge, "backup-min-age", sched.DefaultBackupMinAge, "never back up an attempt younger than this")
	fs.IntVar(&c.MaxFailures, "max-failures", sched.DefaultMaxFailures, "failures of one task that fail the job")
}

func runCoordinator(env Env, args []string) int {
	fs := newFlags(env, "coordinator")
	listen := fs.String("listen", envDefault("CAIRN_MR_LISTEN", "127.0.0.1:7070"), "address to serve the API and status page on")
	dataDir := fs.String("data-dir", envDefault("CAIRN_MR_DATA_DIR", "cairn-mr-coordinator"), "directory for the persisted job state")
	quiet := fs.Bool("quiet", false, "do not log")
	var sc sched.Config
	addSchedFlags(fs, &sc)
	if code, ok := parse(fs, args, false); !ok {
		return code
	}
	c, err := coord.New(coord.Config{DataDir: *dataDir, Registry: env.Registry, Sched: sc, Logf: logger(env.Stderr, !*quiet, "coordinator")})
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s coordinator: %v\n", env.Prog, err)
		return 1
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s coordinator: %v\n", env.Prog, err)
		return 1
	}
	fmt.Fprintf(env.Stderr, "%s coordinator: serving on http://%s (state in %s)\n", env.Prog, ln.Addr(), *dataDir)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	if err := c.Serve(ln); err != nil {
		fmt.Fprintf(env.Stderr, "%s coordinator: %v\n", env.Prog, err)
		return 1
	}
	return 0
}

func runWorker(env Env, args []string) int {
	fs := newFlags(env, "worker")
	coordAddr := fs.String("coordinator", envDefault("CAIRN_MR_COORDINATOR", "127.0.0.1:7070"), "coordinator address")
	listen := fs.String("listen", "127.0.0.1:0", "address to serve map output to reducers on (use host:port reachable from other hosts for a multi-host cluster)")
	advertise := fs.String("advertise", "", "address reducers should use, if not the listen address")
	dataDir := fs.String("data-dir", "", "local directory for intermediate files (default: a new temporary directory)")
	id := fs.String("id", "", "worker ID (default: host-pid-random)")
	hb := fs.Duration("heartbeat", time.Second, "heartbeat interval")
	verbose := fs.Bool("v", false, "log")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to this file")
	exitWithStdin := fs.Bool("exit-with-stdin", false, "exit when standard input reaches end of file (used by run, so workers die with it)")
	faultSpec := fs.String("test-fault", "", "test only: inject faults, e.g. rate=0.2,seed=1,kinds=crash+hang")
	if code, ok := parse(fs, args, false); !ok {
		return code
	}
	if os.Getenv("GOGC") == "" {
		// A worker's live heap is small (a task's buffers) while it
		// allocates a string per input line: collecting less often saves
		// about a tenth of the CPU of a word count.
		debug.SetGCPercent(400)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(env.Stderr, "%s worker: %v\n", env.Prog, err)
			return 1
		}
		pprof.StartCPUProfile(f)
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if *exitWithStdin {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			os.Exit(1)
		}()
	}
	// Vary the fault seed by worker slot and restart generation, so a
	// restarted worker does not crash at the very same point again.
	salt := int64(crc32.ChecksumIEEE([]byte(*dataDir)))
	gen, _ := strconv.Atoi(os.Getenv("CAIRN_MR_WORKER_GENERATION"))
	salt += int64(gen) * 7919
	hook, err := parseFault(*faultSpec, salt, gen)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s worker: --test-fault: %v\n", env.Prog, err)
		return 2
	}
	dir := *dataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "cairn-mr-worker-")
		if err != nil {
			fmt.Fprintf(env.Stderr, "%s worker: %v\n", env.Prog, err)
			return 1
		}
		defer os.RemoveAll(d)
		dir = d
	}
	w, err := worker.New(worker.Config{
		Coordinator: *coordAddr, Listen: *listen, Advertise: *advertise, DataDir: dir, ID: *id,
		Registry: env.Registry, HeartbeatInterval: *hb, FaultHook: hook,
		Logf: logger(env.Stderr, *verbose, "worker"),
	})
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s worker: %v\n", env.Prog, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := w.Run(ctx); err != nil {
		fmt.Fprintf(env.Stderr, "%s worker: %v\n", env.Prog, err)
		return 3
	}
	return 0
}

// parseFault builds a process worker's fault hook from
// "rate=R,seed=S,kinds=crash+hang+freeze+error,gens=G": at each fault
// point, with probability R, one of the kinds, but only in the first G
// generations of a worker restarted by run (all if G is 0). A crash exits
// the process at once with status 3, as a machine failure would.
func parseFault(spec string, salt int64, gen int) (worker.FaultHook, error) {
	if spec == "" {
		return nil, nil
	}
	rate, seed, gens := 0.0, int64(1), 0
	kinds := []worker.Fault{worker.FaultCrash}
	for _, kv := range strings.Split(spec, ",") {
		k, v, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "rate":
			rate, err = strconv.ParseFloat(v, 64)
		case "seed":
			seed, err = strconv.ParseInt(v, 10, 64)
		case "gens":
			gens, err = strconv.Atoi(v)
		case "kinds":
			kinds = nil
			for _, name := range strings.Split(v, "+") {
				f, ok := map[string]worker.Fault{"crash": worker.FaultCrash, "hang": worker.FaultHang, "freeze": worker.FaultFreeze, "error": worker.FaultError}[name]
				if !ok {
					return nil, fmt.Errorf("unknown fault kind %q", name)
				}
				kinds = append(kinds, f)
			}
		default:
			err = fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return nil, err
		}
	}
	if gens > 0 && gen >= gens {
		return nil, nil
	}
	rng := rand.New(rand.NewSource(seed + salt))
	return func(point string, task int) worker.Fault {
		if rng.Float64() >= rate {
			return worker.FaultNone
		}
		f := kinds[rng.Intn(len(kinds))]
		fmt.Fprintf(os.Stderr, "test-fault: fault %d at %s of task %d\n", f, point, task)
		if f == worker.FaultCrash {
			os.Exit(3)
		}
		return f
	}, nil
}

// jobFlags are the flags shared by submit and run.
type jobFlags struct {
	app, output       string
	inputs            listFlag
	reduce            int
	splitSize         int64
	overwrite, quiet  bool
	progress          string
	appArgs           map[string]*string
	mapperSet, redSet bool
}

// addJobFlags binds the job flags, and the flags of the app named in args
// (or of streaming when --mapper is given without --app).
func addJobFlags(env Env, fs *flag.FlagSet, args []string, defReduce int) (*jobFlags, error) {
	jf := &jobFlags{appArgs: map[string]*string{}}
	fs.StringVar(&jf.app, "app", "", "app to run (see 'apps'); --mapper/--reducer alone imply streaming")
	fs.Var(&jf.inputs, "input", "input file, directory or glob (repeatable; also positional arguments)")
	fs.StringVar(&jf.output, "output", "", "output directory for part-NNNNN files (must not exist unless --overwrite)")
	fs.IntVar(&jf.reduce, "reduce", defReduce, "number of reduce tasks R (output files)")
	fs.Int64Var(&jf.splitSize, "split-size", job.DefaultSplitSize, "target bytes of input per map task")
	fs.BoolVar(&jf.overwrite, "overwrite", false, "replace the part files of an existing output directory")
	fs.BoolVar(&jf.quiet, "quiet", false, "print only the output location")
	fs.StringVar(&jf.progress, "progress", "auto", "progress bar: auto (if stderr is a terminal), on, off")
	name := scanFlag(args, "app")
	if name == "" && scanFlag(args, "mapper") != "" {
		name = "streaming"
	}
	if name == "" {
		return jf, nil
	}
	app, err := env.Registry.Lookup(name)
	if err != nil {
		return nil, err
	}
	jf.app = name
	for _, f := range app.Flags {
		if fs.Lookup(f.Name) != nil {
			return nil, fmt.Errorf("app %s: flag --%s clashes with a job flag", name, f.Name)
		}
		jf.appArgs[f.Name] = fs.String(f.Name, f.Default, "app "+name+": "+f.Usage)
	}
	return jf, nil
}

// scanFlag finds --name VALUE or --name=VALUE in args before parsing.
func scanFlag(args []string, name string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		t := strings.TrimLeft(a, "-")
		if len(a)-len(t) == 0 || len(a)-len(t) > 2 {
			continue
		}
		if t == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(t, name+"="); ok {
			return v
		}
	}
	return ""
}

func (jf *jobFlags) spec(fs *flag.FlagSet) (job.Spec, error) {
	inputs := append(append([]string(nil), jf.inputs...), fs.Args()...)
	s := job.Spec{App: jf.app, Inputs: inputs, Output: jf.output, NReduce: jf.reduce, SplitSize: jf.splitSize, Overwrite: jf.overwrite, Args: job.Args{}}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, v := range jf.appArgs {
		if set[name] {
			s.Args[name] = *v
		}
	}
	if s.App == "" {
		return s, errors.New("--app is required (or --mapper and --reducer for streaming)")
	}
	if len(s.Inputs) == 0 {
		return s, errors.New("--input is required")
	}
	if s.Output == "" {
		return s, errors.New("--output is required")
	}
	return s, s.Validate()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (jf *jobFlags) showProgress(w io.Writer) bool {
	switch jf.progress {
	case "on":
		return true
	case "off":
		return false
	}
	return !jf.quiet && isTerminal(w)
}

// follow polls a job until it finishes, drawing a progress bar if asked.
func follow(ctx context.Context, get func() (wire.JobStatus, error), w io.Writer, bar bool) (wire.JobStatus, error) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := get()
		if err != nil {
			return st, err
		}
		done := st.Status == sched.JobSucceeded || st.Status == sched.JobFailed
		if bar {
			fmt.Fprintf(w, "\r%s", progressLine(st))
			if done {
				fmt.Fprintln(w)
			}
		}
		if done {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-t.C:
		}
	}
}

func progressLine(st wire.JobStatus) string {
	const width = 30
	total := st.NMap + st.NReduce
	done := st.MapsDone + st.ReducesDone
	n := 0
	if total > 0 {
		n = width * done / total
	}
	return fmt.Sprintf("[%s%s] map %d/%d reduce %d/%d %5.1fs %s ", strings.Repeat("#", n), strings.Repeat(".", width-n),
		st.MapsDone, st.NMap, st.ReducesDone, st.NReduce, st.ElapsedSec, st.Status)
}

// summary prints the result of a finished job.
func summary(w io.Writer, st wire.JobStatus, quiet bool) {
	if quiet {
		if st.Status == sched.JobSucceeded {
			fmt.Fprintln(w, st.Output)
		}
		return
	}
	fmt.Fprintf(w, "job %s (%s) %s in %.2fs: %d map tasks, %d reduce tasks\n", st.ID, st.App, st.Status, st.ElapsedSec, st.NMap, st.NReduce)
	if st.Status == sched.JobSucceeded {
		fmt.Fprintf(w, "output: %s/part-00000 .. part-%05d\n", st.Output, st.NReduce-1)
	} else {
		fmt.Fprintf(w, "error: %s\n", st.Error)
	}
	fmt.Fprintln(w, "counters:")
	for _, name := range job.Counters(st.Counters).Names() {
		fmt.Fprintf(w, "  %-26s %d\n", name, st.Counters[name])
	}
}

func runSubmit(env Env, args []string) int {
	fs := newFlags(env, "submit")
	coordAddr := fs.String("coordinator", envDefault("CAIRN_MR_COORDINATOR", "127.0.0.1:7070"), "coordinator address")
	wait := fs.Bool("wait", true, "wait for the job and print its counters")
	jf, err := addJobFlags(env, fs, args, 0)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s submit: %v\n", env.Prog, err)
		return 2
	}
	if code, ok := parse(fs, args, true); !ok {
		return code
	}
	cl := wire.NewClient(*coordAddr, 30*time.Second)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if jf.reduce == 0 {
		// Default R: one reduce task per live worker.
		var st wire.Status
		if err := cl.Call(ctx, wire.PathStatus, nil, &st); err != nil {
			fmt.Fprintf(env.Stderr, "%s submit: %v\n", env.Prog, err)
			return 1
		}
		for _, w := range st.Workers {
			if w.Alive {
				jf.reduce++
			}
		}
		jf.reduce = max(jf.reduce, 1)
	}
	spec, err := jf.spec(fs)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s submit: %v\n", env.Prog, err)
		return 2
	}
	if abs, err := filepath.Abs(spec.Output); err == nil {
		spec.Output = abs
	}
	var rep wire.SubmitReply
	if err := cl.Call(ctx, wire.PathJobs, spec, &rep); err != nil {
		fmt.Fprintf(env.Stderr, "%s submit: %v\n", env.Prog, err)
		return 1
	}
	if !*wait {
		fmt.Fprintln(env.Stdout, rep.Job)
		return 0
	}
	st, err := follow(ctx, func() (wire.JobStatus, error) {
		var st wire.JobStatus
		err := cl.Call(ctx, wire.PathJob+rep.Job, nil, &st)
		return st, err
	}, env.Stderr, jf.showProgress(env.Stderr))
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s submit: %s: %v\n", env.Prog, rep.Job, err)
		return 1
	}
	summary(env.Stdout, st, jf.quiet)
	if st.Status != sched.JobSucceeded {
		return 1
	}
	return 0
}

func runStatus(env Env, args []string) int {
	fs := newFlags(env, "status")
	coordAddr := fs.String("coordinator", envDefault("CAIRN_MR_COORDINATOR", "127.0.0.1:7070"), "coordinator address")
	asJSON := fs.Bool("json", false, "print the coordinator's full status as JSON")
	if code, ok := parse(fs, args, true); !ok {
		return code
	}
	cl := wire.NewClient(*coordAddr, 10*time.Second)
	ctx := context.Background()
	if *asJSON {
		var raw map[string]any
		if err := cl.Call(ctx, wire.PathStatus, nil, &raw); err != nil {
			fmt.Fprintf(env.Stderr, "%s status: %v\n", env.Prog, err)
			return 1
		}
		return printJSON(env.Stdout, raw)
	}
	if fs.NArg() > 0 {
		var st wire.JobStatus
		if err := cl.Call(ctx, wire.PathJob+fs.Arg(0), nil, &st); err != nil {
			fmt.Fprintf(env.Stderr, "%s status: %v\n", env.Prog, err)
			return 1
		}
		summary(env.Stdout, st, false)
		return 0
	}
	var st wire.Status
	if err := cl.Call(ctx, wire.PathStatus, nil, &st); err != nil {
		fmt.Fprintf(env.Stderr, "%s status: %v\n", env.Prog, err)
		return 1
	}
	alive := 0
	for _, w := range st.Workers {
		if w.Alive {
			alive++
		}
	}
	fmt.Fprintf(env.Stdout, "coordinator %s: %d worker(s) alive of %d known; status page http://%s/\n", *coordAddr, alive, len(st.Workers), strings.TrimPrefix(wire.BaseURL(*coordAddr), "http://"))
	for _, j := range st.Jobs {
		fmt.Fprintf(env.Stdout, "%s  %-10s %s  %s\n", j.ID, j.App, progressLine(j), j.Output)
	}
	return 0
}

func runApps(env Env, args []string) int {
	fs := newFlags(env, "apps")
	if code, ok := parse(fs, args, false); !ok {
		return code
	}
	for _, name := range env.Registry.Names() {
		app, _ := env.Registry.Lookup(name)
		fmt.Fprintf(env.Stdout, "%-10s %s\n", name, app.Usage)
		for _, f := range app.Flags {
			def := ""
			if f.Default != "" {
				def = fmt.Sprintf(" (default %q)", f.Default)
			}
			fmt.Fprintf(env.Stdout, "    --%s: %s%s\n", f.Name, f.Usage, def)
		}
	}
	return 0
}

func defaultWorkers() int { return runtime.NumCPU() }
