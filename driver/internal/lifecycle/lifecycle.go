// Package lifecycle holds the small helpers both driver ends (emulator and
// remote) need to run and stop: a logger default and a context that Close can
// cancel.
package lifecycle

import (
	"context"
	"log/slog"
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
