package emulator_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/qkdnet/qkdnet/driver"
	"github.com/qkdnet/qkdnet/driver/drivertest"
	"github.com/qkdnet/qkdnet/driver/emulator"
	"github.com/qkdnet/qkdnet/driver/internal/testcerts"
	"github.com/qkdnet/qkdnet/driver/internal/testlog"
	"github.com/qkdnet/qkdnet/driver/internal/testrig"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// fast is a link quick enough for tests, in batches small enough that every
// test crosses many batch boundaries.
var fast = emulator.Config{KeyRate: 20000, KeyBytes: 32, MaxBatch: 64}

func conformanceOpts() []drivertest.Option {
	return []drivertest.Option{drivertest.KeyBytes(fast.KeyBytes), drivertest.MaxLead(fast.MaxBatch)}
}

func TestConformanceBufconn(t *testing.T) {
	drivertest.Run(t, func(t testing.TB) (driver.Driver, driver.Driver) {
		alice, conn := serveAlice(t, "A-B", fast, emulator.AllowInsecurePeer())
		bob := emulator.NewBob("A-B", conn, testlog.New(t), emulator.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
		t.Cleanup(func() { bob.Close() })
		return alice, bob
	}, conformanceOpts()...)
}

// TestConformanceMutualTLS runs the suite over TCP on 127.0.0.1 with mutual
// TLS: Alice is node A, Bob is node B, and Alice accepts only B.
func TestConformanceMutualTLS(t *testing.T) {
	drivertest.Run(t, func(t testing.TB) (driver.Driver, driver.Driver) {
		ca := testcerts.NewCA(t)
		logger := testlog.New(t)
		alice := emulator.NewAlice("A-B", fast, logger, emulator.WithPeer("B"))
		addr := testrig.ServeTLS(t, ca, testrig.Node("A"), alice.Register)
		conn := testrig.DialTLS(t, ca, ca.Issue(t, testrig.Node("B")), addr)
		bob := emulator.NewBob("A-B", conn, logger, emulator.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
		t.Cleanup(func() { alice.Close(); bob.Close() })
		return alice, bob
	}, conformanceOpts()...)
}

func exchange(t testing.TB, conn grpc.ClientConnInterface) (grpc.BidiStreamingClient[qkdv1.ExchangeRequest, qkdv1.ExchangeResponse], context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := qkdv1.NewEmulatedLinkServiceClient(conn).Exchange(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	return stream, cancel
}

// hello says hello for linkID and returns the status Alice answers with: OK
// if she accepted.
func hello(t testing.TB, stream grpc.BidiStreamingClient[qkdv1.ExchangeRequest, qkdv1.ExchangeResponse], linkID string) codes.Code {
	t.Helper()
	if err := stream.Send(&qkdv1.ExchangeRequest{LinkId: linkID}); err != nil && err != io.EOF {
		t.Fatalf("send hello: %v", err)
	}
	// On io.EOF the server ended the stream already; Recv says why.
	if md, _ := stream.Header(); md != nil {
		return codes.OK
	}
	_, err := stream.Recv()
	return status.Code(err)
}

// serveAlice serves a new Alice on an in-memory gRPC server and returns her and
// a connection to it.
func serveAlice(t testing.TB, linkID string, cfg emulator.Config, opts ...emulator.Option) (*emulator.Alice, *grpc.ClientConn) {
	t.Helper()
	alice := emulator.NewAlice(linkID, cfg, testlog.New(t), opts...)
	conn := testrig.ServeDial(t, alice.Register)
	t.Cleanup(func() { alice.Close() })
	return alice, conn
}

func TestHelloChecks(t *testing.T) {
	tests := []struct {
		desc   string
		opts   []emulator.Option
		linkID string
		want   codes.Code
	}{
		{desc: "accepted", opts: []emulator.Option{emulator.AllowInsecurePeer()}, linkID: "A-B", want: codes.OK},
		{desc: "unknown link", opts: []emulator.Option{emulator.AllowInsecurePeer()}, linkID: "A-C", want: codes.NotFound},
		{desc: "no link", opts: []emulator.Option{emulator.AllowInsecurePeer()}, linkID: "", want: codes.InvalidArgument},
		{desc: "no certificate, not allowed", linkID: "A-B", want: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, conn := serveAlice(t, "A-B", fast, tt.opts...)
			stream, _ := exchange(t, conn)
			if got := hello(t, stream, tt.linkID); got != tt.want {
				t.Fatalf("hello for %q: %v, want %v", tt.linkID, got, tt.want)
			}
		})
	}
}

// TestPeerIdentity checks who Alice accepts as Bob over mutual TLS.
func TestPeerIdentity(t *testing.T) {
	ca := testcerts.NewCA(t)
	tests := []struct {
		desc string
		peer string // WithPeer; "" for any node
		cert tls.Certificate
		want codes.Code
	}{
		{desc: "any node", cert: ca.Issue(t, testrig.Node("B")), want: codes.OK},
		{desc: "the peer node", peer: "B", cert: ca.Issue(t, testrig.Node("B")), want: codes.OK},
		{desc: "another node", peer: "B", cert: ca.Issue(t, testrig.Node("C")), want: codes.PermissionDenied},
		{desc: "an SAE", cert: ca.Issue(t, pki.Identity{Kind: pki.KindSAE, ID: "SAE_B"}), want: codes.PermissionDenied},
		{desc: "no identity", cert: ca.IssueURIs(t), want: codes.PermissionDenied},
		{desc: "malformed identity", cert: ca.IssueURIs(t, &url.URL{Scheme: "qkd", Host: "router", Path: "/B"}), want: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var opts []emulator.Option
			if tt.peer != "" {
				opts = append(opts, emulator.WithPeer(tt.peer))
			}
			alice := emulator.NewAlice("A-B", fast, testlog.New(t), opts...)
			t.Cleanup(func() { alice.Close() })
			addr := testrig.ServeTLS(t, ca, testrig.Node("A"), alice.Register)
			stream, _ := exchange(t, testrig.DialTLS(t, ca, tt.cert, addr))
			if got := hello(t, stream, "A-B"); got != tt.want {
				t.Fatalf("hello: %v, want %v", got, tt.want)
			}
		})
	}
}

// TestSecondBobReplacesFirst: a second Bob takes over the link, and Alice
// re-sends him the batch the first one never acknowledged, bit for bit.
func TestSecondBobReplacesFirst(t *testing.T) {
	alice, conn := serveAlice(t, "A-B", fast, emulator.AllowInsecurePeer())
	var got testrig.Collector
	testrig.Start(t, alice, got.Sink)

	first, _ := exchange(t, conn)
	if c := hello(t, first, "A-B"); c != codes.OK {
		t.Fatalf("first hello: %v", c)
	}
	b1, err := first.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// No acknowledgement: the batch stays outstanding.
	second, _ := exchange(t, conn)
	if c := hello(t, second, "A-B"); c != codes.OK {
		t.Fatalf("second hello: %v", c)
	}
	if _, err := first.Recv(); status.Code(err) != codes.Aborted {
		t.Fatalf("first stream after the second hello: %v, want Aborted", err)
	}
	b2, err := second.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if b2.GetBatch() != b1.GetBatch() || len(b2.GetKeys()) != len(b1.GetKeys()) {
		t.Fatalf("re-sent batch %d with %d keys, want batch %d with %d keys", b2.GetBatch(), len(b2.GetKeys()), b1.GetBatch(), len(b1.GetKeys()))
	}
	for i := range b1.GetKeys() {
		k1, k2 := b1.GetKeys()[i], b2.GetKeys()[i]
		if k1.GetKeyId() != k2.GetKeyId() || string(k1.GetKey()) != string(k2.GetKey()) {
			t.Fatalf("re-sent key %d differs", i)
		}
	}
	if got.Len() != 0 {
		t.Fatal("Alice's sink got keys Bob never acknowledged")
	}
	if err := second.Send(&qkdv1.ExchangeRequest{Ack: b2.GetBatch()}); err != nil {
		t.Fatal(err)
	}
	testrig.Eventually(t, "Alice's sink to get the batch", func() bool { return got.Len() >= len(b1.GetKeys()) })
	keys := got.Keys()[:len(b1.GetKeys())]
	for i, k := range keys {
		if k.ID != b1.GetKeys()[i].GetKeyId() || string(k.Bytes) != string(b1.GetKeys()[i].GetKey()) {
			t.Fatalf("Alice's key %d differs from what Bob got", i)
		}
	}
}

// lossyChannel is a client interceptor for Bob's connection that loses the
// acknowledgement of one batch (after Bob's sink stored it) by breaking the
// stream instead of sending it, and counts the batches Bob receives.
type lossyChannel struct {
	dropAck atomic.Uint64
	mu      sync.Mutex
	seen    map[uint64]int
}

func (l *lossyChannel) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		cancel()
		return nil, err
	}
	return &lossyStream{ClientStream: cs, l: l, cancel: cancel}, nil
}

type lossyStream struct {
	grpc.ClientStream
	l      *lossyChannel
	cancel context.CancelFunc
}

func (s *lossyStream) SendMsg(m any) error {
	if req, ok := m.(*qkdv1.ExchangeRequest); ok && req.GetAck() != 0 && s.l.dropAck.CompareAndSwap(req.GetAck(), 0) {
		s.cancel()
		return errors.New("test: the acknowledgement was lost")
	}
	return s.ClientStream.SendMsg(m)
}

func (s *lossyStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if resp, ok := m.(*qkdv1.ExchangeResponse); ok && err == nil {
		s.l.mu.Lock()
		s.l.seen[resp.GetBatch()]++
		s.l.mu.Unlock()
	}
	return err
}

// TestLostAckIsNotDeliveredTwice: when Bob's acknowledgement is lost, Alice
// re-sends the batch on the next connection and Bob recognises it.
func TestLostAckIsNotDeliveredTwice(t *testing.T) {
	for _, batch := range []uint64{1, 3} {
		lossy := &lossyChannel{seen: map[uint64]int{}}
		lossy.dropAck.Store(batch)
		alice := emulator.NewAlice("A-B", fast, testlog.New(t), emulator.AllowInsecurePeer())
		conn := testrig.ServeDial(t, alice.Register, grpc.WithStreamInterceptor(lossy.intercept))
		bob := emulator.NewBob("A-B", conn, testlog.New(t), emulator.WithBackoff(time.Millisecond, 10*time.Millisecond))

		var ka, kb testrig.Collector
		stopA, stopB := testrig.Start(t, alice, ka.Sink), testrig.Start(t, bob, kb.Sink)
		testrig.Eventually(t, "keys past the lost acknowledgement", func() bool { return ka.Len() > 5*fast.MaxBatch })
		stopA()
		stopB()
		testrig.SamePrefix(t, ka.Keys(), kb.Keys())
		lossy.mu.Lock()
		n := lossy.seen[batch]
		lossy.mu.Unlock()
		if n != 2 {
			t.Errorf("batch %d arrived %d times, want 2 (sent, then re-sent)", batch, n)
		}
		if s := bob.Status(); s.KeysDelivered != uint64(kb.Len()) {
			t.Errorf("Bob's KeysDelivered = %d, his sink has %d", s.KeysDelivered, kb.Len())
		}
		alice.Close()
		bob.Close()
	}
}

// TestBobReconnectsAfterServerRestart: Alice's gRPC server goes away and comes
// back; Bob reconnects by himself and no key is lost or repeated.
func TestBobReconnectsAfterServerRestart(t *testing.T) {
	alice := emulator.NewAlice("A-B", fast, testlog.New(t), emulator.AllowInsecurePeer())
	t.Cleanup(func() { alice.Close() })
	var cur atomic.Pointer[bufconn.Listener]
	serve := func() *grpc.Server {
		lis, srv := testrig.Serve(t, alice.Register)
		cur.Store(lis)
		return srv
	}
	srv := serve()
	conn := testrig.Dial(t, cur.Load)
	bob := emulator.NewBob("A-B", conn, testlog.New(t), emulator.WithBackoff(time.Millisecond, 10*time.Millisecond))
	t.Cleanup(func() { bob.Close() })

	var ka, kb testrig.Collector
	stopA, stopB := testrig.Start(t, alice, ka.Sink), testrig.Start(t, bob, kb.Sink)
	for i := range 3 {
		n := ka.Len()
		testrig.Eventually(t, "keys", func() bool { return ka.Len() > n+100 })
		srv.Stop()
		testrig.Eventually(t, "Bob to notice", func() bool { return !bob.Status().Connected })
		srv = serve()
		testrig.Eventually(t, "Bob to reconnect", func() bool { return bob.Status().Connected && alice.Status().Connected })
		t.Logf("restart %d: Alice has %d keys, Bob %d", i, ka.Len(), kb.Len())
	}
	n := ka.Len()
	testrig.Eventually(t, "keys after the last restart", func() bool { return ka.Len() > n+100 })
	stopA()
	stopB()
	srv.Stop()
	testrig.SamePrefix(t, ka.Keys(), kb.Keys())
	if d := kb.Len() - ka.Len(); d < 0 || d > fast.MaxBatch {
		t.Errorf("Bob has %d keys, Alice %d: want Bob ahead by at most one batch", kb.Len(), ka.Len())
	}
}

// fakeClock is a Clock that only moves when told to.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1e9, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{at: c.now.Add(d), ch: ch})
	return ch
}

// Advance moves the clock forward and fires the waits that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.waiters = slices.DeleteFunc(c.waiters, func(w fakeWaiter) bool {
		if w.at.After(c.now) {
			return false
		}
		w.ch <- c.now
		return true
	})
}

func (c *fakeClock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// rateRig is an Alice on a fake clock with a Bob, both running.
type rateRig struct {
	t      *testing.T
	clock  *fakeClock
	alice  *emulator.Alice
	bob    *emulator.Bob
	ka, kb testrig.Collector
}

func newRateRig(t *testing.T, cfg emulator.Config, startBob bool) *rateRig {
	r := &rateRig{t: t, clock: newFakeClock()}
	var conn *grpc.ClientConn
	r.alice, conn = serveAlice(t, "A-B", cfg, emulator.AllowInsecurePeer(), emulator.WithClock(r.clock))
	r.bob = emulator.NewBob("A-B", conn, testlog.New(t))
	t.Cleanup(func() { r.bob.Close() })
	testrig.Start(t, r.alice, r.ka.Sink)
	if startBob {
		r.startBob()
	}
	return r
}

func (r *rateRig) startBob() {
	testrig.Start(r.t, r.bob, r.kb.Sink)
	r.settle()
}

// settle waits until Alice waits on the clock again, with both sinks level.
func (r *rateRig) settle() {
	r.t.Helper()
	testrig.Eventually(r.t, "Alice to wait for key credit", func() bool {
		return r.clock.Waiters() == 1 && r.ka.Len() == r.kb.Len()
	})
}

// advance moves time by d and returns how many keys both ends then got.
func (r *rateRig) advance(d time.Duration) int {
	r.t.Helper()
	r.clock.Advance(d)
	r.settle()
	testrig.SamePrefix(r.t, r.ka.Keys(), r.kb.Keys())
	return r.ka.Len()
}

// TestKeyRate steps a fake clock and counts keys exactly.
func TestKeyRate(t *testing.T) {
	r := newRateRig(t, emulator.Config{KeyRate: 10}, true)
	for _, step := range []struct {
		d    time.Duration
		want int
	}{
		{0, 0},
		{99 * time.Millisecond, 0},
		{time.Millisecond, 1},
		{time.Second, 11},
		{250 * time.Millisecond, 13},
		{50 * time.Millisecond, 14},
		{time.Minute, 614},
	} {
		if got := r.advance(step.d); got != step.want {
			t.Fatalf("after another %v: %d keys, want %d", step.d, got, step.want)
		}
	}
	for _, k := range r.ka.Keys() {
		if len(k.Bytes) != emulator.DefaultKeyBytes {
			t.Fatalf("key of %d bytes, want the default %d", len(k.Bytes), emulator.DefaultKeyBytes)
		}
	}
}

// TestNoKeysWithoutBob: time passing without Bob yields no keys; the rate
// counts from his arrival.
func TestNoKeysWithoutBob(t *testing.T) {
	r := newRateRig(t, emulator.Config{KeyRate: 10}, false)
	r.clock.Advance(time.Hour)
	if r.clock.Waiters() != 0 || r.alice.Status().Connected {
		t.Fatal("Alice is waiting on the clock without Bob")
	}
	r.startBob()
	if got := r.advance(0); got != 0 {
		t.Fatalf("%d keys when Bob arrived, want 0", got)
	}
	if got := r.advance(100 * time.Millisecond); got != 1 {
		t.Fatalf("%d keys 100ms after Bob arrived, want 1", got)
	}
}

// TestBurstAfterStallIsBounded: however long Alice was held up, she then
// produces at most one batch plus 50 ms' worth of keys at once.
func TestBurstAfterStallIsBounded(t *testing.T) {
	r := newRateRig(t, emulator.Config{KeyRate: 100, MaxBatch: 5}, true)
	if got := r.advance(time.Hour); got != 10 {
		t.Fatalf("after an hour: %d keys, want 10 (5 + 100/s × 50ms)", got)
	}
	if got := r.advance(50 * time.Millisecond); got != 15 {
		t.Fatalf("50ms later: %d keys, want 15", got)
	}
}

// TestBlockedSinkStopsGeneration: while Alice's sink is blocked she generates
// nothing, however much time passes.
func TestBlockedSinkStopsGeneration(t *testing.T) {
	clock := newFakeClock()
	alice, conn := serveAlice(t, "A-B", emulator.Config{KeyRate: 1000, MaxBatch: 10}, emulator.AllowInsecurePeer(), emulator.WithClock(clock))
	bob := emulator.NewBob("A-B", conn, testlog.New(t))
	t.Cleanup(func() { bob.Close() })
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var ka, kb testrig.Collector
	testrig.Start(t, alice, func(ctx context.Context, keys []driver.Key) error {
		once.Do(func() { close(entered) })
		<-release
		return ka.Sink(ctx, keys)
	})
	testrig.Start(t, bob, kb.Sink)
	testrig.Eventually(t, "Alice to wait on the clock", func() bool { return clock.Waiters() == 1 })
	clock.Advance(time.Second)
	<-entered
	for range 100 {
		clock.Advance(time.Hour)
	}
	if kb.Len() != 10 || clock.Waiters() != 0 {
		t.Fatalf("while Alice's sink blocks: Bob has %d keys (want 10), %d waits on the clock (want 0)", kb.Len(), clock.Waiters())
	}
	close(release)
	// The stall is worth at most the module's buffer: one batch plus 50ms
	// of keys (10 + 50), of which 10 went out before the sink blocked.
	testrig.Eventually(t, "Alice to wait again", func() bool { return clock.Waiters() == 1 && ka.Len() == kb.Len() })
	if kb.Len() != 70 {
		t.Fatalf("Bob has %d keys after the stall, want 70", kb.Len())
	}
}

// TestAliceRestart: a new Alice process numbers batches from 1 again; Bob must
// not take her first batch for the one he stored last from the old Alice.
func TestAliceRestart(t *testing.T) {
	logger := testlog.New(t)
	servers := emulator.NewServer(logger)
	conn := testrig.ServeDial(t, servers.Register)
	bob := emulator.NewBob("A-B", conn, logger, emulator.WithBackoff(time.Millisecond, 10*time.Millisecond))
	t.Cleanup(func() { bob.Close() })
	var kb testrig.Collector
	testrig.Start(t, bob, kb.Sink)

	var alices [2]testrig.Collector
	for i := range alices {
		clock := newFakeClock()
		alice := emulator.NewAlice("A-B", emulator.Config{KeyRate: 10}, logger, emulator.AllowInsecurePeer(), emulator.WithClock(clock))
		if err := servers.Add(alice); err != nil {
			t.Fatal(err)
		}
		stop := testrig.Start(t, alice, alices[i].Sink)
		testrig.Eventually(t, "Bob to connect", func() bool { return clock.Waiters() == 1 })
		clock.Advance(time.Second) // exactly one batch of 10 keys: batch 1
		testrig.Eventually(t, "the batch at both ends", func() bool { return alices[i].Len() == 10 && kb.Len() == 10*(i+1) })
		stop()
		alice.Close()
		servers.Remove(alice)
	}
	want := append(alices[0].Keys(), alices[1].Keys()...)
	testrig.SamePrefix(t, want, kb.Keys())
	if kb.Len() != 20 {
		t.Fatalf("Bob has %d keys, want 20", kb.Len())
	}
}

// TestServerServesSeveralLinks: one gRPC server, two links where this node is
// Alice, each with its own Bob.
func TestServerServesSeveralLinks(t *testing.T) {
	logger := testlog.New(t)
	s := emulator.NewServer(logger)
	conn := testrig.ServeDial(t, s.Register)
	for _, link := range []string{"A-B", "A-C"} {
		alice := emulator.NewAlice(link, fast, logger, emulator.AllowInsecurePeer())
		if err := s.Add(alice); err != nil {
			t.Fatal(err)
		}
		if err := s.Add(emulator.NewAlice(link, fast, logger)); err == nil {
			t.Fatalf("a second Alice for link %s was accepted", link)
		}
		bob := emulator.NewBob(link, conn, logger)
		t.Cleanup(func() { alice.Close(); bob.Close() })
		var ka, kb testrig.Collector
		stopA, stopB := testrig.Start(t, alice, ka.Sink), testrig.Start(t, bob, kb.Sink)
		testrig.Eventually(t, "keys on link "+link, func() bool { return ka.Len() >= 100 })
		stopA()
		stopB()
		testrig.SamePrefix(t, ka.Keys(), kb.Keys())
	}
}

// TestLogsHoldNoKeyMaterial logs at debug level during a run and looks for
// every key's bits in every usual encoding.
func TestLogsHoldNoKeyMaterial(t *testing.T) {
	capture := testlog.NewCapture()
	logger := slog.New(capture)
	alice := emulator.NewAlice("A-B", fast, logger, emulator.AllowInsecurePeer())
	conn := testrig.ServeDial(t, alice.Register)
	bob := emulator.NewBob("A-B", conn, logger)
	var ka, kb testrig.Collector
	stopA, stopB := testrig.Start(t, alice, ka.Sink), testrig.Start(t, bob, kb.Sink)
	testrig.Eventually(t, "keys", func() bool { return ka.Len() >= 500 })
	stopA()
	stopB()
	alice.Close()
	bob.Close()
	out := capture.String()
	if !strings.Contains(out, "batch stored") {
		t.Fatalf("expected debug logs, got %q", out)
	}
	for _, k := range kb.Keys() {
		for _, enc := range []string{
			string(k.Bytes), hex.EncodeToString(k.Bytes), strings.ToUpper(hex.EncodeToString(k.Bytes)),
			base64.StdEncoding.EncodeToString(k.Bytes), base64.RawURLEncoding.EncodeToString(k.Bytes),
		} {
			if strings.Contains(out, enc) {
				t.Fatalf("key %s appears in the logs", k.ID)
			}
		}
	}
}

func TestRunTwiceAtOnce(t *testing.T) {
	alice, conn := serveAlice(t, "A-B", fast, emulator.AllowInsecurePeer())
	bob := emulator.NewBob("A-B", conn, testlog.New(t))
	t.Cleanup(func() { bob.Close() })
	var ka, kb testrig.Collector
	testrig.Start(t, alice, ka.Sink)
	testrig.Start(t, bob, kb.Sink)
	testrig.Eventually(t, "keys at both ends", func() bool { return ka.Len() > 0 && kb.Len() > 0 })
	// With a cancelled context, a Run that did start would return at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, d := range []driver.Driver{alice, bob} {
		if err := d.Run(ctx, kb.Sink); err == nil || errors.Is(err, driver.ErrClosed) || errors.Is(err, context.Canceled) {
			t.Errorf("a second Run while one is in progress returned %v, want a distinct error", err)
		}
	}
}
