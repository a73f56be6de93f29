package etsi014client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/pki"
)

type fixture struct {
	srv    *httptest.Server
	client *Client
	calls  atomic.Int64
}

// newFixture starts an HTTPS server with mutual TLS from a fresh PKI and a
// client with SAE_A's certificate. handler sees the caller's identity.
func newFixture(t *testing.T, handler func(caller pki.Identity, w http.ResponseWriter, r *http.Request)) *fixture {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := pki.InitCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	nf, err := ca.IssueNode("A")
	if err != nil {
		t.Fatal(err)
	}
	sf, err := ca.IssueSAE("SAE_A")
	if err != nil {
		t.Fatal(err)
	}
	srvCfg, err := pki.ServerTLS(ca.Files().Cert, nf.Cert, nf.Key, tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		id, err := pki.PeerIdentity(*r.TLS)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		handler(id, w, r)
	}))
	f.srv.TLS = srvCfg
	f.srv.EnableHTTP2 = true
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	f.client, err = NewFromFiles(f.srv.URL, ca.Files().Cert, sf.Cert, sf.Key, Options{MaxConns: 8, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.client.Close)
	return f
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestStatusEncDec(t *testing.T) {
	key := bytes.Repeat([]byte{0xAB}, 32)
	f := newFixture(t, func(caller pki.Identity, w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/api/v1/keys/SAE_B/status":
			writeJSON(w, 200, map[string]any{
				"source_KME_ID": "KME_A", "target_KME_ID": "KME_B",
				"master_SAE_ID": caller.ID, "slave_SAE_ID": "SAE_B",
				"key_size": 256, "stored_key_count": 7, "max_key_count": 4096,
				"max_key_per_request": 1024, "max_key_size": 8192, "min_key_size": 64,
				"max_SAE_ID_count": 0,
			})
		case r.Method == http.MethodPost && r.URL.Path == "/api/v1/keys/SAE_B/enc_keys":
			var req map[string]any
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req["number"] != 1.0 || req["size"] != 256.0 {
				writeJSON(w, 400, map[string]any{"message": fmt.Sprintf("bad body %v %v", req, err)})
				return
			}
			if r.Header.Get("Content-Type") != "application/json" {
				writeJSON(w, 400, map[string]any{"message": "content type"})
				return
			}
			writeJSON(w, 200, map[string]any{"keys": []any{map[string]any{
				"key_ID": "550e8400-e29b-41d4-a716-446655440000",
				"key":    base64.StdEncoding.EncodeToString(key),
			}}})
		case r.Method == http.MethodPost && r.URL.Path == "/api/v1/keys/SAE_M/dec_keys":
			var req struct {
				KeyIDs []struct {
					KeyID string `json:"key_ID"`
				} `json:"key_IDs"`
			}
			json.NewDecoder(r.Body).Decode(&req)
			var keys []any
			for _, k := range req.KeyIDs {
				keys = append(keys, map[string]any{"key_ID": k.KeyID, "key": base64.StdEncoding.EncodeToString(key)})
			}
			writeJSON(w, 200, map[string]any{"keys": keys})
		default:
			writeJSON(w, 404, map[string]any{"message": "no route " + r.Method + " " + r.URL.Path})
		}
	})
	c := ctx(t)

	st, err := f.client.Status(c, "SAE_B")
	if err != nil {
		t.Fatal(err)
	}
	want := Status{SourceKMEID: "KME_A", TargetKMEID: "KME_B", MasterSAEID: "SAE_A", SlaveSAEID: "SAE_B",
		KeySize: 256, StoredKeyCount: 7, MaxKeyCount: 4096, MaxKeyPerRequest: 1024, MaxKeySize: 8192, MinKeySize: 64}
	if fmt.Sprint(*st) != fmt.Sprint(want) {
		t.Errorf("Status = %+v\nwant %+v", *st, want)
	}

	kc, err := f.client.EncKeys(c, "SAE_B", KeyRequest{Number: 1, Size: 256})
	if err != nil {
		t.Fatal(err)
	}
	if len(kc.Keys) != 1 || kc.Keys[0].KeyID != "550e8400-e29b-41d4-a716-446655440000" || !bytes.Equal(kc.Keys[0].Bytes, key) {
		t.Fatalf("EncKeys = %+v", kc)
	}
	kc.Zero()
	if !bytes.Equal(kc.Keys[0].Bytes, make([]byte, 32)) {
		t.Error("Zero left key bytes behind")
	}

	kc, err = f.client.DecKeys(c, "SAE_M", "id-1", "id-2")
	if err != nil {
		t.Fatal(err)
	}
	if len(kc.Keys) != 2 || kc.Keys[0].KeyID != "id-1" || kc.Keys[1].KeyID != "id-2" || !bytes.Equal(kc.Keys[1].Bytes, key) {
		t.Fatalf("DecKeys = %+v", kc)
	}
	if _, err := f.client.DecKeys(c, "SAE_M"); err == nil {
		t.Error("DecKeys without key_IDs succeeded")
	}
}

func TestErrors(t *testing.T) {
	f := newFixture(t, func(_ pki.Identity, w http.ResponseWriter, r *http.Request) {
		switch strings.Split(r.URL.Path, "/")[4] {
		case "BAD":
			writeJSON(w, 400, map[string]any{"message": "size is not a multiple of 8",
				"details": []any{map[string]any{"parameter": "size", "reason": "not a multiple of 8"}}})
		case "OTHER":
			writeJSON(w, 401, map[string]any{"message": "SAE_A may not fetch these keys"})
		case "BUSY":
			writeJSON(w, 503, map[string]any{"message": "not enough key material; retry later"})
		case "PLAIN":
			w.WriteHeader(502)
			w.Write([]byte("<html>\n bad\tgateway </html>"))
		case "GARBAGE":
			writeJSON(w, 200, "not a container")
		}
	})
	c := ctx(t)
	for _, tc := range []struct {
		sae     string
		code    int
		message string
		temp    bool
	}{
		{"BAD", 400, "size is not a multiple of 8", false},
		{"OTHER", 401, "SAE_A may not fetch these keys", false},
		{"BUSY", 503, "not enough key material; retry later", true},
		{"PLAIN", 502, "<html> bad gateway </html>", false},
	} {
		t.Run(tc.sae, func(t *testing.T) {
			_, err := f.client.EncKeys(c, tc.sae, KeyRequest{Number: 1, Size: 7})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v (%T), want *Error", err, err)
			}
			if e.StatusCode != tc.code || e.Message != tc.message || e.Temporary() != tc.temp || StatusCode(err) != tc.code {
				t.Errorf("got %d %q temp=%v, want %d %q temp=%v", e.StatusCode, e.Message, e.Temporary(), tc.code, tc.message, tc.temp)
			}
			if !strings.Contains(err.Error(), fmt.Sprint(tc.code)) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error text %q should be one line naming the status", err)
			}
		})
	}
	_, err := f.client.DecKeys(c, "BAD", "x")
	var e *Error
	if !errors.As(err, &e) || len(e.Details) != 1 || e.Details[0]["parameter"] != "size" {
		t.Errorf("details not decoded: %v", err)
	}
	if _, err := f.client.Status(c, "GARBAGE"); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Errorf("malformed 200 answer: %v", err)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:8443", "127.0.0.1:8443", "https://", "%%"} {
		if _, err := New(u, &tls.Config{}, Options{}); err == nil {
			t.Errorf("New(%q) succeeded", u)
		}
	}
	if _, err := New("https://127.0.0.1:1", nil, Options{}); err == nil {
		t.Error("New without TLS config succeeded")
	}
}

// TestConcurrent drives one client from many goroutines; run with -race. It
// also checks that connections are reused rather than one per request.
func TestConcurrent(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]bool{}
	f := newFixture(t, func(_ pki.Identity, w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr] = true
		mu.Unlock()
		writeJSON(w, 200, map[string]any{"keys": []any{map[string]any{"key_ID": "k", "key": "AAAA"}}})
	})
	c := ctx(t)
	const workers, each = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range each {
				kc, err := f.client.EncKeys(c, "SAE_B", KeyRequest{})
				if err != nil {
					errs <- err
					return
				}
				if len(kc.Keys) != 1 || len(kc.Keys[0].Bytes) != 3 {
					errs <- fmt.Errorf("bad container %+v", kc)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := f.calls.Load(); got != workers*each {
		t.Errorf("server saw %d calls, want %d", got, workers*each)
	}
	if len(conns) > 8 {
		t.Errorf("%d connections for %d requests with MaxConns 8", len(conns), workers*each)
	}
}
