package gateway_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/qkdnet/qkdnet/agent/gateway"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// --- test PKI ---------------------------------------------------------------

type testPKI struct {
	pool   *x509.CertPool
	server tls.Certificate // KMM A: qkd://node/A, IP 127.0.0.1
	saeA   tls.Certificate // qkd://sae/SAE_A
	saeB   tls.Certificate // qkd://sae/SAE_B
	node   tls.Certificate // qkd://node/B, a valid client cert that is not an SAE
	noID   tls.Certificate // valid client cert without a qkd:// URI
}

var (
	pkiOnce sync.Once
	pkiVal  *testPKI
	pkiErr  error
)

// certs returns one PKI for the whole package: key generation is the slow
// part of these tests and nothing mutates the result.
func certs(t *testing.T) *testPKI {
	t.Helper()
	pkiOnce.Do(func() { pkiVal, pkiErr = newTestPKI() })
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return pkiVal
}

func newTestPKI() (*testPKI, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	serial := int64(1)
	issue := func(uri string, eku x509.ExtKeyUsage, ips ...net.IP) (tls.Certificate, error) {
		serial++
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return tls.Certificate{}, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: uri},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{eku},
			IPAddresses:  ips,
		}
		if uri != "" {
			u, err := url.Parse(uri)
			if err != nil {
				return tls.Certificate{}, err
			}
			tmpl.URIs = []*url.URL{u}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return tls.Certificate{}, err
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
	}
	p := &testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	for _, c := range []struct {
		dst *tls.Certificate
		uri string
		eku x509.ExtKeyUsage
		ips []net.IP
	}{
		{&p.server, "qkd://node/A", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}},
		{&p.saeA, "qkd://sae/SAE_A", x509.ExtKeyUsageClientAuth, nil},
		{&p.saeB, "qkd://sae/SAE_B", x509.ExtKeyUsageClientAuth, nil},
		{&p.node, "qkd://node/B", x509.ExtKeyUsageClientAuth, nil},
		{&p.noID, "", x509.ExtKeyUsageClientAuth, nil},
	} {
		if *c.dst, err = issue(c.uri, c.eku, c.ips...); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// --- fake KeyService --------------------------------------------------------

// call is one RPC as the fake saw it.
type call struct {
	method    string
	req       proto.Message
	caller    pki.Identity
	callerErr error
}

// fakeKeys is a KeyServiceServer that records its calls and answers with
// canned values. The unit under test is the gateway, so this stands in for
// the KMM.
type fakeKeys struct {
	qkdv1.UnimplementedKeyServiceServer
	status *qkdv1.Status
	keys   *qkdv1.KeyContainer
	err    error

	mu    sync.Mutex
	calls []call // guarded by mu
}

func (f *fakeKeys) record(ctx context.Context, method string, req proto.Message) {
	id, err := pki.Caller(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{method: method, req: proto.Clone(req), caller: id, callerErr: err})
}

func (f *fakeKeys) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func (f *fakeKeys) GetStatus(ctx context.Context, req *qkdv1.GetStatusRequest) (*qkdv1.Status, error) {
	f.record(ctx, "GetStatus", req)
	if f.err != nil {
		return nil, f.err
	}
	return f.status, nil
}

func (f *fakeKeys) GetKey(ctx context.Context, req *qkdv1.GetKeyRequest) (*qkdv1.KeyContainer, error) {
	f.record(ctx, "GetKey", req)
	if f.err != nil {
		return nil, f.err
	}
	// A copy: the gateway zeroes the keys of the container it is handed.
	return proto.Clone(f.keys).(*qkdv1.KeyContainer), nil
}

func (f *fakeKeys) GetKeyWithKeyIDs(ctx context.Context, req *qkdv1.GetKeyWithKeyIDsRequest) (*qkdv1.KeyContainer, error) {
	f.record(ctx, "GetKeyWithKeyIDs", req)
	if f.err != nil {
		return nil, f.err
	}
	// A copy: the gateway zeroes the keys of the container it is handed.
	return proto.Clone(f.keys).(*qkdv1.KeyContainer), nil
}

// --- harness ----------------------------------------------------------------

// serve starts the gateway over real TLS with client certificates optional,
// as the agent configures it.
func serve(t *testing.T, srv qkdv1.KeyServiceServer, logger *slog.Logger) *httptest.Server {
	t.Helper()
	p := certs(t)
	h, err := gateway.New(srv, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewUnstartedServer(h)
	ts.TLS = &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    p.pool,
		MinVersion:   tls.VersionTLS12,
	}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts
}

// clientWith returns an HTTPS client presenting cert (none if nil).
func clientWith(t *testing.T, cert *tls.Certificate) *http.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: certs(t).pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type response struct {
	code   int
	header http.Header
	body   []byte
}

func do(t *testing.T, c *http.Client, method, url, contentType, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{code: resp.StatusCode, header: resp.Header, body: b}
}

// jsonObject parses b as one JSON object the way a generic client would
// (numbers become float64), so comparing against a map checks names and
// JSON types at once: an int64-as-string or a null would not compare equal.
func jsonObject(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, b)
	}
	return m
}

// --- tests ------------------------------------------------------------------

const (
	keyID1 = "2f0c8e5a-3b1d-4c5e-9f6a-7b8c9d0e1f2a"
	keyID2 = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
)

// keyBits are chosen so that standard base64 needs '+', '/' and padding,
// which URL-safe or unpadded base64 would spell differently.
var keyBits = []byte{0xfb, 0xef, 0xff, 0xfe}

func TestEndpoints(t *testing.T) {
	const stdB64 = "++///g=="
	if got := base64.StdEncoding.EncodeToString(keyBits); got != stdB64 {
		t.Fatalf("test data: keyBits encode to %q, want %q", got, stdB64)
	}
	fullStatus := &qkdv1.Status{
		SourceKmeId: "KME_A", TargetKmeId: "KME_B", MasterSaeId: "SAE_A", SlaveSaeId: "SAE_B",
		KeySize: 256, StoredKeyCount: 25000, MaxKeyCount: 100000, MaxKeyPerRequest: 128,
		MaxKeySize: 1024, MinKeySize: 64, MaxSaeIdCount: 0,
	}
	fullStatusJSON := map[string]any{
		"source_KME_ID": "KME_A", "target_KME_ID": "KME_B", "master_SAE_ID": "SAE_A", "slave_SAE_ID": "SAE_B",
		"key_size": 256.0, "stored_key_count": 25000.0, "max_key_count": 100000.0, "max_key_per_request": 128.0,
		"max_key_size": 1024.0, "min_key_size": 64.0, "max_SAE_ID_count": 0.0,
	}
	keys := &qkdv1.KeyContainer{Keys: []*qkdv1.Key{{KeyId: keyID1, Key: keyBits}, {KeyId: keyID2, Key: []byte{0}}}}
	keysJSON := map[string]any{"keys": []any{
		map[string]any{"key_ID": keyID1, "key": stdB64},
		map[string]any{"key_ID": keyID2, "key": "AA=="},
	}}
	saeA := pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"}
	saeB := pki.Identity{Kind: pki.KindSAE, ID: "SAE_B"}

	tests := []struct {
		desc        string
		asB         bool // call as SAE_B (the slave) instead of SAE_A
		method      string
		path        string
		contentType string
		body        string
		status      *qkdv1.Status
		wantRPC     string
		wantReq     proto.Message
		wantCaller  pki.Identity
		wantJSON    map[string]any
	}{
		{
			desc: "GET status", method: "GET", path: "/api/v1/keys/SAE_B/status", status: fullStatus,
			wantRPC: "GetStatus", wantReq: &qkdv1.GetStatusRequest{SlaveSaeId: "SAE_B"},
			wantCaller: saeA, wantJSON: fullStatusJSON,
		},
		{
			// Zero counts must still be written (ETSI makes every Status field
			// required), and the unset status_extension must not appear as null.
			desc: "GET status with zero counts", method: "GET", path: "/api/v1/keys/SAE_B/status",
			status:  &qkdv1.Status{SourceKmeId: "KME_A", TargetKmeId: "KME_B", MasterSaeId: "SAE_A", SlaveSaeId: "SAE_B", KeySize: 256},
			wantRPC: "GetStatus", wantReq: &qkdv1.GetStatusRequest{SlaveSaeId: "SAE_B"}, wantCaller: saeA,
			wantJSON: map[string]any{
				"source_KME_ID": "KME_A", "target_KME_ID": "KME_B", "master_SAE_ID": "SAE_A", "slave_SAE_ID": "SAE_B",
				"key_size": 256.0, "stored_key_count": 0.0, "max_key_count": 0.0, "max_key_per_request": 0.0,
				"max_key_size": 0.0, "min_key_size": 0.0, "max_SAE_ID_count": 0.0,
			},
		},
		{
			desc: "POST enc_keys with a JSON body", method: "POST", path: "/api/v1/keys/SAE_B/enc_keys",
			contentType: "application/json",
			body:        `{"number": 2, "size": 512, "additional_slave_SAE_IDs": ["SAE_C"]}`,
			wantRPC:     "GetKey",
			wantReq:     &qkdv1.GetKeyRequest{SlaveSaeId: "SAE_B", Number: 2, Size: 512, AdditionalSlaveSaeIds: []string{"SAE_C"}},
			wantCaller:  saeA, wantJSON: keysJSON,
		},
		{
			desc: "POST enc_keys with charset and extensions", method: "POST", path: "/api/v1/keys/SAE_B/enc_keys",
			contentType: "application/json; charset=UTF-8",
			body:        `{"number": 1, "extension_optional": [{"vendor": "x"}]}`,
			wantRPC:     "GetKey",
			wantReq: &qkdv1.GetKeyRequest{SlaveSaeId: "SAE_B", Number: 1, ExtensionOptional: []*structpb.Struct{
				{Fields: map[string]*structpb.Value{"vendor": structpb.NewStringValue("x")}},
			}},
			wantCaller: saeA, wantJSON: keysJSON,
		},
		{
			desc: "POST enc_keys with no body and no Content-Type", method: "POST", path: "/api/v1/keys/SAE_B/enc_keys",
			wantRPC: "GetKey", wantReq: &qkdv1.GetKeyRequest{SlaveSaeId: "SAE_B"}, wantCaller: saeA, wantJSON: keysJSON,
		},
		{
			desc: "GET enc_keys with number and size", method: "GET", path: "/api/v1/keys/SAE_B/enc_keys?number=3&size=128",
			wantRPC: "GetKey", wantReq: &qkdv1.GetKeyRequest{SlaveSaeId: "SAE_B", Number: 3, Size: 128},
			wantCaller: saeA, wantJSON: keysJSON,
		},
		{
			desc: "GET enc_keys without parameters", method: "GET", path: "/api/v1/keys/SAE_B/enc_keys",
			wantRPC: "GetKey", wantReq: &qkdv1.GetKeyRequest{SlaveSaeId: "SAE_B"}, wantCaller: saeA, wantJSON: keysJSON,
		},
		{
			desc: "GET dec_keys with key_ID", asB: true, method: "GET", path: "/api/v1/keys/SAE_A/dec_keys?key_ID=" + keyID1,
			wantRPC: "GetKeyWithKeyIDs", wantReq: &qkdv1.GetKeyWithKeyIDsRequest{MasterSaeId: "SAE_A", KeyId: keyID1},
			wantCaller: saeB, wantJSON: keysJSON,
		},
		{
			desc: "POST dec_keys with key_IDs", asB: true, method: "POST", path: "/api/v1/keys/SAE_A/dec_keys",
			contentType: "application/json",
			body:        `{"key_IDs": [{"key_ID": "` + keyID1 + `"}, {"key_ID": "` + keyID2 + `"}]}`,
			wantRPC:     "GetKeyWithKeyIDs",
			wantReq: &qkdv1.GetKeyWithKeyIDsRequest{MasterSaeId: "SAE_A", KeyIds: []*qkdv1.KeyID{
				{KeyId: keyID1}, {KeyId: keyID2},
			}},
			wantCaller: saeB, wantJSON: keysJSON,
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			fake := &fakeKeys{status: tt.status, keys: keys}
			ts := serve(t, fake, nil)
			cert := &certs(t).saeA
			if tt.asB {
				cert = &certs(t).saeB
			}
			resp := do(t, clientWith(t, cert), tt.method, ts.URL+tt.path, tt.contentType, tt.body)

			if resp.code != http.StatusOK {
				t.Fatalf("status %d, want 200; body %s", resp.code, resp.body)
			}
			if ct := resp.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if cc := resp.header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", cc)
			}
			calls := fake.Calls()
			if len(calls) != 1 {
				t.Fatalf("service got %d calls, want 1", len(calls))
			}
			c := calls[0]
			if c.method != tt.wantRPC {
				t.Errorf("RPC %s, want %s", c.method, tt.wantRPC)
			}
			if !proto.Equal(c.req, tt.wantReq) {
				t.Errorf("request\n got %v\nwant %v", c.req, tt.wantReq)
			}
			if c.callerErr != nil || c.caller != tt.wantCaller {
				t.Errorf("pki.Caller = %v, %v; want %v", c.caller, c.callerErr, tt.wantCaller)
			}
			if got := jsonObject(t, resp.body); !reflect.DeepEqual(got, tt.wantJSON) {
				t.Errorf("body\n got %v\nwant %v", got, tt.wantJSON)
			}
		})
	}
}

// errorCase is what every non-200 answer is checked for.
type errorCase struct {
	desc        string
	cert        func(*testPKI) *tls.Certificate // nil: no client certificate
	method      string
	path        string
	contentType string
	body        string
	svcErr      error // what the service answers
	wantCode    int
	wantMsg     string              // substring of "message"
	notInBody   string              // must not appear anywhere in the body
	wantDetails []map[string]string // nil: no "details"
	wantCalls   int
	wantHeader  map[string]string
}

func asSAE(p *testPKI) *tls.Certificate { return &p.saeA }

func TestErrors(t *testing.T) {
	badSize := status.New(codes.InvalidArgument, "size must be a multiple of 8")
	badSize, err := badSize.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: "size", Description: "not a multiple of 8"},
		{Field: "number", Description: "above max_key_per_request 128"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	notEnough := status.New(codes.Unavailable, "not enough keys for SAE_A -> SAE_B: 3 stored, 16 asked")
	notEnough, err = notEnough.WithDetails(&errdetails.ErrorInfo{
		Reason: "NOT_ENOUGH_KEYS", Domain: "qkdnet", Metadata: map[string]string{"stored_key_count": "3"},
	})
	if err != nil {
		t.Fatal(err)
	}
	internal, err := status.New(codes.Internal, "store: SECRET-DETAIL").WithDetails(&errdetails.ErrorInfo{
		Reason: "STORE_CORRUPT", Metadata: map[string]string{"page": "SECRET-PAGE"},
	})
	if err != nil {
		t.Fatal(err)
	}
	const encKeys = "/api/v1/keys/SAE_B/enc_keys"

	tests := []errorCase{
		{
			desc: "no client certificate", cert: nil, method: "GET", path: "/api/v1/keys/SAE_B/status",
			wantCode: 401, wantMsg: "client certificate",
		},
		{
			desc:   "node certificate",
			cert:   func(p *testPKI) *tls.Certificate { return &p.node },
			method: "GET", path: "/api/v1/keys/SAE_B/status",
			wantCode: 401, wantMsg: "node:B, not an SAE",
		},
		{
			desc:   "certificate without a qkd identity",
			cert:   func(p *testPKI) *tls.Certificate { return &p.noID },
			method: "POST", path: encKeys, body: `{}`,
			wantCode: 401, wantMsg: "does not identify an SAE",
		},
		{
			// Authentication comes before routing: a stranger learns nothing
			// about which paths exist.
			desc: "no client certificate on an unknown path", cert: nil, method: "GET", path: "/nope",
			wantCode: 401,
		},
		{
			desc: "malformed JSON", cert: asSAE, method: "POST", path: encKeys,
			contentType: "application/json", body: `{"number": 1,`,
			wantCode: 400, wantMsg: "malformed JSON",
		},
		{
			desc: "data after the JSON object", cert: asSAE, method: "POST", path: encKeys,
			contentType: "application/json", body: `{"number": 1} {"number": 2}`,
			wantCode: 400, wantMsg: "after the JSON object",
		},
		{
			desc: "wrong type", cert: asSAE, method: "POST", path: encKeys,
			contentType: "application/json", body: `{"number": "x"}`,
			wantCode: 400, wantMsg: "number",
		},
		{
			desc: "unknown field", cert: asSAE, method: "POST", path: encKeys,
			contentType: "application/json", body: `{"numbr": 1}`,
			wantCode: 400, wantMsg: `unknown field "numbr"`,
		},
		{
			desc: "JSON array instead of object", cert: asSAE, method: "POST", path: "/api/v1/keys/SAE_A/dec_keys",
			contentType: "application/json", body: `[]`,
			wantCode: 400, wantMsg: "invalid request body",
		},
		{
			desc: "wrong type in a query parameter", cert: asSAE, method: "GET", path: encKeys + "?number=x",
			wantCode: 400, wantMsg: "number",
		},
		{
			desc: "text/plain body", cert: asSAE, method: "POST", path: encKeys,
			contentType: "text/plain", body: `{"number": 1}`,
			wantCode: 415, wantMsg: "application/json",
		},
		{
			desc: "JSON in another charset", cert: asSAE, method: "POST", path: encKeys,
			contentType: "application/json; charset=latin1", body: `{"number": 1}`,
			wantCode: 415, wantMsg: "application/json",
		},
		{
			desc: "body over the limit", cert: asSAE, method: "POST", path: encKeys,
			contentType: "application/json", body: `{"number": 1, "x": "` + strings.Repeat("a", gateway.MaxBodyBytes) + `"}`,
			wantCode: 413, wantMsg: "larger than",
		},
		{
			desc: "InvalidArgument with field violations", cert: asSAE, method: "POST", path: encKeys,
			body: `{"size": 7}`, svcErr: badSize.Err(),
			wantCode: 400, wantMsg: "size must be a multiple of 8", wantCalls: 1,
			wantDetails: []map[string]string{
				{"parameter": "size", "reason": "not a multiple of 8"},
				{"parameter": "number", "reason": "above max_key_per_request 128"},
			},
		},
		{
			desc: "Unavailable with ErrorInfo", cert: asSAE, method: "POST", path: encKeys,
			body: `{"number": 16}`, svcErr: notEnough.Err(),
			wantCode: 503, wantMsg: "not enough keys", wantCalls: 1,
			wantDetails: []map[string]string{{"reason": "NOT_ENOUGH_KEYS", "stored_key_count": "3"}},
		},
		{
			desc: "Unauthenticated", cert: asSAE, method: "GET", path: "/api/v1/keys/SAE_X/dec_keys?key_ID=" + keyID1,
			svcErr:   status.Error(codes.Unauthenticated, "key "+keyID1+" was not issued for SAE_A"),
			wantCode: 401, wantMsg: "was not issued for SAE_A", wantCalls: 1,
		},
		{
			desc: "Unavailable", cert: asSAE, method: "GET", path: "/api/v1/keys/SAE_B/status",
			svcErr:   status.Error(codes.Unavailable, "peer KME_B unreachable"),
			wantCode: 503, wantMsg: "peer KME_B unreachable", wantCalls: 1,
		},
		{
			desc: "Internal hides its text", cert: asSAE, method: "GET", path: "/api/v1/keys/SAE_B/status",
			svcErr:   status.Error(codes.Internal, "store: page 0x1234 checksum SECRET-DETAIL"),
			wantCode: 500, wantMsg: "internal error", notInBody: "SECRET-DETAIL", wantCalls: 1,
		},
		{
			desc: "Internal hides its details", cert: asSAE, method: "GET", path: "/api/v1/keys/SAE_B/status",
			svcErr:   internal.Err(),
			wantCode: 500, wantMsg: "internal error", notInBody: "SECRET", wantCalls: 1,
		},
		{
			desc: "unmapped error hides its text", cert: asSAE, method: "GET", path: "/api/v1/keys/SAE_B/status",
			svcErr:   errors.New("open /var/lib/SECRET-DETAIL: permission denied"),
			wantCode: 500, wantMsg: "internal error", notInBody: "SECRET-DETAIL", wantCalls: 1,
		},
		{
			desc: "unknown endpoint", cert: asSAE, method: "GET", path: "/api/v1/keys/SAE_B/other_keys",
			wantCode: 404, wantMsg: "no such endpoint",
		},
		{
			desc: "unknown path", cert: asSAE, method: "GET", path: "/",
			wantCode: 404, wantMsg: "no such endpoint",
		},
		{
			desc: "wrong method on enc_keys", cert: asSAE, method: "DELETE", path: encKeys,
			wantCode: 405, wantMsg: "DELETE", wantHeader: map[string]string{"Allow": "GET, POST"},
		},
		{
			desc: "POST status", cert: asSAE, method: "POST", path: "/api/v1/keys/SAE_B/status",
			contentType: "text/plain", body: "x",
			wantCode: 405, wantHeader: map[string]string{"Allow": "GET"},
		},
		{
			// A form POST must not be served as the GET with the same path.
			desc: "form-encoded POST", cert: asSAE, method: "POST", path: "/api/v1/keys/SAE_A/dec_keys",
			contentType: "application/x-www-form-urlencoded", body: "key_ID=" + keyID1,
			wantCode: 415,
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			fake := &fakeKeys{err: tt.svcErr, status: &qkdv1.Status{}, keys: &qkdv1.KeyContainer{}}
			ts := serve(t, fake, nil)
			var cert *tls.Certificate
			if tt.cert != nil {
				cert = tt.cert(certs(t))
			}
			resp := do(t, clientWith(t, cert), tt.method, ts.URL+tt.path, tt.contentType, tt.body)
			checkError(t, tt, resp)
			if n := len(fake.Calls()); n != tt.wantCalls {
				t.Errorf("service got %d calls, want %d", n, tt.wantCalls)
			}
		})
	}
}

func checkError(t *testing.T, tt errorCase, resp response) {
	t.Helper()
	if resp.code != tt.wantCode {
		t.Errorf("status %d, want %d; body %s", resp.code, tt.wantCode, resp.body)
	}
	if ct := resp.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	for k, v := range tt.wantHeader {
		if got := resp.header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if tt.notInBody != "" && bytes.Contains(resp.body, []byte(tt.notInBody)) {
		t.Errorf("body leaks %q: %s", tt.notInBody, resp.body)
	}
	// The ETSI Error object: a required string "message", an optional array
	// "details" of objects, nothing else.
	var body struct {
		Message *string             `json:"message"`
		Details []map[string]string `json:"details"`
	}
	dec := json.NewDecoder(bytes.NewReader(resp.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("body is not an ETSI Error: %v\n%s", err, resp.body)
	}
	if body.Message == nil || *body.Message == "" {
		t.Fatalf("ETSI Error without a message: %s", resp.body)
	}
	if !strings.Contains(*body.Message, tt.wantMsg) {
		t.Errorf("message %q does not contain %q", *body.Message, tt.wantMsg)
	}
	if !reflect.DeepEqual(body.Details, tt.wantDetails) {
		t.Errorf("details\n got %v\nwant %v", body.Details, tt.wantDetails)
	}
}

// TestPlainHTTPRefused calls the handler the way a plain-HTTP listener would:
// r.TLS is nil, so nobody is authenticated whatever the headers say.
func TestPlainHTTPRefused(t *testing.T) {
	fake := &fakeKeys{status: &qkdv1.Status{}}
	h, err := gateway.New(fake, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "http://kme/api/v1/keys/SAE_B/status", nil))
	checkError(t, errorCase{wantCode: 401, wantMsg: "HTTPS"}, response{code: rec.Code, header: rec.Header(), body: rec.Body.Bytes()})
	if n := len(fake.Calls()); n != 0 {
		t.Errorf("service got %d calls, want 0", n)
	}
}

// TestChunkedBodyOverLimit sends a body of unknown length, which only the
// decoder can find too large.
func TestChunkedBodyOverLimit(t *testing.T) {
	fake := &fakeKeys{keys: &qkdv1.KeyContainer{}}
	ts := serve(t, fake, nil)
	body := io.MultiReader(strings.NewReader(`{"x": "`), strings.NewReader(strings.Repeat("a", gateway.MaxBodyBytes)), strings.NewReader(`"}`))
	req, err := http.NewRequest("POST", ts.URL+"/api/v1/keys/SAE_B/enc_keys", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1 // force chunked transfer encoding
	req.Header.Set("Content-Type", "application/json")
	resp, err := clientWith(t, &certs(t).saeA).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	checkError(t, errorCase{wantCode: 400, wantMsg: "larger than"}, response{code: resp.StatusCode, header: resp.Header, body: b})
	if n := len(fake.Calls()); n != 0 {
		t.Errorf("service got %d calls, want 0", n)
	}
}

// recordingHandler keeps every slog record it is given.
type recordingHandler struct {
	mu      sync.Mutex
	records []slog.Record // guarded by mu
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

func attrs(r slog.Record) map[string]string {
	m := map[string]string{}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	return m
}

func TestRequestLog(t *testing.T) {
	tests := []struct {
		desc      string
		svcErr    error
		cert      bool
		wantLevel slog.Level
		want      map[string]string // attributes, besides duration
		notIn     string            // must not appear in any attribute
	}{
		{
			desc: "key response", cert: true, wantLevel: slog.LevelDebug,
			want:  map[string]string{"method": "POST", "path": "/api/v1/keys/SAE_B/enc_keys", "sae": "SAE_A", "status": "200"},
			notIn: base64.StdEncoding.EncodeToString(keyBits),
		},
		{
			desc: "unauthenticated", cert: false, wantLevel: slog.LevelDebug,
			want: map[string]string{"method": "POST", "path": "/api/v1/keys/SAE_B/enc_keys", "sae": "", "status": "401",
				"error": "a verified SAE client certificate is required"},
		},
		{
			// The text the SAE was not shown must reach the operator.
			desc: "internal error", cert: true, svcErr: status.Error(codes.Internal, "store corrupt"), wantLevel: slog.LevelError,
			want: map[string]string{"method": "POST", "path": "/api/v1/keys/SAE_B/enc_keys", "sae": "SAE_A", "status": "500",
				"code": "Internal", "error": "store corrupt"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			rh := &recordingHandler{}
			fake := &fakeKeys{err: tt.svcErr, keys: &qkdv1.KeyContainer{Keys: []*qkdv1.Key{{KeyId: keyID1, Key: keyBits}}}}
			ts := serve(t, fake, slog.New(rh))
			var cert *tls.Certificate
			if tt.cert {
				cert = &certs(t).saeA
			}
			do(t, clientWith(t, cert), "POST", ts.URL+"/api/v1/keys/SAE_B/enc_keys?key=secret", "application/json", `{"number": 1}`)
			// The log line is written after the response; Close waits for the
			// handler to return.
			ts.Close()

			rh.mu.Lock()
			defer rh.mu.Unlock()
			if len(rh.records) != 1 {
				t.Fatalf("%d log records, want 1", len(rh.records))
			}
			r := rh.records[0]
			if r.Level != tt.wantLevel {
				t.Errorf("level %v, want %v", r.Level, tt.wantLevel)
			}
			got := attrs(r)
			if _, ok := got["duration"]; !ok {
				t.Error("no duration attribute")
			}
			delete(got, "duration")
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("attributes\n got %v\nwant %v", got, tt.want)
			}
			for k, v := range got {
				if strings.Contains(v, "secret") || (tt.notIn != "" && strings.Contains(v, tt.notIn)) {
					t.Errorf("attribute %s=%q leaks the query or key bytes", k, v)
				}
			}
		})
	}
}

func TestNewRejectsNilServer(t *testing.T) {
	if _, err := gateway.New(nil, nil); err == nil {
		t.Error("New(nil, nil) succeeded, want an error")
	}
}
