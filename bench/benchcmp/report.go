package main

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Systems in the order columns are printed.
var systems = []string{"etcd", "cairn"}

// Workload is one line of workloads.tsv, written by compare.sh: the id, a
// title for the table and the benchmark tool's arguments.
type Workload struct {
	ID    string `json:"id"`
	Title string `json:"title"`
	Args  string `json:"args"`
}

// Run is one parsed benchmark output.
type Run struct {
	Workload string `json:"workload"`
	System   string `json:"system"`
	Rep      int    `json:"rep"`
	Result
	ServerCPUS float64 `json:"server_cpu_s"` // CPU time of the 3 members during the run
	CPUUSPerOp float64 `json:"server_cpu_us_per_op"`
	// The benchmark tool's own CPU: on a 2-core machine what the tool
	// takes is not available to the servers, and it differs between
	// systems when their replies cost the client different work.
	ToolCPUS    float64 `json:"tool_cpu_s,omitempty"`
	ToolUSPerOp float64 `json:"tool_cpu_us_per_op,omitempty"`
	File        string  `json:"file"`
}

// MemRun is one line of mem.tsv: workload (f) for one system.
type MemRun struct {
	System        string  `json:"system"`
	Rep           int     `json:"rep"`
	Keys          int     `json:"keys"`
	RSSMiB        float64 `json:"rss_mib"`         // sum over the 3 members, after loading
	RestartS      float64 `json:"restart_s"`       // process start to first linearizable read
	RSSRestartMiB float64 `json:"rss_restart_mib"` // sum over the 3 members, after the restart
	DiskMiB       float64 `json:"disk_mib"`        // data dirs, after loading
}

// Cell is the median of one metric over the repetitions for one system.
type Cell struct {
	Median float64   `json:"median"`
	Values []float64 `json:"values"`
}

// Row is one line of the table: a workload and metric group.
type Row struct {
	ID      string                     `json:"id"`
	Title   string                     `json:"title"`
	Metrics []string                   `json:"metrics"` // e.g. qps, p50_ms, p99_ms
	Cells   map[string]map[string]Cell `json:"cells"`   // system -> metric -> cell
	Ratios  map[string]float64         `json:"ratios"`  // metric -> cairn/etcd
	Errors  map[string]int             `json:"errors"`  // system -> failed requests, all reps
	Target  string                     `json:"target"`
	Met     string                     `json:"met"` // yes, no or "-"
}

// Report is results.json.
type Report struct {
	Env       map[string]string `json:"env"`
	Workloads []Workload        `json:"workloads"`
	Rows      []Row             `json:"rows"`
	Runs      []Run             `json:"runs"`
	Mem       []MemRun          `json:"mem"`
	Load      [][]string        `json:"load"` // label, uptime before, uptime after
}

// target is a goal from issue 6 on the Cairn/etcd ratio of one metric.
type target struct {
	metric  string
	atLeast bool
	ratio   float64
}

var targets = map[string][]target{
	"a":         {{"p50_ms", false, 0.8}},
	"b":         {{"qps", true, 2.0}, {"p99_ms", false, 1.0}},
	"c":         {{"qps", true, 2.0}},
	"d":         {{"qps", true, 1.5}},
	"e":         {{"qps", true, 1.5}},
	"f-rss":     {{"rss_mib", false, 1.0}},
	"f-restart": {{"restart_s", false, 1.0}},
}

func buildReport(dir string) (*Report, error) {
	rep := &Report{Env: map[string]string{}}
	if err := readLines(filepath.Join(dir, "env.txt"), func(l string) {
		if k, v, ok := strings.Cut(l, "="); ok {
			rep.Env[k] = v
		}
	}); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	if err := readLines(filepath.Join(dir, "workloads.tsv"), func(l string) {
		f := strings.Split(l, "\t")
		if len(f) >= 3 {
			rep.Workloads = append(rep.Workloads, Workload{ID: f[0], Title: f[1], Args: f[2]})
		}
	}); err != nil {
		return nil, fmt.Errorf("benchcmp: %w", err)
	}
	_ = readLines(filepath.Join(dir, "load.tsv"), func(l string) {
		rep.Load = append(rep.Load, strings.Split(l, "\t"))
	})

	// cpu.tsv: run, servers' CPU seconds[, the tool's CPU seconds] (the
	// third column since 2026-12-01's session 8).
	cpu, tool := map[string]float64{}, map[string]float64{}
	_ = readLines(filepath.Join(dir, "cpu.tsv"), func(l string) {
		f := strings.Split(l, "\t")
		if len(f) >= 2 {
			cpu[f[0]], _ = strconv.ParseFloat(f[1], 64)
		}
		if len(f) >= 3 {
			tool[f[0]], _ = strconv.ParseFloat(f[2], 64)
		}
	})

	files, err := filepath.Glob(filepath.Join(dir, "raw", "*.out"))
	if err != nil {
		return nil, err
	}
	slices.Sort(files)
	for _, f := range files {
		// raw/<workload>.<system>.<rep>.out
		parts := strings.Split(strings.TrimSuffix(filepath.Base(f), ".out"), ".")
		if len(parts) != 3 {
			continue
		}
		n, err := strconv.Atoi(parts[2])
		if err != nil {
			continue
		}
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		res, err := Parse(fh)
		fh.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "benchcmp: %s: %v (run left out of the table)\n", f, err)
			continue
		}
		rel, _ := filepath.Rel(dir, f)
		run := Run{Workload: parts[0], System: parts[1], Rep: n, Result: res, File: rel}
		if ops := res.QPS * res.TotalS; ops > 0 {
			if c, ok := cpu[strings.Join(parts, ".")]; ok {
				run.ServerCPUS = c
				run.CPUUSPerOp = c * 1e6 / ops
			}
			if c, ok := tool[strings.Join(parts, ".")]; ok && c > 0 {
				run.ToolCPUS = c
				run.ToolUSPerOp = c * 1e6 / ops
			}
		}
		rep.Runs = append(rep.Runs, run)
	}

	if err := readLines(filepath.Join(dir, "mem.tsv"), func(l string) {
		f := strings.Split(l, "\t")
		if len(f) < 7 || f[0] == "system" {
			return
		}
		num := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
		rn, _ := strconv.Atoi(f[1])
		keys, _ := strconv.Atoi(f[2])
		rep.Mem = append(rep.Mem, MemRun{System: f[0], Rep: rn, Keys: keys, RSSMiB: num(f[3]),
			RestartS: num(f[4]), RSSRestartMiB: num(f[5]), DiskMiB: num(f[6])})
	}); err != nil && !os.IsNotExist(err) {
		return nil, err
	}

	for _, w := range rep.Workloads {
		row := Row{ID: w.ID, Title: w.Title, Metrics: []string{"qps", "p50_ms", "p99_ms", "cpu_us", "tool_us"},
			Cells: map[string]map[string]Cell{}, Errors: map[string]int{}}
		for _, s := range systems {
			vals := map[string][]float64{}
			for _, r := range rep.Runs {
				if r.Workload != w.ID || r.System != s {
					continue
				}
				vals["qps"] = append(vals["qps"], r.QPS)
				vals["p50_ms"] = append(vals["p50_ms"], r.P50MS)
				vals["p99_ms"] = append(vals["p99_ms"], r.P99MS)
				if r.CPUUSPerOp > 0 {
					vals["cpu_us"] = append(vals["cpu_us"], r.CPUUSPerOp)
				}
				if r.ToolUSPerOp > 0 {
					vals["tool_us"] = append(vals["tool_us"], r.ToolUSPerOp)
				}
				row.Errors[s] += r.Errors
			}
			row.Cells[s] = cells(vals)
		}
		finishRow(&row)
		rep.Rows = append(rep.Rows, row)
	}
	if len(rep.Mem) > 0 {
		keys := rep.Mem[0].Keys
		rss := Row{ID: "f-rss", Title: fmt.Sprintf("f. RSS MiB, 3 members, %s keys", human(keys)),
			Metrics: []string{"rss_mib", "rss_restart_mib"}, Cells: map[string]map[string]Cell{}}
		rst := Row{ID: "f-restart", Title: "f. restart to first lin. read, s",
			Metrics: []string{"restart_s"}, Cells: map[string]map[string]Cell{}}
		for _, s := range systems {
			a, b := map[string][]float64{}, map[string][]float64{}
			for _, m := range rep.Mem {
				if m.System != s {
					continue
				}
				a["rss_mib"] = append(a["rss_mib"], m.RSSMiB)
				a["rss_restart_mib"] = append(a["rss_restart_mib"], m.RSSRestartMiB)
				b["restart_s"] = append(b["restart_s"], m.RestartS)
			}
			rss.Cells[s] = cells(a)
			rst.Cells[s] = cells(b)
		}
		finishRow(&rss)
		finishRow(&rst)
		rep.Rows = append(rep.Rows, rss, rst)
	}
	return rep, nil
}

func cells(vals map[string][]float64) map[string]Cell {
	out := map[string]Cell{}
	for k, v := range vals {
		out[k] = Cell{Median: median(v), Values: v}
	}
	return out
}

// finishRow computes the Cairn/etcd ratios and checks the row's targets.
func finishRow(row *Row) {
	row.Ratios = map[string]float64{}
	for _, m := range row.Metrics {
		e, c := row.Cells["etcd"][m].Median, row.Cells["cairn"][m].Median
		if e > 0 && c > 0 {
			row.Ratios[m] = c / e
		}
	}
	ts := targets[row.ID]
	if len(ts) == 0 {
		row.Target, row.Met = "-", "-"
		return
	}
	met := "yes"
	var desc []string
	for _, t := range ts {
		op := "<="
		if t.atLeast {
			op = ">="
		}
		desc = append(desc, fmt.Sprintf("%s %s %.1fx", short(t.metric), op, t.ratio))
		r, ok := row.Ratios[t.metric]
		switch {
		case !ok:
			met = "?"
		case t.atLeast && r < t.ratio, !t.atLeast && r > t.ratio:
			if met != "?" {
				met = "no"
			}
		}
	}
	row.Target, row.Met = strings.Join(desc, ", "), met
}

func short(metric string) string {
	switch metric {
	case "qps":
		return "QPS"
	case "p50_ms":
		return "p50"
	case "p99_ms":
		return "p99"
	case "rss_mib":
		return "RSS"
	case "restart_s":
		return "restart"
	case "cpu_us":
		return "CPU"
	case "tool_us":
		return "tool CPU"
	}
	return metric
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func human(n int) string {
	switch {
	case n >= 1000000 && n%1000000 == 0:
		return fmt.Sprintf("%dM", n/1000000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

// fmtNum prints a value with about three significant digits.
func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func cellStr(c Cell) string {
	if len(c.Values) == 0 {
		return "-"
	}
	return fmtNum(c.Median)
}

func fmtRatio(r float64, ok bool) string {
	if !ok {
		return "-"
	}
	return strconv.FormatFloat(r, 'f', 2, 64) + "x"
}

// writeTable prints the one table as Markdown: per row, each metric's
// median for etcd and Cairn and the Cairn/etcd ratio.
func writeTable(w io.Writer, rep *Report) {
	header := []string{"workload", "etcd QPS", "Cairn QPS", "ratio", "etcd p50 ms", "Cairn p50 ms", "ratio",
		"etcd p99 ms", "Cairn p99 ms", "ratio", "etcd CPU us/op", "Cairn CPU us/op", "ratio",
		"etcd tool us/op", "Cairn tool us/op", "ratio", "target (Cairn/etcd)", "met"}
	var rows [][]string
	for _, r := range rep.Rows {
		line := []string{r.Title}
		for i := 0; i < 5; i++ {
			if i >= len(r.Metrics) {
				line = append(line, "", "", "")
				continue
			}
			m := r.Metrics[i]
			ratio, ok := r.Ratios[m]
			line = append(line, cellStr(r.Cells["etcd"][m]), cellStr(r.Cells["cairn"][m]), fmtRatio(ratio, ok))
		}
		line = append(line, r.Target, r.Met)
		rows = append(rows, line)
	}
	width := make([]int, len(header))
	for i, h := range header {
		width[i] = len(h)
	}
	for _, l := range rows {
		for i, c := range l {
			width[i] = max(width[i], len(c))
		}
	}
	pr := func(l []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range l {
			if i == 0 || i >= len(l)-2 {
				fmt.Fprintf(&b, " %-*s |", width[i], c)
			} else {
				fmt.Fprintf(&b, " %*s |", width[i], c)
			}
		}
		fmt.Fprintln(w, b.String())
	}
	pr(header)
	sep := make([]string, len(header))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
		if i > 0 && i < len(header)-2 {
			sep[i] = sep[i][1:] + ":"
		}
	}
	pr(sep)
	for _, l := range rows {
		pr(l)
	}
	var notes []string
	for _, r := range rep.Rows {
		for _, s := range systems {
			if n := r.Errors[s]; n > 0 {
				notes = append(notes, fmt.Sprintf("%s: %s had %d failed requests", r.ID, s, n))
			}
		}
	}
	if len(rep.Rows) > 0 && len(rep.Mem) > 0 {
		notes = append(notes, "f rows: the QPS columns hold RSS MiB after loading, or restart seconds; the p50 columns RSS MiB after the restart")
	}
	if len(rep.Rows) > 0 {
		notes = append(notes, "CPU us/op: user+system CPU of the 3 server processes during the run, divided by the requests (the benchmark tool's own CPU is not counted); tool us/op: the benchmark tool's own user+system CPU, divided by the requests")
	}
	for _, n := range notes {
		fmt.Fprintln(w, "\n"+n)
	}
}

func writeCSV(path string, rep *Report) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	_ = cw.Write([]string{"workload", "metric", "system", "median", "values", "ratio_cairn_over_etcd", "target", "met"})
	for _, r := range rep.Rows {
		for _, m := range r.Metrics {
			for _, s := range systems {
				c := r.Cells[s][m]
				var vs []string
				for _, v := range c.Values {
					vs = append(vs, strconv.FormatFloat(v, 'g', 6, 64))
				}
				ratio := ""
				if x, ok := r.Ratios[m]; ok {
					ratio = strconv.FormatFloat(x, 'f', 3, 64)
				}
				_ = cw.Write([]string{r.ID, m, s, strconv.FormatFloat(c.Median, 'g', 6, 64), strings.Join(vs, " "), ratio, r.Target, r.Met})
			}
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func writeJSON(path string, rep *Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func readLines(path string, fn func(string)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := sc.Text(); l != "" {
			fn(l)
		}
	}
	return sc.Err()
}
