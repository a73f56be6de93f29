package controller

import (
	"slices"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/controller/state"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/qkd015"
)

// ring4 is A-B-C-D-A, each node the master of the link to its successor.
func ring4(t *testing.T) *state.State {
	s := state.New()
	var cmds []state.Command
	for _, n := range []string{"A", "B", "C", "D", "E"} {
		cmds = append(cmds, state.Command{Op: state.OpAddNode, Node: &state.NodeSpec{Name: n}})
	}
	for _, l := range [][2]string{{"A", "B"}, {"B", "C"}, {"C", "D"}, {"D", "A"}} {
		cmds = append(cmds, state.Command{Op: state.OpAddLink, Link: &state.LinkSpec{Name: l[0] + l[1], A: l[0], B: l[1]}})
	}
	for i, c := range cmds {
		if _, err := s.Apply(uint64(i+1), c); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func liveLinks(rates map[string][2]uint64) map[string]nodeLive {
	out := map[string]nodeLive{}
	for link, r := range rates {
		master := link[:1]
		l := out[master]
		if l.status == nil {
			l.status = &qkdv1.NodeStatus{}
		}
		l.status.Links = append(l.status.Links, &qkdv1.LinkStatus{Link: link, Skr: r[0], PoolKeys: r[1]})
		out[master] = l
	}
	return out
}

func TestChoosePath(t *testing.T) {
	s := ring4(t)
	// Through B the links are slow and nearly empty; through D fast and full.
	live := liveLinks(map[string][2]uint64{"AB": {1000, 10}, "BC": {1000, 10}, "CD": {1_000_000, 100_000}, "DA": {1_000_000, 100_000}})
	for _, tc := range []struct {
		name   string
		live   map[string]nodeLive
		min    uint32
		want   []string
		reason string
		avail  string
	}{
		{"unmeasured links: fewest hops, ties by name", nil, 0, []string{"AB", "BC"}, "", ""},
		{"more key left through D", live, 0, []string{"DA", "CD"}, "", ""},
		{"only D can carry 5 kbit/s", live, 5000, []string{"DA", "CD"}, "", ""},
		{"nothing carries 5 Mbit/s", live, 5_000_000, nil, ctlclient.ReasonQoSNotMet, "1000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := choosePath(s, tc.live, "A", "C", tc.min)
			if tc.reason == "" {
				if err != nil || !slices.Equal(got, tc.want) {
					t.Fatalf("path = %v, %v; want %v", got, err, tc.want)
				}
				return
			}
			st := status.Convert(err)
			if st.Code() != codes.FailedPrecondition || len(st.Details()) != 1 {
				t.Fatalf("err = %v", err)
			}
			ei := st.Details()[0].(*errdetails.ErrorInfo)
			if ei.GetReason() != tc.reason || ei.GetMetadata()["available_bps"] != tc.avail {
				t.Errorf("refusal %v %v; want %s with available_bps %s", ei.GetReason(), ei.GetMetadata(), tc.reason, tc.avail)
			}
		})
	}
	// A link its Master reports OFF (driver down) is not used.
	down := liveLinks(map[string][2]uint64{"AB": {1_000_000, 100_000}, "BC": {1_000_000, 100_000}})
	down["D"] = nodeLive{status: &qkdv1.NodeStatus{Links: []*qkdv1.LinkStatus{{Link: "DA", Status: "OFF"}}}}
	if got, err := choosePath(s, down, "A", "C", 0); err != nil || !slices.Equal(got, []string{"AB", "BC"}) {
		t.Errorf("with DA down: %v, %v; want through B", got, err)
	}
	down["B"] = nodeLive{status: &qkdv1.NodeStatus{Links: []*qkdv1.LinkStatus{{Link: "BC", Status: "OFF"}}}}
	if _, err := choosePath(s, down, "A", "C", 0); status.Convert(err).Details()[0].(*errdetails.ErrorInfo).GetReason() != ctlclient.ReasonNoPath {
		t.Errorf("with both ways down: %v; want NO_PATH", err)
	}

	// A promised rate counts against a link: with 600 bit/s of AB's 1000
	// promised, 500 more do not fit through B.
	s2 := ring4(t)
	_, err := s2.Apply(100, state.Command{Op: state.OpAddSAE, SAE: &state.SAESpec{ID: "SA", Node: "A"}})
	if err == nil {
		_, err = s2.Apply(101, state.Command{Op: state.OpAddSAE, SAE: &state.SAESpec{ID: "SB", Node: "B"}})
	}
	if err == nil {
		_, err = s2.Apply(102, state.Command{Op: state.OpOpenApp, App: &state.AppSpec{ID: qkd015.AppID("SA", "SB"), MasterSAE: "SA", SlaveSAE: "SB", Path: []string{"AB"}, QoS: state.QoS{MinBandwidth: 600}}})
	}
	if err != nil {
		t.Fatal(err)
	}
	slow := liveLinks(map[string][2]uint64{"AB": {1000, 10}, "BC": {1000, 10}, "CD": {800, 10}, "DA": {800, 10}})
	if got, err := choosePath(s2, slow, "A", "C", 500); err != nil || !slices.Equal(got, []string{"DA", "CD"}) {
		t.Errorf("with AB 600 of 1000 promised: %v, %v; want through D", got, err)
	}
	if _, err := choosePath(s2, nil, "A", "E", 0); status.Convert(err).Details()[0].(*errdetails.ErrorInfo).GetReason() != ctlclient.ReasonNoPath {
		t.Errorf("to an unlinked node: %v", err)
	}
}
