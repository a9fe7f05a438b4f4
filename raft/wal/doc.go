// Package wal is the durable storage under a Cairn Raft node: a segmented,
// checksummed write-ahead log, streaming snapshot files, and DiskStorage,
// which combines the two into a raft.Storage.
//
// Raft's safety rests on a node remembering, across crashes, everything it
// promised: its term and vote (Figure 2 of the Raft paper) and every log
// entry it acknowledged. The driver therefore persists each Ready batch
// with DiskStorage.Save, which appends the records and fsyncs once, before
// it sends the messages that depend on them.
//
// All file access goes through the small FS interface. OSFS uses the real
// file system; MemFS is an in-memory twin that remembers which bytes and
// which directory entries have been synced and can simulate a crash,
// including a torn final write, deterministically from a seed. Tests and
// the simulator use MemFS to check that nothing acknowledged is lost.
//
// Recovery distinguishes two kinds of damage. A partial or garbage record at
// the very end of the last segment is what a crash in the middle of a write
// leaves behind; it was never acknowledged, so Open truncates it and logs a
// warning. A bad record followed by valid data, or a bad record in any
// earlier segment, means bytes that were once durable have changed; Open
// refuses to guess and returns an error wrapping ErrCorrupt that names the
// file and byte offset.
//
// The on-disk formats and the durability rules are described in
// docs/wal.md.
package wal
