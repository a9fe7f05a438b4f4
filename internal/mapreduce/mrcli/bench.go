package mrcli

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
)

// runBench generates a text corpus and measures word-count throughput of
// `run` with 1 and 2 workers against plain Go word counts on the same
// data, in the same process run.
func runBench(env Env, args []string) int {
	fs := newFlags(env, "bench")
	size := fs.String("size", "1GiB", "bytes of text to generate (suffixes KiB, MiB, GiB)")
	dir := fs.String("dir", "", "directory for the corpus and outputs (default: temporary, removed after)")
	workersList := fs.String("workers", "1,2", "comma-separated worker counts to measure")
	files := fs.Int("files", 16, "number of input files")
	seed := fs.Int64("seed", 1, "corpus generator seed")
	if code, ok := parse(fs, args, false); !ok {
		return code
	}
	n, err := parseSize(*size)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s bench: --size: %v\n", env.Prog, err)
		return 2
	}
	var counts []int
	for _, s := range strings.Split(*workersList, ",") {
		w, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || w < 1 {
			fmt.Fprintf(env.Stderr, "%s bench: bad --workers %q\n", env.Prog, *workersList)
			return 2
		}
		counts = append(counts, w)
	}
	d := *dir
	if d == "" {
		if d, err = os.MkdirTemp("", "cairn-mr-bench-"); err != nil {
			fmt.Fprintf(env.Stderr, "%s bench: %v\n", env.Prog, err)
			return 1
		}
		defer os.RemoveAll(d)
	}
	in := filepath.Join(d, "input")
	start := time.Now()
	inputs, err := GenText(in, n, *files, *seed)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s bench: generate: %v\n", env.Prog, err)
		return 1
	}
	fmt.Fprintf(env.Stdout, "corpus: %d bytes in %d files under %s (generated in %.1fs)\n", n, len(inputs), in, time.Since(start).Seconds())
	fmt.Fprintf(env.Stdout, "machine: %d CPUs (GOMAXPROCS %d), %s/%s, %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
	mb := float64(n) / 1e6
	// CPU time makes the comparison meaningful on a shared machine: wall
	// time there depends on what else runs.
	fmt.Fprintf(env.Stdout, "%-30s %8s %10s %8s %12s\n", "", "wall", "MB/s", "CPU", "MB/CPU-s")
	report := func(name string, secs float64, cpu time.Duration) {
		fmt.Fprintf(env.Stdout, "%-30s %7.2fs %10.1f %7.2fs %12.1f\n", name, secs, mb/secs, cpu.Seconds(), mb/cpu.Seconds())
	}
	// Warm the page cache, so the first measurement is not the only one
	// reading from disk.
	if _, err := PlainWordCount(inputs, runtime.NumCPU()); err != nil {
		fmt.Fprintf(env.Stderr, "%s bench: %v\n", env.Prog, err)
		return 1
	}
	var ref map[string]int64
	for _, par := range []int{1, runtime.NumCPU()} {
		t, c := time.Now(), cpuTime()
		m, err := PlainWordCount(inputs, par)
		if err != nil {
			fmt.Fprintf(env.Stderr, "%s bench: %v\n", env.Prog, err)
			return 1
		}
		report(fmt.Sprintf("plain Go, %d goroutine(s)", par), time.Since(t).Seconds(), cpuTime()-c)
		ref = m
	}
	for _, w := range counts {
		out := filepath.Join(d, fmt.Sprintf("out-%d", w))
		spec := job.Spec{App: "wordcount", Inputs: inputs, Output: out, NReduce: w, Overwrite: true}
		t, c := time.Now(), cpuTime()
		st, err := RunLocal(context.Background(), Local{Env: env, Spec: spec, Workers: w, Respawn: 2 * w, DataDir: filepath.Join(d, fmt.Sprintf("run-%d", w))})
		if err != nil {
			fmt.Fprintf(env.Stderr, "%s bench: %v\n", env.Prog, err)
			return 1
		}
		if st.Status != sched.JobSucceeded {
			fmt.Fprintf(env.Stderr, "%s bench: job %s: %s\n", env.Prog, st.Status, st.Error)
			return 1
		}
		report(fmt.Sprintf("cairn mr run, %d worker(s)", w), time.Since(t).Seconds(), cpuTime()-c)
		if err := checkCounts(out, w, ref); err != nil {
			fmt.Fprintf(env.Stderr, "%s bench: output differs from plain Go: %v\n", env.Prog, err)
			return 1
		}
	}
	return 0
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suf, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suf) {
			s, mult = strings.TrimSuffix(s, suf), m
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return int64(v * float64(mult)), nil
}

// GenText writes about size bytes of text lines into files files under
// dir. Words follow a Zipf distribution over a synthetic vocabulary of
// 100,000 words, a few of them non-ASCII.
func GenText(dir string, size int64, files int, seed int64) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewSource(seed))
	const vocab = 100000
	words := make([]string, vocab)
	syll := []string{"ka", "lo", "mi", "ne", "ru", "ta", "shi", "on", "be", "ar", "ü", "é", "st", "qu", "ix"}
	for i := range words {
		var b strings.Builder
		for k := 1 + rng.Intn(4); k > 0; k-- {
			b.WriteString(syll[rng.Intn(len(syll))])
		}
		b.WriteString(strconv.Itoa(i % 97))
		words[i] = b.String()
	}
	zipf := rand.NewZipf(rng, 1.1, 1, vocab-1)
	var names []string
	per := size / int64(files)
	for f := 0; f < files; f++ {
		name := filepath.Join(dir, fmt.Sprintf("text-%03d.txt", f))
		fh, err := os.Create(name)
		if err != nil {
			return nil, err
		}
		w := bufio.NewWriterSize(fh, 1<<20)
		target := per
		if f == files-1 {
			target = size - per*int64(files-1)
		}
		var written int64
		line := make([]byte, 0, 256)
		for written < target {
			line = line[:0]
			for nw := 4 + rng.Intn(14); nw > 0; nw-- {
				line = append(line, words[zipf.Uint64()]...)
				line = append(line, " ,. "[rng.Intn(4)])
			}
			line[len(line)-1] = '\n'
			if rem := target - written; int64(len(line)) > rem {
				line = line[:rem]
				if rem > 0 {
					line[rem-1] = '\n'
				}
			}
			w.Write(line)
			written += int64(len(line))
		}
		if err := w.Flush(); err != nil {
			fh.Close()
			return nil, err
		}
		if err := fh.Close(); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

// PlainWordCount is the baseline: the best single-process Go word count we
// know, with par goroutines each counting whole-line chunks of the input
// in their own map (reading 4 MiB blocks, tokenizing bytes in place, no
// allocation per word), merged at the end. Words are the same as the
// wordcount app's (runs of Unicode letters and digits).
func PlainWordCount(files []string, par int) (map[string]int64, error) {
	splits, err := job.PlanSplits(files, 32<<20, false)
	if err != nil {
		return nil, err
	}
	work := make(chan job.Split)
	results := make([]map[string]int64, par)
	errs := make([]error, par)
	var wg sync.WaitGroup
	for g := 0; g < par; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := map[string]*int64{}
			buf := make([]byte, 4<<20)
			for sp := range work {
				if err := countSplit(sp, buf, m); err != nil && errs[g] == nil {
					errs[g] = err
				}
			}
			res := make(map[string]int64, len(m))
			for k, v := range m {
				res[k] = *v
			}
			results[g] = res
		}()
	}
	for _, sp := range splits {
		work <- sp
	}
	close(work)
	wg.Wait()
	total := results[0]
	for g, m := range results {
		if errs[g] != nil {
			return nil, errs[g]
		}
		if g > 0 {
			for k, v := range m {
				total[k] += v
			}
		}
	}
	return total, nil
}

func countSplit(sp job.Split, buf []byte, m map[string]*int64) error {
	f, err := os.Open(sp.File)
	if err != nil {
		return err
	}
	defer f.Close()
	r := io.NewSectionReader(f, sp.Start, sp.End-sp.Start)
	carry := 0
	for {
		n, err := io.ReadFull(r, buf[carry:])
		data := buf[:carry+n]
		end := len(data)
		if err == nil {
			// Keep the last, possibly incomplete, line for the next block.
			if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
				end = i + 1
			}
		}
		countBytes(data[:end], m)
		carry = copy(buf, data[end:])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if carry > 0 {
				countBytes(buf[:carry], m)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if carry == len(buf) {
			return fmt.Errorf("line longer than %d bytes", len(buf))
		}
	}
}

func countBytes(b []byte, m map[string]*int64) {
	start := -1
	for i := 0; i < len(b); {
		c := b[i]
		size := 1
		var isWord bool
		if c < utf8.RuneSelf {
			isWord = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		} else {
			var r rune
			r, size = utf8.DecodeRune(b[i:])
			isWord = unicode.IsLetter(r) || unicode.IsDigit(r)
		}
		if isWord {
			if start < 0 {
				start = i
			}
		} else if start >= 0 {
			add(m, b[start:i])
			start = -1
		}
		i += size
	}
	if start >= 0 {
		add(m, b[start:])
	}
}

// add counts a word with one map lookup in the common case (the
// string(w) conversion in a lookup does not allocate).
func add(m map[string]*int64, w []byte) {
	if p := m[string(w)]; p != nil {
		*p++
		return
	}
	n := int64(1)
	m[string(w)] = &n
}

// checkCounts compares a wordcount output with the reference counts.
func checkCounts(dir string, r int, ref map[string]int64) error {
	seen := 0
	for p := 0; p < r; p++ {
		f, err := os.Open(filepath.Join(dir, job.OutputName(p)))
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			w, c, _ := strings.Cut(sc.Text(), "\t")
			n, _ := strconv.ParseInt(c, 10, 64)
			if ref[w] != n {
				f.Close()
				return fmt.Errorf("word %q: %d, want %d", w, n, ref[w])
			}
			seen++
		}
		f.Close()
	}
	if seen != len(ref) {
		return fmt.Errorf("%d words, want %d", seen, len(ref))
	}
	return nil
}
