package kv

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"sort"
)

// Snapshot format (docs/kv.md has the full description):
//
//	magic "CAIRNKV\n", uvarint format version (1)
//	varint revision, uvarint applied index, varint clock
//	uvarint key count, then per key in key order:
//	    uvarint len, key, uvarint len, value,
//	    varint create_revision, mod_revision, version, lease
//	uvarint session count, then per session in client id order:
//	    uvarint client id, uvarint seq, varint last time,
//	    uvarint len, encoded result
//	uint32 big-endian CRC-32C of every byte before it
const snapshotMagic = "CAIRNKV\n"

const snapshotVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot writes the whole state (keys, revision, applied index, session
// clock and session table) to w. It holds the store lock only to take a
// copy-on-write clone of the tree, so Apply and Range keep running while
// the snapshot streams. Two stores that applied the same entries write the
// same bytes.
func (s *Store) Snapshot(w io.Writer) error {
	return s.CaptureSnapshot()(w)
}

// CaptureSnapshot takes a point-in-time image of the store (a
// copy-on-write clone of the tree, which costs little and holds the lock
// only briefly) and returns a function that writes it, in the format of
// Snapshot. The function may run on another goroutine while Apply goes on:
// it writes the state as of the capture.
func (s *Store) CaptureSnapshot() func(w io.Writer) error {
	s.mu.Lock()
	items := s.tree.clone()
	rev, applied, clock := s.rev, s.applied, s.clock
	sessions := make([]session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		sessions = append(sessions, session{id: sess.id, seq: sess.seq, lastTime: sess.lastTime, result: sess.result})
	}
	s.mu.Unlock()
	return func(w io.Writer) error { return writeSnapshot(w, items, rev, applied, clock, sessions) }
}

func writeSnapshot(w io.Writer, items *tree, rev int64, applied uint64, clock int64, sessions []session) error {
	sort.Slice(sessions, func(i, j int) bool { return sessions[i].id < sessions[j].id })

	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 256<<10)
	var scratch []byte
	put := func(b []byte) { _, _ = bw.Write(b) } // bufio keeps the first error for Flush
	uv := func(x uint64) { scratch = binary.AppendUvarint(scratch[:0], x); put(scratch) }
	sv := func(x int64) { scratch = binary.AppendVarint(scratch[:0], x); put(scratch) }
	blob := func(b []byte) { uv(uint64(len(b))); put(b) }

	put([]byte(snapshotMagic))
	uv(snapshotVersion)
	sv(rev)
	uv(applied)
	sv(clock)
	uv(uint64(items.len()))
	items.ascend(func(it kvItem) bool {
		blob(it.key)
		blob(it.value)
		sv(it.create)
		sv(it.mod)
		sv(it.version)
		sv(it.lease)
		return true
	})
	uv(uint64(len(sessions)))
	for _, sess := range sessions {
		uv(sess.id)
		uv(sess.seq)
		sv(sess.lastTime)
		blob(sess.result)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("kv: write snapshot: %w", err)
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc.Sum32())
	if _, err := w.Write(sum[:]); err != nil {
		return fmt.Errorf("kv: write snapshot: %w", err)
	}
	return nil
}

// Restore replaces the store's state with a snapshot written by Snapshot.
// It reads and checks the whole input (format, checksum, internal
// consistency) before touching the store, so on any error the state is
// unchanged; format errors wrap ErrCorruptSnapshot.
func (s *Store) Restore(r io.Reader) error {
	st, err := readSnapshot(r)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tree, s.rev, s.applied, s.clock, s.bytes = st.tree, st.rev, st.applied, st.clock, st.bytes
	s.sessions = make(map[uint64]*session, len(st.sessions))
	s.head, s.tail = nil, nil
	// Rebuild the use-order list: oldest first. Ties in lastTime expire
	// together, so their order does not matter.
	sort.SliceStable(st.sessions, func(i, j int) bool { return st.sessions[i].lastTime < st.sessions[j].lastTime })
	for _, sess := range st.sessions {
		s.sessions[sess.id] = sess
		sess.prev = s.tail
		if s.tail != nil {
			s.tail.next = sess
		} else {
			s.head = sess
		}
		s.tail = sess
	}
	return nil
}

type snapState struct {
	tree     *tree
	rev      int64
	applied  uint64
	clock    int64
	bytes    int64
	sessions []*session
}

// snapReader decodes the snapshot stream while checksumming it. The first
// error sticks.
type snapReader struct {
	r   *bufio.Reader
	crc hash.Hash32
	err error
}

func (sr *snapReader) fail(format string, args ...any) {
	if sr.err == nil {
		sr.err = fmt.Errorf("%w: %s", ErrCorruptSnapshot, fmt.Sprintf(format, args...))
	}
}

func (sr *snapReader) ioFail(what string, err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		sr.fail("truncated while reading %s", what)
		return
	}
	if sr.err == nil {
		sr.err = fmt.Errorf("kv: read snapshot: %s: %w", what, err)
	}
}

// ReadByte feeds the checksum; binary.ReadUvarint uses it.
func (sr *snapReader) ReadByte() (byte, error) {
	b, err := sr.r.ReadByte()
	if err == nil {
		sr.crc.Write([]byte{b})
	}
	return b, err
}

func (sr *snapReader) uvarint(what string) uint64 {
	if sr.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(sr)
	if err != nil {
		sr.ioFail(what, err)
	}
	return v
}

func (sr *snapReader) varint(what string) int64 {
	if sr.err != nil {
		return 0
	}
	v, err := binary.ReadVarint(sr)
	if err != nil {
		sr.ioFail(what, err)
	}
	return v
}

// full reads exactly n bytes. It grows the buffer as data arrives, so a
// corrupt length cannot make it allocate more than the input holds.
func (sr *snapReader) full(n uint64, what string) []byte {
	if sr.err != nil {
		return nil
	}
	const chunk = 1 << 20
	var b []byte
	if n <= chunk {
		b = make([]byte, n)
		if _, err := io.ReadFull(sr.r, b); err != nil {
			sr.ioFail(what, err)
			return nil
		}
	} else {
		var buf bytes.Buffer
		if m, err := io.CopyN(&buf, sr.r, int64(min(n, 1<<62))); err != nil || uint64(m) != n {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			sr.ioFail(what, err)
			return nil
		}
		b = buf.Bytes()
	}
	sr.crc.Write(b)
	return b
}

func (sr *snapReader) blob(what string) []byte {
	n := sr.uvarint(what + " length")
	return sr.full(n, what)
}

func readSnapshot(r io.Reader) (*snapState, error) {
	sr := &snapReader{r: bufio.NewReaderSize(r, 256<<10), crc: crc32.New(castagnoli)}
	if magic := sr.full(uint64(len(snapshotMagic)), "magic"); sr.err == nil && string(magic) != snapshotMagic {
		sr.fail("not a Cairn key/value snapshot (bad magic %q)", magic)
	}
	if v := sr.uvarint("format version"); sr.err == nil && v != snapshotVersion {
		sr.fail("unsupported format version %d (this build reads version %d)", v, snapshotVersion)
	}
	st := &snapState{tree: newTree()}
	st.rev = sr.varint("revision")
	st.applied = sr.uvarint("applied index")
	st.clock = sr.varint("clock")
	if sr.err == nil && st.rev < 1 {
		sr.fail("revision %d is below 1", st.rev)
	}
	nkeys := sr.uvarint("key count")
	var prev []byte
	for i := uint64(0); i < nkeys && sr.err == nil; i++ {
		it := kvItem{key: sr.blob("key"), value: sr.blob("value")}
		it.create = sr.varint("create revision")
		it.mod = sr.varint("mod revision")
		it.version = sr.varint("version")
		it.lease = sr.varint("lease")
		if sr.err != nil {
			break
		}
		switch {
		case len(it.key) == 0:
			sr.fail("key %d is empty", i)
		case i > 0 && bytes.Compare(prev, it.key) >= 0:
			sr.fail("key %d (%q) is not above the key before it", i, it.key)
		case it.create < 2 || it.mod < it.create || it.mod > st.rev || it.version < 1:
			sr.fail("key %q has impossible metadata (create %d, mod %d, version %d, store revision %d)",
				it.key, it.create, it.mod, it.version, st.rev)
		}
		if len(it.value) == 0 {
			it.value = nil
		}
		prev = it.key
		st.tree.replaceOrInsert(it)
		st.bytes += int64(len(it.key) + len(it.value))
	}
	nsess := sr.uvarint("session count")
	var prevID uint64
	for i := uint64(0); i < nsess && sr.err == nil; i++ {
		sess := &session{id: sr.uvarint("client id"), seq: sr.uvarint("sequence number"), lastTime: sr.varint("session time")}
		sess.result = sr.blob("cached result")
		if sr.err != nil {
			break
		}
		switch {
		case sess.id == 0 || (i > 0 && sess.id <= prevID):
			sr.fail("session %d has client id %d, not above %d", i, sess.id, prevID)
		case sess.seq == 0:
			sr.fail("session of client %d has sequence number 0", sess.id)
		case sess.lastTime > st.clock:
			sr.fail("session of client %d was last used after the store clock", sess.id)
		}
		if _, err := decodeResult(sess.result); err != nil && sr.err == nil {
			sr.fail("cached result of client %d: %v", sess.id, err)
		}
		prevID = sess.id
		st.sessions = append(st.sessions, sess)
	}
	if sr.err != nil {
		return nil, sr.err
	}
	want := sr.crc.Sum32()
	var sum [4]byte
	if _, err := io.ReadFull(sr.r, sum[:]); err != nil {
		sr.ioFail("checksum", err)
		return nil, sr.err
	}
	if got := binary.BigEndian.Uint32(sum[:]); got != want {
		return nil, fmt.Errorf("%w: checksum mismatch (stored %08x, computed %08x)", ErrCorruptSnapshot, got, want)
	}
	if _, err := sr.r.ReadByte(); err != io.EOF {
		if err != nil {
			return nil, fmt.Errorf("kv: read snapshot: after checksum: %w", err)
		}
		return nil, fmt.Errorf("%w: trailing bytes after the checksum", ErrCorruptSnapshot)
	}
	return st, nil
}
