package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/testbed"
)

// ksClient is an ETSI 004 client of an SAE at its KMM's gRPC port.
func ksClient(t *testing.T, n *testbed.Network, sae string) qkdv1.KeyStreamServiceClient {
	return ksClientTB(t, n, sae)
}

func ksClientTB(t testing.TB, n *testbed.Network, sae string) qkdv1.KeyStreamServiceClient {
	t.Helper()
	ep := n.Endpoints()
	s, _ := ep.SAE(sae)
	k, _ := ep.KMM(s.KMM)
	cfg, err := pki.ClientTLS(ep.CACert, s.Cert, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(k.GRPC, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return qkdv1.NewKeyStreamServiceClient(cc)
}

func uri(sae string) string { return "qkd://sae/" + sae }

func topology004() *testbed.Topology {
	return &testbed.Topology{
		Nodes: []testbed.TopoNode{{ID: "A", KMEID: "KME_A"}, {ID: "B", KMEID: "KME_B"}, {ID: "C", KMEID: "KME_C"}},
		Links: []testbed.TopoLink{{ID: "AB", A: "A", B: "B", Master: "A", Kind: "DV-QKD", Driver: "emulator", KeyRate: 500, KeyBytes: 32}},
		SAEs: []testbed.TopoSAE{{ID: "SAE_A", Node: "A"}, {ID: "SAE_A2", Node: "A"}, {ID: "SAE_B", Node: "B"},
			{ID: "SAE_C", Node: "C"}},
	}
}

// TestETSI004 runs OPEN_CONNECT, GET_KEY and CLOSE between SAE_A and SAE_B
// over real processes, with every status code the network can produce.
func TestETSI004(t *testing.T) {
	n := upWith(t, testbed.Options{Topology: topology004()})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := ksClient(t, n, "SAE_A"), ksClient(t, n, "SAE_B")
	qos := &qkdv1.KeyStreamQoS{KeyChunkSize: 64, Timeout: 3000}

	open, err := a.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_A"), Destination: uri("SAE_B"), Qos: qos})
	if err != nil || open.GetStatus() != 1 || open.GetKeyStreamId() == "" {
		t.Fatalf("OPEN_CONNECT at A = %v, %v; want status 1 and an ID", open, err)
	}
	id := open.GetKeyStreamId()
	if r, err := a.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, MetadataSize: 256}); err != nil || r.GetStatus() != 3 {
		t.Fatalf("GET_KEY before the peer joined = %v, %v; want status 3", r, err)
	}
	join, err := b.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_B"), Destination: uri("SAE_A"), KeyStreamId: id, Qos: &qkdv1.KeyStreamQoS{Timeout: 3000}})
	if err != nil || join.GetStatus() != 0 || join.GetQos().GetKeyChunkSize() != 64 {
		t.Fatalf("OPEN_CONNECT at B = %v, %v; want status 0 with the stream's chunk size 64", join, err)
	}
	if r, err := a.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_A"), Destination: uri("SAE_B"), KeyStreamId: id}); err != nil || r.GetStatus() != 5 {
		t.Errorf("second OPEN_CONNECT of a connected SAE = %v, %v; want status 5", r, err)
	}

	// Chunk 0 at both ends, A first; chunk 1 at both ends, B first (without an index).
	k0a, err := a.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, MetadataSize: 256})
	if err != nil || k0a.GetStatus() != 0 || k0a.GetIndex() != 0 || len(k0a.GetKeyBuffer()) != 64 {
		t.Fatalf("GET_KEY at A = %v, %v", k0a, err)
	}
	var meta map[string]any
	if err := json.Unmarshal(k0a.GetMetadata(), &meta); err != nil || meta["key_stream_id"] != id {
		t.Errorf("metadata %q: %v", k0a.GetMetadata(), err)
	}
	k0b, err := b.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, Index: proto.Uint32(0), MetadataSize: 256})
	if err != nil || k0b.GetStatus() != 0 || !bytes.Equal(k0b.GetKeyBuffer(), k0a.GetKeyBuffer()) {
		t.Fatalf("GET_KEY index 0 at B = %v, %v; want A's bytes", k0b, err)
	}
	k1b, err := b.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, MetadataSize: 256})
	if err != nil || k1b.GetStatus() != 0 || k1b.GetIndex() != 1 {
		t.Fatalf("next GET_KEY at B = %v, %v; want index 1", k1b, err)
	}
	k1a, err := a.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, Index: proto.Uint32(1), MetadataSize: 256})
	if err != nil || !bytes.Equal(k1a.GetKeyBuffer(), k1b.GetKeyBuffer()) || bytes.Equal(k1a.GetKeyBuffer(), k0a.GetKeyBuffer()) {
		t.Fatalf("GET_KEY index 1 at A = %v, %v; want B's chunk 1, unlike chunk 0", k1a, err)
	}
	if _, err := a.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, Index: proto.Uint32(0), MetadataSize: 256}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("GET_KEY of a delivered chunk: %v; want InvalidArgument", err)
	}
	if r, err := a.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, MetadataSize: 2}); err != nil || r.GetStatus() != 8 || r.GetMetadataSize() <= 2 {
		t.Errorf("GET_KEY with 2 bytes of metadata room = %v, %v; want status 8 and the size needed", r, err)
	}

	// No path to node C: status 4. SAE_A2 asking more than the link makes: 7.
	if r, err := a.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_A"), Destination: uri("SAE_C"), Qos: qos}); err != nil || r.GetStatus() != 4 {
		t.Errorf("OPEN_CONNECT to an unreachable node = %v, %v; want status 4", r, err)
	}
	a2 := ksClient(t, n, "SAE_A2")
	var r7 *qkdv1.OpenConnectResponse
	for range 50 { // until the agents have reported the link's key rate
		r7, err = a2.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_A2"), Destination: uri("SAE_B"),
			Qos: &qkdv1.KeyStreamQoS{MinBps: 1_000_000_000}})
		if err != nil || r7.GetStatus() == 7 {
			break
		}
		// Admitted before the rate was measured: close and ask again.
		if _, err := a2.CloseStream(ctx, &qkdv1.CloseStreamRequest{KeyStreamId: r7.GetKeyStreamId()}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || r7.GetStatus() != 7 || r7.GetQos().GetMinBps() == 0 || r7.GetQos().GetMinBps() >= 1_000_000_000 {
		t.Errorf("OPEN_CONNECT beyond the link's rate = %v, %v; want status 7 with what the link can carry", r7, err)
	}
	// Bad input and a stranger.
	if _, err := a.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: "SAE_A", Destination: uri("SAE_B")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("source without a URI: %v", err)
	}
	if _, err := a.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_B"), Destination: uri("SAE_A")}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("source of another SAE: %v", err)
	}

	// REST through the gateway: the same stream, chunk 2 at B.
	ep := n.Endpoints()
	s, _ := ep.SAE("SAE_B")
	k, _ := ep.KMM("B")
	cfg, _ := pki.ClientTLS(ep.CACert, s.Cert, s.Key)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg.Clone(), ForceAttemptHTTP2: true}, Timeout: 10 * time.Second}
	resp, err := hc.Post(k.URL+"/api/v2/key_streams/"+id+"/get_key", "application/json", strings.NewReader(`{"index": 2, "metadata_size": 256}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var rest struct {
		Status    int    `json:"status"`
		KeyBuffer []byte `json:"keyBuffer"`
		Index     int    `json:"index"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &rest) != nil || rest.Index != 2 || len(rest.KeyBuffer) != 64 {
		t.Errorf("REST GET_KEY: %d %s", resp.StatusCode, body)
	}

	// CLOSE: A leaves, B is told the peer is gone, B leaves, the stream goes.
	if r, err := a.CloseStream(ctx, &qkdv1.CloseStreamRequest{KeyStreamId: id}); err != nil || r.GetStatus() != 0 {
		t.Fatalf("CLOSE at A = %v, %v", r, err)
	}
	// B learns of the CLOSE with the controller's next push to B.
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := b.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, MetadataSize: 256})
		if err == nil && r.GetStatus() == 3 {
			break
		}
		if err != nil || r.GetStatus() != 0 || time.Now().After(deadline) {
			t.Fatalf("GET_KEY after the peer closed = %v, %v; want status 3", r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r, err := b.CloseStream(ctx, &qkdv1.CloseStreamRequest{KeyStreamId: id}); err != nil || r.GetStatus() != 0 {
		t.Fatalf("CLOSE at B = %v, %v", r, err)
	}
	for _, app := range network(t, n).GetApplications() {
		if app.GetAppId() == id {
			t.Errorf("application %s still exists after both parties closed", id)
		}
	}
}

// TestPriorityUnderContention opens two ETSI 004 streams over one link that
// makes 20 keys/s: one of priority 10 guaranteed 10 keys/s (min_bps 2560
// with 256-bit keys), one of priority 1 guaranteed 4 keys/s. Both ask for a
// chunk every 50 ms (40 keys/s in all), the low one first: the high one must
// get more, and the low one must still get its guaranteed minimum's worth.
func TestPriorityUnderContention(t *testing.T) {
	top := &testbed.Topology{
		Nodes: []testbed.TopoNode{{ID: "A", KMEID: "KME_A"}, {ID: "B", KMEID: "KME_B"}},
		Links: []testbed.TopoLink{{ID: "AB", A: "A", B: "B", Master: "A", Kind: "DV-QKD", Driver: "emulator", KeyRate: 20, KeyBytes: 32}},
		SAEs:  []testbed.TopoSAE{{ID: "SAE_HA", Node: "A"}, {ID: "SAE_HB", Node: "B"}, {ID: "SAE_LA", Node: "A"}, {ID: "SAE_LB", Node: "B"}},
	}
	n := upWith(t, testbed.Options{Topology: top})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	open := func(m, s string, qos *qkdv1.KeyStreamQoS) (qkdv1.KeyStreamServiceClient, string) {
		cm, cs := ksClient(t, n, m), ksClient(t, n, s)
		r, err := cm.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri(m), Destination: uri(s), Qos: qos})
		if err != nil || r.GetKeyStreamId() == "" {
			t.Fatalf("OPEN_CONNECT %s: %v %v", m, r, err)
		}
		if r2, err := cs.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri(s), Destination: uri(m), KeyStreamId: r.GetKeyStreamId()}); err != nil || r2.GetStatus() != 0 {
			t.Fatalf("join %s: %v %v", s, r2, err)
		}
		return cm, r.GetKeyStreamId()
	}
	high, hid := open("SAE_HA", "SAE_HB", &qkdv1.KeyStreamQoS{KeyChunkSize: 32, Priority: 10, MinBps: 2560})
	low, lid := open("SAE_LA", "SAE_LB", &qkdv1.KeyStreamQoS{KeyChunkSize: 32, Priority: 1, MinBps: 1024})
	var got [2]int
	for range 60 {
		for i, s := range []struct {
			cl qkdv1.KeyStreamServiceClient
			id string
		}{{low, lid}, {high, hid}} {
			r, err := s.cl.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: s.id, MetadataSize: 256})
			if err != nil {
				t.Fatal(err)
			}
			if r.GetStatus() == 0 {
				got[i]++
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("chunks in 60 rounds: priority 10 got %d, priority 1 got %d", got[1], got[0])
	// Over the ~3 s of the test: the high one well above the low one, the
	// low one not starved (its 4 keys/s; a third of that is plenty of slack
	// for a busy machine).
	if got[1] <= got[0] || got[0] < 4 {
		t.Errorf("priority 10 got %d chunks, priority 1 got %d; want the high one ahead and the low one not starved", got[1], got[0])
	}
}

// TestStreamTTL opens an ETSI 004 stream whose keys live one second: a chunk
// allocated at the start is gone after the TTL at both ends, and GET_KEY
// without an index moves on to key that is still alive.
func TestStreamTTL(t *testing.T) {
	top := &testbed.Topology{
		Nodes: []testbed.TopoNode{{ID: "A", KMEID: "KME_A"}, {ID: "B", KMEID: "KME_B"}},
		Links: []testbed.TopoLink{{ID: "AB", A: "A", B: "B", Master: "A", Kind: "DV-QKD", Driver: "emulator", KeyRate: 50, KeyBytes: 32}},
		SAEs:  []testbed.TopoSAE{{ID: "SAE_A", Node: "A"}, {ID: "SAE_B", Node: "B"}},
	}
	n := upWith(t, testbed.Options{Topology: top})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := ksClient(t, n, "SAE_A"), ksClient(t, n, "SAE_B")
	open, err := a.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_A"), Destination: uri("SAE_B"), Qos: &qkdv1.KeyStreamQoS{KeyChunkSize: 32, Ttl: 1, Timeout: 2000}})
	if err != nil {
		t.Fatal(err)
	}
	id := open.GetKeyStreamId()
	if r, err := b.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_B"), Destination: uri("SAE_A"), KeyStreamId: id, Qos: &qkdv1.KeyStreamQoS{Timeout: 2000}}); err != nil || r.GetStatus() != 0 {
		t.Fatalf("join: %v %v", r, err)
	}
	first, err := a.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, MetadataSize: 256})
	if err != nil || first.GetStatus() != 0 {
		t.Fatalf("first GET_KEY: %v %v", first, err)
	}
	time.Sleep(2500 * time.Millisecond) // past the TTL and an expiry pass
	// Chunk 1 was allocated with chunk 0 (a new stream gets keys at once):
	// its TTL is over at B too.
	if r, err := b.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, Index: proto.Uint32(1), MetadataSize: 256}); err != nil || r.GetStatus() == 0 {
		t.Errorf("chunk 1 after its TTL at B = %v, %v; want it gone", r, err)
	}
	next, err := a.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, MetadataSize: 256})
	if err != nil || next.GetStatus() != 0 || next.GetIndex() <= 1 {
		t.Fatalf("GET_KEY after the TTL = %v, %v; want a later chunk", next, err)
	}
	// Fresh key is the same at both ends. (Each end destroys a key when its
	// own TTL ends, so a chunk at the edge of the TTL may be gone at one end
	// a moment before the other: compare one allocated from now on.)
	idx := proto.Uint32(next.GetIndex() + 20)
	ra, err := a.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, Index: idx, MetadataSize: 256})
	if err != nil || ra.GetStatus() != 0 {
		t.Fatalf("chunk %d at A = %v, %v", *idx, ra, err)
	}
	rb, err := b.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, Index: idx, MetadataSize: 256})
	if err != nil || rb.GetStatus() != 0 || !bytes.Equal(ra.GetKeyBuffer(), rb.GetKeyBuffer()) {
		t.Errorf("chunk %d at B = %v, %v; want A's bytes", *idx, rb, err)
	}
}
