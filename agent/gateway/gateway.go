// Package gateway is the REST front of ETSI GS QKD 014: it serves the
// standard's HTTPS/JSON endpoints (/api/v1/keys/{SAE_ID}/status, enc_keys,
// dec_keys) by running grpc-gateway in-process in front of a
// qkdv1.KeyServiceServer.
//
// The gateway authenticates and translates; it never decides. It turns the
// caller's verified TLS client certificate into a pki.Identity, refuses
// anything that is not an SAE, and hands the identity to the service through
// the request context (pki.WithCaller), so the service authorises exactly as it
// does for callers on its gRPC port. Every non-200 answer carries the ETSI
// Error body {"message": ..., "details": [...]}.
//
// The handler does not listen: the agent serves it with TLS only, configured
// with tls.VerifyClientCertIfGiven, so that a request without a certificate
// reaches the handler and gets a proper 401 body instead of a failed
// handshake.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/qkdnet/qkdnet/agent/ratelimit"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// MaxBodyBytes bounds a POST body. The largest legitimate body is a dec_keys
// request listing max_key_per_request key_IDs at ~50 bytes each (about 53 KiB
// compact at the default limit of 1024, ~70 KiB pretty-printed); 128 KiB
// leaves room for that and small extensions while keeping what one request
// can make the KMM buffer and parse small. Larger bodies get 413 (or 400
// when a chunked body runs over), with the ETSI error object.
const MaxBodyBytes = 128 << 10

// Option configures the gateway.
type Option func(*gateway)

// WithLimiter limits each SAE's requests (nil: no limit).
func WithLimiter(l *ratelimit.Limiter) Option { return func(g *gateway) { g.limit = l } }

// New returns the HTTP handler of ETSI GS QKD 014 for srv. It calls srv
// in-process (no loopback gRPC hop) with the caller's identity in the context.
// A nil logger discards logs.
func New(srv qkdv1.KeyServiceServer, logger *slog.Logger, opts ...Option) (http.Handler, error) {
	if srv == nil {
		return nil, errors.New("gateway: nil KeyServiceServer")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	g := &gateway{logger: logger}
	for _, o := range opts {
		o(g)
	}
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, newMarshaler()),
		runtime.WithErrorHandler(g.handleError),
		runtime.WithRoutingErrorHandler(g.handleRoutingError),
		// Runs after routing, so a wrong method or path is answered 405/404
		// before the body's content type is looked at.
		runtime.WithMiddlewares(checkBody),
		// ETSI 014 has exactly one way to make each call. These two features
		// let a form-encoded POST stand in for a GET, which would route around
		// the Content-Type policy.
		runtime.WithDisablePathLengthFallback(),
		runtime.WithDisableHTTPMethodOverride(),
	)
	if err := qkdv1.RegisterKeyServiceHandlerServer(context.Background(), mux, srv); err != nil {
		return nil, fmt.Errorf("gateway: register KeyService: %w", err)
	}
	// ETSI GS QKD 004 over REST, where the server also speaks it.
	if ks, ok := srv.(qkdv1.KeyStreamServiceServer); ok {
		if err := qkdv1.RegisterKeyStreamServiceHandlerServer(context.Background(), mux, ks); err != nil {
			return nil, fmt.Errorf("gateway: register KeyStreamService: %w", err)
		}
	}
	return g.logRequests(requireSAE(g.limitSAE(mux))), nil
}

type gateway struct {
	logger *slog.Logger
	limit  *ratelimit.Limiter
}

// newMarshaler is the JSON codec of the ETSI bodies.
//
//   - EmitDefaultValues: ETSI requires every Status field, so a zero
//     stored_key_count must be written as 0, not left out; unlike
//     EmitUnpopulated it still leaves unset objects (the *_extension fields)
//     out instead of writing null.
//   - UseProtoNames false: the protos carry the standard's spelling in
//     json_name (key_ID, master_SAE_ID, ...), which lower_snake proto names
//     cannot express.
//   - DiscardUnknown false: a misspelt field ("numbr") must be a 400, not a
//     silently ignored default.
//
// Bytes fields are standard base64 with padding (RFC 4648 section 4), as ETSI
// asks, and int32 fields are JSON numbers.
func newMarshaler() runtime.Marshaler {
	return &strictJSON{JSONPb: &runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{EmitDefaultValues: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}
}
