package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/qkdnet/qkdnet/pki"
)

func probe(h http.HandlerFunc) (int, string) {
	rec := httptest.NewRecorder()
	h(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

// fakeRaft is a replica's Raft as the probes see it.
type fakeRaft struct {
	state  raft.RaftState
	leader raft.ServerAddress
}

func (f fakeRaft) State() raft.RaftState { return f.state }
func (f fakeRaft) LeaderWithID() (raft.ServerAddress, raft.ServerID) {
	return f.leader, raft.ServerID(f.leader)
}

func TestProbesLeaderKnown(t *testing.T) {
	healthz, readyz := probes(fakeRaft{state: raft.Follower, leader: "c1.example:7543"})
	if code, body := probe(healthz); code != 200 || body != "ok\n" {
		t.Errorf("healthz: %d %q", code, body)
	}
	if code, body := probe(readyz); code != 200 || body != "ok\n" {
		t.Errorf("readyz with a leader: %d %q", code, body)
	}
}

// A real Raft that was never bootstrapped knows no leader: alive but not
// ready (a replica waiting to join). Once shut down it is not alive either.
func TestProbesRealRaft(t *testing.T) {
	conf := raft.DefaultConfig()
	conf.LocalID = "c2"
	conf.Logger = hclog.NewNullLogger()
	_, trans := raft.NewInmemTransport("c2")
	store := raft.NewInmemStore()
	r, err := raft.NewRaft(conf, &raft.MockFSM{}, store, store, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		t.Fatal(err)
	}
	healthz, readyz := probes(r)
	if code, body := probe(healthz); code != 200 {
		t.Errorf("healthz of a replica waiting to join: %d %q, want 200", code, body)
	}
	if code, body := probe(readyz); code != 503 || body != "no Raft leader known\n" {
		t.Errorf("readyz without a leader: %d %q, want 503 with the reason", code, body)
	}
	if err := r.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	if code, body := probe(healthz); code != 503 || body != "raft has shut down\n" {
		t.Errorf("healthz after shutdown: %d %q, want 503 with the reason", code, body)
	}
}

// The replicas of a StatefulSet share one command line: --bootstrap-id
// makes the one it names bootstrap, and the others join.
func TestBootstrapID(t *testing.T) {
	common := []string{"--data-dir", "d", "--ca", "ca", "--cert", "c", "--key", "k", "--bootstrap-id", "ctl-0", "--join", "ctl-0.ctl:7443,ctl-1.ctl:7443"}
	for _, tc := range []struct {
		id        string
		bootstrap bool
		join      int
	}{{"ctl-0", true, 0}, {"ctl-1", false, 2}, {"ctl-2", false, 2}} {
		o, logger, code := parseFlags("qkd-controller", append([]string{"--id", tc.id}, common...), io.Discard)
		if logger == nil {
			t.Fatalf("%s: exit %d", tc.id, code)
		}
		if o.Bootstrap != tc.bootstrap || len(o.Join) != tc.join {
			t.Errorf("%s: bootstrap %v, join %v; want %v and %d addresses", tc.id, o.Bootstrap, o.Join, tc.bootstrap, tc.join)
		}
	}
}

// A real replica, as Main runs it: /readyz is 503 until it knows a leader
// and 200 once it (bootstrapping alone) has elected itself; /healthz is 200
// throughout.
func TestRunProbes(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := ca.IssueController("c1")
	if err != nil {
		t.Fatal(err)
	}
	// The ports are free when picked, but another test process may take
	// one before the replica binds it: then start again on new ones.
	var metrics string
	var cancel context.CancelFunc
	var done chan error
	start := func(attempt int) {
		metrics = freeAddr(t)
		o := Options{ID: "c1", GRPCAddr: freeAddr(t), RaftAddr: freeAddr(t), MetricsAddr: metrics, DataDir: filepath.Join(dir, fmt.Sprintf("raft%d", attempt)),
			Bootstrap: true, CA: ca.Files().Cert, Cert: f.Cert, Key: f.Key}
		var ctx context.Context
		ctx, cancel = context.WithCancel(context.Background())
		done = make(chan error, 1)
		go func() { done <- Run(ctx, o, slog.New(slog.DiscardHandler)) }()
	}
	attempt := 0
	start(attempt)
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + metrics + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Wait for the election (a condition, not a time): the test's own
	// deadline bounds it.
	for {
		code, body := get("/readyz")
		if code == 200 {
			if body != "ok\n" {
				t.Errorf("readyz: %q", body)
			}
			break
		}
		if code != 0 && (code != 503 || body != "no Raft leader known\n") {
			t.Fatalf("readyz before the election: %d %q", code, body)
		}
		select {
		case err := <-done:
			if attempt < 5 && err != nil && strings.Contains(err.Error(), "address already in use") {
				cancel()
				attempt++
				start(attempt)
				continue
			}
			done <- err // for the deferred stop
			t.Fatalf("replica stopped: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if code, body := get("/healthz"); code != 200 {
		t.Errorf("healthz: %d %q", code, body)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
