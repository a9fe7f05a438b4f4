// Package mapreduce is Cairn's public MapReduce API: write map and reduce
// functions (and optionally a combiner, a partitioner, a flush hook and a
// planning hook), register them as an App under a name, and call Main from
// your own main. The resulting binary is a complete MapReduce system: it
// can act as coordinator, worker (on any number of hosts), client (submit,
// status) or run a job locally with worker processes (run).
//
//	func main() {
//		mapreduce.MustRegister(&mapreduce.App{Name: "mycount", New: newFuncs})
//		os.Exit(mapreduce.Main(os.Args[1:]))
//	}
//
// Main also offers the built-in apps of `cairn mr` (wordcount, grep,
// index, sort, streaming), which are written with this same API (see
// Builtins), unless an app of yours has the same name. docs/mapreduce.md
// describes the execution model, the fault tolerance and the command line.
//
// Contract for your functions: New is called once per task attempt and
// the Funcs it returns are used by one goroutine; a task may run more than
// once (re-execution after a failure, backup executions near the end of a
// job), and exactly one execution's output and counters are kept, so map
// and reduce must be deterministic functions of their input for the
// output to be well defined, as in the paper (§3.3).
package mapreduce
