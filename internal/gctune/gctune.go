// Package gctune adapts the Go garbage collector to a server whose live
// heap is mostly its data.
//
// With Go's default GOGC=100 the heap may grow to twice the live heap
// before a collection, so a member holding 400 MiB of keys can use 800
// MiB. The tuner lowers GOGC as the live heap grows, so the headroom stays
// near a fixed number of bytes (Options.Headroom) instead of doubling the
// data, down to a floor (Options.MinPercent) that bounds the extra
// collection work. Small heaps keep GOGC=100, so the benchmarks with small
// stores pay nothing.
//
// GOGC is process-wide, so the tuner belongs to a program (cairn server),
// not to a library: Run is called from the CLI, never from
// internal/server. An operator's GOGC environment variable wins: the
// tuner then does nothing.
package gctune

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Options configures the tuner. Zero fields get the defaults named.
type Options struct {
	// Headroom is the heap growth allowed between collections once the
	// live heap is large. Default 64 MiB.
	Headroom uint64
	// MinPercent is the lowest GOGC the tuner sets. Default 10.
	MinPercent int
	// Interval is how often the live heap is sampled. Default 1s.
	Interval time.Duration
	Logger   *slog.Logger
}

func (o *Options) defaults() {
	if o.Headroom == 0 {
		o.Headroom = 64 << 20
	}
	if o.MinPercent <= 0 {
		o.MinPercent = 10
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Percent returns the GOGC for a live heap of live bytes: 100 while
// Headroom is at least the live heap, then Headroom as a percentage of
// the live heap, never below MinPercent.
func Percent(live uint64, o Options) int {
	o.defaults()
	if live <= o.Headroom {
		return 100
	}
	p := int(o.Headroom * 100 / live)
	return max(p, o.MinPercent)
}

const liveHeapMetric = "/gc/heap/live:bytes"

// Run tunes GOGC until ctx ends, then restores the setting it found. It
// returns at once if the GOGC environment variable is set.
func Run(ctx context.Context, o Options) {
	o.defaults()
	if _, ok := os.LookupEnv("GOGC"); ok {
		o.Logger.Info("GOGC is set; the garbage collector tuner is off")
		return
	}
	sample := []metrics.Sample{{Name: liveHeapMetric}}
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	cur := 100
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			if p := Percent(sample[0].Value.Uint64(), o); p != cur {
				debug.SetGCPercent(p)
				o.Logger.Debug("GOGC tuned", "percent", p, "live_heap", sample[0].Value.Uint64())
				cur = p
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
