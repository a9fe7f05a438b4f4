package raft

import (
	"errors"
	"fmt"
	"sync"
)

// ErrCompacted is returned by Storage.Entries and Storage.Term for an index
// at or below the last snapshot: those entries have been discarded.
var ErrCompacted = errors.New("raft: requested index is compacted")

// ErrUnavailable is returned by Storage.Entries and Storage.Term for an
// index above LastIndex.
var ErrUnavailable = errors.New("raft: requested entry is unavailable")

// ErrSnapOutOfDate is returned by MemoryStorage.ApplySnapshot and
// CreateSnapshot for a snapshot older than the one already held.
var ErrSnapOutOfDate = errors.New("raft: snapshot is older than the existing one")

// ErrSnapshotTemporarilyUnavailable may be returned by Storage.Snapshot when
// a snapshot is being prepared; the core retries later.
var ErrSnapshotTemporarilyUnavailable = errors.New("raft: snapshot temporarily unavailable")

// Storage is the core's read-only view of the durable log. The driver
// writes to it (after making the writes durable); the core only reads.
//
// The log held by a Storage is the snapshot at index S (possibly S=0,
// the empty snapshot) followed by entries S+1..LastIndex. Implementations
// must be safe for the core to call while the driver is not writing.
type Storage interface {
	// InitialState returns the persisted HardState and the membership at
	// the time of the last snapshot or bootstrap.
	InitialState() (HardState, ConfState, error)
	// Entries returns entries in [lo, hi). It returns at least one entry
	// if any are in range, and stops before the total Data size exceeds
	// maxSize. lo <= S gives ErrCompacted; hi > LastIndex+1 gives
	// ErrUnavailable. The caller must not modify the returned slice.
	Entries(lo, hi, maxSize uint64) ([]Entry, error)
	// Term returns the term of entry i, for i in [S, LastIndex]: i == S
	// gives the snapshot's term. i < S gives ErrCompacted, i > LastIndex
	// gives ErrUnavailable.
	Term(i uint64) (uint64, error)
	// LastIndex returns the index of the last entry (S if there are none).
	LastIndex() (uint64, error)
	// FirstIndex returns S+1, the first index that may be available.
	FirstIndex() (uint64, error)
	// Snapshot returns the latest snapshot. Its Data may be empty when the
	// driver streams snapshot bytes itself.
	Snapshot() (Snapshot, error)
}

// MemoryStorage is a Storage kept in memory. It is the in-memory twin of a
// durable storage for tests and simulation, and a cache in front of the
// WAL in the real driver. It is safe for concurrent use.
type MemoryStorage struct {
	mu        sync.Mutex
	hardState HardState
	snapshot  Snapshot
	// ents[0] is a dummy entry holding the snapshot's index and term.
	ents []Entry
}

// NewMemoryStorage returns an empty storage.
func NewMemoryStorage() *MemoryStorage {
	return &MemoryStorage{ents: make([]Entry, 1)}
}

// InitialState implements Storage.
func (ms *MemoryStorage) InitialState() (HardState, ConfState, error) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.hardState, cloneConfState(ms.snapshot.Meta.ConfState), nil
}

// SetHardState records the hard state.
func (ms *MemoryStorage) SetHardState(hs HardState) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	ms.hardState = hs
}

// HardState returns the stored hard state.
func (ms *MemoryStorage) HardState() HardState {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.hardState
}

// Entries implements Storage.
func (ms *MemoryStorage) Entries(lo, hi, maxSize uint64) ([]Entry, error) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	offset := ms.ents[0].Index
	if lo <= offset {
		return nil, ErrCompacted
	}
	if hi > ms.lastIndex()+1 {
		return nil, fmt.Errorf("%w: entries [%d,%d) beyond last index %d", ErrUnavailable, lo, hi, ms.lastIndex())
	}
	if lo >= hi {
		return nil, nil
	}
	ents := ms.ents[lo-offset : hi-offset]
	return limitSize(ents, maxSize), nil
}

// Term implements Storage.
func (ms *MemoryStorage) Term(i uint64) (uint64, error) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	offset := ms.ents[0].Index
	if i < offset {
		return 0, ErrCompacted
	}
	if i-offset >= uint64(len(ms.ents)) {
		return 0, ErrUnavailable
	}
	return ms.ents[i-offset].Term, nil
}

// LastIndex implements Storage.
func (ms *MemoryStorage) LastIndex() (uint64, error) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.lastIndex(), nil
}

func (ms *MemoryStorage) lastIndex() uint64 { return ms.ents[0].Index + uint64(len(ms.ents)) - 1 }

// FirstIndex implements Storage.
func (ms *MemoryStorage) FirstIndex() (uint64, error) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.ents[0].Index + 1, nil
}

// Snapshot implements Storage.
func (ms *MemoryStorage) Snapshot() (Snapshot, error) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.snapshot, nil
}

// ApplySnapshot replaces the storage's contents with snap.
func (ms *MemoryStorage) ApplySnapshot(snap Snapshot) error {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if snap.Meta.Index <= ms.snapshot.Meta.Index && ms.snapshot.Meta.Index != 0 {
		return ErrSnapOutOfDate
	}
	ms.snapshot = snap
	ms.ents = []Entry{{Term: snap.Meta.Term, Index: snap.Meta.Index}}
	return nil
}

// CreateSnapshot records a snapshot of the state machine at index i, which
// must be in the log, and returns it. Entries are kept until Compact.
func (ms *MemoryStorage) CreateSnapshot(i uint64, cs ConfState, data []byte) (Snapshot, error) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if i <= ms.snapshot.Meta.Index {
		return Snapshot{}, ErrSnapOutOfDate
	}
	offset := ms.ents[0].Index
	if i > ms.lastIndex() {
		return Snapshot{}, fmt.Errorf("raft: snapshot index %d is beyond last index %d", i, ms.lastIndex())
	}
	ms.snapshot = Snapshot{
		Meta: SnapshotMeta{Index: i, Term: ms.ents[i-offset].Term, ConfState: cloneConfState(cs)},
		Data: data,
	}
	return ms.snapshot, nil
}

// Compact discards entries before compactIndex. The entry at compactIndex
// stays as the new dummy entry so its term remains known.
func (ms *MemoryStorage) Compact(compactIndex uint64) error {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	offset := ms.ents[0].Index
	if compactIndex <= offset {
		return ErrCompacted
	}
	if compactIndex > ms.lastIndex() {
		return fmt.Errorf("raft: compact index %d is beyond last index %d", compactIndex, ms.lastIndex())
	}
	i := compactIndex - offset
	// Keep the capacity: the log grows back by about what was compacted
	// before the next compaction, and an exact-size slice would be copied
	// on every growth of a quarter on the way (append's growth for large
	// slices), four copies of every entry between two compactions.
	ents := make([]Entry, 1, max(uint64(len(ms.ents))-i, uint64(cap(ms.ents))))
	ents[0] = Entry{Index: ms.ents[i].Index, Term: ms.ents[i].Term}
	ents = append(ents, ms.ents[i+1:]...)
	ms.ents = ents
	return nil
}

// Append adds entries, truncating any existing entries they conflict with.
// Entries must be contiguous and must not start after LastIndex+1.
func (ms *MemoryStorage) Append(entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	first := ms.ents[0].Index + 1
	last := entries[0].Index + uint64(len(entries)) - 1
	if last < first {
		return nil // all compacted already
	}
	if first > entries[0].Index {
		entries = entries[first-entries[0].Index:]
	}
	offset := entries[0].Index - ms.ents[0].Index
	switch {
	case uint64(len(ms.ents)) > offset:
		ms.ents = append(ms.ents[:offset:offset], entries...)
	case uint64(len(ms.ents)) == offset:
		ms.ents = append(ms.ents, entries...)
	default:
		return fmt.Errorf("raft: append at %d leaves a gap after last index %d", entries[0].Index, ms.lastIndex())
	}
	return nil
}

func limitSize(ents []Entry, maxSize uint64) []Entry {
	if len(ents) == 0 {
		return ents
	}
	size := uint64(len(ents[0].Data))
	for i := 1; i < len(ents); i++ {
		size += uint64(len(ents[i].Data))
		if size > maxSize {
			return ents[:i]
		}
	}
	return ents
}

func cloneConfState(cs ConfState) ConfState {
	return ConfState{
		Voters:   append([]uint64(nil), cs.Voters...),
		Learners: append([]uint64(nil), cs.Learners...),
	}
}
