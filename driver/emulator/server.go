package emulator

import (
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/driver/internal/peerauth"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// Server serves the classical channel of every emulated link for which this
// node is Alice, routing each Bob by the link_id of his hello. An agent that
// is Alice on several links registers one Server; Alice.Register is the
// shorthand for one link.
type Server struct {
	logger *slog.Logger

	mu    sync.Mutex
	links map[string]*Alice // by link ID
}

// NewServer returns a Server with no links.
func NewServer(logger *slog.Logger) *Server {
	return &Server{logger: orDiscard(logger), links: map[string]*Alice{}}
}

// Add serves a's link. It fails if another Alice already serves that link ID.
func (s *Server) Add(a *Alice) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.links[a.linkID]; ok && old != a {
		return fmt.Errorf("emulator: link %q is already served", a.linkID)
	}
	s.links[a.linkID] = a
	return nil
}

// Remove stops serving a's link; Bobs connecting afterwards get NotFound. It
// does not close a.
func (s *Server) Remove(a *Alice) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.links[a.linkID] == a {
		delete(s.links, a.linkID)
	}
}

// Register puts qkd.v1.EmulatedLinkService on r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	qkdv1.RegisterEmulatedLinkServiceServer(r, &exchangeService{s: s})
}

func (s *Server) lookup(linkID string) *Alice {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.links[linkID]
}

// exchangeService keeps the gRPC handler off Server's API.
type exchangeService struct {
	qkdv1.UnimplementedEmulatedLinkServiceServer
	s *Server
}

// Exchange checks who calls and for which link, then hands the stream to
// that link's Alice.
func (x *exchangeService) Exchange(stream grpc.BidiStreamingServer[qkdv1.ExchangeRequest, qkdv1.ExchangeResponse]) error {
	ctx := stream.Context()
	// A certificate that is not a node's is refused before anything is read;
	// whether a connection without one may go on depends on the link's Alice.
	if _, err := peerauth.Authorize(ctx, true, ""); err != nil {
		return err
	}
	hello, err := stream.Recv()
	if err != nil {
		return err
	}
	linkID := hello.GetLinkId()
	if linkID == "" {
		return status.Error(codes.InvalidArgument, "the first message must carry link_id")
	}
	a := x.s.lookup(linkID)
	if a == nil {
		return status.Errorf(codes.NotFound, "this node is not Alice of an emulated link %q", linkID)
	}
	id, err := peerauth.Authorize(ctx, a.opts.allowInsecure, a.opts.peer)
	if err != nil {
		a.logger.Warn("refused a Bob", "peer", peerauth.Name(ctx, id), "err", err)
		return err
	}
	return a.serve(stream, peerauth.Name(ctx, id))
}
