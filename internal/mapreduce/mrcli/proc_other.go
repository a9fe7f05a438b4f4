//go:build !linux

package mrcli

import "os/exec"

func setDeathSignal(*exec.Cmd) {}
