//go:build unix && !linux

package testbed

import "syscall"

// childSysProcAttr puts each agent in its own process group, so a Ctrl-C in
// the terminal reaches only the runner, which then stops the agents in order.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
