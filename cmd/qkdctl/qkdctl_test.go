package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/qkdnet/qkdnet/controller/controllertest"
	"github.com/qkdnet/qkdnet/controller/ctlclient"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

// env is a controller cluster and the flags that reach it with a
// certificate.
type env struct {
	t     *testing.T
	c     *controllertest.Cluster
	flags []string
}

func newEnv(t *testing.T) *env {
	c := controllertest.Start(t, 3)
	return &env{t: t, c: c, flags: flagsFor(t, c, pki.Identity{Kind: pki.KindOperator, ID: "ops"}, c.Addrs())}
}

// flagsFor are the global flags for an identity's certificate.
func flagsFor(t *testing.T, c *controllertest.Cluster, id pki.Identity, addrs []string) []string {
	f := c.Files(id)
	return []string{"--controllers", strings.Join(addrs, ","), "--ca", c.CA.Files().Cert, "--cert", f.Cert, "--key", f.Key, "--timeout", "10s"}
}

// run runs qkdctl with the operator's flags before the arguments.
func (e *env) run(args ...string) (int, string, string) {
	return runCLI(append(slices.Clone(e.flags), args...)...)
}

// ok runs a command that must succeed.
func (e *env) ok(args ...string) string {
	e.t.Helper()
	code, out, errOut := e.run(args...)
	if code != 0 {
		e.t.Fatalf("qkdctl %s: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
	}
	if errOut != "" {
		e.t.Errorf("qkdctl %s: stderr %q", strings.Join(args, " "), errOut)
	}
	return out
}

// okJSON runs a command with -o json and decodes its output.
func (e *env) okJSON(v any, args ...string) {
	e.t.Helper()
	out := e.ok(append([]string{"-o", "json"}, args...)...)
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		e.t.Fatalf("qkdctl -o json %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// fails runs a command that must fail with code and one line on stderr
// containing want.
func (e *env) fails(code int, want string, args ...string) {
	e.t.Helper()
	c, out, errOut := e.run(args...)
	if c != code || !strings.Contains(errOut, want) || strings.Count(errOut, "\n") != 1 || out != "" {
		e.t.Errorf("qkdctl %s: exit %d (want %d), stdout %q, stderr %q (want one line with %q)", strings.Join(args, " "), c, code, out, errOut, want)
	}
}

var versionRE = regexp.MustCompile(`; config_version (\d+)\n$`)

// write runs a change and checks that it reports a config version.
func (e *env) write(args ...string) {
	e.t.Helper()
	out := e.ok(args...)
	if !versionRE.MatchString(out) || strings.Count(out, "\n") != 1 {
		e.t.Errorf("qkdctl %s: output %q, want one line ending in the config_version", strings.Join(args, " "), out)
	}
}

// The JSON documents of -o json, as the usage text describes them.
type (
	jsonInterface struct {
		QkdiID     uint32 `json:"qkdi_id"`
		Link       string `json:"link"`
		Model      string `json:"model"`
		Technology string `json:"technology"`
	}
	jsonNode struct {
		Name           string          `json:"name"`
		QkdnID         string          `json:"qkdn_id"`
		KmeID          string          `json:"kme_id"`
		AgentAddress   string          `json:"agent_address"`
		Status         string          `json:"status"`
		SAEs           []string        `json:"saes"`
		Interfaces     []jsonInterface `json:"interfaces"`
		Connected      bool            `json:"connected"`
		AppliedVersion string          `json:"applied_version"`
	}
	jsonLink struct {
		Name         string   `json:"name"`
		QkdlID       string   `json:"qkdl_id"`
		NodeA        string   `json:"node_a"`
		NodeB        string   `json:"node_b"`
		MasterNode   string   `json:"master_node"`
		Type         string   `json:"type"`
		Enable       bool     `json:"enable"`
		KeySize      uint32   `json:"key_size"`
		Technology   string   `json:"technology"`
		Applications []string `json:"applications"`
		Status       string   `json:"status"`
		SKR          string   `json:"skr"`
		PoolKeys     string   `json:"pool_keys"`
	}
	jsonSAE struct {
		SAEID string `json:"sae_id"`
		Node  string `json:"node"`
	}
	jsonQoS struct {
		MaxBandwidth              uint32 `json:"max_bandwidth"`
		MinBandwidth              uint32 `json:"min_bandwidth"`
		Jitter                    uint32 `json:"jitter"`
		TTL                       uint32 `json:"ttl"`
		ClientsSharedPathEnable   bool   `json:"clients_shared_path_enable"`
		ClientsSharedKeysRequired bool   `json:"clients_shared_keys_required"`
	}
	jsonHop struct {
		Link       string `json:"link"`
		QkdlID     string `json:"qkdl_id"`
		MasterNode string `json:"master_node"`
		SlaveNode  string `json:"slave_node"`
	}
	jsonApp struct {
		AppID         string            `json:"app_id"`
		MasterSAEID   string            `json:"master_sae_id"`
		SlaveSAEID    string            `json:"slave_sae_id"`
		MasterNode    string            `json:"master_node"`
		SlaveNode     string            `json:"slave_node"`
		Hops          []jsonHop         `json:"hops"`
		QoS           *jsonQoS          `json:"qos"`
		Priority      uint32            `json:"priority"`
		Statuses      map[string]string `json:"statuses"`
		KeysDelivered string            `json:"keys_delivered"`
		ConnectedSAEs []string          `json:"connected_saes"`
		KeyChunkSize  uint32            `json:"key_chunk_size"`
		PathGen       uint32            `json:"path_generation"`
		Draining      []struct {
			PathGen uint32   `json:"path_generation"`
			Links   []string `json:"links"`
		} `json:"draining"`
	}
	jsonMember struct {
		ID          string `json:"id"`
		RaftAddress string `json:"raft_address"`
		GRPCAddress string `json:"grpc_address"`
		Suffrage    string `json:"suffrage"`
		Leader      bool   `json:"leader"`
	}
	jsonStatus struct {
		ID           string       `json:"id"`
		State        string       `json:"state"`
		LeaderID     string       `json:"leader_id"`
		LeaderGRPC   string       `json:"leader_grpc"`
		Members      []jsonMember `json:"members"`
		Term         string       `json:"term"`
		LastIndex    string       `json:"last_index"`
		CommitIndex  string       `json:"commit_index"`
		AppliedIndex string       `json:"applied_index"`
		Agents       []string     `json:"agents"`
	}
	jsonWrite struct {
		ConfigVersion string `json:"config_version"`
	}
	jsonNodes struct {
		ConfigVersion string     `json:"config_version"`
		Nodes         []jsonNode `json:"nodes"`
	}
	jsonLinks struct {
		ConfigVersion string     `json:"config_version"`
		Links         []jsonLink `json:"links"`
	}
	jsonSAEs struct {
		ConfigVersion string    `json:"config_version"`
		SAEs          []jsonSAE `json:"saes"`
	}
	jsonApps struct {
		ConfigVersion string    `json:"config_version"`
		Applications  []jsonApp `json:"applications"`
	}
	jsonConfig struct {
		Node          string          `json:"node"`
		ConfigVersion string          `json:"config_version"`
		QkdNode       json.RawMessage `json:"qkd_node"`
	}
)

// row returns the table row whose first cell is key, split in cells.
func row(t *testing.T, table, key string) []string {
	t.Helper()
	for _, l := range strings.Split(table, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == key {
			return f
		}
	}
	t.Fatalf("no row %q in\n%s", key, table)
	return nil
}

func TestNetworkCommands(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	// An empty network.
	var nodes jsonNodes
	e.okJSON(&nodes, "nodes")
	if nodes.Nodes == nil || len(nodes.Nodes) != 0 || nodes.ConfigVersion == "" {
		t.Errorf("empty network: %+v", nodes)
	}
	if out := e.ok("nodes"); strings.TrimSpace(out) != strings.Join(strings.Fields("NAME QKDN_ID KME_ID STATUS AGENT CONNECTED APPLIED SAES INTERFACES"), "  ") {
		t.Errorf("empty nodes table %q", out)
	}

	// Changes; flags before or after the positional arguments.
	e.write("add-node", "A", "--kme-id", "KME_A", "--location", "lab1")
	e.write("add-node", "--kme-id", "KME_B", "B")
	var w jsonWrite
	e.okJSON(&w, "add-node", "C")
	if w.ConfigVersion == "" || w.ConfigVersion == "0" {
		t.Errorf("add-node -o json: %+v", w)
	}
	e.write("add-node", "D")
	e.write("add-link", "L_AB", "A", "B", "--master", "B", "--key-size", "512", "--technology", "CV-QKD")
	e.write("add-link", "L_BC", "B", "C")
	e.write("add-link", "--disabled", "L_CD", "C", "D", "-o", "table")
	e.write("add-sae", "SAE_A", "A")
	e.write("add-sae", "SAE_C", "C")
	e.write("add-sae", "SAE_D", "D")

	// nodes
	e.okJSON(&nodes, "nodes")
	if len(nodes.Nodes) != 4 {
		t.Fatalf("nodes: %+v", nodes)
	}
	a := nodes.Nodes[0]
	if a.Name != "A" || a.KmeID != "KME_A" || a.Status != "NEW" || a.QkdnID != qkd015.NodeID("A") || !slices.Equal(a.SAEs, []string{"SAE_A"}) ||
		a.Connected || a.AppliedVersion != "0" || len(a.Interfaces) != 1 || a.Interfaces[0].Link != "L_AB" || a.Interfaces[0].Technology != "CV-QKD" {
		t.Errorf("node A: %+v", a)
	}
	if b := nodes.Nodes[1]; b.Name != "B" || b.KmeID != "KME_B" || len(b.Interfaces) != 2 || len(b.SAEs) != 0 {
		t.Errorf("node B: %+v", b)
	}
	table := e.ok("nodes")
	if r := row(t, table, "A"); !slices.Equal(r, []string{"A", qkd015.NodeID("A"), "KME_A", "NEW", "-", "no", "-", "SAE_A", "1:L_AB(CV-QKD)"}) {
		t.Errorf("nodes row A: %q", r)
	}
	if r := row(t, table, "D"); r[2] != "KME_D" || r[7] != "SAE_D" {
		t.Errorf("nodes row D: %q", r)
	}
	if strings.Index(table, "\nA ") > strings.Index(table, "\nB ") {
		t.Errorf("nodes not sorted:\n%s", table)
	}

	// links
	var links jsonLinks
	e.okJSON(&links, "links")
	if len(links.Links) != 3 {
		t.Fatalf("links: %+v", links)
	}
	ab := links.Links[0]
	if ab.Name != "L_AB" || ab.MasterNode != "B" || ab.KeySize != 512 || ab.Technology != "CV-QKD" || !ab.Enable || ab.Type != "PHYS" ||
		ab.QkdlID != qkd015.LinkID("L_AB") || !sameSet(ab.NodeA, ab.NodeB, "A", "B") {
		t.Errorf("link L_AB: %+v", ab)
	}
	if cd := links.Links[2]; cd.Name != "L_CD" || cd.Enable || cd.KeySize != 256 || cd.Technology != "DV-QKD" || cd.MasterNode != "C" {
		t.Errorf("link L_CD: %+v", cd)
	}
	table = e.ok("links")
	if r := row(t, table, "L_CD"); !slices.Equal(r, []string{"L_CD", "C<->D", "C", "PHYS", "no", "256", "DV-QKD", "-", "-", "-", "-"}) {
		t.Errorf("links row L_CD: %q", r)
	}

	// saes
	var saes jsonSAEs
	e.okJSON(&saes, "saes")
	if len(saes.SAEs) != 3 || saes.SAEs[0] != (jsonSAE{"SAE_A", "A"}) || saes.SAEs[2] != (jsonSAE{"SAE_D", "D"}) {
		t.Errorf("saes: %+v", saes)
	}
	if r := row(t, e.ok("saes"), "SAE_C"); !slices.Equal(r, []string{"SAE_C", "C"}) {
		t.Errorf("saes row: %q", r)
	}

	// An application from SAE_A to SAE_C, opened by node A's agent. Ask the
	// leader first: a follower answers OpenApplication from its own applied
	// state, which may not have SAE_C yet.
	addrs := e.c.Addrs()
	l := e.c.WaitLeader(5 * time.Second)
	nodeA, err := ctlclient.New(append([]string{addrs[l]}, addrs...), e.c.ClientTLS(pki.Identity{Kind: pki.KindNode, ID: "A"}))
	if err != nil {
		t.Fatal(err)
	}
	defer nodeA.Close()
	var opened *qkdv1.OpenApplicationResponse
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = nodeA.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := ctlclient.Controller(cc).OpenApplication(ctx, &qkdv1.OpenApplicationRequest{
			MasterSaeId: "SAE_A", SlaveSaeId: "SAE_C", Priority: 3,
			Qos: &qkdv1.AppQoS{MaxBandwidth: 2000, MinBandwidth: 1000, Jitter: 5, Ttl: 60},
		})
		opened = r
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	appID := opened.GetApplication().GetAppId()

	var apps jsonApps
	e.okJSON(&apps, "apps")
	if len(apps.Applications) != 1 {
		t.Fatalf("apps: %+v", apps)
	}
	app := apps.Applications[0]
	wantHops := []jsonHop{
		{Link: "L_AB", QkdlID: qkd015.LinkID("L_AB"), MasterNode: "B", SlaveNode: "A"},
		{Link: "L_BC", QkdlID: qkd015.LinkID("L_BC"), MasterNode: "B", SlaveNode: "C"},
	}
	if app.AppID != appID || app.AppID != qkd015.AppID("SAE_A", "SAE_C") || app.MasterSAEID != "SAE_A" || app.SlaveSAEID != "SAE_C" ||
		app.MasterNode != "A" || app.SlaveNode != "C" || !slices.Equal(app.Hops, wantHops) || app.Priority != 3 ||
		app.QoS == nil || *app.QoS != (jsonQoS{MaxBandwidth: 2000, MinBandwidth: 1000, Jitter: 5, TTL: 60}) || app.KeysDelivered != "0" {
		t.Errorf("app: %+v (hops %+v, qos %+v)", app, app.Hops, app.QoS)
	}
	var apps2 jsonApps
	e.okJSON(&apps2, "applications")
	if len(apps2.Applications) != 1 || apps2.Applications[0].AppID != appID {
		t.Errorf("applications alias: %+v", apps2)
	}
	table = e.ok("apps")
	if r := row(t, table, appID); !slices.Equal(r, []string{appID, "SAE_A@A", "SAE_C@C", "L_AB(master", "B),L_BC(master", "B)",
		"max=2000", "min=1000", "jitter=5", "ttl=60", "3", "-", "0", "0", "-"}) {
		t.Errorf("apps row: %q", r)
	}
	e.okJSON(&links, "links")
	if !slices.Equal(links.Links[0].Applications, []string{appID}) || !slices.Equal(links.Links[1].Applications, []string{appID}) {
		t.Errorf("links carry %v, %v", links.Links[0].Applications, links.Links[1].Applications)
	}
	if r := row(t, e.ok("links"), "L_BC"); r[len(r)-1] != appID {
		t.Errorf("links row L_BC: %q", r)
	}

	// config
	tree := e.ok("config", "A")
	var top map[string]json.RawMessage
	if err := json.Unmarshal([]byte(tree), &top); err != nil {
		t.Fatalf("config A: %v\n%s", err, tree)
	}
	if !strings.Contains(tree, "\n  ") || !strings.Contains(tree, `"KME_A"`) || !strings.Contains(tree, appID) || !strings.Contains(tree, qkd015.LinkID("L_AB")) {
		t.Errorf("config A is not the indented tree of A:\n%s", tree)
	}
	var cfg jsonConfig
	e.okJSON(&cfg, "config", "A")
	if cfg.Node != "A" || cfg.ConfigVersion == "" || cfg.ConfigVersion == "0" {
		t.Errorf("config -o json: %+v", cfg)
	}
	var cfgTree map[string]json.RawMessage
	if err := json.Unmarshal(cfg.QkdNode, &cfgTree); err != nil || len(cfgTree) != len(top) {
		t.Errorf("config -o json qkd_node: %v %s", err, cfg.QkdNode)
	}

	// Refusals, one line each.
	e.fails(1, `qkdctl: add-link: not found: link L_X: node "Z"`, "add-link", "L_X", "A", "Z")
	e.fails(1, "qkdctl: add-link: already exists: link L_AB", "add-link", "L_AB", "A", "D")
	e.fails(1, "qkdctl: add-link: already exists: link L_AB2: nodes A and B are already joined by link L_AB", "add-link", "L_AB2", "A", "B")
	e.fails(1, "qkdctl: add-link: invalid: link L_AD: master \"C\" is not one of its ends", "add-link", "L_AD", "A", "D", "--master", "C")
	e.fails(1, "qkdctl: add-link: invalid: link L_AD: technology \"QKD-9000\"", "add-link", "L_AD", "A", "D", "--technology", "QKD-9000")
	e.fails(1, "qkdctl: add-node: already exists: node A", "add-node", "A")
	e.fails(1, "qkdctl: add-node: invalid: node id \"bad/name\"", "add-node", "bad/name")
	e.fails(1, "qkdctl: add-sae: already exists: SAE SAE_A is already attached to node A", "add-sae", "SAE_A", "A")
	e.fails(1, `qkdctl: add-sae: not found: node "Z"`, "add-sae", "SAE_Z", "Z")
	e.fails(1, "qkdctl: remove-link: in use: link L_AB carries application "+appID+"; remove it first", "remove-link", "L_AB")
	e.fails(1, "qkdctl: remove-sae: in use: SAE SAE_A is an end of application "+appID, "remove-sae", "SAE_A")
	e.fails(1, "qkdctl: remove-node: in use: node A: link L_AB ends there", "remove-node", "A")
	e.fails(1, `qkdctl: remove-node: not found: node "Z"`, "remove-node", "Z")
	e.fails(1, `qkdctl: remove-link: not found: link "L_ZZ"`, "remove-link", "L_ZZ")
	e.fails(1, `qkdctl: remove-sae: not found: SAE "SAE_Z"`, "remove-sae", "SAE_Z")
	e.fails(1, `qkdctl: remove-app: not found: application "nope"`, "remove-app", "nope")
	e.fails(1, `qkdctl: config: not found: node "Z"`, "config", "Z")

	// Removals, in the order the controller allows them.
	e.write("remove-app", appID)
	e.okJSON(&apps, "apps")
	if len(apps.Applications) != 0 || apps.Applications == nil {
		t.Errorf("apps after remove-app: %+v", apps)
	}
	e.write("disable-link", "L_AB")
	e.okJSON(&links, "links")
	for _, l := range links.Links {
		if l.Name == "L_AB" && l.Enable {
			t.Errorf("L_AB enabled after disable-link: %+v", l)
		}
	}
	e.write("enable-link", "L_AB")
	e.fails(1, `qkdctl: enable-link: not found: link "L_ZZ"`, "enable-link", "L_ZZ")
	e.write("remove-link", "L_AB")
	e.write("remove-link", "L_CD")
	e.write("remove-sae", "SAE_D")
	e.okJSON(&w, "remove-node", "D")
	e.okJSON(&nodes, "nodes")
	var names []string
	for _, n := range nodes.Nodes {
		names = append(names, n.Name)
	}
	if !slices.Equal(names, []string{"A", "B", "C"}) {
		t.Errorf("nodes after removals: %v", names)
	}
	e.okJSON(&links, "links")
	if len(links.Links) != 1 || links.Links[0].Name != "L_BC" {
		t.Errorf("links after removals: %+v", links)
	}
	e.okJSON(&saes, "saes")
	if len(saes.SAEs) != 2 {
		t.Errorf("saes after removals: %+v", saes)
	}
	if got := e.ok("-o", "json", "saes"); e.ok("saes", "-o", "json") != got {
		t.Errorf("json output differs between runs")
	}

	// Certificates of the wrong kind.
	for _, id := range []pki.Identity{{Kind: pki.KindSAE, ID: "SAE_A"}, {Kind: pki.KindNode, ID: "A"}} {
		bad := &env{t: t, c: e.c, flags: flagsFor(t, e.c, id, e.c.Addrs())}
		bad.fails(1, "qkdctl: add-node: permission denied: "+id.String()+" may not call this (qkdctl needs an operator certificate", "add-node", "X")
		bad.fails(1, "qkdctl: nodes: permission denied: "+id.String()+" may not call this", "nodes")
	}
	sae := &env{t: t, c: e.c, flags: flagsFor(t, e.c, pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"}, e.c.Addrs())}
	sae.fails(1, "qkdctl: status: permission denied: sae:SAE_A may not call this", "status")
	// A node may read its own configuration only.
	node := &env{t: t, c: e.c, flags: flagsFor(t, e.c, pki.Identity{Kind: pki.KindNode, ID: "A"}, e.c.Addrs())}
	node.fails(1, "qkdctl: config: permission denied: node A may read only its own configuration", "config", "B")
}

func sameSet(a, b, x, y string) bool {
	return (a == x && b == y) || (a == y && b == x)
}

func TestStatusAndLeader(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	leader := e.c.WaitLeader(5 * time.Second)

	// Asked at a follower first, status still shows the leader's view.
	follower := (leader + 1) % 3
	addrs := e.c.Addrs()
	first := append([]string{addrs[follower]}, slices.Delete(slices.Clone(addrs), follower, follower+1)...)
	f := &env{t: t, c: e.c, flags: flagsFor(t, e.c, pki.Identity{Kind: pki.KindOperator, ID: "ops"}, first)}
	var st jsonStatus
	// The leader records its gRPC address in the state just after it wins.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if f.okJSON(&st, "status"); st.LeaderGRPC != "" {
			break
		}
	}
	if st.State != "Leader" || st.ID != e.c.Replicas[leader].ID || st.LeaderID != st.ID || st.LeaderGRPC != addrs[leader] ||
		len(st.Members) != 3 || st.Term == "" || st.Term == "0" || st.CommitIndex == "0" || st.Agents == nil {
		t.Errorf("status: %+v", st)
	}
	for i, m := range st.Members {
		if m.ID != e.c.Replicas[i].ID || m.Suffrage != "Voter" || m.Leader != (i == leader) || m.RaftAddress != m.ID ||
			(i == leader && m.GRPCAddress != addrs[i]) {
			t.Errorf("member %d: %+v", i, m)
		}
	}
	table := f.ok("status")
	for _, want := range []string{"Leader:       " + e.c.Replicas[leader].ID + " at " + addrs[leader], "Answered by:  " + e.c.Replicas[leader].ID + " (Leader)",
		"Agents:       none connected", "ID  RAFT ADDRESS  GRPC ADDRESS"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
	if r := row(t, table, e.c.Replicas[leader].ID); r[len(r)-1] != "*" || r[3] != "Voter" {
		t.Errorf("leader row %q", r)
	}

	// Writes follow the leader: stop it, with its address first in the list.
	e.write("add-node", "A")
	e.c.Stop(leader)
	first = append([]string{addrs[leader]}, slices.Delete(slices.Clone(addrs), leader, leader+1)...)
	after := &env{t: t, c: e.c, flags: flagsFor(t, e.c, pki.Identity{Kind: pki.KindOperator, ID: "ops"}, first)}
	after.write("add-node", "B")
	var nodes jsonNodes
	after.okJSON(&nodes, "nodes")
	if len(nodes.Nodes) != 2 || nodes.Nodes[1].Name != "B" {
		t.Errorf("nodes after failover: %+v", nodes)
	}
	after.okJSON(&st, "status")
	if st.State != "Leader" || st.ID == e.c.Replicas[leader].ID {
		t.Errorf("status after failover: %+v", st)
	}

	// With two of three replicas down there is no leader: changes fail after
	// --timeout, naming the replicas; status shows the last one's view.
	next := e.c.WaitLeader(5 * time.Second)
	e.c.Stop(next)
	after.fails(1, "qkdctl: add-node: no leader among the controllers at "+strings.Join(first, ", ")+" within 700ms (last: controller ",
		"add-node", "C", "--timeout", "700ms")
	after.okJSON(&st, "status", "--timeout", "3s")
	if st.State == "Leader" || st.LeaderID != "" && st.LeaderID != e.c.Replicas[next].ID {
		t.Errorf("status without a leader: %+v", st)
	}
}

func flagSetFor(*testing.T) *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("x", "", "")
	return fs
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestConnection(t *testing.T) {
	c := controllertest.Start(t, 3)
	ops := c.Files(pki.Identity{Kind: pki.KindOperator, ID: "ops"})
	ca := c.CA.Files().Cert

	// Nothing listens: a bounded wait, then one line naming the addresses.
	dead := closedAddr(t)
	start := time.Now()
	code, out, errOut := runCLI("--controllers", dead, "--ca", ca, "--cert", ops.Cert, "--key", ops.Key, "--timeout", "300ms", "nodes")
	if code != 1 || out != "" || !strings.HasPrefix(errOut, "qkdctl: nodes: no controller reachable at "+dead+" within 300ms") ||
		!strings.Contains(errOut, "connection refused") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("unreachable: exit %d, stderr %q", code, errOut)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("unreachable took %v", d)
	}
	code, _, errOut = runCLI("--controllers", dead, "--ca", ca, "--cert", ops.Cert, "--key", ops.Key, "--timeout", "200ms", "add-node", "X")
	if code != 1 || !strings.HasPrefix(errOut, "qkdctl: add-node: no controller reachable at "+dead) {
		t.Errorf("unreachable write: exit %d, stderr %q", code, errOut)
	}

	// A dead address first in the list: the next replica answers.
	code, _, errOut = runCLI("--controllers", dead+","+strings.Join(c.Addrs(), ","), "--ca", ca, "--cert", ops.Cert, "--key", ops.Key, "add-node", "A")
	if code != 0 {
		t.Errorf("dead first: exit %d, stderr %q", code, errOut)
	}

	// endpoints.json: paths relative to its folder; flags override it.
	dir := t.TempDir()
	epFile := filepath.Join(dir, ".qkdnet", "endpoints.json")
	rel := func(p string) string {
		r, err := filepath.Rel(filepath.Dir(epFile), p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	var ctls []map[string]string
	for i, r := range c.Replicas {
		ctls = append(ctls, map[string]string{"id": r.ID, "grpc": c.Addrs()[i], "raft": r.ID})
	}
	doc, _ := json.Marshal(map[string]any{
		"ca_cert": rel(ca), "controllers": ctls, "operator": map[string]string{"cert": rel(ops.Cert), "key": rel(ops.Key)},
		"kmms": []any{}, "saes": []any{},
	})
	if err := os.MkdirAll(filepath.Join(dir, ".qkdnet"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(epFile, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--endpoints", epFile, "saes"},
		{"saes", "--endpoints", filepath.Dir(epFile)},
		{"--endpoints", epFile, "--controllers", dead + "," + c.Addrs()[1], "saes"},
	} {
		if code, out, errOut := runCLI(args...); code != 0 || !strings.HasPrefix(out, "SAE_ID") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	if code, _, errOut := runCLI("--endpoints", epFile, "--controllers", dead, "--timeout", "200ms", "saes"); code != 1 || !strings.Contains(errOut, "no controller reachable at "+dead+" within") {
		t.Errorf("--controllers overrides the file: exit %d, stderr %q", code, errOut)
	}
	// --cert overrides the file's operator: an SAE certificate is refused.
	saeFiles := c.Files(pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"})
	if code, _, errOut := runCLI("--endpoints", epFile, "--cert", saeFiles.Cert, "--key", saeFiles.Key, "saes"); code != 1 || !strings.Contains(errOut, "permission denied: sae:SAE_A") {
		t.Errorf("--cert overrides the file: exit %d, stderr %q", code, errOut)
	}

	// The default .qkdnet/endpoints.json of the current directory.
	t.Chdir(dir)
	if code, out, errOut := runCLI("-o", "json", "nodes"); code != 0 || !strings.Contains(out, `"name": "A"`) {
		t.Errorf("default endpoints: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	// A certificate from another CA: the TLS handshake fails.
	otherCA, err := pki.InitCA(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	otherOps, err := otherCA.IssueOperator("ops")
	if err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runCLI("--controllers", c.Addrs()[0], "--ca", ca, "--cert", otherOps.Cert, "--key", otherOps.Key, "--timeout", "300ms", "nodes")
	if code != 1 || !strings.HasPrefix(errOut, "qkdctl: nodes: no controller reachable at "+c.Addrs()[0]) || strings.Count(errOut, "\n") != 1 {
		t.Errorf("foreign certificate: exit %d, stderr %q", code, errOut)
	}
}

func TestSettings(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir) // no .qkdnet here
	missing := filepath.Join(dir, "nope.json")
	if err := os.WriteFile(filepath.Join(dir, "broken.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty.json"), []byte(`{"kmms": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"nodes"}, 2, "qkdctl: nodes: no controller to ask: give --controllers HOST:PORT,... or --endpoints FILE (no .qkdnet/endpoints.json here)"},
		{[]string{"--controllers", "127.0.0.1:1", "nodes"}, 2, "qkdctl: nodes: no operator certificate: give --cert FILE --key FILE"},
		{[]string{"--controllers", "127.0.0.1:1", "--cert", "c.pem", "nodes"}, 2, "qkdctl: nodes: --cert without --key: give both"},
		{[]string{"--controllers", "127.0.0.1:1", "--key", "k.pem", "nodes"}, 2, "qkdctl: nodes: --key without --cert: give both"},
		{[]string{"--controllers", "127.0.0.1:1", "--cert", "c.pem", "--key", "k.pem", "nodes"}, 2, "qkdctl: nodes: no CA certificate: give --ca FILE"},
		{[]string{"--controllers", "127.0.0.1:1", "--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem", "nodes"}, 1, "qkdctl: nodes: CA: open ca.pem: no such file or directory"},
		{[]string{"--controllers", "127.0.0.1", "--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem", "nodes"}, 2, `qkdctl: nodes: controller address "127.0.0.1": want HOST:PORT`},
		{[]string{"--endpoints", missing, "status"}, 2, "qkdctl: status: --endpoints " + missing + ": no such file"},
		{[]string{"--endpoints", "broken.json", "status"}, 1, "qkdctl: status: broken.json: unexpected end of JSON input"},
		{[]string{"--endpoints", "empty.json", "status"}, 2, "qkdctl: status: no controller to ask: give --controllers HOST:PORT,... or --endpoints FILE (empty.json has none)"},
	} {
		code, out, errOut := runCLI(tc.args...)
		if code != tc.code || out != "" || errOut != tc.want+"\n" && !(strings.HasPrefix(errOut, tc.want) && strings.Count(errOut, "\n") == 1) {
			t.Errorf("%q: exit %d (want %d), stdout %q, stderr %q, want %q", tc.args, code, tc.code, out, errOut, tc.want)
		}
	}
}

func TestUsage(t *testing.T) {
	// --help of every command (and of aliases) exits 0 with its usage on stdout.
	for _, c := range commands() {
		for _, name := range append([]string{c.name}, c.aliases...) {
			for _, args := range [][]string{{name, "--help"}, {name, "-h"}, {"help", name}, {"--controllers", "x", name, "--help"}} {
				code, out, errOut := runCLI(args...)
				if code != 0 || !strings.HasPrefix(out, "Usage: qkdctl "+c.synopsis()+"\n") || errOut != "" {
					t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
				}
			}
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		code, out, _ := runCLI(args...)
		if code != 0 || !strings.HasPrefix(out, "Usage: qkdctl [global flags] <command>") {
			t.Errorf("%q: exit %d, stdout %q", args, code, out)
		}
		for _, c := range commands() {
			if !strings.Contains(out, "\n  "+c.short()+" ") {
				t.Errorf("usage lacks %s", c.name)
			}
		}
	}
	code, out, errOut := runCLI()
	if code != 2 || out != "" || !strings.HasPrefix(errOut, "Usage: qkdctl") {
		t.Errorf("no arguments: exit %d, stderr %q", code, errOut)
	}

	for _, tc := range []struct {
		args []string
		want string // the first line of stderr
	}{
		{[]string{"frobnicate"}, `qkdctl: unknown command "frobnicate"`},
		{[]string{"help", "frobnicate"}, `qkdctl: help: unknown command "frobnicate"`},
		{[]string{"--bogus", "nodes"}, "qkdctl: flag provided but not defined: -bogus"},
		{[]string{"nodes", "--bogus"}, "qkdctl: nodes: flag provided but not defined: -bogus"},
		{[]string{"nodes", "extra"}, `qkdctl: nodes: unexpected argument "extra"`},
		{[]string{"status", "x", "y"}, `qkdctl: status: unexpected argument "x"`},
		{[]string{"config"}, "qkdctl: config: want 1 argument (NODE), got 0"},
		{[]string{"add-node"}, "qkdctl: add-node: want 1 argument (NAME), got 0"},
		{[]string{"add-node", "A", "B"}, "qkdctl: add-node: want 1 argument (NAME), got 2"},
		{[]string{"add-node", "A", "--kme-id"}, "qkdctl: add-node: flag needs an argument: -kme-id"},
		{[]string{"remove-node"}, "qkdctl: remove-node: want 1 argument (NAME), got 0"},
		{[]string{"add-link", "L", "A"}, "qkdctl: add-link: want 3 arguments (NAME A B), got 2"},
		{[]string{"add-link", "L", "A", "B", "C"}, "qkdctl: add-link: want 3 arguments (NAME A B), got 4"},
		{[]string{"add-link", "L", "A", "B", "--key-size", "-8"}, `qkdctl: add-link: invalid value "-8" for flag -key-size: want a number from 0 to 4294967295`},
		{[]string{"add-link", "L", "A", "B", "--key-size", "4294967296"}, `qkdctl: add-link: invalid value "4294967296" for flag -key-size`},
		{[]string{"remove-link"}, "qkdctl: remove-link: want 1 argument (NAME), got 0"},
		{[]string{"add-sae", "S"}, "qkdctl: add-sae: want 2 arguments (SAE_ID NODE), got 1"},
		{[]string{"remove-sae", "S", "T"}, "qkdctl: remove-sae: want 1 argument (SAE_ID), got 2"},
		{[]string{"remove-app"}, "qkdctl: remove-app: want 1 argument (APP_ID), got 0"},
		{[]string{"add-node", ""}, "qkdctl: add-node: NAME is empty"},
		{[]string{"-o", "yaml", "nodes"}, `qkdctl: nodes: -o "yaml": want table or json`},
		{[]string{"nodes", "--output", "xml"}, `qkdctl: nodes: -o "xml": want table or json`},
		{[]string{"--timeout", "0s", "nodes"}, "qkdctl: nodes: --timeout 0s: must be positive"},
		{[]string{"--timeout", "soon", "nodes"}, `qkdctl: invalid value "soon" for flag -timeout`},
	} {
		code, out, errOut := runCLI(tc.args...)
		first, _, _ := strings.Cut(errOut, "\n")
		if code != 2 || out != "" || !strings.HasPrefix(first, tc.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q, want exit 2 and %q", tc.args, code, out, errOut, tc.want)
		}
		if cmd := lookup(tc.args[0]); cmd != nil && !strings.Contains(errOut, "\nUsage: qkdctl "+cmd.synopsis()+"\n") {
			t.Errorf("%q: stderr %q lacks the usage line", tc.args, errOut)
		}
	}
	// "--" ends the flags.
	if pos, err := parseInterleaved(flagSetFor(t), []string{"a", "-x", "1", "--", "-b", "c"}); err != nil || !slices.Equal(pos, []string{"a", "-b", "c"}) {
		t.Errorf("parseInterleaved: %q %v", pos, err)
	}
}
