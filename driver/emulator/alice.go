package emulator

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
	"github.com/qkdnet/qkdnet/driver/internal/wire"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// acceptedHeader is the response header Alice sends once she accepted Bob's
// hello, so that Bob knows the link is up before the first batch.
const acceptedHeader = "qkd-emulated-link"

var errConnDone = errors.New("connection to Bob ended")

// Alice is the generating end of an emulated link. She implements
// driver.Driver; Register puts her classical channel on a gRPC server.
type Alice struct {
	linkID string
	cfg    Config
	opts   options
	logger *slog.Logger

	delivered atomic.Uint64

	mu       sync.Mutex
	conn     *bobConn      // the connected Bob, nil if none
	connCh   chan struct{} // closed, and replaced, whenever conn changes
	closed   bool
	closedCh chan struct{} // closed by Close
	running  bool          // a Run is in progress and owns pending
	// pending is the batch generated but not yet accepted by Alice's sink. Run
	// alone touches it while running is true; Close zeroes it otherwise.
	pending *batch

	lastBatch uint64 // number of the last batch generated; Run only
}

// batch is a numbered batch of keys on its way to both sinks.
type batch struct {
	num    uint64
	keys   []driver.Key // Alice's copy, zeroed once her sink accepted the batch
	sentOn *bobConn     // the connection it was last sent on
	acked  bool         // Bob's sink stored it
}

// NewAlice returns the generating end of link linkID. Nothing happens until
// Register puts her on a gRPC server and a Bob connects.
func NewAlice(linkID string, cfg Config, logger *slog.Logger, opts ...Option) *Alice {
	cfg = cfg.withDefaults()
	return &Alice{
		linkID:   linkID,
		cfg:      cfg,
		opts:     buildOptions(opts),
		logger:   orDiscard(logger).With("link", linkID, "end", "alice"),
		connCh:   make(chan struct{}),
		closedCh: make(chan struct{}),
	}
}

// Register serves Alice's classical channel (qkd.v1.EmulatedLinkService) on s,
// normally the agent's mutual-TLS gRPC server. gRPC takes one registration per
// service and server: to serve several links from one server, put their Alices
// in one Server instead.
func (a *Alice) Register(s grpc.ServiceRegistrar) {
	srv := NewServer(a.logger)
	_ = srv.Add(a) // cannot fail on an empty Server
	srv.Register(s)
}

// Run generates keys while a Bob is connected and hands each batch to sink once
// Bob's sink stored it. It blocks, generating nothing, while no Bob is
// connected. See driver.Driver for how it ends.
func (a *Alice) Run(ctx context.Context, sink driver.Sink) error {
	if err := a.begin(); err != nil {
		return err
	}
	defer a.end()
	rctx, cancel := withCancelOn(ctx, a.closedCh)
	defer cancel()
	err := a.run(rctx, sink)
	if a.isClosed() {
		return driver.ErrClosed
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (a *Alice) run(ctx context.Context, sink driver.Sink) error {
	clock := a.opts.clock
	bk := newBucket(a.cfg.KeyRate, a.cfg.MaxBatch, clock.Now())
	var cur *bobConn
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		// A batch Bob stored goes to Alice's sink before anything else, also
		// when a previous Run stopped between Bob's acknowledgement and a
		// successful sink call.
		if p := a.pending; p != nil && p.acked {
			if err := a.deliver(ctx, sink, p); err != nil {
				return err
			}
			continue
		}
		c, err := a.waitConn(ctx)
		if err != nil {
			return err
		}
		if c != cur {
			// The module distils keys only while its classical channel is up.
			cur = c
			bk.reset(clock.Now())
		}
		if a.pending == nil {
			n, err := a.awaitCredit(ctx, c, &bk)
			if errors.Is(err, errConnDone) {
				continue
			}
			if err != nil {
				return err
			}
			a.lastBatch++
			a.pending = &batch{num: a.lastBatch, keys: newKeys(n, a.cfg.KeyBytes)}
		}
		if err := a.exchange(ctx, c, a.pending); err != nil && !errors.Is(err, errConnDone) {
			return err
		}
	}
}

// awaitCredit waits until the key rate allows a batch, and returns its size.
func (a *Alice) awaitCredit(ctx context.Context, c *bobConn, bk *bucket) (int, error) {
	for {
		n, wait := bk.take(a.opts.clock.Now())
		if n > 0 {
			return n, nil
		}
		select {
		case <-a.opts.clock.After(wait):
		case <-c.Done():
			return 0, errConnDone
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// exchange sends p to Bob on c, unless it went out on c already, and waits for
// his acknowledgement. It returns errConnDone if c ends first: p stays pending
// and is re-sent on the next connection.
func (a *Alice) exchange(ctx context.Context, c *bobConn, p *batch) error {
	if p.sentOn != c {
		m := &qkdv1.ExchangeResponse{Batch: p.num, Keys: wire.ToProto(p.keys)}
		select {
		case c.sendq <- m:
			p.sentOn = c
		case <-c.Done():
			wire.ZeroProto(m.Keys)
			return errConnDone
		case <-ctx.Done():
			wire.ZeroProto(m.Keys)
			return ctx.Err()
		}
	}
	for {
		select {
		case n := <-c.acks:
			if n == p.num {
				p.acked = true
				return nil
			}
			a.logger.Warn("ignoring an acknowledgement of a batch that is not outstanding", "ack", n, "batch", p.num)
		case <-c.Done():
			return errConnDone
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// deliver hands a batch Bob stored to Alice's sink. The sink gets a copy, since
// it owns what it gets even when it fails, and the batch must then be handed
// again.
func (a *Alice) deliver(ctx context.Context, sink driver.Sink, p *batch) error {
	if err := sink(ctx, wire.Clone(p.keys)); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("emulator: link %s: sink: %w", a.linkID, err)
	}
	driver.ZeroKeys(p.keys)
	a.pending = nil
	a.delivered.Add(uint64(len(p.keys)))
	a.logger.Debug("batch stored at both ends", "batch", p.num, "keys", len(p.keys))
	return nil
}

// waitConn returns the connected Bob, waiting for one if needed.
func (a *Alice) waitConn(ctx context.Context) (*bobConn, error) {
	for {
		a.mu.Lock()
		c, ch := a.conn, a.connCh
		a.mu.Unlock()
		if c != nil && !c.IsDone() {
			return c, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Status reports whether a Bob is connected and how many keys Alice's sink
// accepted.
func (a *Alice) Status() driver.Status {
	a.mu.Lock()
	connected := a.conn != nil
	a.mu.Unlock()
	return driver.Status{LinkID: a.linkID, Connected: connected, KeysDelivered: a.delivered.Load()}
}

// Close disconnects Bob, stops Run with driver.ErrClosed and zeroes the batch
// in flight. A closed Alice stays closed.
func (a *Alice) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.closedCh)
	c := a.conn
	a.conn = nil
	a.signalLocked()
	if !a.running {
		a.dropPendingLocked()
	}
	a.mu.Unlock()
	if c != nil {
		c.Finish(driver.ErrClosed)
	}
	return nil
}

func (a *Alice) begin() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.closed:
		return driver.ErrClosed
	case a.running:
		return errors.New("emulator: Run called while Run is in progress")
	}
	a.running = true
	return nil
}

func (a *Alice) end() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.running = false
	if a.closed {
		a.dropPendingLocked()
	}
}

func (a *Alice) dropPendingLocked() {
	if a.pending != nil {
		driver.ZeroKeys(a.pending.keys)
		a.pending = nil
	}
}

func (a *Alice) isClosed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

func (a *Alice) signalLocked() {
	close(a.connCh)
	a.connCh = make(chan struct{})
}

// bobConn is one Exchange stream from Bob. Its handler goroutine sends what Run
// puts on sendq, and a receiver goroutine forwards Bob's acknowledgements, so
// that Run never blocks on the network and can leave a stuck stream behind.
type bobConn struct {
	peer  string
	sendq chan *qkdv1.ExchangeResponse
	acks  chan uint64
	*lifecycle.Ending
}

// serve runs one Exchange stream after the hello was accepted.
func (a *Alice) serve(stream grpc.BidiStreamingServer[qkdv1.ExchangeRequest, qkdv1.ExchangeResponse], peer string) error {
	ctx := stream.Context()
	c := &bobConn{
		peer:   peer,
		sendq:  make(chan *qkdv1.ExchangeResponse),
		acks:   make(chan uint64, 1),
		Ending: lifecycle.NewEnding(),
	}
	if err := a.attach(c); err != nil {
		return err
	}
	defer a.detach(c)
	if err := stream.SendHeader(metadata.Pairs(acceptedHeader, a.linkID)); err != nil {
		c.Finish(err)
		return c.Status("emulated link closed")
	}
	// The receiver may outlive this handler: it then returns once gRPC ends
	// the stream, which it does when the handler returns.
	go a.receive(stream, c)
	for {
		select {
		case m := <-c.sendq:
			err := stream.Send(m)
			// gRPC encoded the message during Send; do not leave key bits
			// behind in memory longer than needed.
			wire.ZeroProto(m.Keys)
			if err != nil {
				c.Finish(fmt.Errorf("send: %w", err))
			}
		case <-c.Done():
			return c.Status("emulated link closed")
		case <-ctx.Done():
			c.Finish(ctx.Err())
		}
	}
}

// receive forwards Bob's acknowledgements to Run.
func (a *Alice) receive(stream grpc.BidiStreamingServer[qkdv1.ExchangeRequest, qkdv1.ExchangeResponse], c *bobConn) {
	for {
		req, err := stream.Recv()
		if err != nil {
			c.Finish(fmt.Errorf("receive: %w", err))
			return
		}
		if id := req.GetLinkId(); id != "" && id != a.linkID {
			c.Finish(status.Errorf(codes.InvalidArgument, "link_id %q in the middle of link %q", id, a.linkID))
			return
		}
		if req.GetAck() == 0 {
			continue
		}
		select {
		case c.acks <- req.GetAck():
		case <-c.Done():
			return
		}
	}
}

func (a *Alice) attach(c *bobConn) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return status.Error(codes.Unavailable, "emulated link closed")
	}
	old := a.conn
	a.conn = c
	a.signalLocked()
	a.mu.Unlock()
	if old != nil {
		a.logger.Warn("Bob connected again; replacing the previous connection", "peer", c.peer, "previous_peer", old.peer)
		old.Finish(lifecycle.ErrReplaced)
	}
	a.logger.Info("Bob connected", "peer", c.peer)
	return nil
}

func (a *Alice) detach(c *bobConn) {
	a.mu.Lock()
	if a.conn == c {
		a.conn = nil
		a.signalLocked()
	}
	a.mu.Unlock()
	a.logger.Info("Bob disconnected", "peer", c.peer, "reason", c.Err())
}
