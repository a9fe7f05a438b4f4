package raft

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The wire and disk encodings below are hand-written rather than generated
// from protobuf: the types are few and stable, the format is a version byte
// followed by uvarints and length-prefixed byte strings, and encoding a
// batch of entries then costs no reflection and one allocation.

// ErrCorrupt is returned (wrapped) when bytes do not decode.
var ErrCorrupt = errors.New("raft: corrupt encoding")

const codecVersion = 1

// maxDecodeLen bounds any single length read from untrusted input so a
// garbage length cannot make the decoder allocate gigabytes.
const maxDecodeLen = 1 << 30

type encoder struct{ b []byte }

func (e *encoder) u(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) bytes(p []byte) {
	e.u(uint64(len(p)))
	e.b = append(e.b, p...)
}
func (e *encoder) ids(ids []uint64) {
	e.u(uint64(len(ids)))
	for _, id := range ids {
		e.u(id)
	}
}

type decoder struct {
	b   []byte
	err error
	// slab, when set, is where bytes copies what it decodes: one
	// allocation for all of a message's entries instead of one each.
	slab []byte
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, what)
	}
}

func (d *decoder) u() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) count(what string) int {
	n := d.u()
	if n > uint64(len(d.b)) || n > maxDecodeLen {
		d.fail(what + " count exceeds input")
		return 0
	}
	return int(n)
}

func (d *decoder) bytes() []byte {
	n := d.count("byte string")
	if d.err != nil {
		return nil
	}
	if n == 0 {
		return nil
	}
	var p []byte
	if n <= len(d.slab) {
		p, d.slab = d.slab[:n:n], d.slab[n:]
	} else {
		p = make([]byte, n)
	}
	copy(p, d.b[:n])
	d.b = d.b[n:]
	return p
}

func (d *decoder) ids() []uint64 {
	n := d.count("id list")
	if d.err != nil || n == 0 {
		return nil
	}
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = d.u()
	}
	return ids
}

func (e *encoder) entry(ent *Entry) {
	e.u(ent.Term)
	e.u(ent.Index)
	e.u(uint64(ent.Type))
	e.bytes(ent.Data)
}

func (d *decoder) entry() Entry {
	var ent Entry
	ent.Term = d.u()
	ent.Index = d.u()
	t := d.u()
	if t > uint64(EntryConfChange) {
		d.fail("unknown entry type")
	}
	ent.Type = EntryType(t)
	ent.Data = d.bytes()
	return ent
}

func (e *encoder) confState(cs *ConfState) {
	e.ids(cs.Voters)
	e.ids(cs.Learners)
}

func (d *decoder) confState() ConfState {
	return ConfState{Voters: d.ids(), Learners: d.ids()}
}

func (e *encoder) snapMeta(m *SnapshotMeta) {
	e.u(m.Index)
	e.u(m.Term)
	e.confState(&m.ConfState)
}

func (d *decoder) snapMeta() SnapshotMeta {
	return SnapshotMeta{Index: d.u(), Term: d.u(), ConfState: d.confState()}
}

func (d *decoder) finish(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Sprintf("%d trailing bytes after %s", len(d.b), what))
	}
	return d.err
}

func (d *decoder) version() {
	if v := d.u(); d.err == nil && v != codecVersion {
		d.fail(fmt.Sprintf("unsupported encoding version %d", v))
	}
}

// AppendEntry appends the encoding of ent to b.
func AppendEntry(b []byte, ent *Entry) []byte {
	e := encoder{b: b}
	e.u(codecVersion)
	e.entry(ent)
	return e.b
}

// DecodeEntry decodes an entry produced by AppendEntry.
func DecodeEntry(b []byte) (Entry, error) {
	d := decoder{b: b}
	d.version()
	ent := d.entry()
	return ent, d.finish("entry")
}

// AppendHardState appends the encoding of hs to b.
func AppendHardState(b []byte, hs HardState) []byte {
	e := encoder{b: b}
	e.u(codecVersion)
	e.u(hs.Term)
	e.u(hs.Vote)
	e.u(hs.Commit)
	return e.b
}

// DecodeHardState decodes a HardState produced by AppendHardState.
func DecodeHardState(b []byte) (HardState, error) {
	d := decoder{b: b}
	d.version()
	hs := HardState{Term: d.u(), Vote: d.u(), Commit: d.u()}
	return hs, d.finish("hard state")
}

// AppendSnapshotMeta appends the encoding of m to b.
func AppendSnapshotMeta(b []byte, m SnapshotMeta) []byte {
	e := encoder{b: b}
	e.u(codecVersion)
	e.snapMeta(&m)
	return e.b
}

// DecodeSnapshotMeta decodes metadata produced by AppendSnapshotMeta.
func DecodeSnapshotMeta(b []byte) (SnapshotMeta, error) {
	d := decoder{b: b}
	d.version()
	m := d.snapMeta()
	return m, d.finish("snapshot metadata")
}

// Marshal encodes a ConfChange for an EntryConfChange entry.
func (cc ConfChange) Marshal() []byte {
	e := encoder{}
	e.u(codecVersion)
	e.u(uint64(cc.Type))
	e.u(cc.NodeID)
	e.bytes(cc.Context)
	return e.b
}

// UnmarshalConfChange decodes the Data of an EntryConfChange entry.
func UnmarshalConfChange(b []byte) (ConfChange, error) {
	d := decoder{b: b}
	d.version()
	var cc ConfChange
	t := d.u()
	if t > uint64(ConfChangeRemove) {
		d.fail("unknown conf change type")
	}
	cc.Type = ConfChangeType(t)
	cc.NodeID = d.u()
	cc.Context = d.bytes()
	return cc, d.finish("conf change")
}

const (
	flagReject   = 1 << 0
	flagSnapshot = 1 << 1
)

// AppendMessage appends the wire encoding of m to b.
func AppendMessage(b []byte, m *Message) []byte {
	e := encoder{b: b}
	e.u(codecVersion)
	e.u(uint64(m.Type))
	e.u(m.To)
	e.u(m.From)
	e.u(m.Term)
	e.u(m.LogTerm)
	e.u(m.Index)
	e.u(m.Commit)
	var flags uint64
	if m.Reject {
		flags |= flagReject
	}
	if m.Snapshot != nil {
		flags |= flagSnapshot
	}
	e.u(flags)
	e.u(m.RejectHint)
	e.bytes(m.Context)
	e.u(uint64(len(m.Entries)))
	for i := range m.Entries {
		e.entry(&m.Entries[i])
	}
	if m.Snapshot != nil {
		e.snapMeta(&m.Snapshot.Meta)
		e.bytes(m.Snapshot.Data)
	}
	return e.b
}

// MessageSize returns an upper bound on the encoded size of m, used for
// flow control without encoding.
func MessageSize(m *Message) int {
	// Fixed fields: version, type and flags (1 byte each as used), seven
	// uvarints of at most 10 bytes, two length prefixes.
	n := 3 + 7*10 + 2*10 + len(m.Context)
	for i := range m.Entries {
		// term, index, type, length prefix: at most 10+10+1+10 bytes.
		n += 31 + len(m.Entries[i].Data)
	}
	if m.Snapshot != nil {
		n += 64 + len(m.Snapshot.Data) + 10*(len(m.Snapshot.Meta.ConfState.Voters)+len(m.Snapshot.Meta.ConfState.Learners))
	}
	return n
}

// UnmarshalMessage decodes a message produced by AppendMessage. It never
// panics on malformed input.
func UnmarshalMessage(b []byte) (Message, error) {
	d := decoder{b: b}
	d.version()
	var m Message
	t := d.u()
	if t >= uint64(msgTypeCount) {
		d.fail(fmt.Sprintf("unknown message type %d", t))
	}
	m.Type = MessageType(t)
	m.To = d.u()
	m.From = d.u()
	m.Term = d.u()
	m.LogTerm = d.u()
	m.Index = d.u()
	m.Commit = d.u()
	flags := d.u()
	m.Reject = flags&flagReject != 0
	m.RejectHint = d.u()
	m.Context = d.bytes()
	// Each entry takes at least four bytes, which bounds the count.
	n := d.count("entry")
	if d.err == nil && n > 0 {
		m.Entries = make([]Entry, 0, min(n, len(d.b)/4+1))
		if n > 1 {
			// The entries' data share one buffer: they are appended to
			// the log together and compacted together, so none keeps
			// much of it alive alone. The rest of the message bounds
			// their total size.
			d.slab = make([]byte, len(d.b))
		}
		for i := 0; i < n && d.err == nil; i++ {
			m.Entries = append(m.Entries, d.entry())
		}
		d.slab = nil
	}
	if flags&flagSnapshot != 0 {
		s := &Snapshot{Meta: d.snapMeta()}
		s.Data = d.bytes()
		m.Snapshot = s
	}
	if err := d.finish("message"); err != nil {
		return Message{}, err
	}
	return m, nil
}
