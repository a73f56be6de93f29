package emulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"

	"github.com/qkdnet/qkdnet/driver"
	"github.com/qkdnet/qkdnet/driver/internal/backoff"
	"github.com/qkdnet/qkdnet/driver/internal/wire"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// Bob is the receiving end of an emulated link: he calls Alice's
// EmulatedLinkService and implements driver.Driver.
type Bob struct {
	linkID string
	client qkdv1.EmulatedLinkServiceClient
	opts   options
	logger *slog.Logger

	connected atomic.Bool
	delivered atomic.Uint64

	mu       sync.Mutex
	closed   bool
	closedCh chan struct{}
	running  bool

	// The last batch Bob's sink stored, to tell a copy Alice re-sends (same
	// number, same key_IDs) from a new batch. Run only.
	lastBatch uint64
	lastIDs   []string
}

// NewBob returns the receiving end of link linkID. conn reaches Alice's agent,
// normally over mutual TLS with this node's certificate; Bob does not close it.
func NewBob(linkID string, conn grpc.ClientConnInterface, logger *slog.Logger, opts ...Option) *Bob {
	return &Bob{
		linkID:   linkID,
		client:   qkdv1.NewEmulatedLinkServiceClient(conn),
		opts:     buildOptions(opts),
		logger:   orDiscard(logger).With("link", linkID, "end", "bob"),
		closedCh: make(chan struct{}),
	}
}

// sinkError marks a failure of Bob's sink, which ends Run, as opposed to a
// failure of the channel, after which Bob reconnects.
type sinkError struct{ err error }

func (e *sinkError) Error() string { return e.err.Error() }

// Run connects to Alice, hands each new batch to sink, and acknowledges it once
// the sink stored it. When the channel breaks it reconnects, waiting longer
// after each failed attempt, until ctx ends or Close; any error of the channel
// (Alice unreachable, the link unknown to her, a refused certificate) is
// retried. See driver.Driver for how it ends.
func (b *Bob) Run(ctx context.Context, sink driver.Sink) error {
	if err := b.begin(); err != nil {
		return err
	}
	defer b.end()
	rctx, cancel := withCancelOn(ctx, b.closedCh)
	defer cancel()
	bo := backoff.Backoff{Min: b.opts.backoffMin, Max: b.opts.backoffMax}
	for {
		accepted, err := b.session(rctx, sink)
		b.connected.Store(false)
		if rctx.Err() != nil {
			return b.result(ctx)
		}
		if se := (*sinkError)(nil); errors.As(err, &se) {
			return fmt.Errorf("emulator: link %s: sink: %w", b.linkID, se.err)
		}
		if accepted {
			bo.Reset()
		}
		wait := bo.Next()
		b.logger.Warn("classical channel to Alice lost; reconnecting", "err", err, "retry_in", wait)
		select {
		case <-b.opts.clock.After(wait):
		case <-rctx.Done():
			return b.result(ctx)
		}
	}
}

func (b *Bob) result(ctx context.Context) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return driver.ErrClosed
	}
	return ctx.Err()
}

// session runs one Exchange stream. accepted reports whether Alice accepted
// the hello.
func (b *Bob) session(ctx context.Context, sink driver.Sink) (accepted bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream, so Alice learns at once
	stream, err := b.client.Exchange(sctx, grpc.WaitForReady(true))
	if err != nil {
		return false, err
	}
	if err := stream.Send(&qkdv1.ExchangeRequest{LinkId: b.linkID}); err != nil {
		return false, streamErr(stream, err)
	}
	// Alice sends headers when she accepts; a refusal ends the stream
	// without any, and Recv then returns the status.
	if md, _ := stream.Header(); md == nil {
		_, err := stream.Recv()
		if err == nil {
			err = errors.New("alice sent a batch without accepting the link")
		}
		return false, err
	}
	b.connected.Store(true)
	b.logger.Info("connected to Alice")
	for {
		resp, err := stream.Recv()
		if err != nil {
			return true, err
		}
		if err := b.handle(ctx, resp, sink); err != nil {
			return true, err
		}
		if err := stream.Send(&qkdv1.ExchangeRequest{Ack: resp.GetBatch()}); err != nil {
			return true, streamErr(stream, err)
		}
	}
}

// handle hands a new batch to sink, or recognises a batch it already stored.
func (b *Bob) handle(ctx context.Context, resp *qkdv1.ExchangeResponse, sink driver.Sink) error {
	pk := resp.GetKeys()
	if resp.GetBatch() == 0 || len(pk) == 0 {
		wire.ZeroProto(pk)
		return fmt.Errorf("alice sent batch %d with %d keys", resp.GetBatch(), len(pk))
	}
	if resp.GetBatch() == b.lastBatch && sameIDs(pk, b.lastIDs) {
		// Alice did not get the acknowledgement; acknowledge again.
		wire.ZeroProto(pk)
		b.logger.Debug("alice re-sent a batch already stored", "batch", resp.GetBatch())
		return nil
	}
	keys, err := wire.FromProto(pk)
	if err != nil {
		wire.ZeroProto(pk)
		return fmt.Errorf("batch %d: %w", resp.GetBatch(), err)
	}
	if b.lastBatch != 0 && resp.GetBatch() != b.lastBatch+1 {
		b.logger.Info("batch numbers jumped (Alice restarted?)", "last", b.lastBatch, "batch", resp.GetBatch())
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	// The sink owns keys from here on, whatever it returns.
	if err := sink(ctx, keys); err != nil {
		return &sinkError{err}
	}
	b.lastBatch, b.lastIDs = resp.GetBatch(), ids
	b.delivered.Add(uint64(len(keys)))
	b.logger.Debug("batch stored", "batch", resp.GetBatch(), "keys", len(keys))
	return nil
}

func sameIDs(pk []*qkdv1.QKDKey, ids []string) bool {
	return slices.EqualFunc(pk, ids, func(k *qkdv1.QKDKey, id string) bool { return k.GetKeyId() == id })
}

// streamErr turns the io.EOF of a Send on an ended stream into the stream's
// status.
func streamErr(stream grpc.BidiStreamingClient[qkdv1.ExchangeRequest, qkdv1.ExchangeResponse], err error) error {
	if err == io.EOF {
		if _, rerr := stream.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// Status reports whether Bob is connected to Alice and how many keys his sink
// accepted.
func (b *Bob) Status() driver.Status {
	return driver.Status{LinkID: b.linkID, Connected: b.connected.Load(), KeysDelivered: b.delivered.Load()}
}

// Close stops Run with driver.ErrClosed and disconnects from Alice. It does
// not close the gRPC connection Bob was given.
func (b *Bob) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.closedCh)
	}
	return nil
}

func (b *Bob) begin() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return driver.ErrClosed
	case b.running:
		return errors.New("emulator: Run called while Run is in progress")
	}
	b.running = true
	return nil
}

func (b *Bob) end() {
	b.mu.Lock()
	b.running = false
	b.mu.Unlock()
}
