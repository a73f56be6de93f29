package controller

import (
	"fmt"
	"testing"

	"github.com/qkdnet/qkdnet/controller/state"
	"github.com/qkdnet/qkdnet/qkd015"
)

// An application moves when a link of its path is disabled or its Master
// reports it OFF, onto a path of links that are up; with none, it stays.
func TestReroutes(t *testing.T) {
	s := ring4(t)
	idx := s.Index()
	apply := func(c state.Command) {
		t.Helper()
		idx++
		if _, err := s.Apply(idx, c); err != nil {
			t.Fatal(err)
		}
	}
	apply(state.Command{Op: state.OpAddSAE, SAE: &state.SAESpec{ID: "SAE_A", Node: "A"}})
	apply(state.Command{Op: state.OpAddSAE, SAE: &state.SAESpec{ID: "SAE_C", Node: "C"}})
	id := qkd015.AppID("SAE_A", "SAE_C")
	apply(state.Command{Op: state.OpOpenApp, App: &state.AppSpec{ID: id, MasterSAE: "SAE_A", SlaveSAE: "SAE_C", Path: []string{"AB", "BC"}}})
	off := func(links ...string) map[string]nodeLive {
		live := liveLinks(map[string][2]uint64{"AB": {1000, 100}, "BC": {1000, 100}, "CD": {1000, 100}, "DA": {1000, 100}})
		for _, l := range live {
			for _, ls := range l.status.GetLinks() {
				for _, name := range links {
					if ls.GetLink() == name {
						ls.Status = "OFF"
					}
				}
			}
		}
		return live
	}
	for _, tc := range []struct {
		name string
		live map[string]nodeLive
		want string
	}{
		{"all up", off(), "[]"},
		{"BC off", off("BC"), fmt.Sprint([]move{{id: id, from: []string{"AB", "BC"}, path: []string{"DA", "CD"}}})},
		{"a link of each path off", off("BC", "CD"), "[]"},
		{"a link off elsewhere", off("CD"), "[]"},
	} {
		if got := fmt.Sprint(reroutes(s, tc.live)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	apply(state.Command{Op: state.OpEnableLink, Name: "AB", Link: &state.LinkSpec{Disabled: true}})
	if got, want := fmt.Sprint(reroutes(s, off())), fmt.Sprint([]move{{id: id, from: []string{"AB", "BC"}, path: []string{"DA", "CD"}}}); got != want {
		t.Errorf("AB disabled: %s, want %s", got, want)
	}
}
