// Package ratelimit is the per-SAE request limit of the SAE API (ETSI 014
// REST and gRPC, ETSI 004): one token bucket per SAE identity, the identity
// being the one in the SAE's verified client certificate. It keeps one SAE
// that loops or misbehaves from taking the KMM's time from the others; it is
// not a key-rate QoS (the key streams' QoS does that).
package ratelimit

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// Defaults of the agent. The benchmark (make bench: 16 SAE pairs, 16 keys per
// request, ~50k keys/s) asks each SAE for ~200 requests/s, and its
// single-key phase has one SAE at ~2,500 requests/s (0.4 ms each, one after
// the other); 5,000/s with a burst of 1,000 is out of the way of both, while
// still bounding what one SAE can make a node do.
const (
	DefaultRate  = 5000
	DefaultBurst = 1000
)

// maxIdle bounds the buckets kept: past it, full buckets (SAEs idle long
// enough to have refilled) are dropped, which changes nothing for them.
// SAEs are authenticated, so their number is bounded by the certificates
// issued; this only keeps memory flat over a long run.
const maxIdle = 4096

// Limiter is a set of token buckets, one per SAE. A nil *Limiter allows
// everything.
type Limiter struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket // guarded by mu
}

type bucket struct {
	tokens float64
	at     time.Time
}

// New returns a limiter of rate requests per second per SAE with bursts of
// burst requests, or nil (no limit) when rate <= 0.
func New(rate float64, burst int) *Limiter {
	if rate <= 0 || math.IsNaN(rate) || math.IsInf(rate, 0) {
		return nil
	}
	return &Limiter{rate: rate, burst: float64(max(burst, 1)), now: time.Now, buckets: map[string]*bucket{}}
}

// WithClock makes the limiter read time from now (tests).
func (l *Limiter) WithClock(now func() time.Time) *Limiter {
	if l != nil {
		l.now = now
	}
	return l
}

// Allow takes one token of sae's bucket. When there is none it returns false
// and how long until there is one.
func (l *Limiter) Allow(sae string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[sae]
	if b == nil {
		if len(l.buckets) >= maxIdle {
			l.sweep(now)
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[sae] = b
	}
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	return false, max(wait, time.Millisecond)
}

// sweep drops the buckets that have refilled.
func (l *Limiter) sweep(now time.Time) {
	for id, b := range l.buckets {
		if b.tokens+now.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(l.buckets, id)
		}
	}
}

// Message is the text of a refusal, the same on every API.
func (l *Limiter) Message(sae string, retry time.Duration) string {
	return fmt.Sprintf("SAE %s is over its request limit of %g requests/s (burst %g); retry in %v", sae, l.rate, l.burst, retry.Round(time.Millisecond))
}

// Rate and Burst are the limiter's settings (0 for no limit).
func (l *Limiter) Rate() float64 {
	if l == nil {
		return 0
	}
	return l.rate
}

// Burst is the bucket size.
func (l *Limiter) Burst() int {
	if l == nil {
		return 0
	}
	return int(l.burst)
}
