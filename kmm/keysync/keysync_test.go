package keysync_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/keysync"
	"github.com/qkdnet/qkdnet/pki"
)

// registrar captures the service keysync.Register registers, so the tests
// call it directly.
type registrar struct{ impl any }

func (r *registrar) RegisterService(_ *grpc.ServiceDesc, impl any) { r.impl = impl }

// fakeHandler is the KMM side: links that end here, and what each call
// returns. It records the calls that reach it.
type fakeHandler struct {
	links map[string]string // link → peer node
	err   error

	mu    sync.Mutex
	calls []call
}

type call struct {
	method   string
	peer     string
	stream   keystore.Stream
	batchID  string
	firstSeq uint64
	keyIDs   []string
	want     int
}

func (h *fakeHandler) record(c call) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, c)
}

func (h *fakeHandler) PeerOfLink(link string) (string, bool) {
	p, ok := h.links[link]
	return p, ok
}

func (h *fakeHandler) OpenStream(_ context.Context, peer string, st keystore.Stream) (keystore.Stream, error) {
	h.record(call{method: "open", peer: peer, stream: st})
	st.NextSeq = 7
	return st, h.err
}

func (h *fakeHandler) Apply(_ context.Context, peer, batchID string, st keystore.Stream, firstSeq uint64, keyIDs []string) ([]string, error) {
	h.record(call{method: "allocate", peer: peer, stream: st, batchID: batchID, firstSeq: firstSeq, keyIDs: keyIDs})
	if h.err != nil {
		return nil, h.err
	}
	return keyIDs[len(keyIDs)-1:], nil
}

func (h *fakeHandler) RequestAllocation(_ context.Context, peer string, st keystore.Stream, want int) (int, error) {
	h.record(call{method: "request", peer: peer, stream: st, want: want})
	return want / 2, h.err
}

func newService(t *testing.T, h *fakeHandler) qkdv1.KeySyncServiceServer {
	t.Helper()
	var r registrar
	keysync.Register(&r, h)
	svc, ok := r.impl.(qkdv1.KeySyncServiceServer)
	if !ok {
		t.Fatalf("Register registered %T, not a KeySyncServiceServer", r.impl)
	}
	return svc
}

func goodStream() *qkdv1.Stream {
	return &qkdv1.Stream{StreamId: "SAE_A->SAE_B", LinkId: "L_AB", MasterSaeId: "SAE_A", SlaveSaeId: "SAE_B",
		Qos: &qkdv1.QoS{KeyRate: 10, MaxBuffer: 100, Priority: 2}}
}

func wantStream() keystore.Stream {
	return keystore.Stream{ID: "SAE_A->SAE_B", MasterSAE: "SAE_A", SlaveSAE: "SAE_B", Link: "L_AB",
		QoS: keystore.QoS{KeyRate: 10, MaxBuffer: 100, Priority: 2}}
}

// invoke makes one call of method on svc with the given stream.
func invoke(ctx context.Context, svc qkdv1.KeySyncServiceServer, method string, st *qkdv1.Stream, batchID string, keyIDs []string) (any, error) {
	switch method {
	case "open":
		return svc.OpenStream(ctx, &qkdv1.OpenStreamRequest{Stream: st})
	case "allocate":
		return svc.Allocate(ctx, &qkdv1.AllocateRequest{BatchId: batchID, Stream: st, FirstSeq: 3, KeyIds: keyIDs})
	case "request":
		return svc.RequestAllocation(ctx, &qkdv1.RequestAllocationRequest{Stream: st, Want: 8})
	}
	panic("unknown method " + method)
}

func withID(kind pki.Kind, id string) func(context.Context) context.Context {
	return func(ctx context.Context) context.Context {
		return pki.WithCaller(ctx, pki.Identity{Kind: kind, ID: id})
	}
}

// TestAuthorization: only the node at the other end of the stream's link
// may call, and only about a well-formed stream; the handler is not reached
// otherwise.
func TestAuthorization(t *testing.T) {
	mutate := func(f func(*qkdv1.Stream)) *qkdv1.Stream { st := goodStream(); f(st); return st }
	tests := []struct {
		desc     string
		ctx      func(context.Context) context.Context
		stream   *qkdv1.Stream
		batchID  string
		keyIDs   []string
		only     string // run only for this method
		wantCode codes.Code
	}{
		{desc: "no identity", ctx: func(ctx context.Context) context.Context { return ctx }, stream: goodStream(), wantCode: codes.Unauthenticated},
		{desc: "gRPC peer without TLS", ctx: func(ctx context.Context) context.Context {
			return peer.NewContext(ctx, &peer.Peer{})
		}, stream: goodStream(), wantCode: codes.Unauthenticated},
		{desc: "SAE identity", ctx: withID(pki.KindSAE, "SAE_B"), stream: goodStream(), wantCode: codes.Unauthenticated},
		{desc: "SAE identity named like the peer node", ctx: withID(pki.KindSAE, "B"), stream: goodStream(), wantCode: codes.Unauthenticated},
		{desc: "node C is not the link peer", ctx: withID(pki.KindNode, "C"), stream: goodStream(), wantCode: codes.PermissionDenied},
		{desc: "node B about C's link", ctx: withID(pki.KindNode, "B"), stream: mutate(func(s *qkdv1.Stream) { s.LinkId = "L_AC" }), wantCode: codes.PermissionDenied},
		{desc: "unknown link", ctx: withID(pki.KindNode, "B"), stream: mutate(func(s *qkdv1.Stream) { s.LinkId = "L_XY" }), wantCode: codes.NotFound},
		{desc: "no stream", ctx: withID(pki.KindNode, "B"), stream: nil, wantCode: codes.InvalidArgument},
		{desc: "no stream_id", ctx: withID(pki.KindNode, "B"), stream: mutate(func(s *qkdv1.Stream) { s.StreamId = "" }), wantCode: codes.InvalidArgument},
		{desc: "no link_id", ctx: withID(pki.KindNode, "B"), stream: mutate(func(s *qkdv1.Stream) { s.LinkId = "" }), wantCode: codes.InvalidArgument},
		{desc: "no master_sae_id", ctx: withID(pki.KindNode, "B"), stream: mutate(func(s *qkdv1.Stream) { s.MasterSaeId = "" }), wantCode: codes.InvalidArgument},
		{desc: "no slave_sae_id", ctx: withID(pki.KindNode, "B"), stream: mutate(func(s *qkdv1.Stream) { s.SlaveSaeId = "" }), wantCode: codes.InvalidArgument},
		{desc: "no batch_id", ctx: withID(pki.KindNode, "B"), stream: goodStream(), batchID: "-", only: "allocate", wantCode: codes.InvalidArgument},
		{desc: "no key_ids", ctx: withID(pki.KindNode, "B"), stream: goodStream(), keyIDs: []string{}, only: "allocate", wantCode: codes.InvalidArgument},
		{desc: "the link peer", ctx: withID(pki.KindNode, "B"), stream: goodStream(), wantCode: codes.OK},
		{desc: "the peer of another link", ctx: withID(pki.KindNode, "C"), stream: mutate(func(s *qkdv1.Stream) { s.LinkId = "L_AC" }), wantCode: codes.OK},
	}
	for _, method := range []string{"open", "allocate", "request"} {
		for _, tc := range tests {
			if tc.only != "" && tc.only != method {
				continue
			}
			t.Run(method+"/"+tc.desc, func(t *testing.T) {
				h := &fakeHandler{links: map[string]string{"L_AB": "B", "L_AC": "C"}}
				svc := newService(t, h)
				batchID, keyIDs := "batch-1", []string{"k1", "k2"}
				if tc.batchID == "-" {
					batchID = ""
				}
				if tc.keyIDs != nil {
					keyIDs = tc.keyIDs
				}
				_, err := invoke(tc.ctx(context.Background()), svc, method, tc.stream, batchID, keyIDs)
				if got := status.Code(err); got != tc.wantCode {
					t.Fatalf("code = %v (%v), want %v", got, err, tc.wantCode)
				}
				if _, ok := status.FromError(err); !ok {
					t.Errorf("error %v is not a gRPC status", err)
				}
				if n := len(h.calls); (tc.wantCode == codes.OK) != (n == 1) {
					t.Errorf("handler called %d times", n)
				}
			})
		}
	}
}

// TestServicePassesCalls: an authorized call reaches the handler with the
// authenticated peer and the stream as sent, and the answer goes back.
func TestServicePassesCalls(t *testing.T) {
	ctx := pki.WithCaller(context.Background(), pki.Identity{Kind: pki.KindNode, ID: "B"})
	tests := []struct {
		desc   string
		method string
		want   call
		check  func(t *testing.T, resp any)
	}{
		{desc: "OpenStream", method: "open", want: call{method: "open", peer: "B", stream: wantStream()},
			check: func(t *testing.T, resp any) {
				got := resp.(*qkdv1.OpenStreamResponse).GetStream()
				if got.GetStreamId() != "SAE_A->SAE_B" || got.GetQos().GetMaxBuffer() != 100 {
					t.Errorf("response stream = %v", got)
				}
			}},
		{desc: "Allocate", method: "allocate", want: call{method: "allocate", peer: "B", stream: wantStream(), batchID: "batch-1", firstSeq: 3, keyIDs: []string{"k1", "k2"}},
			check: func(t *testing.T, resp any) {
				if got := resp.(*qkdv1.AllocateResponse).GetUnknownKeyIds(); !reflect.DeepEqual(got, []string{"k2"}) {
					t.Errorf("unknown_key_ids = %q, want [k2]", got)
				}
			}},
		{desc: "RequestAllocation", method: "request", want: call{method: "request", peer: "B", stream: wantStream(), want: 8},
			check: func(t *testing.T, resp any) {
				if got := resp.(*qkdv1.RequestAllocationResponse).GetAllocated(); got != 4 {
					t.Errorf("allocated = %d, want 4", got)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			h := &fakeHandler{links: map[string]string{"L_AB": "B"}}
			resp, err := invoke(ctx, newService(t, h), tc.method, goodStream(), "batch-1", []string{"k1", "k2"})
			if err != nil {
				t.Fatal(err)
			}
			if len(h.calls) != 1 || !reflect.DeepEqual(h.calls[0], tc.want) {
				t.Fatalf("handler calls = %+v, want [%+v]", h.calls, tc.want)
			}
			tc.check(t, resp)
		})
	}
}

// TestHandlerErrors: the handler's errors become the right gRPC codes.
func TestHandlerErrors(t *testing.T) {
	ctx := pki.WithCaller(context.Background(), pki.Identity{Kind: pki.KindNode, ID: "B"})
	tests := []struct {
		desc     string
		err      error
		wantCode codes.Code
	}{
		{desc: "not master", err: fmt.Errorf("node B: %w", keysync.ErrNotMaster), wantCode: codes.FailedPrecondition},
		{desc: "unknown stream", err: fmt.Errorf("%w %q", keystore.ErrUnknownStream, "x"), wantCode: codes.NotFound},
		{desc: "canceled", err: context.Canceled, wantCode: codes.Canceled},
		{desc: "deadline", err: fmt.Errorf("wait: %w", context.DeadlineExceeded), wantCode: codes.DeadlineExceeded},
		{desc: "store closed", err: keystore.ErrClosed, wantCode: codes.Unavailable},
		{desc: "anything else", err: errors.New("disk on fire"), wantCode: codes.Unavailable},
	}
	for _, method := range []string{"open", "allocate", "request"} {
		for _, tc := range tests {
			t.Run(method+"/"+tc.desc, func(t *testing.T) {
				h := &fakeHandler{links: map[string]string{"L_AB": "B"}, err: tc.err}
				_, err := invoke(ctx, newService(t, h), method, goodStream(), "batch-1", []string{"k1"})
				if got := status.Code(err); got != tc.wantCode {
					t.Fatalf("code = %v (%v), want %v", got, err, tc.wantCode)
				}
			})
		}
	}
}

// TestProtoRoundTrip: a stream survives the wire (NextSeq is local state and
// does not travel).
func TestProtoRoundTrip(t *testing.T) {
	tests := []struct {
		desc  string
		input keystore.Stream
		want  keystore.Stream
	}{
		{desc: "full", input: wantStream(), want: wantStream()},
		{desc: "zero QoS", input: keystore.Stream{ID: "a->b", MasterSAE: "a", SlaveSAE: "b", Link: "l"}, want: keystore.Stream{ID: "a->b", MasterSAE: "a", SlaveSAE: "b", Link: "l"}},
		{desc: "next_seq stays home", input: func() keystore.Stream { s := wantStream(); s.NextSeq = 42; return s }(), want: wantStream()},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			if got := keysync.FromProto(keysync.ToProto(tc.input)); got != tc.want {
				t.Errorf("round trip = %+v, want %+v", got, tc.want)
			}
		})
	}
	if got := keysync.FromProto(nil); got != (keystore.Stream{}) {
		t.Errorf("FromProto(nil) = %+v", got)
	}
}

// fakeClient is the Master's view of the Slave KMM.
type fakeClient struct {
	qkdv1.KeySyncServiceClient
	got  *qkdv1.AllocateRequest
	resp *qkdv1.AllocateResponse
	err  error
}

func (c *fakeClient) Allocate(_ context.Context, in *qkdv1.AllocateRequest, _ ...grpc.CallOption) (*qkdv1.AllocateResponse, error) {
	c.got = in
	return c.resp, c.err
}

// TestClientAllocate: the Master's Synchronizer sends the batch as reserved
// and returns what the Slave does not hold; any failure is an error (the
// batch is then resent).
func TestClientAllocate(t *testing.T) {
	p := keystore.Pending{BatchID: "b1", Link: "L_AB", Stream: wantStream(), FirstSeq: 9, KeyIDs: []string{"k1", "k2", "k3"}}
	tests := []struct {
		desc        string
		connErr     error
		client      *fakeClient
		wantUnknown []string
		wantErr     bool
	}{
		{desc: "all known", client: &fakeClient{resp: &qkdv1.AllocateResponse{}}},
		{desc: "some unknown", client: &fakeClient{resp: &qkdv1.AllocateResponse{UnknownKeyIds: []string{"k2"}}}, wantUnknown: []string{"k2"}},
		{desc: "peer unreachable", connErr: errors.New("no route"), wantErr: true},
		{desc: "call fails", client: &fakeClient{err: status.Error(codes.Unavailable, "down")}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			var asked string
			c := keysync.NewClient(func(link string) (qkdv1.KeySyncServiceClient, error) {
				asked = link
				if tc.connErr != nil {
					return nil, tc.connErr
				}
				return tc.client, nil
			})
			unknown, err := c.Allocate(context.Background(), p)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if asked != "L_AB" {
				t.Errorf("connection asked for link %q, want L_AB", asked)
			}
			if !reflect.DeepEqual(unknown, tc.wantUnknown) {
				t.Errorf("unknown = %q, want %q", unknown, tc.wantUnknown)
			}
			if tc.client != nil {
				got := tc.client.got
				if got.GetBatchId() != "b1" || got.GetFirstSeq() != 9 || !reflect.DeepEqual(got.GetKeyIds(), p.KeyIDs) ||
					keysync.FromProto(got.GetStream()) != wantStream() {
					t.Errorf("request = %v", got)
				}
			}
		})
	}
}
