package wal

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"sync"
)

// ErrStaleFile is returned by a MemFS file handle opened before a Crash:
// the process that held it is gone.
var ErrStaleFile = errors.New("wal: file handle predates a simulated crash")

// MemFS is an in-memory FS that models what survives a power failure.
//
// Each file remembers how many of its bytes have been fsynced; each
// directory remembers which of its entries (creations, renames, removals)
// have been made durable by SyncDir. Crash throws away everything else, as
// a machine that loses power does; CrashWith additionally keeps a random
// prefix of each file's unsynced tail, which is what a torn write looks
// like. Files are treated as append-only, which is how the WAL and the
// Snapshotter use them; Truncate and Create take effect durably at once.
// Directories are durable as soon as MkdirAll returns.
//
// MemFS starts no goroutines and costs one map lookup per operation, so the
// simulator can give every node its own. It is safe for concurrent use.
type MemFS struct {
	mu      sync.Mutex
	gen     uint64 // incremented by each crash; older handles are stale
	dirs    map[string]bool
	names   map[string]*memInode // the namespace the running process sees
	durable map[string]*memInode // the namespace a crash would leave

	// FileSyncs and DirSyncs count Sync and SyncDir calls, for tests that
	// assert how many fsyncs an operation costs.
	FileSyncs, DirSyncs int
}

type memInode struct {
	data   []byte
	synced int // data[:synced] survives a crash
}

var _ FS = (*MemFS)(nil)

// NewMemFS returns an empty MemFS whose only directory is the root.
func NewMemFS() *MemFS {
	return &MemFS{
		dirs:    map[string]bool{"/": true, ".": true},
		names:   map[string]*memInode{},
		durable: map[string]*memInode{},
	}
}

type memFile struct {
	fs     *MemFS
	gen    uint64
	ino    *memInode
	closed bool
}

func (f *memFile) check() error {
	if f.closed {
		return fs.ErrClosed
	}
	if f.gen != f.fs.gen {
		return ErrStaleFile
	}
	return nil
}

func (f *memFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check(); err != nil {
		return 0, err
	}
	f.ino.data = append(f.ino.data, p...)
	return len(p), nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check(); err != nil {
		return err
	}
	f.ino.synced = len(f.ino.data)
	f.fs.FileSyncs++
	return nil
}

func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return fs.ErrClosed
	}
	f.closed = true
	return nil
}

func (m *MemFS) parentExists(op, name string) error {
	if !m.dirs[filepath.Dir(name)] {
		return notExist(op, filepath.Dir(name))
	}
	return nil
}

// Create implements FS.
func (m *MemFS) Create(name string) (File, error) {
	name = cleanPath(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.parentExists("create", name); err != nil {
		return nil, err
	}
	ino := m.names[name]
	if ino == nil {
		ino = &memInode{}
		m.names[name] = ino
	} else {
		// A fresh array, so readers of the old content are unaffected.
		ino.data, ino.synced = nil, 0
	}
	return &memFile{fs: m, gen: m.gen, ino: ino}, nil
}

// OpenAppend implements FS.
func (m *MemFS) OpenAppend(name string) (File, error) {
	name = cleanPath(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.parentExists("open", name); err != nil {
		return nil, err
	}
	ino := m.names[name]
	if ino == nil {
		ino = &memInode{}
		m.names[name] = ino
	}
	return &memFile{fs: m, gen: m.gen, ino: ino}, nil
}

func (m *MemFS) lookup(op, name string) (*memInode, error) {
	ino := m.names[cleanPath(name)]
	if ino == nil {
		return nil, notExist(op, name)
	}
	return ino, nil
}

// Open implements FS.
func (m *MemFS) Open(name string) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ino, err := m.lookup("open", name)
	if err != nil {
		return nil, err
	}
	// The capped slice is never written again: appends go past its end
	// and Truncate and Create replace the array.
	return io.NopCloser(bytes.NewReader(ino.data[:len(ino.data):len(ino.data)])), nil
}

// ReadFile implements FS.
func (m *MemFS) ReadFile(name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ino, err := m.lookup("read", name)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(ino.data), nil
}

// Size implements FS.
func (m *MemFS) Size(name string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ino, err := m.lookup("stat", name)
	if err != nil {
		return 0, err
	}
	return int64(len(ino.data)), nil
}

// Rename implements FS.
func (m *MemFS) Rename(oldname, newname string) error {
	oldname, newname = cleanPath(oldname), cleanPath(newname)
	m.mu.Lock()
	defer m.mu.Unlock()
	ino, err := m.lookup("rename", oldname)
	if err != nil {
		return err
	}
	if err := m.parentExists("rename", newname); err != nil {
		return err
	}
	delete(m.names, oldname)
	m.names[newname] = ino
	return nil
}

// Remove implements FS.
func (m *MemFS) Remove(name string) error {
	name = cleanPath(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.lookup("remove", name); err != nil {
		return err
	}
	delete(m.names, name)
	return nil
}

// List implements FS.
func (m *MemFS) List(dir string) ([]string, error) {
	dir = cleanPath(dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.dirs[dir] {
		return nil, notExist("readdir", dir)
	}
	var names []string
	for p := range m.names {
		if filepath.Dir(p) == dir {
			names = append(names, filepath.Base(p))
		}
	}
	sort.Strings(names)
	return names, nil
}

// MkdirAll implements FS.
func (m *MemFS) MkdirAll(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for d := cleanPath(dir); !m.dirs[d]; d = filepath.Dir(d) {
		m.dirs[d] = true
	}
	return nil
}

// SyncDir implements FS.
func (m *MemFS) SyncDir(dir string) error {
	dir = cleanPath(dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.dirs[dir] {
		return notExist("sync", dir)
	}
	for p := range m.durable {
		if filepath.Dir(p) == dir && m.names[p] == nil {
			delete(m.durable, p)
		}
	}
	for p, ino := range m.names {
		if filepath.Dir(p) == dir {
			m.durable[p] = ino
		}
	}
	m.DirSyncs++
	return nil
}

// Truncate implements FS.
func (m *MemFS) Truncate(name string, size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ino, err := m.lookup("truncate", name)
	if err != nil {
		return err
	}
	if size < 0 {
		return &fs.PathError{Op: "truncate", Path: name, Err: fs.ErrInvalid}
	}
	if int(size) <= len(ino.data) {
		ino.data = bytes.Clone(ino.data[:size])
	} else {
		ino.data = append(ino.data, make([]byte, int(size)-len(ino.data))...)
	}
	ino.synced = min(ino.synced, int(size))
	return nil
}

// Crash simulates a power failure: every unsynced byte and every unsynced
// directory change is lost, and file handles opened before it fail with
// ErrStaleFile.
func (m *MemFS) Crash() { m.CrashWith(nil) }

// CrashWith is Crash, except that each file keeps a random prefix of its
// unsynced tail, drawn from rng: a torn write. The outcome depends only on
// the file system's state and rng, never on map order. A nil rng keeps no
// unsynced bytes.
func (m *MemFS) CrashWith(rng *rand.Rand) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	paths := make([]string, 0, len(m.durable))
	for p := range m.durable {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	m.names = make(map[string]*memInode, len(paths))
	done := map[*memInode]bool{}
	for _, p := range paths {
		ino := m.durable[p]
		m.names[p] = ino
		if done[ino] {
			continue
		}
		done[ino] = true
		keep := ino.synced
		if rng != nil && len(ino.data) > keep {
			keep += rng.IntN(len(ino.data) - keep + 1)
		}
		ino.data = bytes.Clone(ino.data[:keep])
		ino.synced = keep
	}
}

// Clone returns an independent copy of the file system, durable state and
// all, so a test can crash or corrupt the copy and keep the original.
func (m *MemFS) Clone() *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := NewMemFS()
	for d := range m.dirs {
		c.dirs[d] = true
	}
	copies := map[*memInode]*memInode{}
	cp := func(ino *memInode) *memInode {
		if c := copies[ino]; c != nil {
			return c
		}
		n := &memInode{data: bytes.Clone(ino.data), synced: ino.synced}
		copies[ino] = n
		return n
	}
	for p, ino := range m.names {
		c.names[p] = cp(ino)
	}
	for p, ino := range m.durable {
		c.durable[p] = cp(ino)
	}
	return c
}
