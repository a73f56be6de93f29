package kmm

import (
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
)

// gather returns a node's metrics as `name{label="value",...}` → value
// (counters and gauges only).
func gather(t *testing.T, n *testNode) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(n.stats); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			sort.Strings(labels)
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// TestStatistics: every step of a key's life is one counter at the KMM that
// made it, and every ETSI 014 answer is counted by method and HTTP code.
func TestStatistics(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 10)
	got, err := enc(t, p.a, saeA, saeB, 3, 256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dec(t, p.b, saeB, saeA, keyIDs(got)[:2]...); err != nil {
		t.Fatal(err)
	}
	_, err = enc(t, p.a, saeA, saeB, 3, 1004)
	checkErr(t, err, codes.InvalidArgument, "size")
	_, err = enc(t, p.a, saeB, saeA, 1, 256)
	checkErr(t, err, codes.Unauthenticated, "")
	_, err = enc(t, p.a, saeA, saeB, 20, 256)
	checkErr(t, err, codes.Unavailable, "")
	_, err = dec(t, p.b, saeB, saeA, keyIDs(got)[0])
	checkErr(t, err, codes.InvalidArgument, "key_ID")

	const s = `stream="SAE_A->SAE_B"`
	tests := []struct {
		desc string
		node *testNode
		want map[string]float64
	}{
		{desc: "Master KMM", node: p.a, want: map[string]float64{
			`qkd_kmm_link_keys_total{event="supplied",link="L_AB",node="A"}`:      10,
			`qkd_kmm_link_keys_total{event="allocated",link="L_AB",node="A"}`:     10,
			`qkd_kmm_stream_keys_total{event="allocated",node="A",` + s + `}`:     10,
			`qkd_kmm_stream_keys_total{event="delivered_enc",node="A",` + s + `}`: 3,
			`qkd_kmm_pool_keys{link="L_AB",node="A"}`:                             0,
			`qkd_kmm_stream_keys{node="A",` + s + `}`:                             7,
			`qkd_etsi014_requests_total{code="200",method="enc_keys",node="A"}`:   1,
			`qkd_etsi014_requests_total{code="400",method="enc_keys",node="A"}`:   1,
			`qkd_etsi014_requests_total{code="401",method="enc_keys",node="A"}`:   1,
			`qkd_etsi014_requests_total{code="503",method="enc_keys",node="A"}`:   1,
		}},
		{desc: "Slave KMM", node: p.b, want: map[string]float64{
			`qkd_kmm_link_keys_total{event="supplied",link="L_AB",node="B"}`:      10,
			`qkd_kmm_link_keys_total{event="allocated",link="L_AB",node="B"}`:     10,
			`qkd_kmm_stream_keys_total{event="allocated",node="B",` + s + `}`:     10,
			`qkd_kmm_stream_keys_total{event="delivered_dec",node="B",` + s + `}`: 2,
			`qkd_kmm_pool_keys{link="L_AB",node="B"}`:                             0,
			`qkd_kmm_stream_keys{node="B",` + s + `}`:                             8,
			`qkd_etsi014_requests_total{code="200",method="dec_keys",node="B"}`:   1,
			`qkd_etsi014_requests_total{code="400",method="dec_keys",node="B"}`:   1,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			m := gather(t, tc.node)
			for k, v := range tc.want {
				if got, ok := m[k]; !ok || got != v {
					t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
				}
			}
		})
	}
}
