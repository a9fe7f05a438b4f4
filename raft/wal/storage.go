package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/cairn-db/cairn/raft"
)

// Record types DiskStorage writes to its WAL.
const (
	// recEntry is a raft.Entry (raft.AppendEntry). An entry whose index is
	// at or below the last one replayed truncates the log there first, as
	// a follower does when it resolves a conflict (§5.3).
	recEntry uint8 = 1
	// recHardState is a raft.HardState (raft.AppendHardState).
	recHardState uint8 = 2
	// recSnapshot marks a snapshot installed from the leader
	// (raft.AppendSnapshotMeta): the log was replaced by it, so replay
	// discards every entry read before it that it does not cover.
	recSnapshot uint8 = 3
	// recCompact marks a snapshot taken locally: the log was compacted up
	// to it and the entries after it stay. Segment headers use it too.
	recCompact uint8 = 4
)

// StorageOptions configures a DiskStorage. The zero value is usable.
type StorageOptions struct {
	// SegmentSize is the WAL segment size (see Options).
	SegmentSize int64
	// Preallocate zero-fills each WAL segment before use (see Options).
	Preallocate bool
	// Logger receives warnings. Nil discards them.
	Logger *slog.Logger
	// Metadata is stored when the data directory is created and ignored
	// afterwards; Metadata() returns what was stored. A server puts its
	// cluster and node IDs here and refuses a directory holding others.
	Metadata []byte
	// KeepEntries is how many entries before a new snapshot stay in the
	// log, so a follower that is only slightly behind can catch up from
	// entries instead of a whole snapshot.
	KeepEntries uint64
	// SnapshotsToKeep is how many snapshot files to retain; the WAL keeps
	// every entry after the oldest of them, so recovery can fall back to
	// it if the newest is damaged. Zero means 2.
	SnapshotsToKeep int
}

// DiskStorage is a raft.Storage whose log and hard state are durable: the
// WAL is the source of truth and an owned raft.MemoryStorage is the cache
// the Raft core reads. Snapshot data lives in files managed by the
// Snapshotter; Snapshot() returns only the meta, and the driver streams
// the bytes from Snapshotter().
//
// The Storage methods may be called concurrently with each other. Save,
// ApplySnapshot and CreateSnapshot are serialised; after any of them fails
// with an I/O error, the storage refuses further writes.
type DiskStorage struct {
	mu   sync.Mutex
	opts StorageOptions
	log  *slog.Logger
	mem  *raft.MemoryStorage
	wal  *WAL
	snap *Snapshotter
	md   []byte

	hs       raft.HardState    // last hard state written to the WAL
	snapMeta raft.SnapshotMeta // newest snapshot recorded in the WAL
	err      error             // sticky: set when a write may have half-happened

	createMu sync.Mutex // serialises CreateSnapshot, which writes without mu

	// Reused by Write under mu: the records of one write and the
	// encoding of their bodies. WAL.Append copies both into its own
	// buffer before returning, so nothing refers to them afterwards.
	recs    []Record
	scratch []byte
	ends    []int
}

// maxScratch bounds the encoding buffer kept between writes, so a rare
// huge batch does not pin its memory.
const maxScratch = 1 << 20

var _ raft.Storage = (*DiskStorage)(nil)

// Layout of a data directory.
const (
	metadataFile = "metadata"
	walDir       = "wal"
	snapDir      = "snap"
)

// OpenDiskStorage opens the data directory dir, creating it if it does not
// exist, and rebuilds the Raft state from it: the newest valid snapshot,
// then the WAL's entries, hard states and snapshot markers after it.
func OpenDiskStorage(fsys FS, dir string, opts StorageOptions) (*DiskStorage, error) {
	if opts.SnapshotsToKeep <= 0 {
		opts.SnapshotsToKeep = 2
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ds := &DiskStorage{opts: opts, log: opts.Logger, mem: raft.NewMemoryStorage()}
	if err := mkdirDurable(fsys, dir); err != nil {
		return nil, err
	}
	md, err := loadMetadata(fsys, dir, opts.Metadata)
	if err != nil {
		return nil, err
	}
	ds.md = md
	if ds.snap, err = NewSnapshotter(fsys, filepath.Join(dir, snapDir), opts.Logger); err != nil {
		return nil, err
	}

	var ops []replayOp
	w, err := Open(fsys, filepath.Join(dir, walDir), Options{
		SegmentSize:   opts.SegmentSize,
		Preallocate:   opts.Preallocate,
		Logger:        opts.Logger,
		SegmentHeader: ds.segmentHeader,
	}, func(r Record) error {
		op, err := decodeOp(r)
		if err != nil {
			return err
		}
		ops = append(ops, op)
		return nil
	})
	if err != nil {
		return nil, err
	}
	ds.wal = w
	if err := ds.replay(ops); err != nil {
		w.Close()
		return nil, err
	}
	return ds, nil
}

// loadMetadata reads the directory's metadata file, or creates it with md
// if the directory is new. Layout: CRC-32C u32 of the data, then the data.
func loadMetadata(fsys FS, dir string, md []byte) ([]byte, error) {
	p := filepath.Join(dir, metadataFile)
	b, err := fsys.ReadFile(p)
	if err == nil {
		if len(b) < 4 || crc32.Checksum(b[4:], castagnoli) != binary.LittleEndian.Uint32(b) {
			return nil, fmt.Errorf("%w: %s: checksum mismatch", ErrCorrupt, p)
		}
		return b[4:], nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("wal: read %s: %w", p, err)
	}
	// A directory with a log but no metadata file was not made by us, or
	// lost a file: refuse rather than stamp it with our identity.
	if names, err := fsys.List(filepath.Join(dir, walDir)); err == nil {
		for _, n := range names {
			if _, ok := parseSegmentName(n); ok {
				return nil, fmt.Errorf("%w: %s is missing but the directory holds a WAL", ErrCorrupt, p)
			}
		}
	}
	b = binary.LittleEndian.AppendUint32(nil, crc32.Checksum(md, castagnoli))
	b = append(b, md...)
	if err := writeFileAtomic(fsys, p, b); err != nil {
		return nil, err
	}
	return append([]byte(nil), md...), nil
}

// writeFileAtomic replaces name with data so that a crash leaves the old
// content or the new, never a mix: temp file, fsync, rename, dir fsync.
func writeFileAtomic(fsys FS, name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := fsys.Create(tmp)
	if err != nil {
		return fmt.Errorf("wal: create %s: %w", tmp, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, name)
	}
	if err == nil {
		err = fsys.SyncDir(filepath.Dir(name))
	}
	if err != nil {
		fsys.Remove(tmp)
		return fmt.Errorf("wal: write %s: %w", name, err)
	}
	return nil
}

// replayOp is one decoded WAL record.
type replayOp struct {
	typ   uint8
	entry raft.Entry
	hs    raft.HardState
	meta  raft.SnapshotMeta
}

func decodeOp(r Record) (replayOp, error) {
	op := replayOp{typ: r.Type}
	var err error
	switch r.Type {
	case recEntry:
		op.entry, err = raft.DecodeEntry(r.Data)
	case recHardState:
		op.hs, err = raft.DecodeHardState(r.Data)
	case recSnapshot, recCompact:
		op.meta, err = raft.DecodeSnapshotMeta(r.Data)
	default:
		err = fmt.Errorf("unknown record type %d", r.Type)
	}
	if err != nil {
		// The record passed its checksum, so we wrote these bytes: a
		// decoding failure is a bug or a format from the future.
		return op, fmt.Errorf("%w: WAL record (type %d, index %d): %w", ErrCorrupt, r.Type, r.Index, err)
	}
	return op, nil
}

// replay rebuilds the in-memory state from the WAL's records.
func (ds *DiskStorage) replay(ops []replayOp) error {
	// Snapshot files newer than every marker in the WAL are orphans: a
	// crash hit between saving the file and recording it. Delete them, so
	// that only snapshots the WAL vouches for are ever used.
	var maxMarker uint64
	markerTerm := map[uint64]uint64{}
	for _, op := range ops {
		if op.typ == recSnapshot || op.typ == recCompact {
			maxMarker = max(maxMarker, op.meta.Index)
			markerTerm[op.meta.Index] = op.meta.Term
		}
	}
	idx, err := ds.snap.List()
	if err != nil {
		return err
	}
	for _, i := range idx {
		if i > maxMarker {
			ds.log.Warn("wal: removing snapshot not recorded in the WAL", "index", i)
			if err := ds.snap.remove(i); err != nil {
				return err
			}
		}
	}
	// The base is the newest valid snapshot; a damaged newest file falls
	// back to an older one, whose entries the WAL still holds.
	var base raft.SnapshotMeta
	for limit := maxMarker; ; {
		m, err := ds.snap.latestAtMost(limit)
		if errors.Is(err, ErrNoSnapshot) {
			break
		}
		if err != nil {
			return err
		}
		if t, ok := markerTerm[m.Index]; ok && t != m.Term {
			ds.log.Warn("wal: snapshot term disagrees with the WAL", "index", m.Index, "term", m.Term, "wal_term", t)
			if m.Index == 0 {
				break
			}
			limit = m.Index - 1
			continue
		}
		base = m
		break
	}

	// ents holds the entries after base.Index.
	var ents []raft.Entry
	var hs raft.HardState
	at := func(i uint64) *raft.Entry { // entry i, if held
		if i <= base.Index || i > base.Index+uint64(len(ents)) {
			return nil
		}
		return &ents[i-base.Index-1]
	}
	for _, op := range ops {
		switch op.typ {
		case recEntry:
			e := op.entry
			if e.Index <= base.Index {
				// Covered by the snapshot. But when it was written it
				// truncated the log after itself (Save never writes
				// entries at or below the snapshot of the time, so
				// the truncation did happen), which drops everything
				// replayed beyond the base so far.
				ents = ents[:0]
				continue
			}
			pos := e.Index - base.Index - 1
			if pos > uint64(len(ents)) {
				return fmt.Errorf("%w: WAL jumps to entry %d after %d; no usable snapshot covers the gap",
					ErrCorrupt, e.Index, base.Index+uint64(len(ents)))
			}
			ents = append(ents[:pos], e)
		case recHardState:
			hs = op.hs
		case recSnapshot:
			// The log was replaced by this snapshot: entries read so far
			// beyond it were discarded then.
			m := op.meta
			if m.Index <= base.Index {
				ents = ents[:0]
				continue
			}
			if e := at(m.Index); e == nil || e.Term != m.Term {
				return fmt.Errorf("%w: WAL installs snapshot %d (term %d) but its file is missing or damaged",
					ErrCorrupt, m.Index, m.Term)
			}
			ents = ents[:m.Index-base.Index]
		case recCompact:
			// A local snapshot leaves the log as it is. If it is newer
			// than the base, its file was unusable; the entries it
			// covered must still be in the log.
			m := op.meta
			if m.Index > base.Index {
				if e := at(m.Index); e == nil || e.Term != m.Term {
					return fmt.Errorf("%w: WAL records snapshot %d (term %d) but neither its file nor its entries are usable",
						ErrCorrupt, m.Index, m.Term)
				}
			}
		}
	}
	last := base.Index + uint64(len(ents))
	// A snapshot holds only committed state, so its index is committed
	// even if the hard state saved with it was lost to a torn write.
	hs.Commit = max(hs.Commit, base.Index)
	if hs.Commit > last {
		return fmt.Errorf("%w: hard state commits index %d beyond the last entry %d", ErrCorrupt, hs.Commit, last)
	}
	if base.Index > 0 {
		if err := ds.mem.ApplySnapshot(raft.Snapshot{Meta: base}); err != nil {
			return err
		}
	}
	if err := ds.mem.Append(ents); err != nil {
		return err
	}
	ds.mem.SetHardState(hs)
	ds.hs, ds.snapMeta = hs, base
	return nil
}

// segmentHeader repeats the current hard state and snapshot at the start of
// each WAL segment, so they survive the release of the segments that first
// recorded them. The WAL calls it with ds.mu held (from Save, CreateSnapshot
// or OpenDiskStorage).
func (ds *DiskStorage) segmentHeader() []Record {
	var recs []Record
	if ds.snapMeta.Index > 0 {
		recs = append(recs, Record{Type: recCompact, Index: ds.snapMeta.Index, Data: raft.AppendSnapshotMeta(nil, ds.snapMeta)})
	}
	if !ds.hs.IsEmpty() {
		recs = append(recs, Record{Type: recHardState, Data: raft.AppendHardState(nil, ds.hs)})
	}
	return recs
}

// InitialState implements raft.Storage.
func (ds *DiskStorage) InitialState() (raft.HardState, raft.ConfState, error) {
	return ds.mem.InitialState()
}

// Entries implements raft.Storage.
func (ds *DiskStorage) Entries(lo, hi, maxSize uint64) ([]raft.Entry, error) {
	return ds.mem.Entries(lo, hi, maxSize)
}

// Term implements raft.Storage.
func (ds *DiskStorage) Term(i uint64) (uint64, error) { return ds.mem.Term(i) }

// LastIndex implements raft.Storage.
func (ds *DiskStorage) LastIndex() (uint64, error) { return ds.mem.LastIndex() }

// FirstIndex implements raft.Storage.
func (ds *DiskStorage) FirstIndex() (uint64, error) { return ds.mem.FirstIndex() }

// Snapshot implements raft.Storage. Data is always empty: read the bytes
// with Snapshotter().Open(meta.Index).
func (ds *DiskStorage) Snapshot() (raft.Snapshot, error) { return ds.mem.Snapshot() }

// Snapshotter returns the snapshot file store. A driver saves a snapshot
// received from the leader here before calling Save or ApplySnapshot
// with its meta, and streams snapshots to followers from here.
func (ds *DiskStorage) Snapshotter() *Snapshotter { return ds.snap }

// Metadata returns the metadata stored when the directory was created.
func (ds *DiskStorage) Metadata() []byte { return append([]byte(nil), ds.md...) }

// Save makes a Ready batch durable: the snapshot marker if snap is not
// nil, then the entries, then the hard state if it changed, followed by
// exactly one fsync; when it returns nil, all of it survives a crash.
// It does nothing, and costs no fsync, if there is nothing new.
//
// The order matters for torn writes, which keep a prefix of the batch: a
// hard state never survives without the entries its commit index covers.
//
// snap carries meta only: its data must already be stored through
// Snapshotter().Save. Entries must not leave a gap after the last entry
// (or after snap); entries at or below the last one replace it and all
// that follow.
func (ds *DiskStorage) Save(hs raft.HardState, ents []raft.Entry, snap *raft.Snapshot) error {
	return ds.Write(hs, ents, snap, true)
}

// Write is Save with the fsync made optional. With sync false the records
// reach the WAL file but not necessarily the disk; a later synced write
// makes them durable. Raft allows this only for a Ready that needs no sync
// (raft.Ready.MustSync false: a commit-index-only change, which a restarted
// node can recompute); everything else must use Save.
func (ds *DiskStorage) Write(hs raft.HardState, ents []raft.Entry, snap *raft.Snapshot, sync bool) error {
	if !snap.IsEmpty() || len(ents) > 0 {
		sync = true
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.err != nil {
		return ds.err
	}
	last, _ := ds.mem.LastIndex()
	recs := ds.recs[:0]
	defer func() {
		clear(recs)
		ds.recs = recs[:0]
		if cap(ds.scratch) > maxScratch {
			ds.scratch = nil
		}
	}()
	if !snap.IsEmpty() {
		m := snap.Meta
		if m.Index <= ds.snapMeta.Index {
			return fmt.Errorf("%w: snapshot %d, have %d", raft.ErrSnapOutOfDate, m.Index, ds.snapMeta.Index)
		}
		if _, err := ds.snap.fs.Size(ds.snap.path(m.Index)); err != nil {
			return fmt.Errorf("wal: snapshot %d must be saved through the Snapshotter first: %w", m.Index, err)
		}
		recs = append(recs, Record{Type: recSnapshot, Index: m.Index, Data: raft.AppendSnapshotMeta(nil, m)})
		last = m.Index
	}
	for i := range ents {
		if i > 0 && ents[i].Index != ents[i-1].Index+1 {
			return fmt.Errorf("wal: entries not contiguous: %d follows %d", ents[i].Index, ents[i-1].Index)
		}
	}
	// Entries the snapshot covers are committed and already in it; drop
	// them, as MemoryStorage.Append would, so that every entry record in
	// the WAL is above the snapshot of its time and truncates the log
	// after itself both now and on replay.
	snapIndex := ds.snapMeta.Index
	if !snap.IsEmpty() {
		snapIndex = snap.Meta.Index
	}
	for len(ents) > 0 && ents[0].Index <= snapIndex {
		ents = ents[1:]
	}
	if len(ents) > 0 && ents[0].Index > last+1 {
		return fmt.Errorf("wal: entry %d leaves a gap after last index %d", ents[0].Index, last)
	}
	// Encode every body into one reused buffer (which may move as it
	// grows), remembering where each ends; then slice the records out.
	buf := ds.scratch[:0]
	ends := ds.ends[:0]
	for i := range ents {
		buf = raft.AppendEntry(buf, &ents[i])
		ends = append(ends, len(buf))
	}
	hsChanged := !hs.IsEmpty() && hs != ds.hs
	if hsChanged {
		buf = raft.AppendHardState(buf, hs)
		ends = append(ends, len(buf))
	}
	off := 0
	for i, end := range ends {
		r := Record{Type: recHardState, Data: buf[off:end:end]}
		if i < len(ents) {
			r = Record{Type: recEntry, Index: ents[i].Index, Data: buf[off:end:end]}
		}
		recs = append(recs, r)
		off = end
	}
	ds.scratch, ds.ends = buf, ends[:0]
	if len(recs) == 0 {
		return nil
	}
	if err := ds.wal.Append(recs...); err != nil {
		return ds.fail(err)
	}
	if hsChanged && (hs.Term != ds.hs.Term || hs.Vote != ds.hs.Vote) {
		sync = true // a term or vote must never be lost
	}
	if sync {
		if err := ds.wal.Sync(); err != nil {
			return ds.fail(err)
		}
	}
	// Durable (or, without sync, allowed to be lost); now make it visible
	// to the core.
	if !snap.IsEmpty() {
		meta := snap.Meta
		meta.ConfState = raft.ConfState{
			Voters:   append([]uint64(nil), meta.ConfState.Voters...),
			Learners: append([]uint64(nil), meta.ConfState.Learners...),
		}
		if err := ds.mem.ApplySnapshot(raft.Snapshot{Meta: meta}); err != nil {
			return ds.fail(err)
		}
		ds.snapMeta = meta
	}
	if err := ds.mem.Append(ents); err != nil {
		return ds.fail(err)
	}
	if hsChanged {
		ds.mem.SetHardState(hs)
		ds.hs = hs
	}
	if !snap.IsEmpty() {
		return ds.release(ds.snapMeta.Index)
	}
	return nil
}

// fail records err as the storage's sticky error: after a failed write
// or fsync, what is on disk is unknown, and only a restart, which
// re-reads the disk, can make the memory state trustworthy again.
func (ds *DiskStorage) fail(err error) error {
	if ds.err == nil {
		ds.err = fmt.Errorf("wal: storage failed, restart required: %w", err)
	}
	return ds.err
}

// ApplySnapshot records a snapshot received from the leader, whose data
// is already stored through Snapshotter().Save, and replaces the log
// with it. It is Save with only a snapshot.
func (ds *DiskStorage) ApplySnapshot(meta raft.SnapshotMeta) error {
	return ds.Save(raft.HardState{}, nil, &raft.Snapshot{Meta: meta})
}

// CreateSnapshot stores the state machine image read from r as a snapshot
// at index, which must be in the log and applied, with membership cs. It
// then records the snapshot in the WAL, discards log entries before
// index-KeepEntries from memory, deletes old snapshot files and releases
// WAL segments no retained snapshot needs.
func (ds *DiskStorage) CreateSnapshot(index uint64, cs raft.ConfState, r io.Reader) error {
	ds.createMu.Lock()
	defer ds.createMu.Unlock()
	ds.mu.Lock()
	err := ds.err
	cur := ds.snapMeta.Index
	ds.mu.Unlock()
	if err != nil {
		return err
	}
	if index <= cur {
		return fmt.Errorf("%w: snapshot %d, have %d", raft.ErrSnapOutOfDate, index, cur)
	}
	term, err := ds.mem.Term(index)
	if err != nil {
		return fmt.Errorf("wal: snapshot at %d: %w", index, err)
	}
	meta := raft.SnapshotMeta{Index: index, Term: term, ConfState: raft.ConfState{
		Voters:   append([]uint64(nil), cs.Voters...),
		Learners: append([]uint64(nil), cs.Learners...),
	}}
	// Write the (possibly large) file without holding mu, so Save is not
	// blocked behind it.
	if err := ds.snap.Save(meta, r); err != nil {
		return err
	}

	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.err != nil {
		return ds.err
	}
	if t, err := ds.mem.Term(index); index <= ds.snapMeta.Index || err != nil || t != term {
		// A snapshot from the leader overtook us while we wrote. If it is
		// at this very index, the file now holds one of the two images of
		// the same state and is the current snapshot's: keep it.
		if index != ds.snapMeta.Index || ds.snapMeta.Term != term {
			ds.snap.remove(index)
		}
		return fmt.Errorf("%w: snapshot %d superseded while being written", raft.ErrSnapOutOfDate, index)
	}
	// File first, then marker: a crash in between leaves an orphan file,
	// which recovery deletes, never a marker without its file.
	if err := ds.wal.Append(Record{Type: recCompact, Index: index, Data: raft.AppendSnapshotMeta(nil, meta)}); err != nil {
		return ds.fail(err)
	}
	if err := ds.wal.Sync(); err != nil {
		return ds.fail(err)
	}
	if _, err := ds.mem.CreateSnapshot(index, meta.ConfState, nil); err != nil {
		return ds.fail(err)
	}
	ds.snapMeta = meta
	if index > ds.opts.KeepEntries {
		ci := index - ds.opts.KeepEntries
		if first, _ := ds.mem.FirstIndex(); ci >= first {
			if err := ds.mem.Compact(ci); err != nil {
				return ds.fail(err)
			}
		}
	}
	return ds.release(index)
}

// release deletes snapshot files beyond SnapshotsToKeep and the WAL
// segments that neither the oldest retained snapshot nor the KeepEntries
// tail needs. Failures here lose no data, so they are not sticky.
func (ds *DiskStorage) release(index uint64) error {
	if err := ds.snap.Prune(ds.opts.SnapshotsToKeep); err != nil {
		return err
	}
	idx, err := ds.snap.List()
	if err != nil {
		return err
	}
	upTo := index
	if len(idx) > 0 {
		upTo = min(upTo, idx[0])
	}
	if upTo > ds.opts.KeepEntries {
		upTo -= ds.opts.KeepEntries
	} else {
		upTo = 0
	}
	return ds.wal.ReleaseTo(upTo)
}

// HardState returns the last saved hard state.
func (ds *DiskStorage) HardState() raft.HardState { return ds.mem.HardState() }

// WALStats returns the underlying WAL's statistics.
func (ds *DiskStorage) WALStats() Stats { return ds.wal.Stats() }

// Close syncs and closes the WAL.
func (ds *DiskStorage) Close() error {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return ds.wal.Close()
}
