package e2e

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/etsi014client"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/qkd015"
	"github.com/qkdnet/qkdnet/testbed"
)

// pairsTopology is two nodes joined by one fast link, with n SAEs on each.
func pairsTopology(n int) *testbed.Topology {
	top := &testbed.Topology{
		Nodes: []testbed.TopoNode{{ID: "A", KMEID: "KME_A"}, {ID: "B", KMEID: "KME_B"}},
		Links: []testbed.TopoLink{{ID: "AB", A: "A", B: "B", Master: "A", Kind: "DV-QKD", Driver: "emulator", KeyRate: 2000, KeyBytes: 32}},
	}
	for i := range n {
		top.SAEs = append(top.SAEs, testbed.TopoSAE{ID: fmt.Sprintf("SAE_A%d", i), Node: "A"}, testbed.TopoSAE{ID: fmt.Sprintf("SAE_B%d", i), Node: "B"})
	}
	return top
}

func network(t *testing.T, n *testbed.Network) *qkdv1.GetNetworkResponse {
	t.Helper()
	cl, err := n.ControllerClient()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out *qkdv1.GetNetworkResponse
	err = cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		out, err = ctlclient.Network(cc).GetNetwork(ctx, &qkdv1.GetNetworkRequest{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// openStream gets one key on a new stream master -> slave and the same key
// at the slave: the stream exists once both ends served it.
func openStream(ctx context.Context, m, s *etsi014client.Client, master, slave string) error {
	kc, err := encKeys(ctx, m, slave, etsi014client.KeyRequest{Number: 1})
	if err != nil {
		return fmt.Errorf("enc_keys %s->%s: %w", master, slave, err)
	}
	dc, err := s.DecKeys(ctx, master, kc.Keys[0].KeyID)
	if err != nil {
		return fmt.Errorf("dec_keys %s->%s: %w", master, slave, err)
	}
	if !bytes.Equal(dc.Keys[0].Bytes, kc.Keys[0].Bytes) {
		return fmt.Errorf("%s->%s: the ends disagree on key %s", master, slave, kc.Keys[0].KeyID)
	}
	return nil
}

// TestLeaderKilledWhileStreamsOpen SIGKILLs the controller's leader while
// SAEs open new key streams (each one an application the controller creates,
// commits and pushes), then checks that a new leader took over, the agents
// reconnected and converged, every acknowledged stream exists exactly once,
// and keys flow on old and new streams.
func TestLeaderKilledWhileStreamsOpen(t *testing.T) {
	const pairs = 6
	n := upWith(t, testbed.Options{Topology: pairsTopology(pairs)})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	clients := map[string]*etsi014client.Client{}
	for i := range pairs {
		for _, s := range []string{fmt.Sprintf("SAE_A%d", i), fmt.Sprintf("SAE_B%d", i)} {
			clients[s] = client(t, n, s)
		}
	}

	var (
		mu    sync.Mutex
		acked [][2]string
		fails []error
	)
	started := make(chan struct{}, pairs*pairs)
	var wg sync.WaitGroup
	for i := range pairs {
		wg.Go(func() {
			master := fmt.Sprintf("SAE_A%d", i)
			for j := range pairs {
				slave := fmt.Sprintf("SAE_B%d", j)
				err := openStream(ctx, clients[master], clients[slave], master, slave)
				mu.Lock()
				if err != nil {
					fails = append(fails, err)
				} else {
					acked = append(acked, [2]string{master, slave})
				}
				mu.Unlock()
				started <- struct{}{}
			}
		})
	}
	// Kill the leader once a few streams are open, while the rest are being
	// created.
	for range 4 {
		<-started
	}
	leader, err := n.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := n.KillController(leader); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	t.Logf("killed leader %s; %d streams opened in %v around the failover", leader, len(acked), time.Since(killed).Round(time.Millisecond))
	if len(fails) > 0 {
		t.Errorf("%d stream openings failed, first: %v", len(fails), fails[0])
	}

	next, err := n.Leader(ctx)
	if err != nil || next == leader {
		t.Fatalf("leader after the kill = %q, %v", next, err)
	}
	// A new stream after the failover, and keys on an old one.
	if err := openStream(ctx, clients["SAE_B0"], clients["SAE_A0"], "SAE_B0", "SAE_A0"); err != nil {
		t.Errorf("new stream after failover: %v", err)
	}
	if err := openStream(ctx, clients["SAE_A0"], clients["SAE_B0"], "SAE_A0", "SAE_B0"); err != nil {
		t.Errorf("old stream after failover: %v", err)
	}
	// The killed replica comes back and the agents run the newest config.
	if err := n.RestartController(ctx, leader); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	var net *qkdv1.GetNetworkResponse
	for {
		net = network(t, n)
		converged := true
		for _, nd := range net.GetNodes() {
			converged = converged && nd.GetConnected() && nd.GetAppliedVersion() > 0
		}
		if converged {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents did not reconnect: %v", net.GetNodes())
		}
		time.Sleep(100 * time.Millisecond)
	}

	t.Logf("network: %d nodes, %d links, %d apps, version %d", len(net.GetNodes()), len(net.GetLinks()), len(net.GetApplications()), net.GetConfigVersion())
	// Every acknowledged stream is an application, exactly once.
	count := map[string]int{}
	for _, a := range net.GetApplications() {
		count[a.GetAppId()]++
		if a.GetAppId() != qkd015.AppID(a.GetMasterSaeId(), a.GetSlaveSaeId()) {
			t.Errorf("application %s is not named after its SAE pair", a.GetAppId())
		}
	}
	for _, p := range append(acked, [2]string{"SAE_B0", "SAE_A0"}) {
		if c := count[qkd015.AppID(p[0], p[1])]; c != 1 {
			t.Errorf("stream %s -> %s: %d applications, want 1", p[0], p[1], c)
		}
	}
	if len(net.GetApplications()) != len(acked)+1 {
		t.Errorf("%d applications for %d acknowledged streams", len(net.GetApplications()), len(acked)+1)
	}
}

// BenchmarkFailover measures, over real processes, the time from a SIGKILL
// of the controller's leader until the next configuration change (a new SAE)
// is committed by the new leader and applied by the agent it is for. Run:
//
//	go test -run XXX -bench Failover -benchtime 10x ./e2e/
func BenchmarkFailover(b *testing.B) {
	n := upWith(b, testbed.Options{})
	ctx := context.Background()
	cl, err := n.ControllerClient()
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	var times []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		leader, err := n.Leader(ctx)
		if err != nil {
			b.Fatal(err)
		}
		killed := time.Now()
		if err := n.KillController(leader); err != nil {
			b.Fatal(err)
		}
		sae := fmt.Sprintf("SAE_F%d", i)
		var version uint64
		err = cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
			r, err := ctlclient.Network(cc).AddSAE(ctx, &qkdv1.AddSAERequest{SaeId: sae, Node: "B"})
			if err == nil {
				version = r.GetConfigVersion()
			}
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		// Pushed and applied: node B acknowledges a version at least as new.
		for {
			var applied uint64
			err := cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
				net, err := ctlclient.Network(cc).GetNetwork(ctx, &qkdv1.GetNetworkRequest{})
				for _, nd := range net.GetNodes() {
					if nd.GetName() == "B" {
						applied = nd.GetAppliedVersion()
					}
				}
				return err
			})
			if err == nil && applied >= version {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		times = append(times, time.Since(killed))
		b.StopTimer()
		if err := n.RestartController(ctx, leader); err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second) // let it rejoin before the next kill
		b.StartTimer()
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	q := func(p float64) time.Duration { return times[min(len(times)-1, int(p*float64(len(times))))] }
	b.ReportMetric(float64(q(0.5).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(q(0.99).Milliseconds()), "p99-ms")
	b.ReportMetric(float64(slices.Max(times).Milliseconds()), "max-ms")
}
