// Package peerauth decides whether the caller of a driver-facing gRPC service
// may use it: a trusted node, proven by a verified client certificate.
package peerauth

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/pki"
)

// Authorize returns nil when the caller in ctx may act as a node on a
// driver-facing service, or else a gRPC status error:
//
//   - a verified client certificate must carry a node identity (PermissionDenied
//     for an SAE or a malformed identity), and, when node is not empty, that
//     node's (PermissionDenied for any other node);
//   - a connection without a verified certificate (plain TCP or bufconn, as in
//     tests) is refused with Unauthenticated unless allowInsecure is set.
//
// It returns the caller's identity for logs; it is the zero Identity for an
// allowed insecure caller.
func Authorize(ctx context.Context, allowInsecure bool, node string) (pki.Identity, error) {
	id, err := pki.Caller(ctx)
	switch {
	case errors.Is(err, pki.ErrNoClientCert):
		if allowInsecure {
			return pki.Identity{}, nil
		}
		return pki.Identity{}, status.Error(codes.Unauthenticated, "a verified node certificate is required")
	case err != nil:
		return pki.Identity{}, status.Errorf(codes.PermissionDenied, "client certificate: %v", err)
	case id.Kind != pki.KindNode:
		return id, status.Errorf(codes.PermissionDenied, "%s is not a node identity", id)
	case node != "" && id.ID != node:
		return id, status.Errorf(codes.PermissionDenied, "%s is not the peer node of this link", id)
	}
	return id, nil
}

// Name names the caller for logs: its identity, or its address when it has
// none (tests without TLS).
func Name(ctx context.Context, id pki.Identity) string {
	if id.ID != "" {
		return id.String()
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "unknown"
}
