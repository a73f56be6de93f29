package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qkdnet/qkdnet/testbed"
)

// network is a testbed that qkdload started with `qkdnet up` and must stop.
type network struct {
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	exited  chan struct{} // closed when cmd.Wait returns
	waitErr error         // set before exited is closed
}

type startOptions struct {
	stateDir string
	qkdnet   string // executable; "" means `go run ./cmd/qkdnet` in the module
	topology string
	keyRate  float64
	basePort int
	timeout  time.Duration // for endpoints.json to appear
	stderr   io.Writer
}

// upArgs are the arguments of `qkdnet up`.
func upArgs(o startOptions) []string {
	return []string{"up",
		"--state-dir", o.stateDir,
		"--topology", o.topology,
		"--key-rate", strconv.FormatFloat(o.keyRate, 'f', -1, 64),
		"--base-port", strconv.Itoa(o.basePort),
	}
}

// startNetwork runs `qkdnet up` as a child and waits until it has written a
// fresh endpoints.json. The child runs in its own process group: `go run`
// does not pass SIGTERM on to the program it built, so stop signals the
// whole group, and a Ctrl-C at the terminal reaches qkdload only, which then
// stops the network in order.
func startNetwork(ctx context.Context, o startOptions) (*network, error) {
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return nil, err
	}
	// A topology path that exists from here is made absolute, because `go
	// run` runs in the module root; anything else (e.g. an embedded
	// topology's name) is passed on as it is.
	if !filepath.IsAbs(o.topology) {
		if _, err := os.Stat(o.topology); err == nil {
			if abs, err := filepath.Abs(o.topology); err == nil {
				o.topology = abs
			}
		}
	}
	var cmd *exec.Cmd
	if o.qkdnet != "" {
		cmd = exec.Command(o.qkdnet, upArgs(o)...)
	} else {
		root, err := moduleRoot()
		if err != nil {
			return nil, err
		}
		cmd = exec.Command("go", append([]string{"run", "./cmd/qkdnet"}, upArgs(o)...)...)
		cmd.Dir = root
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logPath := filepath.Join(o.stateDir, "qkdload-qkdnet.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	// Its output goes to a file so that --json keeps stdout to one object.
	cmd.Stdout, cmd.Stderr = logFile, logFile

	endpoints := filepath.Join(o.stateDir, testbed.EndpointsFile)
	var before time.Time
	if fi, err := os.Stat(endpoints); err == nil {
		before = fi.ModTime()
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	n := &network{cmd: cmd, logPath: logPath, logFile: logFile, exited: make(chan struct{})}
	go func() {
		n.waitErr = cmd.Wait()
		close(n.exited)
	}()
	fmt.Fprintf(o.stderr, "qkdload: started %s (pid %d); its log is %s\n", strings.Join(cmd.Args, " "), cmd.Process.Pid, logPath)

	if err := n.waitEndpoints(ctx, endpoints, before, o.timeout, o.stderr); err != nil {
		n.stop(o.stderr)
		return nil, err
	}
	return n, nil
}

// waitEndpoints waits until endpoints.json is newer than before (a file
// left by an earlier network must not be taken for this one's) and reads.
func (n *network) waitEndpoints(ctx context.Context, path string, before time.Time, timeout time.Duration, stderr io.Writer) error {
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastProgress := start
	for {
		if fi, err := os.Stat(path); err == nil && fi.ModTime() != before {
			if _, err := testbed.ReadEndpoints(filepath.Dir(path)); err == nil {
				fmt.Fprintf(stderr, "qkdload: network up after %s\n", time.Since(start).Round(100*time.Millisecond))
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.exited:
			return fmt.Errorf("qkdnet exited before writing %s (%v); last lines of %s:\n%s", path, n.waitErr, n.logPath, tail(n.logPath, 20))
		case <-deadline.C:
			return fmt.Errorf("no %s after %s; last lines of %s:\n%s", path, timeout, n.logPath, tail(n.logPath, 20))
		case now := <-tick.C:
			if now.Sub(lastProgress) >= 2*time.Second {
				lastProgress = now
				fmt.Fprintf(stderr, "qkdload: waiting for %s (%s)\n", path, now.Sub(start).Round(time.Second))
			}
		}
	}
}

// stopTimeout bounds each step of stopping the network.
const stopTimeout = 15 * time.Second

// stop sends SIGTERM to the network's process group and waits for it to
// end, killing what is left after stopTimeout.
func (n *network) stop(stderr io.Writer) {
	defer n.logFile.Close()
	pgid := n.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(stopTimeout):
		fmt.Fprintf(stderr, "qkdload: qkdnet did not stop within %s; killing it\n", stopTimeout)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-n.exited
	}
	// Under `go run` the child was the go command, which dies at SIGTERM
	// without waiting for qkdnet; wait for the rest of the group too.
	deadline := time.Now().Add(stopTimeout)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintln(stderr, "qkdload: network stopped")
}

// moduleRoot finds the qkdnet module root above the working directory, for
// `go run ./cmd/qkdnet`.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/qkdnet/qkdnet\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("--start runs `go run ./cmd/qkdnet`, so it must run inside the qkdnet source tree; or give --qkdnet PATH")
		}
		dir = parent
	}
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
