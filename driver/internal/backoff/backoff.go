// Package backoff spaces out reconnection attempts.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Defaults for reconnecting to a peer agent.
const (
	DefaultMin = 100 * time.Millisecond
	DefaultMax = 5 * time.Second
)

// Backoff doubles a delay from Min up to Max on each failure. Its zero value
// uses the defaults.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns how long to wait before the next attempt: the current delay,
// jittered by up to ±20% so that many links do not retry in step; then it
// doubles the delay.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = DefaultMin
	}
	if hi < lo {
		hi = max(lo, DefaultMax)
	}
	if b.cur < lo {
		b.cur = lo
	}
	d := b.cur
	b.cur = min(2*b.cur, hi)
	// Jitter is not security relevant: math/rand is fine here.
	return d + time.Duration((rand.Float64()*0.4-0.2)*float64(d))
}

// Reset starts again from Min, after a connection that worked.
func (b *Backoff) Reset() { b.cur = 0 }
