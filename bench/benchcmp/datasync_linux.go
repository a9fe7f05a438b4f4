package main

import (
	"os"
	"syscall"
)

// fdatasync is what Cairn's WAL syncs with on Linux (raft/wal).
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
