package mapreduce

import (
	"bytes"
	"iter"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// lineLength is a user job written against the public API: how many lines
// have each length in runes. It uses a combiner and a user counter.
func lineLength() *App {
	sum := func(key string, values iter.Seq[string], out Output) error {
		n := 0
		for v := range values {
			x, err := strconv.Atoi(v)
			if err != nil {
				return err
			}
			n += x
		}
		out.Emit(key, strconv.Itoa(n))
		return nil
	}
	return &App{
		Name:  "linelen",
		Usage: "count lines by length in runes",
		Flags: []Flag{{Name: "min", Default: "0", Usage: "ignore shorter lines"}},
		New: func(args Args) (*Funcs, error) {
			min, err := strconv.Atoi(args["min"])
			if err != nil {
				return nil, err
			}
			return &Funcs{
				Map: func(rec Record, out Output) error {
					if n := utf8.RuneCountInString(rec.Text); n >= min {
						out.Emit(strconv.Itoa(n), "1")
					} else {
						out.Count("short", 1)
					}
					return nil
				},
				Combine: sum,
				Reduce:  sum,
			}, nil
		},
	}
}

const helper = "CAIRN_MAPREDUCE_TEST_HELPER"

// TestMain makes the test binary a user's job binary when re-executed as
// a worker process by `run`.
func TestMain(m *testing.M) {
	MustRegister(lineLength())
	if os.Getenv(helper) == "1" {
		os.Exit(Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// A user's own main, linking this package, runs its job with worker
// processes of itself; the built-in apps are there too.
func TestUserJobWithWorkerProcesses(t *testing.T) {
	t.Setenv(helper, "1") // inherited by the worker processes
	dir := t.TempDir()
	var lines []string
	for i := 0; i < 300; i++ {
		lines = append(lines, strings.Repeat("é", i%17))
	}
	for f := 0; f < 3; f++ {
		if err := os.WriteFile(filepath.Join(dir, "in"+strconv.Itoa(f)+".txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]int{}
	for _, l := range lines {
		if n := utf8.RuneCountInString(l); n >= 2 {
			want[strconv.Itoa(n)] += 3
		}
	}
	out := filepath.Join(dir, "out")
	var stdout, stderr bytes.Buffer
	code := MainWith(&defaultRegistry, []string{"run", "--app", "linelen", "--min", "2", "--input", filepath.Join(dir, "*.txt"),
		"--output", out, "--workers", "2", "--reduce", "2", "--split-size", "1000"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "user.short") {
		t.Errorf("user counter missing from summary:\n%s", stdout.String())
	}
	var got []string
	for p := 0; p < 2; p++ {
		data, err := os.ReadFile(filepath.Join(out, "part-0000"+strconv.Itoa(p)))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, strings.Fields(string(data))...)
	}
	var wantF []string
	for k, v := range want {
		wantF = append(wantF, k, strconv.Itoa(v))
	}
	pairs := func(f []string) []string {
		var p []string
		for i := 0; i+1 < len(f); i += 2 {
			p = append(p, f[i]+"="+f[i+1])
		}
		sort.Strings(p)
		return p
	}
	if strings.Join(pairs(got), " ") != strings.Join(pairs(wantF), " ") {
		t.Fatalf("got %v, want %v", pairs(got), pairs(wantF))
	}
	stdout.Reset()
	if code := MainWith(&defaultRegistry, []string{"apps"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "linelen") || !strings.Contains(stdout.String(), "wordcount") {
		t.Errorf("apps: %d %s", code, stdout.String())
	}
}
