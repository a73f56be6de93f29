package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// stopWithGoRun makes `go run ./cmd/qkdnet up` stoppable with one SIGTERM to
// the go command, as scripts send it: `go run` dies of SIGTERM without passing
// it on, which would leave this process and its agents running, holding the
// ports and the state dir. So when running from go run's build cache, poll
// for the parent's death (we are re-parented) and then SIGTERM ourselves,
// which stops the agents cleanly. A program installed normally keeps the
// usual Unix behaviour (e.g. it survives its shell under nohup).
func stopWithGoRun() {
	exe, err := os.Executable()
	if err != nil || !strings.Contains(exe, string(filepath.Separator)+"go-build") {
		return
	}
	ppid := os.Getppid()
	go func() {
		for range time.Tick(250 * time.Millisecond) {
			if os.Getppid() != ppid {
				syscall.Kill(os.Getpid(), syscall.SIGTERM)
				return
			}
		}
	}()
}
