package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// loadConfig is what one run measures.
type loadConfig struct {
	pairs    []pairClients
	workers  int
	number   int // keys per enc_keys request
	size     int // bits per key
	warmup   time.Duration
	duration time.Duration // measured time; with requests > 0, a cap
	requests int64         // measured enc/dec cycles; 0 means run for duration
	single   time.Duration // single-key phase (number=1, one worker); 0 skips it
	timeout  time.Duration // per request
	log      io.Writer     // mismatch reports and other diagnostics
}

// pairClients is a pair with the clients of its two SAEs.
type pairClients struct {
	pair
	enc *saeClient // the master SAE at its KMM
	dec *saeClient // the slave SAE at its KMM
}

// results is everything a run reports.
type results struct {
	Protocol    string
	Pairs       int
	Workers     int
	Number      int
	Size        int
	Warmup      time.Duration
	Measured    time.Duration // wall time of the measured window
	Interrupted bool

	Keys   int64 // keys delivered by enc_keys, fetched by dec_keys, and equal
	Cycles int64 // enc_keys + dec_keys rounds that ended with equal keys
	EncOK  int64 // 200 answers to enc_keys in the window
	DecOK  int64

	Enc, Dec             histogram // latency of 200 answers, measured window
	EncSingle, DecSingle histogram // the single-key phase
	SingleFor            time.Duration

	NotEnough  int64            // 503 "not enough keys" answers, retried
	Errors     map[string]int64 // by kind ("enc_keys HTTP 400", "timeout", ...)
	Mismatches int64            // keys whose bits differ between enc and dec
}

// OK is the exit status: every key matched, no request failed, and the main
// phase completed at least one cycle. An empty single-key phase (a slow link
// that had no key for it) shows in the report but does not fail the run.
func (r *results) OK() bool {
	return r.Mismatches == 0 && len(r.Errors) == 0 && r.Cycles > 0
}

// KeysPerSecond is end-to-end throughput: matched keys over wall time.
func (r *results) KeysPerSecond() float64 { return perSecond(r.Keys, r.Measured) }

// RequestsPerSecond counts successful enc_keys and dec_keys requests.
func (r *results) RequestsPerSecond() float64 { return perSecond(r.EncOK+r.DecOK, r.Measured) }

func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// phase is one stretch of load with one request shape.
type phase struct {
	number      int
	measureFrom time.Time // cycles that start earlier are warmup
	stopAt      time.Time // no cycle starts at or after this
	maxCycles   int64     // measured cycles to run; 0 means until stopAt
	claimed     atomic.Int64
}

// workerStats is one worker's tally; workers never share one, so the hot
// path takes no lock, and the tallies are merged when the phase ends.
type workerStats struct {
	enc, dec     histogram
	encOK, decOK int64
	keys, cycles int64
	notEnough    int64
	errors       map[string]int64
	mismatches   int64
	proto        string
}

func (s *workerStats) fail(kind string) {
	if s.errors == nil {
		s.errors = map[string]int64{}
	}
	s.errors[kind]++
}

type outcome int

const (
	done    outcome = iota // keys matched, or the cycle failed and is over
	retry                  // not enough keys: try the same cycle again shortly
	stopped                // the run is over
)

// runner drives the load; mismatchLogs bounds how many mismatches are
// described in the log.
type runner struct {
	cfg          loadConfig
	mismatchLogs atomic.Int64
	logMu        sync.Mutex // serialises writes to cfg.log, which need not be safe for concurrent use
}

// run runs the main phase and then the single-key phase, and returns what
// they measured. It returns early, with what it has, when ctx ends.
func run(ctx context.Context, cfg loadConfig) *results {
	r := &runner{cfg: cfg}
	res := &results{
		Pairs: len(cfg.pairs), Workers: cfg.workers, Number: cfg.number, Size: cfg.size,
		Warmup: cfg.warmup, Errors: map[string]int64{},
	}

	start := time.Now()
	ph := &phase{number: cfg.number, measureFrom: start.Add(cfg.warmup), stopAt: start.Add(cfg.warmup + cfg.duration), maxCycles: cfg.requests}
	stats := r.runPhase(ctx, ph, cfg.workers)
	end := time.Now()
	if end.After(ph.stopAt) {
		end = ph.stopAt
	}
	res.Measured = max(0, end.Sub(ph.measureFrom))
	for _, s := range stats {
		res.Enc.merge(&s.enc)
		res.Dec.merge(&s.dec)
		res.EncOK += s.encOK
		res.DecOK += s.decOK
		res.Keys += s.keys
		res.Cycles += s.cycles
		res.add(s)
	}

	if cfg.single > 0 && ctx.Err() == nil {
		now := time.Now()
		sp := &phase{number: 1, measureFrom: now, stopAt: now.Add(cfg.single)}
		res.SingleFor = cfg.single
		for _, s := range r.runPhase(ctx, sp, 1) {
			res.EncSingle.merge(&s.enc)
			res.DecSingle.merge(&s.dec)
			res.add(s)
		}
	}
	res.Interrupted = ctx.Err() != nil
	return res
}

func (res *results) add(s *workerStats) {
	res.NotEnough += s.notEnough
	res.Mismatches += s.mismatches
	for k, v := range s.errors {
		res.Errors[k] += v
	}
	if res.Protocol == "" {
		res.Protocol = s.proto
	}
}

// runPhase runs n workers until the phase ends and returns their stats.
// Cycles in flight at stopAt may finish (so the keys they reserved are
// fetched), but only within a grace period: the run's length stays bounded.
func (r *runner) runPhase(ctx context.Context, ph *phase, n int) []*workerStats {
	grace := 2*r.cfg.timeout + time.Second
	ctx, cancel := context.WithDeadline(ctx, ph.stopAt.Add(grace))
	defer cancel()
	stats := make([]*workerStats, n)
	var wg sync.WaitGroup
	for i := range n {
		stats[i] = &workerStats{}
		pc := &r.cfg.pairs[pairOf(i, len(r.cfg.pairs))]
		wg.Go(func() { r.work(ctx, ph, pc, stats[i]) })
	}
	wg.Wait()
	return stats
}

func (r *runner) work(ctx context.Context, ph *phase, pc *pairClients, st *workerStats) {
	var bo backoff
	slot := false // holds one of ph.maxCycles across retries
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(ph.stopAt) {
			return
		}
		measured := !now.Before(ph.measureFrom)
		if measured && ph.maxCycles > 0 && !slot {
			if ph.claimed.Add(1) > ph.maxCycles {
				return
			}
			slot = true
		}
		switch o, ok := r.cycle(ctx, ph, pc, st, measured); o {
		case stopped:
			return
		case retry:
			sleep(ctx, bo.next())
		case done:
			slot = false
			if ok {
				bo.reset()
			} else {
				// An error that repeats (a 401 from a misconfigured SAE)
				// must not become a busy loop.
				sleep(ctx, bo.next())
			}
		}
	}
}

// cycle is one round: enc_keys at the master's KMM, dec_keys at the slave's
// with the key_IDs it returned, and a byte-for-byte comparison. ok is true
// when the keys matched.
func (r *runner) cycle(ctx context.Context, ph *phase, pc *pairClients, st *workerStats, measured bool) (o outcome, ok bool) {
	t0 := time.Now()
	sent, proto, err := pc.enc.encKeys(ctx, pc.Slave.SAEID, ph.number, r.cfg.size)
	t1 := time.Now()
	if st.proto == "" {
		st.proto = proto
	}
	if err != nil {
		return r.failed(ctx, st, err), false
	}
	defer zeroKeys(sent)
	if measured {
		st.enc.record(t1.Sub(t0))
		if !t1.After(ph.stopAt) {
			st.encOK++
		}
	}
	ids, err := checkIssued(sent, ph.number, r.cfg.size)
	if err != nil {
		st.fail(errorKind(err))
		return done, false
	}

	// The keys are now reserved for the slave: retry a 503 a few times
	// rather than leave them in the KMM unfetched.
	var bo backoff
	var got []key
	var t2, t3 time.Time
	for attempt := 0; ; attempt++ {
		t2 = time.Now()
		got, err = pc.dec.decKeys(ctx, pc.Master.SAEID, ids)
		t3 = time.Now()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return stopped, false
		}
		var ae *apiError
		if errors.As(err, &ae) && ae.code == http.StatusServiceUnavailable && attempt < 5 {
			if ae.notEnoughKeys() {
				st.notEnough++
			} else {
				st.fail(errorKind(err))
			}
			sleep(ctx, bo.next())
			continue
		}
		st.fail(errorKind(err))
		return done, false
	}
	defer zeroKeys(got)
	if measured {
		st.dec.record(t3.Sub(t2))
		if !t3.After(ph.stopAt) {
			st.decOK++
		}
	}
	if bad := r.compare(pc, sent, got); bad > 0 {
		st.mismatches += int64(bad)
		return done, false
	}
	if measured && !t3.After(ph.stopAt) {
		st.keys += int64(len(sent))
		st.cycles++
	}
	return done, true
}

// failed counts a failed enc_keys and says what to do next.
func (r *runner) failed(ctx context.Context, st *workerStats, err error) outcome {
	if ctx.Err() != nil {
		return stopped // the run ended under the request; not the KMM's fault
	}
	var ae *apiError
	if errors.As(err, &ae) && ae.notEnoughKeys() {
		st.notEnough++
		return retry
	}
	st.fail(errorKind(err))
	return done
}

// checkIssued checks an enc_keys answer against the request and returns its
// key_IDs.
func checkIssued(keys []key, number, size int) ([]string, error) {
	if len(keys) != number {
		return nil, &badResponse{op: "enc_keys", why: fmt.Sprintf("%d keys, asked for %d", len(keys), number)}
	}
	ids := make([]string, len(keys))
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		switch {
		case k.KeyID == "":
			return nil, &badResponse{op: "enc_keys", why: "a key without key_ID"}
		case seen[k.KeyID]:
			return nil, &badResponse{op: "enc_keys", why: "key_ID " + k.KeyID + " twice"}
		case len(k.Key)*8 != size:
			return nil, &badResponse{op: "enc_keys", why: fmt.Sprintf("key %s has %d bits, asked for %d", k.KeyID, len(k.Key)*8, size)}
		}
		seen[k.KeyID] = true
		ids[i] = k.KeyID
	}
	return ids, nil
}

// maxMismatchLogs bounds the mismatch descriptions written to the log.
const maxMismatchLogs = 10

// compare counts the keys that enc_keys and dec_keys disagree on: bits that
// differ, keys dec_keys left out, and keys it added or repeated. Each is
// described (by key_ID, never by its bits) in the log.
func (r *runner) compare(pc *pairClients, sent, got []key) int {
	want := make(map[string][]byte, len(sent))
	for _, k := range sent {
		want[k.KeyID] = k.Key
	}
	bad := 0
	report := func(id, why string) {
		bad++
		if r.mismatchLogs.Add(1) <= maxMismatchLogs && r.cfg.log != nil {
			r.logMu.Lock()
			fmt.Fprintf(r.cfg.log, "qkdload: MISMATCH %s key_ID %s: %s\n", pc.pair, id, why)
			r.logMu.Unlock()
		}
	}
	for _, k := range got {
		w, ok := want[k.KeyID]
		switch {
		case !ok:
			report(k.KeyID, "returned by dec_keys but not asked for, or returned twice")
			continue
		case !bytes.Equal(w, k.Key):
			report(k.KeyID, "bits differ between enc_keys and dec_keys")
		}
		delete(want, k.KeyID)
	}
	for id := range want {
		report(id, "missing from dec_keys")
	}
	return bad
}

func zeroKeys(keys []key) {
	for i := range keys {
		clear(keys[i].Key)
	}
}

// backoff is a short, jittered, doubling delay: 1 ms up to 50 ms. Keys
// arrive continuously, so a starved worker should look again soon, but many
// starved workers should not poll in lockstep.
type backoff struct{ d time.Duration }

const (
	minBackoff = time.Millisecond
	maxBackoff = 50 * time.Millisecond
)

func (b *backoff) next() time.Duration {
	if b.d == 0 {
		b.d = minBackoff
	} else {
		b.d = min(2*b.d, maxBackoff)
	}
	return b.d/2 + rand.N(b.d/2+1)
}

func (b *backoff) reset() { b.d = 0 }

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
