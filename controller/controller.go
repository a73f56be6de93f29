// Package controller is the QKD SDN controller of the paper (its step 5):
// a Raft-replicated store of the network as ETSI GS QKD 015 data
// (controller/state), the gRPC services agents and operators use, and the
// pusher that keeps every connected agent on the configuration the state
// says it should run.
//
// Every write is proposed to Raft by the leader; a follower answers
// UNAVAILABLE with the leader's address (reason NOT_LEADER), and
// controller/ctlclient follows that hint. Agents hold a Session with the
// leader; when leadership moves, the old leader closes its sessions and the
// agents reconnect to the new one, which pushes them the full configuration
// again, so every agent converges whatever happened in between.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
	gnmipb "github.com/openconfig/gnmi/proto/gnmi"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/controller/gnmiserver"
	"github.com/qkdnet/qkdnet/controller/state"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// Config describes a controller replica's public face.
type Config struct {
	// ID is the replica's Raft server ID.
	ID string
	// GRPCAddr is the address agents and operators dial (advertised to
	// clients in leader hints).
	GRPCAddr string
	// RaftAddr is the replica's Raft transport address.
	RaftAddr string
	// ApplyTimeout bounds one Raft commit; default 5 s.
	ApplyTimeout time.Duration
	// Clock is the leader's clock for creation times; default time.Now.
	Clock func() time.Time
	// RerouteInterval is how often the leader looks for applications on a
	// link that is down; default 250 ms. RerouteHoldoff is the least time
	// between two reroutes of one application, so a flapping link cannot
	// use up its generations; default 2 s.
	RerouteInterval, RerouteHoldoff time.Duration
}

// Controller is one replica.
type Controller struct {
	cfg    Config
	raft   *raft.Raft
	fsm    *FSM
	hub    *hub
	logger *slog.Logger
}

// New returns the controller over a started Raft replica and its FSM.
func New(cfg Config, r *raft.Raft, fsm *FSM, logger *slog.Logger) *Controller {
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = 5 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.RerouteInterval <= 0 {
		cfg.RerouteInterval = 250 * time.Millisecond
	}
	if cfg.RerouteHoldoff <= 0 {
		cfg.RerouteHoldoff = 2 * time.Second
	}
	return &Controller{cfg: cfg, raft: r, fsm: fsm, hub: newHub(), logger: logger}
}

// FSM returns the replica's state machine.
func (c *Controller) FSM() *FSM { return c.fsm }

// Register adds the controller's services to a gRPC server.
func (c *Controller) Register(s *grpc.Server) {
	qkdv1.RegisterControllerServiceServer(s, &southbound{c: c})
	qkdv1.RegisterClusterServiceServer(s, &clusterAPI{c: c})
	qkdv1.RegisterNetworkServiceServer(s, &networkAPI{c: c})
	gnmipb.RegisterGNMIServer(s, gnmiserver.New(gnmiserver.FSMReader(c.fsm), proposer{c}).WithLive(c))
}

// Run follows leadership until ctx is done: while this replica leads, it
// records its own address in the state and pushes configuration to the
// agents' sessions; when it stops leading, it closes them.
func (c *Controller) Run(ctx context.Context) error {
	obs := make(chan raft.Observation, 16)
	o := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	c.raft.RegisterObserver(o)
	defer c.raft.DeregisterObserver(o)

	var stop context.CancelFunc
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	leading := false
	check := func() {
		now := c.raft.State() == raft.Leader
		if now == leading {
			return
		}
		leading = now
		if now {
			c.logger.Info("leading the controller cluster", "replica", c.cfg.ID)
			var lctx context.Context
			lctx, stop = context.WithCancel(ctx)
			c.hub.open()
			go c.lead(lctx)
			return
		}
		c.logger.Info("no longer leading; closing agent sessions", "replica", c.cfg.ID)
		stop()
		stop = nil
		c.hub.closeAll()
	}
	check()
	t := time.NewTicker(250 * time.Millisecond) // in case an observation is dropped
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.hub.closeAll()
			return nil
		case <-obs:
		case <-t.C:
		}
		check()
	}
}

// lead runs while this replica is the leader.
func (c *Controller) lead(ctx context.Context) {
	// The leader's gRPC address must be in the state so followers can send
	// clients here. Retry until it is, or leadership ends.
	for ctx.Err() == nil {
		var have state.Member
		c.fsm.Read(func(s *state.State) { have = s.Members()[c.cfg.ID] })
		want := state.Member{ID: c.cfg.ID, Raft: c.cfg.RaftAddr, GRPC: c.cfg.GRPCAddr}
		if have == want {
			break
		}
		if _, err := c.propose(ctx, state.Command{Op: state.OpSetMember, Member: &want}); err == nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	go c.rerouteLoop(ctx)
	c.pushLoop(ctx)
}

// LiveStatus is what each agent last reported to this replica (the leader).
func (c *Controller) LiveStatus() map[string]*qkdv1.NodeStatus {
	out := map[string]*qkdv1.NodeStatus{}
	for n, l := range c.hub.snapshotLive() {
		if l.status != nil {
			out[n] = l.status
		}
	}
	return out
}

// proposer lets the gNMI server commit through the controller.
type proposer struct{ c *Controller }

func (p proposer) Propose(ctx context.Context, cmd state.Command) (uint64, error) {
	r, err := p.c.propose(ctx, cmd)
	return r.Index, err
}

// propose commits a command through Raft; the command's own error (bad or
// conflicting configuration) is returned as a gRPC status.
func (c *Controller) propose(ctx context.Context, cmd state.Command) (Result, error) {
	if c.raft.State() != raft.Leader {
		return Result{}, c.notLeader()
	}
	b, err := cmd.Encode()
	if err != nil {
		return Result{}, status.Errorf(codes.Internal, "encode command: %v", err)
	}
	timeout := c.cfg.ApplyTimeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = time.Until(d)
	}
	f := c.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return Result{}, c.notLeader()
		}
		return Result{}, status.Errorf(codes.Unavailable, "commit through raft: %v", err)
	}
	r, _ := f.Response().(Result)
	if r.Err != nil && !errors.Is(r.Err, state.ErrAppExists) {
		return r, stateStatus(r.Err)
	}
	return r, nil
}

// leader returns the ID and gRPC address of the leader, as far as this
// replica knows.
func (c *Controller) leader() (id, addr string) {
	_, lid := c.raft.LeaderWithID()
	id = string(lid)
	if id == "" {
		return "", ""
	}
	c.fsm.Read(func(s *state.State) { addr = s.Members()[id].GRPC })
	return id, addr
}

func (c *Controller) notLeader() error {
	id, addr := c.leader()
	msg := fmt.Sprintf("controller %s is not the leader and knows of none yet", c.cfg.ID)
	if id != "" {
		msg = fmt.Sprintf("controller %s is not the leader; the leader is %s at %s", c.cfg.ID, id, addr)
	}
	st := status.New(codes.Unavailable, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{
		Reason:   ctlclient.ReasonNotLeader,
		Domain:   "qkdnet",
		Metadata: map[string]string{"leader_id": id, "leader_grpc": addr},
	}); err == nil {
		st = d
	}
	return st.Err()
}

// stateStatus maps a state error to a gRPC status.
func stateStatus(err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, state.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, state.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, state.ErrExists):
		code = codes.AlreadyExists
	case errors.Is(err, state.ErrInUse):
		code = codes.FailedPrecondition
	}
	return status.Error(code, err.Error())
}
