// Package coord is the MapReduce coordinator: the goroutine and network
// shell around the pure scheduler in package sched.
//
// It serves the JSON control API of package wire to workers and clients,
// plans submitted jobs (expanding inputs, cutting splits, running the
// app's Plan hook), drives sched with an injected Clock (a ticker calls
// Tick; worker requests call RequestTask and the Report methods), persists
// the scheduler's State to its data directory atomically (temp file, fsync,
// rename, fsync of the directory) whenever it changes, so that a restarted
// coordinator resumes its jobs, and finalizes output directories when jobs
// end. It also serves a status page at / and the same data at
// /status.json.
//
// Goroutines: one HTTP server (a goroutine per request) and one ticker
// loop. Every scheduler call happens under Coordinator.mu.
package coord
