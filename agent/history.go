package agent

import (
	"sync"
	"time"

	"github.com/openconfig/ygot/ygot"

	"github.com/qkdnet/qkdnet/kmm"
	"github.com/qkdnet/qkdnet/kmm/stats"
	"github.com/qkdnet/qkdnet/qkd015"
)

// nodeHistory serves the Statistics Manager's history (kept in the key
// store's Metric Store) to gNMI as the history lists of the node's links
// and applications (gnmiserver.HistorySource).
type nodeHistory struct {
	rec *stats.Recorder

	// The samples as last read from the store, and the recorder's version
	// then: every Get of a changed tree and every ON_CHANGE pass (each
	// second, as the live state moves) adds them, but they change only once
	// an interval.
	mu      sync.Mutex
	read    bool
	version uint64
	samples []stats.Sample
}

// cached returns the samples, reading the store only after a new one.
func (h *nodeHistory) cached() ([]stats.Sample, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if v := h.rec.Version(); !h.read || v != h.version {
		samples, err := h.rec.Samples(time.Time{})
		if err != nil {
			return nil, err
		}
		h.samples, h.version, h.read = samples, v, true
	}
	return h.samples, nil
}

// HistoryVersion implements gnmiserver.HistorySource.
func (h *nodeHistory) HistoryVersion() uint64 { return h.rec.Version() }

// AddHistory implements gnmiserver.HistorySource.
func (h *nodeHistory) AddHistory(_ string, t *qkd015.Node) error {
	samples, err := h.cached()
	if err != nil || len(samples) == 0 {
		return err
	}
	links := map[string]*qkd015.Link{} // by link name, as the KMM names links
	for _, ql := range qkd015.Links(t) {
		links[ql.GetLinkName()] = ql
	}
	apps := map[string]*qkd015.App{} // by the KMM's stream ID
	for _, qa := range qkd015.Apps(t) {
		master, ok1 := qkd015.SAEFromURI(qa.GetServerAppId())
		if !ok1 || len(qa.ClientAppId) == 0 {
			continue
		}
		if slave, ok2 := qkd015.SAEFromURI(qa.ClientAppId[0]); ok2 {
			apps[kmm.StreamID(master, slave)] = qa
		}
	}
	for _, smp := range samples {
		at := ygot.String(smp.At.UTC().Format(time.RFC3339Nano))
		iv := ygot.Uint32(uint32(smp.Interval + 0.5))
		for _, ls := range smp.Links {
			ql := links[ls.Link]
			if ql == nil {
				continue
			}
			s := ql.GetOrCreateHistory().GetOrCreateSample(*at)
			s.Interval, s.KeysSupplied, s.KeysConsumed, s.PoolKeys = iv, ygot.Uint64(ls.Supplied), ygot.Uint64(ls.Consumed), ygot.Uint64(ls.Pool)
			s.KeyRate = ygot.Float64(round3(ls.Rate))
		}
		// A rerouted stream's generations are one application: their
		// figures add up.
		merged := map[string]*stats.StreamSample{}
		var order []string
		for _, ss := range smp.Streams {
			base := kmm.BaseStreamID(ss.Stream)
			if apps[base] == nil {
				continue
			}
			m := merged[base]
			if m == nil {
				m = &stats.StreamSample{Stream: base}
				merged[base] = m
				order = append(order, base)
			}
			if n := m.Requests + ss.Requests; n > 0 {
				m.LatencyMean = (m.LatencyMean*float64(m.Requests) + ss.LatencyMean*float64(ss.Requests)) / float64(n)
			}
			m.Delivered += ss.Delivered
			m.Stored += ss.Stored
			m.Requests += ss.Requests
			m.DeliveredRate += ss.DeliveredRate
			m.RequestedRate = max(m.RequestedRate, ss.RequestedRate)
			m.LatencyMax = max(m.LatencyMax, ss.LatencyMax)
		}
		for _, base := range order {
			ss := merged[base]
			s := apps[base].GetOrCreateHistory().GetOrCreateSample(*at)
			s.Interval, s.KeysDelivered, s.KeysStored, s.Requests = iv, ygot.Uint64(ss.Delivered), ygot.Uint64(ss.Stored), ygot.Uint64(ss.Requests)
			s.DeliveredRate, s.RequestedRate = ygot.Float64(round3(ss.DeliveredRate)), ygot.Float64(round3(ss.RequestedRate))
			s.LatencyMean, s.LatencyMax = ygot.Float64(round3(ss.LatencyMean)), ygot.Float64(round3(ss.LatencyMax))
		}
	}
	return nil
}

// round3 keeps the three fraction digits of the YANG decimal64 leaves.
func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }
