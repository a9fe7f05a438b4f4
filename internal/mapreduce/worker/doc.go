// Package worker is a MapReduce worker: it registers with a coordinator,
// heartbeats, asks for tasks and runs them, and serves its map output to
// reducers over HTTP from its own local directory (no shared filesystem
// for intermediate data).
//
// A map task reads its split line by line, calls the app's map function,
// sorts and combines the output into one file per reduce partition (package
// kv), and only then renames the attempt's directory into place, so a
// partial map output is never served. A reduce task fetches its partition
// from every map task's worker, merges them, calls the reduce function,
// writes its output file under the output's _temporary directory, fsyncs
// it and renames it to part-NNNNN: a crashed attempt leaves no partial
// file and a duplicate attempt replaces the file with identical content.
//
// Goroutines: Run's own (the task loop), one heartbeat loop, and the HTTP
// shuffle server. Config.FaultHook lets tests crash, hang, freeze or fail
// a worker at named points of a task.
package worker
