package server

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/raft"
)

// Entry kinds: the first byte of every entry the server proposes.
const (
	kindKV      byte = 1 // a kv.Command
	kindPublish byte = 2 // a member announcing its name and addresses
)

// envelope wraps a proposal with the proposing member and a request ID
// unique on that member, so the proposer recognizes its entry when it is
// applied, whichever member's leader appended it.
type envelope struct {
	kind    byte
	origin  uint64
	reqID   uint64
	payload []byte
}

// envelopeRoom is the most bytes an envelope's header takes. A payload
// is built with that much room in front of it and wrapped in place
// (wrapInPlace), not copied.
const envelopeRoom = 1 + 2*binary.MaxVarintLen64

// wrapInPlace returns the envelope's encoding for a buf that holds
// envelopeRoom free bytes followed by the payload (e.payload is
// ignored): the header is written just before the payload, so the
// result is a suffix of buf.
func (e envelope) wrapInPlace(buf []byte) []byte {
	var hdr [envelopeRoom]byte
	h := append(hdr[:0], e.kind)
	h = binary.AppendUvarint(h, e.origin)
	h = binary.AppendUvarint(h, e.reqID)
	out := buf[envelopeRoom-len(h):]
	copy(out, h)
	return out
}

var errBadEnvelope = errors.New("server: undecodable log entry")

func unmarshalEnvelope(b []byte) (envelope, error) {
	if len(b) < 3 {
		return envelope{}, errBadEnvelope
	}
	e := envelope{kind: b[0]}
	b = b[1:]
	var n int
	if e.origin, n = binary.Uvarint(b); n <= 0 {
		return envelope{}, errBadEnvelope
	}
	b = b[n:]
	if e.reqID, n = binary.Uvarint(b); n <= 0 {
		return envelope{}, errBadEnvelope
	}
	e.payload = b[n:]
	return e, nil
}

// MemberInfo is what the cluster knows of one member.
type MemberInfo struct {
	ID         uint64 `json:"id"`
	Name       string `json:"name,omitempty"`
	PeerAddr   string `json:"peer_addr,omitempty"`
	ClientAddr string `json:"client_addr,omitempty"`
	IsLearner  bool   `json:"is_learner,omitempty"`
}

// confContext is carried in a ConfChange's Context.
type confContext struct {
	PeerAddr string `json:"peer_addr"`
}

// stateMachine is the server's replicated state: the key/value store and
// the member table. It implements raftnode.StateMachine. Apply runs on the
// Raft goroutine; the member table is shared with the gRPC handlers under
// mu, the waiter table under waitMu (every write registers and
// unregisters, so it gets a lock of its own).
type stateMachine struct {
	self uint64
	app  application

	mu      sync.Mutex
	members map[uint64]*MemberInfo
	waitMu  sync.Mutex
	waiters map[uint64]chan any
	applied atomic.Uint64
	// onMembers is called (outside mu) after the member table changes.
	onMembers func(map[uint64]MemberInfo)
}

// application is the replicated service a group runs on top of the member
// table: the key/value store, a sharded key/value group, or the shard
// controller. Its methods run on the apply goroutine, except where noted.
type application interface {
	// Apply applies one kindKV payload at a log index and returns what the
	// proposer waits for.
	Apply(index uint64, payload []byte) any
	// Skip records an index that carries nothing for the application.
	Skip(index uint64)
	// AppliedIndex is the last index passed to Apply or Skip (or restored).
	AppliedIndex() uint64
	// CaptureSnapshot takes a consistent image now and returns the
	// function that writes it, which may run on another goroutine.
	CaptureSnapshot() (func(io.Writer) error, error)
	Restore(r io.Reader) error
}

// kvApp is the unsharded key/value store as an application.
type kvApp struct{ *kv.Store }

func (a kvApp) Apply(index uint64, payload []byte) any { return a.Store.Apply(index, payload) }
func (a kvApp) Skip(index uint64)                      { a.Store.Apply(index, nil) }
func (a kvApp) CaptureSnapshot() (func(io.Writer) error, error) {
	return a.Store.CaptureSnapshot(), nil
}

func newStateMachine(self uint64, app application, initial []Member) *stateMachine {
	sm := &stateMachine{
		self:    self,
		app:     app,
		members: map[uint64]*MemberInfo{},
		waiters: map[uint64]chan any{},
	}
	for _, m := range initial {
		sm.members[m.ID] = &MemberInfo{ID: m.ID, Name: m.Name, PeerAddr: m.PeerAddr}
	}
	return sm
}

// register returns the channel on which the result of request id arrives.
func (sm *stateMachine) register(id uint64) chan any {
	ch := make(chan any, 1)
	sm.waitMu.Lock()
	sm.waiters[id] = ch
	sm.waitMu.Unlock()
	return ch
}

func (sm *stateMachine) unregister(id uint64) {
	sm.waitMu.Lock()
	delete(sm.waiters, id)
	sm.waitMu.Unlock()
}

// submitFailed is what a waiter receives when its entry was never handed
// to Raft (no leader known): nothing will be applied for it.
type submitFailed struct{ err error }

// fail tells the waiter for id that its entry was not submitted. The
// waiter stays registered: it may submit again under the same id.
func (sm *stateMachine) fail(id uint64, err error) {
	sm.waitMu.Lock()
	ch := sm.waiters[id]
	sm.waitMu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- submitFailed{err}:
	default: // a result is already there (cannot happen: nothing was submitted)
	}
}

func (sm *stateMachine) notify(id uint64, res any) {
	sm.waitMu.Lock()
	ch := sm.waiters[id]
	delete(sm.waiters, id)
	sm.waitMu.Unlock()
	if ch != nil {
		ch <- res
	}
}

// Apply implements raftnode.StateMachine.
func (sm *stateMachine) Apply(e raft.Entry) any {
	defer sm.applied.Store(e.Index)
	switch {
	case e.Type == raft.EntryConfChange:
		sm.applyConfChange(e)
		return nil
	case len(e.Data) == 0:
		sm.app.Skip(e.Index)
		return nil
	}
	env, err := unmarshalEnvelope(e.Data)
	if err != nil {
		// Every replica sees the same bytes and skips them the same way.
		sm.app.Skip(e.Index)
		return nil
	}
	switch env.kind {
	case kindKV:
		res := sm.app.Apply(e.Index, env.payload)
		if env.origin == sm.self {
			sm.notify(env.reqID, res)
		}
		return res
	case kindPublish:
		sm.app.Skip(e.Index)
		var info MemberInfo
		if json.Unmarshal(env.payload, &info) == nil && info.ID != 0 {
			sm.mu.Lock()
			m := sm.members[info.ID]
			if m != nil { // ignore publishes from removed members
				m.Name, m.ClientAddr = info.Name, info.ClientAddr
				if info.PeerAddr != "" {
					m.PeerAddr = info.PeerAddr
				}
			}
			sm.mu.Unlock()
			sm.membersChanged()
		}
		if env.origin == sm.self {
			sm.notify(env.reqID, nil)
		}
		return nil
	default:
		sm.app.Skip(e.Index)
		return nil
	}
}

func (sm *stateMachine) applyConfChange(e raft.Entry) {
	sm.app.Skip(e.Index)
	cc, err := raft.UnmarshalConfChange(e.Data)
	if err != nil {
		return
	}
	var ctx confContext
	if len(cc.Context) > 0 {
		_ = json.Unmarshal(cc.Context, &ctx)
	}
	sm.mu.Lock()
	switch cc.Type {
	case raft.ConfChangeAddVoter, raft.ConfChangeAddLearner:
		m := sm.members[cc.NodeID]
		if m == nil {
			m = &MemberInfo{ID: cc.NodeID}
			sm.members[cc.NodeID] = m
		}
		if ctx.PeerAddr != "" {
			m.PeerAddr = ctx.PeerAddr
		}
		m.IsLearner = cc.Type == raft.ConfChangeAddLearner
	case raft.ConfChangeRemove:
		delete(sm.members, cc.NodeID)
	}
	sm.mu.Unlock()
	sm.membersChanged()
}

func (sm *stateMachine) membersChanged() {
	if sm.onMembers != nil {
		sm.onMembers(sm.memberTable())
	}
}

// memberTable returns a copy of the member table.
func (sm *stateMachine) memberTable() map[uint64]MemberInfo {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	out := make(map[uint64]MemberInfo, len(sm.members))
	for id, m := range sm.members {
		out[id] = *m
	}
	return out
}

func (sm *stateMachine) appliedIndex() uint64 { return sm.applied.Load() }

const smSnapshotMagic = "CAIRNSM1"

// Snapshot implements raftnode.StateMachine: the member table, then the
// key/value store's own (checksummed) snapshot.
func (sm *stateMachine) Snapshot(w io.Writer) error {
	write, err := sm.CaptureSnapshot()
	if err != nil {
		return err
	}
	return write(w)
}

// CaptureSnapshot implements raftnode.SnapshotCapturer: it copies the
// member table and takes the store's copy-on-write image now, and returns
// the function that streams them, which the node runs off its Raft
// goroutine.
func (sm *stateMachine) CaptureSnapshot() (func(io.Writer) error, error) {
	sm.mu.Lock()
	var members []MemberInfo
	for _, m := range sm.members {
		members = append(members, *m)
	}
	sm.mu.Unlock()
	slices.SortFunc(members, func(a, b MemberInfo) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	mb, err := json.Marshal(members)
	if err != nil {
		return nil, err
	}
	writeStore, err := sm.app.CaptureSnapshot()
	if err != nil {
		return nil, err
	}
	return func(w io.Writer) error {
		bw := bufio.NewWriter(w)
		bw.WriteString(smSnapshotMagic)
		var lenb [binary.MaxVarintLen64]byte
		bw.Write(lenb[:binary.PutUvarint(lenb[:], uint64(len(mb)))])
		bw.Write(mb)
		if err := writeStore(bw); err != nil {
			return err
		}
		return bw.Flush()
	}, nil
}

// Restore implements raftnode.StateMachine.
func (sm *stateMachine) Restore(r io.Reader) error {
	br := bufio.NewReader(r)
	magic := make([]byte, len(smSnapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != smSnapshotMagic {
		return fmt.Errorf("server: snapshot does not start with %q: not a Cairn snapshot or corrupt", smSnapshotMagic)
	}
	n, err := binary.ReadUvarint(br)
	if err != nil || n > 64<<20 {
		return fmt.Errorf("server: snapshot member table length is corrupt")
	}
	mb := make([]byte, n)
	if _, err := io.ReadFull(br, mb); err != nil {
		return fmt.Errorf("server: snapshot member table truncated: %w", err)
	}
	var members []MemberInfo
	if err := json.Unmarshal(mb, &members); err != nil {
		return fmt.Errorf("server: snapshot member table corrupt: %w", err)
	}
	if err := sm.app.Restore(br); err != nil {
		return err
	}
	sm.mu.Lock()
	sm.members = map[uint64]*MemberInfo{}
	for i := range members {
		m := members[i]
		sm.members[m.ID] = &m
	}
	sm.applied.Store(sm.app.AppliedIndex())
	sm.mu.Unlock()
	sm.membersChanged()
	return nil
}
