package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/qkdnet/qkdnet/etsi014client"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/testbed"
)

// benchLine is lineTopology with fast links and spare SAEs for 004.
func benchLine(pairs int) *testbed.Topology {
	top := lineTopology()
	for i := range top.Links {
		top.Links[i].KeyRate = 20000
	}
	for i := range pairs {
		top.SAEs = append(top.SAEs, testbed.TopoSAE{ID: fmt.Sprintf("SAE_A_%d", i), Node: "A"}, testbed.TopoSAE{ID: fmt.Sprintf("SAE_C_%d", i), Node: "C"})
	}
	return top
}

type run struct {
	keys    int
	elapsed time.Duration
	lat     []time.Duration // enc_keys + dec_keys, per request pair
}

func (r run) p(q float64) time.Duration {
	slices.Sort(r.lat)
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(q*float64(len(r.lat))))]
}

// drive runs workers that each get number keys with enc_keys at the master's
// KME and the same keys with dec_keys at the slave's, for d.
func drive(ctx context.Context, b *testing.B, m, s *etsi014client.Client, master, slave string, workers, number int, d time.Duration) run {
	var mu sync.Mutex
	var out run
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Since(start) < d {
				t0 := time.Now()
				kc, err := encKeys(ctx, m, slave, etsi014client.KeyRequest{Number: number})
				if err != nil {
					b.Error(err)
					return
				}
				ids := make([]string, len(kc.Keys))
				for i, k := range kc.Keys {
					ids[i] = k.KeyID
				}
				if _, err := decKeys(ctx, s, master, ids...); err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				out.keys += number
				out.lat = append(out.lat, time.Since(t0))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	out.elapsed = time.Since(start)
	return out
}

// BenchmarkRelay compares, in one network, ETSI 014 between neighbours
// (SAE_A -> SAE_B, one hop) and through the trusted node B (SAE_A -> SAE_C,
// two hops): keys/s with 8 concurrent clients of 16 keys, and the latency of
// one key (enc_keys then dec_keys, one client) to get the added latency per
// hop; then the time from ETSI 004 OPEN_CONNECT (the opener's, and the
// peer's that completes the stream) to the first key at both ends of a
// two-hop stream. Run with -benchtime 1x:
//
//	go test -run XXX -bench Relay -benchtime 1x ./e2e/
func BenchmarkRelay(b *testing.B) {
	const pairs = 10
	n := upWith(b, testbed.Options{Topology: benchLine(pairs)})
	ctx := context.Background()
	a, bb, c := clientTB(b, n, "SAE_A"), clientTB(b, n, "SAE_B"), clientTB(b, n, "SAE_C")
	// Warm up both streams (opened through the controller).
	drive(ctx, b, a, bb, "SAE_A", "SAE_B", 1, 1, 200*time.Millisecond)
	drive(ctx, b, a, c, "SAE_A", "SAE_C", 1, 1, 200*time.Millisecond)
	b.ResetTimer()
	one := drive(ctx, b, a, bb, "SAE_A", "SAE_B", 8, 16, 4*time.Second)
	two := drive(ctx, b, a, c, "SAE_A", "SAE_C", 8, 16, 4*time.Second)
	lat1 := drive(ctx, b, a, bb, "SAE_A", "SAE_B", 1, 1, 2*time.Second)
	lat2 := drive(ctx, b, a, c, "SAE_A", "SAE_C", 1, 1, 2*time.Second)
	rate := func(r run) float64 { return float64(r.keys) / r.elapsed.Seconds() }
	b.ReportMetric(rate(one), "1hop-keys/s")
	b.ReportMetric(rate(two), "2hop-keys/s")
	b.ReportMetric(float64(one.p(0.99).Microseconds())/1000, "1hop-p99-ms")
	b.ReportMetric(float64(two.p(0.99).Microseconds())/1000, "2hop-p99-ms")
	b.ReportMetric(float64(lat1.p(0.5).Microseconds())/1000, "1hop-1key-p50-ms")
	b.ReportMetric(float64(lat2.p(0.5).Microseconds())/1000, "2hop-1key-p50-ms")
	b.ReportMetric(float64((lat2.p(0.5)-lat1.p(0.5)).Microseconds())/1000, "added-per-hop-p50-ms")

	// OPEN_CONNECT to the first key at both ends, over two hops, on an
	// otherwise idle network: each new stream first waits for the one
	// before to have filled its buffers (a stream's buffer fill is the
	// work of several seconds of the links' keys after the load above).
	var firstA, firstC, fromJoin, masterOpen, slaveOpen []time.Duration
	time.Sleep(3 * time.Second)
	for i := range pairs {
		time.Sleep(time.Second)
		ma, mc := fmt.Sprintf("SAE_A_%d", i), fmt.Sprintf("SAE_C_%d", i)
		ka, kc := ksClientTB(b, n, ma), ksClientTB(b, n, mc)
		t0 := time.Now()
		open, err := ka.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri(ma), Destination: uri(mc), Qos: &qkdv1.KeyStreamQoS{KeyChunkSize: 32, Timeout: 5000}})
		if err != nil {
			b.Fatal(err)
		}
		tj := time.Now()
		masterOpen = append(masterOpen, tj.Sub(t0))
		if _, err := kc.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri(mc), Destination: uri(ma), KeyStreamId: open.GetKeyStreamId(), Qos: &qkdv1.KeyStreamQoS{Timeout: 5000}}); err != nil {
			b.Fatal(err)
		}
		slaveOpen = append(slaveOpen, time.Since(tj))
		var wg sync.WaitGroup
		for _, side := range []struct {
			cl  qkdv1.KeyStreamServiceClient
			out *[]time.Duration
		}{{ka, &firstA}, {kc, &firstC}} {
			wg.Go(func() {
				r, err := side.cl.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: open.GetKeyStreamId(), Index: proto.Uint32(0), MetadataSize: 256})
				if err != nil || r.GetStatus() != 0 {
					b.Errorf("first GET_KEY: %v %v", r, err)
					return
				}
				*side.out = append(*side.out, time.Since(t0))
			})
		}
		wg.Wait()
		fromJoin = append(fromJoin, time.Since(tj))
	}
	slices.Sort(firstA)
	slices.Sort(firstC)
	slices.Sort(masterOpen)
	slices.Sort(slaveOpen)
	if len(masterOpen) > 0 {
		b.ReportMetric(float64(masterOpen[len(masterOpen)/2].Microseconds())/1000, "004-open-master-p50-ms")
		b.ReportMetric(float64(slaveOpen[len(slaveOpen)/2].Microseconds())/1000, "004-open-slave-p50-ms")
	}
	if len(firstA) > 0 && len(firstC) > 0 {
		b.ReportMetric(float64(firstA[len(firstA)/2].Microseconds())/1000, "004-first-key-master-p50-ms")
		b.ReportMetric(float64(firstC[len(firstC)/2].Microseconds())/1000, "004-first-key-slave-p50-ms")
		b.ReportMetric(float64(max(firstA[len(firstA)-1], firstC[len(firstC)-1]).Microseconds())/1000, "004-first-key-max-ms")
		slices.Sort(fromJoin)
		b.ReportMetric(float64(fromJoin[len(fromJoin)/2].Microseconds())/1000, "004-peer-open-to-both-keys-p50-ms")
	}
}
