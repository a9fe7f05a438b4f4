package sim

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/cairn-db/cairn/raft"
	"github.com/cairn-db/cairn/raft/wal"
)

// disk is a node's durable storage as the simulator drives it. Two
// implementations exist: walDisk runs the real write-ahead log on a
// crash-simulating in-memory filesystem (torn records at byte level), and
// memDisk is a logical model that is faster to run.
type disk interface {
	raft.Storage
	// persist makes rd's snapshot, entries and hard state durable.
	persist(rd raft.Ready) error
	// crashDuring models a crash while persisting rd, before its fsync:
	// whatever of rd a real disk might keep is kept, the rest is lost. It
	// returns the storage a restarted node finds.
	crashDuring(rd raft.Ready, rng *rand.Rand) (disk, error)
	// crash models a power loss between Readies.
	crash(rng *rand.Rand) (disk, error)
	// snapshot records a local snapshot at index and compacts the log.
	snapshot(index uint64, cs raft.ConfState, data []byte) error
	// snapshotData returns the bytes of the stored snapshot at index.
	snapshotData(index uint64) ([]byte, error)
	// tornBytes reports how many bytes of a torn final record recovery
	// cut off when this storage was opened.
	tornBytes() int64
}

// memDisk: raft.MemoryStorage is the disk. A crash in the middle of a
// write keeps a random prefix of the new entries; the hard state, written
// last, survives only if every entry did.
type memDisk struct{ *raft.MemoryStorage }

func newMemDisk() *memDisk { return &memDisk{raft.NewMemoryStorage()} }

func (d *memDisk) persist(rd raft.Ready) error {
	if rd.Snapshot != nil {
		if err := d.ApplySnapshot(*rd.Snapshot); err != nil {
			return err
		}
	}
	if err := d.Append(rd.Entries); err != nil {
		return err
	}
	if !rd.HardState.IsEmpty() {
		d.SetHardState(rd.HardState)
	}
	return nil
}

func (d *memDisk) crashDuring(rd raft.Ready, rng *rand.Rand) (disk, error) {
	keep := 0
	if len(rd.Entries) > 0 {
		keep = rng.IntN(len(rd.Entries) + 1)
	}
	if rd.Snapshot == nil && keep > 0 {
		if err := d.Append(rd.Entries[:keep]); err != nil {
			return nil, err
		}
	}
	if rd.Snapshot == nil && keep == len(rd.Entries) && !rd.HardState.IsEmpty() && rng.IntN(2) == 0 {
		d.SetHardState(rd.HardState)
	}
	return d, nil
}

func (d *memDisk) crash(*rand.Rand) (disk, error) { return d, nil }

func (d *memDisk) tornBytes() int64 { return 0 }

func (d *memDisk) snapshot(index uint64, cs raft.ConfState, data []byte) error {
	if _, err := d.CreateSnapshot(index, cs, data); err != nil {
		return err
	}
	// Keep a few entries so slightly lagging followers need no snapshot.
	if index > 5 {
		if err := d.Compact(index - 5); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return err
		}
	}
	return nil
}

func (d *memDisk) snapshotData(index uint64) ([]byte, error) {
	s, err := d.Snapshot()
	if err != nil {
		return nil, err
	}
	if s.Meta.Index != index {
		return nil, fmt.Errorf("sim: no snapshot at %d (have %d)", index, s.Meta.Index)
	}
	return s.Data, nil
}

// walDisk runs wal.DiskStorage on a MemFS. To crash in the middle of a
// write, the filesystem's fsyncs are made to fail, the Ready is written
// (it reaches the page cache only), and the MemFS then loses what was not
// synced — possibly keeping a torn prefix of the last record.
type walDisk struct {
	*wal.DiskStorage
	fs *flakyFS
}

const walDir = "node"

func newWALDisk() (*walDisk, error) {
	return openWALDisk(&flakyFS{MemFS: wal.NewMemFS()})
}

func openWALDisk(fs *flakyFS) (*walDisk, error) {
	ds, err := wal.OpenDiskStorage(fs, walDir, wal.StorageOptions{
		// Small segments so segment rolling and release run in the sim.
		SegmentSize: 4 << 10,
		KeepEntries: 5,
	})
	if err != nil {
		return nil, err
	}
	return &walDisk{DiskStorage: ds, fs: fs}, nil
}

func (d *walDisk) persist(rd raft.Ready) error {
	if rd.Snapshot != nil {
		if err := d.Snapshotter().Save(rd.Snapshot.Meta, bytes.NewReader(rd.Snapshot.Data)); err != nil {
			return err
		}
		if err := d.ApplySnapshot(rd.Snapshot.Meta); err != nil {
			return err
		}
	}
	return d.Write(rd.HardState, rd.Entries, nil, rd.MustSync)
}

func (d *walDisk) crashDuring(rd raft.Ready, rng *rand.Rand) (disk, error) {
	d.fs.failSync = true
	_ = d.persist(rd) // fails at its first fsync; the writes stay unsynced
	return d.crash(rng)
}

func (d *walDisk) crash(rng *rand.Rand) (disk, error) {
	d.fs.failSync = false
	d.fs.CrashWith(rng)
	return openWALDisk(d.fs)
}

func (d *walDisk) tornBytes() int64 { return d.WALStats().TornBytes }

func (d *walDisk) snapshot(index uint64, cs raft.ConfState, data []byte) error {
	return d.CreateSnapshot(index, cs, bytes.NewReader(data))
}

func (d *walDisk) snapshotData(index uint64) ([]byte, error) {
	s, err := d.Snapshotter().Load(index)
	if err != nil {
		return nil, err
	}
	return s.Data, nil
}

// flakyFS is a MemFS whose fsyncs can be made to fail.
type flakyFS struct {
	*wal.MemFS
	failSync bool
}

var errInjectedSync = errors.New("sim: injected fsync failure (crash)")

func (f *flakyFS) Create(name string) (wal.File, error) {
	file, err := f.MemFS.Create(name)
	if err != nil {
		return nil, err
	}
	return &flakyFile{File: file, fs: f}, nil
}

func (f *flakyFS) OpenAppend(name string) (wal.File, error) {
	file, err := f.MemFS.OpenAppend(name)
	if err != nil {
		return nil, err
	}
	return &flakyFile{File: file, fs: f}, nil
}

func (f *flakyFS) SyncDir(dir string) error {
	if f.failSync {
		return errInjectedSync
	}
	return f.MemFS.SyncDir(dir)
}

type flakyFile struct {
	wal.File
	fs *flakyFS
}

func (f *flakyFile) Sync() error {
	if f.fs.failSync {
		return errInjectedSync
	}
	return f.File.Sync()
}
