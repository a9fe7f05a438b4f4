package raftnode

import "time"

// Clock is the source of the node's ticks, a seam so tests control time.
type Clock interface {
	// NewTicker returns a channel that delivers a value every d, and a
	// function that stops it.
	NewTicker(d time.Duration) (<-chan time.Time, func())
}

// RealClock ticks with the wall clock.
type RealClock struct{}

// NewTicker implements Clock.
func (RealClock) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// ManualClock ticks only when Tick is called; for tests.
type ManualClock struct{ c chan time.Time }

// NewManualClock returns a ManualClock.
func NewManualClock() *ManualClock { return &ManualClock{c: make(chan time.Time)} }

// NewTicker implements Clock. All tickers share one channel.
func (m *ManualClock) NewTicker(time.Duration) (<-chan time.Time, func()) {
	return m.c, func() {}
}

// Tick delivers one tick, blocking until the node takes it.
func (m *ManualClock) Tick() { m.c <- time.Time{} }
