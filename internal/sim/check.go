package sim

import (
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"

	"github.com/cairn-db/cairn/raft"
)

// logCheckEvery is how often (in steps) the quadratic log matching check
// runs; the cheap checks run every step.
const logCheckEvery = 25

func dataHash(e raft.Entry) uint64 {
	h := fnv.New64a()
	h.Write([]byte{byte(e.Type)})
	h.Write(e.Data)
	return h.Sum64()
}

// onHardState learns commit terms: when a leader's commit index advances,
// the newly committed entries were committed in the leader's term. It sees
// each Ready's hard state when the Ready is taken, before it is durable.
func (s *Sim) onHardState(n *simNode, hs raft.HardState) {
	if n.isLeader && hs.Commit > n.memCommit {
		for i := n.memCommit + 1; i <= hs.Commit; i++ {
			if _, ok := s.commitTerm[i]; !ok {
				s.commitTerm[i] = hs.Term
			}
		}
	}
	n.memCommit = max(n.memCommit, hs.Commit)
}

// onLeader checks election safety and leader completeness for a node that
// just became leader.
func (s *Sim) onLeader(n *simNode) {
	st := n.rn.Status()
	if prev, ok := s.leaders[st.Term]; ok && prev != n.id {
		s.fail("election safety: nodes %d and %d both leaders of term %d", prev, n.id, st.Term)
		return
	}
	s.leaders[st.Term] = n.id
	// The leader's log as the core sees it: what is on disk, and the
	// writes still in progress (asynchronous writes) over it.
	lg := s.memLog(n)
	for i, ct := range s.commitTerm {
		if ct >= st.Term || i < lg.first {
			continue
		}
		want := s.committed[i]
		if i > lg.last {
			s.fail("leader completeness: leader %d of term %d lacks entry %d committed in term %d (last index %d)", n.id, st.Term, i, ct, lg.last)
			return
		}
		t, ok := lg.term(i)
		if !ok {
			continue
		}
		if want.term != 0 && t != want.term {
			s.fail("leader completeness: leader %d of term %d has term %d at %d, committed entry has term %d", n.id, st.Term, t, i, want.term)
			return
		}
	}
}

// recordCommitted checks that every node applies the same entry at each
// index (state machine safety).
func (s *Sim) recordCommitted(n *simNode, e raft.Entry) {
	id := entryID{term: e.Term, hash: dataHash(e)}
	if prev, ok := s.committed[e.Index]; ok {
		if prev != id {
			s.fail("state machine safety: node %d applied %d/%d, another node applied %d/%d at the same index", n.id, e.Index, e.Term, e.Index, prev.term)
		}
		return
	}
	s.committed[e.Index] = id
	s.result.Committed = max(s.result.Committed, e.Index)
	if e.Type == raft.EntryConfChange {
		s.result.ConfChange++
	}
}

func (s *Sim) checkStateHash(n *simNode) {
	if n.sm == nil || n.sm.applied == 0 {
		return
	}
	if h, ok := s.stateHash[n.sm.applied]; ok {
		if h != n.sm.hash {
			s.fail("state machine safety: node %d state at index %d differs from another replica's", n.id, n.sm.applied)
		}
		return
	}
	s.stateHash[n.sm.applied] = n.sm.hash
}

// memLogView is a node's log including writes not yet durable.
type memLogView struct {
	n           *simNode
	first, last uint64
	storageMax  uint64            // storage entries above this are replaced
	overlay     map[uint64]uint64 // index -> term from pending writes
}

func (s *Sim) memLog(n *simNode) memLogView {
	first, _ := n.storage.FirstIndex()
	last, _ := n.storage.LastIndex()
	v := memLogView{n: n, first: first, last: last, storageMax: last, overlay: map[uint64]uint64{}}
	for _, rd := range n.pending {
		if rd.Snapshot != nil {
			m := rd.Snapshot.Meta
			clear(v.overlay)
			v.overlay[m.Index] = m.Term
			v.first, v.last, v.storageMax = m.Index+1, m.Index, 0
		}
		if len(rd.Entries) == 0 {
			continue
		}
		lo := rd.Entries[0].Index
		for i := range v.overlay {
			if i >= lo {
				delete(v.overlay, i)
			}
		}
		v.storageMax = min(v.storageMax, lo-1)
		for _, e := range rd.Entries {
			v.overlay[e.Index] = e.Term
		}
		v.last = rd.Entries[len(rd.Entries)-1].Index
	}
	return v
}

func (v memLogView) term(i uint64) (uint64, bool) {
	if t, ok := v.overlay[i]; ok {
		return t, true
	}
	if i > v.storageMax {
		return 0, false
	}
	t, err := v.n.storage.Term(i)
	return t, err == nil
}

type storedLog struct {
	first uint64
	ents  []raft.Entry
}

// checkSafety runs the per-step checks, and the log matching check
// periodically.
func (s *Sim) checkSafety() {
	// Election safety is also checked continuously: every node that
	// believes it leads a term must be the recorded leader of that term.
	for _, id := range s.ids {
		n := s.nodes[id]
		if !n.up {
			continue
		}
		st := n.rn.Status()
		if st.State == raft.StateLeader {
			if l, ok := s.leaders[st.Term]; ok && l != id {
				s.fail("election safety: nodes %d and %d both leaders of term %d", l, id, st.Term)
			}
		}
		if st.Commit > st.LastIndex {
			s.fail("node %d commit %d beyond last index %d", id, st.Commit, st.LastIndex)
		}
	}
	if s.step%logCheckEvery != 0 {
		return
	}
	s.checkLogMatching()
}

// checkLogMatching verifies the Log Matching Property: if two logs hold an
// entry with the same index and term, they are identical up to it.
func (s *Sim) checkLogMatching() {
	logs := map[uint64]storedLog{}
	seen := map[[2]uint64]uint64{} // (index, term) -> data hash
	for _, id := range s.ids {
		n := s.nodes[id]
		if n.removed {
			continue
		}
		first, _ := n.storage.FirstIndex()
		last, _ := n.storage.LastIndex()
		ents, err := n.storage.Entries(first, last+1, ^uint64(0))
		if err != nil {
			s.fail("node %d: reading log: %v", id, err)
			return
		}
		logs[id] = storedLog{first: first, ents: ents}
		for _, e := range ents {
			k := [2]uint64{e.Index, e.Term}
			h := dataHash(e)
			if prev, ok := seen[k]; ok && prev != h {
				s.fail("log matching: two different entries at index %d term %d", e.Index, e.Term)
				return
			}
			seen[k] = h
			if c, ok := s.committed[e.Index]; ok && e.Index <= n.lastCommit && (c.term != e.Term || c.hash != h) {
				s.fail("node %d holds entry %d/%d below its commit index that differs from the applied one (%d)", id, e.Index, e.Term, c.term)
				return
			}
		}
	}
	for i, a := range s.ids {
		la, ok := logs[a]
		if !ok {
			continue
		}
		for _, b := range s.ids[i+1:] {
			lb, ok := logs[b]
			if !ok {
				continue
			}
			lo := max(la.first, lb.first)
			hi := min(la.first+uint64(len(la.ents)), lb.first+uint64(len(lb.ents)))
			// Find the highest common index with equal terms; everything
			// below it in the overlap must agree.
			match := uint64(0)
			for j := hi; j > lo; j-- {
				idx := j - 1
				if la.ents[idx-la.first].Term == lb.ents[idx-lb.first].Term {
					match = idx
					break
				}
			}
			for idx := lo; idx < match; idx++ {
				if la.ents[idx-la.first].Term != lb.ents[idx-lb.first].Term {
					s.fail("log matching: nodes %d and %d agree at %d but differ at %d", a, b, match, idx)
					return
				}
			}
		}
	}
}

// checkLiveness heals every fault, restarts every member, and requires a
// leader to commit a new proposal within livenessTicks.
func (s *Sim) checkLiveness() error {
	clear(s.blocked)
	s.opts.LossRate, s.opts.DupRate, s.opts.CrashRate = 0, 0, 0
	for _, id := range s.ids {
		if n := s.nodes[id]; !n.up && !n.removed {
			s.restart(n)
		}
	}
	s.logf("healed; checking liveness")
	start := s.step
	deadline := s.step + livenessTicks*stepsPerTick
	proposed := false
	var want proposal
	for ; s.step < deadline; s.step++ {
		s.stepOnce(false)
		if len(s.violations) > 0 {
			return s.violations[0]
		}
		if !proposed {
			if l := s.currentLeader(); l != 0 {
				idx, term, err := s.nodes[l].rn.Propose([]byte("liveness=done"))
				if err == nil {
					proposed = true
					want = proposal{node: l, index: idx, term: term}
					s.logf("liveness proposal at %d/%d via %d", idx, term, l)
					s.handleReady(s.nodes[l])
				}
			}
			continue
		}
		if c, ok := s.committed[want.index]; ok {
			if c.term == want.term {
				s.logf("liveness ok after %d steps", s.step-start)
				return nil
			}
			proposed = false // lost to a new leader; try again
		}
	}
	s.fail("liveness: no proposal committed within %d ticks after healing; %s", livenessTicks, s.describe())
	return s.violations[0]
}

// describe summarizes every node's state for a violation report.
func (s *Sim) describe() string {
	var b strings.Builder
	for _, id := range s.ids {
		n := s.nodes[id]
		if !n.up {
			fmt.Fprintf(&b, "\n  node %d down (removed=%v)", id, n.removed)
			continue
		}
		st := n.rn.Status()
		fmt.Fprintf(&b, "\n  node %d %s term=%d lead=%d commit=%d applied=%d last=%d voters=%v learners=%v",
			id, st.State, st.Term, st.Lead, st.Commit, st.Applied, st.LastIndex, st.Config.Voters, st.Config.Learners)
		for _, pid := range slices.Sorted(maps.Keys(st.Progress)) {
			pr := st.Progress[pid]
			fmt.Fprintf(&b, "\n    progress %d: %s active=%v", pid, pr.String(), pr.RecentActive)
		}
	}
	return b.String()
}
