package state

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/qkdnet/qkdnet/qkd015"
)

func reroute(id string, path ...string) Command {
	return Command{Op: OpRerouteApp, Name: id, App: &AppSpec{Path: path}}
}

// A reroute makes the new path the next generation and keeps the old one
// as a drain at the nodes on it, through snapshots, until the application
// is removed.
func TestRerouteKeepsOldPathAsDrain(t *testing.T) {
	s := New()
	apply(t, s, ring(4)...) // N0 -L0- N1 -L1- N2 -L2- N3 -L3- N0
	id := qkd015.AppID("SAE_N0", "SAE_N2")
	apply(t, s, openApp("SAE_N0", "SAE_N2", "L0", "L1"))
	r, err := s.Apply(s.Index()+1, reroute(id, "L3", "L2"))
	if err != nil {
		t.Fatal(err)
	}
	a := r.(*AppInfo)
	if a.Gen != 1 || !slices.Equal(a.Path, []string{"L3", "L2"}) || !slices.Equal(a.Nodes, []string{"N0", "N3", "N2"}) {
		t.Fatalf("after reroute: gen %d path %v nodes %v", a.Gen, a.Path, a.Nodes)
	}
	if len(a.Drains) != 1 || a.Drains[0].Gen != 0 || !slices.Equal(a.Drains[0].Path, []string{"L0", "L1"}) ||
		!slices.Equal(a.Drains[0].Nodes, []string{"N0", "N1", "N2"}) {
		t.Fatalf("drains %+v", a.Drains)
	}
	// N1 is only on the old path: drain hops, no current hops.
	n1 := qkd015.Apps(mustNode(t, s, "N1"))[id]
	if n1 == nil || len(qkd015.Hops(n1)) != 0 || len(qkd015.DrainHops(n1)) != 2 {
		t.Fatalf("N1's entry: %+v", n1)
	}
	// N3 only on the new one; N0 and N2 on both.
	n3 := qkd015.Apps(mustNode(t, s, "N3"))[id]
	if n3 == nil || len(qkd015.Hops(n3)) != 2 || len(qkd015.DrainHops(n3)) != 0 || n3.GetPathGeneration() != 1 {
		t.Fatalf("N3's entry: %+v", n3)
	}
	for _, n := range []string{"N0", "N2"} {
		e := qkd015.Apps(mustNode(t, s, n))[id]
		if len(qkd015.Hops(e)) != 1 || len(qkd015.DrainHops(e)) != 1 {
			t.Fatalf("%s's entry: hops %v drains %v", n, qkd015.Hops(e), qkd015.DrainHops(e))
		}
	}
	for _, l := range []string{"L0", "L1", "L2", "L3"} {
		if li, _ := s.Link(l); !slices.Contains(li.Apps, id) {
			t.Errorf("link %s does not list the application", l)
		}
	}
	if err := s.removeLink("L1"); err == nil {
		t.Error("a link still draining an application was removed")
	}
	// Restore rebuilds the same generations and drains.
	b := snap(t, s)
	rs, err := Restore(b)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rs.Apps()) != fmt.Sprint(s.Apps()) || fmt.Sprint(rs.Links()) != fmt.Sprint(s.Links()) {
		t.Fatalf("restored:\n%+v\nwant\n%+v", rs.Apps(), s.Apps())
	}
	// Back to the first path: a third generation, two drains.
	apply(t, s, reroute(id, "L0", "L1"))
	apply(t, rs, reroute(id, "L0", "L1"))
	if !bytes.Equal(snap(t, s), snap(t, rs)) {
		t.Fatal("original and restored states diverge after the same reroute")
	}
	got, _ := s.App(id)
	if got.Gen != 2 || len(got.Drains) != 2 || got.Drains[1].Gen != 1 {
		t.Fatalf("second reroute: gen %d drains %+v", got.Gen, got.Drains)
	}
	// Removing the application clears every node and link.
	apply(t, s, Command{Op: OpRemoveApp, Name: id})
	for _, n := range s.NodeNames() {
		if qkd015.Apps(mustNode(t, s, n))[id] != nil {
			t.Errorf("node %s still holds the application", n)
		}
	}
	for _, l := range s.Links() {
		if len(l.Apps) != 0 {
			t.Errorf("link %s still lists %v", l.Name, l.Apps)
		}
	}
}

func TestRerouteDropsOldestDrain(t *testing.T) {
	s := New()
	apply(t, s, ring(4)...)
	id := qkd015.AppID("SAE_N0", "SAE_N2")
	apply(t, s, openApp("SAE_N0", "SAE_N2", "L0", "L1"))
	paths := [][]string{{"L3", "L2"}, {"L0", "L1"}}
	for i := range MaxDrains + 2 {
		apply(t, s, reroute(id, paths[i%2]...))
	}
	a, _ := s.App(id)
	if a.Gen != MaxDrains+2 || len(a.Drains) != MaxDrains || a.Drains[0].Gen != 2 {
		t.Fatalf("gen %d, drains %+v", a.Gen, a.Drains)
	}
	rs, err := Restore(snap(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rs.Apps()) != fmt.Sprint(s.Apps()) {
		t.Fatalf("restored:\n%+v\nwant\n%+v", rs.Apps(), s.Apps())
	}
}

func TestRerouteRefusals(t *testing.T) {
	s := New()
	apply(t, s, ring(4)...)
	id := qkd015.AppID("SAE_N0", "SAE_N2")
	apply(t, s, openApp("SAE_N0", "SAE_N2", "L0", "L1"))
	apply(t, s, Command{Op: OpEnableLink, Name: "L2", Link: &LinkSpec{Disabled: true}})
	before := snap(t, s)
	for name, c := range map[string]Command{
		"same path":     reroute(id, "L0", "L1"),
		"disabled link": reroute(id, "L3", "L2"),
		"wrong end":     reroute(id, "L3"),
		"unknown app":   reroute("00000000-0000-0000-0000-000000000000", "L3", "L2"),
		"no path":       {Op: OpRerouteApp, Name: id},
	} {
		if _, err := s.Apply(s.Index()+1, c); err == nil {
			t.Errorf("%s: reroute accepted", name)
		}
		if !bytes.Equal(withoutIndex(snap(t, s)), withoutIndex(before)) {
			t.Fatalf("%s: refused reroute changed the state", name)
		}
	}
}

func mustNode(t *testing.T, s *State, name string) *qkd015.Node {
	t.Helper()
	n, ok := s.Node(name)
	if !ok {
		t.Fatalf("no node %s", name)
	}
	return n
}
