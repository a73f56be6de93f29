package state

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/qkd015"
)

// apply applies commands in order from index 1 and fails the test on error.
func apply(t testing.TB, s *State, cmds ...Command) {
	t.Helper()
	for _, c := range cmds {
		if _, err := s.Apply(s.Index()+1, c); err != nil {
			t.Fatalf("%s: %v", c.Op, err)
		}
	}
}

func addNode(name string) Command    { return Command{Op: OpAddNode, Node: &NodeSpec{Name: name}} }
func addSAE(id, node string) Command { return Command{Op: OpAddSAE, SAE: &SAESpec{ID: id, Node: node}} }
func addLink(name, a, b string) Command {
	return Command{Op: OpAddLink, Link: &LinkSpec{Name: name, A: a, B: b}}
}
func openApp(master, slave string, path ...string) Command {
	return Command{Op: OpOpenApp, App: &AppSpec{ID: qkd015.AppID(master, slave), MasterSAE: master, SlaveSAE: slave, Path: path,
		QoS: QoS{MaxBandwidth: 256000, MinBandwidth: 2560}, Priority: 1, Created: "2026-11-26T12:00:00Z"}}
}

// fig4 is the paper's two-node testbed.
func fig4() []Command {
	return []Command{addNode("A"), addNode("B"), addLink("FSO_AB", "A", "B"), addSAE("SAE_A", "A"), addSAE("SAE_B", "B")}
}

func snap(t testing.TB, s *State) []byte {
	t.Helper()
	b, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOpenAppWritesBothNodes(t *testing.T) {
	s := New()
	apply(t, s, fig4()...)
	v, err := s.Apply(s.Index()+1, openApp("SAE_A", "SAE_B", "FSO_AB"))
	if err != nil {
		t.Fatal(err)
	}
	info := v.(*AppInfo)
	if info.MasterNode != "A" || info.SlaveNode != "B" || !slices.Equal(info.Masters, []string{"A"}) {
		t.Fatalf("app = %+v", info)
	}
	linkID := qkd015.LinkID("FSO_AB")
	for node, role := range map[string]qkd015.KMMRole{"A": qkd015.RoleMaster, "B": qkd015.RoleSlave} {
		tree, _ := s.Node(node)
		a := tree.GetQkdApplications().GetQkdApp(info.ID)
		if a == nil {
			t.Fatalf("node %s has no qkd_app %s", node, info.ID)
		}
		if a.GetServerAppId() != "qkd://sae/SAE_A" || !slices.Equal(a.ClientAppId, []string{"qkd://sae/SAE_B"}) {
			t.Errorf("node %s: server %q client %v", node, a.GetServerAppId(), a.ClientAppId)
		}
		if h := a.GetHops().GetHop(linkID); h == nil || h.Role != role || h.GetIndex() != 0 {
			t.Errorf("node %s: hop %+v, want role %v", node, h, role)
		}
		if a.GetAppQos().GetMinBandwidth() != 2560 || !slices.Equal(a.BackingQkdlId, []string{linkID}) {
			t.Errorf("node %s: qos %+v backing %v", node, a.GetAppQos(), a.BackingQkdlId)
		}
		if l := tree.GetQkdLinks().GetQkdLink(linkID); !slices.Equal(l.QkdlApplications, []string{info.ID}) {
			t.Errorf("node %s: link applications %v", node, l.QkdlApplications)
		}
	}
	// Opening again is idempotent: the same application, an ErrAppExists.
	before := snap(t, s)
	v, err = s.Apply(s.Index()+1, openApp("SAE_A", "SAE_B", "FSO_AB"))
	if !errors.Is(err, ErrAppExists) || v.(*AppInfo).ID != info.ID {
		t.Fatalf("second open = %v, %v", v, err)
	}
	after := snap(t, s)
	if !bytes.Equal(withoutIndex(before), withoutIndex(after)) {
		t.Error("second open changed the state")
	}
}

// withoutIndex drops the index from a snapshot so snapshots taken at
// different indexes compare by content.
func withoutIndex(b []byte) []byte {
	i := bytes.Index(b, []byte(`"members"`))
	return b[i:]
}

func TestRefusedCommandsChangeNothing(t *testing.T) {
	base := append(fig4(), addNode("C"), addSAE("SAE_C", "C"), openApp("SAE_A", "SAE_B", "FSO_AB"))
	for _, tc := range []struct {
		name string
		cmd  Command
		want error
		msg  string
	}{
		{"duplicate node", addNode("A"), ErrExists, "node A"},
		{"bad node name", addNode("a/b"), ErrInvalid, "node id"},
		{"link to unknown node", addLink("L", "A", "Z"), ErrNotFound, `node "Z"`},
		{"link to itself", addLink("L", "A", "A"), ErrInvalid, "both ends"},
		{"second link between a pair", addLink("L2", "B", "A"), ErrExists, "already joined"},
		{"duplicate link name", addLink("FSO_AB", "A", "C"), ErrExists, "link FSO_AB"},
		{"master not an end", Command{Op: OpAddLink, Link: &LinkSpec{Name: "L", A: "A", B: "C", Master: "B"}}, ErrInvalid, "master"},
		{"key size not bytes", Command{Op: OpAddLink, Link: &LinkSpec{Name: "L", A: "A", B: "C", KeySize: 12}}, ErrInvalid, "multiple of 8"},
		{"unknown technology", Command{Op: OpAddLink, Link: &LinkSpec{Name: "L", A: "A", B: "C", Technology: "CARRIER-PIGEON"}}, ErrInvalid, "technology"},
		{"SAE on two nodes", addSAE("SAE_A", "B"), ErrExists, "SAE_A"},
		{"SAE on unknown node", addSAE("SAE_X", "Z"), ErrNotFound, `node "Z"`},
		{"remove link in use", Command{Op: OpRemoveLink, Name: "FSO_AB"}, ErrInUse, "carries application"},
		{"remove SAE in use", Command{Op: OpRemoveSAE, Name: "SAE_B"}, ErrInUse, "application"},
		{"remove node with links", Command{Op: OpRemoveNode, Name: "A"}, ErrInUse, "link FSO_AB"},
		{"remove node with SAE", Command{Op: OpRemoveNode, Name: "C"}, ErrInUse, "SAE SAE_C"},
		{"remove unknown app", Command{Op: OpRemoveApp, Name: "nope"}, ErrNotFound, "nope"},
		{"app without path", openApp("SAE_A", "SAE_C", "FSO_AB"), ErrInvalid, "ends at node B, not C"},
		{"app with a wrong ID", Command{Op: OpOpenApp, App: &AppSpec{ID: "x", MasterSAE: "SAE_B", SlaveSAE: "SAE_A", Path: []string{"FSO_AB"}}}, ErrInvalid, "app_id"},
		{"app of one node", openApp("SAE_C", "SAE_C"), ErrInvalid, "both attached"},
		{"unknown op", Command{Op: "drop_tables"}, ErrInvalid, "unknown operation"},
		{"op without body", Command{Op: OpAddLink}, ErrInvalid, "without link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			apply(t, s, base...)
			before := snap(t, s)
			_, err := s.Apply(s.Index()+1, tc.cmd)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tc.want, tc.msg)
			}
			if !bytes.Equal(withoutIndex(before), withoutIndex(snap(t, s))) {
				t.Error("refused command changed the state")
			}
		})
	}
}

func TestRemoveUndoesAdd(t *testing.T) {
	s := New()
	apply(t, s, addNode("A"), addNode("B"))
	empty := withoutIndex(snap(t, s))
	apply(t, s, addLink("FSO_AB", "A", "B"), addSAE("SAE_A", "A"), addSAE("SAE_B", "B"), openApp("SAE_A", "SAE_B", "FSO_AB"))
	apply(t, s,
		Command{Op: OpRemoveApp, Name: qkd015.AppID("SAE_A", "SAE_B")},
		Command{Op: OpRemoveSAE, Name: "SAE_A"}, Command{Op: OpRemoveSAE, Name: "SAE_B"},
		Command{Op: OpRemoveLink, Name: "FSO_AB"})
	if got := withoutIndex(snap(t, s)); !bytes.Equal(got, empty) {
		t.Errorf("state after removing everything:\n%s\nwant\n%s", got, empty)
	}
	apply(t, s, Command{Op: OpRemoveNode, Name: "A"})
	if _, ok := s.Node("A"); ok {
		t.Error("node A still there")
	}
}

func TestRegisterUpdatesNode(t *testing.T) {
	s := New()
	apply(t, s, fig4()...)
	apply(t, s, Command{Op: OpRegister, Node: &NodeSpec{Name: "A", KMEID: "KME_A", AgentAddress: "127.0.0.1:9443",
		Interfaces:   []Interface{{Link: "FSO_AB", Model: "emulator", Technology: "DV-QKD-COW"}, {Link: "spare", Technology: "CV-QKD"}},
		Capabilities: Capabilities{LinkStats: true}}})
	tree, _ := s.Node("A")
	if tree.GetAgentAddress() != "127.0.0.1:9443" || tree.GetQkdnStatus() != qkd015.NodeOperating {
		t.Fatalf("node A: address %q status %v", tree.GetAgentAddress(), tree.GetQkdnStatus())
	}
	ifs := tree.GetQkdInterfaces().QkdInterface
	if len(ifs) != 2 {
		t.Fatalf("interfaces = %d, want 2 (the link's, matched by name, and a new one)", len(ifs))
	}
	l := tree.GetQkdLinks().GetQkdLink(qkd015.LinkID("FSO_AB"))
	it := ifs[l.GetQkdlLocal().GetQkdiId()]
	if it.GetQkdiModel() != "emulator" {
		t.Errorf("link interface = %+v", it)
	}
	if name, _ := qkd015.EnumName(it.GetQkdiType()); name != "DV-QKD-COW" {
		t.Errorf("technology = %q", name)
	}
	// B's push carries A's address on the link.
	b, err := s.Render("B", 42)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := qkd015.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	bl := tb.GetQkdLinks().GetQkdLink(qkd015.LinkID("FSO_AB"))
	if bl.GetRemoteAgentAddress() != "127.0.0.1:9443" || bl.GetRemoteNodeName() != "A" || bl.GetRemoteKmeId() != "KME_A" || tb.GetConfigVersion() != 42 {
		t.Errorf("B's link: remote %q %q %q version %d", bl.GetRemoteNodeName(), bl.GetRemoteKmeId(), bl.GetRemoteAgentAddress(), tb.GetConfigVersion())
	}
	if bl.KmmRole != qkd015.RoleSlave {
		t.Errorf("B's role = %v", bl.KmmRole)
	}
}

func TestSnapshotRestore(t *testing.T) {
	s := New()
	apply(t, s, ring(6)...)
	apply(t, s, Command{Op: OpSetMember, Member: &Member{ID: "c1", Raft: "r1", GRPC: "g1"}})
	path := s.ShortestPath("N0", "N3", nil)
	apply(t, s, openApp("SAE_N0", "SAE_N3", path...), openApp("SAE_N1", "SAE_N2", "L1"))
	b := snap(t, s)
	r, err := Restore(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap(t, r); !bytes.Equal(got, b) {
		t.Fatalf("restored state snapshots differently")
	}
	if len(r.Apps()) != 2 || fmt.Sprint(r.Apps()) != fmt.Sprint(s.Apps()) {
		t.Errorf("apps: restored %+v, want %+v", r.Apps(), s.Apps())
	}
	if fmt.Sprint(r.Links()) != fmt.Sprint(s.Links()) || fmt.Sprint(r.SAEs()) != fmt.Sprint(s.SAEs()) {
		t.Errorf("indexes differ after restore:\n%v\n%v", r.Links(), s.Links())
	}
	// The restored state goes on exactly as the original.
	next := Command{Op: OpRemoveApp, Name: qkd015.AppID("SAE_N1", "SAE_N2")}
	apply(t, s, next)
	apply(t, r, next)
	if !bytes.Equal(snap(t, s), snap(t, r)) {
		t.Error("original and restored states diverge after the same command")
	}
	if _, err := Restore([]byte(`{"nodes":{"A":{"etsi-qkd-sdn-node:qkd_node":{"qkdn_id":"not-a-uuid"}}}}`)); err == nil {
		t.Error("snapshot with an invalid tree restored")
	}
}

// ring returns commands for n nodes N0..N(n-1) joined in a ring by links
// L0..L(n-1) (Li joins Ni and Ni+1), one SAE per node.
func ring(n int) []Command {
	var out []Command
	for i := range n {
		out = append(out, addNode(fmt.Sprintf("N%d", i)), addSAE(fmt.Sprintf("SAE_N%d", i), fmt.Sprintf("N%d", i)))
	}
	for i := range n {
		out = append(out, addLink(fmt.Sprintf("L%d", i), fmt.Sprintf("N%d", i), fmt.Sprintf("N%d", (i+1)%n)))
	}
	return out
}

func TestShortestPath(t *testing.T) {
	s := New()
	apply(t, s, ring(6)...)
	for _, tc := range []struct {
		from, to string
		w        Weight
		want     []string
	}{
		{"N0", "N1", nil, []string{"L0"}},
		{"N0", "N2", nil, []string{"L0", "L1"}},
		{"N0", "N4", nil, []string{"L5", "L4"}},
		{"N0", "N3", nil, []string{"L0", "L1", "L2"}}, // tie: both ways are 3 hops; same answer every time
		{"N0", "N2", func(l LinkInfo) float64 {
			if l.Name == "L1" {
				return -1
			}
			return 1
		}, []string{"L5", "L4", "L3", "L2"}},
	} {
		got := s.ShortestPath(tc.from, tc.to, tc.w)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s->%s = %v, want %v", tc.from, tc.to, got, tc.want)
		}
		if nodes, err := s.CheckPath(tc.from, tc.to, got); err != nil || nodes[0] != tc.from || nodes[len(nodes)-1] != tc.to {
			t.Errorf("path %v does not check: %v %v", got, nodes, err)
		}
	}
	apply(t, s, addNode("lonely"))
	if p := s.ShortestPath("N0", "lonely", nil); p != nil {
		t.Errorf("path to an unlinked node = %v", p)
	}
}

// TestDeterministic applies the same log to two states, one of which is
// snapshotted and restored halfway, and expects byte-equal snapshots.
func TestDeterministic(t *testing.T) {
	cmds := ring(8)
	cmds = append(cmds, openApp("SAE_N0", "SAE_N4", "L0", "L1", "L2", "L3"), openApp("SAE_N5", "SAE_N6", "L5"),
		addLink("L0", "N0", "N1"), // refused: duplicate
		Command{Op: OpRemoveApp, Name: qkd015.AppID("SAE_N5", "SAE_N6")}, openApp("SAE_N6", "SAE_N5", "L5"))
	a, b := New(), New()
	for i, c := range cmds {
		_, errA := a.Apply(uint64(i+1), c)
		_, errB := b.Apply(uint64(i+1), c)
		if fmt.Sprint(errA) != fmt.Sprint(errB) {
			t.Fatalf("command %d: %v vs %v", i, errA, errB)
		}
		if i == len(cmds)/2 {
			r, err := Restore(snap(t, b))
			if err != nil {
				t.Fatal(err)
			}
			b = r
		}
	}
	if !bytes.Equal(snap(t, a), snap(t, b)) {
		t.Error("same log, different states")
	}
}

// generated returns a connected network of n nodes and about 3n links: a
// ring plus two chords per node, deterministically placed.
func generated(n int) []Command {
	out := ring(n)
	seen := map[[2]int]bool{}
	for i := range n {
		seen[[2]int{min(i, (i+1)%n), max(i, (i+1)%n)}] = true
	}
	k := n
	for i := range n {
		for _, step := range []int{7 + i%13, n/3 + i%17} {
			j := (i + step) % n
			e := [2]int{min(i, j), max(i, j)}
			if i == j || seen[e] {
				continue
			}
			seen[e] = true
			out = append(out, addLink(fmt.Sprintf("L%d", k), fmt.Sprintf("N%d", i), fmt.Sprintf("N%d", j)))
			k++
		}
	}
	return out
}

func TestGeneratedNetwork(t *testing.T) {
	s := New()
	apply(t, s, generated(200)...)
	_, links, _ := s.Counts()
	if links < 500 {
		t.Fatalf("generated network has %d links", links)
	}
	p := s.ShortestPath("N0", "N100", nil)
	if _, err := s.CheckPath("N0", "N100", p); err != nil || len(p) > 10 {
		t.Fatalf("path %v: %v", p, err)
	}
}

// BenchmarkOpenApp1000 measures what the leader does for a new key stream
// on a 1,000-node, ~3,000-link network: compute the path, apply the
// application to the state (build and validate each node's qkd_app), and
// render the configuration of every node on the path (the JSON_IETF that
// is pushed). Each part is reported on its own.
func BenchmarkOpenApp1000(b *testing.B) {
	s := New()
	apply(b, s, generated(1000)...)
	_, links, _ := s.Counts()
	b.ReportMetric(float64(links), "links")
	var pathT, applyT, renderT time.Duration
	hops := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		from, to := fmt.Sprintf("N%d", i%1000), fmt.Sprintf("N%d", (i*7919+500)%1000)
		if from == to {
			continue
		}
		t0 := time.Now()
		path := s.ShortestPath(from, to, nil)
		if path == nil {
			b.Fatalf("no path %s->%s", from, to)
		}
		t1 := time.Now()
		v, err := s.Apply(s.Index()+1, openApp("SAE_"+from, "SAE_"+to, path...))
		if err != nil && !errors.Is(err, ErrAppExists) {
			b.Fatal(err)
		}
		t2 := time.Now()
		for _, n := range v.(*AppInfo).Nodes {
			if _, err := s.Render(n, s.Index()); err != nil {
				b.Fatal(err)
			}
		}
		pathT, applyT, renderT = pathT+t1.Sub(t0), applyT+t2.Sub(t1), renderT+time.Since(t2)
		hops += len(path)
	}
	n := float64(b.N)
	b.ReportMetric(float64(pathT.Microseconds())/n/1000, "path-ms")
	b.ReportMetric(float64(applyT.Microseconds())/n/1000, "apply-ms")
	b.ReportMetric(float64(renderT.Microseconds())/n/1000, "render-ms")
	b.ReportMetric(float64(hops)/n, "hops")
}

// BenchmarkPath1000 is path computation alone on the same network.
func BenchmarkPath1000(b *testing.B) {
	s := New()
	apply(b, s, generated(1000)...)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if s.ShortestPath(fmt.Sprintf("N%d", i%1000), fmt.Sprintf("N%d", (i*7919+500)%1000), nil) == nil {
			b.Fatal("no path")
		}
	}
}

func TestJoinAndLeave(t *testing.T) {
	s := New()
	apply(t, s, append(fig4(), addNode("C"), addSAE("SAE_C", "C"), openApp("SAE_A", "SAE_B", "FSO_AB"))...)
	id := qkd015.AppID("SAE_A", "SAE_B")
	join := func(sae string) Command { return Command{Op: OpJoinApp, Name: id, SAE: &SAESpec{ID: sae}} }
	leave := func(sae string) Command { return Command{Op: OpLeaveApp, Name: id, SAE: &SAESpec{ID: sae}} }
	v, err := s.Apply(s.Index()+1, join("SAE_B"))
	if err != nil || !slices.Equal(v.(*AppInfo).Connected, []string{"SAE_B"}) {
		t.Fatalf("join = %v, %v", v, err)
	}
	apply(t, s, join("SAE_A"))
	for _, n := range []string{"A", "B"} {
		tree, _ := s.Node(n)
		if got := tree.GetQkdApplications().GetQkdApp(id).ConnectedSae; !slices.Equal(got, []string{"SAE_A", "SAE_B"}) {
			t.Errorf("node %s: connected_sae = %v", n, got)
		}
	}
	r, err := Restore(snap(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := r.App(id); !slices.Equal(a.Connected, []string{"SAE_A", "SAE_B"}) {
		t.Errorf("restored connected = %v", a.Connected)
	}
	for _, tc := range []struct {
		cmd  Command
		want error
	}{
		{join("SAE_A"), ErrExists},
		{join("SAE_C"), ErrInvalid},
		{Command{Op: OpJoinApp, Name: "nope", SAE: &SAESpec{ID: "SAE_A"}}, ErrNotFound},
		{Command{Op: OpJoinApp, Name: id}, ErrInvalid},
	} {
		before := snap(t, s)
		if _, err := s.Apply(s.Index()+1, tc.cmd); !errors.Is(err, tc.want) {
			t.Errorf("%+v: err = %v, want %v", tc.cmd, err, tc.want)
		}
		if !bytes.Equal(withoutIndex(before), withoutIndex(snap(t, s))) {
			t.Errorf("%+v changed the state", tc.cmd)
		}
	}
	apply(t, s, leave("SAE_A"))
	if _, err := s.Apply(s.Index()+1, leave("SAE_A")); !errors.Is(err, ErrNotFound) {
		t.Errorf("second leave: %v", err)
	}
	// The last party leaving removes the application everywhere.
	v, err = s.Apply(s.Index()+1, leave("SAE_B"))
	if err != nil || v.(*AppInfo) != nil {
		t.Fatalf("last leave = %v, %v", v, err)
	}
	if _, ok := s.App(id); ok {
		t.Error("application still there")
	}
	if l, _ := s.Link("FSO_AB"); len(l.Apps) != 0 {
		t.Errorf("link still carries %v", l.Apps)
	}
}

func TestEnableLink(t *testing.T) {
	s := New()
	apply(t, s, ring(4)...)
	apply(t, s, Command{Op: OpEnableLink, Name: "L0", Link: &LinkSpec{Disabled: true}})
	for _, n := range []string{"N0", "N1"} {
		tree, _ := s.Node(n)
		if qkd015.Links(tree)[qkd015.LinkID("L0")].GetQkdlEnable() {
			t.Errorf("node %s: L0 still enabled", n)
		}
	}
	if p := s.ShortestPath("N0", "N1", nil); !slices.Equal(p, []string{"L3", "L2", "L1"}) {
		t.Errorf("path around the disabled link = %v", p)
	}
	if _, err := s.CheckPath("N0", "N1", []string{"L0"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a path over a disabled link checks: %v", err)
	}
	apply(t, s, Command{Op: OpEnableLink, Name: "L0", Link: &LinkSpec{}})
	if p := s.ShortestPath("N0", "N1", nil); !slices.Equal(p, []string{"L0"}) {
		t.Errorf("path after re-enabling = %v", p)
	}
	if _, err := s.Apply(s.Index()+1, Command{Op: OpEnableLink, Name: "nope", Link: &LinkSpec{}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown link: %v", err)
	}
	r, err := Restore(snap(t, s))
	if err != nil || !bytes.Equal(snap(t, r), snap(t, s)) {
		t.Errorf("restore: %v", err)
	}
}
