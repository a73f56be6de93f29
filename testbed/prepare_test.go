package testbed

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qkdnet/qkdnet/agent"
	"github.com/qkdnet/qkdnet/pki"
)

func TestPortPlanDefault(t *testing.T) {
	ps, err := PortPlan(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := []Ports{{8443, 9443, 9100}, {8444, 9444, 9101}}
	if !slices.Equal(ps, want) {
		t.Errorf("default plan %v, want %v", ps, want)
	}
	ps, _ = PortPlan(30000, 3)
	if ps[2] != (Ports{REST: 30002, GRPC: 31002, Metrics: 32002}) {
		t.Errorf("base 30000 node 2: %v", ps[2])
	}
	for _, bad := range [][2]int{{80, 2}, {64000, 2}, {20000, 0}} {
		if _, err := PortPlan(bad[0], bad[1]); err == nil {
			t.Errorf("PortPlan(%d, %d) succeeded", bad[0], bad[1])
		}
	}
}

func portSet(t *testing.T, base, n int) map[int]string {
	t.Helper()
	ps, err := PortPlan(base, n)
	if err != nil {
		t.Fatal(err)
	}
	m := map[int]string{}
	for i, p := range ps {
		for _, x := range []int{p.REST, p.GRPC, p.Metrics} {
			if _, dup := m[x]; dup {
				t.Fatalf("base %d: port %d used twice within one network", base, x)
			}
			m[x] = fmt.Sprintf("base %d node %d", base, i)
		}
	}
	return m
}

// TestPortPlanNoCollision checks the documented rule: networks whose base
// ports lie in one 1000-port window at least N apart, or in [10000, 60000]
// against the default plan, share no port.
func TestPortPlanNoCollision(t *testing.T) {
	const n = 16
	disjoint := func(a, b int) {
		t.Helper()
		pa := portSet(t, a, n)
		for p, who := range portSet(t, b, n) {
			if w, dup := pa[p]; dup {
				t.Errorf("port %d used by %s and %s", p, w, who)
			}
		}
	}
	// Base ports in one 1000-port window, N apart, never collide.
	var window []int
	for b := 20000; b+n <= 21000; b += n {
		window = append(window, b)
	}
	for i, a := range window {
		for _, b := range window[i+1:] {
			disjoint(a, b)
		}
	}
	// Base ports in [10000, 60000] never collide with the default plan.
	for _, b := range append(window, 10000, 18443, 35000, 60000) {
		disjoint(0, b)
	}
	base, err := FreeBasePort(2)
	if err != nil {
		t.Fatal(err)
	}
	if base < 20000 || base >= 21000 || (base-20000)%16 != 0 {
		t.Errorf("FreeBasePort = %d, outside its documented range", base)
	}
}

func TestPrepareAndEndpointsContract(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	fig4, err := LoadTopology("fig4")
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Prepare(Options{StateDir: state, KeyRate: 50, Topology: fig4})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteEndpoints(plan.StateDir, plan.Endpoints); err != nil {
		t.Fatal(err)
	}

	// The exact JSON of the contract, field names included.
	b, err := os.ReadFile(filepath.Join(state, EndpointsFile))
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"ca_cert": "pki/ca.pem",
		"kmms": []any{
			map[string]any{"node": "A", "kme_id": "KME_A", "url": "https://127.0.0.1:8443", "grpc": "127.0.0.1:9443", "metrics": "http://127.0.0.1:9100/metrics"},
			map[string]any{"node": "B", "kme_id": "KME_B", "url": "https://127.0.0.1:8444", "grpc": "127.0.0.1:9444", "metrics": "http://127.0.0.1:9101/metrics"},
		},
		"saes": []any{
			map[string]any{"sae_id": "SAE_A", "kmm": "A", "cert": "pki/sae_a.pem", "key": "pki/sae_a-key.pem"},
			map[string]any{"sae_id": "SAE_B", "kmm": "B", "cert": "pki/sae_b.pem", "key": "pki/sae_b-key.pem"},
		},
	}
	if fmt.Sprint(raw) != fmt.Sprint(want) {
		t.Errorf("endpoints.json =\n%s\nwant %v", b, want)
	}

	// ReadEndpoints resolves the paths, and they exist.
	e, err := ReadEndpoints(state)
	if err != nil {
		t.Fatal(err)
	}
	sa, _ := e.SAE("SAE_A")
	for _, p := range []string{e.CACert, sa.Cert, sa.Key} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("endpoints path: %v", err)
		}
	}
	c, err := pki.ReadCertificate(sa.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := pki.Identify(c); id != (pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"}) {
		t.Errorf("SAE_A cert identifies %v", id)
	}

	// Agent configs: A is master/alice, B slave/bob, key rate overridden.
	for _, tc := range []struct{ node, role, end, peer string }{{"A", "master", "alice", "B"}, {"B", "slave", "bob", "A"}} {
		path := filepath.Join(state, "nodes", tc.node, "agent.json")
		cfg, err := agent.LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.Topology.Links) != 1 {
			t.Fatalf("%s: links %+v", tc.node, cfg.Topology.Links)
		}
		l := cfg.Topology.Links[0]
		if l.ID != "FSO_AB" || l.Role != tc.role || l.Driver.End != tc.end || l.Peer != tc.peer || l.Driver.Kind != "emulator" || l.Driver.KeyRate != 50 || l.Driver.KeyBytes != 32 {
			t.Errorf("%s link: %+v", tc.node, l)
		}
		if cfg.KMM.DefaultKeyRate != 50 || cfg.DataDir != filepath.Join(state, "nodes", tc.node, "data") {
			t.Errorf("%s: kmm %+v data %s", tc.node, cfg.KMM, cfg.DataDir)
		}
		if len(cfg.Topology.Nodes) != 2 || cfg.Topology.Nodes[1].GRPCAddr != "127.0.0.1:9444" || len(cfg.Topology.SAEs) != 2 {
			t.Errorf("%s topology: %+v", tc.node, cfg.Topology)
		}
		if st, _ := os.Stat(cfg.DataDir); st == nil || st.Mode().Perm() != 0o700 {
			t.Errorf("%s data dir missing or not 0700", tc.node)
		}
	}

	// A second Prepare with another base port reuses the PKI and moves ports.
	ca1, _ := os.ReadFile(filepath.Join(state, "pki", "ca.pem"))
	plan2, err := Prepare(Options{StateDir: state, BasePort: 30000, Topology: fig4})
	if err != nil {
		t.Fatal(err)
	}
	ca2, _ := os.ReadFile(filepath.Join(state, "pki", "ca.pem"))
	if string(ca1) != string(ca2) {
		t.Error("second Prepare replaced the CA")
	}
	if plan2.Endpoints.KMMs[1].URL != "https://127.0.0.1:30001" || plan2.Endpoints.KMMs[1].GRPC != "127.0.0.1:31001" {
		t.Errorf("base port 30000: %+v", plan2.Endpoints.KMMs[1])
	}
	if plan2.Nodes[0].Config.Topology.Links[0].Driver.KeyRate != 1 {
		t.Error("key rate override leaked into a later Prepare")
	}
}

// TestPreparePeerAddrs: a node given a peer address advertises it (what the
// controller tells its peers to dial), and static topologies list it for
// the peers; its own listeners and endpoints.json keep its real port.
func TestPreparePeerAddrs(t *testing.T) {
	for _, controllers := range []int{0, 1} {
		plan, err := Prepare(Options{StateDir: t.TempDir(), BasePort: 30000, Controllers: controllers,
			PeerAddrs: map[string]string{"B": "127.0.0.1:45678"}})
		if err != nil {
			t.Fatal(err)
		}
		a, _ := plan.Node("A")
		b, _ := plan.Node("B")
		if b.Config.AdvertiseGRPCAddr != "127.0.0.1:45678" || b.Config.PeerAddr() != "127.0.0.1:45678" {
			t.Errorf("controllers=%d: B advertises %q", controllers, b.Config.PeerAddr())
		}
		if b.Config.GRPCAddr != "127.0.0.1:31001" {
			t.Errorf("controllers=%d: B listens on %s", controllers, b.Config.GRPCAddr)
		}
		if a.Config.PeerAddr() != a.Config.GRPCAddr {
			t.Errorf("controllers=%d: A, without a peer address, advertises %s", controllers, a.Config.PeerAddr())
		}
		if k, _ := plan.Endpoints.KMM("B"); k.GRPC != "127.0.0.1:31001" {
			t.Errorf("controllers=%d: endpoints.json B grpc %s", controllers, k.GRPC)
		}
		if controllers == 0 {
			for _, nd := range a.Config.Topology.Nodes {
				if nd.ID == "B" && nd.GRPCAddr != "127.0.0.1:45678" {
					t.Errorf("A's static topology dials B at %s", nd.GRPCAddr)
				}
			}
		}
	}
}
