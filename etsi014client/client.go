// Package etsi014client is an SAE's client of the ETSI GS QKD 014 REST key
// delivery API (Status, enc_keys, dec_keys) over mutual TLS.
//
// A Client is safe for concurrent use and meant to be shared: it keeps one
// http.Client whose connection pool is sized for many concurrent requests to
// one KME, so a load generator can drive it from many goroutines.
//
// Key material: Key.Bytes is the only copy the client keeps. The response
// buffer that held the base64 keys is zeroed after decoding; callers should
// zero the keys when done (KeyContainer.Zero).
package etsi014client

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
	"time"

	"github.com/qkdnet/qkdnet/pki"
)

// Status is ETSI 014 "Status" (clause 6.1).
type Status struct {
	SourceKMEID      string         `json:"source_KME_ID"`
	TargetKMEID      string         `json:"target_KME_ID"`
	MasterSAEID      string         `json:"master_SAE_ID"`
	SlaveSAEID       string         `json:"slave_SAE_ID"`
	KeySize          int            `json:"key_size"`
	StoredKeyCount   int            `json:"stored_key_count"`
	MaxKeyCount      int            `json:"max_key_count"`
	MaxKeyPerRequest int            `json:"max_key_per_request"`
	MaxKeySize       int            `json:"max_key_size"`
	MinKeySize       int            `json:"min_key_size"`
	MaxSAEIDCount    int            `json:"max_SAE_ID_count"`
	StatusExtension  map[string]any `json:"status_extension,omitempty"`
}

// KeyRequest is ETSI 014 "Key request" (clause 6.2). Zero fields are left out,
// so the KME applies its defaults (one key of key_size bits).
type KeyRequest struct {
	Number                int              `json:"number,omitempty"`
	Size                  int              `json:"size,omitempty"`
	AdditionalSlaveSAEIDs []string         `json:"additional_slave_SAE_IDs,omitempty"`
	ExtensionMandatory    []map[string]any `json:"extension_mandatory,omitempty"`
	ExtensionOptional     []map[string]any `json:"extension_optional,omitempty"`
}

// Key is one key of a key container. Bytes is decoded from base64.
type Key struct {
	KeyID          string         `json:"key_ID"`
	KeyIDExtension map[string]any `json:"key_ID_extension,omitempty"`
	Bytes          []byte         `json:"key"`
	KeyExtension   map[string]any `json:"key_extension,omitempty"`
}

// KeyContainer is ETSI 014 "Key container" (clause 6.3).
type KeyContainer struct {
	Keys                  []Key          `json:"keys"`
	KeyContainerExtension map[string]any `json:"key_container_extension,omitempty"`
}

// Zero overwrites every key's bytes; call it once the keys are used.
func (kc *KeyContainer) Zero() {
	if kc == nil {
		return
	}
	for i := range kc.Keys {
		clear(kc.Keys[i].Bytes)
	}
}

type keyIDs struct {
	KeyIDs []keyID `json:"key_IDs"`
}

type keyID struct {
	KeyID string `json:"key_ID"`
}

// Error is a non-200 answer of the KME: the HTTP status and the ETSI 014
// "Error" body (clause 6.5). Use errors.As to get it.
type Error struct {
	// StatusCode is the HTTP status: 400 bad request, 401 unauthorized, 503
	// server-side error or not enough key material right now.
	StatusCode int
	// Message is the body's "message", or the start of the body when it is not
	// an ETSI error.
	Message string
	// Details is the body's "details", if any.
	Details []map[string]any
	// Op and URL say which request failed.
	Op  string
	URL string
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Op, e.URL, e.StatusCode, msg)
}

// Temporary reports whether retrying the same request later may succeed: a
// 503 (peer KME unreachable, store busy, not enough key yet).
func (e *Error) Temporary() bool { return e.StatusCode == http.StatusServiceUnavailable }

// StatusCode returns the HTTP status of an *Error in err's chain, or 0.
func StatusCode(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.StatusCode
	}
	return 0
}

// Options tune a Client. The zero value is fine.
type Options struct {
	// MaxConns bounds the connections to the KME, and is also how many idle
	// connections are kept for reuse. Default 64.
	MaxConns int
	// Timeout bounds one request, including reading the body, unless the
	// request's context ends first. Default 30 s.
	Timeout time.Duration
}

// maxBody bounds how much of a response is read. A KME answering with a
// larger body is broken; the default max_key_per_request (1024) of 1 KiB keys
// is well below this.
const maxBody = 32 << 20

// Client talks to one KME on behalf of one SAE (the one in the TLS client
// certificate).
type Client struct {
	base *url.URL
	hc   *http.Client
}

// New returns a client of the KME at baseURL (e.g. "https://127.0.0.1:8443";
// the /api/v1/keys path is added) that authenticates with tlsConf (see
// pki.ClientTLS).
func New(baseURL string, tlsConf *tls.Config, opts Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("etsi014client: KME URL %q: %w", baseURL, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("etsi014client: KME URL %q must be https://host:port", baseURL)
	}
	if tlsConf == nil {
		return nil, errors.New("etsi014client: a TLS configuration with the SAE's client certificate is required")
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 64
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	tr := &http.Transport{
		TLSClientConfig:     tlsConf.Clone(),
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		// HTTP/2 multiplexes concurrent requests on one connection when the
		// KME offers it; HTTP/1.1 keep-alive with a sized pool otherwise.
		ForceAttemptHTTP2:   true,
		MaxConnsPerHost:     opts.MaxConns,
		MaxIdleConns:        opts.MaxConns,
		MaxIdleConnsPerHost: opts.MaxConns,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{base: u, hc: &http.Client{Transport: tr, Timeout: opts.Timeout}}, nil
}

// NewFromFiles is New with a TLS configuration read from PEM files: the CA
// that signed the KME's certificate, and the SAE's certificate and key.
func NewFromFiles(baseURL, caFile, certFile, keyFile string, opts Options) (*Client, error) {
	cfg, err := pki.ClientTLS(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return New(baseURL, cfg, opts)
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Status asks for the status of the key supply to slaveSAEID (GET
// /api/v1/keys/{slave}/status).
func (c *Client) Status(ctx context.Context, slaveSAEID string) (*Status, error) {
	var st Status
	if err := c.do(ctx, "status", http.MethodGet, slaveSAEID, "status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// EncKeys gets keys to share with slaveSAEID (POST
// /api/v1/keys/{slave}/enc_keys). The caller is the master SAE.
func (c *Client) EncKeys(ctx context.Context, slaveSAEID string, req KeyRequest) (*KeyContainer, error) {
	var kc KeyContainer
	if err := c.do(ctx, "enc_keys", http.MethodPost, slaveSAEID, "enc_keys", req, &kc); err != nil {
		return nil, err
	}
	return &kc, nil
}

// DecKeys gets the keys with the given key_IDs, which masterSAEID got with
// enc_keys (POST /api/v1/keys/{master}/dec_keys). The caller is the slave SAE.
func (c *Client) DecKeys(ctx context.Context, masterSAEID string, ids ...string) (*KeyContainer, error) {
	if len(ids) == 0 {
		return nil, errors.New("etsi014client: dec_keys needs at least one key_ID")
	}
	body := keyIDs{KeyIDs: make([]keyID, len(ids))}
	for i, id := range ids {
		body.KeyIDs[i] = keyID{KeyID: id}
	}
	var kc KeyContainer
	if err := c.do(ctx, "dec_keys", http.MethodPost, masterSAEID, "dec_keys", body, &kc); err != nil {
		return nil, err
	}
	return &kc, nil
}

// bufPool recycles response buffers; they are zeroed before going back,
// since they held base64 key material.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (c *Client) do(ctx context.Context, op, method, saeID, verb string, in, out any) error {
	if saeID == "" {
		return fmt.Errorf("etsi014client: %s: SAE_ID is empty", op)
	}
	u := *c.base
	u.Path = c.base.Path + "/api/v1/keys/" + url.PathEscape(saeID) + "/" + verb
	u.RawPath = ""
	endpoint := u.String()

	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("etsi014client: %s: %w", op, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, endpoint, body)
	if err != nil {
		return fmt.Errorf("etsi014client: %s: %w", op, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("etsi014client: %s: %w", op, err)
	}
	defer resp.Body.Close()

	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		b := buf.Bytes()
		clear(b[:cap(b)])
		buf.Reset()
		bufPool.Put(buf)
	}()
	buf.Reset()
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, maxBody+1)); err != nil {
		return fmt.Errorf("etsi014client: %s %s: reading answer: %w", op, endpoint, err)
	}
	if buf.Len() > maxBody {
		return fmt.Errorf("etsi014client: %s %s: answer larger than %d bytes", op, endpoint, maxBody)
	}
	if resp.StatusCode != http.StatusOK {
		return decodeError(op, endpoint, resp.StatusCode, buf.Bytes())
	}
	if err := json.Unmarshal(buf.Bytes(), out); err != nil {
		if kc, ok := out.(*KeyContainer); ok {
			kc.Zero()
		}
		return fmt.Errorf("etsi014client: %s %s: malformed answer: %w", op, endpoint, err)
	}
	return nil
}

func decodeError(op, endpoint string, code int, body []byte) error {
	e := &Error{StatusCode: code, Op: op, URL: endpoint}
	var eb struct {
		Message string           `json:"message"`
		Details []map[string]any `json:"details"`
	}
	if json.Unmarshal(body, &eb) == nil && eb.Message != "" {
		e.Message, e.Details = eb.Message, eb.Details
		return e
	}
	// Not an ETSI error body (a proxy, a plain-text 404): keep its start,
	// on one line, so the error stays readable.
	s := strings.Join(strings.Fields(string(body)), " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	e.Message = s
	return e
}
