// Package stats is the KMM's Statistics Manager: it turns the Metric Store's
// durable counters (kept by kmm/keystore in the same transactions as the key
// steps they count) and the live pool and stream sizes into Prometheus
// metrics and into the figures the ETSI 014 status reports.
package stats

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkdnet/qkdnet/kmm/keystore"
)

// Source is what the statistics are read from.
type Source interface {
	Counters() map[string]uint64
	PoolCount(link string) int
	StreamCount(streamID string) int
	Streams() []keystore.Stream
}

// Stats collects the KMM's statistics.
type Stats struct {
	node     string
	src      Source
	links    func() []string
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	linkKeys   *prometheus.Desc
	streamKeys *prometheus.Desc
	poolSize   *prometheus.Desc
	streamSize *prometheus.Desc

	lat latencies // per stream, for the history
}

// New returns the statistics of node, read from src; links lists the node's
// links (for pool gauges). Register it on a prometheus.Registerer.
func New(node string, src Source, links func() []string) *Stats {
	cl := prometheus.Labels{"node": node}
	return &Stats{
		node: node, src: src, links: links,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qkd_etsi014_requests_total", Help: "ETSI GS QKD 014 requests by method and HTTP status code.", ConstLabels: cl,
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "qkd_etsi014_request_duration_seconds", Help: "ETSI GS QKD 014 request handling time.", ConstLabels: cl,
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"method"}),
		linkKeys:   prometheus.NewDesc("qkd_kmm_link_keys_total", "Keys of a QKD link by event: supplied by the driver, allocated to streams, discarded (unknown to the peer), expired.", []string{"link", "event"}, cl),
		streamKeys: prometheus.NewDesc("qkd_kmm_stream_keys_total", "Keys of a key stream by event: allocated, delivered_enc (to the master SAE), delivered_dec (to the slave SAE), expired.", []string{"stream", "event"}, cl),
		poolSize:   prometheus.NewDesc("qkd_kmm_pool_keys", "Unallocated keys stored for a QKD link.", []string{"link"}, cl),
		streamSize: prometheus.NewDesc("qkd_kmm_stream_keys", "Allocated keys stored for a key stream, not yet delivered.", []string{"stream"}, cl),
	}
}

// Describe implements prometheus.Collector.
func (s *Stats) Describe(ch chan<- *prometheus.Desc) {
	s.requests.Describe(ch)
	s.latency.Describe(ch)
	ch <- s.linkKeys
	ch <- s.streamKeys
	ch <- s.poolSize
	ch <- s.streamSize
}

// Collect implements prometheus.Collector.
func (s *Stats) Collect(ch chan<- prometheus.Metric) {
	s.requests.Collect(ch)
	s.latency.Collect(ch)
	for name, v := range s.src.Counters() {
		scope, id, what, ok := keystore.ParseCounter(name)
		if !ok {
			continue
		}
		switch scope {
		case "link":
			ch <- prometheus.MustNewConstMetric(s.linkKeys, prometheus.CounterValue, float64(v), id, what)
		case "stream":
			ch <- prometheus.MustNewConstMetric(s.streamKeys, prometheus.CounterValue, float64(v), id, what)
		}
	}
	for _, l := range s.links() {
		ch <- prometheus.MustNewConstMetric(s.poolSize, prometheus.GaugeValue, float64(s.src.PoolCount(l)), l)
	}
	for _, st := range s.src.Streams() {
		ch <- prometheus.MustNewConstMetric(s.streamSize, prometheus.GaugeValue, float64(s.src.StreamCount(st.ID)), st.ID)
	}
}

// ObserveRequest records one ETSI 014 request.
func (s *Stats) ObserveRequest(method string, httpCode int, d time.Duration) {
	s.requests.WithLabelValues(method, itoa(httpCode)).Inc()
	s.latency.WithLabelValues(method).Observe(d.Seconds())
}

func itoa(n int) string {
	if n >= 100 && n < 1000 {
		return string([]byte{byte('0' + n/100), byte('0' + n/10%10), byte('0' + n%10)})
	}
	return "other"
}

// Snapshot is the statistics of one stream and its link, as the ETSI 014
// status extension reports them.
type Snapshot struct {
	Link   map[string]uint64 `json:"link"`
	Stream map[string]uint64 `json:"stream"`
	Pool   int               `json:"pool_keys"`
	Stored int               `json:"stream_keys"`
}

// For returns the statistics of a stream and the link it runs over.
func (s *Stats) For(link, stream string) Snapshot {
	snap := Snapshot{Link: map[string]uint64{}, Stream: map[string]uint64{}, Pool: s.src.PoolCount(link), Stored: s.src.StreamCount(stream)}
	for name, v := range s.src.Counters() {
		scope, id, what, ok := keystore.ParseCounter(name)
		switch {
		case !ok:
		case scope == "link" && id == link:
			snap.Link[what] = v
		case scope == "stream" && id == stream:
			snap.Stream[what] = v
		}
	}
	return snap
}
