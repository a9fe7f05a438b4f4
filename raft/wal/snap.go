package wal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/cairn-db/cairn/raft"
)

// ErrNoSnapshot is returned when a requested snapshot does not exist, or
// when no valid snapshot exists at all.
var ErrNoSnapshot = errors.New("wal: no snapshot")

// Snapshot file layout, integers little-endian:
//
//	magic    [8]  "CAIRNSN1"
//	metaLen  u32
//	metaCRC  u32  CRC-32C of meta, so Open can trust meta before the data
//	meta          raft.AppendSnapshotMeta encoding
//	data          the snapshot bytes, streamed
//	dataLen  u64
//	crc      u32  CRC-32C of every preceding byte of the file
//
// The checksum is in a footer because the data is streamed: the writer
// does not know it, nor the length, until the end.
const (
	snapMagic      = "CAIRNSN1"
	snapHeaderSize = 16
	snapFooterSize = 12
	maxSnapMeta    = 64 << 20
)

// Snapshotter stores snapshot files in one directory, one file per
// snapshot index. Files are written atomically (temporary file, fsync,
// rename, directory fsync), so a crash leaves either the whole snapshot
// or none of it. It is safe for concurrent use, including two saves of
// the same index (a member's own snapshot and the leader's arriving at
// once): each writes its own temporary file, and the last rename wins,
// which is harmless because both hold the state at that index.
type Snapshotter struct {
	fs   FS
	dir  string
	log  *slog.Logger
	temp atomic.Uint64 // numbers temporary files
}

// NewSnapshotter returns a Snapshotter for dir, creating dir if needed and
// deleting temporary files left by a crash in the middle of Save.
func NewSnapshotter(fsys FS, dir string, logger *slog.Logger) (*Snapshotter, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := mkdirDurable(fsys, dir); err != nil {
		return nil, err
	}
	names, err := fsys.List(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: list %s: %w", dir, err)
	}
	for _, n := range names {
		if strings.HasSuffix(n, ".tmp") && strings.Contains(n, ".snap") {
			if err := fsys.Remove(filepath.Join(dir, n)); err != nil {
				return nil, fmt.Errorf("wal: remove %s: %w", n, err)
			}
		}
	}
	return &Snapshotter{fs: fsys, dir: dir, log: logger}, nil
}

func (s *Snapshotter) path(index uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%016x.snap", index))
}

// Save writes the snapshot meta and the bytes read from r until EOF as
// the snapshot at meta.Index, replacing any existing file for that index.
// It streams: memory use does not depend on the snapshot's size. When Save
// returns nil the snapshot is durable.
func (s *Snapshotter) Save(meta raft.SnapshotMeta, r io.Reader) (err error) {
	final := s.path(meta.Index)
	tmp := fmt.Sprintf("%s.%d.tmp", final, s.temp.Add(1))
	f, err := s.fs.Create(tmp)
	if err != nil {
		return fmt.Errorf("wal: create %s: %w", tmp, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			s.fs.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 256<<10)
	h := crc32.New(castagnoli)
	w := io.MultiWriter(bw, h)

	m := raft.AppendSnapshotMeta(nil, meta)
	var hdr [snapHeaderSize]byte
	copy(hdr[:], snapMagic)
	binary.LittleEndian.PutUint32(hdr[8:], uint32(len(m)))
	binary.LittleEndian.PutUint32(hdr[12:], crc32.Checksum(m, castagnoli))
	if _, err := w.Write(hdr[:]); err != nil {
		return fmt.Errorf("wal: write %s: %w", tmp, err)
	}
	if _, err := w.Write(m); err != nil {
		return fmt.Errorf("wal: write %s: %w", tmp, err)
	}
	n, err := io.Copy(w, r)
	if err != nil {
		return fmt.Errorf("wal: write snapshot %s: %w", tmp, err)
	}
	var foot [snapFooterSize]byte
	binary.LittleEndian.PutUint64(foot[:], uint64(n))
	h.Write(foot[:8])
	binary.LittleEndian.PutUint32(foot[8:], h.Sum32())
	if _, err := bw.Write(foot[:]); err != nil {
		return fmt.Errorf("wal: write %s: %w", tmp, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("wal: write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("wal: fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("wal: close %s: %w", tmp, err)
	}
	if err := s.fs.Rename(tmp, final); err != nil {
		return fmt.Errorf("wal: rename %s: %w", tmp, err)
	}
	if err := s.fs.SyncDir(s.dir); err != nil {
		return fmt.Errorf("wal: sync dir %s: %w", s.dir, err)
	}
	return nil
}

// Open opens the snapshot at index and returns its meta, a reader of its
// data and the data's size in bytes. The reader verifies the file's
// checksum as it goes and, instead of io.EOF, returns an error wrapping
// ErrCorrupt at the end if it does not match: a consumer must not act on
// the data before reading it to EOF. A missing snapshot gives an error
// wrapping ErrNoSnapshot.
func (s *Snapshotter) Open(index uint64) (raft.SnapshotMeta, io.ReadCloser, int64, error) {
	p := s.path(index)
	size, err := s.fs.Size(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return raft.SnapshotMeta{}, nil, 0, fmt.Errorf("%w: index %d: %w", ErrNoSnapshot, index, err)
		}
		return raft.SnapshotMeta{}, nil, 0, fmt.Errorf("wal: stat %s: %w", p, err)
	}
	f, err := s.fs.Open(p)
	if err != nil {
		return raft.SnapshotMeta{}, nil, 0, fmt.Errorf("wal: open %s: %w", p, err)
	}
	meta, rd, err := s.openReader(p, f, size)
	if err != nil {
		f.Close()
		return raft.SnapshotMeta{}, nil, 0, err
	}
	return meta, rd, rd.remain, nil
}

func (s *Snapshotter) openReader(p string, f io.ReadCloser, size int64) (raft.SnapshotMeta, *snapReader, error) {
	corrupt := func(off int64, what string) error {
		return fmt.Errorf("%w: %s at offset %d: %s", ErrCorrupt, p, off, what)
	}
	if size < snapHeaderSize+snapFooterSize {
		return raft.SnapshotMeta{}, nil, corrupt(0, fmt.Sprintf("file of %d bytes is too short", size))
	}
	br := bufio.NewReaderSize(f, 256<<10)
	h := crc32.New(castagnoli)
	var hdr [snapHeaderSize]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return raft.SnapshotMeta{}, nil, fmt.Errorf("wal: read %s: %w", p, err)
	}
	h.Write(hdr[:])
	if string(hdr[:8]) != snapMagic {
		return raft.SnapshotMeta{}, nil, corrupt(0, "bad magic")
	}
	mlen := int64(binary.LittleEndian.Uint32(hdr[8:]))
	if mlen > maxSnapMeta || snapHeaderSize+mlen+snapFooterSize > size {
		return raft.SnapshotMeta{}, nil, corrupt(8, fmt.Sprintf("meta length %d does not fit", mlen))
	}
	m := make([]byte, mlen)
	if _, err := io.ReadFull(br, m); err != nil {
		return raft.SnapshotMeta{}, nil, fmt.Errorf("wal: read %s: %w", p, err)
	}
	h.Write(m)
	if crc32.Checksum(m, castagnoli) != binary.LittleEndian.Uint32(hdr[12:]) {
		return raft.SnapshotMeta{}, nil, corrupt(snapHeaderSize, "meta checksum mismatch")
	}
	meta, err := raft.DecodeSnapshotMeta(m)
	if err != nil {
		return raft.SnapshotMeta{}, nil, fmt.Errorf("%w: %w", corrupt(snapHeaderSize, "bad meta"), err)
	}
	dataOff := snapHeaderSize + mlen
	return meta, &snapReader{f: f, br: br, h: h, p: p, off: dataOff, remain: size - dataOff - snapFooterSize, size: size - dataOff - snapFooterSize}, nil
}

// snapReader returns a snapshot's data and checks the footer at the end.
type snapReader struct {
	f      io.Closer
	br     *bufio.Reader
	h      hash.Hash32
	p      string
	off    int64 // file offset of the next data byte
	remain int64 // data bytes not yet returned
	size   int64 // data bytes in all
	err    error // final result, once the footer was checked
}

func (r *snapReader) Read(b []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.remain == 0 {
		r.err = r.verify()
		return 0, r.err
	}
	if int64(len(b)) > r.remain {
		b = b[:r.remain]
	}
	n, err := r.br.Read(b)
	r.h.Write(b[:n])
	r.remain -= int64(n)
	r.off += int64(n)
	if err == io.EOF {
		// The file shrank under us.
		err = fmt.Errorf("%w: %s at offset %d: unexpected end of file", ErrCorrupt, r.p, r.off)
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

func (r *snapReader) verify() error {
	var foot [snapFooterSize]byte
	if _, err := io.ReadFull(r.br, foot[:]); err != nil {
		return fmt.Errorf("%w: %s at offset %d: reading footer: %w", ErrCorrupt, r.p, r.off, err)
	}
	r.h.Write(foot[:8])
	dataLen := binary.LittleEndian.Uint64(foot[:])
	if got, want := r.h.Sum32(), binary.LittleEndian.Uint32(foot[8:]); got != want {
		return fmt.Errorf("%w: %s: checksum mismatch (stored %08x, computed %08x)", ErrCorrupt, r.p, want, got)
	}
	if dataLen != uint64(r.size) {
		return fmt.Errorf("%w: %s: footer length %d disagrees with the file", ErrCorrupt, r.p, dataLen)
	}
	return io.EOF
}

func (r *snapReader) Close() error { return r.f.Close() }

// Load returns the snapshot at index with its data in memory. It is meant
// for small snapshots; use Open to stream large ones.
func (s *Snapshotter) Load(index uint64) (raft.Snapshot, error) {
	meta, rc, size, err := s.Open(index)
	if err != nil {
		return raft.Snapshot{}, err
	}
	defer rc.Close()
	data := make([]byte, 0, size)
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		data = append(data, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			return raft.Snapshot{}, err
		}
	}
	return raft.Snapshot{Meta: meta, Data: data}, nil
}

// Verify reads the snapshot at index to the end and returns its meta if
// the checksum matches.
func (s *Snapshotter) Verify(index uint64) (raft.SnapshotMeta, error) {
	meta, rc, _, err := s.Open(index)
	if err != nil {
		return raft.SnapshotMeta{}, err
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return raft.SnapshotMeta{}, err
	}
	return meta, nil
}

// List returns the indexes of the stored snapshots, ascending, without
// checking them.
func (s *Snapshotter) List() ([]uint64, error) {
	names, err := s.fs.List(s.dir)
	if err != nil {
		return nil, fmt.Errorf("wal: list %s: %w", s.dir, err)
	}
	var idx []uint64
	for _, n := range names {
		base, ok := strings.CutSuffix(n, ".snap")
		if !ok || len(base) != 16 {
			continue
		}
		i, err := strconv.ParseUint(base, 16, 64)
		if err != nil {
			continue
		}
		idx = append(idx, i) // names are sorted and fixed-width
	}
	return idx, nil
}

// Latest returns the meta of the newest snapshot whose checksum is valid.
// Corrupt snapshots are skipped with a warning, so a damaged newest file
// falls back to an older one. It reads every snapshot it checks in full.
func (s *Snapshotter) Latest() (raft.SnapshotMeta, error) {
	return s.latestAtMost(^uint64(0))
}

func (s *Snapshotter) latestAtMost(maxIndex uint64) (raft.SnapshotMeta, error) {
	idx, err := s.List()
	if err != nil {
		return raft.SnapshotMeta{}, err
	}
	for i := len(idx) - 1; i >= 0; i-- {
		if idx[i] > maxIndex {
			continue
		}
		meta, err := s.Verify(idx[i])
		if err == nil && meta.Index != idx[i] {
			err = fmt.Errorf("%w: %s holds index %d", ErrCorrupt, s.path(idx[i]), meta.Index)
		}
		if err != nil {
			s.log.Warn("wal: skipping unusable snapshot", "index", idx[i], "err", err)
			continue
		}
		return meta, nil
	}
	return raft.SnapshotMeta{}, ErrNoSnapshot
}

// Prune deletes all but the newest keep snapshots.
func (s *Snapshotter) Prune(keep int) error {
	idx, err := s.List()
	if err != nil {
		return err
	}
	for i := 0; i < len(idx)-keep; i++ {
		if err := s.remove(idx[i]); err != nil {
			return err
		}
	}
	return nil
}

func (s *Snapshotter) remove(index uint64) error {
	if err := s.fs.Remove(s.path(index)); err != nil {
		return fmt.Errorf("wal: remove snapshot: %w", err)
	}
	return nil
}
