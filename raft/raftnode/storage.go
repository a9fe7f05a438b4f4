package raftnode

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/cairn-db/cairn/raft"
)

// Storage is the durable state of one node: the log and hard state, and
// snapshot files. The raft.Storage methods are read by the core on the
// node's goroutine. With asynchronous writes (the default) Save and
// ApplySnapshot run on the persister goroutine and CreateSnapshot on a
// snapshot goroutine, concurrently with those reads; SaveSnapshot and
// OpenSnapshot may be called by a transport at any time. An
// implementation must therefore be safe for concurrent use.
type Storage interface {
	raft.Storage
	// Save appends entries (truncating stored entries at and after
	// ents[0].Index) and records hs if non-empty. When sync is true it
	// returns only once everything is durable; one fsync covers the batch.
	Save(hs raft.HardState, ents []raft.Entry, sync bool) error
	// SaveSnapshot durably stores snapshot bytes received from a leader.
	// It does not change the log: ApplySnapshot does, once the core has
	// accepted the snapshot.
	SaveSnapshot(meta raft.SnapshotMeta, r io.Reader) error
	// OpenSnapshot opens the stored snapshot at index for reading.
	OpenSnapshot(index uint64) (io.ReadCloser, int64, error)
	// ApplySnapshot durably replaces the log with the snapshot at
	// meta.Index, whose bytes SaveSnapshot already stored.
	ApplySnapshot(meta raft.SnapshotMeta) error
	// CreateSnapshot durably stores a snapshot of the state machine at
	// index, written by write, and compacts the log before index, keeping
	// `keep` entries so slightly lagging followers need no snapshot.
	CreateSnapshot(index uint64, cs raft.ConfState, keep uint64, write func(io.Writer) error) error
}

// ErrNoSnapshot is returned by OpenSnapshot when no snapshot is stored at
// the index.
var ErrNoSnapshot = errors.New("raftnode: no snapshot at that index")

// MemStorage is the in-memory twin of a durable Storage, for tests.
type MemStorage struct {
	*raft.MemoryStorage
	mu       sync.Mutex
	snaps    map[uint64][]byte
	saveHook func() error
}

// SetSaveHook makes Save call f first; an error from f simulates a failed
// disk write.
func (s *MemStorage) SetSaveHook(f func() error) {
	s.mu.Lock()
	s.saveHook = f
	s.mu.Unlock()
}

// NewMemStorage returns an empty MemStorage.
func NewMemStorage() *MemStorage {
	return &MemStorage{MemoryStorage: raft.NewMemoryStorage(), snaps: map[uint64][]byte{}}
}

// Save implements Storage.
func (s *MemStorage) Save(hs raft.HardState, ents []raft.Entry, _ bool) error {
	s.mu.Lock()
	hook := s.saveHook
	s.mu.Unlock()
	if hook != nil {
		if err := hook(); err != nil {
			return err
		}
	}
	if err := s.Append(ents); err != nil {
		return err
	}
	if !hs.IsEmpty() {
		s.SetHardState(hs)
	}
	return nil
}

// SaveSnapshot implements Storage.
func (s *MemStorage) SaveSnapshot(meta raft.SnapshotMeta, r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("raftnode: reading snapshot %d: %w", meta.Index, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snaps[meta.Index] = data
	return nil
}

// OpenSnapshot implements Storage.
func (s *MemStorage) OpenSnapshot(index uint64) (io.ReadCloser, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, ok := s.snaps[index]
	if !ok {
		return nil, 0, fmt.Errorf("%w: %d", ErrNoSnapshot, index)
	}
	return io.NopCloser(bytes.NewReader(data)), int64(len(data)), nil
}

// ApplySnapshot implements Storage.
func (s *MemStorage) ApplySnapshot(meta raft.SnapshotMeta) error {
	s.mu.Lock()
	_, ok := s.snaps[meta.Index]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %d", ErrNoSnapshot, meta.Index)
	}
	return s.MemoryStorage.ApplySnapshot(raft.Snapshot{Meta: meta})
}

// CreateSnapshot implements Storage.
func (s *MemStorage) CreateSnapshot(index uint64, cs raft.ConfState, keep uint64, write func(io.Writer) error) error {
	var buf bytes.Buffer
	if err := write(&buf); err != nil {
		return err
	}
	s.mu.Lock()
	s.snaps[index] = buf.Bytes()
	s.mu.Unlock()
	if _, err := s.MemoryStorage.CreateSnapshot(index, cs, nil); err != nil {
		return err
	}
	if index > keep {
		if err := s.Compact(index - keep); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return err
		}
	}
	return nil
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
