package stats_test

import (
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/stats"
)

// fakeSource is the Metric Store as stats reads it.
type fakeSource struct {
	counters map[string]uint64
	pool     map[string]int
	inStream map[string]int
	streams  []keystore.Stream
}

func (f *fakeSource) Counters() map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range f.counters {
		out[k] = v
	}
	return out
}
func (f *fakeSource) PoolCount(link string) int  { return f.pool[link] }
func (f *fakeSource) StreamCount(id string) int  { return f.inStream[id] }
func (f *fakeSource) Streams() []keystore.Stream { return f.streams }
func links(ids ...string) func() []string        { return func() []string { return ids } }
func streamsOf(ids ...string) (out []keystore.Stream) {
	for _, id := range ids {
		out = append(out, keystore.Stream{ID: id, Link: "L_AB"})
	}
	return out
}

// series flattens gathered metrics to `name{label="value",...}` → value.
// Histograms give their sample count under name_count.
func series(t *testing.T, s *stats.Stats) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(s); err != nil {
		t.Fatalf("Register: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+`"`+l.GetValue()+`"`)
			}
			sort.Strings(labels)
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[strings.Replace(key, "{", "_count{", 1)] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// TestCollect: the Metric Store's counters and the live pool and stream sizes
// become Prometheus metrics with the node, link/stream and event labels.
func TestCollect(t *testing.T) {
	tests := []struct {
		desc  string
		input *fakeSource
		links []string
		want  map[string]float64
	}{
		{
			desc:  "empty store",
			input: &fakeSource{},
			links: []string{"L_AB"},
			want:  map[string]float64{`qkd_kmm_pool_keys{link="L_AB",node="A"}`: 0},
		},
		{
			desc: "link and stream counters, pool and stream sizes",
			input: &fakeSource{
				counters: map[string]uint64{
					"link/L_AB/supplied":                100,
					"link/L_AB/allocated":               60,
					"link/L_AB/discarded":               2,
					"link/L_AC/expired":                 7,
					"stream/SAE_A->SAE_B/allocated":     60,
					"stream/SAE_A->SAE_B/delivered_enc": 10,
					"stream/SAE_A->SAE_B/delivered_dec": 9,
					"stream/SAE_B->SAE_A/expired":       1,
					"not-a-counter":                     5,
					"other/x/y":                         3,
					"link/no-what":                      4,
					"link/L/with/slashes/supplied":      8,
				},
				pool:     map[string]int{"L_AB": 38, "L_AC": 5},
				inStream: map[string]int{"SAE_A->SAE_B": 50, "SAE_B->SAE_A": 0},
				streams:  streamsOf("SAE_A->SAE_B", "SAE_B->SAE_A"),
			},
			links: []string{"L_AC", "L_AB"},
			want: map[string]float64{
				`qkd_kmm_link_keys_total{event="supplied",link="L_AB",node="A"}`:                  100,
				`qkd_kmm_link_keys_total{event="allocated",link="L_AB",node="A"}`:                 60,
				`qkd_kmm_link_keys_total{event="discarded",link="L_AB",node="A"}`:                 2,
				`qkd_kmm_link_keys_total{event="expired",link="L_AC",node="A"}`:                   7,
				`qkd_kmm_link_keys_total{event="supplied",link="L/with/slashes",node="A"}`:        8,
				`qkd_kmm_stream_keys_total{event="allocated",node="A",stream="SAE_A->SAE_B"}`:     60,
				`qkd_kmm_stream_keys_total{event="delivered_enc",node="A",stream="SAE_A->SAE_B"}`: 10,
				`qkd_kmm_stream_keys_total{event="delivered_dec",node="A",stream="SAE_A->SAE_B"}`: 9,
				`qkd_kmm_stream_keys_total{event="expired",node="A",stream="SAE_B->SAE_A"}`:       1,
				`qkd_kmm_pool_keys{link="L_AB",node="A"}`:                                         38,
				`qkd_kmm_pool_keys{link="L_AC",node="A"}`:                                         5,
				`qkd_kmm_stream_keys{node="A",stream="SAE_A->SAE_B"}`:                             50,
				`qkd_kmm_stream_keys{node="A",stream="SAE_B->SAE_A"}`:                             0,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got := series(t, stats.New("A", tc.input, links(tc.links...)))
			if !reflect.DeepEqual(got, tc.want) {
				for k, v := range tc.want {
					if g, ok := got[k]; !ok || g != v {
						t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
					}
				}
				for k, v := range got {
					if _, ok := tc.want[k]; !ok {
						t.Errorf("unexpected %s = %v", k, v)
					}
				}
			}
		})
	}
}

// TestObserveRequest: ETSI 014 requests are counted by method and HTTP code,
// and timed by method.
func TestObserveRequest(t *testing.T) {
	tests := []struct {
		desc  string
		calls []struct {
			method string
			code   int
		}
		want map[string]float64
	}{
		{
			desc: "codes and methods",
			calls: []struct {
				method string
				code   int
			}{{"enc_keys", http.StatusOK}, {"enc_keys", http.StatusOK}, {"enc_keys", http.StatusServiceUnavailable}, {"dec_keys", http.StatusBadRequest}, {"status", http.StatusUnauthorized}, {"status", 42}},
			want: map[string]float64{
				`qkd_etsi014_requests_total{code="200",method="enc_keys",node="A"}`:      2,
				`qkd_etsi014_requests_total{code="503",method="enc_keys",node="A"}`:      1,
				`qkd_etsi014_requests_total{code="400",method="dec_keys",node="A"}`:      1,
				`qkd_etsi014_requests_total{code="401",method="status",node="A"}`:        1,
				`qkd_etsi014_requests_total{code="other",method="status",node="A"}`:      1,
				`qkd_etsi014_request_duration_seconds_count{method="enc_keys",node="A"}`: 3,
				`qkd_etsi014_request_duration_seconds_count{method="dec_keys",node="A"}`: 1,
				`qkd_etsi014_request_duration_seconds_count{method="status",node="A"}`:   2,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			s := stats.New("A", &fakeSource{}, links())
			for _, c := range tc.calls {
				s.ObserveRequest(c.method, c.code, time.Millisecond)
			}
			got := series(t, s)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("series = %v\nwant %v", got, tc.want)
			}
		})
	}
}

// TestFor: the status extension's figures for one stream and its link.
func TestFor(t *testing.T) {
	src := &fakeSource{
		counters: map[string]uint64{
			"link/L_AB/supplied":                100,
			"link/L_AC/supplied":                50,
			"stream/SAE_A->SAE_B/allocated":     60,
			"stream/SAE_A->SAE_B/delivered_enc": 10,
			"stream/SAE_A->SAE_C/allocated":     3,
			"garbage":                           1,
		},
		pool:     map[string]int{"L_AB": 40},
		inStream: map[string]int{"SAE_A->SAE_B": 50},
	}
	tests := []struct {
		desc         string
		link, stream string
		want         stats.Snapshot
	}{
		{desc: "known stream", link: "L_AB", stream: "SAE_A->SAE_B", want: stats.Snapshot{
			Link:   map[string]uint64{"supplied": 100},
			Stream: map[string]uint64{"allocated": 60, "delivered_enc": 10},
			Pool:   40, Stored: 50,
		}},
		{desc: "unknown stream", link: "L_XY", stream: "x->y", want: stats.Snapshot{Link: map[string]uint64{}, Stream: map[string]uint64{}}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			if got := stats.New("A", src, links()).For(tc.link, tc.stream); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("For = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestLinks sorts without touching its input.
