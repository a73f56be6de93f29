package saeapp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/testbed"
)

// fakeKMM is an in-memory ETSI 014 KME for both SAEs: enc_keys makes a key
// reserved for the named slave, dec_keys hands it over once, to that slave
// only. The first busy enc_keys calls answer 503, as a KMM without key does.
type fakeKMM struct {
	mu   sync.Mutex
	keys map[string]fakeKey
	busy int
	n    int
}

type fakeKey struct {
	master, slave string
	bytes         []byte
}

func (f *fakeKMM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, err := pki.PeerIdentity(*r.TLS)
	if err != nil || id.Kind != pki.KindSAE {
		writeErr(w, 401, "no SAE certificate")
		return
	}
	parts := strings.Split(r.URL.Path, "/") // "", api, v1, keys, SAE, verb
	if len(parts) != 6 || r.Method != http.MethodPost {
		writeErr(w, 404, "no such route")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch parts[5] {
	case "enc_keys":
		if f.busy > 0 {
			f.busy--
			writeErr(w, 503, "not enough key material yet")
			return
		}
		var req struct{ Number, Size int }
		json.NewDecoder(r.Body).Decode(&req)
		if req.Number != 1 || req.Size != 256 {
			writeErr(w, 400, fmt.Sprintf("want one 256-bit key, got %+v", req))
			return
		}
		f.n++
		kid := fmt.Sprintf("00000000-0000-4000-8000-%012d", f.n)
		k := make([]byte, 32)
		rand.Read(k)
		f.keys[kid] = fakeKey{master: id.ID, slave: parts[4], bytes: k}
		json.NewEncoder(w).Encode(map[string]any{"keys": []any{map[string]any{"key_ID": kid, "key": k}}})
	case "dec_keys":
		var req struct {
			KeyIDs []struct {
				KeyID string `json:"key_ID"`
			} `json:"key_IDs"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		var out []any
		for _, x := range req.KeyIDs {
			k, ok := f.keys[x.KeyID]
			if !ok {
				writeErr(w, 400, "unknown key_ID "+x.KeyID)
				return
			}
			if k.slave != id.ID || k.master != parts[4] {
				writeErr(w, 401, "not your key")
				return
			}
			delete(f.keys, x.KeyID)
			out = append(out, map[string]any{"key_ID": x.KeyID, "key": k.bytes})
		}
		json.NewEncoder(w).Encode(map[string]any{"keys": out})
	default:
		writeErr(w, 404, "no such route")
	}
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

// setup makes a PKI and endpoints.json in a temp state dir describing a fake
// KMM that serves SAE_A and SAE_B.
func setup(t *testing.T, busy int) (state string, kmm *fakeKMM) {
	t.Helper()
	state = t.TempDir()
	ca, err := pki.InitCA(filepath.Join(state, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	nf, _ := ca.IssueNode("A")
	var saes []testbed.SAEEntry
	for _, id := range []string{"SAE_A", "SAE_B"} {
		f, err := ca.IssueSAE(id)
		if err != nil {
			t.Fatal(err)
		}
		rel := func(p string) string { r, _ := filepath.Rel(state, p); return r }
		saes = append(saes, testbed.SAEEntry{SAEID: id, KMM: "A", Cert: rel(f.Cert), Key: rel(f.Key)})
	}
	kmm = &fakeKMM{keys: map[string]fakeKey{}, busy: busy}
	srv := httptest.NewUnstartedServer(kmm)
	srv.TLS, err = pki.ServerTLS(ca.Files().Cert, nf.Cert, nf.Key, tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	err = testbed.WriteEndpoints(state, testbed.Endpoints{
		CACert: "pki/ca.pem",
		KMMs:   []testbed.KMMEntry{{Node: "A", KMEID: "KME_A", URL: srv.URL}},
		SAEs:   saes,
	})
	if err != nil {
		t.Fatal(err)
	}
	return state, kmm
}

func TestSendReceive(t *testing.T) {
	state, kmm := setup(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	recvClient, _, err := Connect(state, "SAE_B")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan Received, 10)
	rcv := &Receiver{Client: recvClient, SAEID: "SAE_B", OnMessage: func(r Received) {
		r.Plaintext = bytes.Clone(r.Plaintext)
		got <- r
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- rcv.Serve(ctx, ln) }()

	sendClient, entry, err := Connect(filepath.Join(state, testbed.EndpointsFile), "SAE_A")
	if err != nil {
		t.Fatal(err)
	}
	if entry.KMM != "A" {
		t.Errorf("entry %+v", entry)
	}
	snd := &Sender{Client: sendClient, SAEID: "SAE_A", Peer: "SAE_B", Addr: ln.Addr().String(), KeyWait: 10 * time.Second}
	defer snd.Close()
	var ids []string
	for i := range 3 {
		msg := fmt.Sprintf("hello #%d", i)
		sent, err := snd.Send(ctx, []byte(msg))
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		r := <-got
		if r.Err != nil || string(r.Plaintext) != msg || r.KeyID != sent.KeyID || r.From != "SAE_A" || r.CiphertextLen != sent.CiphertextLen {
			t.Errorf("received %+v for sent %+v", r, sent)
		}
		// AES-GCM: ciphertext = plaintext + 16-byte tag.
		if sent.CiphertextLen != len(msg)+16 {
			t.Errorf("ciphertext %d bytes for %d-byte message", sent.CiphertextLen, len(msg))
		}
		ids = append(ids, sent.KeyID)
	}
	if ids[0] == ids[1] || ids[1] == ids[2] {
		t.Errorf("key reused: %v", ids)
	}
	if kmm.busy != 0 || len(kmm.keys) != 0 {
		t.Errorf("fake KMM: busy %d, undelivered keys %d", kmm.busy, len(kmm.keys))
	}

	// A tampered or replayed message is refused, and the sender hears why.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, line := range []string{
		`{"sender":"SAE_A","key_ID":"` + ids[0] + `","nonce":"AAAAAAAAAAAAAAAA","ciphertext":"AAAA"}`,
		`not json`,
	} {
		fmt.Fprintln(c, line)
		var ack Ack
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := json.NewDecoder(c).Decode(&ack); err != nil {
			t.Fatal(err)
		}
		if ack.OK || ack.Error == "" {
			t.Errorf("bad message %q acknowledged: %+v", line, ack)
		}
		if r := <-got; r.Err == nil {
			t.Errorf("receiver reported success for %q", line)
		}
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func TestConnectErrors(t *testing.T) {
	if _, _, err := Connect(t.TempDir(), "SAE_A"); err == nil || !strings.Contains(err.Error(), "is `qkdnet up") {
		t.Errorf("missing endpoints.json: %v", err)
	}
	state, _ := setup(t, 0)
	if _, _, err := Connect(state, "SAE_Z"); err == nil || !strings.Contains(err.Error(), "SAE_A, SAE_B") {
		t.Errorf("unknown SAE: %v", err)
	}
	os.Remove(filepath.Join(state, "pki", "sae_a.pem"))
	if _, _, err := Connect(state, "SAE_A"); err == nil {
		t.Error("missing certificate accepted")
	}
}

func TestEncryptDecrypt(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	n, ct, err := Encrypt(key, "id-1", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := Decrypt(key, "id-1", n, ct)
	if err != nil || string(pt) != "secret" {
		t.Fatalf("round trip: %q %v", pt, err)
	}
	if _, err := Decrypt(key, "id-2", n, ct); err == nil {
		t.Error("ciphertext opened under another key_ID")
	}
	if _, _, err := Encrypt(key[:16], "id", nil); err == nil {
		t.Error("16-byte key accepted for AES-256")
	}
	n2, _, _ := Encrypt(key, "id-1", []byte("secret"))
	if bytes.Equal(n, n2) {
		t.Error("nonce repeated")
	}
}
