package wal

import (
	"errors"
	"os"
	"syscall"
)

// datasync makes f's data durable with fdatasync(2), as etcd's WAL does.
// Unlike fsync it skips metadata that reading the data back does not
// need: on ext4 every write changes the file's modification time, and
// with fsync that alone makes each sync commit the file system's journal
// (a second device flush), even when the write landed in a preallocated
// segment whose size and blocks did not change. A change of size is
// still flushed: the data could not be read back without it.
func datasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return f.Sync()
	}
	var serr error
	// Control keeps the descriptor open for the duration of the call.
	cerr := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if !errors.Is(serr, syscall.EINTR) {
				return
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}
