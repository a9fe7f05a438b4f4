package main

import (
	"bufio"
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"golang.org/x/exp/trace"
)

// cmdTimeline merges Go execution traces taken at the same time from
// several processes on one machine (for example each member's
// /debug/pprof/trace) into one time-ordered listing of goroutine wakes,
// runs, blocks and system calls, so one request can be followed from
// process to process. Traces from Go 1.25 on carry snapshots of the
// monotonic clock, which all processes on a machine share; events are
// placed on that clock.
//
//	benchcmp timeline [-from S] [-dur S] name=file.trace ...
func cmdTimeline(args []string) error {
	fs := flag.NewFlagSet("timeline", flag.ExitOnError)
	from := fs.Float64("from", 0.5, "start of the window, seconds after the latest first event of the traces")
	dur := fs.Float64("dur", 0.002, "length of the window, seconds")
	fs.Parse(args)
	if fs.NArg() == 0 {
		return errors.New("timeline: name=file.trace arguments required")
	}
	var all []timelineEvent
	var start uint64
	for _, arg := range fs.Args() {
		name, path, ok := strings.Cut(arg, "=")
		if !ok {
			name, path = arg, arg
		}
		evs, first, err := readTimeline(name, path)
		if err != nil {
			return err
		}
		start = max(start, first)
		all = append(all, evs...)
	}
	slices.SortStableFunc(all, func(a, b timelineEvent) int { return cmp.Compare(a.mono, b.mono) })
	lo := start + uint64(*from*1e9)
	hi := lo + uint64(*dur*1e9)
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for _, e := range all {
		if e.mono >= lo && e.mono < hi {
			fmt.Fprintf(w, "%9.1f µs %s\n", float64(e.mono-lo)/1e3, e.text)
		}
	}
	return nil
}

type timelineEvent struct {
	mono uint64 // monotonic clock, ns
	text string
}

// readTimeline reads one trace file and returns its goroutine events on
// the monotonic clock, and the time of its first event.
func readTimeline(name, path string) ([]timelineEvent, uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("timeline: %w", err)
	}
	defer f.Close()
	r, err := trace.NewReader(bufio.NewReader(f))
	if err != nil {
		return nil, 0, fmt.Errorf("timeline: %s: %w", path, err)
	}
	var (
		out   []timelineEvent
		snap  *trace.ClockSnapshot
		first uint64
	)
	for {
		ev, err := r.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, fmt.Errorf("timeline: %s: %w", path, err)
		}
		if ev.Kind() == trace.EventSync {
			if s := ev.Sync(); s.ClockSnapshot != nil {
				snap = s.ClockSnapshot
			}
			continue
		}
		if snap == nil {
			continue // before the first clock snapshot
		}
		mono := snap.Mono + uint64(ev.Time()-snap.Trace)
		if first == 0 {
			first = mono
		}
		if text := describeEvent(ev); text != "" {
			out = append(out, timelineEvent{mono: mono, text: name + " " + text})
		}
	}
	if snap == nil {
		return nil, 0, fmt.Errorf("timeline: %s has no clock snapshots (needs a trace from Go 1.25 or later)", path)
	}
	return out, first, nil
}

// describeEvent renders a goroutine state transition, or "" for events
// the timeline leaves out.
func describeEvent(ev trace.Event) string {
	if ev.Kind() != trace.EventStateTransition {
		return ""
	}
	st := ev.StateTransition()
	if st.Resource.Kind != trace.ResourceGoroutine {
		return ""
	}
	g := st.Resource.Goroutine()
	from, to := st.Goroutine()
	switch {
	case from == trace.GoWaiting && to == trace.GoRunnable:
		return fmt.Sprintf("wake g%d by g%d [%s]", g, ev.Goroutine(), frames(ev.Stack(), 3))
	case from == trace.GoRunning && to == trace.GoRunnable:
		return fmt.Sprintf("yield g%d [%s]", g, frames(ev.Stack(), 3))
	case to == trace.GoRunning:
		return fmt.Sprintf("run g%d (was %v)", g, from)
	case to == trace.GoWaiting:
		return fmt.Sprintf("block g%d %s [%s]", g, st.Reason, frames(ev.Stack(), 3))
	case to == trace.GoSyscall:
		return fmt.Sprintf("syscall g%d [%s]", g, frames(ev.Stack(), 3))
	case from == trace.GoSyscall:
		return fmt.Sprintf("sysret g%d -> %v", g, to)
	case from == trace.GoNotExist && to == trace.GoRunnable:
		return fmt.Sprintf("create g%d by g%d [%s]", g, ev.Goroutine(), frames(ev.Stack(), 2))
	}
	return ""
}

// frames names the innermost n frames worth reading: runtime internals
// are skipped, except the calls that show how a goroutine was woken.
func frames(st trace.Stack, n int) string {
	var out []string
	for f := range st.Frames() {
		fn := f.Func
		if strings.HasPrefix(fn, "runtime.") && fn != "runtime.Gosched" &&
			!strings.Contains(fn, "chan") && !strings.Contains(fn, "select") {
			continue
		}
		if strings.HasPrefix(fn, "internal/poll.") ||
			(strings.HasPrefix(fn, "syscall.") && fn != "syscall.read" && fn != "syscall.write" && fn != "syscall.Fsync") {
			continue
		}
		fn = strings.TrimPrefix(fn, "github.com/cairn-db/cairn/")
		fn = strings.TrimPrefix(fn, "google.golang.org/grpc/")
		out = append(out, fmt.Sprintf("%s:%d", fn, f.Line))
		if len(out) == n {
			break
		}
	}
	return strings.Join(out, " < ")
}
