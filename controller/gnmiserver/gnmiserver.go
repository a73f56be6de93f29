// Package gnmiserver serves the controller's network over gNMI
// (github.com/openconfig/gnmi), for operators' standard tools: the target
// of a request names a node (empty or "*" for every node), and paths are the
// ETSI GS QKD 015 YANG paths of that node's qkd_node tree, answered in
// JSON_IETF. This first part serves Capabilities and Get; Set and Subscribe
// answer UNIMPLEMENTED.
package gnmiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	gnmipb "github.com/openconfig/gnmi/proto/gnmi"
	"github.com/openconfig/ygot/ygot"
	"github.com/openconfig/ygot/ytypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/state"
	"github.com/qkdnet/qkdnet/gen/go/etsi015"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
)

// Reader gives read access to the controller's state (controller.FSM).
type Reader interface {
	Read(fn func(*state.State))
}

// Server serves gNMI on the controller's network.
type Server struct {
	gnmipb.UnimplementedGNMIServer
	r Reader

	mu    sync.Mutex
	cache map[string]cached // encoded qkd_node trees by node
}

type cached struct {
	at  uint64 // state.ChangedAt of the node when encoded
	doc json.RawMessage
}

// New returns a server over r.
func New(r Reader) *Server { return &Server{r: r, cache: map[string]cached{}} }

// Models are the YANG modules the trees follow.
var Models = []*gnmipb.ModelData{
	{Name: "etsi-qkd-sdn-node", Organization: "ETSI ISG QKD", Version: "2022-01-30"},
	{Name: "etsi-qkd-node-types", Organization: "ETSI ISG QKD", Version: "2022-01-30"},
	{Name: "qkdnet-sdn-ext", Organization: "qkdnet", Version: "2026-11-26"},
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
	paths := req.GetPath()
	if len(paths) == 0 {
		paths = []*gnmipb.Path{{}}
	}
	now := time.Now().UnixNano()
	var out []*gnmipb.Notification
	var rerr error
	s.r.Read(func(st *state.State) {
		nodes := st.NodeNames()
		if t := req.GetPrefix().GetTarget(); t != "" && t != "*" {
			if _, ok := st.Node(t); !ok {
				rerr = status.Errorf(codes.NotFound, "target %q: no such node", t)
				return
			}
			nodes = []string{t}
		}
		for _, name := range nodes {
			n := &gnmipb.Notification{Timestamp: now, Prefix: &gnmipb.Path{Target: name}}
			for _, p := range paths {
				full := join(req.GetPrefix(), p)
				val, err := s.value(st, name, full)
				if err != nil {
					rerr = err
					return
				}
				n.Update = append(n.Update, &gnmipb.Update{Path: p, Val: &gnmipb.TypedValue{Value: &gnmipb.TypedValue_JsonIetfVal{JsonIetfVal: val}}})
			}
			out = append(out, n)
		}
	})
	if rerr != nil {
		return nil, rerr
	}
	return &gnmipb.GetResponse{Notification: out}, nil
}

// join is the prefix's elements followed by the path's.
func join(prefix, p *gnmipb.Path) *gnmipb.Path {
	elems := append(append([]*gnmipb.PathElem(nil), prefix.GetElem()...), p.GetElem()...)
	return &gnmipb.Path{Elem: elems}
}

// value is the JSON_IETF of the path in the node's tree.
func (s *Server) value(st *state.State, node string, p *gnmipb.Path) ([]byte, error) {
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
		return s.whole(st, node, t)
	}
	nodes, err := ytypes.GetNode(etsi015.SchemaTree["Device"], &etsi015.Device{QkdNode: t}, &gnmipb.Path{Elem: elems},
		&ytypes.GetPartialKeyMatch{}, &ytypes.GetHandleWildcards{})
	if err != nil || len(nodes) == 0 {
		return nil, status.Errorf(codes.NotFound, "target %s, path %s: %v", node, pathString(p), err)
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
func (s *Server) whole(st *state.State, node string, t *qkd015.Node) ([]byte, error) {
	at := st.ChangedAt(node)
	s.mu.Lock()
	c, ok := s.cache[node]
	s.mu.Unlock()
	if ok && c.at == at && at != 0 {
		return c.doc, nil
	}
	doc, err := qkd015.Encode(t)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode node %s: %v", node, err)
	}
	s.mu.Lock()
	s.cache[node] = cached{at: at, doc: doc}
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
