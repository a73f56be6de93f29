package keysync

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// RelayHandler is what a KMM that relays keys answers (kmm.KMM does): the
// previous node of a multi-hop stream's path sends keys padded with the
// keys of the hop between them. It returns the sequence numbers it holds.
type RelayHandler interface {
	Relay(ctx context.Context, peer string, req *qkdv1.RelayRequest) ([]uint64, error)
}

// Relay implements KeySyncService. The caller must be a node; the handler
// checks it is the stream's previous hop.
func (s *Service) Relay(ctx context.Context, req *qkdv1.RelayRequest) (*qkdv1.RelayResponse, error) {
	rh, ok := s.h.(RelayHandler)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "this KMM does not relay keys")
	}
	id, err := pki.Caller(ctx)
	if err != nil || id.Kind != pki.KindNode {
		return nil, status.Error(codes.Unauthenticated, "key relay needs a node certificate")
	}
	if req.GetStreamId() == "" || req.GetHopStreamId() == "" {
		return nil, status.Error(codes.InvalidArgument, "stream_id and hop_stream_id are required")
	}
	for _, k := range req.GetKeys() {
		if len(k.GetZ()) == 0 || k.GetKeyId() == "" || len(k.GetCheck()) == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "relayed key %d lacks z, key_id or check", k.GetSeq())
		}
	}
	held, err := rh.Relay(ctx, id.ID, req)
	if err != nil {
		var nr interface{ NotRelayHop() bool }
		if errors.As(err, &nr) {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		return nil, toStatus(err)
	}
	return &qkdv1.RelayResponse{Held: held}, nil
}
