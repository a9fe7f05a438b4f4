// Command benchcmp is the Go half of bench/compare.sh, which runs etcd's
// benchmark tool against a 3-member etcd cluster and a 3-member Cairn
// cluster. It has four subcommands:
//
//	benchcmp report -dir RESULTS   parse RESULTS/raw/*.out, write the table
//	                               (table.md, also printed), results.csv,
//	                               results.json and plot.png
//	benchcmp probe -endpoints E -since-ns T
//	                               wait until a linearizable read succeeds,
//	                               print seconds since T (restart time)
//	benchcmp fsync -dir D [-parallel N] [-prealloc] [-datasync]
//	                               measure 4 KiB append+fsync on D's disk,
//	                               from N files at once
//	benchcmp timeline [-from S] [-dur S] name=file.trace ...
//	                               merge Go execution traces of several
//	                               processes into one timeline
//	                               (bench/trace-a.sh takes them)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "report":
		err = cmdReport(os.Args[2:])
	case "probe":
		err = cmdProbe(os.Args[2:])
	case "fsync":
		err = cmdFsync(os.Args[2:])
	case "timeline":
		err = cmdTimeline(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchcmp:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: benchcmp report -dir DIR | probe -endpoints A,B -since-ns N | fsync -dir DIR [-n N] [-parallel N] [-prealloc] [-datasync] | timeline [-from S] [-dur S] name=file.trace ...")
	os.Exit(2)
}

func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	dir := fs.String("dir", "", "results directory written by compare.sh")
	_ = fs.Parse(args)
	if *dir == "" || fs.NArg() > 0 {
		usage()
	}
	rep, err := buildReport(*dir)
	if err != nil {
		return err
	}
	tf, err := os.Create(filepath.Join(*dir, "table.md"))
	if err != nil {
		return err
	}
	writeTable(tf, rep)
	if err := tf.Close(); err != nil {
		return err
	}
	writeTable(os.Stdout, rep)
	if err := writeCSV(filepath.Join(*dir, "results.csv"), rep); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(*dir, "results.json"), rep); err != nil {
		return err
	}
	return writePlot(filepath.Join(*dir, "plot.png"), rep)
}

// cmdProbe polls with linearizable reads (each needs a leader and a
// ReadIndex round) until one succeeds, and prints the seconds elapsed since
// -since-ns, the moment compare.sh started the members.
func cmdProbe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	eps := fs.String("endpoints", "", "comma-separated client endpoints")
	since := fs.Int64("since-ns", 0, "start time, Unix nanoseconds (default: now)")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after this long")
	key := fs.String("key", "benchcmp-probe", "key to read")
	_ = fs.Parse(args)
	if *eps == "" || fs.NArg() > 0 {
		usage()
	}
	start := time.Now()
	if *since != 0 {
		start = time.Unix(0, *since)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*eps, ","),
		DialTimeout: time.Second,
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(*timeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, last = cli.Get(ctx, *key)
		cancel()
		if last == nil {
			fmt.Printf("%.3f\n", time.Since(start).Seconds())
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no linearizable read succeeded within %v: %v", *timeout, last)
}

// cmdFsync measures what one durable WAL append costs on this disk: write
// 4 KiB at the end of a file, then fsync, n times.
func cmdFsync(args []string) error {
	fs := flag.NewFlagSet("fsync", flag.ExitOnError)
	dir := fs.String("dir", ".", "directory on the disk to measure")
	n := fs.Int("n", 500, "appends per file")
	parallel := fs.Int("parallel", 1, "files appended to and fsynced at once, one goroutine each (3 = a 3-member cluster on one disk)")
	prealloc := fs.Bool("prealloc", false, "append into a file zero-filled beforehand, as the WAL's preallocated segments are")
	datasync := fs.Bool("datasync", false, "sync with fdatasync, as the WAL does on Linux, instead of fsync")
	_ = fs.Parse(args)
	if *n < 1 || *parallel < 1 || fs.NArg() > 0 {
		usage()
	}
	var mu sync.Mutex
	var d []float64
	var wg sync.WaitGroup
	errs := make([]error, *parallel)
	start := make(chan struct{})
	for k := range *parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			own, err := appendFsync(*dir, *n, *prealloc, *datasync, start)
			mu.Lock()
			d = append(d, own...)
			mu.Unlock()
			errs[k] = err
		}()
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	slices.Sort(d)
	what := "4KiB append+fsync"
	if *datasync {
		what = "4KiB append+fdatasync"
	}
	if *prealloc {
		what += " (preallocated)"
	}
	if *parallel > 1 {
		what += fmt.Sprintf(", %d files at once", *parallel)
	}
	fmt.Printf("%s x%d: p50 %.0f us, p90 %.0f us, p99 %.0f us\n",
		what, *n, d[len(d)/2], d[len(d)*9/10], d[len(d)*99/100])
	return nil
}

// appendFsync appends n 4 KiB blocks to a new file in dir, each followed by
// an fsync (or fdatasync), once start is closed, and returns each one's
// microseconds.
func appendFsync(dir string, n int, prealloc, datasync bool, start <-chan struct{}) ([]float64, error) {
	sync := (*os.File).Sync
	if datasync {
		sync = fdatasync
	}
	f, err := os.CreateTemp(dir, "fsync-*.tmp")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	if prealloc {
		for range n {
			if _, err := f.Write(buf); err != nil {
				return nil, err
			}
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
	}
	<-start
	d := make([]float64, 0, n)
	for range n {
		t := time.Now()
		if _, err := f.Write(buf); err != nil {
			return nil, err
		}
		if err := sync(f); err != nil {
			return nil, err
		}
		d = append(d, float64(time.Since(t).Microseconds()))
	}
	return d, nil
}
