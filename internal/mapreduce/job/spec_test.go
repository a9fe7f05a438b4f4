package job

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Splits cover every byte exactly once, end at line boundaries, and
// reading them yields exactly the file's lines with the right numbers,
// for any split size, including lines longer than a split and than the
// reader's buffer.
func TestSplitsCoverLinesExactlyOnce(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(1))
	var lines []string
	for i := 0; i < 400; i++ {
		n := rng.Intn(60)
		if i == 200 {
			n = 3 << 20 // longer than the 1 MiB read buffer
		}
		lines = append(lines, strings.Repeat(string(rune('a'+i%26)), n))
	}
	files := map[string]string{
		"a.txt":      strings.Join(lines, "\n") + "\n",
		"b.txt":      "no final newline\nsecond",
		"c.txt":      "",
		"d.txt":      "\n\n\n",
		"e.txt":      "ünïcödé\n日本語\n",
		"single.txt": "x",
	}
	var names []string
	for n, c := range files {
		p := filepath.Join(dir, n)
		os.WriteFile(p, []byte(c), 0o644)
		names = append(names, p)
	}
	got, err := ExpandInputs([]string{filepath.Join(dir, "*.txt")})
	if err != nil || len(got) != len(files) {
		t.Fatalf("expand: %v %v", got, err)
	}
	for _, size := range []int64{1, 7, 100, 4096, 1 << 20, DefaultSplitSize} {
		splits, err := PlanSplits(got, size, true)
		if err != nil {
			t.Fatal(err)
		}
		perFile := map[string][]string{}
		nums := map[string][]int64{}
		var prevEnd int64
		var prevFile string
		for _, s := range splits {
			if s.File != prevFile {
				prevFile, prevEnd = s.File, 0
			}
			if s.Start != prevEnd || s.End <= s.Start {
				t.Fatalf("size %d: split %+v does not continue at %d", size, s, prevEnd)
			}
			prevEnd = s.End
			if _, err := ReadSplit(s, true, func(r Record) error {
				perFile[r.File] = append(perFile[r.File], r.Text)
				nums[r.File] = append(nums[r.File], r.Line)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range got {
			c := files[filepath.Base(p)]
			var want []string
			if c != "" {
				want = strings.Split(strings.TrimSuffix(c, "\n"), "\n")
			}
			if fmt.Sprint(len(perFile[p])) != fmt.Sprint(len(want)) || strings.Join(perFile[p], "\n") != strings.Join(want, "\n") {
				t.Fatalf("size %d, %s: read %d lines, want %d", size, filepath.Base(p), len(perFile[p]), len(want))
			}
			for i, n := range nums[p] {
				if n != int64(i+1) {
					t.Fatalf("size %d, %s: line %d numbered %d", size, filepath.Base(p), i+1, n)
				}
			}
		}
	}
}

func TestExpandInputsErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ExpandInputs([]string{filepath.Join(dir, "*.nope")}); !errors.Is(err, ErrNoInput) {
		t.Errorf("glob without match: %v", err)
	}
	if _, err := ExpandInputs([]string{filepath.Join(dir, "missing.txt")}); !errors.Is(err, ErrNoInput) {
		t.Errorf("missing file: %v", err)
	}
	p := filepath.Join(dir, "secret.txt")
	os.WriteFile(p, []byte("x\n"), 0o000)
	if os.Getuid() != 0 { // root reads anything
		if _, err := ExpandInputs([]string{p}); err == nil || !strings.Contains(err.Error(), "unreadable") {
			t.Errorf("unreadable file: %v", err)
		}
	}
	// A directory stands for its files.
	os.WriteFile(filepath.Join(dir, "a"), []byte("a\n"), 0o644)
	got, err := ExpandInputs([]string{dir})
	if err != nil || len(got) != 2 {
		t.Errorf("directory: %v %v", got, err)
	}
}

func TestRegistry(t *testing.T) {
	var r Registry
	app := &App{Name: "x", New: func(Args) (*Funcs, error) { return &Funcs{}, nil }}
	if err := r.Register(app); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(app); err == nil {
		t.Error("duplicate registered")
	}
	if _, err := r.Lookup("y"); !errors.Is(err, ErrUnknownApp) || !strings.Contains(err.Error(), "known: x") {
		t.Errorf("lookup: %v", err)
	}
}
