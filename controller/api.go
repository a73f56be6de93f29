package controller

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"strconv"

	"github.com/hashicorp/raft"
	"github.com/openconfig/ygot/ygot"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/state"
	"github.com/qkdnet/qkdnet/gen/go/etsi015"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
)

// clusterAPI serves ClusterService.
type clusterAPI struct {
	qkdv1.UnimplementedClusterServiceServer
	c *Controller
}

func (a *clusterAPI) Status(ctx context.Context, _ *qkdv1.StatusRequest) (*qkdv1.StatusResponse, error) {
	if _, err := callerOf(ctx, pki.KindOperator, pki.KindController, pki.KindNode); err != nil {
		return nil, err
	}
	return a.c.Status()
}

// Status reports the cluster as this replica sees it.
func (c *Controller) Status() (*qkdv1.StatusResponse, error) {
	stats := c.raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(stats[k], 10, 64); return v }
	lid, laddr := c.leader()
	out := &qkdv1.StatusResponse{
		Id: c.cfg.ID, State: c.raft.State().String(), LeaderId: lid, LeaderGrpc: laddr,
		Term: u("term"), LastIndex: u("last_log_index"), CommitIndex: u("commit_index"), AppliedIndex: u("applied_index"),
		Agents: c.hub.agents(),
	}
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, status.Errorf(codes.Unavailable, "raft configuration: %v", err)
	}
	var members map[string]state.Member
	c.fsm.Read(func(s *state.State) { members = s.Members() })
	for _, srv := range f.Configuration().Servers {
		out.Members = append(out.Members, &qkdv1.Member{
			Id: string(srv.ID), RaftAddress: string(srv.Address), GrpcAddress: members[string(srv.ID)].GRPC,
			Suffrage: srv.Suffrage.String(), Leader: string(srv.ID) == lid,
		})
	}
	return out, nil
}

func (a *clusterAPI) Join(ctx context.Context, req *qkdv1.JoinRequest) (*qkdv1.JoinResponse, error) {
	id, err := callerOf(ctx, pki.KindController)
	if err != nil {
		return nil, err
	}
	if req.GetId() != id.ID {
		return nil, status.Errorf(codes.PermissionDenied, "controller %s may not join as %q", id.ID, req.GetId())
	}
	if req.GetRaftAddress() == "" || req.GetGrpcAddress() == "" {
		return nil, status.Error(codes.InvalidArgument, "raft_address and grpc_address are required")
	}
	c := a.c
	if c.raft.State() != raft.Leader {
		return nil, c.notLeader()
	}
	f := c.raft.AddVoter(raft.ServerID(req.GetId()), raft.ServerAddress(req.GetRaftAddress()), 0, c.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		if err == raft.ErrNotLeader {
			return nil, c.notLeader()
		}
		return nil, status.Errorf(codes.Unavailable, "add voter %s: %v", req.GetId(), err)
	}
	r, err := c.propose(ctx, state.Command{Op: state.OpSetMember, Member: &state.Member{ID: req.GetId(), Raft: req.GetRaftAddress(), GRPC: req.GetGrpcAddress()}})
	if err != nil {
		return nil, err
	}
	c.logger.Info("replica joined", "id", req.GetId(), "raft", req.GetRaftAddress(), "grpc", req.GetGrpcAddress())
	return &qkdv1.JoinResponse{Index: r.Index}, nil
}

func (a *clusterAPI) Leave(ctx context.Context, req *qkdv1.LeaveRequest) (*qkdv1.LeaveResponse, error) {
	if _, err := callerOf(ctx, pki.KindController, pki.KindOperator); err != nil {
		return nil, err
	}
	c := a.c
	if c.raft.State() != raft.Leader {
		return nil, c.notLeader()
	}
	f := c.raft.RemoveServer(raft.ServerID(req.GetId()), 0, c.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		return nil, status.Errorf(codes.Unavailable, "remove %s: %v", req.GetId(), err)
	}
	r, err := c.propose(ctx, state.Command{Op: state.OpRemoveMember, Name: req.GetId()})
	if err != nil {
		return nil, err
	}
	return &qkdv1.LeaveResponse{Index: r.Index}, nil
}

// networkAPI serves NetworkService.
type networkAPI struct {
	qkdv1.UnimplementedNetworkServiceServer
	c *Controller
}

func (a *networkAPI) GetNetwork(ctx context.Context, _ *qkdv1.GetNetworkRequest) (*qkdv1.GetNetworkResponse, error) {
	if _, err := callerOf(ctx, pki.KindOperator, pki.KindController); err != nil {
		return nil, err
	}
	if err := a.c.verifyLeader(); err != nil {
		return nil, err
	}
	return a.c.Network(), nil
}

// verifyLeader makes reads come from the leader, which alone has every
// committed write applied and the agents' live reports; a follower (or a
// restarted replica still replaying its log) answers NOT_LEADER instead of
// a stale view.
func (c *Controller) verifyLeader() error {
	if c.raft.State() != raft.Leader || c.raft.VerifyLeader().Error() != nil {
		return c.notLeader()
	}
	return nil
}

// Network is the whole network: the replicated state, and the agents' live
// reports where this replica leads.
func (c *Controller) Network() *qkdv1.GetNetworkResponse {
	live := c.hub.snapshotLive()
	out := &qkdv1.GetNetworkResponse{}
	c.fsm.Read(func(s *state.State) {
		out.ConfigVersion = s.Index()
		saes := s.SAEs()
		for _, name := range s.NodeNames() {
			t, _ := s.Node(name)
			n := &qkdv1.NodeInfo{
				Name: name, QkdnId: t.GetQkdnId(), KmeId: t.GetKmeId(), AgentAddress: t.GetAgentAddress(),
				Status: enumName(t.GetQkdnStatus()),
			}
			for _, id := range sortedKeys(qkd015.Interfaces(t)) {
				it := qkd015.Interfaces(t)[id]
				n.Interfaces = append(n.Interfaces, &qkdv1.Interface{QkdiId: id, Link: it.GetQkdiAttPoint().GetDevice(), Model: it.GetQkdiModel(), Technology: enumName(it.GetQkdiType())})
			}
			for _, sae := range sortedKeys(saes) {
				if saes[sae] == name {
					n.Saes = append(n.Saes, sae)
				}
			}
			if l, ok := live[name]; ok {
				n.Connected = l.connected
				n.AppliedVersion = l.applied
				if !l.connected && n.Status == "OPERATING" {
					n.Status = "DOWN"
				}
			}
			out.Nodes = append(out.Nodes, n)
		}
		for _, l := range s.Links() {
			li := &qkdv1.LinkInfo{Name: l.Name, QkdlId: l.ID, NodeA: l.A, NodeB: l.B, MasterNode: l.Master, Type: "PHYS",
				Enable: l.Enabled, KeySize: l.KeySize, Applications: l.Apps}
			if t, ok := s.Node(l.Master); ok {
				if id := interfaceFor(t, l.Name); id != nil {
					li.Technology = enumName(id.GetQkdiType())
				}
			}
			if st := live[l.Master].status; st != nil {
				for _, ls := range st.GetLinks() {
					if ls.GetLink() == l.Name {
						li.Status, li.Skr, li.PoolKeys = ls.GetStatus(), ls.GetSkr(), ls.GetPoolKeys()
					}
				}
			}
			out.Links = append(out.Links, li)
		}
		for _, sae := range sortedKeys(saes) {
			out.Saes = append(out.Saes, &qkdv1.SAEInfo{SaeId: sae, Node: saes[sae]})
		}
		for _, app := range s.Apps() {
			out.Applications = append(out.Applications, c.appProto(app, live))
		}
	})
	return out
}

func (a *networkAPI) GetNodeConfig(ctx context.Context, req *qkdv1.GetNodeConfigRequest) (*qkdv1.GetNodeConfigResponse, error) {
	id, err := callerOf(ctx, pki.KindOperator, pki.KindController, pki.KindNode)
	if err != nil {
		return nil, err
	}
	if id.Kind == pki.KindNode && id.ID != req.GetNode() {
		return nil, status.Errorf(codes.PermissionDenied, "node %s may read only its own configuration", id.ID)
	}
	if err := a.c.verifyLeader(); err != nil {
		return nil, err
	}
	var (
		out  = &qkdv1.GetNodeConfigResponse{}
		rerr error
	)
	a.c.fsm.Read(func(s *state.State) {
		out.ConfigVersion = s.Index()
		out.QkdNode, rerr = s.Render(req.GetNode(), s.Index())
	})
	if rerr != nil {
		return nil, stateStatus(rerr)
	}
	return out, nil
}

// write checks that an operator asks and commits the command.
func (a *networkAPI) write(ctx context.Context, cmd state.Command) (*qkdv1.WriteResponse, error) {
	if _, err := callerOf(ctx, pki.KindOperator); err != nil {
		return nil, err
	}
	r, err := a.c.propose(ctx, cmd)
	if err != nil {
		return nil, err
	}
	a.c.logger.Info("network changed", "op", cmd.Op, "index", r.Index)
	return &qkdv1.WriteResponse{ConfigVersion: r.Index}, nil
}

func (a *networkAPI) AddNode(ctx context.Context, req *qkdv1.AddNodeRequest) (*qkdv1.WriteResponse, error) {
	return a.write(ctx, state.Command{Op: state.OpAddNode, Node: &state.NodeSpec{Name: req.GetName(), KMEID: req.GetKmeId(), Location: req.GetLocation()}})
}

func (a *networkAPI) RemoveNode(ctx context.Context, req *qkdv1.RemoveNodeRequest) (*qkdv1.WriteResponse, error) {
	return a.write(ctx, state.Command{Op: state.OpRemoveNode, Name: req.GetName()})
}

func (a *networkAPI) AddLink(ctx context.Context, req *qkdv1.AddLinkRequest) (*qkdv1.WriteResponse, error) {
	return a.write(ctx, state.Command{Op: state.OpAddLink, Link: &state.LinkSpec{
		Name: req.GetName(), A: req.GetNodeA(), B: req.GetNodeB(), Master: req.GetMasterNode(),
		KeySize: req.GetKeySize(), Technology: req.GetTechnology(), Disabled: req.GetDisabled(),
	}})
}

func (a *networkAPI) RemoveLink(ctx context.Context, req *qkdv1.RemoveLinkRequest) (*qkdv1.WriteResponse, error) {
	return a.write(ctx, state.Command{Op: state.OpRemoveLink, Name: req.GetName()})
}

func (a *networkAPI) EnableLink(ctx context.Context, req *qkdv1.EnableLinkRequest) (*qkdv1.WriteResponse, error) {
	return a.write(ctx, state.Command{Op: state.OpEnableLink, Name: req.GetName(), Link: &state.LinkSpec{Disabled: !req.GetEnable()}})
}

func (a *networkAPI) AddSAE(ctx context.Context, req *qkdv1.AddSAERequest) (*qkdv1.WriteResponse, error) {
	return a.write(ctx, state.Command{Op: state.OpAddSAE, SAE: &state.SAESpec{ID: req.GetSaeId(), Node: req.GetNode()}})
}

func (a *networkAPI) RemoveSAE(ctx context.Context, req *qkdv1.RemoveSAERequest) (*qkdv1.WriteResponse, error) {
	return a.write(ctx, state.Command{Op: state.OpRemoveSAE, Name: req.GetSaeId()})
}

func (a *networkAPI) RemoveApplication(ctx context.Context, req *qkdv1.RemoveApplicationRequest) (*qkdv1.WriteResponse, error) {
	return a.write(ctx, state.Command{Op: state.OpRemoveApp, Name: req.GetAppId()})
}

// appProto describes an application, with its live status where known.
func (c *Controller) appProto(a state.AppInfo, live map[string]nodeLive) *qkdv1.Application {
	out := &qkdv1.Application{
		AppId: a.ID, MasterSaeId: a.MasterSAE, SlaveSaeId: a.SlaveSAE, MasterNode: a.MasterNode, SlaveNode: a.SlaveNode,
		Priority: a.Priority, ConnectedSaes: a.Connected, KeyChunkSize: a.ChunkSize, PathGeneration: a.Gen,
		Qos: &qkdv1.AppQoS{MaxBandwidth: a.QoS.MaxBandwidth, MinBandwidth: a.QoS.MinBandwidth, Jitter: a.QoS.Jitter, Ttl: a.QoS.TTL,
			ClientsSharedPathEnable: a.QoS.SharedPath, ClientsSharedKeysRequired: a.QoS.SharedKeys},
	}
	for i, name := range a.Path {
		h := &qkdv1.Hop{Link: name, QkdlId: qkd015.LinkID(name)}
		if i < len(a.Masters) && i+1 < len(a.Nodes) {
			h.MasterNode, h.SlaveNode = a.Masters[i], a.Nodes[i]
			if h.SlaveNode == h.MasterNode {
				h.SlaveNode = a.Nodes[i+1]
			}
		}
		out.Hops = append(out.Hops, h)
	}
	for _, d := range a.Drains {
		out.Draining = append(out.Draining, &qkdv1.DrainingPath{PathGeneration: d.Gen, Links: d.Path})
	}
	for node, l := range live {
		for _, as := range l.status.GetApplications() {
			if as.GetAppId() != a.ID {
				continue
			}
			if out.Statuses == nil {
				out.Statuses = map[string]string{}
			}
			out.Statuses[node] = as.GetStatus()
			if node == a.MasterNode {
				out.KeysDelivered = as.GetKeysDelivered()
			}
		}
	}
	return out
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K { return slices.Sorted(maps.Keys(m)) }

// interfaceFor returns the node's QKD module serving a link.
func interfaceFor(t *qkd015.Node, link string) *etsi015.EtsiQkdSdnNode_QkdNode_QkdInterfaces_QkdInterface {
	for _, id := range sortedKeys(qkd015.Interfaces(t)) {
		if it := qkd015.Interfaces(t)[id]; it.GetQkdiAttPoint().GetDevice() == link {
			return it
		}
	}
	return nil
}

// enumName is the YANG name of an enumerated value, "" if unset.
func enumName(e ygot.GoEnum) string {
	n, _ := qkd015.EnumName(e)
	return n
}
