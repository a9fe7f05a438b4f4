package wal

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"testing"
)

func writeFile(t *testing.T, m *MemFS, name string, data string, sync bool) File {
	t.Helper()
	f, err := m.OpenAppend(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func content(t *testing.T, m *MemFS, name string) string {
	t.Helper()
	b, err := m.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return "<missing>"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMemFSCrash(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, m *MemFS)
		file string
		want string
	}{
		{"synced data in a synced dir survives", func(t *testing.T, m *MemFS) {
			writeFile(t, m, "/d/f", "abc", true)
			m.SyncDir("/d")
		}, "/d/f", "abc"},
		{"unsynced data is lost", func(t *testing.T, m *MemFS) {
			f := writeFile(t, m, "/d/f", "abc", true)
			m.SyncDir("/d")
			f.Write([]byte("def"))
		}, "/d/f", "abc"},
		{"a created file needs a dir sync", func(t *testing.T, m *MemFS) {
			writeFile(t, m, "/d/f", "abc", true)
		}, "/d/f", "<missing>"},
		{"rename is not durable until dir sync", func(t *testing.T, m *MemFS) {
			writeFile(t, m, "/d/tmp", "new", true)
			writeFile(t, m, "/d/f", "old", true)
			m.SyncDir("/d")
			if err := m.Rename("/d/tmp", "/d/f"); err != nil {
				t.Fatal(err)
			}
			if got := content(t, m, "/d/f"); got != "new" {
				t.Fatalf("before crash: %q", got)
			}
		}, "/d/f", "old"},
		{"rename is durable after dir sync", func(t *testing.T, m *MemFS) {
			writeFile(t, m, "/d/tmp", "new", true)
			m.Rename("/d/tmp", "/d/f")
			m.SyncDir("/d")
		}, "/d/f", "new"},
		{"remove is not durable until dir sync", func(t *testing.T, m *MemFS) {
			writeFile(t, m, "/d/f", "abc", true)
			m.SyncDir("/d")
			m.Remove("/d/f")
		}, "/d/f", "abc"},
		{"remove is durable after dir sync", func(t *testing.T, m *MemFS) {
			writeFile(t, m, "/d/f", "abc", true)
			m.SyncDir("/d")
			m.Remove("/d/f")
			m.SyncDir("/d")
		}, "/d/f", "<missing>"},
		{"data synced after the dir sync survives", func(t *testing.T, m *MemFS) {
			f := writeFile(t, m, "/d/f", "", false)
			m.SyncDir("/d")
			f.Write([]byte("late"))
			f.Sync()
		}, "/d/f", "late"},
		{"syncing another dir does not help", func(t *testing.T, m *MemFS) {
			m.MkdirAll("/e")
			writeFile(t, m, "/d/f", "abc", true)
			m.SyncDir("/e")
		}, "/d/f", "<missing>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMemFS()
			m.MkdirAll("/d")
			tc.run(t, m)
			m.Crash()
			if got := content(t, m, tc.file); got != tc.want {
				t.Fatalf("after crash %s = %q, want %q", tc.file, got, tc.want)
			}
		})
	}
}

func TestMemFSTornWrite(t *testing.T) {
	run := func(seed uint64) string {
		m := NewMemFS()
		f := writeFile(t, m, "/f", "synced|", true)
		m.SyncDir("/")
		f.Write([]byte("0123456789"))
		m.CrashWith(rand.New(rand.NewPCG(seed, 0)))
		return content(t, m, "/f")
	}
	seen := map[int]bool{}
	for seed := uint64(0); seed < 100; seed++ {
		got := run(seed)
		if got2 := run(seed); got2 != got {
			t.Fatalf("seed %d: not deterministic: %q then %q", seed, got, got2)
		}
		if len(got) < 7 || got != "synced|0123456789"[:len(got)] {
			t.Fatalf("seed %d: %q is not the synced part plus a prefix of the rest", seed, got)
		}
		seen[len(got)] = true
	}
	if len(seen) < 5 {
		t.Fatalf("torn writes kept only lengths %v", seen)
	}
}

func TestMemFSStaleHandle(t *testing.T) {
	m := NewMemFS()
	f := writeFile(t, m, "/f", "x", true)
	m.Crash()
	if _, err := f.Write([]byte("y")); !errors.Is(err, ErrStaleFile) {
		t.Fatalf("write through a pre-crash handle: %v", err)
	}
}

func TestMemFSBasics(t *testing.T) {
	m := NewMemFS()
	if _, err := m.Create("/nodir/f"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("create in missing dir: %v", err)
	}
	m.MkdirAll("/a/b")
	writeFile(t, m, "/a/b/2", "hello", false)
	writeFile(t, m, "/a/b/1", "", false)
	writeFile(t, m, "/a/x", "", false)
	names, _ := m.List("/a/b")
	if len(names) != 2 || names[0] != "1" || names[1] != "2" {
		t.Fatalf("List = %v", names)
	}
	r, _ := m.Open("/a/b/2")
	// Truncating and appending must not change what an open reader sees.
	m.Truncate("/a/b/2", 2)
	writeFile(t, m, "/a/b/2", "XYZ", false)
	got, _ := io.ReadAll(r)
	if !bytes.Equal(got, []byte("hello")) {
		t.Fatalf("reader saw %q", got)
	}
	if c := content(t, m, "/a/b/2"); c != "heXYZ" {
		t.Fatalf("content %q", c)
	}
	if n, _ := m.Size("/a/b/2"); n != 5 {
		t.Fatalf("size %d", n)
	}
	c := m.Clone()
	writeFile(t, c, "/a/b/2", "!", false)
	if content(t, m, "/a/b/2") != "heXYZ" {
		t.Fatal("clone shares data with the original")
	}
}
