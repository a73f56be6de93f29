package keysync

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// RevokeHandler is what a KMM that takes part in key replacement answers
// (kmm.KMM does): the node before it on a stream's path asks it to revoke
// served keys of the stream here and on the rest of the path.
type RevokeHandler interface {
	Revoke(ctx context.Context, peer string, req *qkdv1.RevokeRequest) (*qkdv1.RevokeResponse, error)
}

// maxRevokeKeys bounds the keys of one Revoke message; an SAE's request is
// bounded by max_key_per_request, far below it.
const maxRevokeKeys = 1 << 16

// Revoke implements KeySyncService. The caller must be a node; the handler
// checks it is the node before this one on the stream's path.
func (s *Service) Revoke(ctx context.Context, req *qkdv1.RevokeRequest) (*qkdv1.RevokeResponse, error) {
	rh, ok := s.h.(RevokeHandler)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "this KMM does not revoke keys")
	}
	id, err := pki.Caller(ctx)
	if err != nil || id.Kind != pki.KindNode {
		return nil, status.Error(codes.Unauthenticated, "key revocation needs a node certificate")
	}
	if req.GetStreamId() == "" || len(req.GetKeys()) == 0 || len(req.GetKeys()) > maxRevokeKeys {
		return nil, status.Error(codes.InvalidArgument, "stream_id and 1 to 65536 keys are required")
	}
	for _, k := range req.GetKeys() {
		if k.GetKeyId() == "" {
			return nil, status.Error(codes.InvalidArgument, "every revoked key needs a key_id")
		}
	}
	resp, err := rh.Revoke(ctx, id.ID, req)
	if err != nil {
		var nr interface{ NotRelayHop() bool }
		if errors.As(err, &nr) {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		if _, ok := status.FromError(err); ok {
			// The next node's answer, passed back as it came.
			return nil, err
		}
		return nil, toStatus(err)
	}
	return resp, nil
}
