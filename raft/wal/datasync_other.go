//go:build !linux

package wal

import "os"

// datasync makes f's data durable. Outside Linux it is fsync (os.File.Sync).
func datasync(f *os.File) error { return f.Sync() }
