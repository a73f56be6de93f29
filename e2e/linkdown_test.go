package e2e

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/etsi014client"
	"github.com/qkdnet/qkdnet/testbed"
)

// TestLinkDownAndBack disables the QKD link (its drivers stop at both ends),
// checks that the controller sees it go down, that the stream is served
// from the keys both ends hold and then answers 503 (not enough key), and
// that it recovers by itself when the link is enabled again; every key
// served at one end is served at the other with the same bits.
func TestLinkDownAndBack(t *testing.T) {
	top := &testbed.Topology{
		Nodes: []testbed.TopoNode{{ID: "A", KMEID: "KME_A"}, {ID: "B", KMEID: "KME_B"}},
		Links: []testbed.TopoLink{{ID: "AB", A: "A", B: "B", Master: "A", Kind: "DV-QKD", Driver: "emulator", KeyRate: 200, KeyBytes: 32}},
		SAEs:  []testbed.TopoSAE{{ID: "SAE_A", Node: "A"}, {ID: "SAE_B", Node: "B"}},
	}
	n := upWith(t, testbed.Options{Topology: top})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := client(t, n, "SAE_A"), client(t, n, "SAE_B")
	enable := func(on bool) { linkSwitch(ctx, t, n)("AB", on) }
	linkStatus := func() string {
		for _, l := range network(t, n).GetLinks() {
			if l.GetName() == "AB" {
				return l.GetStatus()
			}
		}
		return ""
	}
	both := func(kc *etsi014client.KeyContainer) {
		t.Helper()
		ids := make([]string, len(kc.Keys))
		for i, k := range kc.Keys {
			ids[i] = k.KeyID
		}
		dc, err := b.DecKeys(ctx, "SAE_A", ids...)
		if err != nil {
			t.Fatalf("dec_keys: %v", err)
		}
		for i := range ids {
			if !bytes.Equal(dc.Keys[i].Bytes, kc.Keys[i].Bytes) {
				t.Fatalf("key %s differs at the two ends", ids[i])
			}
		}
	}
	kc, err := encKeys(ctx, a, "SAE_B", etsi014client.KeyRequest{Number: 4})
	if err != nil {
		t.Fatal(err)
	}
	both(kc)

	enable(false)
	for deadline := time.Now().Add(10 * time.Second); linkStatus() != "OFF"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the controller still sees link AB as %q", linkStatus())
		}
	}
	// What both ends hold is still served; then key runs out.
	short := false
	for range 400 {
		kc, err := a.EncKeys(ctx, "SAE_B", etsi014client.KeyRequest{Number: 64})
		if etsi014client.StatusCode(err) == http.StatusServiceUnavailable {
			short = true
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		both(kc)
	}
	if !short {
		t.Fatal("a disabled link kept supplying keys")
	}

	enable(true)
	for deadline := time.Now().Add(10 * time.Second); linkStatus() != "ACTIVE"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("link AB is %q after enabling it", linkStatus())
		}
	}
	kc, err = encKeys(ctx, a, "SAE_B", etsi014client.KeyRequest{Number: 4})
	if err != nil {
		t.Fatalf("after the link came back: %v", err)
	}
	both(kc)
}
