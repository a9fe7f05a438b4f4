package raft

import (
	"errors"
	"fmt"
)

// raftLog is the core's view of the log: the durable part read through
// Storage, followed by unstable entries (or a snapshot) that have been
// handed out in a Ready but not yet reported durable by Advance.
type raftLog struct {
	storage  Storage
	unstable unstable
	// committed is the highest index known to be committed by a quorum.
	committed uint64
	// applied is the highest index the application has applied.
	applied uint64
	// maxApplyBytes bounds the Data of committed entries in one Ready.
	maxApplyBytes uint64
}

func newLog(storage Storage, maxApplyBytes uint64) (*raftLog, error) {
	first, err := storage.FirstIndex()
	if err != nil {
		return nil, fmt.Errorf("raft: storage first index: %w", err)
	}
	last, err := storage.LastIndex()
	if err != nil {
		return nil, fmt.Errorf("raft: storage last index: %w", err)
	}
	l := &raftLog{storage: storage, maxApplyBytes: maxApplyBytes}
	l.unstable.offset = last + 1
	l.unstable.inProgress = last + 1
	// Everything up to the snapshot is committed and applied by definition.
	l.committed = first - 1
	l.applied = first - 1
	return l, nil
}

func (l *raftLog) String() string {
	return fmt.Sprintf("committed=%d applied=%d unstable.offset=%d len(unstable)=%d",
		l.committed, l.applied, l.unstable.offset, len(l.unstable.entries))
}

func (l *raftLog) firstIndex() uint64 {
	if i, ok := l.unstable.maybeFirstIndex(); ok {
		return i
	}
	i, err := l.storage.FirstIndex()
	if err != nil {
		panic(fmt.Sprintf("raft: storage FirstIndex: %v", err))
	}
	return i
}

func (l *raftLog) lastIndex() uint64 {
	if i, ok := l.unstable.maybeLastIndex(); ok {
		return i
	}
	i, err := l.storage.LastIndex()
	if err != nil {
		panic(fmt.Sprintf("raft: storage LastIndex: %v", err))
	}
	return i
}

// lastStableIndex is the last index the driver has reported durable. A
// leader counts itself towards a quorum only up to here.
func (l *raftLog) lastStableIndex() uint64 {
	if l.unstable.snapshot != nil {
		return 0 // conservatively: nothing until the snapshot is durable
	}
	return l.unstable.offset - 1
}

func (l *raftLog) lastTerm() uint64 {
	t, err := l.term(l.lastIndex())
	if err != nil {
		panic(fmt.Sprintf("raft: term of last index: %v", err))
	}
	return t
}

// term returns the term of entry i. Index firstIndex-1 is valid: it is the
// snapshot's (or the dummy entry's) term.
func (l *raftLog) term(i uint64) (uint64, error) {
	if t, ok := l.unstable.maybeTerm(i); ok {
		return t, nil
	}
	dummy := l.firstIndex() - 1
	if i < dummy {
		return 0, ErrCompacted
	}
	if i > l.lastIndex() {
		return 0, ErrUnavailable
	}
	t, err := l.storage.Term(i)
	if err == nil || errors.Is(err, ErrCompacted) || errors.Is(err, ErrUnavailable) {
		return t, err
	}
	panic(fmt.Sprintf("raft: storage Term(%d): %v", i, err))
}

func (l *raftLog) zeroTermOnOutOfBounds(t uint64, err error) uint64 {
	if err != nil {
		return 0
	}
	return t
}

func (l *raftLog) matchTerm(i, term uint64) bool {
	t, err := l.term(i)
	return err == nil && t == term
}

// isUpToDate reports whether a log ending at (lasti, term) is at least as
// up-to-date as ours (§5.4.1).
func (l *raftLog) isUpToDate(lasti, term uint64) bool {
	lt := l.lastTerm()
	return term > lt || (term == lt && lasti >= l.lastIndex())
}

// maybeAppend handles a MsgApp: if our log has (index, logTerm), the
// entries are appended (truncating any conflicting suffix) and the commit
// index advanced. It returns the index of the last new entry.
func (l *raftLog) maybeAppend(index, logTerm, committed uint64, ents []Entry) (uint64, bool) {
	if !l.matchTerm(index, logTerm) {
		return 0, false
	}
	lastNew := index + uint64(len(ents))
	ci := l.findConflict(ents)
	switch {
	case ci == 0:
	case ci <= l.committed:
		panic(fmt.Sprintf("raft: entry %d conflicts with committed entry (committed=%d)", ci, l.committed))
	default:
		l.append(ents[ci-(index+1):]...)
	}
	l.commitTo(min(committed, lastNew))
	return lastNew, true
}

// findConflict returns the index of the first entry in ents that is missing
// from or disagrees with our log, or 0 if all are present.
func (l *raftLog) findConflict(ents []Entry) uint64 {
	for i := range ents {
		if !l.matchTerm(ents[i].Index, ents[i].Term) {
			return ents[i].Index
		}
	}
	return 0
}

// findConflictByTerm returns the largest index <= index whose term is <=
// term, and that term. Both sides of fast backtracking use it: the
// follower to pick a hint, the leader to jump over a whole term (§5.3).
func (l *raftLog) findConflictByTerm(index, term uint64) (uint64, uint64) {
	for ; index > 0; index-- {
		t, err := l.term(index)
		if err != nil {
			return index, 0
		}
		if t <= term {
			return index, t
		}
	}
	return 0, 0
}

func (l *raftLog) append(ents ...Entry) uint64 {
	if len(ents) == 0 {
		return l.lastIndex()
	}
	if after := ents[0].Index - 1; after < l.committed {
		panic(fmt.Sprintf("raft: append after %d is below committed %d", after, l.committed))
	}
	l.unstable.truncateAndAppend(ents)
	return l.lastIndex()
}

// entries returns entries from lo to the end of the log, at most maxSize
// bytes (but at least one entry).
func (l *raftLog) entries(lo, maxSize uint64) ([]Entry, error) {
	if lo > l.lastIndex() {
		return nil, nil
	}
	return l.slice(lo, l.lastIndex()+1, maxSize)
}

// allEntries returns the whole log; for tests and invariant checks.
func (l *raftLog) allEntries() []Entry {
	ents, err := l.entries(l.firstIndex(), noLimit)
	if err == nil {
		return ents
	}
	if errors.Is(err, ErrCompacted) { // raced with compaction
		return l.allEntries()
	}
	panic(err)
}

const noLimit = ^uint64(0)

// slice returns entries in [lo, hi), limited to maxSize bytes.
func (l *raftLog) slice(lo, hi, maxSize uint64) ([]Entry, error) {
	if lo > hi {
		panic(fmt.Sprintf("raft: invalid slice %d > %d", lo, hi))
	}
	if lo < l.firstIndex() {
		return nil, ErrCompacted
	}
	if hi > l.lastIndex()+1 {
		panic(fmt.Sprintf("raft: slice [%d,%d) out of bound [%d,%d]", lo, hi, l.firstIndex(), l.lastIndex()))
	}
	if lo == hi {
		return nil, nil
	}
	var ents []Entry
	if lo < l.unstable.offset {
		stored, err := l.storage.Entries(lo, min(hi, l.unstable.offset), maxSize)
		if errors.Is(err, ErrCompacted) {
			return nil, err
		} else if err != nil {
			panic(fmt.Sprintf("raft: storage Entries[%d,%d): %v", lo, min(hi, l.unstable.offset), err))
		}
		// Storage stopped early because of the size limit.
		if uint64(len(stored)) < min(hi, l.unstable.offset)-lo {
			return stored, nil
		}
		ents = stored
	}
	if hi > l.unstable.offset {
		u := l.unstable.slice(max(lo, l.unstable.offset), hi)
		if len(ents) > 0 {
			// Copy so appending never writes into Storage's backing array.
			combined := make([]Entry, len(ents), len(ents)+len(u))
			copy(combined, ents)
			ents = append(combined, u...)
		} else {
			ents = u
		}
	}
	return limitSize(ents, maxSize), nil
}

func (l *raftLog) commitTo(tocommit uint64) {
	if l.committed < tocommit {
		if l.lastIndex() < tocommit {
			panic(fmt.Sprintf("raft: commit %d is beyond last index %d", tocommit, l.lastIndex()))
		}
		l.committed = tocommit
	}
}

// maybeCommit commits up to maxIndex only if that entry is from term: a
// leader never commits entries of earlier terms by counting replicas
// (§5.4.2, Figure 8).
func (l *raftLog) maybeCommit(maxIndex, term uint64) bool {
	if maxIndex > l.committed && l.zeroTermOnOutOfBounds(l.term(maxIndex)) == term {
		l.commitTo(maxIndex)
		return true
	}
	return false
}

func (l *raftLog) appliedTo(i uint64) {
	if i == 0 {
		return
	}
	if l.committed < i || i < l.applied {
		panic(fmt.Sprintf("raft: applied %d out of range [%d,%d]", i, l.applied, l.committed))
	}
	l.applied = i
}

// applyLimit is the highest index that may be handed out for applying:
// the commit index, and with allowUnstable false (asynchronous storage
// writes) no further than what is durable locally.
func (l *raftLog) applyLimit(allowUnstable bool) uint64 {
	if allowUnstable {
		return l.committed
	}
	return min(l.committed, l.lastStableIndex())
}

func (l *raftLog) hasNextCommittedEnts(allowUnstable bool) bool {
	if l.unstable.snapshot != nil {
		return false
	}
	return l.applyLimit(allowUnstable) > max(l.applied, l.firstIndex()-1)
}

// nextCommittedEnts returns committed entries not yet applied. None are
// returned while a snapshot waits to be installed: it must go first.
func (l *raftLog) nextCommittedEnts(allowUnstable bool) []Entry {
	if !l.hasNextCommittedEnts(allowUnstable) {
		return nil
	}
	off := max(l.applied+1, l.firstIndex())
	hi := l.applyLimit(allowUnstable)
	ents, err := l.slice(off, hi+1, l.maxApplyBytes)
	if err != nil {
		panic(fmt.Sprintf("raft: committed entries [%d,%d]: %v", off, hi, err))
	}
	return ents
}

func (l *raftLog) snapshot() (Snapshot, error) {
	if l.unstable.snapshot != nil {
		return *l.unstable.snapshot, nil
	}
	return l.storage.Snapshot()
}

func (l *raftLog) restore(s Snapshot) {
	l.committed = s.Meta.Index
	l.unstable.restore(s)
}

// unstable holds what the core has decided but the driver has not yet
// reported durable: an incoming snapshot, then entries from offset on.
//
// With asynchronous storage writes, part of it is in progress: handed to
// the driver in a Ready (which persists it later) but not yet
// acknowledged. Entries below inProgress, and the snapshot if
// snapInProgress, are in progress; the next Ready carries only the rest.
// A truncation below inProgress moves it back, so the replacing entries
// are handed out again (the driver's writes are ordered, so the later
// write wins on disk).
//
// epoch counts truncations of entries already handed out. An ack for a
// write handed out in an earlier epoch says nothing reliable about the
// entries: a later write may be rewriting them, possibly with entries of
// the same index and term as before (a log can go from term 2 to 3 and
// back to 2 at one index under successive leaders). Such acks are
// ignored; the ack of the write that carries the replacement covers them.
type unstable struct {
	snapshot       *Snapshot
	entries        []Entry
	offset         uint64
	inProgress     uint64
	snapInProgress bool
	epoch          uint64
}

// nextEntries returns the entries not yet handed to the driver.
func (u *unstable) nextEntries() []Entry {
	start := max(u.inProgress, u.offset)
	if end := u.offset + uint64(len(u.entries)); start >= end {
		return nil
	}
	return u.entries[start-u.offset:]
}

// nextSnapshot returns the snapshot if it is not yet handed to the driver.
func (u *unstable) nextSnapshot() *Snapshot {
	if u.snapshot == nil || u.snapInProgress {
		return nil
	}
	return u.snapshot
}

// acceptInProgress records that everything up to entry index last (and
// the snapshot at snapIndex, if non-zero) has been handed to the driver.
func (u *unstable) acceptInProgress(last, snapIndex uint64) {
	if snapIndex != 0 && u.snapshot != nil && u.snapshot.Meta.Index == snapIndex {
		u.snapInProgress = true
	}
	if last != 0 && last+1 > u.inProgress {
		u.inProgress = last + 1
	}
}

func (u *unstable) maybeFirstIndex() (uint64, bool) {
	if u.snapshot != nil {
		return u.snapshot.Meta.Index + 1, true
	}
	return 0, false
}

func (u *unstable) maybeLastIndex() (uint64, bool) {
	if l := len(u.entries); l != 0 {
		return u.offset + uint64(l) - 1, true
	}
	if u.snapshot != nil {
		return u.snapshot.Meta.Index, true
	}
	return 0, false
}

func (u *unstable) maybeTerm(i uint64) (uint64, bool) {
	if i < u.offset {
		if u.snapshot != nil && u.snapshot.Meta.Index == i {
			return u.snapshot.Meta.Term, true
		}
		return 0, false
	}
	last, ok := u.maybeLastIndex()
	if !ok || i > last {
		return 0, false
	}
	return u.entries[i-u.offset].Term, true
}

// stableTo records that entries up to (i, t) are durable. The term check
// guards against a truncation that replaced the entry meanwhile.
func (u *unstable) stableTo(i, t, epoch uint64) {
	if epoch != u.epoch {
		return
	}
	gt, ok := u.maybeTerm(i)
	if !ok || gt != t || i < u.offset {
		return
	}
	n := i + 1 - u.offset
	u.entries = u.entries[n:]
	u.offset = i + 1
	u.inProgress = max(u.inProgress, u.offset)
	if len(u.entries) == 0 {
		u.entries = nil // let the backing array be collected
	}
}

func (u *unstable) stableSnapTo(i uint64) {
	if u.snapshot != nil && u.snapshot.Meta.Index == i {
		u.snapshot = nil
		u.snapInProgress = false
	}
}

func (u *unstable) restore(s Snapshot) {
	if u.inProgress > u.offset || u.snapInProgress {
		u.epoch++
	}
	u.offset = s.Meta.Index + 1
	u.inProgress = u.offset
	u.entries = nil
	u.snapshot = &s
	u.snapInProgress = false
}

func (u *unstable) truncateAndAppend(ents []Entry) {
	after := ents[0].Index
	if after < u.inProgress {
		u.epoch++
	}
	switch {
	case after == u.offset+uint64(len(u.entries)):
		u.entries = append(u.entries, ents...)
	case after <= u.offset:
		// Replace everything unstable; the durable suffix after `after`
		// is shadowed now and truncated by the driver when it persists.
		u.offset = after
		u.inProgress = after
		u.entries = append([]Entry(nil), ents...)
	default:
		keep := u.slice(u.offset, after)
		u.entries = append(append([]Entry(nil), keep...), ents...)
		u.inProgress = min(u.inProgress, after)
	}
}

func (u *unstable) slice(lo, hi uint64) []Entry {
	if lo > hi || lo < u.offset || hi > u.offset+uint64(len(u.entries)) {
		panic(fmt.Sprintf("raft: unstable slice [%d,%d) out of bound [%d,%d]", lo, hi, u.offset, u.offset+uint64(len(u.entries))))
	}
	return u.entries[lo-u.offset : hi-u.offset : hi-u.offset]
}
