// Package mrtest is the MapReduce test harness: an in-process cluster (a
// coordinator and workers as goroutines, each worker with its own local
// directory and shuffle port, as on separate hosts), corpus generators,
// sequential reference implementations of the built-in apps, and output
// readers. The end-to-end tests of the engine live here too, including
// ones that run workers as real OS processes.
package mrtest
