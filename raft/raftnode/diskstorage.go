package raftnode

import (
	"io"

	"github.com/cairn-db/cairn/raft"
	"github.com/cairn-db/cairn/raft/wal"
)

// DiskStorage adapts a wal.DiskStorage (the durable WAL and snapshot
// files) to the Storage the node needs.
type DiskStorage struct {
	*wal.DiskStorage
}

var _ Storage = DiskStorage{}

// Save implements Storage: one WAL append and, when the Ready needs it,
// one fsync for the batch. A commit-index-only change is written without
// fsync, as the Ready contract allows.
func (d DiskStorage) Save(hs raft.HardState, ents []raft.Entry, sync bool) error {
	return d.DiskStorage.Write(hs, ents, nil, sync)
}

// SaveSnapshot implements Storage.
func (d DiskStorage) SaveSnapshot(meta raft.SnapshotMeta, r io.Reader) error {
	return d.Snapshotter().Save(meta, r)
}

// OpenSnapshot implements Storage.
func (d DiskStorage) OpenSnapshot(index uint64) (io.ReadCloser, int64, error) {
	_, rc, size, err := d.Snapshotter().Open(index)
	return rc, size, err
}

// ApplySnapshot implements Storage.
func (d DiskStorage) ApplySnapshot(meta raft.SnapshotMeta) error {
	return d.DiskStorage.ApplySnapshot(meta)
}

// CreateSnapshot implements Storage. The state machine writes into a pipe
// that the WAL's snapshot file reads from, so the snapshot is streamed to
// disk without being held in memory. The number of entries kept behind
// the snapshot is the wal.StorageOptions.KeepEntries setting.
func (d DiskStorage) CreateSnapshot(index uint64, cs raft.ConfState, _ uint64, write func(io.Writer) error) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(write(pw)) }()
	err := d.DiskStorage.CreateSnapshot(index, cs, pr)
	pr.CloseWithError(io.ErrClosedPipe) // unblock the writer if the WAL stopped reading
	return err
}
