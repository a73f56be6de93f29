package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/driver"
	"github.com/qkdnet/qkdnet/driver/internal/backoff"
	"github.com/qkdnet/qkdnet/driver/internal/wire"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// PushOption tunes Push.
type PushOption func(*pushOptions)

type pushOptions struct {
	logger     *slog.Logger
	backoffMin time.Duration
	backoffMax time.Duration
}

// WithLogger makes Push log connections and reconnections (default: silent).
func WithLogger(l *slog.Logger) PushOption { return func(o *pushOptions) { o.logger = l } }

// WithBackoff sets the delay between reconnection attempts, doubling from min
// to max (defaults 100ms and 5s).
func WithBackoff(min, max time.Duration) PushOption {
	return func(o *pushOptions) { o.backoffMin, o.backoffMax = min, max }
}

// StreamError is the error Push's sink returns when the stream to the agent
// fails; a driver returns it, wrapped, from Run. Unwrap gives the gRPC status.
type StreamError struct{ Err error }

func (e *StreamError) Error() string { return "remote: stream to the agent: " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *StreamError) Unwrap() error { return e.Err }

// Push runs d in this process and forwards its keys for link linkID, batch by
// batch, to the agent's DriverService on conn (normally mutual TLS with this
// node's certificate). d's sink returns only once the agent acknowledged that
// its KMM stored the batch, so d resumes, after any failure, from the last key
// the KMM holds.
//
// When the stream fails, Push stops d (its sink fails, so Run returns) and
// runs it again on a new stream, waiting longer after each failed attempt;
// NotFound (the agent has no such link yet) and Unavailable are retried too.
// Push returns ctx.Err() when ctx ends, the error when the agent refuses the
// caller or the request (PermissionDenied, Unauthenticated, InvalidArgument,
// Unimplemented), and whatever else d.Run returns, such as driver.ErrClosed.
// It does not close d or conn.
func Push(ctx context.Context, conn grpc.ClientConnInterface, linkID string, d driver.Driver, opts ...PushOption) error {
	var o pushOptions
	for _, f := range opts {
		f(&o)
	}
	logger := orDiscard(o.logger).With("link", linkID)
	client := qkdv1.NewDriverServiceClient(conn)
	bo := backoff.Backoff{Min: o.backoffMin, Max: o.backoffMax}
	for {
		ps, err := openPush(ctx, client, linkID)
		if err == nil {
			logger.Info("pushing keys to the agent")
			err = d.Run(ctx, ps.sink)
			ps.close()
			if ps.acked > 0 {
				bo.Reset()
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var se *StreamError
		if !errors.As(err, &se) {
			return err
		}
		switch status.Code(se.Err) {
		case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.Unimplemented:
			return err
		}
		wait := bo.Next()
		logger.Warn("stream to the agent failed; reconnecting", "err", err, "retry_in", wait)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// pushStream is one PushKeys stream, driven by the sink it gives a driver.
type pushStream struct {
	stream grpc.BidiStreamingClient[qkdv1.PushKeysRequest, qkdv1.PushKeysResponse]
	cancel context.CancelFunc
	batch  uint64 // number of the last batch sent
	acked  int    // batches acknowledged
	broken error  // set once the stream failed; a broken stream stays broken
}

// openPush opens a stream for linkID and waits until the agent accepted it.
func openPush(ctx context.Context, client qkdv1.DriverServiceClient, linkID string) (*pushStream, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := client.PushKeys(sctx, grpc.WaitForReady(true))
	if err != nil {
		cancel()
		return nil, &StreamError{err}
	}
	if err := stream.Send(&qkdv1.PushKeysRequest{LinkId: linkID}); err != nil {
		cancel()
		return nil, &StreamError{streamErr(stream, err)}
	}
	if md, _ := stream.Header(); md == nil {
		_, err := stream.Recv()
		cancel()
		if err == nil {
			err = errors.New("the agent answered before accepting the link")
		}
		return nil, &StreamError{err}
	}
	return &pushStream{stream: stream, cancel: cancel}, nil
}

// sink sends keys as one batch and waits for the agent's acknowledgement.
func (p *pushStream) sink(ctx context.Context, keys []driver.Key) error {
	// The sink owns keys; once sent, nothing here needs them.
	defer driver.ZeroKeys(keys)
	if p.broken != nil {
		return p.broken
	}
	if len(keys) == 0 {
		return nil
	}
	// If the driver gives up on this call, an acknowledgement can no longer
	// be matched to its batch: end the stream.
	stop := context.AfterFunc(ctx, p.cancel)
	defer stop()
	p.batch++
	req := &qkdv1.PushKeysRequest{Batch: p.batch, Keys: wire.ToProto(keys)}
	err := p.stream.Send(req)
	wire.ZeroProto(req.Keys)
	if err != nil {
		return p.fail(streamErr(p.stream, err))
	}
	resp, err := p.stream.Recv()
	if err != nil {
		return p.fail(err)
	}
	if resp.GetBatch() != p.batch {
		return p.fail(fmt.Errorf("the agent acknowledged batch %d, want %d", resp.GetBatch(), p.batch))
	}
	p.acked++
	return nil
}

func (p *pushStream) fail(err error) error {
	p.cancel()
	p.broken = &StreamError{err}
	return p.broken
}

func (p *pushStream) close() { p.cancel() }

// streamErr turns the io.EOF of a Send on an ended stream into the stream's
// status.
func streamErr(stream grpc.BidiStreamingClient[qkdv1.PushKeysRequest, qkdv1.PushKeysResponse], err error) error {
	if err == io.EOF {
		if _, rerr := stream.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}
