package cluster_test

import (
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/qkdnet/qkdnet/controller"
	"github.com/qkdnet/qkdnet/controller/cluster"
	"github.com/qkdnet/qkdnet/controller/state"
	"github.com/qkdnet/qkdnet/pki"
)

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type replica struct {
	cfg cluster.Config
	fsm *controller.FSM
	r   *cluster.Replica
}

func open(t *testing.T, ca *pki.CA, dir, id, addr string, bootstrap bool) *replica {
	t.Helper()
	f, err := ca.IssueController(id)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pki.ServerTLS(ca.Files().Cert, f.Cert, f.Key, tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := pki.ClientTLS(ca.Files().Cert, f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := cluster.Config{ID: id, RaftAddr: addr, DataDir: filepath.Join(dir, id), ServerTLS: srv, ClientTLS: cl, Bootstrap: bootstrap, LogOutput: io.Discard}
	fsm := controller.NewFSM()
	r, err := cluster.Open(cfg, fsm)
	if err != nil {
		t.Fatal(err)
	}
	return &replica{cfg: cfg, fsm: fsm, r: r}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func nodes(r *replica) int {
	var n int
	r.fsm.Read(func(s *state.State) { n, _, _ = s.Counts() })
	return n
}

// TestDurableReplicasOverMutualTLS runs two replicas with raft-boltdb and
// the TLS transport: one bootstraps, the other joins, entries replicate, a
// replica that restarts recovers its state from disk, and a peer without a
// controller certificate cannot talk Raft.
func TestDurableReplicasOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := freeAddr(t), freeAddr(t)
	c1 := open(t, ca, dir, "c1", a1, true)
	defer func() { c1.r.Close() }()
	waitFor(t, "c1 to lead", func() bool { return c1.r.State() == raft.Leader })
	c2 := open(t, ca, dir, "c2", a2, false)
	if err := c1.r.AddVoter("c2", raft.ServerAddress(a2), 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	cmd, _ := state.Command{Op: state.OpAddNode, Node: &state.NodeSpec{Name: "A"}}.Encode()
	if err := c1.r.Apply(cmd, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c2 to apply", func() bool { return nodes(c2) == 1 })

	// c2 restarts from its data dir alone.
	if err := c2.r.Close(); err != nil {
		t.Fatal(err)
	}
	cmd, _ = state.Command{Op: state.OpAddNode, Node: &state.NodeSpec{Name: "B"}}.Encode()
	// With c2 down, c1 has no quorum of two: the write cannot commit.
	if err := c1.r.Apply(cmd, 500*time.Millisecond).Error(); err == nil {
		t.Fatal("a write committed without a quorum")
	}
	c2 = open(t, ca, dir, "c2", a2, false)
	defer func() { c2.r.Close() }()
	waitFor(t, "a leader after c2 restarts", func() bool { return c1.r.State() == raft.Leader || c2.r.State() == raft.Leader })
	waitFor(t, "c2 to recover node A from disk", func() bool { return nodes(c2) >= 1 })

	// A node certificate cannot open the Raft port.
	f, _ := ca.IssueNode("A")
	cl, _ := pki.ClientTLS(ca.Files().Cert, f.Cert, f.Key)
	conn, err := tls.Dial("tcp", a1, cl)
	if err == nil {
		// TLS 1.3 reports the server's refusal on the first read.
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("a node certificate opened the Raft transport")
	}
}
