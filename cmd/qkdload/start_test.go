package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/testbed"
)

// fakeQkdnetEnv makes the test binary act as `qkdnet up` (see TestMain), so
// that --start can be tested end to end, signals and all, without the real
// testbed runner.
const fakeQkdnetEnv = "QKDLOAD_FAKE_QKDNET"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeQkdnetEnv); mode != "" {
		os.Exit(fakeQkdnet(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeQkdnet is `qkdnet up`: it records its arguments, serves a fakeNet and
// writes endpoints.json, and on SIGTERM stops, removes endpoints.json and
// leaves a marker saying it stopped cleanly. Mode "fail" exits at once.
func fakeQkdnet(mode string, args []string) int {
	if mode == "fail" {
		fmt.Fprintln(os.Stderr, "boom: the fake qkdnet cannot start")
		return 3
	}
	stateDir := ""
	for i, a := range args {
		if a == "--state-dir" && i+1 < len(args) {
			stateDir = args[i+1]
		}
	}
	if len(args) == 0 || args[0] != "up" || stateDir == "" {
		fmt.Fprintf(os.Stderr, "fake qkdnet: want up --state-dir DIR, got %q\n", args)
		return 2
	}
	if err := os.WriteFile(filepath.Join(stateDir, "fake-args"), []byte(strings.Join(args, "\n")), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	var n fakeNet
	if err := n.start(stateDir, 2); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("fake network up")
	<-ctx.Done()
	n.close()
	os.Remove(filepath.Join(stateDir, testbed.EndpointsFile))
	if err := os.WriteFile(filepath.Join(stateDir, "fake-stopped"), nil, 0o600); err != nil {
		return 1
	}
	return 0
}

func TestStart(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeQkdnetEnv, "ok")
	dir := t.TempDir()
	// A stale endpoints.json from an earlier network, pointing nowhere: it
	// must not be taken for the new network's.
	stale := []byte(`{"ca_cert": "nowhere.pem", "kmms": [{"node": "A", "url": "https://127.0.0.1:1"}, {"node": "B", "url": "https://127.0.0.1:2"}],
		"saes": [{"sae_id": "SAE_A1", "kmm": "A"}, {"sae_id": "SAE_B1", "kmm": "B"}]}`)
	endpoints := filepath.Join(dir, testbed.EndpointsFile)
	if err := os.WriteFile(endpoints, stale, 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(endpoints, old, old); err != nil {
		t.Fatal(err)
	}

	code, rep, stderr := runQkdload(t, "--start", "--qkdnet", exe, "--state-dir", dir,
		"--topology", "bench", "--key-rate", "1234.5", "--base-port", "20000",
		"--clients", "2", "--warmup", "0", "--duration", "200ms", "--single", "50ms", "--start-timeout", "1m")
	if code != 0 || !rep.OK || rep.Cycles == 0 {
		t.Fatalf("exit %d ok=%v cycles=%d, want 0, ok, > 0; stderr:\n%s", code, rep.OK, rep.Cycles, stderr)
	}
	b, err := os.ReadFile(filepath.Join(dir, "fake-args"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"up", "--state-dir", dir, "--topology", "bench", "--key-rate", "1234.5", "--base-port", "20000"}
	if got := strings.Split(string(b), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("qkdnet args\n got %q\nwant %q", got, want)
	}
	// realMain returned, so the network must have been stopped by SIGTERM
	// (the marker) and its whole process group be gone.
	if _, err := os.Stat(filepath.Join(dir, "fake-stopped")); err != nil {
		t.Errorf("qkdnet did not stop cleanly on SIGTERM: %v", err)
	}
	m := regexp.MustCompile(`\(pid (\d+)\)`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("stderr does not name the child's pid:\n%s", stderr)
	}
	pid, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process group %d still exists after qkdload returned (kill: %v)", pid, err)
	}
	if !strings.Contains(stderr, "network stopped") {
		t.Errorf("stderr does not report the network stopped:\n%s", stderr)
	}
}

func TestStartChildFails(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeQkdnetEnv, "fail")
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	code := realMain([]string{"--start", "--qkdnet", exe, "--state-dir", dir, "--start-timeout", "1m"}, &out, &errOut)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for _, want := range []string{"qkdnet exited before writing", "exit status 3", "boom: the fake qkdnet cannot start"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
		}
	}
}
