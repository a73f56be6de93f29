package e2e

import (
	"bytes"
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/etsi014client"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/testbed"
)

// TestReroute runs the ring A-B-C-D, where SAE_A and SAE_C have two paths.
// It disables a link of the stream's path (its drivers stop); the
// controller moves the stream to the other path as a new generation, and
// keys flow A -> C over it while the link stays down. Keys the master SAE
// got before (the old generation) are all delivered at SAE_C with the same
// bits once the old path's link returns: none is lost. A dec_keys mixing
// the two generations is refused and loses nothing.
func TestReroute(t *testing.T) {
	top := &testbed.Topology{}
	for _, id := range []string{"A", "B", "C", "D"} {
		top.Nodes = append(top.Nodes, testbed.TopoNode{ID: id, KMEID: "KME_" + id})
		top.SAEs = append(top.SAEs, testbed.TopoSAE{ID: "SAE_" + id, Node: id})
	}
	for _, l := range [][2]string{{"A", "B"}, {"B", "C"}, {"C", "D"}, {"D", "A"}} {
		top.Links = append(top.Links, testbed.TopoLink{ID: l[0] + l[1], A: l[0], B: l[1], Master: l[0], Kind: "DV-QKD", Driver: "emulator", KeyRate: 500, KeyBytes: 32})
	}
	n := upWith(t, testbed.Options{Topology: top})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, c := client(t, n, "SAE_A"), client(t, n, "SAE_C")
	cl, err := n.ControllerClient()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	enable := func(link string, on bool) {
		t.Helper()
		if err := cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := ctlclient.Network(cc).EnableLink(ctx, &qkdv1.EnableLinkRequest{Name: link, Enable: on})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	app := func() *qkdv1.Application {
		t.Helper()
		for _, x := range network(t, n).GetApplications() {
			if x.GetMasterSaeId() == "SAE_A" && x.GetSlaveSaeId() == "SAE_C" {
				return x
			}
		}
		t.Fatal("no application SAE_A -> SAE_C")
		return nil
	}
	links := func(x *qkdv1.Application) []string {
		var out []string
		for _, h := range x.GetHops() {
			out = append(out, h.GetLink())
		}
		return out
	}
	// held are the keys SAE_A got, by key_ID, to be checked at SAE_C.
	held := map[string][]byte{}
	var order []string
	enc := func(number int) []string {
		t.Helper()
		kc, err := encKeys(ctx, a, "SAE_C", etsi014client.KeyRequest{Number: number})
		if err != nil {
			t.Fatalf("enc_keys: %v", err)
		}
		var ids []string
		for _, k := range kc.Keys {
			held[k.KeyID] = k.Bytes
			order = append(order, k.KeyID)
			ids = append(ids, k.KeyID)
		}
		return ids
	}
	dec := func(ids ...string) {
		t.Helper()
		dc, err := decKeys(ctx, c, "SAE_A", ids...)
		if err != nil {
			t.Fatalf("dec_keys %v: %v", ids, err)
		}
		for i, id := range ids {
			if !bytes.Equal(dc.Keys[i].Bytes, held[id]) {
				t.Fatalf("key %s differs at the two ends", id)
			}
			delete(held, id)
		}
	}

	dec(enc(4)...)
	first := app()
	path0 := links(first)
	if len(path0) != 2 || first.GetPathGeneration() != 0 {
		t.Fatalf("first path %v, generation %d", path0, first.GetPathGeneration())
	}
	old := enc(8) // delivered at SAE_C only at the end
	down := path0[1]
	enable(down, false)
	var now *qkdv1.Application
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if now = app(); now.GetPathGeneration() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream still runs on %v, generation %d, with link %s down", links(now), now.GetPathGeneration(), down)
		}
	}
	path1 := links(now)
	if slices.Contains(path1, down) || len(now.GetDraining()) != 1 || !slices.Equal(now.GetDraining()[0].GetLinks(), path0) {
		t.Fatalf("rerouted onto %v (draining %v) with %s down", path1, now.GetDraining(), down)
	}
	t.Logf("rerouted from %v to %v with %s down", path0, path1, down)
	// Keys flow over the new path while the link stays down.
	var fresh []string
	for range 20 {
		ids := enc(8)
		fresh = append(fresh, ids[0])
		dec(ids...)
	}
	// One request with keys of both generations is refused whole.
	mixedOld, mixedNew := old[0], enc(1)[0]
	if _, err := c.DecKeys(ctx, "SAE_A", mixedOld, mixedNew); etsi014client.StatusCode(err) != http.StatusBadRequest {
		t.Fatalf("dec_keys across two generations: %v, want 400", err)
	}
	dec(mixedNew)
	// The old path's link returns: every key of the old generation reaches
	// SAE_C.
	enable(down, true)
	var rest []string
	for _, id := range order {
		if _, ok := held[id]; ok {
			rest = append(rest, id)
		}
	}
	for _, id := range rest {
		dec(id)
	}
	if len(held) != 0 {
		t.Fatalf("%d keys served at SAE_A never reached SAE_C", len(held))
	}
	if last := app(); last.GetPathGeneration() != now.GetPathGeneration() {
		t.Errorf("generation changed from %d to %d after the link came back", now.GetPathGeneration(), last.GetPathGeneration())
	}
	t.Logf("%d keys over the new path, %d of the old generation delivered after the link returned", 20*8+1, len(rest))
}
