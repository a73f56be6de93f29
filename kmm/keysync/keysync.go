// Package keysync is the KMM's Synchronizer: the gRPC KeySyncService between
// the two KMMs of a QKD link (server side), and the client the Key Allocation
// Element uses to tell the Slave KMM what it allocated.
package keysync

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/pki"
)

// Handler is what the service needs of the KMM. peer is the node ID of the
// calling KMM, already authenticated by its certificate.
type Handler interface {
	// PeerOfLink reports which node is at the other end of link, if the link
	// ends here.
	PeerOfLink(link string) (peer string, ok bool)
	OpenStream(ctx context.Context, peer string, st keystore.Stream) (keystore.Stream, error)
	Apply(ctx context.Context, peer, batchID string, st keystore.Stream, firstSeq uint64, keyIDs []string) (unknown []string, err error)
	RequestAllocation(ctx context.Context, peer string, st keystore.Stream, want int) (int, error)
}

// Service serves KeySyncService.
type Service struct {
	qkdv1.UnimplementedKeySyncServiceServer
	h Handler
}

// Register registers the service on s.
func Register(s grpc.ServiceRegistrar, h Handler) {
	qkdv1.RegisterKeySyncServiceServer(s, &Service{h: h})
}

// authorize checks that the caller is the node at the other end of the
// stream's link: only that KMM may change what this KMM serves on it.
func (s *Service) authorize(ctx context.Context, st *qkdv1.Stream) (string, keystore.Stream, error) {
	if st == nil || st.GetStreamId() == "" || st.GetLinkId() == "" || st.GetMasterSaeId() == "" || st.GetSlaveSaeId() == "" {
		return "", keystore.Stream{}, status.Error(codes.InvalidArgument, "stream with stream_id, link_id, master_sae_id and slave_sae_id is required")
	}
	id, err := pki.Caller(ctx)
	if err != nil || id.Kind != pki.KindNode {
		return "", keystore.Stream{}, status.Error(codes.Unauthenticated, "key synchronisation needs a node certificate")
	}
	peer, ok := s.h.PeerOfLink(st.GetLinkId())
	if !ok {
		return "", keystore.Stream{}, status.Errorf(codes.NotFound, "link %q does not end at this node", st.GetLinkId())
	}
	if peer != id.ID {
		return "", keystore.Stream{}, status.Errorf(codes.PermissionDenied, "node %q is not the other end of link %q", id.ID, st.GetLinkId())
	}
	return peer, FromProto(st), nil
}

// OpenStream implements KeySyncService.
func (s *Service) OpenStream(ctx context.Context, req *qkdv1.OpenStreamRequest) (*qkdv1.OpenStreamResponse, error) {
	peer, st, err := s.authorize(ctx, req.GetStream())
	if err != nil {
		return nil, err
	}
	out, err := s.h.OpenStream(ctx, peer, st)
	if err != nil {
		return nil, toStatus(err)
	}
	return &qkdv1.OpenStreamResponse{Stream: ToProto(out)}, nil
}

// Allocate implements KeySyncService.
func (s *Service) Allocate(ctx context.Context, req *qkdv1.AllocateRequest) (*qkdv1.AllocateResponse, error) {
	peer, st, err := s.authorize(ctx, req.GetStream())
	if err != nil {
		return nil, err
	}
	if req.GetBatchId() == "" || len(req.GetKeyIds()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "batch_id and key_ids are required")
	}
	unknown, err := s.h.Apply(ctx, peer, req.GetBatchId(), st, req.GetFirstSeq(), req.GetKeyIds())
	if err != nil {
		return nil, toStatus(err)
	}
	return &qkdv1.AllocateResponse{UnknownKeyIds: unknown}, nil
}

// RequestAllocation implements KeySyncService.
func (s *Service) RequestAllocation(ctx context.Context, req *qkdv1.RequestAllocationRequest) (*qkdv1.RequestAllocationResponse, error) {
	peer, st, err := s.authorize(ctx, req.GetStream())
	if err != nil {
		return nil, err
	}
	n, err := s.h.RequestAllocation(ctx, peer, st, int(req.GetWant()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &qkdv1.RequestAllocationResponse{Allocated: uint32(n)}, nil
}

// ErrNotMaster is returned when a KMM is asked to allocate on a link where it
// is Slave.
var ErrNotMaster = errors.New("this KMM is not the master of the link")

func toStatus(err error) error {
	switch {
	case errors.Is(err, ErrNotMaster):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, keystore.ErrUnknownStream):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, keystore.ErrInvalid):
		// The peer's message cannot be right: tell it so, rather than
		// "unavailable", which would have it retry the same message.
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		return status.Error(codes.Unavailable, err.Error())
	}
}

// FromProto converts a wire stream.
func FromProto(st *qkdv1.Stream) keystore.Stream {
	return keystore.Stream{
		ID: st.GetStreamId(), MasterSAE: st.GetMasterSaeId(), SlaveSAE: st.GetSlaveSaeId(), Link: st.GetLinkId(),
		QoS: keystore.QoS{KeyRate: st.GetQos().GetKeyRate(), MaxBuffer: st.GetQos().GetMaxBuffer(), Priority: st.GetQos().GetPriority(), TTL: st.GetQos().GetTtl()},
	}
}

// ToProto converts a stream for the wire.
func ToProto(st keystore.Stream) *qkdv1.Stream {
	return &qkdv1.Stream{
		StreamId: st.ID, MasterSaeId: st.MasterSAE, SlaveSaeId: st.SlaveSAE, LinkId: st.Link,
		Qos: &qkdv1.QoS{KeyRate: st.QoS.KeyRate, MaxBuffer: st.QoS.MaxBuffer, Priority: st.QoS.Priority, Ttl: st.QoS.TTL},
	}
}

// Client is the Master KMM's side: it implements allocator.Syncer over gRPC.
type Client struct {
	conn func(link string) (qkdv1.KeySyncServiceClient, error)
}

// NewClient returns a client that reaches the peer KMM of a link through conn.
func NewClient(conn func(link string) (qkdv1.KeySyncServiceClient, error)) *Client {
	return &Client{conn: conn}
}

// Allocate sends a reserved batch to the Slave KMM.
func (c *Client) Allocate(ctx context.Context, p keystore.Pending) ([]string, error) {
	cl, err := c.conn(p.Link)
	if err != nil {
		return nil, err
	}
	resp, err := cl.Allocate(ctx, &qkdv1.AllocateRequest{
		BatchId: p.BatchID, Stream: ToProto(p.Stream), FirstSeq: p.FirstSeq, KeyIds: p.KeyIDs,
	})
	if err != nil {
		return nil, fmt.Errorf("peer KMM: %w", err)
	}
	return resp.GetUnknownKeyIds(), nil
}
