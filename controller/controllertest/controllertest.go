// Package controllertest runs a controller cluster inside a test: n
// replicas with Raft over the in-memory transport (so tests can cut and heal
// links between replicas), in-memory or on-disk stores, and each replica's
// gRPC API on a real loopback port with mutual TLS, so clients under test
// talk to it exactly as to a deployed controller.
package controllertest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/qkdnet/qkdnet/controller"
	"github.com/qkdnet/qkdnet/controller/cluster"
	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/pki"
)

// Replica is one replica of the test cluster.
type Replica struct {
	ID    string
	GRPC  string
	Ctl   *controller.Controller
	FSM   *controller.FSM
	Raft  *raft.Raft
	trans *raft.InmemTransport
	parts cluster.Parts
	srv   *grpc.Server
	stop  context.CancelFunc
	done  chan struct{}
	up    bool
}

// Cluster is a controller cluster in a test.
type Cluster struct {
	t        testing.TB
	CA       *pki.CA
	Dir      string
	Replicas []*Replica
	voters   []raft.Server
	logger   *slog.Logger
	// SnapshotThreshold, if set before Start, makes replicas snapshot often.
	snapshotThreshold uint64
}

// Option tunes a test cluster.
type Option func(*Cluster)

// WithSnapshotThreshold makes replicas snapshot every n log entries.
func WithSnapshotThreshold(n uint64) Option { return func(c *Cluster) { c.snapshotThreshold = n } }

// Start runs n replicas (c1..cn), all bootstrapped with the same voters,
// and waits for a leader. Everything stops at the end of the test.
func Start(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, CA: ca, Dir: dir, logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	for _, o := range opts {
		o(c)
	}
	for i := range n {
		id := fmt.Sprintf("c%d", i+1)
		addr, trans := raft.NewInmemTransport(raft.ServerAddress(id))
		r := &Replica{ID: id, trans: trans, parts: cluster.Parts{
			Log: raft.NewInmemStore(), Snapshots: raft.NewInmemSnapshotStore(), Transport: trans,
		}}
		r.parts.Stable = r.parts.Log.(*raft.InmemStore)
		c.Replicas = append(c.Replicas, r)
		c.voters = append(c.voters, raft.Server{ID: raft.ServerID(id), Address: addr})
	}
	// Every replica can reach every other one.
	for _, a := range c.Replicas {
		for _, b := range c.Replicas {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
	for i := range c.Replicas {
		c.start(i, true)
	}
	t.Cleanup(func() {
		for i := range c.Replicas {
			c.Stop(i)
		}
	})
	c.WaitLeader(10 * time.Second)
	return c
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func (c *Cluster) start(i int, bootstrap bool) {
	t := c.t
	r := c.Replicas[i]
	files, err := c.CA.IssueController(r.ID)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerTLS(c.CA.Files().Cert, files.Cert, files.Key, tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	addr := r.GRPC
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r.GRPC = ln.Addr().String()
	r.FSM = controller.NewFSM()
	rep, err := cluster.Start(cluster.Config{ID: r.ID, Bootstrap: bootstrap, Voters: c.voters, Timeouts: cluster.LAN,
		SnapshotThreshold: c.snapshotThreshold, LogOutput: io.Discard}, r.FSM, r.parts)
	if err != nil {
		t.Fatal(err)
	}
	r.Raft = rep.Raft
	r.Ctl = controller.New(controller.Config{ID: r.ID, GRPCAddr: r.GRPC, RaftAddr: r.ID}, r.Raft, r.FSM, c.logger.With("replica", r.ID))
	r.srv = grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS)))
	r.Ctl.Register(r.srv)
	go r.srv.Serve(ln)
	ctx, cancel := context.WithCancel(context.Background())
	r.stop, r.done, r.up = cancel, make(chan struct{}), true
	go func() {
		defer close(r.done)
		r.Ctl.Run(ctx)
	}()
}

// Stop stops replica i as a crash would: Raft and its gRPC server go away;
// its stores stay for Restart.
func (c *Cluster) Stop(i int) {
	r := c.Replicas[i]
	if !r.up {
		return
	}
	r.up = false
	r.stop()
	<-r.done
	r.srv.Stop()
	r.Raft.Shutdown().Error()
}

// Restart starts a stopped replica again on the same stores and address,
// with a fresh transport connected to the others.
func (c *Cluster) Restart(i int) {
	r := c.Replicas[i]
	_, r.trans = raft.NewInmemTransport(r.trans.LocalAddr())
	r.parts.Transport = r.trans
	c.Heal(i)
	c.start(i, false)
}

// Partition cuts replica i off from the others (both ways).
func (c *Cluster) Partition(i int) {
	r := c.Replicas[i]
	r.trans.DisconnectAll()
	for _, o := range c.Replicas {
		if o != r {
			o.trans.Disconnect(r.trans.LocalAddr())
		}
	}
}

// Heal reconnects replica i.
func (c *Cluster) Heal(i int) {
	r := c.Replicas[i]
	for _, o := range c.Replicas {
		if o != r {
			r.trans.Connect(o.trans.LocalAddr(), o.trans)
			o.trans.Connect(r.trans.LocalAddr(), r.trans)
		}
	}
}

// Leader returns the index of the replica that leads now, or -1.
func (c *Cluster) Leader() int {
	for i, r := range c.Replicas {
		if r.up && r.Raft.State() == raft.Leader {
			return i
		}
	}
	return -1
}

// WaitLeader waits until exactly one running replica leads and returns it.
func (c *Cluster) WaitLeader(timeout time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if i := c.Leader(); i >= 0 {
			return i
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("no leader within %v", timeout)
	return -1
}

// Addrs are the gRPC addresses of all replicas.
func (c *Cluster) Addrs() []string {
	var out []string
	for _, r := range c.Replicas {
		out = append(out, r.GRPC)
	}
	return out
}

// Files issues (or reuses) certificate files for an identity.
func (c *Cluster) Files(id pki.Identity) pki.Files {
	c.t.Helper()
	var (
		f   pki.Files
		err error
	)
	switch id.Kind {
	case pki.KindNode:
		f, err = c.CA.IssueNode(id.ID)
	case pki.KindSAE:
		f, err = c.CA.IssueSAE(id.ID)
	case pki.KindOperator:
		f, err = c.CA.IssueOperator(id.ID)
	case pki.KindController:
		f, err = c.CA.IssueController(id.ID)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

// ClientTLS is a client TLS configuration with id's certificate.
func (c *Cluster) ClientTLS(id pki.Identity) *tls.Config {
	c.t.Helper()
	f := c.Files(id)
	cfg, err := pki.ClientTLS(c.CA.Files().Cert, f.Cert, f.Key)
	if err != nil {
		c.t.Fatal(err)
	}
	return cfg
}

// Client is a leader-following client with id's certificate, closed at the
// end of the test.
func (c *Cluster) Client(id pki.Identity) *ctlclient.Client {
	c.t.Helper()
	cl, err := ctlclient.New(c.Addrs(), c.ClientTLS(id))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}
