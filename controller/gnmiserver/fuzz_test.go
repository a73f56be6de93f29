package gnmiserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	gnmipb "github.com/openconfig/gnmi/proto/gnmi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/qkdnet/qkdnet/controller/gnmiserver"
	"github.com/qkdnet/qkdnet/controller/state"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
)

// fuzzNetwork is nodes A, B, C, links A-B and B-C, and an SAE on A.
func fuzzNetwork(tb testing.TB) *state.State {
	s := state.New()
	for i, c := range []state.Command{
		{Op: state.OpAddNode, Node: &state.NodeSpec{Name: "A", KMEID: "KME_A"}},
		{Op: state.OpAddNode, Node: &state.NodeSpec{Name: "B"}},
		{Op: state.OpAddNode, Node: &state.NodeSpec{Name: "C"}},
		{Op: state.OpAddLink, Link: &state.LinkSpec{Name: "FSO_AB", A: "A", B: "B"}},
		{Op: state.OpAddLink, Link: &state.LinkSpec{Name: "FSO_BC", A: "B", B: "C"}},
		{Op: state.OpAddSAE, SAE: &state.SAESpec{ID: "SAE_A", Node: "A"}},
	} {
		if _, err := s.Apply(uint64(i+1), c); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

// scratchProposer commits to a fresh copy of the network, never to the one
// served, and remembers what it was asked: the fuzzer's stand-in for Raft.
type scratchProposer struct {
	tb   testing.TB
	cmds []state.Command
	ok   bool
}

func (p *scratchProposer) Propose(_ context.Context, c state.Command) (uint64, error) {
	p.cmds = append(p.cmds, c)
	if _, err := fuzzNetwork(p.tb).Apply(100, c); err != nil {
		return 0, status.Error(codes.InvalidArgument, err.Error())
	}
	p.ok = true
	return 100, nil
}

func trees(tb testing.TB, s *state.State) map[string][]byte {
	out := map[string][]byte{}
	for _, n := range s.NodeNames() {
		t, _ := s.Node(n)
		b, err := qkd015.Encode(t)
		if err != nil {
			tb.Fatal(err)
		}
		out[n] = b
	}
	return out
}

// FuzzGNMI: arbitrary protobuf bytes as gNMI GetRequest and SetRequest
// (paths into the ETSI 015 tree, targets, typed values of every kind), from
// an operator (and sometimes a node or an SAE), against a real state.
// Properties: no panic; every error is a gNMI status with a code that says
// what went wrong (never Unknown); a Get answers valid JSON; the served
// trees never change (Set works on a copy); a Set is committed only as one
// put_tree of its target's whole tree, which parses as ETSI 015 and which
// the state machine accepts, and a Set that fails committed nothing; only
// an operator gets anything.
func FuzzGNMI(f *testing.F) {
	val := func(s string) *gnmipb.TypedValue {
		return &gnmipb.TypedValue{Value: &gnmipb.TypedValue_JsonIetfVal{JsonIetfVal: []byte(s)}}
	}
	linkAB := "qkd_link[qkdl_id=" + qkd015.LinkID("FSO_AB") + "]"
	for _, m := range []proto.Message{
		&gnmipb.GetRequest{Encoding: gnmipb.Encoding_JSON_IETF},
		&gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "A"}, Path: []*gnmipb.Path{path("qkd_node", "qkd_links", linkAB, "qkdl_enable")}, Encoding: gnmipb.Encoding_JSON_IETF},
		&gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "B", Elem: []*gnmipb.PathElem{{Name: "etsi-qkd-sdn-node:qkd_node"}}}, Path: []*gnmipb.Path{path("qkd_applications")}, Encoding: gnmipb.Encoding_JSON},
		&gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "*"}, Path: []*gnmipb.Path{path("qkd_node", "qkd_links", "qkd_link[qkdl_id=*]")}, Encoding: gnmipb.Encoding_JSON_IETF},
		&gnmipb.GetRequest{Path: []*gnmipb.Path{{Element: []string{"qkd_node"}}}, Type: gnmipb.GetRequest_STATE},
	} {
		b, _ := proto.Marshal(m)
		f.Add(uint8(0), b)
	}
	for _, m := range []proto.Message{
		&gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"}, Update: []*gnmipb.Update{{Path: path("qkd_node", "qkdn_location_id"), Val: val(`"rooftop A"`)}}},
		&gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"}, Replace: []*gnmipb.Update{{Path: path("qkd_node", "qkd_links", linkAB, "qkdl_enable"), Val: val(`false`)}}},
		&gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"}, Delete: []*gnmipb.Path{path("qkd_node", "qkdn_location_id")}},
		&gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"}, Delete: []*gnmipb.Path{{}}},
		&gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"}, Replace: []*gnmipb.Update{{Path: &gnmipb.Path{}, Val: val(`{}`)}}},
		&gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "B"}, Update: []*gnmipb.Update{{Path: path("qkd_node", "qkd_links", linkAB, "qkdnet-sdn-ext:kmm_role"), Val: val(`"BOSS"`)}}},
		&gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"}, Update: []*gnmipb.Update{{Path: path("qkd_node", "qkdnet-sdn-ext:node_name"), Val: val(`"Z"`)}}},
		&gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"}, Update: []*gnmipb.Update{{Path: path("qkd_node", "qkdn_location_id"), Val: &gnmipb.TypedValue{Value: &gnmipb.TypedValue_UintVal{UintVal: 7}}}}},
		&gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "C"}, Update: []*gnmipb.Update{{Path: path("qkd_node", "qkd_applications", "qkd_app[app_id=x]", "app_status"), Val: val(`"ON"`)}}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(uint8(1), b)
	}

	s := fuzzNetwork(f)
	want := trees(f, s)
	prop := &scratchProposer{tb: f}
	srv := gnmiserver.New(fsmOf{s}, prop)
	callers := []pki.Identity{{Kind: pki.KindOperator, ID: "ops"}, {Kind: pki.KindNode, ID: "A"}, {Kind: pki.KindSAE, ID: "SAE_A"}}

	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		// Mostly an operator: that is where the paths and values are read.
		who := callers[0]
		if sel/2%8 == 7 {
			who = callers[1+int(sel/16)%2]
		}
		ctx := pki.WithCaller(context.Background(), who)
		prop.cmds, prop.ok = nil, false
		var err error
		if sel%2 == 0 {
			req := &gnmipb.GetRequest{}
			if proto.Unmarshal(body, req) != nil {
				return
			}
			var resp *gnmipb.GetResponse
			resp, err = srv.Get(ctx, req)
			for _, n := range resp.GetNotification() {
				for _, u := range n.GetUpdate() {
					if v := u.GetVal().GetJsonIetfVal(); !json.Valid(v) {
						t.Fatalf("Get answered invalid JSON %q", v)
					}
				}
			}
		} else {
			req := &gnmipb.SetRequest{}
			if proto.Unmarshal(body, req) != nil {
				return
			}
			_, err = srv.Set(ctx, req)
			switch {
			case err == nil && !prop.ok:
				t.Fatalf("Set succeeded without a commit (proposed %v)", prop.cmds)
			case err != nil && prop.ok:
				t.Fatalf("Set failed (%v) after its change was committed", err)
			case len(prop.cmds) > 1:
				t.Fatalf("one Set proposed %d commands", len(prop.cmds))
			case len(prop.cmds) == 1:
				c := prop.cmds[0]
				if c.Op != state.OpPutTree || c.Name != req.GetPrefix().GetTarget() {
					t.Fatalf("Set on %q proposed %s on %q", req.GetPrefix().GetTarget(), c.Op, c.Name)
				}
				if _, perr := qkd015.Parse(c.Tree); perr != nil {
					t.Fatalf("Set proposed a tree that does not parse: %v", perr)
				}
			}
		}
		if err == nil && who.Kind != pki.KindOperator {
			t.Fatalf("%v was served", who)
		}
		if err != nil {
			st, ok := status.FromError(err)
			if !ok || st.Code() == codes.Unknown || st.Message() == "" {
				t.Fatalf("not a clear gNMI status: %v", err)
			}
		}
		got := trees(t, s)
		for n, b := range want {
			if !bytes.Equal(got[n], b) {
				t.Fatalf("the served tree of %s changed:\n%s\nwas\n%s", n, got[n], b)
			}
		}
	})
}
