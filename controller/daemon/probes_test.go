package daemon

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
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
