package stats

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/qkdnet/qkdnet/kmm/keystore"
)

// The Statistics Manager's rolling history (paper: Statistics Manager
// Element and Metric Store). Every interval the Recorder reads the Metric
// Store's counters and levels, turns them into per-interval figures (keys
// supplied and consumed per link, keys delivered per stream, rates, request
// latency) and appends them to the store, which keeps them for the
// retention. The samples survive a restart of the node; they hold counts
// and rates only.

// LinkSample is one link over one interval.
type LinkSample struct {
	Link string `json:"link"`
	// Supplied and Consumed are keys the driver supplied and the pool gave
	// to key streams during the interval.
	Supplied uint64 `json:"supplied"`
	Consumed uint64 `json:"consumed"`
	// Pool is the pool's level at the end of the interval.
	Pool uint64 `json:"pool"`
	// Rate is Supplied per second.
	Rate float64 `json:"rate"`
}

// StreamSample is one key stream over one interval.
type StreamSample struct {
	Stream string `json:"stream"`
	// Delivered is keys delivered to an SAE at this node during the
	// interval (to the master SAE, the slave SAE, or both when both sit here).
	Delivered     uint64  `json:"delivered"`
	DeliveredRate float64 `json:"delivered_rate"`
	// RequestedRate is the rate the stream's QoS asks for (keys/s).
	RequestedRate float64 `json:"requested_rate"`
	// Stored is the keys allocated and not yet delivered at the end.
	Stored uint64 `json:"stored"`
	// Requests served on the stream, and their latency in milliseconds.
	Requests    uint64  `json:"requests"`
	LatencyMean float64 `json:"latency_mean_ms"`
	LatencyMax  float64 `json:"latency_max_ms"`
}

// Sample is the node's statistics over one interval.
type Sample struct {
	At       time.Time      `json:"at"`
	Interval float64        `json:"interval_s"`
	Links    []LinkSample   `json:"links,omitempty"`
	Streams  []StreamSample `json:"streams,omitempty"`
}

// HistoryStore keeps the samples (kmm/keystore).
type HistoryStore interface {
	AppendHistory(at time.Time, data []byte, keep time.Duration) error
	History(since time.Time) ([]keystore.HistoryEntry, error)
}

// latencies accumulates the request latency of each stream between samples.
type latencies struct {
	mu sync.Mutex
	m  map[string]*latency
}

type latency struct {
	n        uint64
	sum, max time.Duration
}

// ObserveStream records one key request served on a stream and how long it
// took, for the stream's history.
func (s *Stats) ObserveStream(stream string, d time.Duration) {
	s.lat.mu.Lock()
	defer s.lat.mu.Unlock()
	if s.lat.m == nil {
		s.lat.m = map[string]*latency{}
	}
	l := s.lat.m[stream]
	if l == nil {
		l = &latency{}
		s.lat.m[stream] = l
	}
	l.n++
	l.sum += d
	l.max = max(l.max, d)
}

func (s *Stats) takeLatencies() map[string]*latency {
	s.lat.mu.Lock()
	defer s.lat.mu.Unlock()
	m := s.lat.m
	s.lat.m = nil
	return m
}

// Recorder appends a Sample to the store every interval.
type Recorder struct {
	stats  *Stats
	store  HistoryStore
	every  time.Duration
	keep   time.Duration
	logger *slog.Logger

	mu      sync.Mutex
	prev    map[string]uint64 // counters at the last sample
	prevAt  time.Time
	version uint64
}

// NewRecorder returns a recorder of s's statistics into store, one sample
// every interval, kept for retention.
func NewRecorder(s *Stats, store HistoryStore, interval, retention time.Duration, logger *slog.Logger) (*Recorder, error) {
	if interval <= 0 || retention < interval {
		return nil, fmt.Errorf("statistics history: interval %v must be positive and at most the retention %v", interval, retention)
	}
	return &Recorder{stats: s, store: store, every: interval, keep: retention, logger: logger}, nil
}

// Interval is the time between samples.
func (r *Recorder) Interval() time.Duration { return r.every }

// Run takes a baseline and then a sample every interval until ctx ends.
func (r *Recorder) Run(ctx context.Context) {
	r.Record(time.Now())
	t := time.NewTicker(r.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if err := r.Record(now); err != nil && ctx.Err() == nil {
				r.logger.WarnContext(ctx, "statistics sample not stored", "err", err)
			}
		}
	}
}

// Record takes a sample at now. The first call only takes the baseline the
// next one counts from.
func (r *Recorder) Record(now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.stats.src.Counters()
	lat := r.stats.takeLatencies()
	prev, prevAt := r.prev, r.prevAt
	r.prev, r.prevAt = cur, now
	if prev == nil {
		return nil
	}
	secs := now.Sub(prevAt).Seconds()
	if secs <= 0 {
		return nil
	}
	smp := Sample{At: now.UTC(), Interval: secs}
	delta := func(name string) uint64 {
		if c, p := cur[name], prev[name]; c > p {
			return c - p
		}
		return 0
	}
	links := r.stats.links()
	slices.Sort(links)
	for _, l := range slices.Compact(links) {
		ls := LinkSample{Link: l, Supplied: delta(keystore.LinkCounter(l, "supplied")), Consumed: delta(keystore.LinkCounter(l, "allocated")),
			Pool: uint64(max(0, r.stats.src.PoolCount(l)))}
		ls.Rate = float64(ls.Supplied) / secs
		smp.Links = append(smp.Links, ls)
	}
	streams := r.stats.src.Streams()
	slices.SortFunc(streams, func(a, b keystore.Stream) int { return strings.Compare(a.ID, b.ID) })
	for _, st := range streams {
		ss := StreamSample{Stream: st.ID, RequestedRate: float64(st.QoS.KeyRate),
			Delivered: delta(keystore.StreamCounter(st.ID, "delivered_enc")) + delta(keystore.StreamCounter(st.ID, "delivered_dec")),
			Stored:    uint64(max(0, r.stats.src.StreamCount(st.ID)))}
		ss.DeliveredRate = float64(ss.Delivered) / secs
		if l := lat[st.ID]; l != nil && l.n > 0 {
			ss.Requests = l.n
			ss.LatencyMean = float64(l.sum) / float64(l.n) / 1e6
			ss.LatencyMax = float64(l.max) / 1e6
		}
		smp.Streams = append(smp.Streams, ss)
	}
	b, err := json.Marshal(smp)
	if err != nil {
		return err
	}
	if err := r.store.AppendHistory(now, b, r.keep); err != nil {
		return err
	}
	r.version++
	return nil
}

// Version counts the samples stored since the recorder started, so readers
// can tell when there is a new one.
func (r *Recorder) Version() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.version
}

// Samples returns the samples taken at or after since, oldest first. A
// sample the store cannot decode is skipped (an older format), not fatal.
func (r *Recorder) Samples(since time.Time) ([]Sample, error) {
	entries, err := r.store.History(since)
	if err != nil {
		return nil, err
	}
	out := make([]Sample, 0, len(entries))
	for _, e := range entries {
		var s Sample
		if json.Unmarshal(e.Data, &s) != nil {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}
