package kmm

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/codes"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// TestRestart holds invariant 4 across KMM restarts (the store on disk is
// all that survives): what a KMM acknowledged to its peer or served to an SAE
// is still there for the other end, a batch left pending is resent, and
// key_IDs and bits are never issued twice.
func TestRestart(t *testing.T) {
	tests := []struct {
		desc    string
		encNode string
		master  string
		slave   string
		restart []string // nodes restarted between enc_keys and dec_keys
		pending bool     // B is down during enc_keys, so A keeps a pending batch
	}{
		{desc: "Slave KMM restarts after applying", encNode: "A", master: saeA, slave: saeB, restart: []string{"B"}},
		{desc: "Master KMM restarts after serving", encNode: "A", master: saeA, slave: saeB, restart: []string{"A"}},
		{desc: "Master KMM restarts after the Slave served", encNode: "B", master: saeB, slave: saeA, restart: []string{"A"}},
		{desc: "Slave KMM restarts after serving", encNode: "B", master: saeB, slave: saeA, restart: []string{"B"}},
		{desc: "both restart", encNode: "A", master: saeA, slave: saeB, restart: []string{"A", "B"}},
		{desc: "Master KMM restarts with a pending batch", encNode: "A", master: saeA, slave: saeB, restart: []string{"A"}, pending: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			p := newTestPair(t, nil)
			supplied := p.supply(t, 20)
			node := func(name string) *testNode {
				if name == "B" {
					return p.b
				}
				return p.a
			}
			encAt, decAt := node(tc.encNode), p.b
			if tc.encNode == "B" {
				decAt = p.a
			}

			var got *qkdv1.KeyContainer
			if tc.pending {
				p.b.srv.stop()
				_, err := enc(t, p.a, tc.master, tc.slave, 2, 256)
				checkErr(t, err, codes.Unavailable, "")
				p.b.srv.start()
			} else {
				var err error
				got, err = enc(t, encAt, tc.master, tc.slave, 2, 256)
				if err != nil {
					t.Fatalf("enc_keys: %v", err)
				}
			}
			for _, n := range tc.restart {
				node(n).restart(t)
			}
			if tc.pending {
				var err error
				got, _, err = encRetry(t, p.a, tc.master, tc.slave, 2, 256)
				if err != nil {
					t.Fatalf("enc_keys after the restart: %v", err)
				}
				for i, k := range got.GetKeys() {
					if !bytes.Equal(k.GetKey(), supplied[i].bits) {
						t.Errorf("key %d is not QKD key %s of the pending batch", i, supplied[i].id)
					}
				}
			}
			back, err := dec(t, decAt, tc.slave, tc.master, keyIDs(got)...)
			if err != nil {
				t.Fatalf("dec_keys after the restart: %v", err)
			}
			for i, k := range back.GetKeys() {
				if !bytes.Equal(k.GetKey(), got.GetKeys()[i].GetKey()) {
					t.Errorf("key %s: the two ends disagree", k.GetKeyId())
				}
			}
			// Served keys stay served.
			_, err = dec(t, decAt, tc.slave, tc.master, keyIDs(got)...)
			checkErr(t, err, codes.InvalidArgument, "key_ID")

			// Serving goes on with new key_IDs and new bits.
			more, _, err := encRetry(t, encAt, tc.master, tc.slave, 3, 256)
			if err != nil {
				t.Fatalf("enc_keys after the restart: %v", err)
			}
			if _, err := dec(t, decAt, tc.slave, tc.master, keyIDs(more)...); err != nil {
				t.Fatalf("dec_keys of new keys after the restart: %v", err)
			}
			ids, bits := map[string]bool{}, map[string]bool{}
			for _, k := range append(got.GetKeys(), more.GetKeys()...) {
				if ids[k.GetKeyId()] || bits[string(k.GetKey())] {
					t.Errorf("key %s issued twice", k.GetKeyId())
				}
				ids[k.GetKeyId()], bits[string(k.GetKey())] = true, true
			}
			checkEndsAgree(t, p)
		})
	}
}
