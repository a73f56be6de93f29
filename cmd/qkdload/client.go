package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/testbed"
)

// The ETSI 014 bodies qkdload reads and writes: only the fields it uses.
// encoding/json decodes the standard base64 of "key" into []byte.
type (
	keyRequest struct {
		Number int `json:"number"`
		Size   int `json:"size"`
	}
	keyIDRef struct {
		KeyID string `json:"key_ID"`
	}
	keyIDsRequest struct {
		KeyIDs []keyIDRef `json:"key_IDs"`
	}
	key struct {
		KeyID string `json:"key_ID"`
		Key   []byte `json:"key"`
	}
	keyContainer struct {
		Keys []key `json:"keys"`
	}
	statusResponse struct {
		StoredKeyCount int `json:"stored_key_count"`
		MaxKeyCount    int `json:"max_key_count"`
	}
	errorBody struct {
		Message string           `json:"message"`
		Details []map[string]any `json:"details"`
	}
)

// maxResponse bounds a response body: 1024 keys of 8192 bits in base64 are
// about 1.5 MiB, so anything near this limit is a broken KMM.
const maxResponse = 64 << 20

// apiError is a non-200 answer.
type apiError struct {
	op      string
	code    int
	message string
	reason  string // ErrorInfo reason from "details", if any
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s: HTTP %d: %s", e.op, e.code, e.message)
}

// notEnoughKeys reports whether the KMM said "no key for you right now":
// HTTP 503 naming the shortage (spec/etsi-014.md, "Status codes"). Other 503s
// (peer unreachable, store unavailable) are errors.
func (e *apiError) notEnoughKeys() bool {
	if e.code != http.StatusServiceUnavailable {
		return false
	}
	return strings.Contains(strings.ToLower(e.message), "not enough key") ||
		strings.Contains(strings.ToUpper(e.reason), "NOT_ENOUGH_KEY")
}

// saeClient speaks ETSI 014 to one KMM as one SAE, over its own connection
// pool: the SAE is whoever holds the client certificate, so SAEs cannot
// share connections.
type saeClient struct {
	sae     string
	base    string // https://host:port, no trailing slash
	hc      *http.Client
	timeout time.Duration
}

type clientOptions struct {
	caFile  string
	http2   bool
	conns   int           // workers that may use this client at once
	timeout time.Duration // per request
}

func newSAEClient(sae testbed.SAEEntry, kmm testbed.KMMEntry, opt clientOptions) (*saeClient, error) {
	u, err := url.Parse(kmm.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("KMM %s: URL %q is not https://host:port", kmm.Node, kmm.URL)
	}
	cfg, err := pki.ClientTLS(opt.caFile, sae.Cert, sae.Key)
	if err != nil {
		return nil, fmt.Errorf("SAE %s: %w", sae.SAEID, err)
	}
	// The SAE authenticates the KME (ETSI 014): beyond a CA-signed
	// certificate for the address, it must be the node the SAE belongs to.
	wantNode := kmm.Node
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		id, err := pki.PeerIdentity(cs)
		if err != nil {
			return fmt.Errorf("KMM at %s: %w", kmm.URL, err)
		}
		if id.Kind != pki.KindNode || (wantNode != "" && id.ID != wantNode) {
			return fmt.Errorf("KMM at %s presents %s, want node:%s", kmm.URL, id, wantNode)
		}
		return nil
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(opt.http2)
	conns := max(opt.conns, 1)
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		Protocols:           &protos,
		ForceAttemptHTTP2:   opt.http2,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, Control: loopbackOnly}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		// Every worker keeps its connection between requests: a pool smaller
		// than the workers would measure TLS handshakes, not key delivery.
		MaxIdleConns:        2 * conns,
		MaxIdleConnsPerHost: 2 * conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &saeClient{
		sae:     sae.SAEID,
		base:    strings.TrimSuffix(kmm.URL, "/"),
		hc:      &http.Client{Transport: tr},
		timeout: opt.timeout,
	}, nil
}

// loopbackOnly refuses to connect anywhere but loopback: qkdload drives a
// local testbed and must never load a real network by mistake.
func loopbackOnly(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("qkdload only connects to loopback addresses, not %s", address)
	}
	return nil
}

func (c *saeClient) close() { c.hc.CloseIdleConnections() }

// encKeys is POST /api/v1/keys/{slave}/enc_keys.
func (c *saeClient) encKeys(ctx context.Context, slave string, number, size int) ([]key, string, error) {
	var kc keyContainer
	body := appendKeyRequest(make([]byte, 0, 40), number, size)
	proto, err := c.do(ctx, "enc_keys", http.MethodPost, "/api/v1/keys/"+url.PathEscape(slave)+"/enc_keys", body, &kc)
	return kc.Keys, proto, err
}

// decKeys is POST /api/v1/keys/{master}/dec_keys.
func (c *saeClient) decKeys(ctx context.Context, master string, ids []string) ([]key, error) {
	body, ok := appendKeyIDsRequest(make([]byte, 0, 16+52*len(ids)), ids)
	if !ok {
		req := keyIDsRequest{KeyIDs: make([]keyIDRef, len(ids))}
		for i, id := range ids {
			req.KeyIDs[i].KeyID = id
		}
		var err error
		if body, err = json.Marshal(req); err != nil {
			return nil, err
		}
	}
	var kc keyContainer
	_, err := c.do(ctx, "dec_keys", http.MethodPost, "/api/v1/keys/"+url.PathEscape(master)+"/dec_keys", body, &kc)
	return kc.Keys, err
}

// status is GET /api/v1/keys/{slave}/status.
func (c *saeClient) status(ctx context.Context, slave string) (statusResponse, error) {
	var st statusResponse
	_, err := c.do(ctx, "status", http.MethodGet, "/api/v1/keys/"+url.PathEscape(slave)+"/status", nil, &st)
	return st, err
}

// bodies recycles answer buffers; each is cleared before it goes back, as
// it held base64 key material.
var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// do sends body (JSON; nil for none) and decodes a 200 answer into out. It
// returns the negotiated protocol ("HTTP/1.1", "HTTP/2.0").
func (c *saeClient) do(ctx context.Context, op, method, path string, body []byte, out any) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return "", err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	buf := bodies.Get().(*bytes.Buffer)
	defer func() {
		clear(buf.Bytes()[:buf.Cap()])
		buf.Reset()
		bodies.Put(buf)
	}()
	if resp.ContentLength > 0 && resp.ContentLength <= maxResponse {
		buf.Grow(int(resp.ContentLength) + 1)
	}
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, maxResponse+1)); err != nil {
		return resp.Proto, fmt.Errorf("%s: reading the answer: %w", op, err)
	}
	b := buf.Bytes()
	if len(b) > maxResponse {
		return resp.Proto, &badResponse{op: op, why: fmt.Sprintf("answer larger than %d bytes", maxResponse)}
	}
	if resp.StatusCode != http.StatusOK {
		e := &apiError{op: op, code: resp.StatusCode}
		var eb errorBody
		if json.Unmarshal(b, &eb) == nil && eb.Message != "" {
			e.message = eb.Message
			for _, d := range eb.Details {
				if r, ok := d["reason"].(string); ok {
					e.reason = r
				}
			}
		} else {
			e.message = http.StatusText(resp.StatusCode)
		}
		return resp.Proto, e
	}
	if kc, isKC := out.(*keyContainer); isKC {
		if keys, ok := fastKeyContainer(b); ok {
			kc.Keys = keys
			return resp.Proto, nil
		}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return resp.Proto, &badResponse{op: op, why: "malformed JSON: " + err.Error()}
	}
	return resp.Proto, nil
}

// badResponse is a 200 answer that does not hold what ETSI 014 says it must.
type badResponse struct {
	op, why string
}

func (e *badResponse) Error() string { return e.op + ": bad answer: " + e.why }

// errorKind names an error for the report's error counts.
func errorKind(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return fmt.Sprintf("%s HTTP %d", ae.op, ae.code)
	}
	var br *badResponse
	if errors.As(err, &br) {
		return br.op + " bad answer"
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return "timeout"
	}
	return "transport"
}
