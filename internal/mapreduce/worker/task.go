package worker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/kv"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
)

// TempDirName is where reducers write inside the output directory before
// renaming; it matches coord.TempDirName.
const TempDirName = "_temporary"

type task struct {
	w        *Worker
	ctx      context.Context // the attempt's
	wctx     context.Context // the worker's
	a        sched.Assignment
	counters job.Counters
}

func (t *task) run() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	app, err := t.w.cfg.Registry.Lookup(t.a.App)
	if err != nil {
		return err
	}
	funcs, err := app.New(t.a.Args)
	if err != nil {
		return err
	}
	if funcs.Cleanup != nil {
		defer funcs.Cleanup()
	}
	if funcs.Map == nil || funcs.Reduce == nil {
		return fmt.Errorf("app %s: New returned no Map or Reduce", app.Name)
	}
	if t.a.Kind == sched.KindMap {
		return t.runMap(app, funcs)
	}
	return t.runReduce(funcs)
}

func (t *task) checkCancel() error {
	if t.ctx.Err() != nil {
		return errCancelled
	}
	return nil
}

// mapOutput routes map output to the sorter by partition.
type mapOutput struct {
	t         *task
	sorter    *kv.Sorter
	partition job.PartitionFunc
	nReduce   int
	err       error
}

func (o *mapOutput) Emit(k, v string) {
	if o.err != nil {
		return
	}
	p := o.partition(k, o.nReduce)
	if p < 0 || p >= o.nReduce {
		o.err = fmt.Errorf("partitioner returned %d for key %q, want [0, %d)", p, k, o.nReduce)
		return
	}
	o.t.counters[job.MapOutputRecords]++
	o.t.counters[job.MapOutputBytes] += int64(len(k) + len(v))
	o.err = o.sorter.Add(p, k, v)
}

func (o *mapOutput) Count(name string, d int64) { o.t.counters[job.UserPrefix+name] += d }

func (t *task) runMap(app *job.App, f *job.Funcs) error {
	if err := t.fault(PointMapStart); err != nil {
		return err
	}
	sp := t.a.Split
	if sp == nil {
		return errors.New("map assignment without split")
	}
	final := t.w.mapDir(t.a.Job, t.a.Task, t.a.Attempt)
	tmp := final + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	part := f.Partition
	if part == nil {
		part = job.HashPartition
	}
	sorter := &kv.Sorter{Dir: tmp, NPart: t.a.NReduce, Combine: f.Combine, Memory: t.w.cfg.SortMemory, Counters: t.counters}
	out := &mapOutput{t: t, sorter: sorter, partition: part, nReduce: t.a.NReduce}
	half := sp.Start + (sp.End-sp.Start)/2
	midDone := false
	var n int
	read, err := job.ReadSplit(*sp, app.LineNumbers, func(rec job.Record) error {
		n++
		if n&1023 == 0 {
			if err := t.checkCancel(); err != nil {
				return err
			}
		}
		if !midDone && rec.Offset >= half {
			midDone = true
			if err := t.fault(PointMapMid); err != nil {
				return err
			}
		}
		t.counters[job.MapInputRecords]++
		if err := f.Map(rec, out); err != nil {
			return fmt.Errorf("map %s:%d: %w", rec.File, rec.Offset, err)
		}
		return out.err
	})
	t.counters[job.MapInputBytes] += read
	if err != nil {
		return err
	}
	if f.Flush != nil {
		if err := f.Flush(out); err != nil {
			return fmt.Errorf("map flush: %w", err)
		}
		if out.err != nil {
			return out.err
		}
	}
	if err := t.checkCancel(); err != nil {
		return err
	}
	if err := sorter.Finish(func(p int) string { return filepath.Join(tmp, partName(p)) }); err != nil {
		return err
	}
	os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	ok = true
	return t.fault(PointMapEnd)
}

// reduceOutput writes output lines.
type reduceOutput struct {
	t   *task
	w   *bufio.Writer
	err error
}

func (o *reduceOutput) Emit(k, v string) {
	var n int
	var err error
	switch {
	case v == "":
		n, err = o.w.WriteString(k)
	case k == "":
		n, err = o.w.WriteString(v)
	default:
		n, err = o.w.WriteString(k)
		o.w.WriteByte('\t')
		var m int
		m, err = o.w.WriteString(v)
		n += m + 1
	}
	o.w.WriteByte('\n')
	o.t.counters[job.ReduceOutputRecords]++
	o.t.counters[job.ReduceOutputBytes] += int64(n + 1)
	if err != nil && o.err == nil {
		o.err = err
	}
}

func (o *reduceOutput) Count(name string, d int64) { o.t.counters[job.UserPrefix+name] += d }

func (t *task) runReduce(f *job.Funcs) error {
	if err := t.fault(PointReduceStart); err != nil {
		return err
	}
	dir := filepath.Join(t.w.jobDir(t.a.Job), fmt.Sprintf("reduce-%d-%d", t.a.Task, t.a.Attempt))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	files, err := t.fetchAll(dir)
	if err != nil {
		return err
	}
	var srcs []kv.Source
	for _, name := range files {
		fh, err := os.Open(name)
		if err != nil {
			return err
		}
		defer fh.Close()
		srcs = append(srcs, kv.NewReader(fh))
	}
	merged, err := kv.Merge(srcs)
	if err != nil {
		return err
	}
	tmpDir := filepath.Join(t.a.Output, TempDirName)
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return err
	}
	name := job.OutputName(t.a.Task)
	tmp := filepath.Join(tmpDir, fmt.Sprintf("%s.%d", name, t.a.Attempt))
	of, err := os.Create(tmp)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			of.Close()
			os.Remove(tmp)
		}
	}()
	out := &reduceOutput{t: t, w: bufio.NewWriterSize(of, 256<<10)}
	first := true
	groups, recs, err := kv.Group(merged, func(key string, values iter.Seq[string]) error {
		if err := t.checkCancel(); err != nil {
			return err
		}
		if err := f.Reduce(key, values, out); err != nil {
			return fmt.Errorf("reduce key %q: %w", key, err)
		}
		if first {
			first = false
			if err := t.fault(PointReduceMid); err != nil {
				return err
			}
		}
		return out.err
	})
	t.counters[job.ReduceInputGroups] += groups
	t.counters[job.ReduceInputRecords] += recs
	if err != nil {
		return err
	}
	if f.Flush != nil {
		if err := f.Flush(out); err != nil {
			return fmt.Errorf("reduce flush: %w", err)
		}
	}
	if out.err != nil {
		return out.err
	}
	if err := t.checkCancel(); err != nil {
		return err
	}
	if err := out.w.Flush(); err != nil {
		return err
	}
	if err := of.Sync(); err != nil {
		return err
	}
	if err := of.Close(); err != nil {
		return err
	}
	// Atomic commit of this partition: readers see no file or a whole
	// one. A duplicate attempt renames identical content over it.
	if err := os.Rename(tmp, filepath.Join(t.a.Output, name)); err != nil {
		return err
	}
	ok = true
	syncDir(t.a.Output)
	return t.fault(PointReduceEnd)
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// fetchAll downloads this reduce partition of every map output into dir,
// a few at a time, and returns the file names in map task order.
func (t *task) fetchAll(dir string) ([]string, error) {
	n := len(t.a.Inputs)
	names := make([]string, n)
	errs := make([]error, n)
	sizes := make([]int64, n)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, loc := range t.a.Inputs {
		names[i] = filepath.Join(dir, fmt.Sprintf("in-%d", loc.Task))
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var err error
			for try := 0; try < 3; try++ {
				if sizes[i], err = t.fetch(loc, names[i]); err == nil || t.ctx.Err() != nil {
					break
				}
				sleep(t.ctx, time.Duration(100<<try)*time.Millisecond)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := t.checkCancel(); err != nil {
		return nil, err
	}
	var fe *fetchError
	for i, err := range errs {
		t.counters[job.ShuffleBytes] += sizes[i]
		if err != nil {
			loc := t.a.Inputs[i]
			if fe == nil {
				fe = &fetchError{err: fmt.Errorf("map %d from %s: %w", loc.Task, loc.Addr, err)}
			}
			fe.lost = append(fe.lost, sched.MapOutput{Task: loc.Task, Attempt: loc.Attempt})
		}
	}
	if fe != nil {
		return nil, fe
	}
	return names, nil
}

func (t *task) fetch(loc sched.Location, name string) (int64, error) {
	url := wire.BaseURL(loc.Addr) + wire.ShufflePath(t.a.Job, loc.Task, loc.Attempt, t.a.Task)
	// A peer that stops sending mid-body (a stopped machine keeps its
	// connections open) must not stall the reducer forever.
	ctx, cancel := context.WithCancel(t.ctx)
	defer cancel()
	idle := time.AfterFunc(fetchIdleTimeout, cancel)
	defer idle.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := t.w.fetch.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s", resp.Status)
	}
	f, err := os.Create(name)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, &idleReader{r: resp.Body, timer: idle})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return 0, fmt.Errorf("short read: %d of %d bytes", n, resp.ContentLength)
	}
	return n, nil
}

// fetchIdleTimeout bounds how long a shuffle fetch may receive nothing.
const fetchIdleTimeout = 30 * time.Second

// idleReader pushes back an idle timer whenever data arrives.
type idleReader struct {
	r     io.Reader
	timer *time.Timer
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.timer.Reset(fetchIdleTimeout)
	}
	return n, err
}
