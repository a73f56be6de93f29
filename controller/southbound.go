package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/controller/state"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
)

// southbound serves ControllerService to node agents.
type southbound struct {
	qkdv1.UnimplementedControllerServiceServer
	c *Controller
}

// callerOf returns the caller's identity if its kind is one of kinds.
func callerOf(ctx context.Context, kinds ...pki.Kind) (pki.Identity, error) {
	id, err := pki.Caller(ctx)
	if err != nil {
		return pki.Identity{}, status.Errorf(codes.Unauthenticated, "%v", err)
	}
	for _, k := range kinds {
		if id.Kind == k {
			return id, nil
		}
	}
	return pki.Identity{}, status.Errorf(codes.PermissionDenied, "%s may not call this", id)
}

func (s *southbound) Register(ctx context.Context, req *qkdv1.RegisterRequest) (*qkdv1.RegisterResponse, error) {
	id, err := callerOf(ctx, pki.KindNode)
	if err != nil {
		return nil, err
	}
	if req.GetNode() != id.ID {
		return nil, status.Errorf(codes.PermissionDenied, "node %s may not register node %q", id.ID, req.GetNode())
	}
	spec := state.NodeSpec{
		Name: req.GetNode(), KMEID: req.GetKmeId(), AgentAddress: req.GetAgentAddress(), Version: req.GetVersion(),
		Capabilities: state.Capabilities{
			LinkStats: req.GetCapabilities().GetLinkStatsSupport(),
			AppStats:  req.GetCapabilities().GetApplicationStatsSupport(),
			KeyRelay:  req.GetCapabilities().GetKeyRelayModeEnable(),
		},
	}
	for _, in := range req.GetInterfaces() {
		spec.Interfaces = append(spec.Interfaces, state.Interface{ID: in.GetQkdiId(), Link: in.GetLink(), Model: in.GetModel(), Technology: in.GetTechnology()})
	}
	r, err := s.c.propose(ctx, state.Command{Op: state.OpRegister, Node: &spec})
	if err != nil {
		return nil, err
	}
	s.c.logger.Info("agent registered", "node", spec.Name, "address", spec.AgentAddress, "interfaces", len(spec.Interfaces), "index", r.Index)
	return &qkdv1.RegisterResponse{ConfigVersion: r.Index}, nil
}

func (s *southbound) Session(stream qkdv1.ControllerService_SessionServer) error {
	ctx := stream.Context()
	id, err := callerOf(ctx, pki.KindNode)
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "a session starts with hello")
	}
	if hello.GetNode() != id.ID {
		return status.Errorf(codes.PermissionDenied, "node %s may not open a session for node %q", id.ID, hello.GetNode())
	}
	sess, ok := s.c.hub.attach(id.ID)
	if !ok {
		return s.c.notLeader()
	}
	defer s.c.hub.detach(sess)
	s.c.logger.Info("agent session opened", "node", id.ID, "agent_version", hello.GetConfigVersion())
	defer s.c.logger.Info("agent session closed", "node", id.ID)

	recvErr := make(chan error, 1)
	go func() { recvErr <- s.receive(id.ID, stream) }()
	for {
		select {
		case p := <-sess.mailbox:
			if err := stream.Send(p); err != nil {
				return err
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-sess.closed:
			return s.c.notLeader()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// receive takes the agent's acknowledgements, status and notifications.
func (s *southbound) receive(node string, stream qkdv1.ControllerService_SessionServer) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		switch {
		case m.GetAck() != nil:
			a := m.GetAck()
			s.c.hub.report(node, func(l *nodeLive) {
				if a.GetError() == "" {
					l.applied = a.GetConfigVersion()
				}
				l.lastError = a.GetError()
			})
			if a.GetError() != "" {
				s.c.logger.Warn("agent refused configuration", "node", node, "version", a.GetConfigVersion(), "err", a.GetError())
			}
		case m.GetStatus() != nil:
			st := m.GetStatus()
			s.c.hub.report(node, func(l *nodeLive) { l.status = st })
		case m.GetNotification() != nil:
			n := m.GetNotification()
			s.c.hub.report(node, func(*nodeLive) {})
			s.c.logger.Info("notification", "node", node, "kind", n.GetKind(), "link", n.GetLink(), "app_id", n.GetAppId(),
				"status", n.GetStatus(), "severity", n.GetSeverity(), "message", n.GetMessage())
		}
	}
}

func (s *southbound) OpenApplication(ctx context.Context, req *qkdv1.OpenApplicationRequest) (*qkdv1.OpenApplicationResponse, error) {
	id, err := callerOf(ctx, pki.KindNode, pki.KindOperator)
	if err != nil {
		return nil, err
	}
	master, slave := req.GetMasterSaeId(), req.GetSlaveSaeId()
	for _, v := range []struct{ field, id string }{{"master_sae_id", master}, {"slave_sae_id", slave}} {
		if err := pki.ValidID(v.id); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%s: %v", v.field, err)
		}
	}
	if master == slave {
		return nil, status.Errorf(codes.InvalidArgument, "master and slave SAE are both %s", master)
	}
	// Only the leader has every committed write applied; a follower would
	// answer "unknown SAE" for one just added.
	if err := s.c.verifyLeader(); err != nil {
		return nil, err
	}
	appID := qkd015.AppID(master, slave)
	minBPS := req.GetQos().GetMinBandwidth()
	var (
		existing state.AppInfo
		found    bool
		mn, sn   string
		okM, okS bool
		path     []string
		index    uint64
		refusal  error
	)
	c := s.c
	live := c.hub.snapshotLive()
	c.fsm.Read(func(st *state.State) {
		index = st.Index()
		existing, found = st.App(appID)
		mn, okM = st.SAENode(master)
		sn, okS = st.SAENode(slave)
		if !found && okM && okS && mn != sn {
			path, refusal = choosePath(st, live, mn, sn, minBPS)
		}
	})
	switch {
	case !okM:
		return nil, status.Errorf(codes.NotFound, "unknown SAE %q", master)
	case !okS:
		return nil, status.Errorf(codes.NotFound, "unknown SAE %q", slave)
	case id.Kind == pki.KindNode && id.ID != mn && id.ID != sn:
		return nil, status.Errorf(codes.PermissionDenied, "node %s serves neither SAE %s nor SAE %s", id.ID, master, slave)
	case mn == sn:
		return nil, status.Errorf(codes.InvalidArgument, "SAEs %s and %s are both attached to node %s", master, slave, mn)
	case found:
		return &qkdv1.OpenApplicationResponse{Application: c.appProto(existing, nil), ConfigVersion: index}, nil
	case refusal != nil:
		return nil, refusal
	}
	q := req.GetQos()
	spec := state.AppSpec{
		ID: appID, MasterSAE: master, SlaveSAE: slave, Path: path, Priority: req.GetPriority(), ChunkSize: req.GetKeyChunkSize(),
		Created: c.cfg.Clock().UTC().Format(time.RFC3339),
		QoS: state.QoS{MaxBandwidth: q.GetMaxBandwidth(), MinBandwidth: q.GetMinBandwidth(), Jitter: q.GetJitter(), TTL: q.GetTtl(),
			SharedPath: q.GetClientsSharedPathEnable(), SharedKeys: q.GetClientsSharedKeysRequired()},
	}
	if sae := req.GetConnectSaeId(); sae != "" {
		if n := map[string]string{master: mn, slave: sn}[sae]; n == "" || (id.Kind == pki.KindNode && n != id.ID) {
			return nil, status.Errorf(codes.PermissionDenied, "%s may not connect SAE %q", id, sae)
		}
		spec.Connected = []string{sae}
	}
	r, err := c.propose(ctx, state.Command{Op: state.OpOpenApp, App: &spec})
	if err != nil {
		return nil, err
	}
	info, _ := r.Value.(*state.AppInfo)
	if info == nil {
		return nil, status.Error(codes.Internal, "open_app gave no application")
	}
	created := r.Err == nil
	if created {
		c.logger.Info("application opened", "app_id", appID, "master_sae", master, "slave_sae", slave, "path", path, "index", r.Index)
	}
	return &qkdv1.OpenApplicationResponse{Application: c.appProto(*info, nil), ConfigVersion: r.Index, Created: created}, nil
}

// linkLoad is what a link can still carry: its secret key rate as the
// Master node last measured it, what the applications on it are promised,
// and its pool level.
type linkLoad struct {
	skr, reserved, pool uint64
	// down is true when the link is disabled or its Master node reports it
	// OFF (its driver is not running): no new path uses it, and the
	// applications on it are rerouted.
	down bool
}

func (l linkLoad) available() uint64 {
	if l.reserved >= l.skr {
		return 0
	}
	return l.skr - l.reserved
}

func loads(st *state.State, live map[string]nodeLive) map[string]linkLoad {
	out := map[string]linkLoad{}
	for _, l := range st.Links() {
		ld := linkLoad{down: !l.Enabled}
		for _, ls := range live[l.Master].status.GetLinks() {
			if ls.GetLink() == l.Name {
				ld.skr, ld.pool = ls.GetSkr(), ls.GetPoolKeys()
				ld.down = ld.down || ls.GetStatus() == "OFF"
			}
		}
		for _, id := range l.Apps {
			a, _ := st.App(id)
			ld.reserved += uint64(a.QoS.MinBandwidth)
		}
		out[l.Name] = ld
	}
	return out
}

// choosePath picks the path for a new application from node from to node
// to: the fewest hops, preferring links with less of their key rate promised
// and more key in their pool; with minBPS, only links that can still carry
// it (a link whose rate is not measured yet is taken as able to).
func choosePath(st *state.State, live map[string]nodeLive, from, to string, minBPS uint32) ([]string, error) {
	return choosePathAmong(st, loads(st, live), from, to, minBPS)
}

// choosePathAmong is choosePath with the links' loads given.
func choosePathAmong(st *state.State, ld map[string]linkLoad, from, to string, minBPS uint32) ([]string, error) {
	weight := func(l state.LinkInfo) float64 {
		x := ld[l.Name]
		if x.down {
			return -1
		}
		w := 1.0
		if x.skr > 0 {
			if minBPS > 0 && x.available() < uint64(minBPS) {
				return -1
			}
			w += float64(x.reserved) / float64(x.skr)
		}
		return w + 1/(1+float64(x.pool)/1024)
	}
	if p := st.ShortestPath(from, to, weight); p != nil {
		return p, nil
	}
	up := func(l state.LinkInfo) float64 {
		if ld[l.Name].down {
			return -1
		}
		return 1
	}
	if st.ShortestPath(from, to, up) == nil {
		return nil, refuse(ctlclient.ReasonNoPath, nil, "no path of enabled QKD links joins node %s to node %s", from, to)
	}
	// There is a path, but it cannot carry minBPS: say what the best one can.
	best := uint64(0)
	if p := st.ShortestPath(from, to, func(l state.LinkInfo) float64 {
		if ld[l.Name].down {
			return -1
		}
		return 1e12 / float64(1+ld[l.Name].available())
	}); p != nil {
		best = ^uint64(0)
		for _, name := range p {
			if x := ld[name]; x.skr > 0 {
				best = min(best, x.available())
			}
		}
	}
	return nil, refuse(ctlclient.ReasonQoSNotMet, map[string]string{"available_bps": strconv.FormatUint(best, 10)},
		"no path from node %s to node %s can carry min_bandwidth %d bit/s; the best can carry %d", from, to, minBPS, best)
}

func refuse(reason string, md map[string]string, format string, a ...any) error {
	st := status.New(codes.FailedPrecondition, fmt.Sprintf(format, a...))
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: "qkdnet", Metadata: md}); err == nil {
		st = d
	}
	return st.Err()
}

func (s *southbound) ConnectApplication(ctx context.Context, req *qkdv1.ConnectApplicationRequest) (*qkdv1.ConnectApplicationResponse, error) {
	id, err := callerOf(ctx, pki.KindNode)
	if err != nil {
		return nil, err
	}
	if err := s.c.verifyLeader(); err != nil {
		return nil, err
	}
	var node string
	s.c.fsm.Read(func(st *state.State) { node, _ = st.SAENode(req.GetSaeId()) })
	if node != id.ID {
		return nil, status.Errorf(codes.PermissionDenied, "node %s does not serve SAE %q", id.ID, req.GetSaeId())
	}
	op := state.OpLeaveApp
	if req.GetConnect() {
		op = state.OpJoinApp
	}
	r, err := s.c.propose(ctx, state.Command{Op: op, Name: req.GetAppId(), SAE: &state.SAESpec{ID: req.GetSaeId()}})
	if err != nil {
		return nil, err
	}
	out := &qkdv1.ConnectApplicationResponse{ConfigVersion: r.Index}
	if a, _ := r.Value.(*state.AppInfo); a != nil {
		out.Application = s.c.appProto(*a, nil)
	}
	s.c.logger.Info("application connection", "app_id", req.GetAppId(), "sae", req.GetSaeId(), "connect", req.GetConnect(), "index", r.Index)
	return out, nil
}
