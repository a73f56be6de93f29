// Package emulator is a software QKD module pair whose two ends may run in
// different processes: Alice, the generating end, serves the classical channel
// (qkd.v1.EmulatedLinkService) on her agent's gRPC server, and Bob dials it.
//
// Alice draws every key from crypto/rand (a random UUIDv4 key_ID and KeyBytes
// random bytes) at Config.KeyRate, sends each batch to Bob, and hands it to her
// own sink only after Bob acknowledged that his sink stored it. There is no
// shared seed: the only copy of a key that ever exists outside the two KMMs is
// the one on the (mutual TLS) classical channel. Keys are produced only while
// Bob is connected and both sinks keep up, as with a real module, which cannot
// distil keys without its classical channel.
//
// # Failures
//
// If the channel breaks before Bob's acknowledgement arrives, Alice keeps the
// batch and re-sends it, with the same number, key_IDs and bits, on Bob's next
// connection. Bob remembers the last batch his sink stored (number and key_IDs,
// in memory) and acknowledges a re-sent copy without handing it to his sink
// again. Hence, while both processes live, both KMMs get the same keys in the
// same order, with no gap and no repeat, whatever breaks on the channel.
//
// Process restarts are weaker, because neither end persists anything:
//   - after Bob restarts, he may hand his KMM once more the last batch it stored
//     before the restart (same key_IDs, same bits): Alice re-sends it because
//     the acknowledgement was lost. The KMM skips key_IDs it already holds.
//   - after Alice restarts, the batch she had sent but not yet seen
//     acknowledged is gone: Bob's KMM may hold at most one batch that Alice's
//     KMM does not. The KMMs' key synchronisation treats such keys as unknown
//     to the peer. (Alice's batch numbers restart at 1; Bob tells a new batch
//     from a re-sent one by its key_IDs too, so he never drops a new batch.)
//
// # Connections
//
// Alice serves one Bob per link. A second Bob that says hello for the same link
// replaces the first one, whose stream ends with codes.Aborted: a Bob that
// reconnects after a crash or a network cut must not wait until the old,
// half-open stream times out. Re-sending the outstanding batch on the new
// stream keeps both ends consistent. Only a trusted node may be Bob: a
// verified client certificate with a node identity (WithPeer narrows it to one
// node), or, in tests without TLS, any caller if Alice was built with
// AllowInsecurePeer.
package emulator

import (
	"crypto/rand"
	"encoding/hex"
	"math"
	"time"

	"github.com/qkdnet/qkdnet/driver"
	"github.com/qkdnet/qkdnet/driver/internal/lifecycle"
	"github.com/qkdnet/qkdnet/driver/internal/wire"
)

// Config sets an emulated link. Both ends must agree on nothing but the link
// ID: only Alice uses Config.
type Config struct {
	// KeyRate is how many keys per second Alice generates while Bob is
	// connected. Default 1, as in the paper.
	KeyRate float64
	// KeyBytes is the length of each key in bytes. Default 32 (256 bits).
	KeyBytes int
	// MaxBatch is the most keys in one batch (one transaction in each KMM).
	// Default 1024. It is lowered further if needed so that a batch carries at
	// most 1 MiB of key material, well within gRPC's default message size.
	MaxBatch int
}

// Defaults for Config.
const (
	DefaultKeyRate  = 1
	DefaultKeyBytes = 32
	DefaultMaxBatch = 1024
)

func (c Config) withDefaults() Config {
	if !(c.KeyRate > 0) { // also catches NaN
		c.KeyRate = DefaultKeyRate
	}
	if c.KeyBytes <= 0 {
		c.KeyBytes = DefaultKeyBytes
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	// 64 bytes covers a key's UUID and protobuf framing.
	c.MaxBatch = max(1, min(c.MaxBatch, wire.MaxBatchBytes/(c.KeyBytes+64)))
	return c
}

// Clock is the time source of the emulator: Alice's key rate and Bob's
// reconnection delays. Tests inject a fake one to step time instead of
// sleeping.
type Clock interface {
	Now() time.Time
	// After waits for d, like time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Option tunes Alice or Bob.
type Option func(*options)

type options struct {
	clock         Clock
	allowInsecure bool
	peer          string
	backoffMin    time.Duration
	backoffMax    time.Duration
}

func buildOptions(opts []Option) options {
	o := options{clock: realClock{}}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// AllowInsecurePeer lets Alice accept a Bob whose connection carries no
// verified client certificate. It is for tests over bufconn or plain TCP;
// an agent serves over mutual TLS and never sets it.
func AllowInsecurePeer() Option { return func(o *options) { o.allowInsecure = true } }

// WithPeer makes Alice accept only the node whose certificate says
// qkd://node/<node> as Bob: without it any trusted node could take the link's
// keys by naming the link in its hello.
func WithPeer(node string) Option { return func(o *options) { o.peer = node } }

// WithClock sets the clock (default: the system clock).
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithBackoff sets Bob's reconnection delay, doubling from min to max
// (defaults 100ms and 5s).
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) { o.backoffMin, o.backoffMax = min, max }
}

var (
	orDiscard    = lifecycle.OrDiscard
	withCancelOn = lifecycle.WithCancelOn
)

// newKeys draws n keys of size bytes, and their IDs, from crypto/rand.
func newKeys(n, size int) []driver.Key {
	keys := make([]driver.Key, n)
	material := make([]byte, n*size)
	ids := make([]byte, n*16)
	// crypto/rand.Read never fails (it crashes the program instead).
	_, _ = rand.Read(material)
	_, _ = rand.Read(ids)
	for i := range keys {
		keys[i] = driver.Key{
			ID: uuidV4(ids[i*16 : (i+1)*16]),
			// Three-index slices: a sink that appends to one key cannot
			// overwrite the next.
			Bytes: material[i*size : (i+1)*size : (i+1)*size],
		}
	}
	return keys
}

// uuidV4 formats 16 random bytes as a version 4 (random) UUID, RFC 9562.
func uuidV4(b []byte) string {
	var u [16]byte
	copy(u[:], b)
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // variant 10
	var s [36]byte
	hex.Encode(s[0:8], u[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], u[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], u[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], u[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], u[10:16])
	return string(s[:])
}

// batchInterval is the least time between two batches that are not full, so
// that a fast link hands its KMM a few large transactions rather than a stream
// of one-key ones; a slow link waits for each key anyway.
const batchInterval = 50 * time.Millisecond

// maxWait caps one wait for credit, so that absurdly low rates cannot overflow
// a time.Duration.
const maxWait = time.Hour

// bucket accounts Alice's key rate by elapsed time (a token bucket): credit
// grows by rate per second of clock time and is spent one per key.
type bucket struct {
	rate  float64 // keys per second
	batch int     // most keys one take returns
	// capacity bounds the credit kept while Alice is held up by Bob or a sink:
	// one full batch plus one interval's worth, the emulated module's buffer.
	// Beyond it the module "loses" keys rather than flood the KMM afterwards.
	capacity float64
	credit   float64
	last     time.Time // when credit was last brought up to date
	lastTake time.Time // when keys were last taken; zero before the first
}

func newBucket(rate float64, batch int, now time.Time) bucket {
	return bucket{
		rate:     rate,
		batch:    batch,
		capacity: float64(batch) + rate*batchInterval.Seconds(),
		last:     now,
	}
}

// reset empties the bucket: the module starts distilling from nothing.
func (b *bucket) reset(now time.Time) {
	b.credit, b.last, b.lastTake = 0, now, time.Time{}
}

// take returns how many keys to generate now, or, if none, how long to wait
// before asking again. A full batch is taken at once; a partial one only
// batchInterval after the previous take, so that a fast link fills its
// batches.
func (b *bucket) take(now time.Time) (n int, wait time.Duration) {
	if dt := now.Sub(b.last); dt > 0 {
		b.credit = min(b.credit+dt.Seconds()*b.rate, b.capacity)
		b.last = now
	}
	// The epsilon absorbs float rounding, e.g. 0.1 s × 10 keys/s.
	whole := int(min(b.credit+1e-9, float64(b.batch)))
	var gap time.Duration
	if !b.lastTake.IsZero() {
		gap = b.lastTake.Add(batchInterval).Sub(now)
	}
	if whole < b.batch && (whole == 0 || gap > 0) {
		// Wait for the first whole key, and then for the interval to pass
		// or a full batch to accrue, whichever comes first.
		return 0, max(b.until(1), min(gap, b.until(float64(b.batch))), time.Nanosecond)
	}
	b.credit = max(b.credit-float64(whole), 0)
	b.lastTake = now
	return whole, 0
}

// until returns how long the credit takes to reach c, at most maxWait.
func (b *bucket) until(c float64) time.Duration {
	if b.credit+1e-9 >= c {
		return 0
	}
	// Rounding down by a microsecond's fraction keeps float noise from
	// adding a nanosecond; the epsilon in take makes up for it.
	ns := math.Ceil((c-b.credit)/b.rate*float64(time.Second) - 1e-3)
	if ns >= float64(maxWait) {
		return maxWait
	}
	return time.Duration(ns)
}
