package qkd015

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/openconfig/ygot/ygot"
)

var (
	nodeA   = NodeID("A")
	nodeB   = NodeID("B")
	linkAB  = LinkID("FSO_AB")
	linkBC  = LinkID("FIBER_BC")
	linkVAC = LinkID("VIRT_AC")
	appAB   = AppID("SAE_A", "SAE_B")
)

// sampleNode is node A of a small network: two SAEs, a PHYS link to B with
// its KMM role, a VIRT link, an interface and one key stream with QoS and
// hops. Leaf-lists are sorted, so Parse(Marshal(x)) is reflect.DeepEqual to x.
func sampleNode() *Node {
	n := NewNode(nodeA)
	n.QkdnVersion = ygot.String("1.0")
	n.QkdnLocationId = ygot.String("rooftop-1")
	n.QkdnStatus = NodeOperating
	n.NodeName = ygot.String("A")
	n.KmeId = ygot.String("KME_A")
	n.AgentAddress = ygot.String("10.0.0.1:7000")
	n.ConfigVersion = ygot.Uint64(42)
	caps := n.GetOrCreateQkdnCapabilities()
	caps.LinkStatsSupport = ygot.Bool(true)
	caps.ApplicationStatsSupport = ygot.Bool(false)
	caps.KeyRelayModeEnable = ygot.Bool(true)

	saes := n.GetOrCreateSaes()
	saes.GetOrCreateSae("SAE_A")
	saes.GetOrCreateSae("SAE_C")

	iface := n.GetOrCreateQkdInterfaces().GetOrCreateQkdInterface(1)
	iface.QkdiModel = ygot.String("emulator")
	iface.QkdiType = TechDVQKD
	iface.GetOrCreateQkdiAttPoint().Device = ygot.String("eth0")
	iface.GetOrCreateQkdiAttPoint().Port = ygot.Uint32(1)
	iface.GetOrCreateQkdiCapabilities().RoleSupport = Transceiver
	iface.GetOrCreateQkdiCapabilities().WavelengthRange = ygot.String("1530-1565")
	iface.GetOrCreateQkdiCapabilities().MaxAbsorption = ygot.Float64(12.5)

	links := n.GetOrCreateQkdLinks()
	l := links.GetOrCreateQkdLink(linkAB)
	l.QkdlType = LinkPhys
	l.QkdlStatus = LinkActive
	l.QkdlEnable = ygot.Bool(true)
	l.GetOrCreateQkdlLocal().QkdnId = ygot.String(nodeA)
	l.GetOrCreateQkdlLocal().QkdiId = ygot.Uint32(1)
	l.GetOrCreateQkdlRemote().QkdnId = ygot.String(nodeB)
	l.GetOrCreateQkdlRemote().QkdiId = ygot.Uint32(1)
	l.QkdlApplications = []string{appAB}
	l.PhysChannelAtt = ygot.Float64(3.25)
	l.PhysWavelength = ygot.String("1550")
	l.PhysQkdRole = Transmitter
	l.LinkName = ygot.String("FSO_AB")
	l.KmmRole = RoleMaster
	l.RemoteNodeName = ygot.String("B")
	l.RemoteKmeId = ygot.String("KME_B")
	l.RemoteAgentAddress = ygot.String("10.0.0.2:7000")
	l.KeySize = ygot.Uint32(256)

	v := links.GetOrCreateQkdLink(linkVAC)
	v.QkdlType = LinkVirt
	v.QkdlStatus = LinkPending
	v.VirtNextHop = sortedStrings(linkAB, linkBC)
	v.VirtBandwidth = ygot.Uint32(1000)
	v.KmmRole = RoleSlave

	app := n.GetOrCreateQkdApplications().GetOrCreateQkdApp(appAB)
	app.AppType = AppClient
	app.ServerAppId = ygot.String(SAEURI("SAE_A"))
	app.ClientAppId = []string{SAEURI("SAE_B")}
	app.AppPriority = ygot.Uint32(3)
	app.ExpirationTime = ygot.String("2030-01-02T03:04:05Z")
	qos := app.GetOrCreateAppQos()
	qos.MaxBandwidth = ygot.Uint32(64000)
	qos.MinBandwidth = ygot.Uint32(8000)
	qos.Jitter = ygot.Uint32(10)
	qos.Ttl = ygot.Uint32(3600)
	qos.ClientsSharedPathEnable = ygot.Bool(true)
	qos.ClientsSharedKeysRequired = ygot.Bool(false)
	app.BackingQkdlId = sortedStrings(linkAB, linkBC)
	app.LocalQkdnId = ygot.String(nodeA)
	app.RemoteQkdnId = ygot.String(nodeB)
	hops := app.GetOrCreateHops()
	h0 := hops.GetOrCreateHop(linkAB)
	h0.Index = ygot.Uint32(0)
	h0.Role = RoleMaster
	h1 := hops.GetOrCreateHop(linkBC)
	h1.Index = ygot.Uint32(1)
	h1.Role = RoleSlave
	return n
}

func sortedStrings(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestRoundTrip(t *testing.T) {
	state := sampleNode()
	perf := state.GetQkdLinks().GetQkdLink(linkAB).GetOrCreateQkdlPerformance()
	perf.Skr = ygot.Uint32(5000)
	perf.Eskr = ygot.Uint32(4000)
	perf.ExpectedConsumption = ygot.Uint32(1000)
	qber := perf.GetOrCreatePhysPerf(PerfQBER)
	qber.Value = ygot.Float64(0.021)
	stats := state.GetQkdApplications().GetQkdApp(appAB)
	stats.AppStatus = AppOn
	stats.CreationTime = ygot.String("2029-12-31T23:59:59.5+01:00")
	stats.GetOrCreateAppStatistics().GetOrCreateStatistics("2030-01-01T00:00:00Z").ConsumedBits = ygot.Uint32(1 << 20)

	for _, tc := range []struct {
		name string
		node *Node
	}{
		{"minimal", NewNode(nodeA)},
		{"config", sampleNode()},
		{"config and state", state},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Marshal(tc.node)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(Marshal(x)): %v\n%s", err, b)
			}
			if !Equal(got, tc.node) {
				t.Errorf("Parse(Marshal(x)) is not Equal to x")
			}
			if !reflect.DeepEqual(got, tc.node) {
				diff, _ := ygot.Diff(Root(tc.node), Root(got))
				t.Errorf("Parse(Marshal(x)) differs from x: %v", diff)
			}
			b2, err := Marshal(got)
			if err != nil || !bytes.Equal(b, b2) {
				t.Errorf("Marshal(Parse(b)) = %s, %v; want b = %s", b2, err, b)
			}
		})
	}
}

// The augmentation and the app_qos leaves goyang used to drop are in the
// output with the module qualification RFC 7951 asks for.
func TestMarshalNames(t *testing.T) {
	b, err := Marshal(sampleNode())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`{"etsi-qkd-sdn-node:qkd_node":{`,
		`"qkdnet-sdn-ext:saes":{"sae":[{"sae_id":"SAE_A"},{"sae_id":"SAE_C"}]}`,
		`"qkdnet-sdn-ext:kmm_role":"MASTER"`,
		`"qkdl_type":"etsi-qkd-node-types:PHYS"`,
		`"clients_shared_path_enable":true`,
		`"clients_shared_keys_required":false`,
		`"qkdnet-sdn-ext:hops":{"hop":[`,
		`"qkdnet-sdn-ext:config_version":"42"`, // uint64: a string
		`"phys_channel_att":"3.25"`,            // decimal64: a string
		`"server_app_id":"qkd://sae/SAE_A"`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("Marshal output lacks %s\n%s", want, b)
		}
	}
}

// The exact bytes of a small node: the format others compare against.
func TestMarshalGolden(t *testing.T) {
	n := NewNode(nodeA)
	n.NodeName = ygot.String("A")
	l := n.GetOrCreateQkdLinks().GetOrCreateQkdLink(linkAB)
	l.QkdlType = LinkPhys
	l.KmmRole = RoleMaster
	n.GetOrCreateQkdApplications() // empty containers are left out
	got, err := Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"etsi-qkd-sdn-node:qkd_node":{"qkd_links":{"qkd_link":[{"qkdl_id":"` + linkAB +
		`","qkdl_type":"etsi-qkd-node-types:PHYS","qkdnet-sdn-ext:kmm_role":"MASTER"}]},"qkdn_id":"` + nodeA +
		`","qkdnet-sdn-ext:node_name":"A"}}`
	if string(got) != want {
		t.Errorf("Marshal =\n%s\nwant\n%s", got, want)
	}
}

func TestMarshalDeterministic(t *testing.T) {
	// The same data built in another order: lists filled backwards,
	// leaf-lists reversed.
	reordered := func() *Node {
		n := NewNode(nodeA)
		app := n.GetOrCreateQkdApplications().GetOrCreateQkdApp(appAB)
		app.BackingQkdlId = []string{linkBC, linkAB}
		hops := app.GetOrCreateHops()
		h1 := hops.GetOrCreateHop(linkBC)
		h1.Index, h1.Role = ygot.Uint32(1), RoleSlave
		h0 := hops.GetOrCreateHop(linkAB)
		h0.Index, h0.Role = ygot.Uint32(0), RoleMaster
		return n
	}
	inOrder := func() *Node {
		n := NewNode(nodeA)
		app := n.GetOrCreateQkdApplications().GetOrCreateQkdApp(appAB)
		hops := app.GetOrCreateHops()
		h0 := hops.GetOrCreateHop(linkAB)
		h0.Index, h0.Role = ygot.Uint32(0), RoleMaster
		h1 := hops.GetOrCreateHop(linkBC)
		h1.Index, h1.Role = ygot.Uint32(1), RoleSlave
		app.BackingQkdlId = []string{linkAB, linkBC}
		return n
	}
	// Many entries, so that Go's random map order would show.
	many := func(reverse bool) *Node {
		n := NewNode(nodeA)
		idx := make([]int, 64)
		for i := range idx {
			idx[i] = i
		}
		if reverse {
			slices.Reverse(idx)
		}
		for _, i := range idx {
			l := n.GetOrCreateQkdLinks().GetOrCreateQkdLink(LinkID(fmt.Sprint("L", i)))
			l.KeySize = ygot.Uint32(uint32(i))
			n.GetOrCreateSaes().GetOrCreateSae(fmt.Sprint("SAE_", i))
		}
		return n
	}

	for _, tc := range []struct {
		name string
		a, b *Node
	}{
		{"same tree twice", sampleNode(), sampleNode()},
		{"built in another order", inOrder(), reordered()},
		{"64 entries per list", many(false), many(true)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, err := Marshal(tc.a)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i++ {
				again, err := Marshal(tc.a)
				if err != nil || !bytes.Equal(first, again) {
					t.Fatalf("Marshal of the same tree differs: %s vs %s (%v)", first, again, err)
				}
			}
			other, err := Marshal(tc.b)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(first, other) {
				t.Errorf("equal trees marshal differently:\n%s\n%s", first, other)
			}
			if !Equal(tc.a, tc.b) {
				t.Errorf("Equal = false for equal trees")
			}
		})
	}

	// Marshal must not reorder the caller's tree.
	n := reordered()
	if _, err := Marshal(n); err != nil {
		t.Fatal(err)
	}
	if got := n.GetQkdApplications().GetQkdApp(appAB).BackingQkdlId; got[0] != linkBC {
		t.Errorf("Marshal sorted the caller's leaf-list: %v", got)
	}
}

// doc wraps the members of a qkd_node in a document.
func doc(members string) string {
	return `{"etsi-qkd-sdn-node:qkd_node":{"qkdn_id":"` + nodeA + `"` + members + `}}`
}

// linkDoc is a document with one link holding the given members.
func linkDoc(members string) string {
	return doc(`,"qkd_links":{"qkd_link":[{"qkdl_id":"` + linkAB + `"` + members + `}]}`)
}

func TestParseRejects(t *testing.T) {
	linkPath := "qkd_node/qkd_links/qkd_link[qkdl_id=" + linkAB + "]"
	for _, tc := range []struct {
		name string
		doc  string
		want []string // each problem's "path: message", in order
	}{
		{"bad uuid in qkdn_id",
			`{"etsi-qkd-sdn-node:qkd_node":{"qkdn_id":"xyz"}}`,
			[]string{`qkd_node/qkdn_id: "xyz" does not match the uuid pattern`}},
		{"bad uuid in a list key",
			doc(`,"qkd_links":{"qkd_link":[{"qkdl_id":"xyz"}]}`),
			[]string{`qkd_node/qkd_links/qkd_link[qkdl_id=xyz]/qkdl_id: "xyz" does not match the uuid pattern`}},
		{"unknown field",
			doc(`,"qkdn_colour":"blue"`),
			[]string{`qkd_node/qkdn_colour: unknown field`}},
		{"unknown field in a list entry",
			linkDoc(`,"qkdl_colour":"blue"`),
			[]string{linkPath + `/qkdl_colour: unknown field`}},
		{"field of another module",
			doc(`,"etsi-qkd-sdn-node:node_name":"A"`),
			[]string{`qkd_node/etsi-qkd-sdn-node:node_name: unknown field (node_name is in module qkdnet-sdn-ext)`}},
		{"augmented field without its module",
			doc(`,"node_name":"A"`),
			[]string{`qkd_node/node_name: must be written "qkdnet-sdn-ext:node_name": RFC 7951 qualifies a member whose module differs from its parent's`}},
		{"string for uint32",
			linkDoc(`,"qkdnet-sdn-ext:key_size":"256"`),
			[]string{linkPath + `/key_size: got string "256", want a number (uint32)`}},
		{"fraction for uint32",
			linkDoc(`,"virt_bandwidth":1.5`),
			[]string{linkPath + `/virt_bandwidth: 1.5 is not an integer (uint32)`}},
		{"negative uint32",
			linkDoc(`,"virt_bandwidth":-1`),
			[]string{linkPath + `/virt_bandwidth: -1 is out of range for uint32`}},
		{"number for uint64",
			doc(`,"qkdnet-sdn-ext:config_version":7`),
			[]string{`qkd_node/config_version: got number 7, want a string (uint64: RFC 7951 writes 64-bit integers as strings)`}},
		{"string for boolean",
			linkDoc(`,"qkdl_enable":"true"`),
			[]string{linkPath + `/qkdl_enable: got string "true", want true or false (boolean)`}},
		{"too many fraction digits",
			linkDoc(`,"phys_channel_att":"1.2345"`),
			[]string{linkPath + `/phys_channel_att: 1.2345 has more than 3 fraction digits`}},
		{"unknown enum value for kmm_role",
			linkDoc(`,"qkdnet-sdn-ext:kmm_role":"BOSS"`),
			[]string{linkPath + `/kmm_role: "BOSS" is not a kmm-role value (want MASTER or SLAVE)`}},
		{"unknown enum value for a hop role",
			doc(`,"qkd_applications":{"qkd_app":[{"app_id":"` + appAB + `","qkdnet-sdn-ext:hops":{"hop":[{"qkdl_id":"` + linkAB + `","role":"master"}]}}]}`),
			[]string{"qkd_node/qkd_applications/qkd_app[app_id=" + appAB + "]/hops/hop[qkdl_id=" + linkAB + `]/role: "master" is not a kmm-role value (want MASTER or SLAVE)`}},
		{"identity not allowed for qkdl_type",
			linkDoc(`,"qkdl_type":"etsi-qkd-node-types:CLIENT"`),
			[]string{linkPath + `/qkdl_type: "etsi-qkd-node-types:CLIENT" is not a qkd-link-types identity (want etsi-qkd-node-types:PHYS or etsi-qkd-node-types:VIRT)`}},
		{"identity of another module",
			linkDoc(`,"qkdl_type":"qkdnet-sdn-ext:PHYS"`),
			[]string{linkPath + `/qkdl_type: "qkdnet-sdn-ext:PHYS" is not a qkd-link-types identity (want etsi-qkd-node-types:PHYS or etsi-qkd-node-types:VIRT)`}},
		{"missing list key",
			doc(`,"qkd_links":{"qkd_link":[{"qkdl_id":"` + linkAB + `"},{"qkdl_enable":true}]}`),
			[]string{`qkd_node/qkd_links/qkd_link[2]: missing list key qkdl_id`}},
		{"duplicate list entry",
			doc(`,"qkd_links":{"qkd_link":[{"qkdl_id":"` + linkAB + `"},{"qkdl_id":"` + linkAB + `"}]}`),
			[]string{linkPath + `: duplicate list entry (entries 1 and 2 have the same key)`}},
		{"list as an object",
			doc(`,"qkd_links":{"qkd_link":{"qkdl_id":"` + linkAB + `"}}`),
			[]string{`qkd_node/qkd_links/qkd_link: got an object, want an array of list entries`}},
		{"duplicate member",
			doc(`,"qkdn_version":"1","qkdn_version":"2"`),
			[]string{`qkd_node/qkdn_version: duplicate member`}},
		{"missing qkdn_id",
			`{"etsi-qkd-sdn-node:qkd_node":{"qkdn_version":"1"}}`,
			[]string{`qkd_node/qkdn_id: mandatory leaf is missing`}},
		{"bad date-and-time and wavelength",
			doc(`,"qkd_applications":{"qkd_app":[{"app_id":"` + appAB + `","expiration_time":"tomorrow"}]},"qkd_links":{"qkd_link":[{"qkdl_id":"` + linkAB + `","phys_wavelength":"0"}]}`),
			[]string{
				"qkd_node/qkd_applications/qkd_app[app_id=" + appAB + `]/expiration_time: "tomorrow" does not match the date-and-time pattern`,
				linkPath + `/phys_wavelength: "0" does not match the wavelength pattern`,
			}},
		{"duplicate leaf-list value",
			linkDoc(`,"virt_next_hop":["` + linkBC + `","` + linkBC + `"]`),
			[]string{linkPath + `/virt_next_hop: duplicate value "` + linkBC + `"`}},
		{"several problems",
			linkDoc(`,"qkdl_colour":"blue","qkdnet-sdn-ext:kmm_role":"BOSS"`),
			[]string{linkPath + `/qkdl_colour: unknown field`, linkPath + `/kmm_role: "BOSS" is not a kmm-role value (want MASTER or SLAVE)`}},
		{"top level without its module",
			`{"qkd_node":{"qkdn_id":"` + nodeA + `"}}`,
			[]string{`qkd_node: must be written "etsi-qkd-sdn-node:qkd_node": RFC 7951 qualifies top-level members with their module`}},
		{"other top-level member",
			`{"etsi-qkd-sdn-node:qkd_node":{"qkdn_id":"` + nodeA + `"},"ietf-interfaces:interfaces":{}}`,
			[]string{`ietf-interfaces:interfaces: unknown field (want "etsi-qkd-sdn-node:qkd_node")`}},
		{"qkd_node null",
			`{"etsi-qkd-sdn-node:qkd_node":null}`,
			[]string{`qkd_node: got null, want an object`}},
		{"malformed JSON",
			"{\"etsi-qkd-sdn-node:qkd_node\":{\n\"qkdn_id\": \"" + nodeA + "\",,\n}}",
			[]string{`malformed JSON at line 2, column 51: invalid character ',' looking for beginning of object key string`}},
		{"truncated JSON",
			`{"etsi-qkd-sdn-node:qkd_node":{`,
			[]string{`malformed JSON at line 1, column 32: unexpected end of input`}},
		{"trailing data",
			doc("") + ` {}`,
			[]string{`malformed JSON at line 1, column 83: data after the document`}},
		{"empty document", ``,
			[]string{`empty document: want {"etsi-qkd-sdn-node:qkd_node": {...}}`}},
		{"blank document", " \n\t",
			[]string{`empty document: want {"etsi-qkd-sdn-node:qkd_node": {...}}`}},
		{"empty object", `{}`,
			[]string{`empty document: no "etsi-qkd-sdn-node:qkd_node" member`}},
		{"not an object", `[]`,
			[]string{`got an array, want an object {"etsi-qkd-sdn-node:qkd_node": {...}}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse accepted %s: %+v", tc.doc, n)
			}
			if n != nil {
				t.Errorf("Parse returned a node with its error")
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not an *Error: %v", err, err)
			}
			var got []string
			for _, p := range e.Problems {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("problems:\n got %q\nwant %q", got, tc.want)
			}
			if err.Error() != strings.Join(tc.want, "; ") {
				t.Errorf("Error() = %q", err.Error())
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err.Error())
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		// check inspects the parsed node.
		check func(*Node) bool
	}{
		{"identity without its module",
			linkDoc(`,"qkdl_type":"PHYS"`),
			func(n *Node) bool { return n.GetQkdLinks().GetQkdLink(linkAB).QkdlType == LinkPhys }},
		{"member qualified with its parent's module",
			doc(`,"etsi-qkd-sdn-node:qkdn_version":"2"`),
			func(n *Node) bool { return n.GetQkdnVersion() == "2" }},
		{"app_qos leaves from ETSI's uses-augment",
			doc(`,"qkd_applications":{"qkd_app":[{"app_id":"` + appAB + `","app_qos":{"clients_shared_keys_required":true}}]}`),
			func(n *Node) bool {
				return n.GetQkdApplications().GetQkdApp(appAB).GetAppQos().GetClientsSharedKeysRequired()
			}},
		{"whitespace and empty lists",
			"\n " + doc(`,"qkd_links":{"qkd_link":[]}`) + "\n",
			func(n *Node) bool { return n.GetQkdnId() == nodeA }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := Parse([]byte(tc.doc))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !tc.check(n) {
				t.Errorf("parsed node is not as expected: %+v", n)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	linkPath := "qkd_node/qkd_links/qkd_link[qkdl_id=" + linkAB + "]"
	for _, tc := range []struct {
		name  string
		build func() *Node
		want  string
	}{
		{"nil node", func() *Node { return nil }, "qkd_node: nil node"},
		{"empty node", func() *Node { return &Node{} }, "qkd_node/qkdn_id: mandatory leaf is missing"},
		{"bad uuid", func() *Node { return NewNode("A") }, `qkd_node/qkdn_id: "A" does not match the uuid pattern`},
		{"key differs from the map key", func() *Node {
			n := NewNode(nodeA)
			n.GetOrCreateQkdLinks().GetOrCreateQkdLink(linkAB).QkdlId = ygot.String(linkBC)
			return n
		}, linkPath + `/qkdl_id: "` + linkBC + `" differs from the key the entry is stored under`},
		{"enumerated value out of range", func() *Node {
			n := NewNode(nodeA)
			n.GetOrCreateQkdLinks().GetOrCreateQkdLink(linkAB).KmmRole = KMMRole(9)
			return n
		}, linkPath + `/kmm_role: 9 is not a kmm-role value`},
		{"several problems, in a fixed order", func() *Node {
			n := NewNode("node-a")
			n.GetOrCreateQkdLinks().GetOrCreateQkdLink("link-2")
			n.GetOrCreateQkdLinks().GetOrCreateQkdLink("link-1")
			return n
		}, `qkd_node/qkd_links/qkd_link[qkdl_id=link-1]/qkdl_id: "link-1" does not match the uuid pattern; ` +
			`qkd_node/qkd_links/qkd_link[qkdl_id=link-2]/qkdl_id: "link-2" does not match the uuid pattern; ` +
			`qkd_node/qkdn_id: "node-a" does not match the uuid pattern`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.build()
			err := Validate(n)
			if err == nil || err.Error() != tc.want {
				t.Errorf("Validate = %v\n          want %s", err, tc.want)
			}
			if _, merr := Marshal(n); merr == nil || merr.Error() != tc.want {
				t.Errorf("Marshal error = %v, want Validate's", merr)
			}
		})
	}
	if err := Validate(sampleNode()); err != nil {
		t.Errorf("Validate(sampleNode()) = %v", err)
	}
}

func TestDecimal64(t *testing.T) {
	a, b := 0.1, 0.2 // variables: constant arithmetic would be exact
	linkPath := "qkd_node/qkd_links/qkd_link[qkdl_id=" + linkAB + "]"
	for _, tc := range []struct {
		name    string
		att     float64
		json    string // as Marshal writes it
		problem string // or Validate's problem
	}{
		{"integer", 3, `"3"`, ""},
		{"three digits", 0.125, `"0.125"`, ""},
		{"negative", -0.5, `"-0.5"`, ""},
		{"large, which %v writes with an exponent", 1234567, `"1234567"`, ""},
		{"largest", 9223372036854.775, `"9223372036854.775"`, ""},
		{"computed", a + b, "", "0.30000000000000004 has more than 3 fraction digits (round it, e.g. with qkd015.Decimal64)"},
		{"rounded", *Decimal64(a + b), `"0.3"`, ""},
		{"too large", 1e16, "", "10000000000000000 is out of range for decimal64 with 3 fraction digits"},
		{"not a number", math.NaN(), "", "NaN is not a decimal64 value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := NewNode(nodeA)
			n.GetOrCreateQkdLinks().GetOrCreateQkdLink(linkAB).PhysChannelAtt = ygot.Float64(tc.att)
			b, err := Marshal(n)
			if tc.problem != "" {
				if want := linkPath + "/phys_channel_att: " + tc.problem; err == nil || err.Error() != want {
					t.Errorf("Marshal error = %v, want %s", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := `"phys_channel_att":` + tc.json; !strings.Contains(string(b), want) {
				t.Errorf("Marshal = %s, want %s", b, want)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(Marshal(x)): %v", err)
			}
			if !reflect.DeepEqual(got, n) {
				t.Errorf("Parse(Marshal(x)) = %v, want %v", *got.GetQkdLinks().GetQkdLink(linkAB).PhysChannelAtt, tc.att)
			}
		})
	}
}

func TestErrorTruncates(t *testing.T) {
	n := NewNode(nodeA)
	for i := 0; i < 30; i++ {
		n.GetOrCreateSaes().GetOrCreateSae(fmt.Sprint("SAE_", i))
		n.GetOrCreateQkdLinks().GetOrCreateQkdLink(fmt.Sprint("bad-", i))
	}
	err := Validate(n)
	var e *Error
	if !errors.As(err, &e) || len(e.Problems) != 30 {
		t.Fatalf("Validate = %v", err)
	}
	if !strings.HasSuffix(err.Error(), "; and 10 more") || strings.Count(err.Error(), "; ") != 20 {
		t.Errorf("Error() = %q", err.Error())
	}
}

func TestEqual(t *testing.T) {
	reordered := sampleNode()
	app := reordered.GetQkdApplications().GetQkdApp(appAB)
	slices.Reverse(app.BackingQkdlId)
	withEmpty := sampleNode()
	withEmpty.GetQkdLinks().GetQkdLink(linkAB).GetOrCreateQkdlPerformance()
	changed := sampleNode()
	changed.GetQkdLinks().GetQkdLink(linkAB).KmmRole = RoleSlave
	extra := sampleNode()
	extra.GetSaes().GetOrCreateSae("SAE_D")

	for _, tc := range []struct {
		name string
		a, b *Node
		want bool
	}{
		{"same data", sampleNode(), sampleNode(), true},
		{"leaf-list order", sampleNode(), reordered, true},
		{"empty container", sampleNode(), withEmpty, true},
		{"changed enum", sampleNode(), changed, false},
		{"extra list entry", sampleNode(), extra, false},
		{"both nil", nil, nil, true},
		{"one nil", sampleNode(), nil, false},
		{"invalid trees compare too", NewNode("x"), NewNode("x"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Equal(tc.a, tc.b); got != tc.want {
				t.Errorf("Equal(a, b) = %v, want %v", got, tc.want)
			}
			if got := Equal(tc.b, tc.a); got != tc.want {
				t.Errorf("Equal(b, a) = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestIDs(t *testing.T) {
	kinds := map[string]func(string) string{
		"node": NodeID,
		"link": LinkID,
		"app":  func(s string) string { return AppID(s, "") },
	}
	for _, name := range []string{"A", "FSO_AB", "SAE_A", ""} {
		seen := map[string]string{}
		for kind, id := range kinds {
			got := id(name)
			if again := id(name); again != got {
				t.Errorf("%s(%q) not stable: %s then %s", kind, name, got, again)
			}
			u, err := uuid.Parse(got)
			if err != nil || u.Version() != 5 || u.String() != got {
				t.Errorf("%s(%q) = %q, want a canonical UUIDv5", kind, name, got)
			}
			if other, dup := seen[got]; dup {
				t.Errorf("%s(%q) = %s(%q) = %s", kind, name, other, name, got)
			}
			seen[got] = kind
		}
	}
	// Fixed values: a changed namespace would rename every stored object.
	if got, want := NodeID("A"), uuid.NewSHA1(nodeNamespace, []byte("A")).String(); got != want {
		t.Errorf("NodeID(A) = %s, want %s", got, want)
	}
	for _, tc := range []struct{ a, b [2]string }{
		{[2]string{"SAE_A", "SAE_B"}, [2]string{"SAE_B", "SAE_A"}},
		{[2]string{"SAE_A", "BC"}, [2]string{"SAE_AB", "C"}},
		{[2]string{"", "AB"}, [2]string{"A", "B"}},
	} {
		if AppID(tc.a[0], tc.a[1]) == AppID(tc.b[0], tc.b[1]) {
			t.Errorf("AppID%q == AppID%q", tc.a, tc.b)
		}
	}
	// The IDs are valid qkdn_id / qkdl_id / app_id values.
	if err := Validate(sampleNode()); err != nil {
		t.Error(err)
	}
}

func TestNamespaces(t *testing.T) {
	for kind, ns := range map[string]uuid.UUID{"node": nodeNamespace, "link": linkNamespace, "app": appNamespace} {
		want := uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://github.com/qkdnet/qkdnet/qkd015#"+kind))
		if ns != want {
			t.Errorf("%s namespace = %s, want %s", kind, ns, want)
		}
	}
}

func TestSAEURI(t *testing.T) {
	for _, id := range []string{"SAE_A", "sae-1", "a/b", "with space", "ü", "%41"} {
		uri := SAEURI(id)
		got, ok := SAEFromURI(uri)
		if !ok || got != id {
			t.Errorf("SAEFromURI(SAEURI(%q) = %q) = %q, %v", id, uri, got, ok)
		}
	}
	if got := SAEURI("SAE_A"); got != "qkd://sae/SAE_A" {
		t.Errorf("SAEURI(SAE_A) = %q", got)
	}
	for _, uri := range []string{"", "qkd://sae/", "qkd://sae/a/b", "qkd://kme/SAE_A", "https://sae/SAE_A", "SAE_A", "qkd://sae/%zz", "qkd://sae/SAE%5FA"} {
		if id, ok := SAEFromURI(uri); ok {
			t.Errorf("SAEFromURI(%q) = %q, true; want false", uri, id)
		}
	}
}

func TestEnumHelpers(t *testing.T) {
	for _, tc := range []struct {
		e    ygot.GoEnum
		name string
	}{
		{LinkPhys, "PHYS"}, {LinkVirt, "VIRT"},
		{AppClient, "CLIENT"}, {AppInternal, "INTERNAL"},
		{LinkActive, "ACTIVE"}, {LinkPassive, "PASSIVE"}, {LinkPending, "PENDING"}, {LinkOff, "OFF"},
		{AppOn, "ON"}, {AppDisconnected, "DISCONNECTED"}, {AppOutOfTime, "OUT-OF-TIME"}, {AppZombie, "ZOMBIE"},
		{NodeNew, "NEW"}, {NodeOperating, "OPERATING"}, {NodeDown, "DOWN"}, {NodeFailure, "FAILURE"}, {NodeOut, "OUT"},
		{Transmitter, "TRANSMITTER"}, {Receiver, "RECEIVER"}, {Transceiver, "TRANSCEIVER"},
		{RoleMaster, "MASTER"}, {RoleSlave, "SLAVE"},
		{TechCVQKD, "CV-QKD"}, {TechDVQKD, "DV-QKD"}, {TechDVQKDCOW, "DV-QKD-COW"}, {TechDVQKD2Ws, "DV-QKD-2Ws"},
		{IfaceEnabled, "ENABLED"}, {IfaceDisabled, "DISABLED"}, {IfaceFailed, "FAILED"},
		{PerfQBER, "QBER"}, {PerfSNR, "SNR"},
	} {
		if got, ok := EnumName(tc.e); !ok || got != tc.name {
			t.Errorf("EnumName(%v) = %q, %v; want %q", tc.e, got, ok, tc.name)
		}
	}
	if name, ok := EnumName(KMMRole(0)); ok {
		t.Errorf("EnumName(unset) = %q, true", name)
	}
	if name, ok := EnumName(KMMRole(7)); ok {
		t.Errorf("EnumName(7) = %q, true", name)
	}

	var r KMMRole
	if !ParseEnum("SLAVE", &r) || r != RoleSlave {
		t.Errorf("ParseEnum(SLAVE) = %v", r)
	}
	var lt LinkType
	if !ParseEnum("etsi-qkd-node-types:VIRT", &lt) || lt != LinkVirt {
		t.Errorf("ParseEnum(etsi-qkd-node-types:VIRT) = %v", lt)
	}
	if !ParseEnum("PHYS", &lt) || lt != LinkPhys {
		t.Errorf("ParseEnum(PHYS) = %v", lt)
	}
	if ParseEnum("CLIENT", &lt) || ParseEnum("foo:PHYS", &lt) || ParseEnum("", &r) {
		t.Errorf("ParseEnum accepted a value outside the type")
	}
}
