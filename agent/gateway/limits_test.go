package gateway_test

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/agent/gateway"
	"github.com/qkdnet/qkdnet/agent/ratelimit"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// TestRateLimitPerSAE: an SAE past its burst gets 503 with the ETSI error
// object, a RATE_LIMITED reason and Retry-After, and the KMM never sees the
// request; another SAE is not affected; tokens come back with time (a clock
// the test moves, so nothing here depends on the machine's speed).
func TestRateLimitPerSAE(t *testing.T) {
	now := time.Unix(1000, 0)
	lim := ratelimit.New(2, 3).WithClock(func() time.Time { return now })
	fake := &fakeKeys{status: &qkdv1.Status{}}
	h, err := gateway.New(fake, nil, gateway.WithLimiter(lim))
	if err != nil {
		t.Fatal(err)
	}
	p := certs(t)
	ts := httptest.NewUnstartedServer(h)
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: p.pool, MinVersion: tls.VersionTLS12}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	a, b := clientWith(t, &p.saeA), clientWith(t, &p.saeB)
	statusB, statusA := ts.URL+"/api/v1/keys/SAE_B/status", ts.URL+"/api/v1/keys/SAE_A/status"

	for i := range 3 {
		if r := do(t, a, "GET", statusB, "", ""); r.code != http.StatusOK {
			t.Fatalf("request %d of the burst: %d %s", i, r.code, r.body)
		}
	}
	r := do(t, a, "GET", statusB, "", "")
	checkError(t, errorCase{wantCode: http.StatusServiceUnavailable, wantMsg: "SAE_A is over its request limit",
		wantDetails: []map[string]string{{"reason": "RATE_LIMITED"}}, wantHeader: map[string]string{"Retry-After": "1"}}, r)
	// A POST too, before its body is read.
	r = do(t, a, "POST", ts.URL+"/api/v1/keys/SAE_B/enc_keys", "application/json", `{"number":1}`)
	if r.code != http.StatusServiceUnavailable {
		t.Errorf("POST past the burst: %d, want 503", r.code)
	}
	if r := do(t, b, "GET", statusA, "", ""); r.code != http.StatusOK {
		t.Fatalf("SAE_B, with its own bucket: %d %s", r.code, r.body)
	}
	now = now.Add(500 * time.Millisecond) // one token at 2/s
	if r := do(t, a, "GET", statusB, "", ""); r.code != http.StatusOK {
		t.Fatalf("after 500 ms: %d %s", r.code, r.body)
	}
	if r := do(t, a, "GET", statusB, "", ""); r.code != http.StatusServiceUnavailable {
		t.Fatalf("second request after 500 ms: %d, want 503", r.code)
	}
	if n := len(fake.Calls()); n != 3+1+1 {
		t.Errorf("the KMM got %d calls, want 5 (refused requests must not reach it)", n)
	}
}

// TestLargestDecKeysFitsBodyLimit: the body limit leaves room for the
// largest legitimate request, dec_keys of max_key_per_request (1024) key_IDs
// pretty-printed with extensions, so lowering it broke nobody.
func TestLargestDecKeysFitsBodyLimit(t *testing.T) {
	var sb strings.Builder
	sb.WriteString("{\n  \"key_IDs\": [\n")
	for i := range 1024 {
		if i > 0 {
			sb.WriteString(",\n")
		}
		fmt.Fprintf(&sb, "    {\n      \"key_ID\": \"00000000-%04x-8000-8000-000000000000\",\n      \"key_ID_extension\": {}\n    }", i)
	}
	sb.WriteString("\n  ]\n}\n")
	if sb.Len() > gateway.MaxBodyBytes {
		t.Fatalf("a dec_keys of 1024 key_IDs is %d bytes, over the limit of %d", sb.Len(), gateway.MaxBodyBytes)
	}
	fake := &fakeKeys{keys: &qkdv1.KeyContainer{}}
	ts := serve(t, fake, nil)
	if r := do(t, clientWith(t, &certs(t).saeB), "POST", ts.URL+"/api/v1/keys/SAE_A/dec_keys", "application/json", sb.String()); r.code != http.StatusOK {
		t.Fatalf("dec_keys of 1024 key_IDs (%d bytes): %d %s", sb.Len(), r.code, r.body)
	}
	if c := fake.Calls(); len(c) != 1 || len(c[0].req.(*qkdv1.GetKeyWithKeyIDsRequest).GetKeyIds()) != 1024 {
		t.Fatalf("the KMM got %d calls", len(c))
	}
}
