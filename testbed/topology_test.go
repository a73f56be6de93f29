package testbed

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseTopologyDefaults(t *testing.T) {
	top, err := ParseTopology([]byte(`
nodes: [{id: A}, {id: B, kme_id: KME_X}]
links: [{id: L1, a: A, b: B}, {id: L2, a: A, b: B, master: B, driver: remote, key_rate: 2.5, key_bytes: 64}]
saes: [{id: S1, node: A}]
kmm: {alloc_period: 250ms, key_lifetime: 2h, key_size: 512}
`))
	if err != nil {
		t.Fatal(err)
	}
	if top.Nodes[0].KMEID != "KME_A" || top.Nodes[1].KMEID != "KME_X" {
		t.Errorf("kme_ids %q %q", top.Nodes[0].KMEID, top.Nodes[1].KMEID)
	}
	l1, l2 := top.Links[0], top.Links[1]
	if l1.Master != "A" || l1.Slave() != "B" || l1.Driver != DriverEmulator || l1.KeyRate != 1 || l1.KeyBytes != 32 || l1.Kind != "QKD" {
		t.Errorf("link defaults: %+v", l1)
	}
	if l2.Master != "B" || l2.Slave() != "A" || l2.Driver != DriverRemote || l2.KeyRate != 2.5 || l2.KeyBytes != 64 {
		t.Errorf("link 2: %+v", l2)
	}
	s := top.KMM.Settings()
	if time.Duration(s.AllocPeriod) != 250*time.Millisecond || time.Duration(s.KeyLifetime) != 2*time.Hour || s.KeySize != 512 {
		t.Errorf("kmm settings %+v", s)
	}
}

func TestParseTopologyErrors(t *testing.T) {
	const nodes = "nodes: [{id: A}, {id: B}]\n"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"empty", "", "topology is empty"},
		{"no nodes", "nodes: []\n", "nodes: at least one node"},
		{"unknown field", "nodes: [{id: A, colour: red}]\n", "field colour not found"},
		{"unknown top field", nodes + "link: []\n", "field link not found"},
		{"not yaml", "nodes: [\n", "yaml"},
		{"wrong type", "nodes: [{id: A}]\nlinks: [{id: L, a: A, b: A, key_rate: fast}]\n", "fast"},
		{"node id missing", "nodes: [{kme_id: K}]\n", "nodes[0].id: id is empty"},
		{"node id bad", "nodes: [{id: A}, {id: \"x/y\"}]\n", "nodes[1].id"},
		{"node dup case", "nodes: [{id: A}, {id: a}]\n", `nodes[1].id: "a" repeats node "A"`},
		{"kme dup", "nodes: [{id: A, kme_id: K}, {id: B, kme_id: K}]\n", "nodes[1].kme_id"},
		{"link unknown node", nodes + "links: [{id: L, a: A, b: C}]\n", `links[0].b: node "C" is not in nodes`},
		{"link missing end", nodes + "links: [{id: L, a: A}]\n", "links[0].b: required"},
		{"link loop", nodes + "links: [{id: L, a: A, b: A}]\n", "links[0].b: a link needs two different nodes"},
		{"link dup", nodes + "links: [{id: L, a: A, b: B}, {id: L, a: B, b: A}]\n", "links[1].id"},
		{"link master", nodes + "links: [{id: L, a: A, b: B, master: C}]\n", "links[0].master"},
		{"link driver", nodes + "links: [{id: L, a: A, b: B, driver: laser}]\n", "links[0].driver"},
		{"link rate", nodes + "links: [{id: L, a: A, b: B, key_rate: -1}]\n", "links[0].key_rate"},
		{"link bytes", nodes + "links: [{id: L, a: A, b: B, key_bytes: 100000}]\n", "links[0].key_bytes"},
		{"sae node", nodes + "saes: [{id: S, node: Z}]\n", `saes[0].node: node "Z" is not in nodes`},
		{"sae no node", nodes + "saes: [{id: S}]\n", "saes[0].node: required"},
		{"sae dup", nodes + "saes: [{id: SAE_A, node: A}, {id: a, node: B}]\n", "saes[1].id"},
		{"sae id", nodes + "saes: [{id: '', node: A}]\n", "saes[0].id"},
		{"kmm negative", nodes + "kmm: {pool_max: -1}\n", "kmm.pool_max"},
		{"kmm bits", nodes + "kmm: {key_size: 100}\n", "kmm.key_size: 100 bits is not a multiple of 8"},
		{"kmm min max", nodes + "kmm: {min_key_size: 512, max_key_size: 256}\n", "kmm.min_key_size"},
		{"kmm duration", nodes + "kmm: {alloc_period: soon}\n", "want a duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTopology([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestEmbeddedTopologies(t *testing.T) {
	def := DefaultTopology()
	if len(def.Nodes) != 3 || len(def.Links) != 2 || def.Links[1].A != "B" || def.Links[1].B != "C" || len(def.SAEs) != 3 || def.SAEs[2].Node != "C" {
		t.Errorf("the default is not the paper's rooftops A-B-C: %+v", def)
	}
	top, err := LoadTopology("fig4")
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Nodes) != 2 || top.Nodes[0].ID != "A" || top.Nodes[1].KMEID != "KME_B" ||
		len(top.Links) != 1 || top.Links[0].Master != "A" || top.Links[0].KeyRate != 1 || top.Links[0].KeyBytes != 32 ||
		len(top.SAEs) != 2 || top.SAEs[0].ID != "SAE_A" || top.SAEs[1].Node != "B" {
		t.Errorf("fig4 is not the paper's Fig. 4: %+v", top)
	}
	ring, err := LoadTopology("ring")
	if err != nil {
		t.Fatal(err)
	}
	if len(ring.Nodes) != 4 || len(ring.Links) != 4 || len(ring.SAEs) != 4 || ring.Links[3].A != "D" || ring.Links[3].B != "A" {
		t.Errorf("ring is not A-B-C-D-A with an SAE at each: %+v", ring)
	}
	bench, err := LoadTopology("bench")
	if err != nil {
		t.Fatal(err)
	}
	var onA, onB int
	for _, s := range bench.SAEs {
		switch s.Node {
		case "A":
			onA++
		case "B":
			onB++
		}
	}
	if onA != 16 || onB != 16 || bench.SAEs[0].ID != "SAE_A1" || bench.SAEs[31].ID != "SAE_B16" {
		t.Errorf("bench: %d SAEs on A, %d on B", onA, onB)
	}
	// The embedded copies must not drift from deploy/topologies.
	for _, name := range EmbeddedTopologies() {
		emb, _ := embedded.ReadFile("topologies/" + name + ".yaml")
		dep, err := os.ReadFile(filepath.Join("..", "deploy", "topologies", name+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(emb, dep) {
			t.Errorf("testbed/topologies/%s.yaml differs from deploy/topologies/%[1]s.yaml; copy it over", name)
		}
	}
	if _, err := LoadTopology("nope"); err == nil || !strings.Contains(err.Error(), "bench, fig4, ring, rooftops") {
		t.Errorf("unknown topology: %v", err)
	}
	p := filepath.Join(t.TempDir(), "t.yaml")
	os.WriteFile(p, []byte("nodes: [{id: A}]\nsaes: [{id: S, node: B}]\n"), 0o644)
	if _, err := LoadTopology(p); err == nil || !strings.Contains(err.Error(), p+": saes[0].node") {
		t.Errorf("error should name the file and field: %v", err)
	}
}
