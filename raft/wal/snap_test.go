package wal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

const snapTestDir = "/data/snap"

// rngReader streams n pseudo-random bytes without holding them.
type rngReader struct {
	rng *rand.Rand
	n   int64
}

func (r *rngReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.n {
		p = p[:r.n]
	}
	for i := range p {
		p[i] = byte(r.rng.Uint32())
	}
	r.n -= int64(len(p))
	return len(p), nil
}

func newSnapshotter(t testing.TB, fsys FS) *Snapshotter {
	t.Helper()
	s, err := NewSnapshotter(fsys, snapTestDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testMeta(index uint64) raft.SnapshotMeta {
	return raft.SnapshotMeta{Index: index, Term: index/10 + 1, ConfState: raft.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}}
}

func saveSnap(t testing.TB, s *Snapshotter, index uint64, data []byte) {
	t.Helper()
	if err := s.Save(testMeta(index), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	for _, size := range []int64{0, 1, 4096, 3<<20 + 17} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			fsys := NewMemFS()
			s := newSnapshotter(t, fsys)
			meta := testMeta(42)
			if err := s.Save(meta, &rngReader{rand.New(rand.NewPCG(uint64(size), 1)), size}); err != nil {
				t.Fatal(err)
			}
			// Durable once Save returns.
			fsys.Crash()
			got, rc, n, err := s.Open(42)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if n != size || got.Index != 42 || got.Term != meta.Term || !got.ConfState.Equal(meta.ConfState) {
				t.Fatalf("Open = %+v, %d bytes", got, n)
			}
			data, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := io.ReadAll(&rngReader{rand.New(rand.NewPCG(uint64(size), 1)), size})
			if !bytes.Equal(data, want) {
				t.Fatal("data differs")
			}
			snap, err := s.Load(42)
			if err != nil || !bytes.Equal(snap.Data, want) || snap.Meta.Index != 42 {
				t.Fatalf("Load: %v", err)
			}
		})
	}
}

func TestSnapshotMissing(t *testing.T) {
	s := newSnapshotter(t, NewMemFS())
	if _, _, _, err := s.Open(7); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("Open missing: %v", err)
	}
	if _, err := s.Latest(); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("Latest of none: %v", err)
	}
}

func TestSnapshotCorruption(t *testing.T) {
	data := bytes.Repeat([]byte("snapshot-data-"), 100)
	metaLen := len(raft.AppendSnapshotMeta(nil, testMeta(10)))
	dataOff := snapHeaderSize + metaLen
	total := dataOff + len(data) + snapFooterSize
	for _, tc := range []struct {
		name     string
		off      int  // byte to flip; -1 truncates instead
		truncate int  // new length if off == -1
		atOpen   bool // detected by Open rather than at EOF
	}{
		{"magic", 0, 0, true},
		{"meta length", 9, 0, true},
		{"meta crc", 13, 0, true},
		{"meta", snapHeaderSize + 1, 0, true},
		{"first data byte", dataOff, 0, false},
		{"last data byte", dataOff + len(data) - 1, 0, false},
		{"footer length", total - 10, 0, false},
		{"footer crc", total - 2, 0, false},
		{"truncated in data", -1, dataOff + 50, false},
		{"truncated in header", -1, 10, true},
		{"footer lost", -1, total - snapFooterSize, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := NewMemFS()
			s := newSnapshotter(t, fsys)
			saveSnap(t, s, 10, data)
			p := s.path(10)
			if tc.off >= 0 {
				flipByte(t, fsys, p, tc.off)
			} else {
				fsys.Truncate(p, int64(tc.truncate))
			}
			_, rc, _, err := s.Open(10)
			if tc.atOpen {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open: %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer rc.Close()
			if _, err := io.ReadAll(rc); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("reading to EOF: %v, want ErrCorrupt", err)
			}
			if _, err := s.Load(10); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load: %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestSnapshotLatestFallsBack(t *testing.T) {
	fsys := NewMemFS()
	s := newSnapshotter(t, fsys)
	for _, i := range []uint64{10, 20, 30} {
		saveSnap(t, s, i, []byte(fmt.Sprint("state at ", i)))
	}
	check := func(want uint64) {
		t.Helper()
		m, err := s.Latest()
		if want == 0 {
			if !errors.Is(err, ErrNoSnapshot) {
				t.Fatalf("Latest: %+v, %v, want ErrNoSnapshot", m, err)
			}
			return
		}
		if err != nil || m.Index != want {
			t.Fatalf("Latest = %d, %v; want %d", m.Index, err, want)
		}
	}
	check(30)
	flipByte(t, fsys, s.path(30), snapHeaderSize+len(raft.AppendSnapshotMeta(nil, testMeta(30)))+2)
	check(20)
	fsys.Truncate(s.path(20), 3)
	check(10)
	flipByte(t, fsys, s.path(10), 0)
	check(0)
}

func TestSnapshotPrune(t *testing.T) {
	fsys := NewMemFS()
	s := newSnapshotter(t, fsys)
	for i := uint64(1); i <= 5; i++ {
		saveSnap(t, s, i*10, nil)
	}
	if err := s.Prune(2); err != nil {
		t.Fatal(err)
	}
	idx, _ := s.List()
	if fmt.Sprint(idx) != "[40 50]" {
		t.Fatalf("after Prune(2): %v", idx)
	}
}

// TestSnapshotSaveCrash checks atomicity: a crash before Save returns
// leaves no snapshot (not a partial one), and the temporary file is
// cleaned up when the Snapshotter is reopened.
func TestSnapshotSaveCrash(t *testing.T) {
	fsys := NewMemFS()
	s := newSnapshotter(t, fsys)
	saveSnap(t, s, 10, []byte("old"))
	// Simulate a crash after the rename but before the directory sync by
	// failing SyncDir.
	bad := &faultFS{FS: fsys}
	s2 := newSnapshotter(t, bad)
	bad.failSyncDir = true
	if err := s2.Save(testMeta(20), bytes.NewReader([]byte("new"))); err == nil {
		t.Fatal("Save succeeded although SyncDir failed")
	}
	fsys.CrashWith(rand.New(rand.NewPCG(1, 1)))
	s = newSnapshotter(t, fsys)
	if m, err := s.Latest(); err != nil || m.Index != 10 {
		t.Fatalf("Latest after crash = %d, %v", m.Index, err)
	}
	// And a leftover temporary file is removed on open.
	f, _ := fsys.Create(s.path(30) + ".tmp")
	f.Close()
	newSnapshotter(t, fsys)
	if names, _ := fsys.List(snapTestDir); len(names) != 1 {
		t.Fatalf("files after reopen: %v", names)
	}
}

// faultFS injects failures into an FS.
type faultFS struct {
	FS
	failSyncDir bool
	failSync    bool
}

func (f *faultFS) SyncDir(dir string) error {
	if f.failSyncDir {
		return errors.New("injected SyncDir failure")
	}
	return f.FS.SyncDir(dir)
}

func (f *faultFS) Create(name string) (File, error) {
	file, err := f.FS.Create(name)
	return &faultFile{file, f}, err
}

func (f *faultFS) OpenAppend(name string) (File, error) {
	file, err := f.FS.OpenAppend(name)
	return &faultFile{file, f}, err
}

type faultFile struct {
	File
	fs *faultFS
}

func (f *faultFile) Sync() error {
	if f.fs.failSync {
		return errors.New("injected fsync failure")
	}
	return f.File.Sync()
}

// TestSnapshotConcurrentSameIndex: a member's own snapshot and the
// leader's can be saved for the same index at the same time (a chaos run
// stopped a member when both used one temporary file). Both saves must
// succeed and leave one intact snapshot holding one of the two images.
func TestSnapshotConcurrentSameIndex(t *testing.T) {
	for _, fsys := range []FS{NewMemFS(), OSFS{}} {
		dir := snapTestDir
		if _, ok := fsys.(OSFS); ok {
			dir = t.TempDir()
		}
		s, err := NewSnapshotter(fsys, dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		a, b := bytes.Repeat([]byte("a"), 1<<20), bytes.Repeat([]byte("b"), 1<<20)
		for range 20 {
			errs := make(chan error, 2)
			for _, data := range [][]byte{a, b} {
				go func() { errs <- s.Save(testMeta(7), bytes.NewReader(data)) }()
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatalf("concurrent save: %v", err)
				}
			}
			snap, err := s.Load(7)
			if err != nil || !(bytes.Equal(snap.Data, a) || bytes.Equal(snap.Data, b)) {
				t.Fatalf("after concurrent saves: %v", err)
			}
		}
		names, _ := fsys.List(dir)
		for _, n := range names {
			if strings.HasSuffix(n, ".tmp") {
				t.Fatalf("temporary file %s left behind", n)
			}
		}
	}
}
