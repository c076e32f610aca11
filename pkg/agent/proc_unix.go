//go:build !windows

package agent

import (
	"os/exec"
	"syscall"
)

func kill(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }

// detach puts the child in its own session, so the exec's end does not
// take it along.
func detach(cmd *exec.Cmd) { cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} }
