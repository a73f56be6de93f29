// Package testlog gives tests a *slog.Logger that writes through t.Log and
// goes quiet once the test has finished, because drivers' goroutines may still
// log while they wind down and t.Log then panics.
package testlog

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// New returns a debug-level logger writing to t.Log until t's cleanup.
func New(t testing.TB) *slog.Logger {
	w := &writer{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type writer struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// Capture is a slog.Handler that keeps every record's text, for tests that
// check what is (not) logged.
type Capture struct {
	mu  *sync.Mutex
	buf *strings.Builder
	h   slog.Handler
}

// NewCapture returns an empty Capture at debug level.
func NewCapture() *Capture {
	c := &Capture{mu: new(sync.Mutex), buf: new(strings.Builder)}
	c.h = slog.NewTextHandler(lockedWriter{c}, &slog.HandlerOptions{Level: slog.LevelDebug})
	return c
}

// String returns everything logged so far.
func (c *Capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// Enabled implements slog.Handler.
func (c *Capture) Enabled(ctx context.Context, l slog.Level) bool { return c.h.Enabled(ctx, l) }

// Handle implements slog.Handler.
func (c *Capture) Handle(ctx context.Context, r slog.Record) error { return c.h.Handle(ctx, r) }

// WithAttrs implements slog.Handler.
func (c *Capture) WithAttrs(as []slog.Attr) slog.Handler {
	return &Capture{mu: c.mu, buf: c.buf, h: c.h.WithAttrs(as)}
}

// WithGroup implements slog.Handler.
func (c *Capture) WithGroup(name string) slog.Handler {
	return &Capture{mu: c.mu, buf: c.buf, h: c.h.WithGroup(name)}
}

type lockedWriter struct{ c *Capture }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.c.buf.Write(p)
}
