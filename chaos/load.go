package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/qkdnet/qkdnet/etsi014client"
)

// window holds the latencies and counts of one time window (a minute in a
// soak).
type window struct {
	enc, dec         []time.Duration // successful requests only
	keys             int             // keys delivered by enc_keys
	encErrs, decErrs int
}

// meter is the load's statistics, by window since start.
type meter struct {
	mu    sync.Mutex
	start time.Time
	width time.Duration
	wins  []*window
	// errs counts failed requests by what they said (key_IDs and addresses
	// blanked), so a report says why requests failed, not just how often.
	errs map[string]int
}

func newMeter(width time.Duration) *meter {
	return &meter{start: time.Now(), width: width, errs: map[string]int{}}
}

var (
	uuidRE = regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`)
	addrRE = regexp.MustCompile(`127\.0\.0\.1:\d+`)
)

// errClass is err with what varies from request to request blanked.
func errClass(op string, err error) string {
	msg := err.Error()
	if e := (*etsi014client.Error)(nil); errors.As(err, &e) {
		msg = fmt.Sprintf("HTTP %d: %s", e.StatusCode, e.Message)
	}
	msg = addrRE.ReplaceAllString(uuidRE.ReplaceAllString(msg, "<key_ID>"), "<addr>")
	if len(msg) > 160 {
		msg = msg[:160] + "..."
	}
	return op + ": " + msg
}

func (m *meter) win(t time.Time) *window {
	i := max(0, int(t.Sub(m.start)/m.width))
	for len(m.wins) <= i {
		m.wins = append(m.wins, &window{})
	}
	return m.wins[i]
}

func (m *meter) enc(lat time.Duration, keys int) {
	m.mu.Lock()
	w := m.win(time.Now())
	w.enc = append(w.enc, lat)
	w.keys += keys
	m.mu.Unlock()
}

func (m *meter) dec(lat time.Duration) {
	m.mu.Lock()
	w := m.win(time.Now())
	w.dec = append(w.dec, lat)
	m.mu.Unlock()
}

func (m *meter) fail(enc bool, err error) {
	m.mu.Lock()
	op := "dec_keys"
	if enc {
		op = "enc_keys"
	}
	m.errs[errClass(op, err)]++
	w := m.win(time.Now())
	if enc {
		w.encErrs++
	} else {
		w.decErrs++
	}
	m.mu.Unlock()
}

// Window is the report of one window.
type Window struct {
	Start      time.Duration `json:"start"` // since the load began
	Length     time.Duration `json:"length"`
	Keys       int           `json:"keys"`
	KeysPerSec float64       `json:"keys_per_sec"`
	Enc        Percentiles   `json:"enc_keys"`
	Dec        Percentiles   `json:"dec_keys"`
	EncErrors  int           `json:"enc_errors"`
	DecErrors  int           `json:"dec_errors"`
}

// Percentiles of the latency of successful requests.
type Percentiles struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50"`
	P90 time.Duration `json:"p90"`
	P99 time.Duration `json:"p99"`
	Max time.Duration `json:"max"`
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return Percentiles{N: len(s), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: s[len(s)-1]}
}

// windows reports every window up to end; the last one may be partial.
func (m *meter) windows(end time.Time) []Window {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Window
	for i, w := range m.wins {
		ws := time.Duration(i) * m.width
		l := min(m.width, end.Sub(m.start)-ws)
		if l <= 0 {
			break
		}
		out = append(out, Window{Start: ws, Length: l, Keys: w.keys, KeysPerSec: float64(w.keys) / l.Seconds(),
			Enc: percentiles(w.enc), Dec: percentiles(w.dec), EncErrors: w.encErrs, DecErrors: w.decErrs})
	}
	return out
}

// worker is one SAE pair's loop: enc_keys at the master's KME, then
// dec_keys of the same key_IDs at the slave's, recording both in the ledger.
type worker struct {
	pair     Pair
	master   *etsi014client.Client
	slave    *etsi014client.Client
	intruder *etsi014client.Client // an SAE on the path that must not get the keys; may be nil
	intrSAE  string
	number   int
	ledger   *Ledger
	meter    *meter
}

// reqTimeout bounds one ETSI 014 request. Requests are not tied to the
// load's stop: cancelling a dec_keys mid-flight would make its keys
// "maybe delivered", which weakens the lost-key check.
const reqTimeout = 10 * time.Second

func (w *worker) run(stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), reqTimeout)
		kc, err := w.master.EncKeys(ctx, w.pair.Slave, etsi014client.KeyRequest{Number: w.number})
		cancel()
		if err != nil {
			// A 503 (no key yet, peer down) or a KME that is down: the
			// keys, if any were taken, never reached the SAE, so they are
			// not its to miss.
			w.meter.fail(true, err)
			pause(stop, 50*time.Millisecond)
			continue
		}
		w.meter.enc(time.Since(t0), len(kc.Keys))
		w.ledger.Enc(w.pair, kc)
		ids := make([]string, len(kc.Keys))
		for j, k := range kc.Keys {
			ids[j] = k.KeyID
		}
		kc.Zero()

		if w.intruder != nil && i%10 == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), reqTimeout)
			ic, err := w.intruder.DecKeys(ctx, w.pair.Master, ids...)
			cancel()
			if err == nil {
				w.ledger.Intruder(w.intrSAE, w.pair, ic)
				ic.Zero()
			}
		}

		dc, lat, err := decKeys(w.slave, w.pair.Master, ids, 5*time.Second)
		switch {
		case err == nil:
			w.meter.dec(lat)
			w.ledger.Dec(w.pair, ids, dc)
			dc.Zero()
		case etsi014client.StatusCode(err) == 0:
			// No answer: the KME may have delivered them.
			w.meter.fail(false, err)
			w.ledger.Inflight(ids)
		default:
			// An answer that refuses them (still on their way, KME
			// unavailable): the settle phase asks again.
			w.meter.fail(false, err)
		}
	}
}

// decKeys asks for ids, retrying while the KME answers 503 (a relayed key
// still on its way, a peer down) for up to patience. lat is the latency of
// the last request.
func decKeys(c *etsi014client.Client, master string, ids []string, patience time.Duration) (*etsi014client.KeyContainer, time.Duration, error) {
	deadline := time.Now().Add(patience)
	for {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), reqTimeout)
		dc, err := c.DecKeys(ctx, master, ids...)
		cancel()
		lat := time.Since(t0)
		if etsi014client.StatusCode(err) != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return dc, lat, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func pause(stop <-chan struct{}, d time.Duration) {
	select {
	case <-stop:
	case <-time.After(d):
	}
}

// ErrorCount is how many failed requests said one thing.
type ErrorCount struct {
	Error string `json:"error"`
	Count int    `json:"count"`
}

// errors returns the failure classes, most frequent first.
func (m *meter) errors() []ErrorCount {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ErrorCount
	for e, n := range m.errs {
		out = append(out, ErrorCount{Error: e, Count: n})
	}
	slices.SortFunc(out, func(a, b ErrorCount) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Error, b.Error)
	})
	return out
}
