// Package gnmiserver serves the controller's network over gNMI
// (github.com/openconfig/gnmi), for operators' standard tools: the target
// of a request names a node (empty or "*" for every node), and paths are the
// ETSI GS QKD 015 YANG paths of that node's qkd_node tree, answered in
// JSON_IETF. It serves Capabilities, Get, Set (replace, update, delete on
// one node's tree, validated against the schema and committed through Raft
// as one write) and Subscribe (ONCE, POLL, and STREAM with ON_CHANGE or
// SAMPLE).
package gnmiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"sync"
	"time"

	gnmipb "github.com/openconfig/gnmi/proto/gnmi"
	"github.com/openconfig/goyang/pkg/yang"
	"github.com/openconfig/ygot/ygot"
	"github.com/openconfig/ygot/ytypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/state"
	"github.com/qkdnet/qkdnet/gen/go/etsi015"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
)

// View is the trees served, as read under the Reader's lock:
// *state.State (the controller's network) or an agent's own node.
type View interface {
	NodeNames() []string
	Node(name string) (*qkd015.Node, bool)
	// ChangedAt is a number that grows when the node's tree changes.
	ChangedAt(name string) uint64
}

// Reader gives read access to the trees (controller.FSM through
// FSMReader, or an agent).
type Reader interface {
	Read(fn func(View))
	// Changed returns a channel closed at the next change of the trees.
	Changed() <-chan struct{}
}

// FSM is what FSMReader adapts: the controller's state machine.
type FSM interface {
	Read(fn func(*state.State))
	Changed() <-chan struct{}
}

// FSMReader serves the controller's state.
func FSMReader(f FSM) Reader { return fsmReader{f} }

type fsmReader struct{ f FSM }

func (r fsmReader) Read(fn func(View))       { r.f.Read(func(s *state.State) { fn(s) }) }
func (r fsmReader) Changed() <-chan struct{} { return r.f.Changed() }

// Proposer commits a write through Raft (the controller's leader).
type Proposer interface {
	Propose(ctx context.Context, c state.Command) (index uint64, err error)
}

// LiveSource gives what the agents last reported, by node (the leader's
// sessions): it is overlaid on the trees as their config-false leaves.
type LiveSource interface {
	LiveStatus() map[string]*qkdv1.NodeStatus
}

// HistorySource adds a node's statistics history (an agent's Metric Store)
// to its tree, as config-false history lists.
type HistorySource interface {
	// HistoryVersion changes whenever there is a new sample.
	HistoryVersion() uint64
	// AddHistory sets the history of node in t, a copy the server owns.
	AddHistory(node string, t *qkd015.Node) error
}

// Server serves gNMI on the controller's network.
type Server struct {
	gnmipb.UnimplementedGNMIServer
	r    Reader
	p    Proposer
	live LiveSource
	hist HistorySource

	mu    sync.Mutex
	cache map[string]cached // encoded qkd_node trees by node
}

type cached struct {
	at   uint64            // state.ChangedAt of the node when encoded
	live *qkdv1.NodeStatus // the live report overlaid, if any
	hist uint64            // HistoryVersion overlaid
	doc  json.RawMessage
}

// New returns a server that reads through r and writes through p (nil:
// Set is refused).
func New(r Reader, p Proposer) *Server { return &Server{r: r, p: p, cache: map[string]cached{}} }

// WithLive overlays the agents' live reports on the trees served.
func (s *Server) WithLive(l LiveSource) *Server { s.live = l; return s }

// WithHistory adds the statistics history to the trees served.
func (s *Server) WithHistory(h HistorySource) *Server { s.hist = h; return s }

func (s *Server) histVersion() uint64 {
	if s.hist == nil {
		return 0
	}
	return s.hist.HistoryVersion()
}

// overlay returns node's tree t with its live report and history set in
// its config-false leaves; t itself is not changed.
func (s *Server) overlay(node string, t *qkd015.Node, live *qkdv1.NodeStatus) (*qkd015.Node, error) {
	if s.hist == nil {
		return overlay(t, live)
	}
	// AddHistory writes into the tree: give it a copy of its own.
	cp, err := ygot.DeepCopy(t)
	if err != nil {
		return nil, err
	}
	if t, err = overlay(cp.(*qkd015.Node), live); err != nil {
		return nil, err
	}
	return t, s.hist.AddHistory(node, t)
}

// liveOf returns the live reports, or none.
func (s *Server) liveOf() map[string]*qkdv1.NodeStatus {
	if s.live == nil {
		return nil
	}
	return s.live.LiveStatus()
}

// overlay returns t with the node's live report set in its config-false
// leaves: link status, secret key rate, pool level and keys supplied, and
// application status. t itself is not changed: what the report touches is
// copied (the node, its link and application lists, the entries set), the
// rest is shared with t, so a Get of a network whose agents all report
// costs an encoding per node, not a deep copy of every tree.
func overlay(t *qkd015.Node, st *qkdv1.NodeStatus) (*qkd015.Node, error) {
	if st == nil {
		return t, nil
	}
	out := *t
	if links := t.GetQkdLinks(); links != nil && len(st.GetLinks()) > 0 {
		byName := make(map[string]string, len(links.QkdLink))
		for id, ql := range links.QkdLink {
			byName[ql.GetLinkName()] = id
		}
		lc := *links
		lc.QkdLink = maps.Clone(links.QkdLink)
		out.QkdLinks = &lc
		for _, ls := range st.GetLinks() {
			id, ok := byName[ls.GetLink()]
			if !ok {
				continue
			}
			ql := *lc.QkdLink[id]
			var status qkd015.LinkStatus
			if qkd015.ParseEnum(ls.GetStatus(), &status) {
				ql.QkdlStatus = status
			}
			var perf etsi015.EtsiQkdSdnNode_QkdNode_QkdLinks_QkdLink_QkdlPerformance
			if ql.QkdlPerformance != nil {
				perf = *ql.QkdlPerformance
			}
			perf.Skr = ygot.Uint32(uint32(min(ls.GetSkr(), uint64(^uint32(0)))))
			perf.PoolKeys = ygot.Uint64(ls.GetPoolKeys())
			perf.KeysSupplied = ygot.Uint64(ls.GetKeysSupplied())
			ql.QkdlPerformance = &perf
			lc.QkdLink[id] = &ql
		}
	}
	if apps := t.GetQkdApplications(); apps != nil && len(st.GetApplications()) > 0 {
		ac := *apps
		ac.QkdApp = maps.Clone(apps.QkdApp)
		out.QkdApplications = &ac
		for _, as := range st.GetApplications() {
			have := ac.QkdApp[as.GetAppId()]
			var status qkd015.AppStatus
			if have == nil || !qkd015.ParseEnum(as.GetStatus(), &status) {
				continue
			}
			qa := *have
			qa.AppStatus = status
			ac.QkdApp[as.GetAppId()] = &qa
		}
	}
	return &out, nil
}

// Models are the YANG modules the trees follow.
var Models = []*gnmipb.ModelData{
	{Name: "etsi-qkd-sdn-node", Organization: "ETSI ISG QKD", Version: "2022-01-30"},
	{Name: "etsi-qkd-node-types", Organization: "ETSI ISG QKD", Version: "2022-01-30"},
	{Name: "qkdnet-sdn-ext", Organization: "qkdnet", Version: "2026-11-27"},
}

func authorize(ctx context.Context) error {
	id, err := pki.Caller(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "%v", err)
	}
	if id.Kind != pki.KindOperator && id.Kind != pki.KindController {
		return status.Errorf(codes.PermissionDenied, "%s may not use gNMI (an operator certificate may)", id)
	}
	return nil
}

// Capabilities implements gNMI.
func (s *Server) Capabilities(ctx context.Context, _ *gnmipb.CapabilityRequest) (*gnmipb.CapabilityResponse, error) {
	if err := authorize(ctx); err != nil {
		return nil, err
	}
	return &gnmipb.CapabilityResponse{
		SupportedModels:    Models,
		SupportedEncodings: []gnmipb.Encoding{gnmipb.Encoding_JSON_IETF},
		GNMIVersion:        "0.10.0",
	}, nil
}

// Get implements gNMI: every path of the request, at every node the
// prefix's target names, as JSON_IETF.
func (s *Server) Get(ctx context.Context, req *gnmipb.GetRequest) (*gnmipb.GetResponse, error) {
	if err := authorize(ctx); err != nil {
		return nil, err
	}
	if e := req.GetEncoding(); e != gnmipb.Encoding_JSON_IETF && e != gnmipb.Encoding_JSON {
		return nil, status.Errorf(codes.Unimplemented, "encoding %v: only JSON_IETF is served", e)
	}
	if req.GetType() != gnmipb.GetRequest_ALL {
		return nil, status.Errorf(codes.Unimplemented, "data type %v: only ALL is served (configuration and state share one tree)", req.GetType())
	}
	out, err := s.collect(req.GetPrefix(), req.GetPath())
	if err != nil {
		return nil, err
	}
	return &gnmipb.GetResponse{Notification: out}, nil
}

// collect reads every path at every node the prefix's target names, one
// notification per node.
func (s *Server) collect(prefix *gnmipb.Path, paths []*gnmipb.Path) ([]*gnmipb.Notification, error) {
	return s.collectSince(prefix, paths, nil)
}

// collectSince is collect for the nodes whose tree changed since the index
// since gives for them (all nodes if since is nil), and records the index
// it read each node at.
func (s *Server) collectSince(prefix *gnmipb.Path, paths []*gnmipb.Path, since map[string]uint64) ([]*gnmipb.Notification, error) {
	if len(paths) == 0 {
		paths = []*gnmipb.Path{{}}
	}
	now := time.Now().UnixNano()
	var out []*gnmipb.Notification
	var rerr error
	live := s.liveOf()
	s.r.Read(func(st View) {
		nodes := st.NodeNames()
		if t := prefix.GetTarget(); t != "" && t != "*" {
			if _, ok := st.Node(t); !ok {
				rerr = status.Errorf(codes.NotFound, "target %q: no such node", t)
				return
			}
			nodes = []string{t}
		}
		for _, name := range nodes {
			if since != nil {
				at := st.ChangedAt(name)
				if seen, ok := since[name]; ok && at != 0 && at <= seen {
					continue
				}
				since[name] = at
			}
			n := &gnmipb.Notification{Timestamp: now, Prefix: &gnmipb.Path{Target: name}}
			for _, p := range paths {
				val, err := s.value(st, name, join(prefix, p), live[name])
				if err != nil {
					rerr = err
					return
				}
				n.Update = append(n.Update, &gnmipb.Update{Path: p, Val: &gnmipb.TypedValue{Value: &gnmipb.TypedValue_JsonIetfVal{JsonIetfVal: val}}})
			}
			out = append(out, n)
		}
	})
	return out, rerr
}

// join is the prefix's elements followed by the path's.
func join(prefix, p *gnmipb.Path) *gnmipb.Path {
	elems := append(append([]*gnmipb.PathElem(nil), prefix.GetElem()...), p.GetElem()...)
	return &gnmipb.Path{Elem: elems}
}

// value is the JSON_IETF of the path in the node's tree.
func (s *Server) value(st View, node string, p *gnmipb.Path, live *qkdv1.NodeStatus) ([]byte, error) {
	t, _ := st.Node(node)
	elems := make([]*gnmipb.PathElem, 0, len(p.GetElem()))
	for _, e := range p.GetElem() {
		// Paths may name a node's module ("etsi-qkd-sdn-node:qkd_node");
		// the schema is matched by name.
		_, name, ok := strings.Cut(e.GetName(), ":")
		if !ok {
			name = e.GetName()
		}
		elems = append(elems, &gnmipb.PathElem{Name: name, Key: e.GetKey()})
	}
	if len(elems) == 0 || (len(elems) == 1 && elems[0].GetName() == "qkd_node" && len(elems[0].GetKey()) == 0) {
		return s.whole(st, node, t, live)
	}
	t, err := s.overlay(node, t, live)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "overlay: %v", err)
	}
	nodes, err := ytypes.GetNode(etsi015.SchemaTree["Device"], &etsi015.Device{QkdNode: t}, &gnmipb.Path{Elem: elems},
		&ytypes.GetPartialKeyMatch{}, &ytypes.GetHandleWildcards{})
	if err != nil || len(nodes) == 0 {
		return nil, status.Errorf(codes.NotFound, "target %s, path %s: %v", node, pathString(p), err)
	}
	if len(nodes) == 1 && isNil(nodes[0].Data) {
		return nil, status.Errorf(codes.NotFound, "target %s, path %s: no value", node, pathString(p))
	}
	if len(nodes) > 1 {
		// Several list entries: an array of their JSON.
		var arr []json.RawMessage
		for _, tn := range nodes {
			b, err := encodeData(tn.Data)
			if err != nil {
				return nil, err
			}
			arr = append(arr, b)
		}
		return json.Marshal(arr)
	}
	return encodeData(nodes[0].Data)
}

// whole is the node's whole tree, encoded once per change of the node.
func (s *Server) whole(st View, node string, t *qkd015.Node, live *qkdv1.NodeStatus) ([]byte, error) {
	at, hv := st.ChangedAt(node), s.histVersion()
	s.mu.Lock()
	c, ok := s.cache[node]
	s.mu.Unlock()
	if ok && c.at == at && at != 0 && c.live == live && c.hist == hv {
		return c.doc, nil
	}
	t, err := s.overlay(node, t, live)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "overlay: %v", err)
	}
	doc, err := qkd015.Encode(t)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode node %s: %v", node, err)
	}
	s.mu.Lock()
	s.cache[node] = cached{at: at, live: live, hist: hv, doc: doc}
	s.mu.Unlock()
	return doc, nil
}

func encodeData(d any) ([]byte, error) {
	if gs, ok := d.(ygot.GoStruct); ok {
		b, err := ygot.Marshal7951(gs, ygot.JSONIndent(""), &ygot.RFC7951JSONConfig{AppendModuleName: true})
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode: %v", err)
		}
		return b, nil
	}
	b, err := ygot.Marshal7951(d)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode: %v", err)
	}
	return b, nil
}

func pathString(p *gnmipb.Path) string {
	var b strings.Builder
	for _, e := range p.GetElem() {
		b.WriteString("/" + e.GetName())
		for k, v := range e.GetKey() {
			fmt.Fprintf(&b, "[%s=%s]", k, v)
		}
	}
	if b.Len() == 0 {
		return "/"
	}
	return b.String()
}

// Subscribe implements gNMI: ONCE sends the paths' values and a sync
// response; POLL does so again at each poll; STREAM sends them, a sync
// response, then the values that change (ON_CHANGE, TARGET_DEFINED) or all
// of them every sample interval (SAMPLE, at least 10 ms).
func (s *Server) Subscribe(stream gnmipb.GNMI_SubscribeServer) error {
	ctx := stream.Context()
	if err := authorize(ctx); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	list := first.GetSubscribe()
	if list == nil {
		return status.Error(codes.InvalidArgument, "the first message must be a SubscriptionList")
	}
	if e := list.GetEncoding(); e != gnmipb.Encoding_JSON_IETF && e != gnmipb.Encoding_JSON {
		return status.Errorf(codes.Unimplemented, "encoding %v: only JSON_IETF is served", e)
	}
	var paths []*gnmipb.Path
	sample := time.Duration(0)
	for _, sub := range list.GetSubscription() {
		paths = append(paths, sub.GetPath())
		if sub.GetMode() == gnmipb.SubscriptionMode_SAMPLE {
			d := max(time.Duration(sub.GetSampleInterval()), 10*time.Millisecond)
			if sample == 0 || d < sample {
				sample = d
			}
		}
	}
	last := map[string]string{} // target and path -> last value sent
	seen := map[string]uint64{} // node -> ChangedAt when last read
	send := func(onlyChanged bool) error {
		var since map[string]uint64
		if onlyChanged {
			since = seen // only the nodes whose tree changed
		}
		notes, err := s.collectSince(list.GetPrefix(), paths, since)
		if err != nil {
			return err
		}
		for _, n := range notes {
			var ups []*gnmipb.Update
			for _, u := range n.GetUpdate() {
				key := n.GetPrefix().GetTarget() + pathString(u.GetPath())
				v := string(u.GetVal().GetJsonIetfVal())
				if onlyChanged && last[key] == v {
					continue
				}
				last[key] = v
				ups = append(ups, u)
			}
			if len(ups) == 0 {
				continue
			}
			n.Update = ups
			if err := stream.Send(&gnmipb.SubscribeResponse{Response: &gnmipb.SubscribeResponse_Update{Update: n}}); err != nil {
				return err
			}
		}
		return nil
	}
	sync := func() error {
		return stream.Send(&gnmipb.SubscribeResponse{Response: &gnmipb.SubscribeResponse_SyncResponse{SyncResponse: true}})
	}
	changed := s.r.Changed()
	if err := send(false); err != nil {
		return err
	}
	if err := sync(); err != nil {
		return err
	}
	switch list.GetMode() {
	case gnmipb.SubscriptionList_ONCE:
		return nil
	case gnmipb.SubscriptionList_POLL:
		for {
			m, err := stream.Recv()
			if err != nil {
				return err
			}
			if m.GetPoll() == nil {
				return status.Error(codes.InvalidArgument, "a POLL subscription takes only Poll messages")
			}
			if err := send(false); err != nil {
				return err
			}
			if err := sync(); err != nil {
				return err
			}
		}
	}
	var tick <-chan time.Time
	if sample > 0 {
		t := time.NewTicker(sample)
		defer t.Stop()
		tick = t.C
	}
	// The agents report every second: their values change without a
	// commit, so ON_CHANGE also looks at them at that pace.
	var liveTick <-chan time.Time
	if s.live != nil || s.hist != nil {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		liveTick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			changed = s.r.Changed()
			if err := send(true); err != nil {
				return err
			}
		case <-tick:
			if err := send(false); err != nil {
				return err
			}
		case <-liveTick:
			clear(seen) // re-read every node; only changed values go out
			if err := send(true); err != nil {
				return err
			}
		}
	}
}

// Set implements gNMI on one node's tree (the prefix's target): deletes,
// then replaces, then updates, on a copy of the tree; the result must
// validate against the schema and keep the node's name and ID, and is then
// committed through Raft as one write. Nothing changes unless all of it
// does.
func (s *Server) Set(ctx context.Context, req *gnmipb.SetRequest) (*gnmipb.SetResponse, error) {
	id, err := pki.Caller(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "%v", err)
	}
	if id.Kind != pki.KindOperator {
		return nil, status.Errorf(codes.PermissionDenied, "%s may not change the network (an operator certificate may)", id)
	}
	if s.p == nil {
		return nil, status.Error(codes.FailedPrecondition, "this tree is configured through the controller: Set it there")
	}
	target := req.GetPrefix().GetTarget()
	if target == "" || target == "*" {
		return nil, status.Error(codes.InvalidArgument, "Set changes one node: name it as the prefix's target")
	}
	var tree *qkd015.Node
	var rerr error
	s.r.Read(func(st View) {
		t, ok := st.Node(target)
		if !ok {
			rerr = status.Errorf(codes.NotFound, "target %q: no such node", target)
			return
		}
		cp, err := ygot.DeepCopy(t)
		if err != nil {
			rerr = status.Errorf(codes.Internal, "copy: %v", err)
			return
		}
		tree = cp.(*qkd015.Node)
	})
	if rerr != nil {
		return nil, rerr
	}
	dev := &etsi015.Device{QkdNode: tree}
	schema := etsi015.SchemaTree["Device"]
	var results []*gnmipb.UpdateResult
	for _, p := range req.GetDelete() {
		if err := ytypes.DeleteNode(schema, dev, schemaPath(req.GetPrefix(), p)); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "delete %s: %v", pathString(p), err)
		}
		results = append(results, &gnmipb.UpdateResult{Path: p, Op: gnmipb.UpdateResult_DELETE})
	}
	for _, u := range req.GetReplace() {
		full := schemaPath(req.GetPrefix(), u.GetPath())
		if len(full.GetElem()) > 0 {
			if err := ytypes.DeleteNode(schema, dev, full); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "replace %s: %v", pathString(u.GetPath()), err)
			}
		} else {
			dev.QkdNode = &qkd015.Node{}
		}
		if err := setValue(schema, dev, full, u.GetVal()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "replace %s: %v", pathString(u.GetPath()), err)
		}
		results = append(results, &gnmipb.UpdateResult{Path: u.GetPath(), Op: gnmipb.UpdateResult_REPLACE})
	}
	for _, u := range req.GetUpdate() {
		if err := setValue(schema, dev, schemaPath(req.GetPrefix(), u.GetPath()), u.GetVal()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "update %s: %v", pathString(u.GetPath()), err)
		}
		results = append(results, &gnmipb.UpdateResult{Path: u.GetPath(), Op: gnmipb.UpdateResult_UPDATE})
	}
	if dev.QkdNode == nil {
		return nil, status.Error(codes.InvalidArgument, "the node's qkd_node tree cannot be deleted (remove the node instead)")
	}
	if err := qkd015.Validate(dev.QkdNode); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	doc, err := qkd015.Encode(dev.QkdNode)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode: %v", err)
	}
	if _, err := s.p.Propose(ctx, state.Command{Op: state.OpPutTree, Name: target, Tree: doc}); err != nil {
		return nil, err
	}
	return &gnmipb.SetResponse{Prefix: req.GetPrefix(), Response: results, Timestamp: time.Now().UnixNano()}, nil
}

// schemaPath joins prefix and path, with module names dropped, as the schema
// is matched; an empty path is the node's qkd_node.
func schemaPath(prefix, p *gnmipb.Path) *gnmipb.Path {
	var elems []*gnmipb.PathElem
	for _, e := range join(prefix, p).GetElem() {
		_, name, ok := strings.Cut(e.GetName(), ":")
		if !ok {
			name = e.GetName()
		}
		elems = append(elems, &gnmipb.PathElem{Name: name, Key: e.GetKey()})
	}
	return &gnmipb.Path{Elem: elems}
}

// setValue sets the value at path in dev; a value for the whole node (empty
// path) is the qkd_node document itself.
func setValue(schema *yang.Entry, dev *etsi015.Device, p *gnmipb.Path, v *gnmipb.TypedValue) error {
	if v.GetJsonIetfVal() == nil && v.GetJsonVal() == nil && v.GetValue() == nil {
		return fmt.Errorf("no value")
	}
	if len(p.GetElem()) == 0 {
		n, err := qkd015.Parse(v.GetJsonIetfVal())
		if err != nil {
			return err
		}
		dev.QkdNode = n
		return nil
	}
	return ytypes.SetNode(schema, dev, p, v, &ytypes.InitMissingElements{})
}

func isNil(v any) bool {
	if v == nil {
		return true
	}
	r := reflect.ValueOf(v)
	switch r.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Interface:
		return r.IsNil()
	}
	return false
}
