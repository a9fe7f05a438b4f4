package mrcli

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes a worker process die with its parent, so that a
// killed `run` leaves no orphans.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
