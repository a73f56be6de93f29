package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm"
	"github.com/qkdnet/qkdnet/kmm/keystore"
)

// southbound is the agent's side of the controller: it registers the node,
// holds a Session with the leader, applies every configuration pushed,
// acknowledges it, and reports status once a second.
type southbound struct {
	cfg     Config
	client  *ctlclient.Client
	ctl     *controlled
	kmm     *kmm.KMM
	store   *keystore.Store
	drivers *driverSet
	logger  *slog.Logger

	// notes queues ETSI 015 notifications for the session (dropped when
	// full: status reports carry the same facts a second later).
	notes chan *qkdv1.Notification

	mu       sync.Mutex // guards lastRate
	lastRate rateSample

	// up is true while a Session with the leader has delivered its first
	// push (the leader pushes on every new session): /readyz.
	up atomic.Bool
}

// rateSample is the supplied-keys counters at one time, for the key rate.
type rateSample struct {
	at       time.Time
	supplied map[string]uint64
}

// notify queues a notification for the controller.
func (s *southbound) notify(n *qkdv1.Notification) {
	select {
	case s.notes <- n:
	default:
	}
}

// openApp asks the controller for an application (kmm.Apps via controlled)
// and returns its ID.
func (s *southbound) openApp(ctx context.Context, req kmm.AppRequest) (string, error) {
	var id string
	err := s.client.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := ctlclient.Controller(cc).OpenApplication(ctx, &qkdv1.OpenApplicationRequest{
			MasterSaeId: req.Master, SlaveSaeId: req.Slave, Priority: req.Priority, KeyChunkSize: req.ChunkSize, ConnectSaeId: req.Connect,
			Qos: &qkdv1.AppQoS{MinBandwidth: req.MinBPS, MaxBandwidth: req.MaxBPS, Jitter: req.Jitter, Ttl: req.TTL}})
		if err == nil {
			id = r.GetApplication().GetAppId()
		}
		return err
	})
	if err == nil {
		return id, nil
	}
	st := status.Convert(err)
	switch {
	case st.Code() == codes.NotFound && strings.Contains(st.Message(), strconv.Quote(req.Slave)):
		return "", fmt.Errorf("%w %q", kmm.ErrUnknownSAE, req.Slave)
	case st.Code() == codes.FailedPrecondition:
		for _, d := range st.Details() {
			ei, ok := d.(*errdetails.ErrorInfo)
			if !ok {
				continue
			}
			switch ei.GetReason() {
			case ctlclient.ReasonNoPath:
				return "", fmt.Errorf("%w: %s", kmm.ErrNoPath, st.Message())
			case ctlclient.ReasonQoSNotMet:
				avail, _ := strconv.ParseUint(ei.GetMetadata()["available_bps"], 10, 64)
				return "", &kmm.QoSError{AvailableBPS: avail, Msg: st.Message()}
			}
		}
	}
	return "", errors.New(st.Message())
}

// connectApp records an SAE's ETSI 004 connection at the controller.
func (s *southbound) connectApp(ctx context.Context, id, sae string, on bool) error {
	return s.client.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := ctlclient.Controller(cc).ConnectApplication(ctx, &qkdv1.ConnectApplicationRequest{AppId: id, SaeId: sae, Connect: on})
		return err
	})
}

func (s *southbound) register(ctx context.Context) error {
	req := &qkdv1.RegisterRequest{
		Node: s.cfg.Node, KmeId: s.cfg.KMEID, AgentAddress: s.cfg.PeerAddr(), Version: "qkdnet",
		Capabilities: &qkdv1.Capabilities{LinkStatsSupport: true, ApplicationStatsSupport: true},
	}
	for _, l := range s.cfg.Topology.Links {
		req.Interfaces = append(req.Interfaces, &qkdv1.Interface{Link: l.ID, Model: "qkdnet-" + l.Driver.Kind})
	}
	return s.client.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := ctlclient.Controller(cc).Register(ctx, req)
		return err
	})
}

// run registers, then keeps a session with the leader until ctx is done.
func (s *southbound) run(ctx context.Context) {
	regBackoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if err := s.register(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.logger.Warn("could not register with the controller; retrying", "err", err, "in", regBackoff)
			sleep(ctx, regBackoff)
			regBackoff = min(2*regBackoff, 5*time.Second)
			continue
		}
		s.logger.Info("registered with the controller", "leader", s.client.Leader())
		break
	}
	// A session that ran a while ended because its leader went away: look
	// for the new one at once. Sessions that keep failing fast back off.
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		start := time.Now()
		err := s.client.Stream(ctx, s.session)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 5*time.Second {
			backoff = 0
		}
		s.logger.Info("controller session ended; reconnecting", "err", err, "in", backoff)
		sleep(ctx, backoff)
		backoff = min(max(2*backoff, 50*time.Millisecond), time.Second)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// session runs one Session stream. It returns nil when the controller ends
// it cleanly, so the caller reconnects.
func (s *southbound) session(ctx context.Context, cc *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ctlclient.Controller(cc).Session(ctx)
	if err != nil {
		return err
	}
	defer s.up.Store(false)
	var sendMu sync.Mutex
	send := func(m *qkdv1.SessionRequest) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	if err := send(&qkdv1.SessionRequest{Msg: &qkdv1.SessionRequest_Hello{Hello: &qkdv1.SessionHello{Node: s.cfg.Node, ConfigVersion: s.ctl.view().version}}}); err != nil {
		return err
	}
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			var m *qkdv1.SessionRequest
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m = &qkdv1.SessionRequest{Msg: &qkdv1.SessionRequest_Status{Status: s.status()}}
			case n := <-s.notes:
				m = &qkdv1.SessionRequest{Msg: &qkdv1.SessionRequest_Notification{Notification: n}}
			}
			if err := send(m); err != nil {
				return
			}
		}
	}()
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		s.up.Store(true)
		ack := &qkdv1.ConfigAck{ConfigVersion: p.GetConfigVersion()}
		if err := s.apply(ctx, p); err != nil {
			ack.Error = err.Error()
			s.logger.Error("refused configuration from the controller", "version", p.GetConfigVersion(), "err", err)
		}
		if err := send(&qkdv1.SessionRequest{Msg: &qkdv1.SessionRequest_Ack{Ack: ack}}); err != nil {
			return err
		}
	}
}

// apply makes a pushed configuration the one the node runs: the KMM's view
// of links, roles and SAEs, the key streams at this node's KMM, and the
// drivers of the enabled links. An older version than the one running is
// ignored (a push from a deposed leader cannot roll the node back).
func (s *southbound) apply(ctx context.Context, p *qkdv1.SessionResponse) error {
	v, err := viewOf(s.cfg.Node, p.GetConfigVersion(), p.GetQkdNode())
	if err != nil {
		return err
	}
	cur := s.ctl.view()
	if v.version < cur.version {
		s.logger.Warn("ignoring an older configuration", "version", v.version, "running", cur.version)
		return nil
	}
	streams, plans, err := s.streamsOf(v)
	if err != nil {
		return err
	}
	if err := s.kmm.EnsureStreams(streams); err != nil {
		return fmt.Errorf("key streams: %w", err)
	}
	// The view first, the relay plans last: SetRelays also tells the peer
	// messages waiting for this configuration to look again.
	s.ctl.set(v)
	s.kmm.SetRelays(plans)
	for key, a := range v.apps {
		if _, had := cur.apps[key]; !had {
			s.notify(&qkdv1.Notification{Kind: "sdqkdn_application_new", AppId: a.id, Link: a.link, Status: "ON",
				Message: fmt.Sprintf("key stream %s -> %s", a.master, a.slave)})
		}
	}
	s.drivers.reconcile(ctx, v)
	s.logger.Info("applied configuration", "version", v.version, "links", len(v.links), "applications", len(v.apps))
	return nil
}

// status is the node's live state for the controller: per link whether
// its driver runs, the secret key rate over the last interval and the pool
// level; per application the keys delivered and waiting.
func (s *southbound) status() *qkdv1.NodeStatus {
	v := s.ctl.view()
	counters := s.store.Counters()
	now := time.Now()
	s.mu.Lock()
	prev := s.lastRate
	s.lastRate = rateSample{at: now, supplied: map[string]uint64{}}
	out := &qkdv1.NodeStatus{}
	running := s.drivers.running()
	for _, name := range sortedNames(v.links) {
		l := v.links[name]
		supplied := counters["link/"+name+"/supplied"]
		s.lastRate.supplied[name] = supplied
		ls := &qkdv1.LinkStatus{Link: name, Status: "OFF", PoolKeys: uint64(s.store.PoolCount(name)), KeysSupplied: supplied}
		if running[name] {
			ls.Status = "ACTIVE"
		}
		if dt := now.Sub(prev.at).Seconds(); prev.supplied != nil && dt > 0 && supplied >= prev.supplied[name] {
			ls.Skr = uint64(float64(supplied-prev.supplied[name]) * float64(8*l.KeyBytes) / dt)
		}
		out.Links = append(out.Links, ls)
	}
	s.mu.Unlock()
	apps := slices.SortedFunc(maps.Values(v.apps), func(a, b appView) int { return cmp.Compare(a.id, b.id) })
	for _, a := range apps {
		base := kmm.StreamID(a.master, a.slave)
		what := "delivered_enc"
		if v.saes[a.slave] == s.cfg.Node {
			what = "delivered_dec"
		}
		// Keys delivered from every path generation; keys available on the
		// current one (those of earlier paths are no longer served here
		// at the master's end).
		var delivered uint64
		for _, g := range append([]uint32{a.gen}, sortedNames(a.drains)...) {
			delivered += counters[keystore.StreamCounter(kmm.GenStreamID(base, g), what)]
		}
		out.Applications = append(out.Applications, &qkdv1.ApplicationStatus{AppId: a.id, Status: "ON",
			KeysDelivered: delivered, KeysAvailable: uint64(s.store.StreamCount(kmm.GenStreamID(base, a.gen)))})
	}
	return out
}

func sortedNames[K cmp.Ordered, V any](m map[K]V) []K { return slices.Sorted(maps.Keys(m)) }

// streamsOf says which key streams this node holds for the configuration's
// applications, and its part in each multi-hop one. On the path
// N0 .. Nn of an application from the master SAE's node N0, node Nj holds
// the end-to-end stream S (over the first link at N0 and N1; arriving by
// relay further on) and the stream S#i of each hop i >= 1 it touches. A
// rerouted application has such a set for its current path's generation
// and for each earlier path (draining) with hops at this node.
func (s *southbound) streamsOf(v *view) ([]keystore.Stream, []kmm.RelayPlan, error) {
	return streamsOf(s.cfg.Node, s.kmm.DefaultQoS(), v)
}

func streamsOf(node string, defaultQoS keystore.QoS, v *view) ([]keystore.Stream, []kmm.RelayPlan, error) {
	var out []keystore.Stream
	var plans []kmm.RelayPlan
	for _, a := range v.apps {
		base := kmm.StreamID(a.master, a.slave)
		if len(a.hopLinks) > 0 {
			st, p, err := routeOf(node, defaultQoS, v, a, base, a.gen, a.hopLinks, false)
			if err != nil {
				return nil, nil, err
			}
			out, plans = append(out, st...), append(plans, p)
		}
		for _, g := range sortedNames(a.drains) {
			st, p, err := routeOf(node, defaultQoS, v, a, base, g, a.drains[g], true)
			if err != nil {
				return nil, nil, err
			}
			out, plans = append(out, st...), append(plans, p)
		}
	}
	return out, plans, nil
}

// routeOf is streamsOf for one path generation of an application, whose
// hops at this node are hopLinks (path index -> link).
func routeOf(node string, defaultQoS keystore.QoS, v *view, a appView, base string, gen uint32, hopLinks map[uint32]string, draining bool) ([]keystore.Stream, kmm.RelayPlan, error) {
	var out []keystore.Stream
	id := kmm.GenStreamID(base, gen)
	first := kmm.GenFirstSeq(gen)
	qos := defaultQoS
	qos.Priority = a.priority
	qos.TTL = a.ttl
	idx := sortedNames(hopLinks)
	// This node's position j on the path.
	var j uint32
	switch {
	case v.saes[a.master] == node:
		j = 0
	default:
		j = idx[len(idx)-1]
		if v.saes[a.slave] == node {
			j++
		}
	}
	hop := func(i uint32) (*kmm.RelayHop, error) {
		name, ok := hopLinks[i]
		l, lok := v.links[name]
		if !ok || !lok {
			return nil, fmt.Errorf("application %s: hop %d of path generation %d does not end at this node", a.id, i, gen)
		}
		hs := id
		if i > 0 {
			hs = kmm.HopStreamID(id, int(i))
		}
		return &kmm.RelayHop{Stream: hs, Link: name, Peer: l.Peer}, nil
	}
	var in, outHop *kmm.RelayHop
	var err error
	if j > 0 {
		if in, err = hop(j - 1); err != nil {
			return nil, kmm.RelayPlan{}, err
		}
	}
	if v.saes[a.slave] != node {
		if outHop, err = hop(j); err != nil {
			return nil, kmm.RelayPlan{}, err
		}
	}
	for _, h := range []*kmm.RelayHop{in, outHop} {
		if h == nil {
			continue
		}
		q := qos
		if l := v.links[h.Link]; a.minBitsPerS > 0 && l.KeyBytes > 0 {
			q.KeyRate = max(q.KeyRate, a.minBitsPerS/uint32(8*l.KeyBytes))
		}
		out = append(out, keystore.Stream{ID: h.Stream, MasterSAE: a.master, SlaveSAE: a.slave, Link: h.Link, QoS: q, FirstSeq: first, Draining: draining})
	}
	if j >= 2 {
		// S arrives here by relay: a stream on no link, so that nothing
		// allocates into it.
		out = append(out, keystore.Stream{ID: id, MasterSAE: a.master, SlaveSAE: a.slave, Link: "relay:" + in.Link, QoS: qos, FirstSeq: first, Draining: draining})
	}
	// Every node's plan names its hops, so that key synchronisation on
	// them is accepted (the hop streams of a multi-hop path join SAEs that
	// are not on the hop's two nodes); only nodes with both an in and an
	// out hop relay.
	return out, kmm.RelayPlan{Stream: id, Base: base, Gen: gen, Draining: draining, In: in, Out: outHop}, nil
}
