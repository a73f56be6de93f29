package kmm

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/qkdnet/qkdnet/agent/gateway"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/stats"
	"github.com/qkdnet/qkdnet/pki"
)

// fakeStreams is the controller side of ETSI 004 for the fuzzer: it opens
// any stream it is asked for and records what it was asked.
type fakeStreams struct {
	mu     sync.Mutex
	apps   map[string]*AppView
	opened []AppRequest
	n      int
}

func (f *fakeStreams) OpenQoS(_ context.Context, req AppRequest) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opened = append(f.opened, req)
	f.n++
	id := "00000000-0000-4000-8000-" + strings.Repeat("0", 11) + string(rune('0'+f.n%10))
	f.apps[id] = &AppView{ID: id, Master: req.Master, Slave: req.Slave, ChunkSize: req.ChunkSize, Connected: []string{req.Connect}}
	return id, nil
}

func (f *fakeStreams) Connect(_ context.Context, id, sae string, connect bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.apps[id]
	if a == nil {
		return status.Errorf(codes.NotFound, "no app %s", id)
	}
	a.Connected = slices.DeleteFunc(a.Connected, func(s string) bool { return s == sae })
	if connect {
		a.Connected = append(a.Connected, sae)
	}
	return nil
}

func (f *fakeStreams) App(id string) (AppView, bool, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.apps[id]
	if a == nil {
		return AppView{}, false, nil
	}
	cp := *a
	cp.Connected = slices.Clone(a.Connected)
	return cp, true, nil
}

func (f *fakeStreams) takeOpened() []AppRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.opened
	f.opened = nil
	return out
}

// recording404 is the KMM as the REST gateway sees it, remembering the
// ETSI 004 request the gateway decoded.
type recording404 struct {
	*KMM
	got proto.Message
}

func (r *recording404) OpenConnect(ctx context.Context, req *qkdv1.OpenConnectRequest) (*qkdv1.OpenConnectResponse, error) {
	r.got = proto.Clone(req)
	return r.KMM.OpenConnect(ctx, req)
}

func (r *recording404) GetStreamKey(ctx context.Context, req *qkdv1.GetStreamKeyRequest) (*qkdv1.GetStreamKeyResponse, error) {
	r.got = proto.Clone(req)
	return r.KMM.GetStreamKey(ctx, req)
}

func (r *recording404) CloseStream(ctx context.Context, req *qkdv1.CloseStreamRequest) (*qkdv1.CloseStreamResponse, error) {
	r.got = proto.Clone(req)
	return r.KMM.CloseStream(ctx, req)
}

// validOpen is the OPEN_CONNECT validation, stated independently of the
// KMM's code: what a request must satisfy to reach the controller.
func validOpen(caller string, req *qkdv1.OpenConnectRequest, maxKeyBits int) bool {
	src, ok1 := strings.CutPrefix(req.GetSource(), "qkd://sae/")
	dst, ok2 := strings.CutPrefix(req.GetDestination(), "qkd://sae/")
	q := req.GetQos()
	return ok1 && ok2 && pki.ValidID(src) == nil && pki.ValidID(dst) == nil && src == caller && dst != caller &&
		uint64(q.GetKeyChunkSize())*8 <= uint64(maxKeyBits) && (q.GetMaxBps() == 0 || q.GetMinBps() <= q.GetMaxBps())
}

// Fuzz004: ETSI 004 OPEN_CONNECT, GET_KEY and CLOSE with arbitrary
// contents, decoded as the gRPC server decodes them (protobuf) or as the
// REST gateway does (JSON, through the real gateway handler), served by a
// real KMM on a temp key store. Properties: no panic; every refusal is a
// gRPC status with a code that says what went wrong (never Unknown or
// Internal), and over REST an HTTP error with the ETSI error object; the
// controller is asked to open a stream only for a request that passes the
// validation stated in validOpen, with the QoS the SAE asked; an
// OPEN_CONNECT that fails that validation is refused; a GET_KEY never
// returns key bytes with a non-zero status; 004 status codes stay in 0..8;
// the gateway hands the KMM exactly what protojson reads from the body.
func Fuzz004(f *testing.F) {
	for _, seed := range []struct {
		sel  uint8
		body string
	}{
		{0, `{"source":"qkd://sae/SAE_A","destination":"qkd://sae/SAE_B","qos":{"keyChunkSize":32,"timeout":5,"minBps":10,"maxBps":100}}`},
		{3, `{"source":"qkd://sae/SAE_A","destination":"qkd://sae/SAE_B","qos":{"keyChunkSize":4294967295}}`},
		{3, `{"source":"qkd://sae/SAE_A","destination":"qkd://sae/SAE_B","qos":{"minBps":5,"maxBps":4}}`},
		{9, `{"source":"qkd://sae/SAE_A2","destination":"qkd://sae/SAE_A2"}`},
		{3, `{"source":"qkd://sae/SAE_A","destination":"qkd://sae/SAE_B","keyStreamId":"00000000-0000-4000-8000-000000000001"}`},
		{4, `{"index":0,"metadataSize":256}`},
		{4, `{"index":4294967295,"metadataSize":1}`},
		{5, `{}`},
		{3, `{"source":"qkd://sae/SAE_A","destination":"qkd://sae/SAE_B","qos":{"keyChunkSize":-1}}`},
		{3, `{"source":"qkd://sae/SAE_A","qos":null,"unknown":1}`},
		{3, `[]`},
		{3, "{\"source\":\"qkd://sae/\xff\"}"},
	} {
		f.Add(seed.sel, []byte(seed.body))
	}
	// The same requests in protobuf.
	for _, m := range []proto.Message{
		&qkdv1.OpenConnectRequest{Source: "qkd://sae/SAE_A", Destination: "qkd://sae/SAE_B", Qos: &qkdv1.KeyStreamQoS{KeyChunkSize: 64, Timeout: 5}},
		&qkdv1.GetStreamKeyRequest{KeyStreamId: "00000000-0000-4000-8000-000000000001", Index: proto.Uint32(0), MetadataSize: 256},
		&qkdv1.CloseStreamRequest{KeyStreamId: "00000000-0000-4000-8000-000000000001"},
	} {
		b, _ := proto.Marshal(m)
		sel := map[string]uint8{"OpenConnectRequest": 0, "GetStreamKeyRequest": 1, "CloseStreamRequest": 2}[string(m.ProtoReflect().Descriptor().Name())]
		f.Add(sel, b)
	}

	store, err := keystore.Open(f.TempDir(), keystore.Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { store.Close() })
	set := Settings{Node: "A", KMEID: "KME_A", MaxKeySize: 1024}
	streams := &fakeStreams{apps: map[string]*AppView{}}
	k, err := New(set, store, newTopo("A", "B", true), &testPeers{clients: map[string]qkdv1.KeySyncServiceClient{}},
		stats.New("A", store, func() []string { return []string{linkAB} }), slog.New(slog.DiscardHandler), WithKeyStreams(streams))
	if err != nil {
		f.Fatal(err)
	}
	rec := &recording404{KMM: k}
	gw, err := gateway.New(rec, nil)
	if err != nil {
		f.Fatal(err)
	}
	saeCert := map[string]*x509.Certificate{}
	for _, s := range []string{saeA, saeA2} {
		saeCert[s] = &x509.Certificate{URIs: []*url.URL{{Scheme: "qkd", Host: "sae", Path: "/" + s}}}
	}

	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		call, viaREST, caller := sel%3, sel/3%2 == 1, []string{saeA, saeA2}[sel/6%2]
		// A blocking call waits for the peer or for keys within the QoS
		// timeout; the deadline keeps an iteration short.
		ctx, cancel := context.WithTimeout(pki.WithCaller(context.Background(), pki.Identity{Kind: pki.KindSAE, ID: caller}), 20*time.Millisecond)
		defer cancel()
		var req, resp proto.Message
		switch call {
		case 0:
			req, resp = &qkdv1.OpenConnectRequest{}, &qkdv1.OpenConnectResponse{}
		case 1:
			req, resp = &qkdv1.GetStreamKeyRequest{}, &qkdv1.GetStreamKeyResponse{}
		default:
			req, resp = &qkdv1.CloseStreamRequest{}, &qkdv1.CloseStreamResponse{}
		}
		streams.takeOpened()

		if viaREST {
			id := "00000000-0000-4000-8000-000000000001"
			path := map[uint8]string{0: "/api/v2/key_streams/open_connect", 1: "/api/v2/key_streams/" + id + "/get_key", 2: "/api/v2/key_streams/" + id + "/close"}[call]
			r := httptest.NewRequestWithContext(ctx, http.MethodPost, "https://kme"+path, bytes.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{saeCert[caller]}}}
			rec.got = nil
			w := httptest.NewRecorder()
			gw.ServeHTTP(w, r)
			if w.Code != http.StatusOK {
				var e struct {
					Message *string `json:"message"`
				}
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Message == nil || *e.Message == "" {
					t.Fatalf("HTTP %d without the ETSI error object: %q", w.Code, w.Body.Bytes())
				}
				if w.Code == http.StatusInternalServerError {
					t.Fatalf("HTTP 500 for %q: %s", body, w.Body.Bytes())
				}
			} else if err := protojson.Unmarshal(w.Body.Bytes(), resp); err != nil {
				t.Fatalf("HTTP 200 with a body that is not a %T: %v", resp, err)
			}
			if rec.got == nil {
				if opened := streams.takeOpened(); len(opened) > 0 {
					t.Fatalf("the gateway refused %q, yet the controller was asked %v", body, opened)
				}
				return
			}
			// The gateway decoded the body as protojson does (plus the
			// path's key_stream_id).
			// An empty body is an empty request: every field is optional.
			want := req
			if len(bytes.TrimSpace(body)) == 0 {
				body = []byte("{}")
			}
			if err := protojson.Unmarshal(body, want); err != nil {
				t.Fatalf("the gateway accepted %q, which protojson refuses: %v", body, err)
			}
			if call != 0 {
				want.ProtoReflect().Set(want.ProtoReflect().Descriptor().Fields().ByName("key_stream_id"), protoreflect.ValueOfString(id))
			}
			if !proto.Equal(rec.got, want) {
				t.Fatalf("the gateway handed the KMM %v; protojson reads %v", rec.got, want)
			}
			req = rec.got
			if w.Code != http.StatusOK {
				checkOpened(t, streams, caller, req, nil, set.MaxKeySize)
				return
			}
		} else {
			if err := proto.Unmarshal(body, req); err != nil {
				return // the gRPC server would refuse it before the KMM
			}
			var err error
			switch r := req.(type) {
			case *qkdv1.OpenConnectRequest:
				resp, err = k.OpenConnect(ctx, r)
			case *qkdv1.GetStreamKeyRequest:
				resp, err = k.GetStreamKey(ctx, r)
			case *qkdv1.CloseStreamRequest:
				resp, err = k.CloseStream(ctx, r)
			}
			if err != nil {
				st, ok := status.FromError(err)
				if !ok || st.Code() == codes.Unknown || st.Code() == codes.Internal || st.Message() == "" {
					t.Fatalf("refusal is not a clear gRPC status: %v", err)
				}
				checkOpened(t, streams, caller, req, nil, set.MaxKeySize)
				return
			}
		}
		checkOpened(t, streams, caller, req, resp, set.MaxKeySize)
		switch r := resp.(type) {
		case *qkdv1.OpenConnectResponse:
			if r.GetStatus() > Status004MetadataTooSmall {
				t.Fatalf("ETSI 004 status %d", r.GetStatus())
			}
		case *qkdv1.GetStreamKeyResponse:
			if r.GetStatus() > Status004MetadataTooSmall || (r.GetStatus() != Status004Success && len(r.GetKeyBuffer()) > 0) {
				t.Fatalf("GET_KEY status %d with %d key bytes", r.GetStatus(), len(r.GetKeyBuffer()))
			}
		}
	})
}

// checkOpened checks what the controller was asked to open for req.
func checkOpened(t *testing.T, streams *fakeStreams, caller string, req, resp proto.Message, maxKeyBits int) {
	t.Helper()
	opened := streams.takeOpened()
	oc, ok := req.(*qkdv1.OpenConnectRequest)
	if !ok {
		if len(opened) > 0 {
			t.Fatalf("%T opened a stream", req)
		}
		return
	}
	valid := validOpen(caller, oc, maxKeyBits)
	if !valid && resp != nil {
		t.Fatalf("OPEN_CONNECT %v by %s accepted (%v), but it is invalid", oc, caller, resp)
	}
	if len(opened) == 0 {
		return
	}
	if !valid || oc.GetKeyStreamId() != "" || len(opened) != 1 {
		t.Fatalf("OPEN_CONNECT %v by %s made the controller open %v", oc, caller, opened)
	}
	q, a := oc.GetQos(), opened[0]
	chunk := q.GetKeyChunkSize()
	if chunk == 0 {
		chunk = defaultChunk
	}
	if a.Master != caller || "qkd://sae/"+a.Slave != oc.GetDestination() || a.Connect != caller || a.MinBPS != q.GetMinBps() || a.MaxBPS != q.GetMaxBps() ||
		a.Jitter != q.GetJitter() || a.TTL != q.GetTtl() || a.Priority != q.GetPriority() || a.ChunkSize != chunk {
		t.Fatalf("OPEN_CONNECT %v by %s asked the controller for %+v", oc, caller, a)
	}
}
