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

// lineTopology is the paper's Fig. 1: rooftops A, B, C, links A-B and B-C,
// an SAE on each.
func lineTopology() *testbed.Topology {
	return &testbed.Topology{
		Nodes: []testbed.TopoNode{{ID: "A", KMEID: "KME_A"}, {ID: "B", KMEID: "KME_B"}, {ID: "C", KMEID: "KME_C"}},
		Links: []testbed.TopoLink{
			{ID: "AB", A: "A", B: "B", Master: "A", Kind: "FSO-QKD", Driver: "emulator", KeyRate: 1000, KeyBytes: 32},
			{ID: "BC", A: "B", B: "C", Master: "B", Kind: "FSO-QKD", Driver: "emulator", KeyRate: 1000, KeyBytes: 32},
		},
		SAEs: []testbed.TopoSAE{{ID: "SAE_A", Node: "A"}, {ID: "SAE_B", Node: "B"}, {ID: "SAE_C", Node: "C"}},
	}
}

// decKeys retries dec_keys while the slave's KME answers 503 (the key is
// still being relayed).
func decKeys(ctx context.Context, c *etsi014client.Client, master string, ids ...string) (*etsi014client.KeyContainer, error) {
	for {
		kc, err := c.DecKeys(ctx, master, ids...)
		if etsi014client.StatusCode(err) != http.StatusServiceUnavailable {
			return kc, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestKeyRelay has SAE_A and SAE_C, whose nodes share no QKD link, get
// keys through the trusted node B (ETSI 014 both ways, several sizes), and
// checks that B cannot hand them to its own SAE.
func TestKeyRelay(t *testing.T) {
	n := upWith(t, testbed.Options{Topology: lineTopology()})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b, c := client(t, n, "SAE_A"), client(t, n, "SAE_B"), client(t, n, "SAE_C")
	for _, tc := range []struct {
		name          string
		m, s          *etsi014client.Client
		master, slave string
		number, size  int
	}{
		{"A to C, 4 keys", a, c, "SAE_A", "SAE_C", 4, 256},
		{"A to C, 2 keys of 1024 bits", a, c, "SAE_A", "SAE_C", 2, 1024},
		{"C to A (B is master of the first hop)", c, a, "SAE_C", "SAE_A", 3, 256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for round := range 3 {
				kc, err := encKeys(ctx, tc.m, tc.slave, etsi014client.KeyRequest{Number: tc.number, Size: tc.size})
				if err != nil {
					t.Fatalf("enc_keys: %v", err)
				}
				var ids []string
				for _, k := range kc.Keys {
					ids = append(ids, k.KeyID)
				}
				dc, err := decKeys(ctx, tc.s, tc.master, ids...)
				if err != nil {
					t.Fatalf("round %d: dec_keys at the far end: %v", round, err)
				}
				for i := range kc.Keys {
					if dc.Keys[i].KeyID != ids[i] || !bytes.Equal(dc.Keys[i].Bytes, kc.Keys[i].Bytes) || len(kc.Keys[i].Bytes) != tc.size/8 {
						t.Fatalf("round %d key %d: the ends disagree", round, i)
					}
				}
			}
		})
	}
	// The relay node's SAE cannot take a relayed key.
	kc, err := encKeys(ctx, a, "SAE_C", etsi014client.KeyRequest{Number: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.DecKeys(ctx, "SAE_A", kc.Keys[0].KeyID); etsi014client.StatusCode(err) != http.StatusBadRequest && etsi014client.StatusCode(err) != http.StatusUnauthorized {
		t.Errorf("SAE_B took a key of SAE_A -> SAE_C: %v", err)
	}
	if _, err := decKeys(ctx, c, "SAE_A", kc.Keys[0].KeyID); err != nil {
		t.Errorf("SAE_C after SAE_B's try: %v", err)
	}
}
