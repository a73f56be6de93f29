// Package drivertest is a conformance suite for QKD drivers: any pair of
// driver.Driver values that serve the two ends of one link must pass Run, the
// emulator in CI as well as a real device pair on the bench.
//
// The suite checks what the KMM relies on: both ends deliver the same key_IDs
// with the same bits in the same order, with no gap and no repeat, also when a
// sink fails, when Run is cancelled or the driver closed, and when Run starts
// again; and that a slow or blocked sink holds the link back instead of losing
// keys. It waits by polling with deadlines, never by sleeping for correctness.
// Its only sleeps are the slow sinks and the window during which a blocked
// sink is watched: a correct driver passes however the scheduler runs them.
package drivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/driver"
)

// Option tunes the suite to the pair under test.
type Option func(*config)

type config struct {
	keyBytes int           // expected key length; 0: any, but the same for all keys
	maxLead  int           // most keys one end may hold beyond the other; 0: unchecked
	keys     int           // keys to collect for the statistical checks
	flow     int           // keys to collect for the other checks
	prompt   time.Duration // how soon Run must return after cancel, Close or a sink error
	timeout  time.Duration // how long to wait for keys before failing
	hold     time.Duration // how long a blocked sink is watched
}

// KeyBytes makes the suite require keys of exactly n bytes.
func KeyBytes(n int) Option { return func(c *config) { c.keyBytes = n } }

// MaxLead makes the suite require that neither end's sink ever holds more than
// n keys beyond the other's, e.g. one batch for the emulator, whose ends
// deliver each batch in turn.
func MaxLead(n int) Option { return func(c *config) { c.maxLead = n } }

// Keys sets how many keys the randomness and uniqueness checks look at
// (default 1000); a slow device may want fewer.
func Keys(n int) Option { return func(c *config) { c.keys = n } }

// Timeout sets how long the suite waits for keys to arrive before it fails
// (default 20s). It bounds a broken driver's test, and never slows a working
// one.
func Timeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// Run runs the suite. newPair returns two fresh ends a and b of one link, ready
// to Run, whose keys arrive quickly enough for tests (say thousands per
// second); it registers with t.Cleanup whatever it started. The suite Runs,
// cancels and Closes both ends itself.
func Run(t *testing.T, newPair func(t testing.TB) (a, b driver.Driver), opts ...Option) {
	cfg := config{keys: 1000, flow: 200, prompt: 5 * time.Second, timeout: 20 * time.Second, hold: 200 * time.Millisecond}
	for _, o := range opts {
		o(&cfg)
	}
	s := &suite{cfg: cfg, newPair: newPair}
	t.Run("SameKeysInSameOrder", s.sameKeys)
	t.Run("UniqueKeyIDs", s.uniqueIDs)
	t.Run("KeyMaterial", s.keyMaterial)
	t.Run("Status", s.status)
	t.Run("ContextCancel", s.contextCancel)
	t.Run("Close", s.close)
	t.Run("SinkError", s.sinkError)
	t.Run("Resume", s.resume)
	t.Run("BackPressure", s.backPressure)
}

type suite struct {
	cfg     config
	newPair func(testing.TB) (driver.Driver, driver.Driver)
}

// errSink is what failing test sinks return.
var errSink = errors.New("drivertest: sink failure")

// hook runs at the start of a sink call (call counts from 1 in each Run); it
// may block, and if it returns an error the sink fails with it and accepts
// nothing.
type hook func(ctx context.Context, call int, keys []driver.Key) error

// pair is the two ends under test and the keys their sinks accepted.
type pair struct {
	t    testing.TB
	cfg  config
	a, b *end

	mu     sync.Mutex // guards the ends' keys and lead
	lead   int        // largest difference in accepted keys seen so far
	leadAt string     // the counts when it was seen
}

// end is one link end, with the keys its sinks accepted across Runs.
type end struct {
	p    *pair
	name string
	d    driver.Driver
	keys []driver.Key // guarded by p.mu
	cur  *run         // the Run in progress, if any; test goroutine only
}

// run is one call of Run in its own goroutine.
type run struct {
	e      *end
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done is closed
	calls  atomic.Int64
}

func (s *suite) pair(t *testing.T) *pair {
	t.Helper()
	a, b := s.newPair(t)
	p := &pair{t: t, cfg: s.cfg}
	p.a = &end{p: p, name: "a", d: a}
	p.b = &end{p: p, name: "b", d: b}
	// Registered after newPair's cleanups, so it runs before them: stop
	// both ends while whatever they talk through is still up.
	t.Cleanup(func() {
		for _, e := range []*end{p.a, p.b} {
			if e.cur != nil {
				e.cur.cancel()
			}
		}
		for _, e := range []*end{p.a, p.b} {
			if e.cur != nil {
				select {
				case <-e.cur.done:
				case <-time.After(p.cfg.prompt):
					t.Errorf("end %s: Run did not return within %v of its context ending", e.name, p.cfg.prompt)
				}
			}
			if err := e.d.Close(); err != nil {
				t.Errorf("end %s: Close: %v", e.name, err)
			}
		}
	})
	return p
}

func (p *pair) ends() []*end { return []*end{p.a, p.b} }

func (p *pair) other(e *end) *end {
	if e == p.a {
		return p.b
	}
	return p.a
}

// start Runs e in a goroutine with a recording sink, after h if not nil.
func (e *end) start(h hook) *run {
	e.p.t.Helper()
	if e.cur != nil {
		select {
		case <-e.cur.done:
		default:
			e.p.t.Fatalf("end %s: test bug: started while running", e.name)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{e: e, cancel: cancel, done: make(chan struct{})}
	e.cur = r
	sink := func(ctx context.Context, keys []driver.Key) error {
		call := int(r.calls.Add(1))
		if h != nil {
			if err := h(ctx, call, keys); err != nil {
				// The sink owns keys whatever it returns; zero them, as
				// the KMM does, so that a driver that hands the same
				// buffers again shows as a mismatch.
				driver.ZeroKeys(keys)
				return err
			}
		}
		e.p.accept(e, keys)
		return nil
	}
	go func() {
		defer close(r.done)
		defer cancel()
		r.err = e.d.Run(ctx, sink)
	}()
	return r
}

// accept records keys as accepted by e's sink.
func (p *pair) accept(e *end, keys []driver.Key) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.keys = append(e.keys, keys...)
	if d := abs(len(p.a.keys) - len(p.b.keys)); d > p.lead {
		p.lead = d
		p.leadAt = fmt.Sprintf("a had %d keys, b had %d", len(p.a.keys), len(p.b.keys))
	}
}

func (e *end) count() int {
	e.p.mu.Lock()
	defer e.p.mu.Unlock()
	return len(e.keys)
}

func (e *end) snapshot() []driver.Key {
	e.p.mu.Lock()
	defer e.p.mu.Unlock()
	return append([]driver.Key(nil), e.keys...)
}

// stop cancels r and returns what Run returned.
func (r *run) stop() error {
	r.e.p.t.Helper()
	r.cancel()
	return r.wait()
}

// wait returns what Run returned, failing the test if it does not return
// promptly.
func (r *run) wait() error {
	r.e.p.t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(r.e.p.cfg.prompt):
		r.e.p.t.Fatalf("end %s: Run did not return within %v", r.e.name, r.e.p.cfg.prompt)
		return nil
	}
}

// expect waits for r to return an error that is target.
func (r *run) expect(target error) {
	r.e.p.t.Helper()
	if err := r.wait(); !errors.Is(err, target) {
		r.e.p.t.Fatalf("end %s: Run returned %v, want %v", r.e.name, err, target)
	}
}

// stopCanceled stops r and requires that Run reported the cancellation.
func (r *run) stopCanceled() {
	r.e.p.t.Helper()
	if err := r.stop(); !errors.Is(err, context.Canceled) {
		r.e.p.t.Fatalf("end %s: Run returned %v after its context was cancelled, want context.Canceled", r.e.name, err)
	}
}

// running fails the test if r has returned.
func (r *run) running() {
	r.e.p.t.Helper()
	select {
	case <-r.done:
		r.e.p.t.Fatalf("end %s: Run returned early: %v", r.e.name, r.err)
	default:
	}
}

// waitKeys waits until each of ends has accepted at least n keys in total.
func (p *pair) waitKeys(n int, ends ...*end) {
	p.t.Helper()
	p.waitFor(fmt.Sprintf("%d keys at each end", n), func() bool {
		for _, e := range ends {
			if e.count() < n {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond until it holds, failing the test after the timeout or as
// soon as a Run in progress returns.
func (p *pair) waitFor(what string, cond func() bool) {
	p.t.Helper()
	deadline := time.Now().Add(p.cfg.timeout)
	for !cond() {
		for _, e := range p.ends() {
			if e.cur != nil {
				select {
				case <-e.cur.done:
					p.t.Fatalf("waiting for %s: end %s: Run returned: %v", what, e.name, e.cur.err)
				default:
				}
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("waiting for %s: gave up after %v (a has %d keys, b has %d)", what, p.cfg.timeout, p.a.count(), p.b.count())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// flow runs both ends until each accepted n more keys, then stops them.
func (p *pair) flow(n int) {
	p.t.Helper()
	ra, rb := p.a.start(nil), p.b.start(nil)
	p.waitKeys(max(p.a.count(), p.b.count())+n, p.a, p.b)
	ra.stopCanceled()
	rb.stopCanceled()
}

// checkConsistent requires that what both ends accepted is the same sequence
// of keys, one possibly a prefix of the other (the other end's latest keys are
// still on their way), with no key_ID twice, and that KeysDelivered matches.
func (p *pair) checkConsistent() {
	p.t.Helper()
	a, b := p.a.snapshot(), p.b.snapshot()
	for i := range min(len(a), len(b)) {
		if a[i].ID != b[i].ID {
			p.t.Fatalf("key %d: a has key_ID %q, b has %q (a has %d keys, b has %d)", i, a[i].ID, b[i].ID, len(a), len(b))
		}
		if !bytes.Equal(a[i].Bytes, b[i].Bytes) {
			p.t.Fatalf("key %d (%s): the ends hold different bits", i, a[i].ID)
		}
	}
	for _, e := range p.ends() {
		keys := e.snapshot()
		seen := make(map[string]int, len(keys))
		for i, k := range keys {
			if k.ID == "" {
				p.t.Fatalf("end %s: key %d has an empty key_ID", e.name, i)
			}
			if j, dup := seen[k.ID]; dup {
				p.t.Fatalf("end %s: key_ID %q delivered twice, as key %d and key %d", e.name, k.ID, j, i)
			}
			seen[k.ID] = i
		}
		if got := e.d.Status().KeysDelivered; got != uint64(len(keys)) {
			p.t.Errorf("end %s: Status().KeysDelivered = %d, but its sinks accepted %d keys", e.name, got, len(keys))
		}
	}
	p.checkLead()
}

func (p *pair) checkLead() {
	p.t.Helper()
	if p.cfg.maxLead <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lead > p.cfg.maxLead {
		p.t.Errorf("one end ran %d keys ahead of the other (%s), want at most %d", p.lead, p.leadAt, p.cfg.maxLead)
	}
}

func (s *suite) sameKeys(t *testing.T) {
	p := s.pair(t)
	p.flow(s.cfg.flow)
	p.checkConsistent()
}

func (s *suite) uniqueIDs(t *testing.T) {
	p := s.pair(t)
	p.flow(s.cfg.keys)
	p.checkConsistent() // also rejects a key_ID seen twice at one end
}

// keyMaterial checks that keys look random: right length, no all-zero or
// constant key, no two equal keys, balanced bits. It is a sanity check against
// a stuck or seeded generator, not a randomness test suite.
func (s *suite) keyMaterial(t *testing.T) {
	p := s.pair(t)
	p.flow(s.cfg.keys)
	p.checkConsistent()
	keys := p.a.snapshot()
	if len(keys) < s.cfg.keys {
		t.Fatalf("got %d keys, want %d", len(keys), s.cfg.keys)
	}
	size := s.cfg.keyBytes
	if size == 0 {
		size = len(keys[0].Bytes)
	}
	if size == 0 {
		t.Fatal("keys have no bytes")
	}
	seen := make(map[string]string, len(keys))
	var ones, total int
	for _, k := range keys {
		if len(k.Bytes) != size {
			t.Fatalf("key %s has %d bytes, want %d", k.ID, len(k.Bytes), size)
		}
		if size >= 4 && bytes.Count(k.Bytes, k.Bytes[:1]) == size {
			t.Fatalf("key %s repeats one byte value %#x", k.ID, k.Bytes[0])
		}
		if size >= 8 {
			if other, dup := seen[string(k.Bytes)]; dup {
				t.Fatalf("keys %s and %s have the same bits", other, k.ID)
			}
			seen[string(k.Bytes)] = k.ID
		}
		for _, c := range k.Bytes {
			ones += bits.OnesCount8(c)
		}
		total += 8 * size
	}
	if ones == 0 {
		t.Fatal("all keys are zero")
	}
	// A fair coin's share of ones lies within six standard deviations of
	// one half but for one time in ~10⁹.
	share, tol := float64(ones)/float64(total), 6*0.5/math.Sqrt(float64(total))
	if math.Abs(share-0.5) > tol {
		t.Errorf("%.4f of the key bits are ones; want 0.5 ± %.4f", share, tol)
	}
}

func (s *suite) status(t *testing.T) {
	p := s.pair(t)
	ra, rb := p.a.start(nil), p.b.start(nil)
	p.waitKeys(1, p.a, p.b)
	p.waitFor("both ends Connected", func() bool {
		return p.a.d.Status().Connected && p.b.d.Status().Connected
	})
	ra.stopCanceled()
	rb.stopCanceled()
	sa, sb := p.a.d.Status(), p.b.d.Status()
	if sa.LinkID == "" || sa.LinkID != sb.LinkID {
		t.Errorf("Status().LinkID is %q at a and %q at b, want one non-empty link ID", sa.LinkID, sb.LinkID)
	}
	p.checkConsistent()
}

func (s *suite) contextCancel(t *testing.T) {
	for _, which := range []string{"a", "b"} {
		// Alone: the other end never runs, so this one has nothing to do.
		t.Run("Alone/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			r := e.start(nil)
			r.stopCanceled()
		})
		t.Run("Deadline/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- e.d.Run(ctx, func(context.Context, []driver.Key) error { return nil }) }()
			select {
			case err := <-done:
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("Run returned %v when its deadline passed, want context.DeadlineExceeded", err)
				}
			case <-time.After(100*time.Millisecond + s.cfg.prompt):
				t.Fatal("Run did not return when its deadline passed")
			}
		})
		t.Run("Flowing/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			re, ro := e.start(nil), p.other(e).start(nil)
			p.waitKeys(s.cfg.flow/4, p.a, p.b)
			re.stopCanceled()
			ro.stopCanceled()
			p.checkConsistent()
		})
		t.Run("SinkBlocked/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			entered := make(chan struct{})
			var once sync.Once
			re := e.start(func(ctx context.Context, call int, _ []driver.Key) error {
				once.Do(func() { close(entered) })
				<-ctx.Done()
				return ctx.Err()
			})
			ro := p.other(e).start(nil)
			waitChan(t, entered, s.cfg.timeout, "the sink to be called")
			re.stopCanceled()
			ro.stopCanceled()
			p.checkConsistent()
		})
	}
}

func (s *suite) close(t *testing.T) {
	for _, which := range []string{"a", "b"} {
		t.Run("BeforeRun/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			if err := e.d.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			e.start(nil).expect(driver.ErrClosed)
		})
		t.Run("Alone/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			r := e.start(nil)
			if err := e.d.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			r.expect(driver.ErrClosed)
		})
		t.Run("Flowing/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			re, ro := e.start(nil), p.other(e).start(nil)
			p.waitKeys(s.cfg.flow/4, p.a, p.b)
			if err := e.d.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			re.expect(driver.ErrClosed)
			if err := e.d.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			// A closed driver stays closed.
			e.start(nil).expect(driver.ErrClosed)
			ro.running()
			ro.stopCanceled()
			p.checkConsistent()
		})
		t.Run("SinkBlocked/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			entered := make(chan struct{})
			var once sync.Once
			re := e.start(func(ctx context.Context, call int, _ []driver.Key) error {
				once.Do(func() { close(entered) })
				<-ctx.Done()
				return ctx.Err()
			})
			ro := p.other(e).start(nil)
			waitChan(t, entered, s.cfg.timeout, "the sink to be called")
			if err := e.d.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			re.expect(driver.ErrClosed)
			ro.stopCanceled()
		})
	}
}

func (s *suite) sinkError(t *testing.T) {
	for _, which := range []string{"a", "b"} {
		t.Run(which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			re := e.start(failOn(2))
			ro := p.other(e).start(nil)
			err := re.wait()
			if !errors.Is(err, errSink) {
				t.Fatalf("Run returned %v after its sink failed, want an error wrapping the sink's", err)
			}
			if errors.Is(err, driver.ErrClosed) || errors.Is(err, context.Canceled) {
				t.Fatalf("Run returned %v after its sink failed: not a sink error", err)
			}
			ro.stopCanceled()
			p.checkConsistent()
		})
	}
}

// failOn fails the sink's call number n.
func failOn(n int) hook {
	return func(_ context.Context, call int, _ []driver.Key) error {
		if call == n {
			return errSink
		}
		return nil
	}
}

// resume checks that a stopped end resumes after the last key its sink
// accepted: after every kind of stop, both ends still hold one sequence.
func (s *suite) resume(t *testing.T) {
	for _, which := range []string{"a", "b"} {
		t.Run("AfterSinkError/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			ro := p.other(e).start(nil)
			for i := range 3 {
				// Fail a different call each time: the first, in the
				// middle of a stream, after a quiet spell.
				re := e.start(failOn(1 + 2*i))
				if err := re.wait(); !errors.Is(err, errSink) {
					t.Fatalf("Run returned %v, want the sink's error", err)
				}
			}
			e.start(nil)
			p.waitKeys(s.cfg.flow, p.a, p.b)
			e.cur.stopCanceled()
			ro.stopCanceled()
			p.catchUp()
		})
		t.Run("AfterCancel/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			ro := p.other(e).start(nil)
			for range 3 {
				re := e.start(nil)
				p.waitKeys(e.count()+s.cfg.flow/10, e)
				re.stopCanceled()
			}
			e.start(nil)
			p.waitKeys(s.cfg.flow, p.a, p.b)
			e.cur.stopCanceled()
			ro.stopCanceled()
			p.catchUp()
		})
		t.Run("CancelInSink/"+which, func(t *testing.T) {
			// Run is cancelled while its sink is busy with a batch, which
			// the sink then refuses: that batch must come again.
			p := s.pair(t)
			e := pick(p, which)
			ro := p.other(e).start(nil)
			for range 3 {
				entered := make(chan struct{})
				re := e.start(func(ctx context.Context, call int, _ []driver.Key) error {
					if call == 2 {
						close(entered)
						<-ctx.Done()
						return ctx.Err()
					}
					return nil
				})
				waitChan(t, entered, s.cfg.timeout, "the sink's second call")
				re.stopCanceled()
			}
			e.start(nil)
			p.waitKeys(s.cfg.flow, p.a, p.b)
			e.cur.stopCanceled()
			ro.stopCanceled()
			p.catchUp()
		})
	}
	t.Run("BothEnds", func(t *testing.T) {
		p := s.pair(t)
		for range 3 {
			p.flow(s.cfg.flow / 4)
		}
		p.catchUp()
	})
}

// catchUp runs both ends once more until each holds more keys than either held
// before, so that keys still on their way at the last stop have arrived, and
// checks the two sequences. A key lost at one end shows as a mismatch.
func (p *pair) catchUp() {
	p.t.Helper()
	p.flow(1)
	p.checkConsistent()
}

func (s *suite) backPressure(t *testing.T) {
	for _, which := range []string{"a", "b"} {
		t.Run("Blocked/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			entered, release := make(chan struct{}), make(chan struct{})
			re := e.start(func(ctx context.Context, call int, _ []driver.Key) error {
				if call == 2 {
					close(entered)
					select {
					case <-release:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				return nil
			})
			ro := p.other(e).start(nil)
			waitChan(t, entered, s.cfg.timeout, "the sink's second call")
			// Watch the other end while this sink is stuck: it may finish
			// the batch in hand, but must not run away (MaxLead).
			before := p.other(e).count()
			time.Sleep(s.cfg.hold)
			p.checkLead()
			t.Logf("while end %s's sink was blocked for %v, end %s went from %d to %d keys", e.name, s.cfg.hold, p.other(e).name, before, p.other(e).count())
			close(release)
			p.waitKeys(s.cfg.flow, p.a, p.b)
			re.stopCanceled()
			ro.stopCanceled()
			p.catchUp()
		})
		t.Run("Slow/"+which, func(t *testing.T) {
			p := s.pair(t)
			e := pick(p, which)
			re := e.start(func(context.Context, int, []driver.Key) error {
				time.Sleep(5 * time.Millisecond)
				return nil
			})
			ro := p.other(e).start(nil)
			p.waitKeys(s.cfg.flow, p.a, p.b)
			re.stopCanceled()
			ro.stopCanceled()
			p.catchUp()
		})
	}
}

func pick(p *pair, which string) *end {
	if which == "a" {
		return p.a
	}
	return p.b
}

func waitChan(t testing.TB, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("gave up waiting for %s after %v", what, d)
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
