package e2e

import (
	"bytes"
	"context"
	"net/http"
	"sync"
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
	return retry503(ctx, func() (*etsi014client.KeyContainer, error) { return c.DecKeys(ctx, master, ids...) })
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

// TestRelayNodeKilled SIGKILLs the relay node B twice while SAE_A and SAE_C
// exchange keys through it, restarts it, and checks the invariants of
// DESIGN.md over every key: none served twice, both ends agree, and every
// key SAE_A got reaches SAE_C (B's store holds what it had not relayed yet,
// and relays it after the restart).
func TestRelayNodeKilled(t *testing.T) {
	n := upWith(t, testbed.Options{Topology: lineTopology()})
	a, c := client(t, n, "SAE_A"), client(t, n, "SAE_C")
	s := &served{enc: map[string][]byte{}, dec: map[string][]byte{}, inflight: map[string]bool{}}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	var pendingMu sync.Mutex
	var pending [][]string // key_IDs served at A, not yet at C
	load := func(stop <-chan struct{}) *sync.WaitGroup {
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
					kc, err := a.EncKeys(rctx, "SAE_C", etsi014client.KeyRequest{Number: 4})
					rcancel()
					if err != nil {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					s.add(s.enc, kc)
					var ids []string
					for _, k := range kc.Keys {
						ids = append(ids, k.KeyID)
					}
					rctx, rcancel = context.WithTimeout(ctx, 5*time.Second)
					dc, err := c.DecKeys(rctx, "SAE_A", ids...)
					rcancel()
					if err != nil {
						// B is down or the keys are still on their way:
						// fetch them at the end.
						pendingMu.Lock()
						pending = append(pending, ids)
						pendingMu.Unlock()
						continue
					}
					s.add(s.dec, dc)
				}
			})
		}
		return &wg
	}
	count := func() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.enc) }
	waitServed := func(atLeast int) {
		t.Helper()
		for count() < atLeast {
			if ctx.Err() != nil {
				t.Fatalf("only %d keys served before the deadline, want %d", count(), atLeast)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for range 2 {
		stop := make(chan struct{})
		wg := load(stop)
		waitServed(count() + 100)
		if err := n.Kill("B"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // A keeps serving from what it holds
		if err := n.Restart(ctx, "B"); err != nil {
			t.Fatal(err)
		}
		waitServed(count() + 100)
		close(stop)
		wg.Wait()
	}
	// The keys whose dec_keys failed arrive once B has relayed them.
	for _, ids := range pending {
		dc, err := decKeys(ctx, c, "SAE_A", ids...)
		if err != nil {
			t.Errorf("keys %v served to SAE_A never reached SAE_C: %v", ids, err)
			continue
		}
		s.add(s.dec, dc)
	}
	if len(s.dup) > 0 {
		t.Fatalf("keys served twice: %v", s.dup)
	}
	for id, kb := range s.enc {
		db, ok := s.dec[id]
		if !ok {
			t.Errorf("key %s served to SAE_A is lost to SAE_C", id)
			continue
		}
		if !bytes.Equal(kb, db) {
			t.Fatalf("key %s differs at the two ends", id)
		}
	}
	t.Logf("%d keys relayed A -> B -> C across two SIGKILLs of B; %d fetched late", len(s.enc), len(pending))
}

// TestRing runs four nodes in a ring, where SAE_A and SAE_C have two paths
// of two hops (through B or through D): the controller picks one, keys flow
// both ways, and the streams of SAE_B and SAE_D across the ring too.
func TestRing(t *testing.T) {
	top := ringTopology()
	n := upWith(t, testbed.Options{Topology: top})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, p := range [][2]string{{"A", "C"}, {"C", "A"}, {"B", "D"}, {"D", "B"}} {
		m, s := client(t, n, "SAE_"+p[0]), client(t, n, "SAE_"+p[1])
		kc, err := encKeys(ctx, m, "SAE_"+p[1], etsi014client.KeyRequest{Number: 2})
		if err != nil {
			t.Fatalf("%s -> %s: enc_keys: %v", p[0], p[1], err)
		}
		dc, err := decKeys(ctx, s, "SAE_"+p[0], kc.Keys[0].KeyID, kc.Keys[1].KeyID)
		if err != nil || !bytes.Equal(dc.Keys[0].Bytes, kc.Keys[0].Bytes) || !bytes.Equal(dc.Keys[1].Bytes, kc.Keys[1].Bytes) {
			t.Fatalf("%s -> %s: dec_keys %v", p[0], p[1], err)
		}
	}
	for _, app := range network(t, n).GetApplications() {
		if len(app.GetHops()) != 2 {
			t.Errorf("application %s -> %s takes %d hops, want 2", app.GetMasterSaeId(), app.GetSlaveSaeId(), len(app.GetHops()))
		}
	}
}
