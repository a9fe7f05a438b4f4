package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrNoSummary is returned when a benchmark output has no "Requests/sec"
// line: the tool failed before it finished (see the raw file's stderr).
var ErrNoSummary = errors.New("benchcmp: no Requests/sec line in benchmark output")

// Result is what one run of etcd's benchmark tool reported.
type Result struct {
	QPS     float64 // Requests/sec from the Summary
	TotalS  float64 // wall time of the run, seconds
	AvgMS   float64
	P50MS   float64 // from "Latency distribution" (50% in ...)
	P99MS   float64
	P999MS  float64
	Errors  int // sum of the "Error distribution" counts
	Samples int // number of latency percentile lines seen
}

// Parse reads the text etcd's benchmark tool (tools/benchmark, pkg/report)
// prints: a Summary block, a histogram, a "Latency distribution" block of
// "  50% in 0.0012 secs." lines and, if any request failed, an "Error
// distribution" block of "  [count]\terror" lines. The progress bar's
// carriage-return updates are ignored.
func Parse(r io.Reader) (Result, error) {
	var res Result
	seenRPS := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<22)
	section := ""
	for sc.Scan() {
		line := sc.Text()
		// The progress bar rewrites its line with \r; keep the last part.
		if i := strings.LastIndexByte(line, '\r'); i >= 0 {
			line = line[i+1:]
		}
		t := strings.TrimSpace(line)
		switch {
		case t == "Summary:":
			section = "summary"
			continue
		case strings.HasPrefix(t, "Response time histogram"):
			section = "histogram"
			continue
		case strings.HasPrefix(t, "Latency distribution"):
			section = "latency"
			continue
		case strings.HasPrefix(t, "Error distribution"):
			section = "errors"
			continue
		}
		switch section {
		case "summary":
			k, v, ok := strings.Cut(t, ":")
			if !ok {
				continue
			}
			f, err := leadingFloat(v)
			if err != nil {
				continue
			}
			switch k {
			case "Requests/sec":
				res.QPS, seenRPS = f, true
			case "Total":
				res.TotalS = f
			case "Average":
				res.AvgMS = f * 1000
			}
		case "latency":
			// "50% in 0.001234 secs."
			p, rest, ok := strings.Cut(t, "% in ")
			if !ok {
				continue
			}
			f, err := leadingFloat(rest)
			if err != nil {
				continue
			}
			res.Samples++
			switch p {
			case "50":
				res.P50MS = f * 1000
			case "99":
				res.P99MS = f * 1000
			case "99.9":
				res.P999MS = f * 1000
			}
		case "errors":
			// "[12]\tsome error"
			if rest, ok := strings.CutPrefix(t, "["); ok {
				num, _, _ := strings.Cut(rest, "]")
				if n, err := strconv.Atoi(num); err == nil {
					res.Errors += n
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return res, err
	}
	if !seenRPS {
		return res, ErrNoSummary
	}
	if res.Samples == 0 {
		return res, fmt.Errorf("benchcmp: no latency distribution (did every request fail? errors=%d)", res.Errors)
	}
	return res, nil
}

// leadingFloat parses the first whitespace-separated field of s, without a
// trailing period ("0.0012 secs." -> 0.0012).
func leadingFloat(s string) (float64, error) {
	fs := strings.Fields(s)
	if len(fs) == 0 {
		return 0, errors.New("empty")
	}
	return strconv.ParseFloat(strings.TrimSuffix(fs[0], "."), 64)
}
