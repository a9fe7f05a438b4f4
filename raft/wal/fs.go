package wal

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// File is a file opened for writing. Writes go to the end of the file.
type File interface {
	io.Writer
	// Sync makes every byte written so far durable (fsync).
	Sync() error
	Close() error
}

// FS is the file system the WAL and the Snapshotter use. It is the seam
// that lets tests and the simulator replace the disk with MemFS, which can
// lose unsynced data the way a real machine does when it loses power.
//
// Names are slash-separated paths. Missing files are reported with errors
// that satisfy errors.Is(err, fs.ErrNotExist).
type FS interface {
	// Create creates name, or truncates it if it exists, for writing.
	Create(name string) (File, error)
	// OpenAppend opens name for appending, creating it if needed.
	OpenAppend(name string) (File, error)
	// Open opens name for reading.
	Open(name string) (io.ReadCloser, error)
	// ReadFile returns the whole content of name.
	ReadFile(name string) ([]byte, error)
	// Size returns the length of name in bytes.
	Size(name string) (int64, error)
	// Rename atomically replaces newname with oldname. The change is
	// durable only after SyncDir of the directories involved.
	Rename(oldname, newname string) error
	// Remove deletes name. The change is durable only after SyncDir.
	Remove(name string) error
	// List returns the names (not paths) of the regular files in dir,
	// sorted.
	List(dir string) ([]string, error)
	// MkdirAll creates dir and any missing parents.
	MkdirAll(dir string) error
	// SyncDir makes the creations, renames and removals of entries in
	// dir durable.
	SyncDir(dir string) error
	// Truncate changes the size of name.
	Truncate(name string, size int64) error
}

// OverwriteFS is an FS that can also open an existing file for writing at
// an offset, overwriting what is there. The WAL preallocates segments
// (Options.Preallocate) only on an FS that implements it: MemFS models
// append-only files and does not.
type OverwriteFS interface {
	FS
	// OpenWriteAt opens the existing file name for writing, starting at
	// byte off, without truncating it.
	OpenWriteAt(name string, off int64) (File, error)
}

// OSFS is the FS of the operating system.
type OSFS struct{}

var _ OverwriteFS = OSFS{}

// osFile is a File of the operating system whose Sync is datasync.
type osFile struct{ *os.File }

// Sync implements File with fdatasync where there is one (datasync).
func (f osFile) Sync() error { return datasync(f.File) }

func openOSFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// Create implements FS.
func (OSFS) Create(name string) (File, error) {
	return openOSFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
}

// OpenAppend implements FS.
func (OSFS) OpenAppend(name string) (File, error) {
	return openOSFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}

// OpenWriteAt implements OverwriteFS.
func (OSFS) OpenWriteAt(name string, off int64) (File, error) {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return osFile{f}, nil
}

// Open implements FS.
func (OSFS) Open(name string) (io.ReadCloser, error) { return os.Open(name) }

// ReadFile implements FS.
func (OSFS) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }

// Size implements FS.
func (OSFS) Size(name string) (int64, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Rename implements FS.
func (OSFS) Rename(oldname, newname string) error { return os.Rename(oldname, newname) }

// Remove implements FS.
func (OSFS) Remove(name string) error { return os.Remove(name) }

// List implements FS.
func (OSFS) List(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// MkdirAll implements FS.
func (OSFS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o755) }

// SyncDir implements FS. Without it a newly created or renamed file can
// vanish in a crash even though its contents were fsynced.
func (OSFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}

// Truncate implements FS.
func (OSFS) Truncate(name string, size int64) error { return os.Truncate(name, size) }

func notExist(op, name string) error {
	return &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
}

func cleanPath(name string) string { return filepath.Clean(name) }

// mkdirDurable creates dir and syncs its parent, so that the directory,
// and with it every file later synced into it, survives a crash.
func mkdirDurable(fsys FS, dir string) error {
	if err := fsys.MkdirAll(dir); err != nil {
		return fmt.Errorf("wal: create %s: %w", dir, err)
	}
	if err := fsys.SyncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
		return fmt.Errorf("wal: sync parent of %s: %w", dir, err)
	}
	return nil
}
