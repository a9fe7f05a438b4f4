package raft_test

import (
	"bytes"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

// compactAll snapshots every live node at its applied index and drops
// the harness's history, so long benchmark runs use bounded memory.
func (n *network) compactAll() {
	for _, id := range n.ids {
		nd := n.nodes[id]
		if nd.rn == nil {
			continue
		}
		applied := nd.rn.Status().Applied
		if snap, _ := nd.storage.Snapshot(); applied <= snap.Meta.Index {
			continue
		}
		if _, err := nd.storage.CreateSnapshot(applied, nd.rn.ConfState(), nil); err != nil {
			n.t.Fatal(err)
		}
		if err := nd.storage.Compact(applied); err != nil {
			n.t.Fatal(err)
		}
		nd.applied = nd.applied[:0]
	}
	clear(n.committed)
}

// BenchmarkProposeCommit3 measures one 256-byte proposal committed and
// applied on a three-node in-memory cluster: propose, then deliver and
// handle Readies until quiescent. Harness checks are included.
func BenchmarkProposeCommit3(b *testing.B) {
	n := newNetwork(b, 3, nil)
	n.elect(1)
	rn := n.rn(1)
	data := bytes.Repeat([]byte("x"), 256)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for i := 0; b.Loop(); i++ {
		if _, _, err := rn.Propose(data); err != nil {
			b.Fatal(err)
		}
		n.stabilize()
		if i%4096 == 4095 {
			b.StopTimer()
			n.compactAll()
			b.StartTimer()
		}
	}
}

// BenchmarkProposeBatch measures 100 proposals of 256 bytes made between
// two Ready cycles, so they are persisted and replicated as one batch. One
// op is the whole batch.
func BenchmarkProposeBatch(b *testing.B) {
	const batch = 100
	n := newNetwork(b, 3, nil)
	n.elect(1)
	rn := n.rn(1)
	data := bytes.Repeat([]byte("x"), 256)
	b.ReportAllocs()
	b.SetBytes(int64(batch * len(data)))
	for i := 0; b.Loop(); i++ {
		for range batch {
			if _, _, err := rn.Propose(data); err != nil {
				b.Fatal(err)
			}
		}
		n.stabilize()
		if i%64 == 63 {
			b.StopTimer()
			n.compactAll()
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/entry")
}

// BenchmarkStepAppend measures a follower handling a 10-entry MsgApp:
// Step, then one Ready persisted to MemoryStorage (entries, hard state),
// its committed entries applied, and Advance.
func BenchmarkStepAppend(b *testing.B) {
	const perMsg = 10
	st := raft.NewMemoryStorage()
	rn, err := raft.NewRawNode(&raft.Config{ID: 2, Storage: st})
	if err != nil {
		b.Fatal(err)
	}
	if err := rn.Bootstrap([]uint64{1, 2, 3}); err != nil {
		b.Fatal(err)
	}
	handle := func() {
		rd := rn.Ready()
		if err := st.Append(rd.Entries); err != nil {
			b.Fatal(err)
		}
		if !rd.HardState.IsEmpty() {
			st.SetHardState(rd.HardState)
		}
		rn.Advance(rd)
	}
	handle()
	data := bytes.Repeat([]byte("x"), 256)
	ents := make([]raft.Entry, perMsg)
	last, logTerm := uint64(3), uint64(1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		for j := range ents {
			ents[j] = raft.Entry{Term: 2, Index: last + 1 + uint64(j), Data: data}
		}
		m := raft.Message{Type: raft.MsgApp, From: 1, To: 2, Term: 2, Index: last, LogTerm: logTerm,
			Entries: ents, Commit: last + perMsg}
		if err := rn.Step(m); err != nil {
			b.Fatal(err)
		}
		handle()
		last, logTerm = last+perMsg, 2
		if i%1024 == 1023 {
			b.StopTimer()
			if _, err := st.CreateSnapshot(last, rn.ConfState(), nil); err != nil {
				b.Fatal(err)
			}
			if err := st.Compact(last); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	if s := rn.Status(); s.Applied != last || s.Commit != last {
		b.Fatalf("applied %d commit %d, want %d", s.Applied, s.Commit, last)
	}
}
