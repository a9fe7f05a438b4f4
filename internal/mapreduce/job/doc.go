// Package job defines what a MapReduce job is, independent of how it is
// run: the App a user registers (map, reduce, optional combiner,
// partitioner, flush and planning hooks), the Registry that names apps, the
// Spec a client submits, and the input Splits the coordinator cuts from it.
//
// The public package github.com/cairn-db/cairn/mapreduce re-exports these
// types; the scheduler, coordinator and worker packages depend only on this
// one, never on each other's internals.
package job
