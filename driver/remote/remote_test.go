package remote_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/driver"
	"github.com/qkdnet/qkdnet/driver/drivertest"
	"github.com/qkdnet/qkdnet/driver/emulator"
	"github.com/qkdnet/qkdnet/driver/internal/testcerts"
	"github.com/qkdnet/qkdnet/driver/internal/testlog"
	"github.com/qkdnet/qkdnet/driver/internal/testrig"
	"github.com/qkdnet/qkdnet/driver/remote"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

var fast = emulator.Config{KeyRate: 20000, KeyBytes: 32, MaxBatch: 64}

// rig is an emulated link whose two ends run in "driver processes" and push
// their keys to the agents of nodes A and B, all over bufconn: a and b are
// the links at the two agents.
type rig struct {
	alice *emulator.Alice
	bob   *emulator.Bob
	a, b  driver.Driver
}

func newRig(t testing.TB, dialA, dialB []grpc.DialOption) *rig {
	t.Helper()
	logger := testlog.New(t)
	alice := emulator.NewAlice("A-B", fast, logger, emulator.AllowInsecurePeer())
	bob := emulator.NewBob("A-B", testrig.ServeDial(t, alice.Register), logger, emulator.WithBackoff(time.Millisecond, 20*time.Millisecond))
	svcA := remote.NewService(logger.With("node", "A"), remote.AllowInsecurePeer())
	svcB := remote.NewService(logger.With("node", "B"), remote.AllowInsecurePeer())
	r := &rig{alice: alice, bob: bob, a: svcA.Link("A-B"), b: svcB.Link("A-B")}
	connA := testrig.ServeDial(t, svcA.Register, dialA...)
	connB := testrig.ServeDial(t, svcB.Register, dialB...)

	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	opts := []remote.PushOption{remote.WithLogger(logger), remote.WithBackoff(time.Millisecond, 20*time.Millisecond)}
	go func() { errs <- remote.Push(ctx, connA, "A-B", alice, opts...) }()
	go func() { errs <- remote.Push(ctx, connB, "A-B", bob, opts...) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			select {
			case err := <-errs:
				// Push keeps going whatever the agent does, until
				// its context ends.
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Push returned %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Push did not return within 10s of its context ending")
			}
		}
		alice.Close()
		bob.Close()
	})
	return r
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t testing.TB) (driver.Driver, driver.Driver) {
		r := newRig(t, nil, nil)
		return r.a, r.b
	}, drivertest.KeyBytes(fast.KeyBytes), drivertest.MaxLead(fast.MaxBatch))
}

// lossyAcks is a client interceptor for a driver process's connection that
// loses the agent's acknowledgement of one batch (which the agent stored) by
// breaking the stream.
type lossyAcks struct {
	dropAt  int64 // the number of the acknowledgement to lose, counted over all streams
	count   atomic.Int64
	dropped atomic.Bool
}

func (l *lossyAcks) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
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
	l      *lossyAcks
	cancel context.CancelFunc
}

func (s *lossyStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if _, ok := m.(*qkdv1.PushKeysResponse); ok && err == nil && s.l.count.Add(1) == s.l.dropAt {
		s.l.dropped.Store(true)
		s.cancel()
		return status.Error(codes.Unavailable, "test: the acknowledgement was lost")
	}
	return err
}

// TestLostAckIsNotStoredTwice: the agent stored a batch but its
// acknowledgement never reached the driver process, which hands the batch
// again on a new stream; the link must not store it twice.
func TestLostAckIsNotStoredTwice(t *testing.T) {
	for _, which := range []string{"a", "b"} {
		for _, at := range []int64{1, 4} {
			t.Run(fmt.Sprintf("%s/ack%d", which, at), func(t *testing.T) {
				lossy := &lossyAcks{dropAt: at}
				opt := []grpc.DialOption{grpc.WithStreamInterceptor(lossy.intercept)}
				var r *rig
				if which == "a" {
					r = newRig(t, opt, nil)
				} else {
					r = newRig(t, nil, opt)
				}
				var ka, kb testrig.Collector
				stopA, stopB := testrig.Start(t, r.a, ka.Sink), testrig.Start(t, r.b, kb.Sink)
				testrig.Eventually(t, "keys past the lost acknowledgement", func() bool {
					return lossy.dropped.Load() && ka.Len() > 8*fast.MaxBatch && kb.Len() > 8*fast.MaxBatch
				})
				stopA()
				stopB()
				testrig.SamePrefix(t, ka.Keys(), kb.Keys())
				for _, l := range []struct {
					d driver.Driver
					c *testrig.Collector
				}{{r.a, &ka}, {r.b, &kb}} {
					if got := l.d.Status().KeysDelivered; got != uint64(l.c.Len()) {
						t.Errorf("KeysDelivered = %d, the sink has %d", got, l.c.Len())
					}
				}
			})
		}
	}
}

// pushStream opens a raw PushKeys stream.
func pushStream(t testing.TB, conn grpc.ClientConnInterface) grpc.BidiStreamingClient[qkdv1.PushKeysRequest, qkdv1.PushKeysResponse] {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := qkdv1.NewDriverServiceClient(conn).PushKeys(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

func key(id string) *qkdv1.QKDKey { return &qkdv1.QKDKey{KeyId: id, Key: []byte("0123456789abcdef")} }

// TestPushKeysProtocol drives the agent's side with hand-made messages.
func TestPushKeysProtocol(t *testing.T) {
	tests := []struct {
		desc string
		msgs []*qkdv1.PushKeysRequest
		want codes.Code // of the stream after the last message; OK: each batch acknowledged
	}{
		{
			desc: "hello then batches",
			msgs: []*qkdv1.PushKeysRequest{{LinkId: "A-B"}, {Batch: 1, Keys: []*qkdv1.QKDKey{key("k1"), key("k2")}}, {Batch: 2, Keys: []*qkdv1.QKDKey{key("k3")}}},
			want: codes.OK,
		},
		{
			desc: "first batch in the hello",
			msgs: []*qkdv1.PushKeysRequest{{LinkId: "A-B", Batch: 1, Keys: []*qkdv1.QKDKey{key("k1")}}, {Batch: 2, Keys: []*qkdv1.QKDKey{key("k2")}}},
			want: codes.OK,
		},
		{desc: "no link_id", msgs: []*qkdv1.PushKeysRequest{{Batch: 1, Keys: []*qkdv1.QKDKey{key("k1")}}}, want: codes.InvalidArgument},
		{desc: "unknown link", msgs: []*qkdv1.PushKeysRequest{{LinkId: "A-C"}}, want: codes.NotFound},
		{desc: "batch 2 first", msgs: []*qkdv1.PushKeysRequest{{LinkId: "A-B"}, {Batch: 2, Keys: []*qkdv1.QKDKey{key("k1")}}}, want: codes.InvalidArgument},
		{desc: "batch repeated", msgs: []*qkdv1.PushKeysRequest{{LinkId: "A-B"}, {Batch: 1, Keys: []*qkdv1.QKDKey{key("k1")}}, {Batch: 1, Keys: []*qkdv1.QKDKey{key("k2")}}}, want: codes.InvalidArgument},
		{desc: "empty key_id", msgs: []*qkdv1.PushKeysRequest{{LinkId: "A-B"}, {Batch: 1, Keys: []*qkdv1.QKDKey{key("")}}}, want: codes.InvalidArgument},
		{desc: "no key bytes", msgs: []*qkdv1.PushKeysRequest{{LinkId: "A-B"}, {Batch: 1, Keys: []*qkdv1.QKDKey{{KeyId: "k1"}}}}, want: codes.InvalidArgument},
		{desc: "key_id twice in a batch", msgs: []*qkdv1.PushKeysRequest{{LinkId: "A-B"}, {Batch: 1, Keys: []*qkdv1.QKDKey{key("k1"), key("k1")}}}, want: codes.InvalidArgument},
		{desc: "another link mid-stream", msgs: []*qkdv1.PushKeysRequest{{LinkId: "A-B"}, {LinkId: "A-C", Batch: 1, Keys: []*qkdv1.QKDKey{key("k1")}}}, want: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			svc := remote.NewService(testlog.New(t), remote.AllowInsecurePeer())
			link := svc.Link("A-B")
			t.Cleanup(func() { link.Close() })
			var got testrig.Collector
			testrig.Start(t, link, got.Sink)
			stream := pushStream(t, testrig.ServeDial(t, svc.Register))
			var want []string
			for _, m := range tt.msgs {
				if err := stream.Send(m); err != nil {
					break // the stream ended; Recv says why
				}
				if m.GetBatch() == 0 || tt.want != codes.OK {
					continue
				}
				resp, err := stream.Recv()
				if err != nil {
					t.Fatalf("batch %d: %v", m.GetBatch(), err)
				}
				if resp.GetBatch() != m.GetBatch() {
					t.Fatalf("acknowledged batch %d, want %d", resp.GetBatch(), m.GetBatch())
				}
				for _, k := range m.GetKeys() {
					want = append(want, k.GetKeyId())
				}
			}
			if tt.want != codes.OK {
				// Valid batches before the bad one are acknowledged;
				// then the stream ends.
				var err error
				acked := 0
				for err == nil {
					if _, err = stream.Recv(); err == nil {
						acked++
					}
				}
				if status.Code(err) != tt.want {
					t.Fatalf("stream ended with %v, want %v", err, tt.want)
				}
				if got.Len() != acked {
					t.Fatalf("the sink got %d keys, but %d single-key batches were acknowledged", got.Len(), acked)
				}
				return
			}
			var ids []string
			for _, k := range got.Keys() {
				ids = append(ids, k.ID)
			}
			if fmt.Sprint(ids) != fmt.Sprint(want) {
				t.Fatalf("the sink got %v, want %v", ids, want)
			}
		})
	}
}

// TestPeerIdentity checks who may push, over mutual TLS and without.
func TestPeerIdentity(t *testing.T) {
	ca := testcerts.NewCA(t)
	tests := []struct {
		desc string
		cert tlsCert
		want codes.Code
	}{
		{desc: "a node", cert: ca.Issue(t, testrig.Node("A")), want: codes.OK},
		{desc: "an SAE", cert: ca.Issue(t, pki.Identity{Kind: pki.KindSAE, ID: "SAE_A"}), want: codes.PermissionDenied},
		{desc: "no identity", cert: ca.IssueURIs(t), want: codes.PermissionDenied},
		{desc: "malformed identity", cert: ca.IssueURIs(t, &url.URL{Scheme: "qkd", Host: "node", Path: "/A/B"}), want: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			svc := remote.NewService(testlog.New(t))
			svc.Link("A-B")
			addr := testrig.ServeTLS(t, ca, testrig.Node("A"), svc.Register)
			stream := pushStream(t, testrig.DialTLS(t, ca, tt.cert, addr))
			if got := hello(t, stream, "A-B"); got != tt.want {
				t.Fatalf("hello: %v, want %v", got, tt.want)
			}
		})
	}
	// WithNode: only the node's own certificate may feed its pools.
	for _, tt := range []struct {
		desc string
		node string
		want codes.Code
	}{
		{"WithNode, this node", "A", codes.OK},
		{"WithNode, another node", "C", codes.PermissionDenied},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			svc := remote.NewService(testlog.New(t), remote.WithNode("A"))
			svc.Link("A-B")
			addr := testrig.ServeTLS(t, ca, testrig.Node("A"), svc.Register)
			stream := pushStream(t, testrig.DialTLS(t, ca, ca.Issue(t, testrig.Node(tt.node)), addr))
			if got := hello(t, stream, "A-B"); got != tt.want {
				t.Fatalf("hello from node %s: %v, want %v", tt.node, got, tt.want)
			}
		})
	}
	t.Run("no certificate", func(t *testing.T) {
		svc := remote.NewService(testlog.New(t))
		svc.Link("A-B")
		stream := pushStream(t, testrig.ServeDial(t, svc.Register))
		if got := hello(t, stream, "A-B"); got != codes.Unauthenticated {
			t.Fatalf("hello: %v, want Unauthenticated", got)
		}
	})
}

func hello(t testing.TB, stream grpc.BidiStreamingClient[qkdv1.PushKeysRequest, qkdv1.PushKeysResponse], linkID string) codes.Code {
	t.Helper()
	if err := stream.Send(&qkdv1.PushKeysRequest{LinkId: linkID}); err != nil && err != io.EOF {
		t.Fatalf("send hello: %v", err)
	}
	// On io.EOF the server ended the stream already; Recv says why.
	if md, _ := stream.Header(); md != nil {
		return codes.OK
	}
	_, err := stream.Recv()
	return status.Code(err)
}

func TestSecondStreamReplacesFirst(t *testing.T) {
	svc := remote.NewService(testlog.New(t), remote.AllowInsecurePeer())
	link := svc.Link("A-B")
	conn := testrig.ServeDial(t, svc.Register)
	first := pushStream(t, conn)
	if c := hello(t, first, "A-B"); c != codes.OK {
		t.Fatalf("first hello: %v", c)
	}
	second := pushStream(t, conn)
	if c := hello(t, second, "A-B"); c != codes.OK {
		t.Fatalf("second hello: %v", c)
	}
	if _, err := first.Recv(); status.Code(err) != codes.Aborted {
		t.Fatalf("first stream after the second hello: %v, want Aborted", err)
	}
	if !link.Status().Connected {
		t.Fatal("link not connected to the second stream")
	}
	var got testrig.Collector
	testrig.Start(t, link, got.Sink)
	if err := second.Send(&qkdv1.PushKeysRequest{Batch: 1, Keys: []*qkdv1.QKDKey{key("k1")}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := second.Recv(); err != nil || resp.GetBatch() != 1 {
		t.Fatalf("second stream: %v, %v; want an acknowledgement of batch 1", resp, err)
	}
}

// listDriver hands out a fixed list of keys in batches of n, resuming after
// the last one its sink accepted, and then waits.
type listDriver struct {
	keys   []driver.Key
	n      int
	next   int // Run only
	closed chan struct{}
	once   sync.Once
}

func newListDriver(count, n int) *listDriver {
	d := &listDriver{n: n, closed: make(chan struct{})}
	for i := range count {
		d.keys = append(d.keys, driver.Key{ID: fmt.Sprintf("key-%04d", i), Bytes: []byte(fmt.Sprintf("bits-%04d", i))})
	}
	return d
}

func (d *listDriver) Run(ctx context.Context, sink driver.Sink) error {
	for {
		select {
		case <-d.closed:
			return driver.ErrClosed
		default:
		}
		if d.next == len(d.keys) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-d.closed:
				return driver.ErrClosed
			}
		}
		end := min(d.next+d.n, len(d.keys))
		batch := make([]driver.Key, 0, end-d.next)
		for _, k := range d.keys[d.next:end] {
			batch = append(batch, driver.Key{ID: k.ID, Bytes: append([]byte(nil), k.Bytes...)})
		}
		if err := sink(ctx, batch); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("list driver: sink: %w", err)
		}
		d.next = end
	}
}

func (d *listDriver) Status() driver.Status { return driver.Status{LinkID: "A-B"} }

func (d *listDriver) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// push runs Push in a goroutine and returns a channel with its result.
func push(t testing.TB, conn grpc.ClientConnInterface, d driver.Driver) (<-chan error, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	errs := make(chan error, 1)
	go func() {
		errs <- remote.Push(ctx, conn, "A-B", d, remote.WithLogger(testlog.New(t)), remote.WithBackoff(time.Millisecond, 20*time.Millisecond))
	}()
	return errs, cancel
}

func waitErr(t testing.TB, errs <-chan error) error {
	t.Helper()
	select {
	case err := <-errs:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Push did not return")
		return nil
	}
}

// TestPushWaitsForLink: Push retries until the agent knows the link, then
// every key arrives once, in order.
func TestPushWaitsForLink(t *testing.T) {
	svc := remote.NewService(testlog.New(t), remote.AllowInsecurePeer())
	conn := testrig.ServeDial(t, svc.Register)
	d := newListDriver(100, 7)
	errs, cancel := push(t, conn, d)
	// Let Push meet NotFound a few times; correctness does not depend on it.
	time.Sleep(30 * time.Millisecond)
	link := svc.Link("A-B")
	var got testrig.Collector
	testrig.Start(t, link, got.Sink)
	testrig.Eventually(t, "all keys", func() bool { return got.Len() == 100 })
	testrig.SamePrefix(t, d.keys, got.Keys())
	cancel()
	if err := waitErr(t, errs); !errors.Is(err, context.Canceled) {
		t.Fatalf("Push returned %v, want context.Canceled", err)
	}
}

// TestPushReturnsWhenDriverCloses: Push returns what the driver's Run returns.
func TestPushReturnsWhenDriverCloses(t *testing.T) {
	svc := remote.NewService(testlog.New(t), remote.AllowInsecurePeer())
	link := svc.Link("A-B")
	var got testrig.Collector
	testrig.Start(t, link, got.Sink)
	d := newListDriver(10, 3)
	errs, _ := push(t, testrig.ServeDial(t, svc.Register), d)
	testrig.Eventually(t, "all keys", func() bool { return got.Len() == 10 })
	d.Close()
	if err := waitErr(t, errs); !errors.Is(err, driver.ErrClosed) {
		t.Fatalf("Push returned %v, want driver.ErrClosed", err)
	}
}

// TestPushGivesUpOnRefusal: an agent that refuses the caller makes Push
// return at once, with the status.
func TestPushGivesUpOnRefusal(t *testing.T) {
	svc := remote.NewService(testlog.New(t)) // no insecure peers
	svc.Link("A-B")
	errs, _ := push(t, testrig.ServeDial(t, svc.Register), newListDriver(10, 3))
	err := waitErr(t, errs)
	var se *remote.StreamError
	if status.Code(err) != codes.Unauthenticated || !errors.As(err, &se) {
		t.Fatalf("Push returned %v, want a StreamError with Unauthenticated", err)
	}
}

// TestLinkAfterClose: Link returns the same driver until it is closed, and a
// fresh one afterwards; the closed one stays closed.
func TestLinkAfterClose(t *testing.T) {
	svc := remote.NewService(testlog.New(t), remote.AllowInsecurePeer())
	l1 := svc.Link("A-B")
	if svc.Link("A-B") != l1 {
		t.Fatal("Link returned a new driver for a live link")
	}
	l1.Close()
	l2 := svc.Link("A-B")
	if l2 == l1 {
		t.Fatal("Link returned a closed driver")
	}
	if err := l1.Run(context.Background(), nil); !errors.Is(err, driver.ErrClosed) {
		t.Fatalf("Run on the closed link: %v", err)
	}
	var got testrig.Collector
	testrig.Start(t, l2, got.Sink)
	d := newListDriver(10, 3)
	push(t, testrig.ServeDial(t, svc.Register), d)
	testrig.Eventually(t, "keys on the new link", func() bool { return got.Len() == 10 })
}

func TestRunTwiceAtOnce(t *testing.T) {
	svc := remote.NewService(testlog.New(t), remote.AllowInsecurePeer())
	link := svc.Link("A-B")
	var got testrig.Collector
	testrig.Start(t, link, got.Sink)
	push(t, testrig.ServeDial(t, svc.Register), newListDriver(10, 3))
	testrig.Eventually(t, "keys", func() bool { return got.Len() > 0 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := link.Run(ctx, got.Sink); err == nil || errors.Is(err, context.Canceled) || errors.Is(err, driver.ErrClosed) {
		t.Fatalf("a second Run while one is in progress returned %v, want a distinct error", err)
	}
}
