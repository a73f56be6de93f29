package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/cmd/sae/saeapp"
	"github.com/qkdnet/qkdnet/etsi014client"
	"github.com/qkdnet/qkdnet/testbed"
)

// These tests start real networks: the qkdnet binary, built once, runs one
// real agent process per node on loopback ports that no other test uses.

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func qkdnetBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "qkdnet-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "qkdnet")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// skipIfAgentUnwired skips when the agent is still the placeholder; any other
// failure is a real one.
func skipIfAgentUnwired(t *testing.T, output string) {
	t.Helper()
	if strings.Contains(output, "not wired yet") {
		t.Skip("agent.Run is not implemented yet (\"not wired yet\")")
	}
}

func logTo(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func deadlineCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// exchangeKey has SAE_A get a key for SAE_B and SAE_B fetch it, polling
// while the KMM has no key yet (503); both must see the same bits.
func exchangeKey(ctx context.Context, t *testing.T, state string) string {
	t.Helper()
	a, _, err := saeapp.Connect(state, "SAE_A")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, _, err := saeapp.Connect(state, "SAE_B")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var enc *etsi014client.KeyContainer
	for {
		enc, err = a.EncKeys(ctx, "SAE_B", etsi014client.KeyRequest{Number: 1, Size: 256})
		var e *etsi014client.Error
		if err == nil || !errors.As(err, &e) || !e.Temporary() {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no key for SAE_A -> SAE_B before the deadline: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	defer enc.Zero()
	if len(enc.Keys) != 1 || len(enc.Keys[0].Bytes) != 32 {
		t.Fatalf("enc_keys gave %d keys", len(enc.Keys))
	}
	dec, err := b.DecKeys(ctx, "SAE_A", enc.Keys[0].KeyID)
	if err != nil {
		t.Fatalf("dec_keys: %v", err)
	}
	defer dec.Zero()
	if len(dec.Keys) != 1 || dec.Keys[0].KeyID != enc.Keys[0].KeyID || !bytes.Equal(dec.Keys[0].Bytes, enc.Keys[0].Bytes) {
		t.Fatal("SAE_A and SAE_B got different keys for one key_ID")
	}
	return enc.Keys[0].KeyID
}

func checkStatus(ctx context.Context, t *testing.T, state string) {
	t.Helper()
	c, _, err := saeapp.Connect(state, "SAE_A")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status(ctx, "SAE_B")
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if st.SourceKMEID != "KME_A" || st.TargetKMEID != "KME_B" || st.MasterSAEID != "SAE_A" || st.SlaveSAEID != "SAE_B" {
		t.Errorf("status %+v", st)
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, pid := range pids {
		for alive(pid) && !isZombie(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("process %d still running", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// isZombie reports whether pid has exited but not been reaped (its parent,
// the runner, may have exited first, leaving it to init).
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// childrenOf lists the processes whose parent is pid (Linux /proc).
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Skip("no /proc to find the agents")
	}
	var kids []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after "(comm)": state, ppid, ...
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}

// TestNetworkLibrary drives testbed.Up with the built binary, as
// integration and crash tests elsewhere do.
func TestNetworkLibrary(t *testing.T) {
	exe := qkdnetBinary(t)
	base, err := testbed.FreeBasePort(2)
	if err != nil {
		t.Fatal(err)
	}
	ctx := deadlineCtx(t, 3*time.Minute)
	state := filepath.Join(t.TempDir(), "state")
	n, err := testbed.Up(ctx, testbed.Options{
		StateDir:     state,
		BasePort:     base,
		KeyRate:      20,
		Executable:   exe,
		Logger:       logTo(t),
		ReadyTimeout: 60 * time.Second,
	})
	if err != nil {
		var ne *testbed.NodeError
		if errors.As(err, &ne) {
			skipIfAgentUnwired(t, strings.Join(ne.LogTail, "\n"))
		}
		t.Fatal(err)
	}
	defer n.Stop()

	if _, err := testbed.ReadEndpoints(state); err != nil {
		t.Fatalf("endpoints.json: %v", err)
	}
	checkStatus(ctx, t, state)
	id1 := exchangeKey(ctx, t, state)

	// Crash B and bring it back: the network serves again, with fresh keys.
	oldB := n.PID("B")
	if err := n.Kill("B"); err != nil {
		t.Fatal(err)
	}
	if err := n.Restart(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	if n.PID("B") == oldB {
		t.Error("B was not restarted")
	}
	checkStatus(ctx, t, state)
	if id2 := exchangeKey(ctx, t, state); id2 == id1 {
		t.Errorf("key_ID %s issued twice", id1)
	}

	pids := []int{n.PID("A"), n.PID("B")}
	if err := n.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	waitGone(t, pids...)
}

// TestUpCommand runs `qkdnet up` as scripts do: wait for endpoints.json, use
// the network, send SIGTERM, and check that every agent is gone.
func TestUpCommand(t *testing.T) {
	exe := qkdnetBinary(t)
	base, err := testbed.FreeBasePort(2)
	if err != nil {
		t.Fatal(err)
	}
	ctx := deadlineCtx(t, 3*time.Minute)
	state := filepath.Join(t.TempDir(), "state")
	var stdout, stderr syncBuf
	cmd := exec.Command(exe, "up", "--state-dir", state, "--base-port", strconv.Itoa(base))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
			}
		}
	}()

	// Wait for endpoints.json, as a script would.
	for {
		if _, err := os.Stat(filepath.Join(state, testbed.EndpointsFile)); err == nil {
			break
		}
		select {
		case err := <-exited:
			skipIfAgentUnwired(t, stderr.String())
			t.Fatalf("qkdnet up exited (%v) before the network served:\n%s", err, stderr.String())
		case <-ctx.Done():
			t.Fatalf("no endpoints.json in time:\n%s", stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	e, err := testbed.ReadEndpoints(state)
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := e.KMM("B"); k.URL != fmt.Sprintf("https://127.0.0.1:%d", base+1) || k.GRPC != fmt.Sprintf("127.0.0.1:%d", base+1001) {
		t.Errorf("node B endpoints %+v for base port %d", k, base)
	}
	checkStatus(ctx, t, state)
	// The table is printed once endpoints.json is there; give the writer a
	// moment by polling rather than sleeping.
	for !strings.Contains(stdout.String(), "Ctrl-C stops the network") {
		select {
		case <-ctx.Done():
			t.Fatalf("no table on stdout: %q", stdout.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !strings.Contains(stdout.String(), "curl --cacert") || !strings.Contains(stdout.String(), e.KMMs[0].URL) {
		t.Errorf("stdout lacks the table or the curl line:\n%s", stdout.String())
	}

	kids := childrenOf(t, cmd.Process.Pid)
	if len(kids) != 6 {
		t.Fatalf("qkdnet up has %d children %v, want 3 agents (rooftops A, B, C) and 3 controller replicas", len(kids), kids)
	}
	if len(e.Controllers) != 3 || e.Operator == nil || e.Controllers[0].GRPC != fmt.Sprintf("127.0.0.1:%d", base+3000) {
		t.Errorf("endpoints.json controllers %+v, operator %+v", e.Controllers, e.Operator)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("qkdnet up exited with %v after SIGTERM:\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("qkdnet up did not exit after SIGTERM")
	}
	waitGone(t, kids...)
	if _, err := os.Stat(filepath.Join(state, testbed.EndpointsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("endpoints.json left behind: %v", err)
	}
}

// TestDemo runs `qkdnet demo` for three messages.
func TestDemo(t *testing.T) {
	exe := qkdnetBinary(t)
	base, err := testbed.FreeBasePort(2)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	ctx := deadlineCtx(t, 3*time.Minute)
	cmd := exec.CommandContext(ctx, exe, "demo", "--state-dir", state, "--base-port", strconv.Itoa(base),
		"--key-rate", "10", "--interval", "200ms", "--count", "3")
	var stdout, stderr syncBuf
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err != nil {
		skipIfAgentUnwired(t, stderr.String())
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if got := strings.Count(stdout.String(), "decrypted OK"); got != 3 {
		t.Errorf("%d messages decrypted OK, want 3:\n%s", got, stdout.String())
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
