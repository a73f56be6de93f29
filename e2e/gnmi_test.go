package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/qkdnet/qkdnet/etsi014client"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
	"github.com/qkdnet/qkdnet/testbed"
)

// TestGNMICLI drives the controller with the openconfig reference client
// gnmi_cli (pinned in go.mod as a tool): Capabilities, Get, Set and a ONCE
// subscription, with the operator certificate of endpoints.json.
func TestGNMICLI(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "gnmi_cli")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/openconfig/gnmi/cmd/gnmi_cli").CombinedOutput(); err != nil {
		t.Fatalf("build gnmi_cli: %v\n%s", err, out)
	}
	n := upWith(t, testbed.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader, err := n.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ep := n.Endpoints()
	var addr string
	for _, c := range ep.Controllers {
		if c.ID == leader {
			addr = c.GNMI
		}
	}
	cliAt := func(addr string, args ...string) (string, error) {
		t.Helper()
		args = append([]string{"-address", addr, "-ca_crt", ep.CACert, "-client_crt", ep.Operator.Cert, "-client_key", ep.Operator.Key}, args...)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		return string(out), err
	}
	cli := func(args ...string) string {
		t.Helper()
		args = append([]string{"-address", addr, "-ca_crt", ep.CACert, "-client_crt", ep.Operator.Cert, "-client_key", ep.Operator.Key}, args...)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("gnmi_cli %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := cli("-capabilities"); !strings.Contains(out, `"etsi-qkd-sdn-node"`) || !strings.Contains(out, "JSON_IETF") {
		t.Errorf("capabilities:\n%s", out)
	}
	if out := cli("-get", "-proto", `prefix: <target: "A"> path: <elem: <name: "qkd_node"> elem: <name: "kme_id">> encoding: JSON_IETF`); !strings.Contains(out, `\"KME_A\"`) {
		t.Errorf("get kme_id:\n%s", out)
	}
	cli("-set", "-proto", `prefix: <target: "A"> update: <path: <elem: <name: "qkd_node"> elem: <name: "qkdn_location_id">> val: <json_ietf_val: "\"rooftop A\"">>`)
	if out := cli("-get", "-proto", `prefix: <target: "A"> path: <elem: <name: "qkd_node"> elem: <name: "qkdn_location_id">> encoding: JSON_IETF`); !strings.Contains(out, `rooftop A`) {
		t.Errorf("get after set:\n%s", out)
	}
	if out := cli("-qt", "o", "-target", "B", "-q", "qkd_node/qkdn_status"); !strings.Contains(out, "OPERATING") {
		t.Errorf("subscribe once:\n%s", out)
	}
	// Live state is in the tree: the link's status and pool level, as node
	// A's agent reports them (once a second).
	perf := `prefix: <target: "A"> path: <elem: <name: "qkd_node"> elem: <name: "qkd_links"> elem: <name: "qkd_link" key: <key: "qkdl_id" value: "` +
		qkd015.LinkID("FSO_AB") + `">>> encoding: JSON_IETF`
	// Only the leader holds the agents' sessions: ask whichever replica
	// leads now (a busy machine may have moved the leadership).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		at := addr
		if id, err := n.Leader(ctx); err == nil {
			for _, c := range ep.Controllers {
				if c.ID == id {
					at = c.GNMI
				}
			}
		}
		out, err := cliAt(at, "-get", "-proto", perf)
		if err == nil && strings.Contains(out, "pool_keys") && strings.Contains(out, "ACTIVE") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no live state in A's link: %v\n%s", err, out)
		}
	}

	// Each agent serves its own tree, with its live state; it is
	// configured through the controller, so Set is refused there.
	a, _ := ep.KMM("A")
	if a.GNMI == "" {
		t.Fatal("endpoints.json has no gnmi for node A")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, err := cliAt(a.GNMI, "-get", "-proto", `path: <elem: <name: "qkd_node">> encoding: JSON_IETF`)
		if err == nil && strings.Contains(out, "node_name") && strings.Contains(out, "pool_keys") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent A's gNMI tree: %v\n%s", err, out)
		}
	}
	if out, err := cliAt(a.GNMI, "-set", "-proto", `prefix: <target: "A"> update: <path: <elem: <name: "qkd_node"> elem: <name: "qkdn_location_id">> val: <json_ietf_val: "\"x\"">>`); err == nil || !strings.Contains(out, "controller") {
		t.Errorf("Set at an agent: %v\n%s", err, out)
	}

	testHistory(ctx, t, n)
	testOperatorGetsNoKeys(ctx, t, n)
}

// testOperatorGetsNoKeys: the operator certificate that may run the whole
// network over gNMI gets no key: ETSI 014 answers 401 with the error
// object, ETSI 004 and 014 over gRPC refuse it.
func testOperatorGetsNoKeys(ctx context.Context, t *testing.T, n *testbed.Network) {
	ep := n.Endpoints()
	k, _ := ep.KMM("A")
	c, err := etsi014client.NewFromFiles(k.URL, ep.CACert, ep.Operator.Cert, ep.Operator.Key, etsi014client.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if kc, err := c.EncKeys(ctx, "SAE_B", etsi014client.KeyRequest{Number: 1}); etsi014client.StatusCode(err) != http.StatusUnauthorized {
		t.Errorf("enc_keys with the operator certificate: %v, %v; want 401", kc, err)
	}
	if kc, err := c.DecKeys(ctx, "SAE_B", "00000000-0000-0000-0000-000000000000"); etsi014client.StatusCode(err) != http.StatusUnauthorized {
		t.Errorf("dec_keys with the operator certificate: %v, %v; want 401", kc, err)
	}
	cfg, err := pki.ClientTLS(ep.CACert, ep.Operator.Cert, ep.Operator.Key)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(k.GRPC, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if r, err := qkdv1.NewKeyStreamServiceClient(cc).OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_A"), Destination: uri("SAE_B")}); err == nil {
		t.Errorf("ETSI 004 OPEN_CONNECT with the operator certificate: %v", r)
	}
	if r, err := qkdv1.NewKeyServiceClient(cc).GetKey(ctx, &qkdv1.GetKeyRequest{SlaveSaeId: "SAE_B"}); err == nil || len(r.GetKeys()) > 0 {
		t.Errorf("ETSI 014 GetKey over gRPC with the operator certificate: %v, %v", r, err)
	}
}

// testHistory gets keys from SAE_A to SAE_B, then reads node A's
// statistics history (a sample every 2 s in the rooftops topology) with
// qkdctl history, which reaches A's agent over gNMI: the link has supplied
// keys and the stream shows the keys delivered and the requests served.
func testHistory(ctx context.Context, t *testing.T, n *testbed.Network) {
	bin := filepath.Join(t.TempDir(), "qkdctl")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/qkdnet/qkdnet/cmd/qkdctl").CombinedOutput(); err != nil {
		t.Fatalf("build qkdctl: %v\n%s", err, out)
	}
	c := client(t, n, "SAE_A")
	for range 5 {
		if _, err := encKeys(ctx, c, "SAE_B", etsi014client.KeyRequest{Number: 4}); err != nil {
			t.Fatal(err)
		}
	}
	app := qkd015.AppID("SAE_A", "SAE_B")
	qkdctl := func(args ...string) (string, error) {
		args = append([]string{"--endpoints", n.StateDir()}, args...)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		return string(out), err
	}
	var h struct {
		Node  string `json:"node"`
		Links map[string][]struct {
			KeysSupplied uint64 `json:"keys_supplied,string"`
		} `json:"links"`
		Apps map[string][]struct {
			KeysDelivered uint64  `json:"keys_delivered,string"`
			Requests      uint64  `json:"requests,string"`
			LatencyMax    float64 `json:"latency_max,string"`
		} `json:"applications"`
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, err := qkdctl("-o", "json", "history", "A")
		if err != nil {
			t.Fatalf("qkdctl history A: %v\n%s", err, out)
		}
		if err := json.Unmarshal([]byte(out), &h); err != nil {
			t.Fatalf("qkdctl -o json history A: %v\n%s", err, out)
		}
		var supplied, delivered, requests uint64
		var latency float64
		for _, s := range h.Links["FSO_AB"] {
			supplied += s.KeysSupplied
		}
		for _, s := range h.Apps[app] {
			delivered += s.KeysDelivered
			requests += s.Requests
			latency = max(latency, s.LatencyMax)
		}
		if h.Node == "A" && supplied > 0 && delivered == 20 && requests == 5 && latency > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("history of A: link supplied %d, stream delivered %d (want 20) in %d requests (want 5), latency %v:\n%s", supplied, delivered, requests, latency, out)
		}
	}
	// The table, and the one-line errors.
	if out, err := qkdctl("history", "A", "--link", "FSO_AB"); err != nil || !strings.Contains(out, "SUPPLIED") || !strings.Contains(out, "FSO_AB") {
		t.Errorf("qkdctl history A --link FSO_AB: %v\n%s", err, out)
	}
	if out, err := qkdctl("history", "Z"); err == nil || !strings.Contains(out, `no node "Z"`) || strings.Count(out, "\n") != 1 {
		t.Errorf("qkdctl history Z: %v\n%s", err, out)
	}
	if out, err := qkdctl("history", "A", "--app", "nope"); err == nil || !strings.Contains(out, "no history of application") {
		t.Errorf("qkdctl history A --app nope: %v\n%s", err, out)
	}
}
