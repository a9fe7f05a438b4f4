package job

import (
	"errors"
	"fmt"
	"hash/fnv"
	"iter"
	"sort"
	"strings"
	"sync"
)

// Sentinel errors. Callers check them with errors.Is.
var (
	// ErrUnknownApp means no app is registered under the requested name.
	ErrUnknownApp = errors.New("mapreduce: unknown app")
	// ErrBadSpec means a job specification is invalid (see Spec.Validate).
	ErrBadSpec = errors.New("mapreduce: invalid job")
	// ErrNoInput means an input pattern matched no file.
	ErrNoInput = errors.New("mapreduce: no input")
)

// Record is one line of input handed to a map function.
type Record struct {
	// File is the input file's path as the job named it.
	File string
	// Offset is the byte offset of the line's first byte in File.
	Offset int64
	// Line is the 1-based line number, or 0 unless App.LineNumbers is set
	// (numbering lines costs the coordinator one extra read of every input).
	Line int64
	// Text is the line without its trailing newline.
	Text string
}

// Output receives what map, combine and reduce functions produce. It is
// used by one goroutine: a task's functions are never called concurrently.
type Output interface {
	// Emit adds a key/value pair. From a map function it goes to the
	// shuffle; from a reduce function it becomes the output line
	// "key<TAB>value" (just the key if value is empty, just the value if
	// key is empty).
	Emit(key, value string)
	// Count adds delta to the user counter with the given name. Counters of
	// a task are added to the job's counters once, when the task commits.
	Count(counter string, delta int64)
}

// MapFunc is called once per input record.
type MapFunc func(rec Record, out Output) error

// ReduceFunc is called once per distinct key, in key order, with every
// value emitted for that key. values may be ranged over once. A combiner has
// the same type: it runs on map output and must emit pairs whose reduction
// gives the same result (for example, partial sums).
type ReduceFunc func(key string, values iter.Seq[string], out Output) error

// PartitionFunc returns the reduce task, in [0, nReduce), that receives key.
// It must be deterministic: every map task must agree.
type PartitionFunc func(key string, nReduce int) int

// FlushFunc is called once after a task's last Map or Reduce call, for
// functions that keep state across records (in-mapper combining, or a
// streaming process that must be drained).
type FlushFunc func(out Output) error

// Funcs are the functions of one task. App.New builds a fresh Funcs for
// every task, so closures may keep per-task state without locking.
type Funcs struct {
	Map       MapFunc       // required
	Reduce    ReduceFunc    // required
	Combine   ReduceFunc    // optional: runs on sorted map output
	Partition PartitionFunc // optional: default HashPartition
	Flush     FlushFunc     // optional: called after the last record of a task
	// Cleanup, if set, is called when the task ends, whether it succeeded,
	// failed or was cancelled, to release what Map or Reduce acquired (a
	// streaming process, say).
	Cleanup func()
}

// Args are an app's flag values, by flag name.
type Args map[string]string

// Flag declares one app flag; the CLI exposes it as --Name.
type Flag struct {
	Name, Default, Usage string
}

// PlanInput is what App.Plan sees when a job is submitted.
type PlanInput struct {
	Files   []string // the input files, sorted, globs expanded
	NReduce int
	Args    Args
}

// App is a MapReduce program registered under a name.
type App struct {
	// Name identifies the app (the --app flag).
	Name string
	// Usage is a one-line description for help output.
	Usage string
	// Flags are the app's own flags with their defaults.
	Flags []Flag
	// LineNumbers asks for Record.Line to be filled in.
	LineNumbers bool
	// Plan, if set, runs once in the coordinator when the job is submitted,
	// before any task. The Args it returns replace the job's Args and are
	// passed to every task; they are stored with the job, so every task and
	// a restarted coordinator see the same plan. The sort app samples keys
	// here to build its range partitioner.
	Plan func(in PlanInput) (Args, error)
	// New builds the functions for one task from the job's Args. It is
	// called in workers, once per task attempt.
	New func(args Args) (*Funcs, error)
}

// WithDefaults returns args with every declared flag's default filled in
// for flags args does not set.
func (a *App) WithDefaults(args Args) Args {
	out := Args{}
	for _, f := range a.Flags {
		out[f.Name] = f.Default
	}
	for k, v := range args {
		out[k] = v
	}
	return out
}

// HashPartition is the default partitioner: FNV-1a of the key modulo
// nReduce, as in the paper's "hash(key) mod R".
func HashPartition(key string, nReduce int) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(nReduce))
}

// Registry maps app names to apps. The zero value is empty and ready to use;
// it is safe for concurrent use.
type Registry struct {
	mu   sync.Mutex
	apps map[string]*App
}

// Register adds app. It returns an error if the name is empty, taken, or the
// app lacks New.
func (r *Registry) Register(app *App) error {
	if app == nil || app.Name == "" || app.New == nil {
		return fmt.Errorf("%w: app needs a Name and New", ErrBadSpec)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.apps == nil {
		r.apps = map[string]*App{}
	}
	if _, ok := r.apps[app.Name]; ok {
		return fmt.Errorf("%w: app %q registered twice", ErrBadSpec, app.Name)
	}
	r.apps[app.Name] = app
	return nil
}

// Lookup returns the app registered under name or an error wrapping
// ErrUnknownApp that lists the known apps.
func (r *Registry) Lookup(name string) (*App, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a, ok := r.apps[name]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownApp, name, strings.Join(r.namesLocked(), ", "))
}

// Names returns the registered app names, sorted.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.namesLocked()
}

func (r *Registry) namesLocked() []string {
	names := make([]string, 0, len(r.apps))
	for n := range r.apps {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
