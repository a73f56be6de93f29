package testbed

import "syscall"

// childSysProcAttr puts each agent in its own process group, so a Ctrl-C in
// the terminal reaches only the runner, which then stops the agents in order;
// and asks the kernel to SIGTERM the agent if the runner dies without doing so.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
