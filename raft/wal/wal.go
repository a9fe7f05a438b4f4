package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrClosed is returned by operations on a closed WAL.
var ErrClosed = errors.New("wal: closed")

// DefaultSegmentSize is the size at which a segment is closed and a new one
// begun when Options.SegmentSize is zero.
const DefaultSegmentSize = 64 << 20

// flushThreshold bounds the bytes Append buffers before handing them to
// the file, so a huge unsynced batch does not sit in memory twice.
const flushThreshold = 1 << 20

// Options configures a WAL. The zero value is usable.
type Options struct {
	// SegmentSize is the size after which the next Append starts a new
	// segment. Zero means DefaultSegmentSize. A batch passed to one Append
	// call is never split across segments.
	SegmentSize int64
	// Logger receives warnings, such as a torn tail being truncated.
	// Nil discards them.
	Logger *slog.Logger
	// Preallocate makes every new segment a file of SegmentSize bytes,
	// filled with zeros and fsynced before the first record goes in, so
	// that appending overwrites blocks the file system has already
	// allocated and an fsync only flushes data: growing a file makes
	// every fsync also commit the file system's journal (new size, new
	// extents). On ext4 on this project's test machine that cut a 4 KiB
	// append+fsync from about 140 to about 90 µs at the median and its
	// CPU cost by about a third (docs/wal.md). The next segment is
	// prepared in the background once the current one is half full. It
	// takes effect only on an FS that implements OverwriteFS.
	Preallocate bool
	// SegmentHeader, if set, is called whenever a new segment is begun and
	// its records are written at the start of the segment. A user that
	// keeps state in records which may be superseded only rarely (a hard
	// state, a snapshot marker) repeats that state here, so it survives
	// when ReleaseTo deletes the segment that first held it. It is called
	// with the WAL's lock held and must not call back into the WAL.
	SegmentHeader func() []Record
}

func (o Options) withDefaults() Options {
	if o.SegmentSize <= 0 {
		o.SegmentSize = DefaultSegmentSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Stats describes a WAL's recovery and activity since Open.
type Stats struct {
	Segments  int    // segment files currently held
	Recovered uint64 // records read by Open
	Appended  uint64 // records appended since Open
	Syncs     uint64 // segment fsyncs since Open
	// TornFile and TornOffset locate the torn tail Open truncated, and
	// TornBytes is how many bytes it removed; all zero if none.
	TornFile   string
	TornOffset int64
	TornBytes  int64
}

// WAL is a segmented write-ahead log. Append buffers records; Sync makes
// every record appended so far durable with one fsync, so a caller that
// batches its records (group commit) pays one fsync per batch. A WAL is
// safe for concurrent use. After a write or fsync error every operation
// returns that error: once fsync has failed, the kernel may have dropped
// the dirty pages, so retrying could report success for lost data.
type WAL struct {
	mu   sync.Mutex
	fs   FS
	dir  string
	opts Options
	log  *slog.Logger

	segs     []segment // oldest first; the last is being written
	f        File      // the last segment, open for writing at size
	size     int64     // bytes in the last segment, buffered ones included
	prealloc bool      // Options.Preallocate, on an FS that supports it
	next     *prepared // the next segment's file, being zero-filled
	buf      []byte    // bytes appended but not yet written to f
	dirty    bool      // bytes written to f since its last fsync
	maxIndex uint64    // highest Record.Index ever appended or recovered
	err      error     // sticky write error
	closed   bool
	stats    Stats
}

type segment struct{ seq, first uint64 }

// preparedName is the file the next preallocated segment is zero-filled
// in before a roll renames it. It does not parse as a segment name, so a
// crash that leaves it behind, perhaps half written, leaves no segment;
// the next preparation truncates and refills it.
const preparedName = "next.wal.tmp"

// prepared is a zero-filled file being made ready, in the background, to
// become the next segment.
type prepared struct {
	done chan struct{} // closed when err is set
	err  error
	stop atomic.Bool // asks the preparation to give up (Close)
}

func (s segment) name() string { return fmt.Sprintf("%016x-%016x.wal", s.seq, s.first) }

// parseSegmentName parses "<seq>-<first>.wal", both 16 hex digits.
func parseSegmentName(name string) (segment, bool) {
	base, ok := strings.CutSuffix(name, ".wal")
	if !ok || len(base) != 33 || base[16] != '-' {
		return segment{}, false
	}
	seq, err1 := strconv.ParseUint(base[:16], 16, 64)
	first, err2 := strconv.ParseUint(base[17:], 16, 64)
	if err1 != nil || err2 != nil {
		return segment{}, false
	}
	return segment{seq, first}, true
}

func (w *WAL) path(s segment) string { return filepath.Join(w.dir, s.name()) }

// Open opens the WAL in dir, creating it if it holds no segments, and
// passes every recovered record, oldest first, to replay (which may be
// nil). If replay returns an error, Open stops and returns it.
//
// A torn or garbage record at the end of the last segment is truncated
// away with a warning. Any other bad record makes Open fail with an error
// wrapping ErrCorrupt that names the file and byte offset.
func Open(fsys FS, dir string, opts Options, replay func(Record) error) (*WAL, error) {
	opts = opts.withDefaults()
	w := &WAL{fs: fsys, dir: dir, opts: opts, log: opts.Logger}
	_, canOverwrite := fsys.(OverwriteFS)
	w.prealloc = opts.Preallocate && canOverwrite
	if err := mkdirDurable(fsys, dir); err != nil {
		return nil, err
	}
	names, err := fsys.List(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: list %s: %w", dir, err)
	}
	for _, n := range names {
		if s, ok := parseSegmentName(n); ok {
			w.segs = append(w.segs, s)
		}
	}
	sort.Slice(w.segs, func(i, j int) bool { return w.segs[i].seq < w.segs[j].seq })
	for i := 1; i < len(w.segs); i++ {
		// ReleaseTo only ever removes the oldest segments, so a hole in
		// the sequence means a segment was lost.
		if w.segs[i].seq != w.segs[i-1].seq+1 || w.segs[i].first < w.segs[i-1].first {
			return nil, fmt.Errorf("%w: segment %s does not follow %s", ErrCorrupt, w.segs[i].name(), w.segs[i-1].name())
		}
	}
	if len(w.segs) == 0 {
		if err := w.createSegment(segment{seq: 1, first: 1}); err != nil {
			return nil, err
		}
		w.stats.Segments = 1
		return w, nil
	}
	var fileLen int64
	for i, s := range w.segs {
		// Records in a segment have indexes at or above the highest
		// index appended before it began.
		w.maxIndex = max(w.maxIndex, s.first-1)
		last := i == len(w.segs)-1
		n, err := w.recoverSegment(s, last, replay)
		if err != nil {
			return nil, err
		}
		fileLen = n
		if !last && w.maxIndex < w.segs[i+1].first-1 {
			// The next segment began after index first-1 was appended,
			// so this one (or an earlier one) must have held it.
			return nil, fmt.Errorf("%w: %s ends at index %d but %s begins at %d: records are missing",
				ErrCorrupt, s.name(), w.maxIndex, w.segs[i+1].name(), w.segs[i+1].first)
		}
	}
	last := w.segs[len(w.segs)-1]
	p := w.path(last)
	var f File
	if fileLen > w.size {
		// A preallocated segment: zeros follow the records. Write over
		// them, or, on an FS that cannot, cut them off and append.
		if ofs, ok := fsys.(OverwriteFS); ok {
			f, err = ofs.OpenWriteAt(p, w.size)
		} else if err = fsys.Truncate(p, w.size); err == nil {
			f, err = fsys.OpenAppend(p)
		}
	} else {
		f, err = fsys.OpenAppend(p)
	}
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", p, err)
	}
	w.f = f
	if w.stats.TornBytes > 0 {
		// Make the truncation durable before appending after it, so a
		// crash cannot resurrect the garbage between old and new records.
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, fmt.Errorf("wal: sync %s: %w", w.path(last), err)
		}
	}
	w.stats.Segments = len(w.segs)
	return w, nil
}

// recoverSegment replays the records of segment s and returns the length
// of its file after recovery, which is more than the records' length if
// the segment was preallocated.
//
// The file is read in windows of readWindow bytes, not whole: a
// preallocated segment is mostly zeros, and reading all of it into one
// buffer cost a restarting member a 64 MiB allocation (hundreds of
// milliseconds of page faults on a VM) and kept it alive as long as any
// replayed record pointed into it. Records point into the window they
// were decoded from, so what stays alive is about the records' own size.
func (w *WAL) recoverSegment(s segment, last bool, replay func(Record) error) (int64, error) {
	p := w.path(s)
	f, err := w.fs.Open(p)
	if err != nil {
		return 0, fmt.Errorf("wal: read %s: %w", p, err)
	}
	defer f.Close()
	var (
		buf  []byte // file bytes [base, base+len(buf))
		base int64
		pos  int // next record's offset in buf
		eof  bool
	)
	for {
		rec, n, derr := decodeRecord(buf[pos:])
		if derr == nil {
			w.maxIndex = max(w.maxIndex, rec.Index)
			w.stats.Recovered++
			if replay != nil {
				if err := replay(rec); err != nil {
					return 0, err
				}
			}
			pos += n
			continue
		}
		if errors.Is(derr, errShort) && !eof {
			if len(buf) == cap(buf) {
				// Start a new window at the undecoded bytes, big
				// enough for a record that does not fit a window.
				rest := buf[pos:]
				nb := make([]byte, len(rest), max(readWindow, 2*len(rest)))
				copy(nb, rest)
				base += int64(pos)
				buf, pos = nb, 0
			}
			k, rerr := io.ReadFull(f, buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+k]
			switch {
			case errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF):
				eof = true
			case rerr != nil:
				return 0, fmt.Errorf("wal: read %s: %w", p, rerr)
			}
			continue
		}
		// No record at base+pos: the end of the records.
		off := base + int64(pos)
		zeros, size, err := restIsZero(buf[pos:], f, off)
		if err != nil {
			return 0, fmt.Errorf("wal: read %s: %w", p, err)
		}
		if zeros {
			// The end of the file, or the unwritten rest of a
			// preallocated segment. (A record's type is never 0, so
			// zeros are never a record.) In a segment that is not the
			// last, the index check in Open notices if records are
			// missing.
			if last {
				w.size = off
			}
			return size, nil
		}
		// Something other than zeros follows: corruption, or a torn
		// tail. Rare, so the judgement reads the whole file.
		return w.recoverBadTail(p, off, last, derr)
	}
}

// readWindow is how much of a segment recovery reads at a time.
const readWindow = 1 << 20

// restIsZero reports whether b and everything f still holds are zeros,
// and if so the file's length, given that b starts at file offset off. It
// stops reading at the first byte that is not zero.
func restIsZero(b []byte, f io.Reader, off int64) (bool, int64, error) {
	if !allZero(b) {
		return false, 0, nil
	}
	size := off + int64(len(b))
	scratch := make([]byte, readWindow)
	for {
		k, err := f.Read(scratch)
		size += int64(k)
		if !allZero(scratch[:k]) {
			return false, 0, nil
		}
		if errors.Is(err, io.EOF) {
			return true, size, nil
		}
		if err != nil {
			return false, 0, err
		}
	}
}

// recoverBadTail decides what the bytes from off in segment file p are,
// when no record starts at off and they are not all zeros: in the last
// segment a torn write, which it truncates, unless a valid record follows
// them without a whole sector of zeros between (corruption); in any
// other segment corruption. It returns the file's length after recovery.
func (w *WAL) recoverBadTail(p string, off int64, last bool, derr error) (int64, error) {
	if !last {
		return 0, fmt.Errorf("%w: %s at offset %d: %w", ErrCorrupt, p, off, derr)
	}
	data, err := w.fs.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("wal: read %s: %w", p, err)
	}
	o := int(off)
	if q := validRecordAfter(data, o); q >= 0 && !hasZeroSector(data[o:q], o) {
		return 0, fmt.Errorf("%w: %s at offset %d (valid record follows at offset %d): %w", ErrCorrupt, p, o, q, derr)
	}
	// Nothing valid follows, or what does follows a whole sector of
	// zeros: a write was torn by a crash before its fsync returned, so
	// no caller was told the record was durable. (Overwriting a
	// preallocated file, the pages of one unsynced write can reach the
	// disk in any order: a later record may survive while an earlier
	// page is still the zeros the file was filled with.)
	w.log.Warn("wal: truncating torn tail", "file", p, "offset", o, "bytes", len(data)-o, "reason", derr)
	if err := w.fs.Truncate(p, off); err != nil {
		return 0, fmt.Errorf("wal: truncate %s: %w", p, err)
	}
	w.stats.TornFile, w.stats.TornOffset, w.stats.TornBytes = p, off, int64(len(data)-o)
	w.size = off
	return off, nil
}

// sectorSize is the unit a disk writes atomically, at the least.
const sectorSize = 512

// allZero reports whether every byte of b is zero.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// hasZeroSector reports whether b, which starts at file offset off,
// contains a whole sector-aligned sector of zeros.
func hasZeroSector(b []byte, off int) bool {
	first := (off + sectorSize - 1) / sectorSize * sectorSize
	for p := first - off; p+sectorSize <= len(b); p += sectorSize {
		if allZero(b[p : p+sectorSize]) {
			return true
		}
	}
	return false
}

// createSegment creates s, makes its directory entry durable, and writes
// the segment header records into the buffer. With preallocation it
// renames a prepared zero-filled file into place; if preparing one
// failed (a full disk, say), it logs why and creates an ordinary file,
// since the records themselves may still fit.
func (w *WAL) createSegment(s segment) error {
	p := w.path(s)
	var f File
	if w.prealloc {
		var err error
		if f, err = w.takePrepared(p); err != nil {
			w.log.Warn("wal: could not preallocate a segment; appending to a growing file instead", "file", p, "err", err)
		}
	}
	if f == nil {
		var err error
		if f, err = w.fs.Create(p); err != nil {
			return fmt.Errorf("wal: create %s: %w", p, err)
		}
	}
	if err := w.fs.SyncDir(w.dir); err != nil {
		f.Close()
		return fmt.Errorf("wal: sync dir %s: %w", w.dir, err)
	}
	w.segs = append(w.segs, s)
	w.f, w.size = f, 0
	if w.opts.SegmentHeader != nil {
		for _, r := range w.opts.SegmentHeader() {
			w.appendOne(r)
		}
	}
	return nil
}

// startPreparing begins zero-filling the next segment's file in the
// background, unless that is already under way.
func (w *WAL) startPreparing() {
	if w.next != nil {
		return
	}
	pr := &prepared{done: make(chan struct{})}
	w.next = pr
	go func() {
		defer close(pr.done)
		pr.err = w.prepare(&pr.stop)
	}()
}

// prepare writes a file of SegmentSize zeros at preparedName and makes it
// durable. It touches no WAL state, so it runs without the lock. A
// preparation that fails removes what it wrote: on a full disk those
// bytes are better left to the records.
func (w *WAL) prepare(stop *atomic.Bool) error {
	p := filepath.Join(w.dir, preparedName)
	f, err := w.fs.Create(p)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	err = w.fillZeros(f, p, stop)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", p, cerr)
	}
	if err != nil {
		_ = w.fs.Remove(p)
	}
	return err
}

// fillZeros writes SegmentSize zeros to f, named p, and fsyncs it.
func (w *WAL) fillZeros(f File, p string, stop *atomic.Bool) error {
	zeros := make([]byte, min(w.opts.SegmentSize, 1<<20))
	for n := int64(0); n < w.opts.SegmentSize; {
		if stop.Load() {
			return ErrClosed
		}
		k := min(int64(len(zeros)), w.opts.SegmentSize-n)
		if _, err := f.Write(zeros[:k]); err != nil {
			return fmt.Errorf("fill %s: %w", p, err)
		}
		n += k
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", p, err)
	}
	return nil
}

// takePrepared waits for the prepared file (preparing it now if nothing
// was under way), renames it to path and opens it for writing at its
// start. The caller syncs the directory.
func (w *WAL) takePrepared(path string) (File, error) {
	w.startPreparing()
	pr := w.next
	<-pr.done
	w.next = nil
	if pr.err != nil {
		return nil, pr.err
	}
	if err := w.fs.Rename(filepath.Join(w.dir, preparedName), path); err != nil {
		return nil, fmt.Errorf("rename to %s: %w", path, err)
	}
	f, err := w.fs.(OverwriteFS).OpenWriteAt(path, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return f, nil
}

// roll finishes the current segment and starts the next. The old segment
// is fsynced before the new one exists, so only the last segment can ever
// have a torn tail.
func (w *WAL) roll() error {
	if err := w.flush(); err != nil {
		return err
	}
	if err := w.syncFile(); err != nil {
		return err
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("wal: close segment: %w", err)
	}
	last := w.segs[len(w.segs)-1]
	if err := w.createSegment(segment{seq: last.seq + 1, first: w.maxIndex + 1}); err != nil {
		return err
	}
	w.stats.Segments = len(w.segs)
	return nil
}

func (w *WAL) appendOne(r Record) {
	n := len(w.buf)
	w.buf = appendRecord(w.buf, r)
	w.size += int64(len(w.buf) - n)
	w.maxIndex = max(w.maxIndex, r.Index)
	w.stats.Appended++
}

func (w *WAL) usable() error {
	if w.closed {
		return ErrClosed
	}
	return w.err
}

// Append buffers records for the current segment, starting a new segment
// first if the current one has reached Options.SegmentSize. The records
// are not durable until Sync returns.
func (w *WAL) Append(recs ...Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return err
	}
	for _, r := range recs {
		if r.Type == 0 {
			return fmt.Errorf("wal: record type 0 is reserved")
		}
		if recordSize(r)-recordHeaderSize > maxRecordBody {
			return fmt.Errorf("wal: record of %d bytes exceeds the limit of %d", len(r.Data), maxRecordBody)
		}
	}
	if w.size >= w.opts.SegmentSize {
		if err := w.roll(); err != nil {
			return w.fail(err)
		}
	}
	if w.prealloc && w.size >= w.opts.SegmentSize/2 {
		w.startPreparing()
	}
	for _, r := range recs {
		w.appendOne(r)
	}
	if len(w.buf) >= flushThreshold {
		return w.flush()
	}
	return nil
}

func (w *WAL) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return w.err
}

func (w *WAL) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	if _, err := w.f.Write(w.buf); err != nil {
		// An *os.PathError already names the file.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return w.fail(fmt.Errorf("wal: %w", err))
		}
		return w.fail(fmt.Errorf("wal: write %s: %w", w.path(w.segs[len(w.segs)-1]), err))
	}
	w.buf = w.buf[:0]
	w.dirty = true
	return nil
}

func (w *WAL) syncFile() error {
	if !w.dirty {
		return nil
	}
	if err := w.f.Sync(); err != nil {
		return w.fail(fmt.Errorf("wal: fsync %s: %w", w.path(w.segs[len(w.segs)-1]), err))
	}
	w.dirty = false
	w.stats.Syncs++
	return nil
}

// Sync writes the buffered records and fsyncs the segment: one fsync for
// everything appended since the last Sync. It does nothing if nothing was
// appended.
func (w *WAL) Sync() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return err
	}
	if err := w.flush(); err != nil {
		return err
	}
	return w.syncFile()
}

// ReleaseTo deletes the segments whose records all have Index <= index,
// oldest first. It never deletes the segment being written. Call it once
// a snapshot covers index, so the log does not grow without bound.
func (w *WAL) ReleaseTo(index uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return err
	}
	defer func() { w.stats.Segments = len(w.segs) }()
	// A segment's records have indexes below the next segment's first
	// index, which is one more than the highest index appended before it
	// began.
	for len(w.segs) > 1 && w.segs[1].first-1 <= index {
		p := w.path(w.segs[0])
		if err := w.fs.Remove(p); err != nil {
			return fmt.Errorf("wal: remove %s: %w", p, err)
		}
		w.segs = w.segs[1:]
		// Sync after each removal, so a crash cannot leave a hole in
		// the sequence (a later segment gone, an earlier one back).
		if err := w.fs.SyncDir(w.dir); err != nil {
			return fmt.Errorf("wal: sync dir %s: %w", w.dir, err)
		}
	}
	return nil
}

// Stats returns counters describing recovery and activity.
func (w *WAL) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// Close syncs and closes the WAL.
func (w *WAL) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	err := w.err
	if err == nil {
		if err = w.flush(); err == nil {
			err = w.syncFile()
		}
	}
	w.closed = true
	if pr := w.next; pr != nil {
		pr.stop.Store(true)
		<-pr.done
	}
	return errors.Join(err, w.f.Close())
}
