package controller_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/qkdnet/qkdnet/controller/controllertest"
	"github.com/qkdnet/qkdnet/controller/ctlclient"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// lightAgent is the least an agent does for the controller: hold a Session
// and acknowledge every push, remembering the newest version it got.
type lightAgent struct {
	name    string
	version atomic.Uint64
	pushes  atomic.Int64
}

func (a *lightAgent) run(ctx context.Context, cl *ctlclient.Client) {
	for ctx.Err() == nil {
		cl.Stream(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
			s, err := ctlclient.Controller(cc).Session(ctx)
			if err != nil {
				return err
			}
			if err := s.Send(&qkdv1.SessionRequest{Msg: &qkdv1.SessionRequest_Hello{Hello: &qkdv1.SessionHello{Node: a.name}}}); err != nil {
				return err
			}
			for {
				p, err := s.Recv()
				if err != nil {
					return err
				}
				a.pushes.Add(1)
				a.version.Store(p.GetConfigVersion())
				if err := s.Send(&qkdv1.SessionRequest{Msg: &qkdv1.SessionRequest_Ack{Ack: &qkdv1.ConfigAck{ConfigVersion: p.GetConfigVersion()}}}); err != nil {
					return err
				}
			}
		})
	}
}

// BenchmarkPush100 measures how long a change takes to reach 100 agents: in
// each round every one of 100 nodes gets a configuration change (a new SAE,
// 100 writes committed through a 3-replica Raft cluster at once), and the
// round ends when every agent has received the push that carries its
// change. Agents are in-process Session clients, each on its own mutual-TLS
// connection.
func BenchmarkPush100(b *testing.B) {
	const nodes = 100
	c := controllertest.Start(b, 3)
	ops, err := ctlclient.New(c.Addrs(), c.ClientTLS(operator))
	if err != nil {
		b.Fatal(err)
	}
	defer ops.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	do := func(f func(context.Context, qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error)) uint64 {
		var v uint64
		err := ops.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
			r, err := f(ctx, ctlclient.Network(cc))
			v = r.GetConfigVersion()
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		return v
	}
	agents := make([]*lightAgent, nodes)
	for i := range nodes {
		name := fmt.Sprintf("N%d", i)
		do(func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
			return n.AddNode(ctx, &qkdv1.AddNodeRequest{Name: name})
		})
		if i > 0 {
			do(func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
				return n.AddLink(ctx, &qkdv1.AddLinkRequest{Name: fmt.Sprintf("L%d", i), NodeA: fmt.Sprintf("N%d", i-1), NodeB: name})
			})
		}
		cl, err := ctlclient.New(c.Addrs(), c.ClientTLS(pki.Identity{Kind: pki.KindNode, ID: name}))
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		agents[i] = &lightAgent{name: name}
		go agents[i].run(ctx, cl)
	}
	waitAll := func(want []uint64) {
		deadline := time.Now().Add(30 * time.Second)
		for i, a := range agents {
			for a.version.Load() < want[i] {
				if time.Now().After(deadline) {
					b.Fatalf("agent %s at version %d, want %d", a.name, a.version.Load(), want[i])
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	waitAll(make([]uint64, nodes))
	var total time.Duration
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		start := time.Now()
		want := make([]uint64, nodes)
		var wg sync.WaitGroup
		for i := range nodes {
			wg.Go(func() {
				want[i] = do(func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.AddSAE(ctx, &qkdv1.AddSAERequest{SaeId: fmt.Sprintf("SAE_%d_%d", i, round), Node: fmt.Sprintf("N%d", i)})
				})
			})
		}
		wg.Wait()
		waitAll(want)
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/100-agent-change")
}
