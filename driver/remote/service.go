// Package remote carries the driver contract over gRPC, so that a QKD driver
// can run in its own process, next to its device, and still feed the KMM of
// its node.
//
// In the agent, a Service serves qkd.v1.DriverService and hands out, per link,
// a driver.Driver (Service.Link) whose Run receives the keys that a driver
// process pushes for that link. In the driver process, Push runs any
// driver.Driver and forwards its keys, batch by batch.
//
// The agent acknowledges a batch only after its sink (the KMM) stored it, and
// Push lets the driver's sink return only on that acknowledgement, so a key
// counts as accepted by the driver exactly when the KMM holds it: the
// ordering and durability the KMM relies on hold across the process boundary.
//
// One gap remains: when the stream breaks after the KMM stored a batch but
// before the acknowledgement reached the driver process, the driver hands
// that batch again. The link remembers (in memory) the key_IDs of the last
// batch its sink stored and skips them when they come again, so the KMM sees
// every key once while the agent runs; after an agent restart the KMM may be
// handed that one batch again, and skips key_IDs it already holds.
//
// A link takes keys from one stream at a time. A new stream for the same link
// replaces the old one, which ends with codes.Aborted: a driver process that
// restarted must not wait for its old, half-open stream to time out. Only a
// trusted node may push: a verified client certificate with a node identity,
// or, in tests without TLS, anyone if the Service was built with
// AllowInsecurePeer.
package remote

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/driver"
	"github.com/qkdnet/qkdnet/driver/internal/lifecycle"
	"github.com/qkdnet/qkdnet/driver/internal/peerauth"
	"github.com/qkdnet/qkdnet/driver/internal/wire"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// acceptedHeader is the response header the agent sends once it accepted a
// stream for a link, so that Push learns of a refusal before running its
// driver.
const acceptedHeader = "qkd-driver-link"

// Option tunes a Service.
type Option func(*options)

type options struct {
	allowInsecure bool
	node          string
}

// AllowInsecurePeer lets the Service accept pushes over connections without a
// verified client certificate. It is for tests over bufconn or plain TCP; an
// agent serves over mutual TLS and never sets it.
func AllowInsecurePeer() Option { return func(o *options) { o.allowInsecure = true } }

// WithNode makes the Service accept pushes only from a connection whose
// certificate says qkd://node/<node>: a driver process runs on its trusted
// node with that node's certificate, and no other node may feed its pools.
func WithNode(node string) Option { return func(o *options) { o.node = node } }

// Service is the agent's side of DriverService.
type Service struct {
	logger *slog.Logger
	opts   options

	mu    sync.Mutex
	links map[string]*link // by link ID
}

// NewService returns a Service with no links.
func NewService(logger *slog.Logger, opts ...Option) *Service {
	s := &Service{logger: orDiscard(logger), links: map[string]*link{}}
	for _, o := range opts {
		o(&s.opts)
	}
	return s
}

// Register puts qkd.v1.DriverService on r, normally the agent's mutual-TLS
// gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	qkdv1.RegisterDriverServiceServer(r, &pushService{s: s})
}

// Link returns the driver of link linkID: its Run gets the keys a driver
// process pushes for that link. Calling Link again returns the same driver
// until it is closed; after Close, Link returns a new one. A driver process
// pushing for a link nobody asked for gets NotFound.
func (s *Service) Link(linkID string) driver.Driver {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.links[linkID]; ok {
		return l
	}
	l := &link{
		svc:      s,
		id:       linkID,
		logger:   s.logger.With("link", linkID),
		closedCh: make(chan struct{}),
		offers:   make(chan *offer),
	}
	s.links[linkID] = l
	return l
}

func (s *Service) lookup(linkID string) *link {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.links[linkID]
}

func (s *Service) remove(l *link) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.links[l.id] == l {
		delete(s.links, l.id)
	}
}

// pushService keeps the gRPC handler off Service's API.
type pushService struct {
	qkdv1.UnimplementedDriverServiceServer
	s *Service
}

// PushKeys checks the caller and the link, then feeds the stream's batches to
// the link's Run.
func (x *pushService) PushKeys(stream grpc.BidiStreamingServer[qkdv1.PushKeysRequest, qkdv1.PushKeysResponse]) error {
	ctx := stream.Context()
	id, err := peerauth.Authorize(ctx, x.s.opts.allowInsecure, x.s.opts.node)
	if err != nil {
		x.s.logger.Warn("refused a driver process", "peer", peerauth.Name(ctx, id), "err", err)
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.GetLinkId() == "" {
		wire.ZeroProto(first.GetKeys())
		return status.Error(codes.InvalidArgument, "the first message must carry link_id")
	}
	l := x.s.lookup(first.GetLinkId())
	if l == nil {
		wire.ZeroProto(first.GetKeys())
		return status.Errorf(codes.NotFound, "this node has no remote driver link %q", first.GetLinkId())
	}
	return l.serve(stream, first, peerauth.Name(ctx, id))
}

// link is the agent's end of one link fed by a driver process.
type link struct {
	svc    *Service
	id     string
	logger *slog.Logger

	delivered atomic.Uint64
	// offers carries batches from the stream handler to Run, one at a time.
	offers chan *offer

	mu       sync.Mutex
	pusher   *pusher // the attached stream, nil if none
	closed   bool
	closedCh chan struct{}
	running  bool // a Run is in progress and owns retry
	// retry is a batch a previous Run took but its sink did not accept; the
	// next Run starts with it. Run alone touches it while running is true.
	retry *offer

	// lastIDs are the key_IDs of the last batch the sink stored. Run only.
	lastIDs map[string]struct{}
}

// offer is one batch on its way from a stream to the sink.
type offer struct {
	p      *pusher
	batch  uint64
	keys   []driver.Key  // owned by Run once taken; zeroed after the sink accepted a copy
	stored chan struct{} // closed when the sink accepted the batch
}

// pusher is one PushKeys stream.
type pusher struct {
	peer string
	*lifecycle.Ending
}

// serve runs one PushKeys stream whose first message was first.
func (l *link) serve(stream grpc.BidiStreamingServer[qkdv1.PushKeysRequest, qkdv1.PushKeysResponse], first *qkdv1.PushKeysRequest, peer string) error {
	ctx := stream.Context()
	p := &pusher{peer: peer, Ending: lifecycle.NewEnding()}
	if err := l.attach(p); err != nil {
		wire.ZeroProto(first.GetKeys())
		return err
	}
	defer l.detach(p)
	if err := stream.SendHeader(metadata.Pairs(acceptedHeader, l.id)); err != nil {
		wire.ZeroProto(first.GetKeys())
		p.Finish(err)
		return p.Status("link closed")
	}
	// The receiver lets the handler end (on replacement or Close) while the
	// driver process sends nothing; it returns once gRPC ends the stream.
	reqs := make(chan *qkdv1.PushKeysRequest)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				p.Finish(fmt.Errorf("receive: %w", err))
				return
			}
			select {
			case reqs <- req:
			case <-p.Done():
				wire.ZeroProto(req.GetKeys())
				return
			}
		}
	}()
	next := uint64(1)
	// The first message may carry the first batch as well as the link ID.
	if first.GetBatch() != 0 || len(first.GetKeys()) > 0 {
		if err := l.handle(stream, p, first, &next); err != nil {
			p.Finish(err)
		}
	}
	for {
		select {
		case req := <-reqs:
			if err := l.handle(stream, p, req, &next); err != nil {
				p.Finish(err)
			}
		case <-p.Done():
			return p.Status("link closed")
		case <-ctx.Done():
			p.Finish(ctx.Err())
		}
	}
}

// handle offers one batch to Run and acknowledges it once stored.
func (l *link) handle(stream grpc.BidiStreamingServer[qkdv1.PushKeysRequest, qkdv1.PushKeysResponse], p *pusher, req *qkdv1.PushKeysRequest, next *uint64) error {
	ctx := stream.Context()
	if id := req.GetLinkId(); id != "" && id != l.id {
		wire.ZeroProto(req.GetKeys())
		return status.Errorf(codes.InvalidArgument, "link_id %q on a stream for link %q", id, l.id)
	}
	if req.GetBatch() != *next {
		wire.ZeroProto(req.GetKeys())
		return status.Errorf(codes.InvalidArgument, "batch %d, want %d", req.GetBatch(), *next)
	}
	keys, err := wire.FromProto(req.GetKeys())
	if err != nil {
		wire.ZeroProto(req.GetKeys())
		return status.Errorf(codes.InvalidArgument, "batch %d: %v", req.GetBatch(), err)
	}
	if len(keys) > 0 {
		o := &offer{p: p, batch: req.GetBatch(), keys: keys, stored: make(chan struct{})}
		select {
		case l.offers <- o:
		case <-p.Done():
			driver.ZeroKeys(keys)
			return p.Err()
		case <-ctx.Done():
			driver.ZeroKeys(keys)
			return ctx.Err()
		}
		select {
		case <-o.stored:
		case <-p.Done():
			return p.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := stream.Send(&qkdv1.PushKeysResponse{Batch: req.GetBatch()}); err != nil {
		return err
	}
	*next++
	return nil
}

// Run hands sink the batches the driver process pushes, in order, and lets the
// stream acknowledge each once sink accepted it. It waits while no driver
// process is connected. See driver.Driver for how it ends.
func (l *link) Run(ctx context.Context, sink driver.Sink) error {
	if err := l.begin(); err != nil {
		return err
	}
	defer l.end()
	rctx, cancel := withCancelOn(ctx, l.closedCh)
	defer cancel()
	err := l.run(rctx, sink)
	if l.isClosed() {
		return driver.ErrClosed
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (l *link) run(ctx context.Context, sink driver.Sink) error {
	for {
		o := l.retry
		l.retry = nil
		if o == nil {
			select {
			case o = <-l.offers:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if o.p.IsDone() {
			// Its stream is gone unacknowledged, so the driver process
			// sends the batch again on its next stream.
			driver.ZeroKeys(o.keys)
			continue
		}
		fresh := l.skipStored(o.keys)
		if len(fresh) > 0 {
			// A copy, because the sink owns what it gets even when it
			// fails, and then the batch is handed again.
			if err := sink(ctx, wire.Clone(fresh)); err != nil {
				l.retry = o
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("remote: link %s: sink: %w", l.id, err)
			}
			l.lastIDs = make(map[string]struct{}, len(fresh))
			for _, k := range fresh {
				l.lastIDs[k.ID] = struct{}{}
			}
			l.delivered.Add(uint64(len(fresh)))
			l.logger.Debug("batch stored", "batch", o.batch, "keys", len(fresh))
		}
		driver.ZeroKeys(o.keys)
		close(o.stored)
	}
}

// skipStored returns keys without its leading keys that the sink stored last
// time: the driver process hands a batch again when the acknowledgement of
// the stored batch was lost, and in order, so repeats can only lead.
func (l *link) skipStored(keys []driver.Key) []driver.Key {
	i := 0
	for i < len(keys) {
		if _, ok := l.lastIDs[keys[i].ID]; !ok {
			break
		}
		i++
	}
	if i > 0 {
		l.logger.Info("skipped keys the driver process handed again", "keys", i)
	}
	return keys[i:]
}

// Status reports whether a driver process is connected and how many keys the
// sink accepted.
func (l *link) Status() driver.Status {
	l.mu.Lock()
	connected := l.pusher != nil
	l.mu.Unlock()
	return driver.Status{LinkID: l.id, Connected: connected, KeysDelivered: l.delivered.Load()}
}

// Close stops Run with driver.ErrClosed, ends the driver process's stream and
// forgets the link: Service.Link then makes a new one.
func (l *link) Close() error {
	l.svc.remove(l)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.closedCh)
	p := l.pusher
	l.pusher = nil
	if !l.running {
		l.dropRetryLocked()
	}
	l.mu.Unlock()
	if p != nil {
		p.Finish(driver.ErrClosed)
	}
	return nil
}

func (l *link) attach(p *pusher) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return status.Error(codes.Unavailable, "link closed")
	}
	old := l.pusher
	l.pusher = p
	l.mu.Unlock()
	if old != nil {
		l.logger.Warn("a new stream for the link replaces the previous one", "peer", p.peer, "previous_peer", old.peer)
		old.Finish(lifecycle.ErrReplaced)
	}
	l.logger.Info("driver process connected", "peer", p.peer)
	return nil
}

func (l *link) detach(p *pusher) {
	l.mu.Lock()
	if l.pusher == p {
		l.pusher = nil
	}
	l.mu.Unlock()
	l.logger.Info("driver process disconnected", "peer", p.peer, "reason", p.Err())
}

func (l *link) begin() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return driver.ErrClosed
	case l.running:
		return errors.New("remote: Run called while Run is in progress")
	}
	l.running = true
	return nil
}

func (l *link) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running = false
	if l.closed {
		l.dropRetryLocked()
	}
}

func (l *link) dropRetryLocked() {
	if l.retry != nil {
		driver.ZeroKeys(l.retry.keys)
		l.retry = nil
	}
}

func (l *link) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

var (
	orDiscard    = lifecycle.OrDiscard
	withCancelOn = lifecycle.WithCancelOn
)
