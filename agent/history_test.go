package agent

import (
	"testing"
	"time"

	"github.com/openconfig/ygot/ygot"

	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/stats"
	"github.com/qkdnet/qkdnet/qkd015"
)

// TestNodeHistory: the link's samples appear in the tree under its
// qkd_link, and a sample taken later is served (the cached samples are
// read again once the recorder has a new one).
func TestNodeHistory(t *testing.T) {
	store, err := keystore.Open(t.TempDir(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	rec, err := stats.NewRecorder(stats.New("A", store, func() []string { return []string{"FSO_AB"} }), store, time.Second, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &nodeHistory{rec: rec}
	tree := func() *qkd015.Node {
		n := &qkd015.Node{}
		l := n.GetOrCreateQkdLinks().GetOrCreateQkdLink(qkd015.LinkID("FSO_AB"))
		l.LinkName = ygot.String("FSO_AB")
		return n
	}
	samples := func() int {
		t.Helper()
		n := tree()
		if err := h.AddHistory("A", n); err != nil {
			t.Fatal(err)
		}
		return len(qkd015.Links(n)[qkd015.LinkID("FSO_AB")].GetHistory().Sample)
	}
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 2 {
		if err := rec.Record(t0.Add(time.Duration(i) * time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if got := samples(); got != 1 {
		t.Fatalf("%d samples after one interval, want 1", got)
	}
	if got := samples(); got != 1 {
		t.Fatalf("%d samples read again, want 1", got)
	}
	if err := rec.Record(t0.Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := samples(); got != 2 {
		t.Fatalf("%d samples after a second interval, want 2", got)
	}
}

// A rerouted application's generations are one application in its history:
// their figures add up in one sample; hop streams are left out.
func TestNodeHistoryAddsGenerations(t *testing.T) {
	store, err := keystore.Open(t.TempDir(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	rec, err := stats.NewRecorder(stats.New("A", store, func() []string { return nil }), store, time.Second, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	h := &nodeHistory{rec: rec, read: true, version: rec.Version(), samples: []stats.Sample{{At: at, Interval: 1, Streams: []stats.StreamSample{
		{Stream: "SAE_A->SAE_C", Delivered: 10, Stored: 1, Requests: 2, DeliveredRate: 10, LatencyMean: 4, LatencyMax: 5},
		{Stream: "SAE_A->SAE_C#1", Delivered: 100, Requests: 100},
		{Stream: "SAE_A->SAE_C@1", Delivered: 30, Stored: 7, Requests: 6, DeliveredRate: 30, LatencyMean: 2, LatencyMax: 3},
	}}}}
	n := &qkd015.Node{}
	qa := n.GetOrCreateQkdApplications().GetOrCreateQkdApp("app")
	qa.ServerAppId, qa.ClientAppId = ygot.String(qkd015.SAEURI("SAE_A")), []string{qkd015.SAEURI("SAE_C")}
	if err := h.AddHistory("A", n); err != nil {
		t.Fatal(err)
	}
	s := qa.GetHistory().GetSample(at.Format(time.RFC3339Nano))
	if s == nil || s.GetKeysDelivered() != 40 || s.GetKeysStored() != 8 || s.GetRequests() != 8 || s.GetDeliveredRate() != 40 ||
		s.GetLatencyMean() != 2.5 || s.GetLatencyMax() != 5 {
		t.Fatalf("sample %+v", s)
	}
}
