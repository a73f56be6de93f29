package testbed

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// bringUpControllers starts every replica, waits for a leader with all of
// them as voters, and writes the topology's nodes, links and SAEs into the
// controller (what is already there, from an earlier run, is kept).
func (n *Network) bringUpControllers(ctx context.Context) error {
	for i := range n.plan.Controllers {
		if err := n.startController(&n.plan.Controllers[i]); err != nil {
			return err
		}
	}
	cl, err := n.ControllerClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, n.opts.ReadyTimeout)
	defer cancel()
	if err := n.waitCluster(ctx, cl); err != nil {
		return err
	}
	return n.seed(ctx, cl)
}

// ControllerClient is a leader-following client of the network's
// controller with the operator certificate. The caller closes it.
func (n *Network) ControllerClient() (*ctlclient.Client, error) {
	cfg, err := n.operatorTLS()
	if err != nil {
		return nil, err
	}
	return ctlclient.New(n.plan.Endpoints.ControllerAddrs(), cfg)
}

// EnableLink enables or disables a QKD link through the controller, as
// `qkdctl enable-link`/`disable-link` do (disabled, its drivers stop),
// following the leader until ctx ends.
func (n *Network) EnableLink(ctx context.Context, link string, on bool) error {
	cl, err := n.ControllerClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	return cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := ctlclient.Network(cc).EnableLink(ctx, &qkdv1.EnableLinkRequest{Name: link, Enable: on})
		return err
	})
}

func (n *Network) operatorTLS() (*tls.Config, error) {
	return pki.ClientTLS(filepath.Join(n.plan.StateDir, filepath.FromSlash(n.plan.Endpoints.CACert)), n.plan.Operator.Cert, n.plan.Operator.Key)
}

// poll calls check every 100 ms until it reports done, reporting progress
// every few seconds. It gives up when the network fails or ctx ends, with
// what the last check said was missing.
func (n *Network) poll(ctx context.Context, what string, check func() (done bool, why string)) error {
	last := time.Now()
	for {
		done, why := check()
		if done {
			return nil
		}
		if time.Since(last) > 3*time.Second {
			last = time.Now()
			n.opts.Logger.Info("waiting for "+what, "last", why)
		}
		select {
		case <-n.done:
			if err := n.Err(); err != nil {
				return err
			}
			return errors.New("network stopped while starting")
		case <-ctx.Done():
			return fmt.Errorf("%s: not ready after %s: %s", what, n.opts.ReadyTimeout, why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitCluster waits until a leader knows every replica as a voter with its
// gRPC address.
func (n *Network) waitCluster(ctx context.Context, cl *ctlclient.Client) error {
	want := len(n.plan.Controllers)
	return n.poll(ctx, "the controller cluster", func() (bool, string) {
		var st *qkdv1.StatusResponse
		err := cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
			var err error
			st, err = ctlclient.Cluster(cc).Status(ctx, &qkdv1.StatusRequest{})
			if err == nil && st.GetState() != "Leader" {
				// Ask the leader itself: only it knows the whole membership.
				return status.Errorf(codes.Unavailable, "replica %s is %s", st.GetId(), st.GetState())
			}
			return err
		})
		if err != nil {
			return false, err.Error()
		}
		voters := 0
		for _, m := range st.GetMembers() {
			if m.GetSuffrage() == "Voter" && m.GetGrpcAddress() != "" {
				voters++
			}
		}
		if voters != want {
			return false, fmt.Sprintf("%d of %d replicas are voters", voters, want)
		}
		n.opts.Logger.Info("controller cluster up", "leader", st.GetLeaderId(), "replicas", want, "term", st.GetTerm())
		return true, ""
	})
}

// seed writes the topology into the controller. Writes that find the
// object already there (a restart) are fine.
func (n *Network) seed(ctx context.Context, cl *ctlclient.Client) error {
	top := n.plan.Topology
	do := func(what string, f func(context.Context, qkdv1.NetworkServiceClient) error) error {
		err := cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error { return f(ctx, ctlclient.Network(cc)) })
		if err != nil && status.Code(err) != codes.AlreadyExists {
			return fmt.Errorf("controller: %s: %s", what, status.Convert(err).Message())
		}
		return nil
	}
	for _, nd := range top.Nodes {
		if err := do("add node "+nd.ID, func(ctx context.Context, c qkdv1.NetworkServiceClient) error {
			_, err := c.AddNode(ctx, &qkdv1.AddNodeRequest{Name: nd.ID, KmeId: nd.KMEID})
			return err
		}); err != nil {
			return err
		}
	}
	for _, l := range top.Links {
		if err := do("add link "+l.ID, func(ctx context.Context, c qkdv1.NetworkServiceClient) error {
			_, err := c.AddLink(ctx, &qkdv1.AddLinkRequest{Name: l.ID, NodeA: l.A, NodeB: l.B, MasterNode: l.Master,
				KeySize: uint32(8 * l.KeyBytes), Technology: technologyOf(l.Kind)})
			return err
		}); err != nil {
			return err
		}
	}
	for _, s := range top.SAEs {
		if err := do("add SAE "+s.ID, func(ctx context.Context, c qkdv1.NetworkServiceClient) error {
			_, err := c.AddSAE(ctx, &qkdv1.AddSAERequest{SaeId: s.ID, Node: s.Node})
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

// technologyOf maps a topology link kind to an ETSI 015 technology; kinds
// that name none (FSO-QKD, QKD) are taken as DV-QKD.
func technologyOf(kind string) string {
	switch kind {
	case "CV-QKD", "DV-QKD", "DV-QKD-COW", "DV-QKD-2Ws":
		return kind
	}
	return "DV-QKD"
}

// waitConverged waits until every agent holds a session with the leader
// and has applied a configuration.
func (n *Network) waitConverged(ctx context.Context) error {
	cl, err := n.ControllerClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, n.opts.ReadyTimeout)
	defer cancel()
	return n.poll(ctx, "the agents to take the controller's configuration", func() (bool, string) {
		var net *qkdv1.GetNetworkResponse
		err := cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
			var err error
			net, err = ctlclient.Network(cc).GetNetwork(ctx, &qkdv1.GetNetworkRequest{})
			return err
		})
		if err != nil {
			return false, err.Error()
		}
		for _, nd := range net.GetNodes() {
			if !nd.GetConnected() || nd.GetAppliedVersion() == 0 {
				return false, fmt.Sprintf("node %s has not applied the controller's configuration yet", nd.GetName())
			}
		}
		return true, ""
	})
}

// ControllerPID is the process ID of controller replica id, or 0.
func (n *Network) ControllerPID(id string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p, ok := n.procs[controllerKey(id)]; ok && p.running() {
		return p.cmd.Process.Pid
	}
	return 0
}

func (n *Network) controllerPlan(id string) (*ControllerPlan, error) {
	for i := range n.plan.Controllers {
		if n.plan.Controllers[i].ID == id {
			return &n.plan.Controllers[i], nil
		}
	}
	return nil, fmt.Errorf("no controller %q in this network", id)
}

// KillController sends SIGKILL to controller replica id and waits until it
// is gone. RestartController brings it back.
func (n *Network) KillController(id string) error {
	if _, err := n.controllerPlan(id); err != nil {
		return err
	}
	return n.kill(controllerKey(id))
}

// RestartController starts a killed replica again on its data dir and waits
// until its gRPC port serves.
func (n *Network) RestartController(ctx context.Context, id string) error {
	cp, err := n.controllerPlan(id)
	if err != nil {
		return err
	}
	if err := n.startController(cp); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, n.opts.ReadyTimeout)
	defer cancel()
	for {
		conn, err := net.DialTimeout("tcp", loopback(cp.Ports.GRPC), time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("controller %s not serving: %w", id, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Leader returns the ID of the controller replica that leads now.
func (n *Network) Leader(ctx context.Context) (string, error) {
	cl, err := n.ControllerClient()
	if err != nil {
		return "", err
	}
	defer cl.Close()
	var id string
	err = cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		st, err := ctlclient.Cluster(cc).Status(ctx, &qkdv1.StatusRequest{})
		if err != nil {
			return err
		}
		if st.GetLeaderId() == "" {
			return status.Error(codes.Unavailable, "no leader yet")
		}
		id = st.GetLeaderId()
		return nil
	})
	return id, err
}
