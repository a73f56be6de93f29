package gnmiserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	gnmipb "github.com/openconfig/gnmi/proto/gnmi"
	"github.com/openconfig/ygot/ygot"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/controllertest"
	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/controller/gnmiserver"
	"github.com/qkdnet/qkdnet/controller/state"
	"github.com/qkdnet/qkdnet/gen/go/etsi015"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
)

// gnmiClient dials the cluster's leader with id's certificate.
func gnmiClient(t *testing.T, c *controllertest.Cluster, id pki.Identity) gnmipb.GNMIClient {
	t.Helper()
	cc, err := grpc.NewClient(c.Replicas[c.WaitLeader(5*time.Second)].GRPC, grpc.WithTransportCredentials(credentials.NewTLS(c.ClientTLS(id))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return gnmipb.NewGNMIClient(cc)
}

func path(elems ...string) *gnmipb.Path {
	p := &gnmipb.Path{}
	for _, e := range elems {
		name, keys, _ := strings.Cut(e, "[")
		pe := &gnmipb.PathElem{Name: name}
		if keys != "" {
			k, v, _ := strings.Cut(strings.TrimSuffix(keys, "]"), "=")
			pe.Key = map[string]string{k: v}
		}
		p.Elem = append(p.Elem, pe)
	}
	return p
}

// startTwoNodes starts a one-replica controller holding nodes A (KME_A)
// and B joined by link FSO_AB, and returns it, a context for the test and
// an operator's gNMI client.
func startTwoNodes(t *testing.T) (*controllertest.Cluster, context.Context, gnmipb.GNMIClient) {
	t.Helper()
	c := controllertest.Start(t, 1)
	ops := c.Client(pki.Identity{Kind: pki.KindOperator, ID: "ops"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	for _, f := range []func(context.Context, qkdv1.NetworkServiceClient) error{
		func(ctx context.Context, n qkdv1.NetworkServiceClient) error {
			_, err := n.AddNode(ctx, &qkdv1.AddNodeRequest{Name: "A", KmeId: "KME_A"})
			return err
		},
		func(ctx context.Context, n qkdv1.NetworkServiceClient) error {
			_, err := n.AddNode(ctx, &qkdv1.AddNodeRequest{Name: "B"})
			return err
		},
		func(ctx context.Context, n qkdv1.NetworkServiceClient) error {
			_, err := n.AddLink(ctx, &qkdv1.AddLinkRequest{Name: "FSO_AB", NodeA: "A", NodeB: "B"})
			return err
		},
	} {
		if err := ops.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error { return f(ctx, ctlclient.Network(cc)) }); err != nil {
			t.Fatal(err)
		}
	}
	g := gnmiClient(t, c, pki.Identity{Kind: pki.KindOperator, ID: "ops"})
	return c, ctx, g
}

func TestCapabilitiesAndGet(t *testing.T) {
	c, ctx, g := startTwoNodes(t)

	caps, err := g.Capabilities(ctx, &gnmipb.CapabilityRequest{})
	if err != nil || len(caps.GetSupportedModels()) != 3 || caps.GetSupportedModels()[0].GetName() != "etsi-qkd-sdn-node" ||
		len(caps.GetSupportedEncodings()) != 1 || caps.GetSupportedEncodings()[0] != gnmipb.Encoding_JSON_IETF {
		t.Fatalf("Capabilities = %v, %v", caps, err)
	}

	// The whole tree of node A parses as ETSI 015 data.
	r, err := g.Get(ctx, &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "A"}, Encoding: gnmipb.Encoding_JSON_IETF})
	if err != nil || len(r.GetNotification()) != 1 || r.GetNotification()[0].GetPrefix().GetTarget() != "A" {
		t.Fatalf("Get A = %v, %v", r, err)
	}
	tree, err := qkd015.Parse(r.GetNotification()[0].GetUpdate()[0].GetVal().GetJsonIetfVal())
	if err != nil || tree.GetKmeId() != "KME_A" || len(qkd015.Links(tree)) != 1 {
		t.Fatalf("A's tree: %v, %v", tree, err)
	}
	// Every node when no target is given.
	if r, err := g.Get(ctx, &gnmipb.GetRequest{Encoding: gnmipb.Encoding_JSON_IETF}); err != nil || len(r.GetNotification()) != 2 {
		t.Fatalf("Get of the network = %v, %v", r, err)
	}
	// A leaf and a list entry by key.
	linkID := qkd015.LinkID("FSO_AB")
	for _, tc := range []struct {
		p    *gnmipb.Path
		want string
	}{
		{path("qkd_node", "qkdn_id"), `"` + qkd015.NodeID("A") + `"`},
		{path("etsi-qkd-sdn-node:qkd_node", "qkd_links", "qkd_link[qkdl_id="+linkID+"]", "qkdnet-sdn-ext:kmm_role"), `"MASTER"`},
	} {
		r, err := g.Get(ctx, &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "A"}, Path: []*gnmipb.Path{tc.p}, Encoding: gnmipb.Encoding_JSON_IETF})
		if err != nil {
			t.Fatalf("Get %v: %v", tc.p, err)
		}
		if got := string(r.GetNotification()[0].GetUpdate()[0].GetVal().GetJsonIetfVal()); got != tc.want {
			t.Errorf("Get %v = %s, want %s", tc.p, got, tc.want)
		}
	}
	r, err = g.Get(ctx, &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "A"}, Path: []*gnmipb.Path{path("qkd_node", "qkd_links", "qkd_link[qkdl_id="+linkID+"]")}, Encoding: gnmipb.Encoding_JSON_IETF})
	var link map[string]any
	if err != nil || json.Unmarshal(r.GetNotification()[0].GetUpdate()[0].GetVal().GetJsonIetfVal(), &link) != nil || link["etsi-qkd-sdn-node:qkdl_id"] != linkID {
		t.Errorf("Get of the link entry = %v, %v", link, err)
	}

	// Refusals: a clear gNMI status, nothing else.
	for _, tc := range []struct {
		name string
		req  *gnmipb.GetRequest
		code codes.Code
	}{
		{"unknown node", &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "Z"}, Encoding: gnmipb.Encoding_JSON_IETF}, codes.NotFound},
		{"unknown path", &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "A"}, Path: []*gnmipb.Path{path("qkd_node", "no_such_leaf")}, Encoding: gnmipb.Encoding_JSON_IETF}, codes.NotFound},
		{"protobuf encoding", &gnmipb.GetRequest{Encoding: gnmipb.Encoding_PROTO}, codes.Unimplemented},
	} {
		if _, err := g.Get(ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
		}
	}
	// An SAE certificate cannot use gNMI.
	sae := gnmiClient(t, c, pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"})
	if _, err := sae.Get(ctx, &gnmipb.GetRequest{Encoding: gnmipb.Encoding_JSON_IETF}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("SAE Get: %v", err)
	}
}

func TestSubscribe(t *testing.T) {
	c := controllertest.Start(t, 1)
	ops := c.Client(pki.Identity{Kind: pki.KindOperator, ID: "ops"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	write := func(f func(context.Context, qkdv1.NetworkServiceClient) error) {
		t.Helper()
		if err := ops.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error { return f(ctx, ctlclient.Network(cc)) }); err != nil {
			t.Fatal(err)
		}
	}
	write(func(ctx context.Context, n qkdv1.NetworkServiceClient) error {
		_, err := n.AddNode(ctx, &qkdv1.AddNodeRequest{Name: "A"})
		return err
	})
	g := gnmiClient(t, c, pki.Identity{Kind: pki.KindOperator, ID: "ops"})
	saesOf := func(r *gnmipb.SubscribeResponse) int {
		tree, err := qkd015.Parse(r.GetUpdate().GetUpdate()[0].GetVal().GetJsonIetfVal())
		if err != nil {
			t.Fatal(err)
		}
		return len(qkd015.SAEs(tree))
	}
	open := func(mode gnmipb.SubscriptionList_Mode) gnmipb.GNMI_SubscribeClient {
		s, err := g.Subscribe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = s.Send(&gnmipb.SubscribeRequest{Request: &gnmipb.SubscribeRequest_Subscribe{Subscribe: &gnmipb.SubscriptionList{
			Prefix: &gnmipb.Path{Target: "A"}, Mode: mode, Encoding: gnmipb.Encoding_JSON_IETF,
			Subscription: []*gnmipb.Subscription{{Path: &gnmipb.Path{}, Mode: gnmipb.SubscriptionMode_ON_CHANGE}}}}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	recvUpdateThenSync := func(s gnmipb.GNMI_SubscribeClient) *gnmipb.SubscribeResponse {
		t.Helper()
		u, err := s.Recv()
		if err != nil || u.GetUpdate() == nil {
			t.Fatalf("want an update: %v %v", u, err)
		}
		if r, err := s.Recv(); err != nil || !r.GetSyncResponse() {
			t.Fatalf("want a sync response: %v %v", r, err)
		}
		return u
	}

	// ONCE: the values, a sync response, the end.
	once := open(gnmipb.SubscriptionList_ONCE)
	if u := recvUpdateThenSync(once); saesOf(u) != 0 {
		t.Errorf("ONCE: %v", u)
	}
	if _, err := once.Recv(); err == nil {
		t.Error("ONCE stream did not end")
	}

	// STREAM ON_CHANGE: the values now, then a change when an SAE is added.
	st := open(gnmipb.SubscriptionList_STREAM)
	recvUpdateThenSync(st)
	write(func(ctx context.Context, n qkdv1.NetworkServiceClient) error {
		_, err := n.AddSAE(ctx, &qkdv1.AddSAERequest{SaeId: "SAE_A", Node: "A"})
		return err
	})
	if u, err := st.Recv(); err != nil || saesOf(u) != 1 {
		t.Fatalf("ON_CHANGE after add-sae: %v %v", u, err)
	}

	// POLL: the values at each poll.
	poll := open(gnmipb.SubscriptionList_POLL)
	recvUpdateThenSync(poll)
	if err := poll.Send(&gnmipb.SubscribeRequest{Request: &gnmipb.SubscribeRequest_Poll{Poll: &gnmipb.Poll{}}}); err != nil {
		t.Fatal(err)
	}
	if u := recvUpdateThenSync(poll); saesOf(u) != 1 {
		t.Errorf("POLL: %v", u)
	}

	// A first message that is not a subscription is refused.
	bad, _ := g.Subscribe(ctx)
	bad.Send(&gnmipb.SubscribeRequest{Request: &gnmipb.SubscribeRequest_Poll{Poll: &gnmipb.Poll{}}})
	if _, err := bad.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("poll first: %v", err)
	}
}

func TestSet(t *testing.T) {
	c, ctx, g := startTwoNodes(t)
	get := func(p *gnmipb.Path) string {
		t.Helper()
		r, err := g.Get(ctx, &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "A"}, Path: []*gnmipb.Path{p}, Encoding: gnmipb.Encoding_JSON_IETF})
		if status.Code(err) == codes.NotFound {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(r.GetNotification()[0].GetUpdate()[0].GetVal().GetJsonIetfVal())
	}
	jsonVal := func(s string) *gnmipb.TypedValue {
		return &gnmipb.TypedValue{Value: &gnmipb.TypedValue_JsonIetfVal{JsonIetfVal: []byte(s)}}
	}
	linkID := qkd015.LinkID("FSO_AB")
	enable := path("qkd_node", "qkd_links", "qkd_link[qkdl_id="+linkID+"]", "qkdl_enable")
	loc := path("qkd_node", "qkdn_location_id")

	// Update a leaf, replace another, in one commit.
	_, err := g.Set(ctx, &gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"},
		Update:  []*gnmipb.Update{{Path: loc, Val: jsonVal(`"rooftop A"`)}},
		Replace: []*gnmipb.Update{{Path: enable, Val: jsonVal(`false`)}}})
	if err != nil {
		t.Fatal(err)
	}
	if get(loc) != `"rooftop A"` || get(enable) != "false" {
		t.Fatalf("after Set: location %s, enable %s", get(loc), get(enable))
	}
	// The controller runs what the tree says: the link is disabled.
	net := c.Replicas[0].Ctl.Network()
	if len(net.GetLinks()) != 1 || net.GetLinks()[0].GetEnable() {
		t.Errorf("links after Set: %v", net.GetLinks())
	}

	// Refused: a bad value, a renamed node, a wrong certificate. Nothing
	// changes, not even the valid part of the request.
	before, _ := g.Get(ctx, &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "A"}, Encoding: gnmipb.Encoding_JSON_IETF})
	for _, tc := range []struct {
		name string
		cl   gnmipb.GNMIClient
		req  *gnmipb.SetRequest
		code codes.Code
	}{
		{"bad enum", g, &gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"},
			Update: []*gnmipb.Update{{Path: loc, Val: jsonVal(`"kept?"`)}, {Path: path("qkd_node", "qkd_links", "qkd_link[qkdl_id="+linkID+"]", "qkdnet-sdn-ext:kmm_role"), Val: jsonVal(`"BOSS"`)}}}, codes.InvalidArgument},
		{"bad uuid", g, &gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"},
			Update: []*gnmipb.Update{{Path: path("qkd_node", "qkd_links", "qkd_link[qkdl_id=xyz]", "qkdl_enable"), Val: jsonVal(`true`)}}}, codes.InvalidArgument},
		{"renamed node", g, &gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"},
			Update: []*gnmipb.Update{{Path: path("qkd_node", "qkdnet-sdn-ext:node_name"), Val: jsonVal(`"Z"`)}}}, codes.InvalidArgument},
		{"no target", g, &gnmipb.SetRequest{Update: []*gnmipb.Update{{Path: loc, Val: jsonVal(`"x"`)}}}, codes.InvalidArgument},
		{"unknown node", g, &gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "Q"}, Update: []*gnmipb.Update{{Path: loc, Val: jsonVal(`"x"`)}}}, codes.NotFound},
		{"node certificate", gnmiClient(t, c, pki.Identity{Kind: pki.KindNode, ID: "A"}), &gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"},
			Update: []*gnmipb.Update{{Path: loc, Val: jsonVal(`"x"`)}}}, codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.cl.Set(ctx, tc.req); status.Code(err) != tc.code {
				t.Fatalf("err = %v, want %v", err, tc.code)
			}
			after, _ := g.Get(ctx, &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "A"}, Encoding: gnmipb.Encoding_JSON_IETF})
			if string(after.GetNotification()[0].GetUpdate()[0].GetVal().GetJsonIetfVal()) != string(before.GetNotification()[0].GetUpdate()[0].GetVal().GetJsonIetfVal()) {
				t.Error("a refused Set changed the tree")
			}
		})
	}

	// Delete a leaf.
	if _, err := g.Set(ctx, &gnmipb.SetRequest{Prefix: &gnmipb.Path{Target: "A"}, Delete: []*gnmipb.Path{loc}}); err != nil {
		t.Fatal(err)
	}
	if v := get(loc); v != "" {
		t.Errorf("location after delete = %s", v)
	}
}

// fsmOf is a Reader over a state built in the test.
type fsmOf struct{ s *state.State }

func (f fsmOf) Read(fn func(gnmiserver.View)) { fn(f.s) }
func (f fsmOf) Changed() <-chan struct{}      { return nil }

// BenchmarkGetNetwork1000 is a gNMI Get of the whole network of a generated
// 1,000-node, ~3,000-link topology: the first (encoding every tree) and the
// following ones (trees unchanged since).
func BenchmarkGetNetwork1000(b *testing.B) {
	s := state.New()
	idx := uint64(0)
	add := func(c state.Command) {
		idx++
		if _, err := s.Apply(idx, c); err != nil {
			b.Fatal(err)
		}
	}
	const n = 1000
	for i := range n {
		add(state.Command{Op: state.OpAddNode, Node: &state.NodeSpec{Name: fmt.Sprintf("N%d", i)}})
	}
	for i := range n {
		for _, step := range []int{1, 7 + i%13, n/3 + i%17} {
			j := (i + step) % n
			if i < j {
				s.Apply(idx+1, state.Command{Op: state.OpAddLink, Link: &state.LinkSpec{Name: fmt.Sprintf("L%d_%d", i, j), A: fmt.Sprintf("N%d", i), B: fmt.Sprintf("N%d", j)}})
				idx++
			}
		}
	}
	_, links, _ := s.Counts()
	live := liveOf{}
	srv := gnmiserver.New(fsmOf{s}, nil).WithLive(live)
	ctx := pki.WithCaller(context.Background(), pki.Identity{Kind: pki.KindOperator, ID: "bench"})
	req := &gnmipb.GetRequest{Encoding: gnmipb.Encoding_JSON_IETF}
	t0 := time.Now()
	if _, err := srv.Get(ctx, req); err != nil {
		b.Fatal(err)
	}
	first := time.Since(t0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := srv.Get(ctx, req)
		if err != nil || len(r.GetNotification()) != n {
			b.Fatalf("%v %v", len(r.GetNotification()), err)
		}
	}
	b.StopTimer()
	// Every agent reported since the last Get (each node's live status is
	// new): the trees are encoded again with the reports overlaid.
	const rounds = 5
	var reported time.Duration
	for r := range rounds {
		for i := range n {
			node := fmt.Sprintf("N%d", i)
			st := &qkdv1.NodeStatus{}
			for _, name := range linkNames(s, node) {
				st.Links = append(st.Links, &qkdv1.LinkStatus{Link: name, Status: "ACTIVE", Skr: uint64(8192 + r), PoolKeys: uint64(i + r), KeysSupplied: uint64(1000 * r)})
			}
			live[node] = st
		}
		t0 := time.Now()
		if _, err := srv.Get(ctx, req); err != nil {
			b.Fatal(err)
		}
		reported += time.Since(t0)
	}
	b.ReportMetric(float64(first.Microseconds())/1000, "first-ms")
	b.ReportMetric(float64(reported.Microseconds())/1000/rounds, "all-reported-ms")
	b.ReportMetric(float64(links), "links")
}

// linkNames lists the links of a node's tree.
func linkNames(s *state.State, node string) []string {
	t, _ := s.Node(node)
	var out []string
	for _, l := range qkd015.Links(t) {
		out = append(out, l.GetLinkName())
	}
	return out
}

// BenchmarkStreamSample1000 measures STREAM subscription updates delivered
// to one subscriber over gRPC (loopback TCP): SAMPLE every 10 ms of every
// node of a generated 1,000-node network, for one second per iteration.
func BenchmarkStreamSample1000(b *testing.B) {
	s := state.New()
	const n = 1000
	for i := range n {
		if _, err := s.Apply(uint64(i+1), state.Command{Op: state.OpAddNode, Node: &state.NodeSpec{Name: fmt.Sprintf("N%d", i)}}); err != nil {
			b.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, callerStream{ss})
	}))
	gnmipb.RegisterGNMIServer(srv, gnmiserver.New(fsmOf{s}, nil))
	go srv.Serve(ln)
	defer srv.Stop()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	var total int
	var elapsed time.Duration
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		sub, err := gnmipb.NewGNMIClient(cc).Subscribe(ctx)
		if err != nil {
			b.Fatal(err)
		}
		sub.Send(&gnmipb.SubscribeRequest{Request: &gnmipb.SubscribeRequest_Subscribe{Subscribe: &gnmipb.SubscriptionList{
			Mode: gnmipb.SubscriptionList_STREAM, Encoding: gnmipb.Encoding_JSON_IETF,
			Subscription: []*gnmipb.Subscription{{Path: &gnmipb.Path{}, Mode: gnmipb.SubscriptionMode_SAMPLE, SampleInterval: uint64(10 * time.Millisecond)}}}}})
		start := time.Now()
		for {
			r, err := sub.Recv()
			if err != nil {
				break
			}
			if r.GetUpdate() != nil {
				total++
			}
		}
		elapsed += time.Since(start)
		cancel()
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "updates/s")
}

// callerStream gives the benchmark's stream an operator identity (its
// loopback connection has no TLS).
type callerStream struct{ grpc.ServerStream }

func (c callerStream) Context() context.Context {
	return pki.WithCaller(c.ServerStream.Context(), pki.Identity{Kind: pki.KindOperator, ID: "bench"})
}

type liveOf map[string]*qkdv1.NodeStatus

func (l liveOf) LiveStatus() map[string]*qkdv1.NodeStatus { return l }

// TestLiveStateInTree: what the agents report is in the trees served, as
// the config-false leaves of ETSI 015 (and qkdnet-sdn-ext's pool level).
func TestLiveStateInTree(t *testing.T) {
	s := twoNodes(t)
	live := liveOf{"A": {Links: []*qkdv1.LinkStatus{{Link: "FSO_AB", Status: "ACTIVE", Skr: 8192, PoolKeys: 42, KeysSupplied: 100}}}}
	srv := gnmiserver.New(fsmOf{s}, nil).WithLive(live)
	ctx := pki.WithCaller(context.Background(), pki.Identity{Kind: pki.KindOperator, ID: "ops"})
	get := func(target string, p *gnmipb.Path) []byte {
		t.Helper()
		r, err := srv.Get(ctx, &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: target}, Path: []*gnmipb.Path{p}, Encoding: gnmipb.Encoding_JSON_IETF})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetNotification()[0].GetUpdate()[0].GetVal().GetJsonIetfVal()
	}
	tree, err := qkd015.Parse(get("A", &gnmipb.Path{}))
	if err != nil {
		t.Fatal(err)
	}
	l := qkd015.Links(tree)[qkd015.LinkID("FSO_AB")]
	if l.QkdlStatus != qkd015.LinkActive || l.GetQkdlPerformance().GetSkr() != 8192 || l.GetQkdlPerformance().GetPoolKeys() != 42 || l.GetQkdlPerformance().GetKeysSupplied() != 100 {
		t.Errorf("A's link: status %v, performance %+v", l.QkdlStatus, l.GetQkdlPerformance())
	}
	if got := string(get("A", path("qkd_node", "qkd_links", "qkd_link[qkdl_id="+qkd015.LinkID("FSO_AB")+"]", "qkdl_performance", "skr"))); got != "8192" {
		t.Errorf("skr leaf = %s", got)
	}
	// B reported nothing: its tree has no live leaves; the state is untouched.
	tb, _ := qkd015.Parse(get("B", &gnmipb.Path{}))
	if lb := qkd015.Links(tb)[qkd015.LinkID("FSO_AB")]; lb.GetQkdlPerformance() != nil || lb.QkdlStatus != 0 {
		t.Errorf("B's link has live values it never reported: %+v", lb)
	}
	a, _ := s.Node("A")
	if qkd015.Links(a)[qkd015.LinkID("FSO_AB")].GetQkdlPerformance() != nil {
		t.Error("the overlay changed the state")
	}
	// A new report is served at once.
	live["A"] = &qkdv1.NodeStatus{Links: []*qkdv1.LinkStatus{{Link: "FSO_AB", Status: "OFF"}}}
	if got := string(get("A", path("qkd_node", "qkd_links", "qkd_link[qkdl_id="+qkd015.LinkID("FSO_AB")+"]", "qkdl_status"))); !strings.Contains(got, "OFF") {
		t.Errorf("status after the link went down = %s", got)
	}
}

// twoNodes is a state of nodes A and B joined by link FSO_AB.
func twoNodes(t *testing.T) *state.State {
	t.Helper()
	s := state.New()
	for i, c := range []state.Command{
		{Op: state.OpAddNode, Node: &state.NodeSpec{Name: "A"}},
		{Op: state.OpAddNode, Node: &state.NodeSpec{Name: "B"}},
		{Op: state.OpAddLink, Link: &state.LinkSpec{Name: "FSO_AB", A: "A", B: "B"}},
	} {
		if _, err := s.Apply(uint64(i+1), c); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// historyOf adds one history sample per version to every link.
type historyOf struct{ version uint64 }

func (h *historyOf) HistoryVersion() uint64 { return h.version }
func (h *historyOf) AddHistory(_ string, t *qkd015.Node) error {
	for _, l := range qkd015.Links(t) {
		for v := uint64(1); v <= h.version; v++ {
			s := l.GetOrCreateHistory().GetOrCreateSample(fmt.Sprintf("2030-01-01T00:00:%02dZ", v))
			s.KeysSupplied = ygot.Uint64(100 * v)
		}
	}
	return nil
}

// TestHistoryInTree: a node's statistics history is in its tree, a new
// sample is served at once (the encoded tree is not reused), and the state
// itself is untouched.
func TestHistoryInTree(t *testing.T) {
	s := twoNodes(t)
	h := &historyOf{version: 1}
	srv := gnmiserver.New(fsmOf{s}, nil).WithHistory(h)
	ctx := pki.WithCaller(context.Background(), pki.Identity{Kind: pki.KindOperator, ID: "ops"})
	samples := func() map[string]*etsi015.EtsiQkdSdnNode_QkdNode_QkdLinks_QkdLink_History_Sample {
		t.Helper()
		r, err := srv.Get(ctx, &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: "A"}, Path: []*gnmipb.Path{{}}, Encoding: gnmipb.Encoding_JSON_IETF})
		if err != nil {
			t.Fatal(err)
		}
		tree, err := qkd015.Parse(r.GetNotification()[0].GetUpdate()[0].GetVal().GetJsonIetfVal())
		if err != nil {
			t.Fatal(err)
		}
		return qkd015.Links(tree)[qkd015.LinkID("FSO_AB")].GetHistory().Sample
	}
	if got := samples(); len(got) != 1 || got["2030-01-01T00:00:01Z"].GetKeysSupplied() != 100 {
		t.Fatalf("history = %v", got)
	}
	h.version = 2
	if got := samples(); len(got) != 2 || got["2030-01-01T00:00:02Z"].GetKeysSupplied() != 200 {
		t.Fatalf("history after a new sample = %v", got)
	}
	a, _ := s.Node("A")
	if qkd015.Links(a)[qkd015.LinkID("FSO_AB")].GetHistory() != nil {
		t.Error("the history was written into the state")
	}
}
