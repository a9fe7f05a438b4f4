package gctune

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	o := Options{Headroom: 100, MinPercent: 20}
	for _, tc := range []struct {
		live uint64
		want int
	}{
		{0, 100}, {50, 100}, {100, 100}, {200, 50}, {400, 25}, {500, 20}, {10000, 20},
	} {
		if got := Percent(tc.live, o); got != tc.want {
			t.Errorf("Percent(%d) = %d, want %d", tc.live, got, tc.want)
		}
	}
	// Defaults: 64 MiB of headroom, floor 10.
	if got := Percent(128<<20, Options{}); got != 50 {
		t.Errorf("default Percent(128 MiB) = %d, want 50", got)
	}
	if got := Percent(1<<30, Options{}); got != 10 {
		t.Errorf("default Percent(1 GiB) = %d, want the floor, 10", got)
	}
}

// TestRunRestores checks that Run sets GOGC from the live heap and puts
// back the setting it found when it stops.
func TestRunRestores(t *testing.T) {
	t.Setenv("GOGC", "x") // restored by the test framework afterwards
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, Options{}); close(done) }()
	<-done // GOGC set: Run returns at once
	cancel()

	if err := unsetenv("GOGC"); err != nil {
		t.Fatal(err)
	}
	old := debug.SetGCPercent(77)
	defer debug.SetGCPercent(old)
	// A tiny headroom makes any live heap "large": GOGC goes to the floor.
	ctx, cancel = context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() { Run(ctx, Options{Headroom: 1, MinPercent: 30, Interval: time.Millisecond}); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC() // the live heap is known only after a collection
		p := gogc()
		if p == 30 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GOGC stayed %d", p)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if p := debug.SetGCPercent(77); p != 77 {
		t.Fatalf("Run left GOGC at %d, want the 77 it found", p)
	}
}

// gogc reads the current GOGC without changing it.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}
