package kmm

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// TestPeerKMMDown: while the KMM at the other end of the link is down, what
// needs it is 503 (the SAE may retry), what does not need it still works, and
// everything works again once it is back.
func TestPeerKMMDown(t *testing.T) {
	tests := []struct {
		desc     string
		down     string // node whose keysync server is stopped
		call     func(t *testing.T, p *testPair) error
		wantCode codes.Code
		wantMsg  string
	}{
		{desc: "status at the Slave KMM needs the Master", down: "A", wantCode: codes.Unavailable, wantMsg: "master KMM",
			call: func(t *testing.T, p *testPair) error {
				_, err := p.b.k.GetStatus(asSAE(t, saeB), &qkdv1.GetStatusRequest{SlaveSaeId: saeA})
				return err
			}},
		{desc: "enc_keys at the Slave KMM needs the Master", down: "A", wantCode: codes.Unavailable, wantMsg: "master KMM",
			call: func(t *testing.T, p *testPair) error {
				_, err := enc(t, p.b, saeB, saeA, 1, 256)
				return err
			}},
		{desc: "enc_keys at the Master KMM with nothing allocated needs the Slave", down: "B", wantCode: codes.Unavailable,
			call: func(t *testing.T, p *testPair) error {
				_, err := enc(t, p.a, saeA, saeB, 1, 256)
				return err
			}},
		{desc: "status at the Master KMM is local", down: "B", wantCode: codes.OK,
			call: func(t *testing.T, p *testPair) error {
				_, err := p.a.k.GetStatus(asSAE(t, saeA), &qkdv1.GetStatusRequest{SlaveSaeId: saeB})
				return err
			}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			p := newTestPair(t, nil)
			p.supply(t, 10)
			down := p.a
			if tc.down == "B" {
				down = p.b
			}
			down.srv.stop()
			err := tc.call(t, p)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.wantCode)
			}
			if tc.wantMsg != "" && !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
				t.Errorf("message %q does not mention %q", status.Convert(err).Message(), tc.wantMsg)
			}
			down.srv.start()
			waitFor(t, "the call to succeed once the peer KMM is back", func() bool {
				err = tc.call(t, p)
				return err == nil
			})
			// Nothing is left half-allocated (the served key is gone at one
			// end only, until the slave SAE takes it).
			waitFor(t, "no pending batch and equal pools", func() bool {
				pend, err := p.a.store.PendingBatches()
				return err == nil && len(pend) == 0 && p.a.store.PoolCount(linkAB) == p.b.store.PoolCount(linkAB)
			})
		})
	}
}

// TestDecKeysWithPeerDown: dec_keys needs nothing of the other KMM, so keys
// already allocated are served while it is down.
func TestDecKeysWithPeerDown(t *testing.T) {
	tests := []struct {
		desc          string
		encAt, decAt  string
		master, slave string
	}{
		{desc: "slave SAE at the Slave KMM, Master down", encAt: "A", decAt: "B", master: saeA, slave: saeB},
		{desc: "slave SAE at the Master KMM, Slave down", encAt: "B", decAt: "A", master: saeB, slave: saeA},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			p := newTestPair(t, nil)
			p.supply(t, 10)
			encAt, decAt := p.a, p.b
			if tc.encAt == "B" {
				encAt, decAt = p.b, p.a
			}
			got, err := enc(t, encAt, tc.master, tc.slave, 3, 256)
			if err != nil {
				t.Fatal(err)
			}
			encAt.srv.stop()
			back, err := dec(t, decAt, tc.slave, tc.master, keyIDs(got)...)
			if err != nil {
				t.Fatalf("dec_keys with the other KMM down: %v", err)
			}
			for i, k := range back.GetKeys() {
				if !bytes.Equal(k.GetKey(), got.GetKeys()[i].GetKey()) {
					t.Errorf("key %s: the two ends disagree", k.GetKeyId())
				}
			}
		})
	}
}
