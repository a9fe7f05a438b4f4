package mapreduce

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cairn-db/cairn/internal/mapreduce/apps"
	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/mrcli"
)

// The types of a job. See the field comments in each for the contract.
type (
	// App is a MapReduce program registered under a name.
	App = job.App
	// Funcs are the functions of one task, built by App.New.
	Funcs = job.Funcs
	// Record is one input line given to a map function.
	Record = job.Record
	// Output receives emitted pairs and user counter increments.
	Output = job.Output
	// MapFunc is called once per input record.
	MapFunc = job.MapFunc
	// ReduceFunc is called once per key with its values (also the type of
	// a combiner).
	ReduceFunc = job.ReduceFunc
	// PartitionFunc maps a key to a reduce task.
	PartitionFunc = job.PartitionFunc
	// FlushFunc is called after a task's last record.
	FlushFunc = job.FlushFunc
	// Args are an app's flag values by name.
	Args = job.Args
	// Flag declares an app flag.
	Flag = job.Flag
	// PlanInput is what App.Plan sees at submission.
	PlanInput = job.PlanInput
	// Counters are named totals.
	Counters = job.Counters
	// Registry maps names to apps.
	Registry = job.Registry
	// Spec is a job as submitted.
	Spec = job.Spec
)

// HashPartition is the default partitioner: hash(key) mod nReduce.
func HashPartition(key string, nReduce int) int { return job.HashPartition(key, nReduce) }

// defaultRegistry holds the apps registered with Register, like
// flag.CommandLine holds the flags of flag.String: a program has one set
// of apps. Use MainWith to pass a registry explicitly instead.
var defaultRegistry job.Registry

// Register adds app to the registry Main uses.
func Register(app *App) error { return defaultRegistry.Register(app) }

// MustRegister is Register that panics on error, for use in main or init.
func MustRegister(app *App) {
	if err := Register(app); err != nil {
		panic(err)
	}
}

// Builtins returns new instances of Cairn's built-in apps: wordcount,
// grep, index, sort and streaming.
func Builtins() []*App { return apps.All() }

// Main runs the command line of a job binary with the registered apps
// (plus the built-in ones whose names are free) and returns the exit code:
//
//	prog run --app NAME --input GLOB --output DIR [--workers N] [--reduce R] [app flags]
//	prog coordinator --listen ADDR --data-dir DIR
//	prog worker --coordinator ADDR [--listen ADDR]
//	prog submit --coordinator ADDR --app NAME --input GLOB --output DIR [app flags]
//	prog status --coordinator ADDR [JOB]
//	prog apps
//
// `run` starts its worker processes as `prog worker`, so the binary must
// call Main with os.Args[1:] for every subcommand.
func Main(args []string) int {
	return MainWith(&defaultRegistry, args, os.Stdout, os.Stderr)
}

// MainWith is Main with an explicit registry and output streams. The
// built-in apps are added to reg when their names are free.
func MainWith(reg *Registry, args []string, stdout, stderr io.Writer) int {
	names := map[string]bool{}
	for _, n := range reg.Names() {
		names[n] = true
	}
	for _, a := range apps.All() {
		if !names[a.Name] {
			if err := reg.Register(a); err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
		}
	}
	return mrcli.Main(mrcli.Env{
		Prog: filepath.Base(os.Args[0]), Registry: reg, WorkerSubcommand: []string{"worker"},
		Stdout: stdout, Stderr: stderr,
	}, args)
}
