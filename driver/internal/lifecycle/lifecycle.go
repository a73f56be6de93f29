// Package lifecycle holds what both driver ends served over gRPC (emulator
// and remote) need to run and stop: a logger default, a context that Close
// can cancel, and the record of why a stream ended.
package lifecycle

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/driver"
)

// OrDiscard returns l, or a logger that discards everything when l is nil.
func OrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// WithCancelOn returns ctx that is also cancelled when ch closes, so that
// Close reaches a sink that blocks on its ctx.
func WithCancelOn(ctx context.Context, ch <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-ch:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// ErrReplaced ends a stream that a newer stream for the same link took over.
var ErrReplaced = errors.New("replaced by a newer stream for this link")

// Ending records why a server stream (a Bob's Exchange, a driver process's
// PushKeys) ended. The first Finish wins; Err is valid once Done is closed.
type Ending struct {
	done chan struct{}
	once sync.Once
	err  error // set before done is closed
}

// NewEnding returns an Ending that has not ended.
func NewEnding() *Ending { return &Ending{done: make(chan struct{})} }

// Finish ends the stream for err, unless it already ended.
func (e *Ending) Finish(err error) {
	e.once.Do(func() {
		e.err = err
		close(e.done)
	})
}

// Done is closed once the stream ended.
func (e *Ending) Done() <-chan struct{} { return e.done }

// Err is why the stream ended; nil before it did.
func (e *Ending) Err() error {
	select {
	case <-e.done:
		return e.err
	default:
		return nil
	}
}

// IsDone reports whether the stream ended.
func (e *Ending) IsDone() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// Status is the gRPC status the handler ends the stream with; closedMsg is
// the message when the driver was closed.
func (e *Ending) Status(closedMsg string) error {
	err := e.Err()
	switch {
	case errors.Is(err, ErrReplaced):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, driver.ErrClosed):
		return status.Error(codes.Unavailable, closedMsg)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unavailable, err.Error())
}
