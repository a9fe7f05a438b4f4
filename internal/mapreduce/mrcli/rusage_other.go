//go:build !unix

package mrcli

import "time"

func cpuTime() time.Duration { return 0 }
