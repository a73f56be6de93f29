package agent

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/qkdnet/qkdnet/agent/ratelimit"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// saeStub answers every SAE call and counts them.
type saeStub struct {
	qkdv1.UnimplementedKeyServiceServer
	qkdv1.UnimplementedKeyStreamServiceServer
	qkdv1.UnimplementedKeySyncServiceServer
	calls  int
	served *qkdv1.KeyContainer // the last key container answered
}

func (s *saeStub) GetStatus(context.Context, *qkdv1.GetStatusRequest) (*qkdv1.Status, error) {
	s.calls++
	return &qkdv1.Status{}, nil
}

func (s *saeStub) GetKeyWithKeyIDs(context.Context, *qkdv1.GetKeyWithKeyIDsRequest) (*qkdv1.KeyContainer, error) {
	s.calls++
	s.served = &qkdv1.KeyContainer{Keys: []*qkdv1.Key{{KeyId: "k", Key: []byte{1, 2, 3}}}}
	return s.served, nil
}

func (s *saeStub) CloseStream(context.Context, *qkdv1.CloseStreamRequest) (*qkdv1.CloseStreamResponse, error) {
	s.calls++
	return &qkdv1.CloseStreamResponse{}, nil
}

func (s *saeStub) Allocate(context.Context, *qkdv1.AllocateRequest) (*qkdv1.AllocateResponse, error) {
	s.calls++
	return &qkdv1.AllocateResponse{}, nil
}

// TestSAELimitsOverGRPC runs the agent's limits on a real gRPC server (over
// bufconn; an interceptor stands in for mutual TLS and makes the caller the
// test's current identity), with a clock the test moves.
func TestSAELimitsOverGRPC(t *testing.T) {
	now := time.Unix(1000, 0)
	lim := ratelimit.New(10, 3).WithClock(func() time.Time { return now })
	caller := pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"}
	inject := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(pki.WithCaller(ctx, caller), req)
	}
	stub := &saeStub{}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(inject), grpc.MaxRecvMsgSize(maxGRPCMessage), grpc.ChainUnaryInterceptor(saeLimits(lim)), grpc.ForceServerCodecV2(newZeroingCodec()))
	qkdv1.RegisterKeyServiceServer(srv, stub)
	qkdv1.RegisterKeyStreamServiceServer(srv, stub)
	qkdv1.RegisterKeySyncServiceServer(srv, stub)
	lis := bufconn.Listen(1 << 20)
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient("passthrough:///agent", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	keys, streams, sync := qkdv1.NewKeyServiceClient(cc), qkdv1.NewKeyStreamServiceClient(cc), qkdv1.NewKeySyncServiceClient(cc)

	// The burst passes, across ETSI 014 and 004: one bucket per SAE.
	for i := range 3 {
		var err error
		if i == 2 {
			_, err = streams.CloseStream(ctx, &qkdv1.CloseStreamRequest{KeyStreamId: "x"})
		} else {
			_, err = keys.GetStatus(ctx, &qkdv1.GetStatusRequest{SlaveSaeId: "SAE_B"})
		}
		if err != nil {
			t.Fatalf("request %d of the burst: %v", i, err)
		}
	}
	for _, call := range []func() error{
		func() error { _, err := keys.GetStatus(ctx, &qkdv1.GetStatusRequest{SlaveSaeId: "SAE_B"}); return err },
		func() error {
			_, err := streams.CloseStream(ctx, &qkdv1.CloseStreamRequest{KeyStreamId: "x"})
			return err
		},
	} {
		err := call()
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "SAE_A is over its request limit") {
			t.Fatalf("past the burst: %v; want RESOURCE_EXHAUSTED naming the limit", err)
		}
	}
	// Another SAE has its own bucket; peer KMMs are not SAEs and not limited.
	caller = pki.Identity{Kind: pki.KindSAE, ID: "SAE_B"}
	if _, err := keys.GetStatus(ctx, &qkdv1.GetStatusRequest{SlaveSaeId: "SAE_A"}); err != nil {
		t.Fatalf("SAE_B: %v", err)
	}
	caller = pki.Identity{Kind: pki.KindNode, ID: "B"}
	for range 10 {
		if _, err := sync.Allocate(ctx, &qkdv1.AllocateRequest{}); err != nil {
			t.Fatalf("keysync from a node: %v", err)
		}
	}
	// Tokens come back with time.
	caller = pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"}
	now = now.Add(100 * time.Millisecond)
	if _, err := keys.GetStatus(ctx, &qkdv1.GetStatusRequest{SlaveSaeId: "SAE_B"}); err != nil {
		t.Fatalf("after 100 ms at 10/s: %v", err)
	}
	if stub.calls != 3+1+10+1 {
		t.Errorf("the service got %d calls, want %d", stub.calls, 15)
	}

	// Size: an SAE request over the REST body limit, and any message over
	// the server's limit, are refused before the service sees them.
	now = now.Add(time.Hour)
	before := stub.calls
	big := &qkdv1.GetKeyWithKeyIDsRequest{MasterSaeId: "SAE_B"}
	for range 4000 {
		big.KeyIds = append(big.KeyIds, &qkdv1.KeyID{KeyId: "00000000-0000-8000-8000-000000000000"})
	}
	if _, err := keys.GetKeyWithKeyIDs(ctx, big); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("dec_keys of %d key_IDs: %v; want RESOURCE_EXHAUSTED", len(big.KeyIds), err)
	}
	caller = pki.Identity{Kind: pki.KindNode, ID: "B"}
	huge := &qkdv1.AllocateRequest{BatchId: strings.Repeat("x", maxGRPCMessage+1)}
	if _, err := sync.Allocate(ctx, huge); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("keysync message of %d bytes: %v; want RESOURCE_EXHAUSTED", maxGRPCMessage+1, err)
	}
	// The largest legitimate dec_keys (1024 key_IDs) passes.
	caller = pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"}
	big.KeyIds = big.KeyIds[:1024]
	got, err := keys.GetKeyWithKeyIDs(ctx, big)
	if err != nil || len(got.GetKeys()) != 1 || string(got.GetKeys()[0].GetKey()) != "\x01\x02\x03" {
		t.Errorf("dec_keys of 1024 key_IDs: %v, %v", got, err)
	}
	// The server zeroed the plaintext the service handed it, after sending it.
	if k := stub.served.GetKeys()[0].GetKey(); string(k) != "\x00\x00\x00" {
		t.Errorf("the served key is still %v in the service's memory", k)
	}
	if stub.calls != before+1 {
		t.Errorf("the service got %d of the oversized calls", stub.calls-before-1)
	}
}

func TestSAELimiterFromConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg         *RateLimit
		rate        float64
		burst       int
		unlimited   bool
		description string
	}{
		{nil, ratelimit.DefaultRate, ratelimit.DefaultBurst, false, "unset: the defaults"},
		{&RateLimit{Burst: 7}, ratelimit.DefaultRate, 7, false, "burst only"},
		{&RateLimit{RequestsPerSecond: 50}, 50, ratelimit.DefaultBurst, false, "rate only"},
		{&RateLimit{RequestsPerSecond: -1}, 0, 0, true, "negative: off"},
	} {
		l := saeLimiter(tc.cfg)
		if (l == nil) != tc.unlimited || l.Rate() != tc.rate || l.Burst() != tc.burst {
			t.Errorf("%s: rate %v burst %v (nil %v)", tc.description, l.Rate(), l.Burst(), l == nil)
		}
	}
}
