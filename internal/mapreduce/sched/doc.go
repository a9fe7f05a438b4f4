// Package sched is the MapReduce coordinator's scheduling core: which task
// runs where, when a worker is dead, when a task gets a backup execution,
// which execution's output is committed, and when a job is done or failed.
//
// It is a pure, single-threaded state machine in the style of a Raft core:
// no goroutines, no I/O, no clock. The coordinator shell feeds it events
// (RegisterWorker, RequestTask, Heartbeat, ReportDone, ReportFailed,
// ReportFetchFailed) and the passage of time (Tick), each with the current
// time as an argument, and persists State whenever Dirty says so. Given the
// same calls with the same times it makes the same decisions, so every
// policy is unit-tested without sleeping.
//
// Policies, after Dean and Ghemawat, "MapReduce: Simplified Data
// Processing on Large Clusters" (OSDI 2004):
//   - §3.3 worker failure: a worker silent for Config.HeartbeatTimeout is
//     dead; its in-progress tasks go back to idle, and so do its completed
//     map tasks of unfinished jobs, whose output lived on its disk. A
//     reducer that cannot fetch a map output reports it, and that map
//     task is re-executed too.
//   - §3.3 semantics: the first completion of a task is committed; later
//     ones (backups, re-executions) are ignored and their counters never
//     counted.
//   - §3.6 backup tasks: only when a phase has no idle task left (the
//     tail of the phase, when some workers would otherwise sit idle), an
//     in-progress task running longer than Config.BackupFactor times the
//     median duration of that phase's completed tasks (and at least
//     Config.BackupMinAge) gets one backup execution on another worker.
//     An attempt older than Config.TaskTimeout qualifies without a median,
//     and a task whose every attempt is that old (all hung) gets one more.
//   - Bounded retries: a task whose user code fails Config.MaxFailures
//     times fails the job, with the task's last error.
package sched
