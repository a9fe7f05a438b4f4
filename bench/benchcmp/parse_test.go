package main

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sample has the shape of etcd's benchmark tool output with --precise,
// progress bar and error block included.
const sample = "  10 / 20 [---->____] 50.00% ? p/s\r  20 / 20 [--------] 100.00% 900 p/s\n" +
	"\nSummary:\n  Total:\t2.5 secs.\n  Slowest:\t0.02 secs.\n  Fastest:\t0.0004 secs.\n" +
	"  Average:\t0.0011 secs.\n  Stddev:\t0.0003 secs.\n  Requests/sec:\t812.25\n\n" +
	"Response time histogram:\n  0.0004 [1]\t|\n  0.002 [19]\t|∎∎∎∎\n\n" +
	"Latency distribution:\n  10% in 0.0008 secs.\n  50% in 0.00105 secs.\n  90% in 0.0015 secs.\n" +
	"  99% in 0.0042 secs.\n  99.9% in 0.019 secs.\n\n" +
	"Error distribution:\n  [3]\tcontext deadline exceeded\n  [2]\tetcdserver: too many requests\n"

func TestParse(t *testing.T) {
	r, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	near("QPS", r.QPS, 812.25)
	near("TotalS", r.TotalS, 2.5)
	near("AvgMS", r.AvgMS, 1.1)
	near("P50MS", r.P50MS, 1.05)
	near("P99MS", r.P99MS, 4.2)
	near("P999MS", r.P999MS, 19)
	if r.Errors != 5 || r.Samples != 5 {
		t.Errorf("Errors, Samples = %d, %d; want 5, 5", r.Errors, r.Samples)
	}
}

func TestParseFailedRun(t *testing.T) {
	_, err := Parse(strings.NewReader("  3 / 20 [-->___] 15.00% ? p/s\nError: connection refused\n"))
	if !errors.Is(err, ErrNoSummary) {
		t.Fatalf("err = %v, want ErrNoSummary", err)
	}
}

func TestMedianAndTargets(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
	row := Row{ID: "b", Metrics: []string{"qps", "p99_ms"}, Cells: map[string]map[string]Cell{
		"etcd":  {"qps": {Median: 1000, Values: []float64{1000}}, "p99_ms": {Median: 20, Values: []float64{20}}},
		"cairn": {"qps": {Median: 2500, Values: []float64{2500}}, "p99_ms": {Median: 21, Values: []float64{21}}},
	}}
	finishRow(&row)
	if row.Met != "no" { // throughput met, p99 not
		t.Errorf("Met = %q, want no (ratios %v)", row.Met, row.Ratios)
	}
}

// TestReportCPU reads cpu.tsv in both shapes: servers' CPU only (results
// written before the tool's CPU was recorded) and servers' plus tool's.
func TestReportCPU(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("workloads.tsv", "b\tb. put\t--clients 100\n")
	write("raw/b.etcd.1.out", sample) // 812.25/s for 2.5 s: 2030.625 requests
	write("raw/b.cairn.1.out", sample)
	write("cpu.tsv", "b.etcd.1\t0.40610\nb.cairn.1\t0.20306\t0.10153\n")
	rep, err := buildReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	row := rep.Rows[0]
	near := func(got, want float64) bool { return math.Abs(got-want) < 0.5 }
	if got := row.Cells["etcd"]["cpu_us"].Median; !near(got, 200) {
		t.Errorf("etcd server CPU/op = %v, want 200", got)
	}
	if got := row.Cells["cairn"]["cpu_us"].Median; !near(got, 100) {
		t.Errorf("cairn server CPU/op = %v, want 100", got)
	}
	if got := row.Cells["cairn"]["tool_us"].Median; !near(got, 50) {
		t.Errorf("cairn tool CPU/op = %v, want 50", got)
	}
	if c := row.Cells["etcd"]["tool_us"]; len(c.Values) != 0 {
		t.Errorf("etcd tool CPU/op = %v, want none (two-column line)", c.Values)
	}
	var b strings.Builder
	writeTable(&b, rep)
	if !strings.Contains(b.String(), "Cairn tool us/op") {
		t.Errorf("table has no tool CPU column:\n%s", b.String())
	}
}
