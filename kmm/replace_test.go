package kmm

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// replace is replace_keys by sae at node n for slave.
func replace(t *testing.T, n *testNode, sae, slave string, ids ...string) (*qkdv1.KeyContainer, error) {
	req := &qkdv1.ReplaceKeysRequest{SlaveSaeId: slave}
	for _, id := range ids {
		req.KeyIds = append(req.KeyIds, &qkdv1.KeyID{KeyId: id})
	}
	return n.k.ReplaceKeys(asSAE(t, sae), req)
}

// mustDec fetches ids at n and checks the bytes against want (by key_ID).
func mustDec(t *testing.T, n *testNode, sae, master string, want map[string][]byte, ids ...string) {
	t.Helper()
	got, err := dec(t, n, sae, master, ids...)
	if err != nil {
		t.Fatalf("dec_keys %v: %v", ids, err)
	}
	for _, k := range got.GetKeys() {
		if !bytes.Equal(k.GetKey(), want[k.GetKeyId()]) {
			t.Fatalf("dec_keys %s: the slave's bytes differ from the master's", k.GetKeyId())
		}
	}
}

func byID(c ...*qkdv1.KeyContainer) map[string][]byte {
	out := map[string][]byte{}
	for _, kc := range c {
		for _, k := range kc.GetKeys() {
			out[k.GetKeyId()] = k.GetKey()
		}
	}
	return out
}

// TestReplaceKeys: replaced keys are gone at the slave's KME (400 saying
// why), the new keys are the slave's too, other keys are untouched, and a
// second replace of the same key_ID is refused.
func TestReplaceKeys(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 40)
	small, err := enc(t, p.a, saeA, saeB, 3, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	big, err := enc(t, p.a, saeA, saeB, 1, 512)
	if err != nil {
		t.Fatalf("enc_keys 512: %v", err)
	}
	old := []string{keyIDs(small)[0], keyIDs(big)[0], keyIDs(small)[2]}
	got, err := replace(t, p.a, saeA, saeB, old...)
	if err != nil {
		t.Fatalf("replace_keys: %v", err)
	}
	if len(got.GetKeys()) != len(old) {
		t.Fatalf("replace_keys gave %d keys, want %d", len(got.GetKeys()), len(old))
	}
	want := byID(small, big, got)
	for i, k := range got.GetKeys() {
		if slicesContain(old, k.GetKeyId()) || slicesContain(keyIDs(small), k.GetKeyId()) {
			t.Fatalf("new key %d reuses key_ID %s", i, k.GetKeyId())
		}
		if len(k.GetKey()) != len(want[old[i]]) {
			t.Fatalf("new key %d has %d bytes, the replaced one %d", i, len(k.GetKey()), len(want[old[i]]))
		}
		if r := k.GetKeyIdExtension().GetFields()["replaces"].GetStringValue(); r != old[i] {
			t.Fatalf("new key %d: key_ID_extension.replaces = %q, want %q", i, r, old[i])
		}
	}
	for _, id := range old {
		_, err := dec(t, p.b, saeB, saeA, id)
		checkErr(t, err, codes.InvalidArgument, "key_ID")
		if !strings.Contains(status.Convert(err).Message(), "replaced at the master SAE's request") {
			t.Fatalf("dec_keys of replaced %s: %v", id, err)
		}
	}
	mustDec(t, p.b, saeB, saeA, want, keyIDs(got)...)
	mustDec(t, p.b, saeB, saeA, want, keyIDs(small)[1])

	_, err = replace(t, p.a, saeA, saeB, old[0])
	checkErr(t, err, codes.InvalidArgument, "key_ID")
	if !strings.Contains(status.Convert(err).Message(), "replaced already") || !strings.Contains(status.Convert(err).Message(), old[0]) {
		t.Fatalf("second replace: %v", err)
	}
	if n := p.b.store.Counters()["stream/SAE_A->SAE_B/revoked"]; n != 4 {
		t.Fatalf("revoked counter at B = %d, want 4 (two 256-bit keys and one of two parts)", n)
	}
	// The revocation is durable: after a crash B still says why.
	p.b.restart(t)
	_, err = dec(t, p.b, saeB, saeA, old[1])
	if !strings.Contains(status.Convert(err).Message(), "replaced at the master SAE's request") {
		t.Fatalf("dec_keys of a replaced key after B restarted: %v", err)
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestReplaceKeysRefused: bad requests get the right status and destroy
// nothing: every key is still served to the slave SAE afterwards.
func TestReplaceKeysRefused(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 40)
	mine, err := enc(t, p.a, saeA, saeB, 3, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	other, err := enc(t, p.a, saeA, saeC, 1, 256)
	if err != nil {
		t.Fatalf("enc_keys A→C: %v", err)
	}
	reverse, err := enc(t, p.b, saeB, saeA, 1, 256)
	if err != nil {
		t.Fatalf("enc_keys B→A: %v", err)
	}
	ids := keyIDs(mine)
	unknown := "00000000-0fff-801f-a7ac-f0acf18dd183"
	tooMany := make([]string, 65)
	for i := range tooMany {
		tooMany[i] = ids[0]
	}
	tests := []struct {
		desc      string
		caller    string
		slave     string
		ids       []string
		code      codes.Code
		field     string
		msgHas    string
		anonymous bool
	}{
		{desc: "empty list", caller: saeA, slave: saeB, code: codes.InvalidArgument, field: "key_IDs"},
		{desc: "too many", caller: saeA, slave: saeB, ids: tooMany, code: codes.InvalidArgument, field: "key_IDs"},
		{desc: "malformed", caller: saeA, slave: saeB, ids: []string{ids[0], "not-a-key-id"}, code: codes.InvalidArgument, field: "key_IDs[1].key_ID"},
		{desc: "empty key_ID", caller: saeA, slave: saeB, ids: []string{""}, code: codes.InvalidArgument, field: "key_IDs[0].key_ID"},
		{desc: "named twice", caller: saeA, slave: saeB, ids: []string{ids[0], ids[0]}, code: codes.InvalidArgument, field: "key_IDs[1].key_ID"},
		{desc: "unknown key_ID beside good ones", caller: saeA, slave: saeB, ids: []string{ids[0], unknown, ids[1]}, code: codes.InvalidArgument, field: "key_ID", msgHas: unknown},
		{desc: "key of another slave SAE", caller: saeA, slave: saeB, ids: []string{ids[2], keyIDs(other)[0]}, code: codes.Unauthenticated},
		{desc: "the slave SAE asks", caller: saeB, slave: saeA, ids: []string{ids[0]}, code: codes.InvalidArgument, field: "key_ID"},
		{desc: "key of the reverse stream", caller: saeA, slave: saeB, ids: []string{keyIDs(reverse)[0]}, code: codes.InvalidArgument, field: "key_ID"},
		{desc: "the caller itself", caller: saeA, slave: saeA, ids: []string{ids[0]}, code: codes.InvalidArgument, field: "slave_SAE_ID"},
		{desc: "unknown slave", caller: saeA, slave: "SAE_Q", ids: []string{ids[0]}, code: codes.InvalidArgument, field: "slave_SAE_ID"},
		{desc: "SAE of another node", caller: saeB, slave: saeA, ids: []string{ids[0]}, code: codes.Unauthenticated, msgHas: "not attached"},
		{desc: "no certificate", slave: saeB, ids: []string{ids[0]}, code: codes.Unauthenticated, anonymous: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			req := &qkdv1.ReplaceKeysRequest{SlaveSaeId: tc.slave}
			for _, id := range tc.ids {
				req.KeyIds = append(req.KeyIds, &qkdv1.KeyID{KeyId: id})
			}
			ctx := asSAE(t, tc.caller)
			at := p.a
			switch {
			case tc.anonymous:
				ctx = anonymous(t)
			case tc.desc == "SAE of another node":
				ctx = asCaller(t, pki.Identity{Kind: pki.KindSAE, ID: saeB})
			case tc.caller == saeB:
				at = p.b
			}
			_, err := at.k.ReplaceKeys(ctx, req)
			checkErr(t, err, tc.code, tc.field)
			if tc.msgHas != "" && !strings.Contains(status.Convert(err).Message(), tc.msgHas) {
				t.Fatalf("message %q does not name %q", status.Convert(err).Message(), tc.msgHas)
			}
		})
	}
	// Nothing was lost.
	mustDec(t, p.b, saeB, saeA, byID(mine), ids...)
	mustDec(t, p.b, saeC, saeA, byID(other), keyIDs(other)...)
	mustDec(t, p.a, saeA, saeB, byID(reverse), keyIDs(reverse)...)
	if n := p.b.store.Counters()["stream/SAE_A->SAE_B/revoked"]; n != 0 {
		t.Fatalf("revoked counter at B = %d after refusals only", n)
	}
}

// TestReplaceKeysDelivered: a key the slave SAE fetched cannot be replaced.
func TestReplaceKeysDelivered(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 10)
	got, err := enc(t, p.a, saeA, saeB, 1, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	mustDec(t, p.b, saeB, saeA, byID(got), keyIDs(got)...)
	_, err = replace(t, p.a, saeA, saeB, keyIDs(got)...)
	checkErr(t, err, codes.InvalidArgument, "key_ID")
	if !strings.Contains(status.Convert(err).Message(), "already delivered") {
		t.Fatalf("replace of a delivered key: %v", err)
	}
}

// TestReplaceKeysSlaveUnreachable: with the slave's KME down the master SAE
// gets 503, and the key is still served to the slave SAE afterwards; a retry
// with the KME back works.
func TestReplaceKeysSlaveUnreachable(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 20)
	got, err := enc(t, p.a, saeA, saeB, 2, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	ids := keyIDs(got)
	p.b.srv.stop()
	_, err = replace(t, p.a, saeA, saeB, ids[0])
	checkErr(t, err, codes.Unavailable, "")
	_, err = replace(t, p.a, saeA, saeB, ids[1])
	checkErr(t, err, codes.Unavailable, "")
	p.b.srv.start()
	mustDec(t, p.b, saeB, saeA, byID(got), ids[0])
	// 503 means retry: the connection to B comes back within a moment.
	var nw *qkdv1.KeyContainer
	waitFor(t, "replace_keys to work again", func() bool {
		nw, err = replace(t, p.a, saeA, saeB, ids[1])
		if err != nil && status.Code(err) != codes.Unavailable {
			t.Fatalf("replace_keys after the KME is back: %v", err)
		}
		return err == nil
	})
	mustDec(t, p.b, saeB, saeA, byID(nw), keyIDs(nw)...)
}

// TestReplaceKeysRetryAfterLostAnswer: the slave's KME revoked the key but
// its answer never reached the master's KME (no new key was issued): the
// retry gets the new key, and only one.
func TestReplaceKeysRetryAfterLostAnswer(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 20)
	got, err := enc(t, p.a, saeA, saeB, 1, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	id := keyIDs(got)[0]
	resp, err := p.b.k.Revoke(anonymous(t), "A", &qkdv1.RevokeRequest{StreamId: StreamID(saeA, saeB), Keys: []*qkdv1.RevokedKey{{KeyId: id}}})
	if err != nil || !resp.GetRevoked() {
		t.Fatalf("Revoke at B: %v, %v", resp, err)
	}
	nw, err := replace(t, p.a, saeA, saeB, id)
	if err != nil {
		t.Fatalf("replace_keys retry: %v", err)
	}
	mustDec(t, p.b, saeB, saeA, byID(nw), keyIDs(nw)...)
	_, err = replace(t, p.a, saeA, saeB, id)
	checkErr(t, err, codes.InvalidArgument, "key_ID")
	// Only the path's previous node may revoke.
	if _, err := p.a.k.Revoke(anonymous(t), "B", &qkdv1.RevokeRequest{StreamId: StreamID(saeA, saeB), Keys: []*qkdv1.RevokedKey{{KeyId: id}}}); err == nil {
		t.Fatal("A accepted a Revoke from B, which is not before it on the path")
	}
}

// TestReplaceKeysRacesDecKeys: a replace and the slave SAE's dec_keys of the
// same key never both succeed, and one of them always does.
func TestReplaceKeysRacesDecKeys(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 200)
	for round := 0; round < 30; round++ {
		got, err := enc(t, p.a, saeA, saeB, 1, 256)
		if err != nil {
			t.Fatalf("enc_keys: %v", err)
		}
		id := keyIDs(got)[0]
		var wg sync.WaitGroup
		var decErr, repErr error
		wg.Add(2)
		go func() { defer wg.Done(); _, decErr = dec(t, p.b, saeB, saeA, id) }()
		go func() { defer wg.Done(); _, repErr = replace(t, p.a, saeA, saeB, id) }()
		wg.Wait()
		if (decErr == nil) == (repErr == nil) {
			t.Fatalf("round %d: dec_keys %v, replace_keys %v: want exactly one to succeed", round, decErr, repErr)
		}
	}
}

// TestRevokeRefusedFromOthers: only the node before on the stream's path
// may revoke; a node elsewhere, an SAE or a malformed message is refused
// over gRPC with a clear status, and nothing is erased.
func TestRevokeRefusedFromOthers(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 10)
	got, err := enc(t, p.a, saeA, saeB, 1, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	good := &qkdv1.RevokeRequest{StreamId: StreamID(saeA, saeB), Keys: []*qkdv1.RevokedKey{{KeyId: keyIDs(got)[0]}}}
	for _, tc := range []struct {
		caller pki.Identity
		req    *qkdv1.RevokeRequest
		code   codes.Code
	}{
		{pki.Identity{Kind: pki.KindNode, ID: "C"}, good, codes.PermissionDenied},
		{pki.Identity{Kind: pki.KindSAE, ID: saeA}, good, codes.Unauthenticated},
		{pki.Identity{Kind: pki.KindNode, ID: "A"}, &qkdv1.RevokeRequest{StreamId: good.StreamId}, codes.InvalidArgument},
		{pki.Identity{Kind: pki.KindNode, ID: "A"}, &qkdv1.RevokeRequest{StreamId: good.StreamId, Keys: []*qkdv1.RevokedKey{{KeyId: keyIDs(got)[0], Parts: 1 << 20}}}, codes.InvalidArgument},
		{pki.Identity{Kind: pki.KindNode, ID: "A"}, &qkdv1.RevokeRequest{StreamId: "SAE_Q->SAE_B", Keys: good.Keys}, codes.NotFound},
	} {
		srv := &syncServer{h: p.b.k, caller: tc.caller}
		srv.start()
		from := &testNode{name: "X", peers: &testPeers{clients: map[string]qkdv1.KeySyncServiceClient{}}}
		connect(t, from, &testNode{name: "B", srv: srv})
		cl, _ := from.peers.KeySync("B")
		_, err := cl.Revoke(anonymous(t), tc.req)
		srv.stop()
		if status.Code(err) != tc.code || status.Convert(err).Message() == "" {
			t.Fatalf("Revoke from %v (%v): %v, want %v", tc.caller, tc.req, err, tc.code)
		}
	}
	mustDec(t, p.b, saeB, saeA, byID(got), keyIDs(got)...)
}
