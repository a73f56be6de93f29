package agent

import (
	"fmt"
	"slices"
	"testing"

	"github.com/qkdnet/qkdnet/controller/state"
	"github.com/qkdnet/qkdnet/kmm"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/qkd015"
)

// After a reroute, every node runs the streams of the generation it is on:
// the new path's from sequence number gen<<40, the old path's draining.
func TestStreamsOfReroutedApplication(t *testing.T) {
	s := state.New()
	var cmds []state.Command
	nodes := []string{"A", "B", "C", "D"}
	for _, n := range nodes {
		cmds = append(cmds, state.Command{Op: state.OpAddNode, Node: &state.NodeSpec{Name: n}},
			state.Command{Op: state.OpRegister, Node: &state.NodeSpec{Name: n, AgentAddress: "127.0.0.1:1"}},
			state.Command{Op: state.OpAddSAE, SAE: &state.SAESpec{ID: "SAE_" + n, Node: n}})
	}
	for _, l := range [][2]string{{"A", "B"}, {"B", "C"}, {"C", "D"}, {"D", "A"}} {
		cmds = append(cmds, state.Command{Op: state.OpAddLink, Link: &state.LinkSpec{Name: l[0] + l[1], A: l[0], B: l[1]}})
	}
	id := qkd015.AppID("SAE_A", "SAE_C")
	cmds = append(cmds,
		state.Command{Op: state.OpOpenApp, App: &state.AppSpec{ID: id, MasterSAE: "SAE_A", SlaveSAE: "SAE_C", Path: []string{"AB", "BC"}}},
		state.Command{Op: state.OpRerouteApp, Name: id, App: &state.AppSpec{Path: []string{"DA", "CD"}}})
	for i, c := range cmds {
		if _, err := s.Apply(uint64(i+1), c); err != nil {
			t.Fatal(err)
		}
	}
	base := kmm.StreamID("SAE_A", "SAE_C")
	g1 := kmm.GenStreamID(base, 1)
	type want struct {
		streams []string // ID:link:first_seq:draining
		plans   []string // stream gen draining in out
	}
	for node, w := range map[string]want{
		"A": {streams: []string{base + ":AB:0:true", g1 + ":DA:1099511627776:false"},
			plans: []string{base + " 0 true - " + base, g1 + " 1 false - " + g1}},
		"B": {streams: []string{base + ":AB:0:true", base + "#1:BC:0:true"},
			plans: []string{base + " 0 true " + base + " " + base + "#1"}},
		"D": {streams: []string{g1 + ":DA:1099511627776:false", g1 + "#1:CD:1099511627776:false"},
			plans: []string{g1 + " 1 false " + g1 + " " + g1 + "#1"}},
		"C": {streams: []string{base + "#1:BC:0:true", base + ":relay:BC:0:true", g1 + "#1:CD:1099511627776:false", g1 + ":relay:CD:1099511627776:false"},
			plans: []string{base + " 0 true " + base + "#1 -", g1 + " 1 false " + g1 + "#1 -"}},
	} {
		doc, err := s.Render(node, s.Index())
		if err != nil {
			t.Fatal(err)
		}
		v, err := viewOf(node, s.Index(), doc)
		if err != nil {
			t.Fatal(err)
		}
		streams, plans, err := streamsOf(node, keystore.QoS{MaxBuffer: 64}, v)
		if err != nil {
			t.Fatalf("%s: %v", node, err)
		}
		var gotS, gotP []string
		for _, st := range streams {
			gotS = append(gotS, fmt.Sprintf("%s:%s:%d:%v", st.ID, st.Link, st.FirstSeq, st.Draining))
		}
		hop := func(h *kmm.RelayHop) string {
			if h == nil {
				return "-"
			}
			return h.Stream
		}
		for _, p := range plans {
			if p.Base != base {
				t.Errorf("%s: plan %s has base %q", node, p.Stream, p.Base)
			}
			gotP = append(gotP, fmt.Sprintf("%s %d %v %s %s", p.Stream, p.Gen, p.Draining, hop(p.In), hop(p.Out)))
		}
		slices.Sort(gotS)
		slices.Sort(gotP)
		slices.Sort(w.streams)
		slices.Sort(w.plans)
		if !slices.Equal(gotS, w.streams) || !slices.Equal(gotP, w.plans) {
			t.Errorf("node %s:\nstreams %q\n   want %q\nplans %q\n want %q", node, gotS, w.streams, gotP, w.plans)
		}
	}
}
