package wal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

const dsDir = "/data/node"

func openDS(t testing.TB, fsys FS, opts StorageOptions) *DiskStorage {
	t.Helper()
	ds, err := OpenDiskStorage(fsys, dsDir, opts)
	if err != nil {
		t.Fatalf("OpenDiskStorage: %v", err)
	}
	return ds
}

func ents(term uint64, lo, hi uint64) []raft.Entry {
	var es []raft.Entry
	for i := lo; i <= hi; i++ {
		es = append(es, raft.Entry{Term: term, Index: i, Data: []byte(fmt.Sprintf("e%d.t%d", i, term))})
	}
	return es
}

// state is what a storage exposes, for comparisons.
type state struct {
	hs          raft.HardState
	cs          raft.ConfState
	snap        raft.SnapshotMeta
	first, last uint64
	ents        []raft.Entry
}

func stateOf(t testing.TB, s raft.Storage) state {
	t.Helper()
	var st state
	var err error
	st.hs, st.cs, err = s.InitialState()
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := s.Snapshot()
	st.snap = snap.Meta
	if len(snap.Data) != 0 {
		t.Fatalf("Snapshot() returned %d data bytes", len(snap.Data))
	}
	st.first, _ = s.FirstIndex()
	st.last, _ = s.LastIndex()
	if st.last >= st.first {
		st.ents, err = s.Entries(st.first, st.last+1, 1<<62)
		if err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func (s state) String() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "hs=%+v snap=%d/%d cs=%v first=%d last=%d ents=", s.hs, s.snap.Index, s.snap.Term, s.cs, s.first, s.last)
	for _, e := range s.ents {
		fmt.Fprintf(&b, "%d/%d:%s ", e.Index, e.Term, e.Data)
	}
	return b.String()
}

func sameState(t testing.TB, got, want state) {
	t.Helper()
	if got.String() != want.String() {
		t.Fatalf("state differs:\n got %s\nwant %s", got, want)
	}
}

func mustSave(t testing.TB, ds *DiskStorage, hs raft.HardState, es []raft.Entry, snap *raft.Snapshot) {
	t.Helper()
	if err := ds.Save(hs, es, snap); err != nil {
		t.Fatalf("Save: %v", err)
	}
}

func TestDiskStorageSaveReopen(t *testing.T) {
	fsys := NewMemFS()
	ds := openDS(t, fsys, StorageOptions{Metadata: []byte("cluster=7 node=2")})
	mustSave(t, ds, raft.HardState{Term: 1, Vote: 1}, ents(1, 1, 5), nil)
	mustSave(t, ds, raft.HardState{Term: 1, Vote: 1, Commit: 3}, nil, nil)
	// A new leader overwrites the uncommitted tail (§5.3).
	mustSave(t, ds, raft.HardState{Term: 2, Vote: 3, Commit: 3}, ents(2, 4, 6), nil)
	mustSave(t, ds, raft.HardState{Term: 3, Vote: 3, Commit: 4}, ents(3, 5, 5), nil)
	want := stateOf(t, ds)
	if want.last != 5 || string(want.ents[3].Data) != "e4.t2" || string(want.ents[4].Data) != "e5.t3" {
		t.Fatalf("unexpected state before reopen: %s", want)
	}
	if err := ds.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		ds = openDS(t, fsys, StorageOptions{Metadata: []byte("ignored after creation")})
		sameState(t, stateOf(t, ds), want)
		if string(ds.Metadata()) != "cluster=7 node=2" {
			t.Fatalf("Metadata = %q", ds.Metadata())
		}
		ds.Close()
	}
}

func TestDiskStorageFsyncs(t *testing.T) {
	fsys := NewMemFS()
	ds := openDS(t, fsys, StorageOptions{})
	before := fsys.FileSyncs
	mustSave(t, ds, raft.HardState{Term: 1, Commit: 2}, ents(1, 1, 10), nil)
	if n := fsys.FileSyncs - before; n != 1 {
		t.Fatalf("Save cost %d fsyncs, want 1", n)
	}
	mustSave(t, ds, raft.HardState{Term: 1, Commit: 2}, nil, nil)
	mustSave(t, ds, raft.HardState{}, nil, nil)
	if n := fsys.FileSyncs - before; n != 1 {
		t.Fatalf("an empty Save cost an fsync (%d in all)", n)
	}
}

func TestDiskStorageValidation(t *testing.T) {
	ds := openDS(t, NewMemFS(), StorageOptions{})
	mustSave(t, ds, raft.HardState{}, ents(1, 1, 3), nil)
	if err := ds.Save(raft.HardState{}, ents(1, 5, 6), nil); err == nil {
		t.Fatal("accepted a gap")
	}
	if err := ds.Save(raft.HardState{}, append(ents(1, 4, 4), ents(1, 6, 6)...), nil); err == nil {
		t.Fatal("accepted non-contiguous entries")
	}
	if err := ds.ApplySnapshot(testMeta(50)); err == nil {
		t.Fatal("accepted a snapshot whose file was never saved")
	}
	// Rejected calls wrote nothing and broke nothing.
	mustSave(t, ds, raft.HardState{}, ents(1, 4, 4), nil)
	if last, _ := ds.LastIndex(); last != 4 {
		t.Fatalf("last = %d", last)
	}
}

func TestDiskStorageCreateSnapshot(t *testing.T) {
	fsys := NewMemFS()
	opts := StorageOptions{SegmentSize: 256, KeepEntries: 5}
	ds := openDS(t, fsys, opts)
	for i := uint64(1); i <= 100; i += 10 {
		mustSave(t, ds, raft.HardState{Term: 1, Vote: 1, Commit: i + 9}, ents(1, i, i+9), nil)
	}
	walDirPath := filepath.Join(dsDir, walDir)
	segsBefore := len(segmentNames2(t, fsys, walDirPath))
	cs := raft.ConfState{Voters: []uint64{1, 2, 3}}
	for _, idx := range []uint64{30, 60, 90} {
		if err := ds.CreateSnapshot(idx, cs, bytes.NewReader([]byte(fmt.Sprint("sm@", idx)))); err != nil {
			t.Fatal(err)
		}
	}
	if err := ds.CreateSnapshot(80, cs, bytes.NewReader(nil)); !errors.Is(err, raft.ErrSnapOutOfDate) {
		t.Fatalf("older snapshot: %v", err)
	}
	st := stateOf(t, ds)
	if st.snap.Index != 90 || st.snap.Term != 1 || st.first != 86 || st.last != 100 || !st.cs.Equal(cs) {
		t.Fatalf("after snapshots: %s", st)
	}
	idx, _ := ds.Snapshotter().List()
	if fmt.Sprint(idx) != "[60 90]" {
		t.Fatalf("snapshot files %v, want [60 90]", idx)
	}
	segsAfter := segmentNames2(t, fsys, walDirPath)
	if len(segsAfter) >= segsBefore {
		t.Fatalf("no WAL segments released: %d before, %v after", segsBefore, segsAfter)
	}
	// The oldest remaining segment starts at or before 61-KeepEntries:
	// everything after the oldest retained snapshot is still there.
	if s, _ := parseSegmentName(segsAfter[0]); s.first > 56 {
		t.Fatalf("released too much: oldest segment %s", segsAfter[0])
	}
	ds.Close()

	// Reopen: the log starts after the snapshot.
	ds = openDS(t, fsys, opts)
	st = stateOf(t, ds)
	if st.snap.Index != 90 || st.first != 91 || st.last != 100 || st.hs.Commit != 100 || !st.cs.Equal(cs) {
		t.Fatalf("after reopen: %s", st)
	}
	snap, err := ds.Snapshotter().Load(90)
	if err != nil || string(snap.Data) != "sm@90" {
		t.Fatalf("Load(90) = %q, %v", snap.Data, err)
	}
	ds.Close()

	// Damage the newest snapshot: recovery falls back to 60 and rebuilds
	// the log from the WAL entries that were kept for that purpose.
	flipByte(t, fsys, ds.Snapshotter().path(90), 40)
	ds = openDS(t, fsys, opts)
	st = stateOf(t, ds)
	if st.snap.Index != 60 || st.first != 61 || st.last != 100 || st.hs.Commit != 100 {
		t.Fatalf("after fallback: %s", st)
	}
	ds.Close()
}

func segmentNames2(t testing.TB, fsys FS, dir string) []string {
	t.Helper()
	names, err := fsys.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// saveLeaderSnapshot stores a snapshot file as a driver does for a
// snapshot received from the leader.
func saveLeaderSnapshot(t testing.TB, ds *DiskStorage, meta raft.SnapshotMeta) {
	t.Helper()
	if err := ds.Snapshotter().Save(meta, bytes.NewReader([]byte("leader state"))); err != nil {
		t.Fatal(err)
	}
}

func TestDiskStorageApplySnapshot(t *testing.T) {
	cs := raft.ConfState{Voters: []uint64{1, 2, 3}}
	for _, tc := range []struct {
		name      string
		before    []raft.Entry // log before the snapshot arrives
		snap      raft.SnapshotMeta
		after     []raft.Entry // entries saved after it
		wantLast  uint64
		wantFirst uint64
	}{
		{"far behind", ents(1, 1, 10), raft.SnapshotMeta{Index: 100, Term: 5, ConfState: cs}, nil, 100, 101},
		{"far behind, then entries", ents(1, 1, 10), raft.SnapshotMeta{Index: 100, Term: 5, ConfState: cs}, ents(5, 101, 105), 105, 101},
		// Entries beyond the snapshot from an old term were discarded
		// when it was installed; replay must not bring them back.
		{"divergent longer log", ents(1, 1, 120), raft.SnapshotMeta{Index: 100, Term: 5, ConfState: cs}, nil, 100, 101},
		{"divergent longer log, then one entry", ents(1, 1, 120), raft.SnapshotMeta{Index: 100, Term: 5, ConfState: cs}, ents(5, 101, 101), 101, 101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := NewMemFS()
			ds := openDS(t, fsys, StorageOptions{SegmentSize: 512})
			mustSave(t, ds, raft.HardState{Term: 1, Vote: 2}, tc.before, nil)
			saveLeaderSnapshot(t, ds, tc.snap)
			mustSave(t, ds, raft.HardState{Term: 5, Vote: 2, Commit: 100}, nil, &raft.Snapshot{Meta: tc.snap})
			if len(tc.after) > 0 {
				mustSave(t, ds, raft.HardState{Term: 5, Vote: 2, Commit: 100}, tc.after, nil)
			}
			want := stateOf(t, ds)
			if want.last != tc.wantLast || want.first != tc.wantFirst || want.snap.Index != 100 {
				t.Fatalf("live state: %s", want)
			}
			ds.Close()
			ds = openDS(t, fsys, StorageOptions{SegmentSize: 512})
			sameState(t, stateOf(t, ds), want)
			ds.Close()
		})
	}
}

func TestDiskStorageOrphanSnapshot(t *testing.T) {
	// A crash between saving a leader's snapshot file and recording it
	// leaves an orphan file; recovery must ignore and delete it.
	fsys := NewMemFS()
	ds := openDS(t, fsys, StorageOptions{})
	mustSave(t, ds, raft.HardState{Term: 1, Commit: 5}, ents(1, 1, 10), nil)
	want := stateOf(t, ds)
	saveLeaderSnapshot(t, ds, raft.SnapshotMeta{Index: 100, Term: 5})
	fsys.Crash()
	ds = openDS(t, fsys, StorageOptions{})
	sameState(t, stateOf(t, ds), want)
	if idx, _ := ds.Snapshotter().List(); len(idx) != 0 {
		t.Fatalf("orphan snapshot kept: %v", idx)
	}
}

func TestDiskStorageMetadataMissing(t *testing.T) {
	fsys := NewMemFS()
	ds := openDS(t, fsys, StorageOptions{Metadata: []byte("x")})
	mustSave(t, ds, raft.HardState{Term: 1}, nil, nil)
	ds.Close()
	fsys.Remove(filepath.Join(dsDir, metadataFile))
	if _, err := OpenDiskStorage(fsys, dsDir, StorageOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open without metadata: %v", err)
	}
}

func TestDiskStorageStickyError(t *testing.T) {
	fsys := NewMemFS()
	ffs := &faultFS{FS: fsys}
	ds := openDS(t, ffs, StorageOptions{})
	mustSave(t, ds, raft.HardState{Term: 1}, ents(1, 1, 2), nil)
	ffs.failSync = true
	if err := ds.Save(raft.HardState{Term: 1}, ents(1, 3, 3), nil); err == nil {
		t.Fatal("Save succeeded although fsync failed")
	}
	ffs.failSync = false
	// fsync failures are not retried: the kernel may have dropped the
	// pages, so a later successful fsync would prove nothing.
	if err := ds.Save(raft.HardState{Term: 2}, nil, nil); err == nil {
		t.Fatal("Save after a failed fsync succeeded")
	}
}

// model is the acknowledged state: updated only after Save returns nil.
type model struct {
	ms   *raft.MemoryStorage
	snap raft.SnapshotMeta
}

// TestDiskStorageCrash runs seeded random workloads of Save (with
// conflicting tails), CreateSnapshot and leader snapshots, then crashes
// the MemFS with torn writes, sometimes in the middle of a Save whose
// fsync failed. Recovery must reproduce every acknowledged write; a Save
// that did not return nil may survive in part, as a prefix.
//
// CAIRN_WAL_SEEDS=n runs n seeds instead of 150.
func TestDiskStorageCrash(t *testing.T) {
	seeds := uint64(150)
	if v, err := strconv.ParseUint(os.Getenv("CAIRN_WAL_SEEDS"), 10, 64); err == nil {
		seeds = v
	}
	for seed := uint64(1); seed <= seeds; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			defer func() {
				if t.Failed() {
					t.Logf("replay with: CAIRN_WAL_SEEDS=%d go test ./raft/wal -run 'TestDiskStorageCrash/seed=%d$'", seed, seed)
				}
			}()
			crashRun(t, seed)
		})
	}
}

func crashRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	fsys := NewMemFS()
	ffs := &faultFS{FS: fsys}
	opts := StorageOptions{SegmentSize: int64(200 + rng.IntN(2000)), KeepEntries: uint64(rng.IntN(8)), SnapshotsToKeep: 1 + rng.IntN(3)}
	ds := openDS(t, ffs, opts)
	ref := raft.NewMemoryStorage()
	hs := raft.HardState{Term: 1} // never empty: an empty HardState means "unchanged"
	cs := raft.ConfState{Voters: []uint64{1, 2, 3}}
	for step := range 10 + rng.IntN(60) {
		last, _ := ref.LastIndex()
		first, _ := ref.FirstIndex()
		switch k := rng.IntN(10); {
		case k < 6: // append, sometimes overwriting an uncommitted tail
			lo := last + 1
			if rng.IntN(3) == 0 && last >= first && last > hs.Commit {
				lo = max(hs.Commit+1, first) + uint64(rng.IntN(int(last-max(hs.Commit+1, first)+1)))
			}
			hs.Term += uint64(rng.IntN(2))
			es := ents(hs.Term, lo, lo+uint64(rng.IntN(6)))
			if rng.IntN(2) == 0 {
				hs.Commit = max(hs.Commit, min(es[len(es)-1].Index, hs.Commit+uint64(rng.IntN(5))))
			}
			hs.Vote = uint64(rng.IntN(3))
			t.Logf("step %d: save %+v ents %d..%d", step, hs, es[0].Index, es[len(es)-1].Index)
			mustSave(t, ds, hs, es, nil)
			ref.Append(es)
			ref.SetHardState(hs)
		case k < 8: // local snapshot of an applied (committed) index
			snap, _ := ref.Snapshot()
			if hs.Commit <= snap.Meta.Index {
				continue
			}
			idx := snap.Meta.Index + 1 + uint64(rng.IntN(int(hs.Commit-snap.Meta.Index)))
			if err := ds.CreateSnapshot(idx, cs, bytes.NewReader([]byte(fmt.Sprint("s", idx)))); err != nil {
				t.Fatalf("step %d: CreateSnapshot(%d): %v", step, idx, err)
			}
			ref.CreateSnapshot(idx, cs, nil)
			t.Logf("step %d: create snapshot %d", step, idx)
		case k < 9: // snapshot from the leader
			snap, _ := ref.Snapshot()
			idx := max(last, snap.Meta.Index) + uint64(rng.IntN(10))
			idx -= min(idx, uint64(rng.IntN(3)))
			if idx <= max(hs.Commit, snap.Meta.Index) {
				continue
			}
			hs.Term++
			meta := raft.SnapshotMeta{Index: idx, Term: hs.Term, ConfState: cs}
			saveLeaderSnapshot(t, ds, meta)
			hs.Commit = idx
			mustSave(t, ds, hs, nil, &raft.Snapshot{Meta: meta})
			ref.ApplySnapshot(raft.Snapshot{Meta: meta})
			t.Logf("step %d: install snapshot %d/%d", step, idx, hs.Term)
			ref.SetHardState(hs)
		default: // clean restart
			ds.Close()
			ds = openDS(t, ffs, opts)
			t.Logf("step %d: restart", step)
		}
		// The live storage always matches the model, modulo compaction
		// of entries the model keeps.
		got, want := stateOf(t, ds), stateOf(t, ref)
		if got.last != want.last || got.hs != want.hs || got.snap.Index != want.snap.Index {
			t.Fatalf("step %d live:\n got %s\nwant %s", step, got, want)
		}
	}
	want := stateOf(t, ref)
	var pending []raft.Entry
	if rng.IntN(2) == 0 {
		// A Save in flight when the power fails: written, not synced.
		ffs.failSync = true
		pending = ents(hs.Term, want.last+1, want.last+1+uint64(rng.IntN(4)))
		if err := ds.Save(raft.HardState{Term: hs.Term + 1, Commit: hs.Commit}, pending, nil); err == nil {
			t.Fatal("Save with a failing fsync succeeded")
		}
	}
	fsys.CrashWith(rng)
	ds, err := OpenDiskStorage(fsys, dsDir, opts)
	if err != nil {
		t.Fatalf("open after crash: %v", err)
	}
	defer ds.Close()
	got := stateOf(t, ds)
	// Snapshot and hard state: as acknowledged, or the unacknowledged
	// hard state if its record survived.
	if got.snap.Index != want.snap.Index || (got.hs != want.hs && got.hs.Term != want.hs.Term+1) {
		t.Fatalf("after crash:\n got %s\nwant %s", got, want)
	}
	// Every acknowledged entry after the snapshot is there, followed by at
	// most a prefix of the unacknowledged ones.
	if got.first != want.snap.Index+1 || got.last < want.last || got.last > want.last+uint64(len(pending)) {
		t.Fatalf("after crash:\n got %s\nwant %s", got, want)
	}
	wantEnts, _ := ref.Entries(got.first, want.last+1, 1<<62)
	wantEnts = append(append([]raft.Entry(nil), wantEnts...), pending[:got.last-want.last]...)
	for i := range got.ents {
		if g, w := got.ents[i], wantEnts[i]; g.Index != w.Index || g.Term != w.Term || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("after crash entry %d: got %d/%d want %d/%d", g.Index, g.Index, g.Term, w.Index, w.Term)
		}
	}
	// And the snapshot the storage names is readable.
	if got.snap.Index > 0 {
		_, rc, _, err := ds.Snapshotter().Open(got.snap.Index)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
}

// TestDiskStorageConcurrentReads lets the core read while the driver
// saves, under the race detector.
func TestDiskStorageConcurrentReads(t *testing.T) {
	ds := openDS(t, NewMemFS(), StorageOptions{SegmentSize: 1024})
	defer ds.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 2000 {
			last, _ := ds.LastIndex()
			first, _ := ds.FirstIndex()
			ds.Term(last)
			if last >= first {
				ds.Entries(first, last+1, 1<<20)
			}
			ds.InitialState()
		}
	}()
	for i := uint64(1); i <= 200; i++ {
		mustSave(t, ds, raft.HardState{Term: 1, Commit: i}, ents(1, i, i), nil)
		if i%50 == 0 {
			if err := ds.CreateSnapshot(i-10, raft.ConfState{Voters: []uint64{1}}, bytes.NewReader(nil)); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-done
}

// TestDiskStorageTruncateThenSnapshot is the reduced form of a bug the
// crash test found (seed 19148 with CAIRN_WAL_SEEDS=20000): an entry that
// truncated the log, then a snapshot at that entry. Replay skipped the
// truncating entry because the snapshot covered it, and resurrected the
// entry it had truncated away.
func TestDiskStorageTruncateThenSnapshot(t *testing.T) {
	fsys := NewMemFS()
	ds := openDS(t, fsys, StorageOptions{})
	mustSave(t, ds, raft.HardState{Term: 3, Commit: 2}, ents(3, 1, 4), nil)
	mustSave(t, ds, raft.HardState{Term: 3, Commit: 3}, ents(3, 3, 3), nil) // drops 4
	if err := ds.CreateSnapshot(3, raft.ConfState{Voters: []uint64{1}}, bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
	if last, _ := ds.LastIndex(); last != 3 {
		t.Fatalf("live last index %d, want 3", last)
	}
	ds.Close()
	ds = openDS(t, fsys, StorageOptions{})
	if last, _ := ds.LastIndex(); last != 3 {
		t.Fatalf("after reopen last index %d, want 3", last)
	}
}
