package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/controller/state"
	"github.com/qkdnet/qkdnet/kmm"
	"github.com/qkdnet/qkdnet/qkd015"
)

// pushed renders node's configuration from a controller state holding the
// paper's two-node network, as the controller would push it.
func pushed(t *testing.T, node string, withApp bool) []byte {
	t.Helper()
	s := state.New()
	cmds := []state.Command{
		{Op: state.OpAddNode, Node: &state.NodeSpec{Name: "A", KMEID: "KME_A"}},
		{Op: state.OpAddNode, Node: &state.NodeSpec{Name: "B", KMEID: "KME_B"}},
		{Op: state.OpRegister, Node: &state.NodeSpec{Name: "A", AgentAddress: "127.0.0.1:9443"}},
		{Op: state.OpRegister, Node: &state.NodeSpec{Name: "B", AgentAddress: "127.0.0.1:9444"}},
		{Op: state.OpAddLink, Link: &state.LinkSpec{Name: "FSO_AB", A: "A", B: "B", KeySize: 256}},
		{Op: state.OpAddSAE, SAE: &state.SAESpec{ID: "SAE_A", Node: "A"}},
		{Op: state.OpAddSAE, SAE: &state.SAESpec{ID: "SAE_B", Node: "B"}},
	}
	if withApp {
		cmds = append(cmds, state.Command{Op: state.OpOpenApp, App: &state.AppSpec{ID: qkd015.AppID("SAE_B", "SAE_A"),
			MasterSAE: "SAE_B", SlaveSAE: "SAE_A", Path: []string{"FSO_AB"}, Priority: 3, QoS: state.QoS{MinBandwidth: 2560}}})
	}
	for i, c := range cmds {
		if _, err := s.Apply(uint64(i+1), c); err != nil {
			t.Fatal(err)
		}
	}
	b, err := s.Render(node, s.Index())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestViewOfPushedConfiguration(t *testing.T) {
	v, err := viewOf("B", 8, pushed(t, "B", true))
	if err != nil {
		t.Fatal(err)
	}
	l, ok := v.links["FSO_AB"]
	if !ok || l.Peer != "A" || l.Master || l.KeyBytes != 32 || !v.enabled["FSO_AB"] {
		t.Fatalf("link = %+v (ok %v), enabled %v", l, ok, v.enabled)
	}
	if v.addrs["A"] != "127.0.0.1:9443" || v.kmes["A"] != "KME_A" || v.kmeID != "KME_B" {
		t.Errorf("peer A: addr %q kme %q; own kme %q", v.addrs["A"], v.kmes["A"], v.kmeID)
	}
	// SAE_B is B's own; SAE_A is known through the application's remote end.
	if v.saes["SAE_B"] != "B" || v.saes["SAE_A"] != "A" {
		t.Errorf("saes = %v", v.saes)
	}
	a, ok := v.apps[appKey{"SAE_B", "SAE_A"}]
	if !ok || a.link != "FSO_AB" || len(a.hopLinks) != 1 || a.hopLinks[0] != "FSO_AB" || a.priority != 3 || a.minBitsPerS != 2560 || a.id != qkd015.AppID("SAE_B", "SAE_A") {
		t.Errorf("app = %+v (ok %v)", a, ok)
	}

	// A's view: Master of the link, knows nothing of SAE_B without an app.
	va, err := viewOf("A", 7, pushed(t, "A", false))
	if err != nil {
		t.Fatal(err)
	}
	if !va.links["FSO_AB"].Master || va.links["FSO_AB"].Peer != "B" {
		t.Errorf("A's link = %+v", va.links["FSO_AB"])
	}
	if _, ok := va.saes["SAE_B"]; ok {
		t.Error("A knows SAE_B's node without an application")
	}
}

func TestViewRefusesBadConfiguration(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  []byte
		want string
	}{
		{"another node's", pushed(t, "A", false), `for node "A"`},
		{"not YANG data", []byte(`{"qkd_node": 1}`), "qkd_node"},
		{"bad uuid", []byte(`{"etsi-qkd-sdn-node:qkd_node":{"qkdn_id":"xyz"}}`), "uuid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := viewOf("B", 1, tc.doc)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	v, err := viewOf("B", 1, nil)
	if err != nil || len(v.links) != 0 {
		t.Errorf("empty configuration: %v %+v", err, v)
	}
}

func TestControlledOpenWaitsForPush(t *testing.T) {
	c := newControlled("B")
	asked := make(chan [2]string, 1)
	c.open = func(ctx context.Context, req kmm.AppRequest) (string, error) {
		asked <- [2]string{req.Master, req.Slave}
		go func() {
			time.Sleep(50 * time.Millisecond)
			v, err := viewOf("B", 9, pushed(t, "B", true))
			if err != nil {
				t.Error(err)
				return
			}
			c.set(v)
		}()
		return "", nil
	}
	if err := c.Open(context.Background(), "SAE_B", "SAE_A"); err != nil {
		t.Fatal(err)
	}
	if got := <-asked; got != [2]string{"SAE_B", "SAE_A"} {
		t.Errorf("asked for %v", got)
	}
	// Known now: no second request to the controller.
	c.open = func(context.Context, kmm.AppRequest) (string, error) { t.Error("asked again"); return "", nil }
	if err := c.Open(context.Background(), "SAE_B", "SAE_A"); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.SAENode("SAE_A"); n != "A" {
		t.Errorf("SAENode(SAE_A) = %q", n)
	}
	var _ kmm.Topology = c

	// The controller refuses: the error reaches the KMM.
	c.open = func(context.Context, kmm.AppRequest) (string, error) { return "", kmm.ErrUnknownSAE }
	if err := c.Open(context.Background(), "SAE_B", "SAE_Z"); !errors.Is(err, kmm.ErrUnknownSAE) {
		t.Errorf("err = %v", err)
	}
	// The controller accepts but the push never comes: bounded wait.
	c.open = func(context.Context, kmm.AppRequest) (string, error) { return "", nil }
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.Open(ctx, "SAE_B", "SAE_Q"); err == nil {
		t.Error("Open returned without the application")
	}
}

// TestControlledConfigured: an agent knows no SAE between its start and
// the controller's first push; Configured says so, so that the KMM answers
// 503 (retry) rather than 401 then.
func TestControlledConfigured(t *testing.T) {
	c := newControlled("B")
	var _ kmm.Configured = c
	if c.Configured() {
		t.Fatal("configured before any push")
	}
	v, err := viewOf("B", 8, pushed(t, "B", false))
	if err != nil {
		t.Fatal(err)
	}
	c.set(v)
	if !c.Configured() {
		t.Fatal("not configured after a push")
	}
	if n, ok := c.SAENode("SAE_B"); !ok || n != "B" {
		t.Fatalf("SAE_B at %q (%v)", n, ok)
	}
}
