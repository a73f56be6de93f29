package controller_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/controllertest"
	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/controller/state"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
)

var operator = pki.Identity{Kind: pki.KindOperator, ID: "ops"}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// net runs a NetworkService write through the leader-following client.
func write(t *testing.T, cl *ctlclient.Client, f func(context.Context, qkdv1.NetworkServiceClient) error) {
	t.Helper()
	err := cl.Do(ctx(t), func(ctx context.Context, cc *grpc.ClientConn) error { return f(ctx, ctlclient.Network(cc)) })
	if err != nil {
		t.Fatal(err)
	}
}

func addNode(name string) func(context.Context, qkdv1.NetworkServiceClient) error {
	return func(ctx context.Context, n qkdv1.NetworkServiceClient) error {
		_, err := n.AddNode(ctx, &qkdv1.AddNodeRequest{Name: name})
		return err
	}
}

func addLink(name, a, b string) func(context.Context, qkdv1.NetworkServiceClient) error {
	return func(ctx context.Context, n qkdv1.NetworkServiceClient) error {
		_, err := n.AddLink(ctx, &qkdv1.AddLinkRequest{Name: name, NodeA: a, NodeB: b})
		return err
	}
}

func addSAE(id, node string) func(context.Context, qkdv1.NetworkServiceClient) error {
	return func(ctx context.Context, n qkdv1.NetworkServiceClient) error {
		_, err := n.AddSAE(ctx, &qkdv1.AddSAERequest{SaeId: id, Node: node})
		return err
	}
}

// snapshots returns each running replica's state once all have applied
// the leader's last index.
func converged(t *testing.T, c *controllertest.Cluster) [][]byte {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var snaps [][]byte
		var idx []uint64
		for _, r := range c.Replicas {
			if r.Raft.State().String() == "Shutdown" {
				continue
			}
			var b []byte
			r.FSM.Read(func(s *state.State) {
				idx = append(idx, s.Index())
				var err error
				if b, err = s.Snapshot(); err != nil {
					t.Fatal(err)
				}
			})
			snaps = append(snaps, b)
		}
		same := true
		for i := range snaps {
			same = same && bytes.Equal(snaps[i], snaps[0])
		}
		if same {
			return snaps
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas did not converge: indexes %v", idx)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLeaderLossAndCatchUp(t *testing.T) {
	c := controllertest.Start(t, 3)
	cl := c.Client(operator)
	write(t, cl, addNode("A"))
	write(t, cl, addNode("B"))
	converged(t, c)

	old := c.WaitLeader(5 * time.Second)
	c.Stop(old)
	start := time.Now()
	write(t, cl, addLink("FSO_AB", "A", "B")) // through the new leader
	t.Logf("write committed %v after the leader stopped", time.Since(start))
	if now := c.WaitLeader(5 * time.Second); now == old {
		t.Fatal("the stopped replica still leads")
	}
	write(t, cl, addSAE("SAE_A", "A"))

	// The old leader comes back and catches up with what it missed.
	c.Restart(old)
	snaps := converged(t, c)
	if len(snaps) != 3 {
		t.Fatalf("%d replicas running", len(snaps))
	}
	c.Replicas[old].FSM.Read(func(s *state.State) {
		if _, ok := s.Link("FSO_AB"); !ok {
			t.Error("restarted replica lacks the link committed while it was down")
		}
		if n, _ := s.SAENode("SAE_A"); n != "A" {
			t.Error("restarted replica lacks the SAE")
		}
	})
}

func TestPartitionedLeader(t *testing.T) {
	c := controllertest.Start(t, 3)
	cl := c.Client(operator)
	write(t, cl, addNode("A"))
	old := c.WaitLeader(5 * time.Second)
	c.Partition(old)
	// The majority elects a leader of its own and takes writes; the old
	// leader cannot commit anything (it has no quorum).
	write(t, cl, addNode("B"))
	var oldHasB bool
	c.Replicas[old].FSM.Read(func(s *state.State) { _, oldHasB = s.Node("B") })
	if oldHasB {
		t.Fatal("partitioned replica applied a write made without it")
	}
	c.Heal(old)
	converged(t, c)
	c.Replicas[old].FSM.Read(func(s *state.State) { _, oldHasB = s.Node("B") })
	if !oldHasB {
		t.Fatal("healed replica did not catch up")
	}
}

func TestSnapshotInstallOnLaggingReplica(t *testing.T) {
	c := controllertest.Start(t, 3, controllertest.WithSnapshotThreshold(16))
	cl := c.Client(operator)
	leader := c.WaitLeader(5 * time.Second)
	lag := (leader + 1) % 3
	c.Stop(lag)
	for i := range 60 {
		write(t, cl, addNode(fmt.Sprintf("N%d", i)))
	}
	// Snapshot and compact the leader's log, so the lagging replica can only
	// catch up by installing the snapshot.
	leader = c.WaitLeader(5 * time.Second)
	if err := c.Replicas[leader].Raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	c.Restart(lag)
	converged(t, c)
	if got := c.Replicas[lag].Raft.Stats()["last_snapshot_index"]; got == "0" {
		t.Error("the lagging replica caught up without installing a snapshot")
	}
	c.Replicas[lag].FSM.Read(func(s *state.State) {
		if n, _, _ := s.Counts(); n != 60 {
			t.Errorf("lagging replica has %d nodes, want 60", n)
		}
	})
}

// agent is a node agent as the controller sees it: a Session client.
type agent struct {
	t      *testing.T
	name   string
	cl     *ctlclient.Client
	pushes chan *qkdv1.SessionResponse
}

func startAgent(t *testing.T, c *controllertest.Cluster, name string) *agent {
	a := &agent{t: t, name: name, cl: c.Client(pki.Identity{Kind: pki.KindNode, ID: name}), pushes: make(chan *qkdv1.SessionResponse, 64)}
	err := a.cl.Do(ctx(t), func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := ctlclient.Controller(cc).Register(ctx, &qkdv1.RegisterRequest{Node: name, AgentAddress: "127.0.0.1:1" + name, KmeId: "KME_" + name,
			Interfaces: []*qkdv1.Interface{{Link: "FSO_AB", Technology: "DV-QKD"}}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for sctx.Err() == nil {
			a.cl.Stream(sctx, func(ctx context.Context, cc *grpc.ClientConn) error {
				s, err := ctlclient.Controller(cc).Session(ctx)
				if err != nil {
					return err
				}
				if err := s.Send(&qkdv1.SessionRequest{Msg: &qkdv1.SessionRequest_Hello{Hello: &qkdv1.SessionHello{Node: name}}}); err != nil {
					return err
				}
				for {
					p, err := s.Recv()
					if err == io.EOF {
						return nil
					}
					if err != nil {
						return err
					}
					s.Send(&qkdv1.SessionRequest{Msg: &qkdv1.SessionRequest_Ack{Ack: &qkdv1.ConfigAck{ConfigVersion: p.GetConfigVersion()}}})
					a.pushes <- p
				}
			})
		}
	}()
	return a
}

// waitFor returns the first push whose tree satisfies ok.
func (a *agent) waitFor(what string, ok func(*qkd015.Node) bool) *qkdv1.SessionResponse {
	a.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case p := <-a.pushes:
			n, err := qkd015.Parse(p.GetQkdNode())
			if err != nil {
				a.t.Fatalf("node %s got an invalid configuration: %v", a.name, err)
			}
			if n.GetNodeName() != a.name {
				a.t.Fatalf("node %s got node %s's configuration", a.name, n.GetNodeName())
			}
			if ok(n) {
				return p
			}
		case <-timeout:
			a.t.Fatalf("node %s: no push with %s", a.name, what)
		}
	}
}

func hasApp(id string) func(*qkd015.Node) bool {
	return func(n *qkd015.Node) bool { _, ok := qkd015.Apps(n)[id]; return ok }
}

func TestApplicationFlowAndReconcile(t *testing.T) {
	c := controllertest.Start(t, 3)
	ops := c.Client(operator)
	write(t, ops, addNode("A"))
	write(t, ops, addNode("B"))
	write(t, ops, addLink("FSO_AB", "A", "B"))
	write(t, ops, addSAE("SAE_A", "A"))
	write(t, ops, addSAE("SAE_B", "B"))
	a, b := startAgent(t, c, "A"), startAgent(t, c, "B")
	linkID := qkd015.LinkID("FSO_AB")
	b.waitFor("the link with A's address", func(n *qkd015.Node) bool {
		l := qkd015.Links(n)[linkID]
		return l != nil && l.GetRemoteAgentAddress() == "127.0.0.1:1A" && l.KmmRole == qkd015.RoleSlave
	})

	// B's KMM asks for the stream SAE_A -> SAE_B (its SAE was named slave).
	var resp *qkdv1.OpenApplicationResponse
	err := b.cl.Do(ctx(t), func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = ctlclient.Controller(cc).OpenApplication(ctx, &qkdv1.OpenApplicationRequest{MasterSaeId: "SAE_A", SlaveSaeId: "SAE_B"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	app := resp.GetApplication()
	if !resp.GetCreated() || app.GetMasterNode() != "A" || app.GetSlaveNode() != "B" || len(app.GetHops()) != 1 || app.GetHops()[0].GetMasterNode() != "A" {
		t.Fatalf("OpenApplication = %v", resp)
	}
	id := app.GetAppId()
	for _, ag := range []*agent{a, b} {
		p := ag.waitFor("the application", hasApp(id))
		if p.GetConfigVersion() < resp.GetConfigVersion() {
			t.Errorf("node %s: push version %d older than the commit %d", ag.name, p.GetConfigVersion(), resp.GetConfigVersion())
		}
	}
	// Asking again gives the same application, not a second one.
	err = a.cl.Do(ctx(t), func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := ctlclient.Controller(cc).OpenApplication(ctx, &qkdv1.OpenApplicationRequest{MasterSaeId: "SAE_A", SlaveSaeId: "SAE_B"})
		if err == nil && (r.GetCreated() || r.GetApplication().GetAppId() != id) {
			return fmt.Errorf("second open = %v", r)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	// Leader change: sessions move to the new leader, which pushes the full
	// configuration again; both agents converge on it.
	c.Stop(c.WaitLeader(5 * time.Second))
	c.WaitLeader(5 * time.Second)
	write(t, ops, addSAE("SAE_A2", "A"))
	a.waitFor("the new SAE after failover", func(n *qkd015.Node) bool { _, ok := qkd015.SAEs(n)["SAE_A2"]; return ok && hasApp(id)(n) })
	b.waitFor("the application after failover", hasApp(id))

	net := c.Replicas[c.WaitLeader(5*time.Second)].Ctl.Network()
	if len(net.GetApplications()) != 1 {
		t.Errorf("applications = %v", net.GetApplications())
	}
}

func TestAuthorizationAndBadRequests(t *testing.T) {
	c := controllertest.Start(t, 1)
	ops := c.Client(operator)
	write(t, ops, addNode("A"))
	write(t, ops, addNode("B"))
	write(t, ops, addSAE("SAE_A", "A"))
	write(t, ops, addSAE("SAE_B", "B"))
	sae := c.Client(pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"})
	node := c.Client(pki.Identity{Kind: pki.KindNode, ID: "A"})
	call := func(cl *ctlclient.Client, f func(context.Context, *grpc.ClientConn) error) error {
		return cl.Do(ctx(t), f)
	}
	for _, tc := range []struct {
		name string
		cl   *ctlclient.Client
		f    func(context.Context, *grpc.ClientConn) error
		code codes.Code
		msg  string
	}{
		{"SAE may not read the network", sae, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := ctlclient.Network(cc).GetNetwork(ctx, &qkdv1.GetNetworkRequest{})
			return err
		}, codes.PermissionDenied, "sae:SAE_A"},
		{"SAE may not open applications", sae, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := ctlclient.Controller(cc).OpenApplication(ctx, &qkdv1.OpenApplicationRequest{MasterSaeId: "SAE_A", SlaveSaeId: "SAE_B"})
			return err
		}, codes.PermissionDenied, "may not"},
		{"node may not change the network", node, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := ctlclient.Network(cc).AddNode(ctx, &qkdv1.AddNodeRequest{Name: "X"})
			return err
		}, codes.PermissionDenied, "node:A"},
		{"node may not register another", node, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := ctlclient.Controller(cc).Register(ctx, &qkdv1.RegisterRequest{Node: "B"})
			return err
		}, codes.PermissionDenied, `register node "B"`},
		{"operator may not register a node", ops, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := ctlclient.Controller(cc).Register(ctx, &qkdv1.RegisterRequest{Node: "A"})
			return err
		}, codes.PermissionDenied, "operator:ops"},
		{"node may not join the Raft cluster", node, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := ctlclient.Cluster(cc).Join(ctx, &qkdv1.JoinRequest{Id: "A", RaftAddress: "x:1", GrpcAddress: "x:2"})
			return err
		}, codes.PermissionDenied, "node:A"},
		{"no path between nodes", node, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := ctlclient.Controller(cc).OpenApplication(ctx, &qkdv1.OpenApplicationRequest{MasterSaeId: "SAE_A", SlaveSaeId: "SAE_B"})
			return err
		}, codes.FailedPrecondition, "no path of enabled QKD links"},
		{"unknown SAE", node, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := ctlclient.Controller(cc).OpenApplication(ctx, &qkdv1.OpenApplicationRequest{MasterSaeId: "SAE_A", SlaveSaeId: "SAE_Z"})
			return err
		}, codes.NotFound, `unknown SAE "SAE_Z"`},
		{"link to unknown node", ops, func(ctx context.Context, cc *grpc.ClientConn) error {
			return addLink("L", "A", "Z")(ctx, ctlclient.Network(cc))
		}, codes.NotFound, `node "Z"`},
		{"bad SAE ID", ops, func(ctx context.Context, cc *grpc.ClientConn) error {
			return addSAE("bad/id", "A")(ctx, ctlclient.Network(cc))
		}, codes.InvalidArgument, "SAE id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before []byte
			c.Replicas[0].FSM.Read(func(s *state.State) { before, _ = s.Snapshot() })
			err := call(tc.cl, tc.f)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tc.code, tc.msg)
			}
			var after []byte
			c.Replicas[0].FSM.Read(func(s *state.State) { after, _ = s.Snapshot() })
			if !bytes.Equal(trimIndex(before), trimIndex(after)) {
				t.Error("refused request changed the state")
			}
		})
	}
}

func trimIndex(b []byte) []byte { return b[bytes.Index(b, []byte(`"members"`)):] }
