package testbed

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/agent"
	"github.com/qkdnet/qkdnet/pki"
)

// The lifecycle tests run the test binary itself as a stand-in agent that
// only completes TLS handshakes, so the runner is tested apart from the real
// agent (which cmd/qkdnet's tests start for real).
const fakeAgentEnv = "TESTBED_FAKE_AGENT"

func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(fakeAgentEnv); ok {
		os.Exit(fakeAgent(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeAgent serves TLS on the REST and gRPC ports of its config. Modes:
// "" normal; "ignore-term" ignores SIGTERM; "fail" exits 3 at once;
// "slow" waits for a file named in FAKE_AGENT_GO before serving.
func fakeAgent(mode string, args []string) int {
	fs := flag.NewFlagSet("fake", flag.ContinueOnError)
	config := fs.String("config", "", "")
	if len(args) > 0 && args[0] == "agent" {
		args = args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := agent.LoadConfig(*config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "fake agent %s pid %d\n", cfg.Node, os.Getpid())
	if mode == "fail" {
		fmt.Fprintln(os.Stderr, "fake agent: something is broken")
		return 3
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if mode == "slow" {
		for {
			if _, err := os.Stat(os.Getenv("FAKE_AGENT_GO")); err == nil {
				break
			}
			select {
			case <-sigs:
				return 0
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	tc, err := pki.ServerTLS(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key, tls.VerifyClientCertIfGiven)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tc.NextProtos = []string{"h2", "http/1.1"}
	for _, addr := range []string{cfg.RESTAddr, cfg.GRPCAddr} {
		ln, err := tls.Listen("tcp", addr, tc)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					c.SetDeadline(time.Now().Add(2 * time.Second))
					c.(*tls.Conn).Handshake()
					c.Close()
				}()
			}
		}()
	}
	for range sigs {
		if mode == "ignore-term" {
			fmt.Fprintln(os.Stderr, "fake agent: ignoring SIGTERM")
			continue
		}
		fmt.Fprintln(os.Stderr, "fake agent: stopping")
		return 0
	}
	return 0
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func fakeOptions(t *testing.T, mode string) Options {
	t.Helper()
	base, err := FreeBasePort(2)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fig4, err := LoadTopology("fig4")
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		Topology:     fig4,
		StateDir:     filepath.Join(t.TempDir(), "state"),
		BasePort:     base,
		Executable:   exe,
		Env:          []string{fakeAgentEnv + "=" + mode},
		Logger:       slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		ReadyTimeout: 20 * time.Second,
		StopTimeout:  5 * time.Second,
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// waitGone polls until pid is no longer a live process of ours (the runner
// reaps its children, so a dead child disappears).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestUpStopLifecycle(t *testing.T) {
	opts := fakeOptions(t, "")
	verbose := &syncBuffer{}
	opts.Verbose = verbose
	n, err := Up(testCtx(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop()

	e, err := ReadEndpoints(opts.StateDir)
	if err != nil {
		t.Fatalf("endpoints.json not written: %v", err)
	}
	if got := n.Endpoints(); got.CACert != e.CACert || got.KMMs[1].URL != e.KMMs[1].URL || got.SAEs[0].Key != e.SAEs[0].Key {
		t.Errorf("Endpoints() %+v differs from the file %+v", got, e)
	}
	pids := []int{n.PID("A"), n.PID("B")}
	for _, p := range pids {
		if p == 0 || !alive(p) {
			t.Fatalf("agent pids %v", pids)
		}
	}

	// The state dir is locked against a second runner.
	o2 := opts
	o2.Verbose = nil
	if _, err := Up(testCtx(t), o2); err == nil || !strings.Contains(err.Error(), "in use by another qkdnet") {
		t.Fatalf("second Up on the same state dir: %v", err)
	}

	// Kill + Restart: the node comes back with a new process; the other
	// node is untouched and the network stays up.
	if err := n.Kill("A"); err != nil {
		t.Fatal(err)
	}
	if n.PID("A") != 0 {
		t.Error("PID of a killed agent is not 0")
	}
	if err := n.Restart(testCtx(t), "A"); err != nil {
		t.Fatal(err)
	}
	if p := n.PID("A"); p == 0 || p == pids[0] {
		t.Errorf("restarted pid %d (was %d)", p, pids[0])
	}
	if n.PID("B") != pids[1] {
		t.Error("node B was restarted too")
	}
	select {
	case <-n.Done():
		t.Fatalf("network went down after Kill+Restart: %v", n.Err())
	default:
	}
	// Restart of a running agent stops it gracefully first.
	if err := n.Restart(testCtx(t), "B"); err != nil {
		t.Fatal(err)
	}
	if n.PID("B") == pids[1] {
		t.Error("Restart of a running agent kept the old process")
	}
	if err := n.Restart(testCtx(t), "Z"); err == nil {
		t.Error("Restart of an unknown node succeeded")
	}

	pids = []int{n.PID("A"), n.PID("B")}
	if err := n.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, p := range pids {
		waitGone(t, p)
	}
	if _, err := os.Stat(filepath.Join(opts.StateDir, EndpointsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("endpoints.json left after Stop: %v", err)
	}
	if n.Err() != nil {
		t.Errorf("Err after a clean Stop: %v", n.Err())
	}
	select {
	case <-n.Done():
	default:
		t.Error("Done not closed after Stop")
	}
	log, _ := os.ReadFile(filepath.Join(opts.StateDir, "nodes", "A", "agent.log"))
	if strings.Count(string(log), startMarker) != 2 || !strings.Contains(string(log), "fake agent: stopping") {
		t.Errorf("agent.log of A:\n%s", log)
	}
	if !strings.Contains(verbose.String(), "[B] fake agent B") {
		t.Errorf("verbose output lacks prefixed agent lines:\n%s", verbose.String())
	}

	// The state survives: a second Up on the same dir reuses the PKI.
	ca1, _ := os.ReadFile(filepath.Join(opts.StateDir, "pki", "ca.pem"))
	n2, err := Up(testCtx(t), o2)
	if err != nil {
		t.Fatal(err)
	}
	ca2, _ := os.ReadFile(filepath.Join(opts.StateDir, "pki", "ca.pem"))
	if !bytes.Equal(ca1, ca2) {
		t.Error("restart made a new CA")
	}
	if err := n2.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestUnexpectedExitStopsNetwork(t *testing.T) {
	opts := fakeOptions(t, "")
	n, err := Up(testCtx(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop()
	pa, pb := n.PID("A"), n.PID("B")
	syscall.Kill(pb, syscall.SIGKILL) // a crash nobody asked for
	select {
	case <-n.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("network did not notice the dead agent")
	}
	var ne *NodeError
	if !errors.As(n.Err(), &ne) || ne.Node != "B" || !strings.Contains(ne.Reason, "killed") {
		t.Fatalf("Err = %v, want a NodeError for B saying it was killed", n.Err())
	}
	if len(ne.LogTail) == 0 || !strings.Contains(strings.Join(ne.LogTail, "\n"), "fake agent B") {
		t.Errorf("log tail %q", ne.LogTail)
	}
	waitGone(t, pa)
	if _, err := os.Stat(filepath.Join(opts.StateDir, EndpointsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Error("endpoints.json left after failure")
	}
}

func TestAgentFailsAtStart(t *testing.T) {
	opts := fakeOptions(t, "fail")
	_, err := Up(testCtx(t), opts)
	var ne *NodeError
	if !errors.As(err, &ne) || !strings.Contains(ne.Reason, "exit status 3") {
		t.Fatalf("Up = %v, want a NodeError with exit status 3", err)
	}
	if !strings.Contains(strings.Join(ne.LogTail, "\n"), "something is broken") {
		t.Errorf("log tail %q lacks the agent's last words", ne.LogTail)
	}
	if _, err := os.Stat(filepath.Join(opts.StateDir, EndpointsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Error("endpoints.json written for a failed network")
	}
	// The lock is released: a later Up gets past it (and fails the same way).
	if _, err := Up(testCtx(t), opts); err == nil || strings.Contains(err.Error(), "in use") {
		t.Errorf("second Up: %v", err)
	}
}

func TestReadyTimeoutAndStopEscalation(t *testing.T) {
	opts := fakeOptions(t, "slow")
	goFile := filepath.Join(t.TempDir(), "go")
	opts.Env = append(opts.Env, "FAKE_AGENT_GO="+goFile)
	opts.ReadyTimeout = 500 * time.Millisecond
	start := time.Now()
	_, err := Up(testCtx(t), opts)
	var ne *NodeError
	if !errors.As(err, &ne) || !strings.Contains(ne.Reason, "not serving after") {
		t.Fatalf("Up = %v, want a readiness timeout", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("timeout took %s", d)
	}

	// An agent that ignores SIGTERM is killed after StopTimeout.
	opts = fakeOptions(t, "ignore-term")
	opts.StopTimeout = 300 * time.Millisecond
	n, err := Up(testCtx(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	pa := n.PID("A")
	err = n.Stop()
	if err == nil || !strings.Contains(err.Error(), "ignored SIGTERM") {
		t.Errorf("Stop = %v, want a report of the killed agents", err)
	}
	waitGone(t, pa)
}

func TestPortInUse(t *testing.T) {
	opts := fakeOptions(t, "")
	ps, _ := PortPlan(opts.BasePort, 2)
	ln, err := net.Listen("tcp", loopback(ps[1].GRPC))
	if err != nil {
		t.Skipf("cannot occupy the port: %v", err)
	}
	defer ln.Close()
	_, err = Up(testCtx(t), opts)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d (gRPC of node B) is in use", ps[1].GRPC)) {
		t.Fatalf("Up = %v", err)
	}
}
