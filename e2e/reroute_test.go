package e2e

import (
	"bytes"
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/qkdnet/qkdnet/etsi014client"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/testbed"
)

// TestReroute runs the ring A-B-C-D, where SAE_A and SAE_C have two paths
// and the links into C are slow (50 keys/s), so relayed keys lag behind
// those SAE_A gets. It disables the second link of the stream's path (its
// drivers stop): keys SAE_A already has are stuck behind it (503 at SAE_C).
// The controller moves the stream to the other path as a new generation,
// and keys flow A -> C over it while the link stays down. Once the link
// returns, every stuck key of the old generation reaches SAE_C with the
// same bits: none is lost. A dec_keys mixing the two generations is refused
// and loses nothing.
func TestReroute(t *testing.T) {
	top := ringTopology()
	for i, l := range top.Links {
		if l.A == "C" || l.B == "C" {
			top.Links[i].KeyRate = 50
		}
	}
	n := upWith(t, testbed.Options{Topology: top})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, c := client(t, n, "SAE_A"), client(t, n, "SAE_C")
	enable := linkSwitch(ctx, t, n)
	app := func() *qkdv1.Application { return appOf(t, n, "SAE_A", "SAE_C") }
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
	// Far more keys than the slow hop can relay: the last are still at the
	// relay node when the link goes down.
	var old []string
	for range 4 {
		old = append(old, enc(64)...)
	}
	down := path0[1]
	enable(down, false)
	now := awaitReroute(t, app, down)
	path1 := links(now)
	if slices.Contains(path1, down) || len(now.GetDraining()) != 1 || !slices.Equal(now.GetDraining()[0].GetLinks(), path0) {
		t.Fatalf("rerouted onto %v (draining %v) with %s down", path1, now.GetDraining(), down)
	}
	t.Logf("rerouted from %v to %v with %s down", path0, path1, down)
	last := old[len(old)-1]
	if _, err := c.DecKeys(ctx, "SAE_A", last); etsi014client.StatusCode(err) != http.StatusServiceUnavailable {
		t.Fatalf("dec_keys of the last key SAE_A got before the link went down: %v; want 503 (stuck behind %s)", err, down)
	}
	// Keys flow over the new path while the link stays down.
	for range 5 {
		dec(enc(4)...)
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
	if after := app(); after.GetPathGeneration() != now.GetPathGeneration() {
		t.Errorf("generation changed from %d to %d after the link came back", now.GetPathGeneration(), after.GetPathGeneration())
	}
	t.Logf("%d keys over the new path; %d of the old generation checked at SAE_C after the link returned", 5*4+1, len(rest))
}

// TestReroute004 reroutes an ETSI 004 key stream: after the reroute, GET_KEY
// without an index moves both parties to the new path's first chunk (index
// 1<<24: the generation is in the index's top 8 bits) with the same bytes,
// and a chunk of the old path is still served by index at both ends.
func TestReroute004(t *testing.T) {
	n := upWith(t, testbed.Options{Topology: ringTopology()})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	enable := linkSwitch(ctx, t, n)
	a, c := ksClient(t, n, "SAE_A"), ksClient(t, n, "SAE_C")
	open, err := a.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_A"), Destination: uri("SAE_C"), Qos: &qkdv1.KeyStreamQoS{KeyChunkSize: 32, Timeout: 5000}})
	if err != nil || open.GetStatus() != 1 {
		t.Fatalf("OPEN_CONNECT at A = %v, %v", open, err)
	}
	id := open.GetKeyStreamId()
	if r, err := c.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_C"), Destination: uri("SAE_A"), KeyStreamId: id, Qos: &qkdv1.KeyStreamQoS{Timeout: 5000}}); err != nil || r.GetStatus() != 0 {
		t.Fatalf("OPEN_CONNECT at C = %v, %v", r, err)
	}
	get := func(ks qkdv1.KeyStreamServiceClient, index *uint32) *qkdv1.GetStreamKeyResponse {
		t.Helper()
		r, err := ks.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, Index: index, MetadataSize: 256})
		if err != nil || r.GetStatus() != 0 {
			t.Fatalf("GET_KEY %v = %v, %v", index, r, err)
		}
		return r
	}
	same := func(x, y *qkdv1.GetStreamKeyResponse) {
		t.Helper()
		if x.GetIndex() != y.GetIndex() || !bytes.Equal(x.GetKeyBuffer(), y.GetKeyBuffer()) {
			t.Fatalf("chunk %d at A and chunk %d at C differ", x.GetIndex(), y.GetIndex())
		}
	}
	same(get(a, nil), get(c, nil)) // chunk 0
	app := func() *qkdv1.Application { return appOf(t, n, "SAE_A", "SAE_C") }
	first := app()
	down := first.GetHops()[len(first.GetHops())-1].GetLink()
	enable(down, false)
	awaitReroute(t, app, down)
	for i := range uint32(3) {
		x, y := get(a, nil), get(c, nil)
		if x.GetIndex() != 1<<24+i {
			t.Fatalf("GET_KEY after the reroute gave chunk %d, want %d", x.GetIndex(), 1<<24+i)
		}
		same(x, y)
	}
	enable(down, true)
	same(get(a, proto.Uint32(1)), get(c, proto.Uint32(1)))
}

// ringTopology is four nodes A-B-C-D in a ring, an SAE at each, so that
// SAE_A and SAE_C have two paths of two hops.
func ringTopology() *testbed.Topology {
	top := &testbed.Topology{}
	for _, id := range []string{"A", "B", "C", "D"} {
		top.Nodes = append(top.Nodes, testbed.TopoNode{ID: id, KMEID: "KME_" + id})
		top.SAEs = append(top.SAEs, testbed.TopoSAE{ID: "SAE_" + id, Node: id})
	}
	for _, l := range [][2]string{{"A", "B"}, {"B", "C"}, {"C", "D"}, {"D", "A"}} {
		top.Links = append(top.Links, testbed.TopoLink{ID: l[0] + l[1], A: l[0], B: l[1], Master: l[0], Kind: "DV-QKD", Driver: "emulator", KeyRate: 500, KeyBytes: 32})
	}
	return top
}

// linkSwitch returns a function that enables or disables a link through the
// controller (disabling stops its drivers at both ends).
func linkSwitch(ctx context.Context, t *testing.T, n *testbed.Network) func(link string, on bool) {
	return func(link string, on bool) {
		t.Helper()
		if err := n.EnableLink(ctx, link, on); err != nil {
			t.Fatal(err)
		}
	}
}

// appOf returns the controller's view of the application master -> slave.
func appOf(t *testing.T, n *testbed.Network, master, slave string) *qkdv1.Application {
	t.Helper()
	for _, x := range network(t, n).GetApplications() {
		if x.GetMasterSaeId() == master && x.GetSlaveSaeId() == slave {
			return x
		}
	}
	t.Fatalf("no application %s -> %s", master, slave)
	return nil
}

// awaitReroute waits until the application runs on a new path generation.
func awaitReroute(t *testing.T, app func() *qkdv1.Application, down string) *qkdv1.Application {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		now := app()
		if now.GetPathGeneration() > 0 {
			return now
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream still runs on generation %d with link %s down", now.GetPathGeneration(), down)
		}
	}
}

// links lists the links of an application's path.
func links(x *qkdv1.Application) []string {
	var out []string
	for _, h := range x.GetHops() {
		out = append(out, h.GetLink())
	}
	return out
}
