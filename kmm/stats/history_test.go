package stats_test

import (
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/stats"
)

func TestRecorderSamplesIntervals(t *testing.T) {
	src := &fakeSource{
		counters: map[string]uint64{
			keystore.LinkCounter("L_AB", "supplied"):                1000,
			keystore.LinkCounter("L_AB", "allocated"):               400,
			keystore.StreamCounter("SAE_A->SAE_B", "delivered_enc"): 100,
		},
		pool:     map[string]int{"L_AB": 600},
		inStream: map[string]int{"SAE_A->SAE_B": 300},
		streams:  []keystore.Stream{{ID: "SAE_A->SAE_B", Link: "L_AB", QoS: keystore.QoS{KeyRate: 50}}},
	}
	s := stats.New("A", src, links("L_AB"))
	store, err := keystore.Open(t.TempDir(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := stats.NewRecorder(s, store, time.Minute, time.Second, nil); err == nil {
		t.Fatal("a retention shorter than the interval was accepted")
	}
	r, err := stats.NewRecorder(s, store, 10*time.Second, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := r.Record(t0); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.Samples(time.Time{}); len(got) != 0 {
		t.Fatalf("the baseline was stored as a sample: %+v", got)
	}
	// Ten seconds later: 500 keys supplied, 200 allocated, 80 delivered,
	// three requests on the stream.
	src.counters[keystore.LinkCounter("L_AB", "supplied")] += 500
	src.counters[keystore.LinkCounter("L_AB", "allocated")] += 200
	src.counters[keystore.StreamCounter("SAE_A->SAE_B", "delivered_enc")] += 80
	src.pool["L_AB"] = 900
	for _, d := range []time.Duration{time.Millisecond, 2 * time.Millisecond, 6 * time.Millisecond} {
		s.ObserveStream("SAE_A->SAE_B", d)
	}
	if err := r.Record(t0.Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got, err := r.Samples(time.Time{})
	if err != nil || len(got) != 1 {
		t.Fatalf("Samples = %+v, %v; want one", got, err)
	}
	smp := got[0]
	if !smp.At.Equal(t0.Add(10*time.Second)) || smp.Interval != 10 {
		t.Fatalf("sample at %v over %v s", smp.At, smp.Interval)
	}
	if len(smp.Links) != 1 || smp.Links[0] != (stats.LinkSample{Link: "L_AB", Supplied: 500, Consumed: 200, Pool: 900, Rate: 50}) {
		t.Fatalf("links = %+v", smp.Links)
	}
	want := stats.StreamSample{Stream: "SAE_A->SAE_B", Delivered: 80, DeliveredRate: 8, RequestedRate: 50, Stored: 300,
		Requests: 3, LatencyMean: 3, LatencyMax: 6}
	if len(smp.Streams) != 1 || smp.Streams[0] != want {
		t.Fatalf("streams = %+v, want %+v", smp.Streams, want)
	}
	// The latencies were taken: the next interval has no requests.
	if err := r.Record(t0.Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got, _ = r.Samples(t0.Add(15 * time.Second))
	if len(got) != 1 || got[0].Streams[0].Requests != 0 || got[0].Streams[0].Delivered != 0 || got[0].Links[0].Supplied != 0 {
		t.Fatalf("second interval = %+v", got)
	}
	if r.Version() != 2 {
		t.Fatalf("Version = %d after two samples", r.Version())
	}
}
