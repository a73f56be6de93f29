package pki

import (
	"context"
	"errors"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

type callerKey struct{}

// WithCaller returns ctx carrying the caller's identity; the HTTPS gateway sets
// it from the request's verified client certificate.
func WithCaller(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, callerKey{}, id)
}

// ErrNoClientCert means the caller presented no verified client certificate.
var ErrNoClientCert = errors.New("no verified client certificate")

// Caller returns the identity of whoever made the call in ctx: the one the
// gateway stored with WithCaller, or else the one in the verified client
// certificate of the gRPC connection.
func Caller(ctx context.Context) (Identity, error) {
	if id, ok := ctx.Value(callerKey{}).(Identity); ok {
		return id, nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, ErrNoClientCert
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoClientCert
	}
	return Identify(ti.State.VerifiedChains[0][0])
}
