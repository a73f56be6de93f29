package kmm

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"maps"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/qkdnet/qkdnet/driver"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/keysync"
	"github.com/qkdnet/qkdnet/kmm/stats"
	"github.com/qkdnet/qkdnet/pki"
)

// storeSnap is what a node's key store holds, through its public reads:
// every stream's settings and keys (seq -> key_ID and bits), and the pool.
type storeSnap struct {
	streams map[string]keystore.Stream
	keys    map[string]map[uint64]keystore.SeqKey
	pool    int
}

// A relayed stream has keys but no stream record here, so extra names
// streams to read besides those in the App Store.
func snapStore(tb testing.TB, s *keystore.Store, extra ...string) storeSnap {
	tb.Helper()
	out := storeSnap{streams: map[string]keystore.Stream{}, keys: map[string]map[uint64]keystore.SeqKey{}, pool: s.PoolCount(linkAB)}
	ids := extra
	for _, st := range s.Streams() {
		out.streams[st.ID] = st
		ids = append(ids, st.ID)
	}
	for _, id := range ids {
		ks, err := s.ReadSeqs(id, 0, 1<<20)
		if err != nil {
			tb.Fatalf("read stream %s: %v", id, err)
		}
		m := map[uint64]keystore.SeqKey{}
		for _, k := range ks {
			m[k.Seq] = k
		}
		out.keys[id] = m
	}
	return out
}

func (s storeSnap) total() int {
	n := s.pool
	for _, m := range s.keys {
		n += len(m)
	}
	return n
}

// peerFuzzRelay is the multi-hop stream the fuzzed node B receives by relay
// from A, and its pad stream on L_AB.
const (
	peerFuzzRelay = "SAE_X->SAE_B"
	peerFuzzPads  = peerFuzzRelay + "#1"
)

// FuzzPeerMessages: arbitrary protobuf bytes decoded as the inter-KMM
// messages (keysync OpenStream, Allocate, RequestAllocation, Relay) and sent
// over gRPC, from the link's other node, from a node that is not on the
// link, or from an SAE, to the Slave KMM B of link L_AB with a real key
// store holding a pool, a stream with keys, and the pads of a relayed
// stream. Properties: no panic; every refusal is a gRPC status with a code
// and a message (never Unknown or Internal); a refused message changes
// nothing in the store; whatever is accepted, no key already in a stream
// changes its key_ID or bits, and keys are never created (pool plus streams
// never grows: allocation moves pool keys, relay replaces a pad with the
// key it carried); only the link's other node changes anything.
func FuzzPeerMessages(f *testing.F) {
	store, err := keystore.Open(f.TempDir(), keystore.Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { store.Close() })
	k, err := New(Settings{Node: "B", KMEID: "KME_B", MaxKeysPerRequest: 64}, store, newTopo("B", "A", false),
		&testPeers{clients: map[string]qkdv1.KeySyncServiceClient{}}, stats.New("B", store, func() []string { return []string{linkAB} }), slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	k.SetRelays([]RelayPlan{{Stream: peerFuzzRelay, In: &RelayHop{Stream: peerFuzzPads, Link: linkAB, Peer: "A"}}})

	// The pool: keys whose bits the test knows, to build valid seeds.
	const poolKeys = 4000
	bits := map[string][]byte{}
	var dk []driver.Key
	for i := range poolKeys {
		b := make([]byte, linkKeyBytes)
		rand.Read(b)
		id := fmt.Sprintf("qkd-%08d", i)
		bits[id] = b
		dk = append(dk, driver.Key{ID: id, Bytes: append([]byte(nil), b...)})
	}
	if err := store.AddToPool(linkAB, dk); err != nil {
		f.Fatal(err)
	}
	stAB := keysync.ToProto(keystore.Stream{ID: StreamID(saeA, saeB), MasterSAE: saeA, SlaveSAE: saeB, Link: linkAB, QoS: keystore.QoS{KeyRate: 1, MaxBuffer: 64}})
	stPads := keysync.ToProto(keystore.Stream{ID: peerFuzzPads, MasterSAE: "SAE_X", SlaveSAE: saeB, Link: linkAB, QoS: keystore.QoS{KeyRate: 1, MaxBuffer: 64}})
	ctx := context.Background()
	if _, err := k.Apply(ctx, "A", "setup-1", keysync.FromProto(stAB), 0, []string{"qkd-00000000", "qkd-00000001", "qkd-00000002"}); err != nil {
		f.Fatal(err)
	}
	if _, err := k.Apply(ctx, "A", "setup-2", keysync.FromProto(stPads), 0, []string{"qkd-00000003", "qkd-00000004", "qkd-00000005", "qkd-00000006"}); err != nil {
		f.Fatal(err)
	}

	// One gRPC server per caller identity, as mutual TLS would name them.
	callers := []pki.Identity{{Kind: pki.KindNode, ID: "A"}, {Kind: pki.KindNode, ID: "C"}, {Kind: pki.KindSAE, ID: saeA}}
	conns := make([]*grpc.ClientConn, len(callers))
	for i, id := range callers {
		srv := &syncServer{h: k, caller: id}
		srv.start()
		f.Cleanup(srv.stop)
		cc, err := grpc.NewClient("passthrough:///B", grpc.WithContextDialer(srv.dial), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { cc.Close() })
		conns[i] = cc
	}

	// Seeds: valid messages of each kind from A, and a few broken ones.
	x := []byte("0123456789abcdef0123456789abcdef") // the relayed key
	z := make([]byte, len(x))
	for i := range z {
		z[i] = x[i] ^ bits["qkd-00000004"][i]
	}
	for _, m := range []struct {
		method uint8
		msg    proto.Message
	}{
		{0, &qkdv1.OpenStreamRequest{Stream: stAB}},
		{1, &qkdv1.AllocateRequest{BatchId: "b1", Stream: stAB, FirstSeq: 3, KeyIds: []string{"qkd-00000010", "qkd-00000011"}}},
		{1, &qkdv1.AllocateRequest{BatchId: "b2", Stream: stAB, FirstSeq: 1, KeyIds: []string{"qkd-00000012"}}},
		{1, &qkdv1.AllocateRequest{BatchId: "b3", Stream: stAB, FirstSeq: 1<<63 - 1, KeyIds: []string{"qkd-00000013", "qkd-00000014"}}},
		{1, &qkdv1.AllocateRequest{BatchId: "b4", Stream: stPads, FirstSeq: 4, KeyIds: []string{"qkd-00000015", "nope"}}},
		{2, &qkdv1.RequestAllocationRequest{Stream: stAB, Want: 5}},
		{3, &qkdv1.RelayRequest{StreamId: peerFuzzRelay, HopStreamId: peerFuzzPads, Keys: []*qkdv1.RelayedKey{{Seq: 1, KeyId: "k1", Z: z, Check: relayCheck(peerFuzzRelay, 1, x)}}}},
		{3, &qkdv1.RelayRequest{StreamId: peerFuzzRelay, HopStreamId: peerFuzzPads, Keys: []*qkdv1.RelayedKey{{Seq: 2, KeyId: "k2", Z: z, Check: relayCheck(peerFuzzRelay, 2, x)}, {Seq: 2, KeyId: "k2b", Z: z[:5], Check: []byte{1}}}}},
		{3, &qkdv1.RelayRequest{StreamId: peerFuzzRelay, HopStreamId: peerFuzzPads, Keys: []*qkdv1.RelayedKey{{Seq: 3, KeyId: "k3", Z: z, Check: make([]byte, 16)}}}},
	} {
		b, err := proto.Marshal(m.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.method, b)
	}
	f.Add(uint8(5), []byte{0x0a, 0x02, 'b', '1'})

	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		method, from := sel%4, int(sel/4)%len(callers)
		var req, resp proto.Message
		switch method {
		case 0:
			req, resp = &qkdv1.OpenStreamRequest{}, &qkdv1.OpenStreamResponse{}
		case 1:
			req, resp = &qkdv1.AllocateRequest{}, &qkdv1.AllocateResponse{}
		case 2:
			req, resp = &qkdv1.RequestAllocationRequest{}, &qkdv1.RequestAllocationResponse{}
		default:
			req, resp = &qkdv1.RelayRequest{}, &qkdv1.RelayResponse{}
		}
		if err := proto.Unmarshal(body, req); err != nil {
			return // the gRPC server refuses it before any handler
		}
		before := snapStore(t, store, peerFuzzRelay)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		name := []string{"OpenStream", "Allocate", "RequestAllocation", "Relay"}[method]
		callErr := conns[from].Invoke(ctx, "/"+qkdv1.KeySyncService_ServiceDesc.ServiceName+"/"+name, req, resp)
		after := snapStore(t, store, peerFuzzRelay)
		t.Logf("%s from %v: %v; keys %d -> %d", name, callers[from], callErr, before.total()-before.pool, after.total()-after.pool)
		if callErr != nil {
			st, ok := status.FromError(callErr)
			if !ok || st.Code() == codes.Unknown || st.Code() == codes.Internal || st.Message() == "" {
				t.Fatalf("%s refused without a clear status: %v", name, callErr)
			}
			if !snapsEqual(before, after) {
				t.Fatalf("a refused %s (%v) changed the store", name, callErr)
			}
			return
		}
		if callers[from].ID != "A" && !snapsEqual(before, after) {
			t.Fatalf("%s from %v changed the store", name, callers[from])
		}
		if after.total() > before.total() {
			t.Fatalf("%s created keys: %d before, %d after", name, before.total(), after.total())
		}
		for id, m := range before.keys {
			for seq, kb := range m {
				ka, ok := after.keys[id][seq]
				if ok && (ka.KeyID != kb.KeyID || string(ka.Key) != string(kb.Key)) {
					t.Fatalf("%s changed key %d of stream %s", name, seq, id)
				}
			}
		}
		for id, st := range before.streams {
			if a, ok := after.streams[id]; !ok || a.Link != st.Link {
				t.Fatalf("%s moved stream %s from link %s to %v", name, id, st.Link, a)
			}
		}
	})
}

func snapsEqual(a, b storeSnap) bool {
	if a.pool != b.pool || !maps.Equal(a.streams, b.streams) || len(a.keys) != len(b.keys) {
		return false
	}
	for id, m := range a.keys {
		if !maps.EqualFunc(m, b.keys[id], func(x, y keystore.SeqKey) bool {
			return x.KeyID == y.KeyID && string(x.Key) == string(y.Key)
		}) {
			return false
		}
	}
	return true
}

// TestPeerMessageRefusedAsInvalid: a peer's batch or relay that cannot be
// right is answered INVALID_ARGUMENT (not UNAVAILABLE, which says "retry
// the same message"), and changes nothing. Found by FuzzPeerMessages.
func TestPeerMessageRefusedAsInvalid(t *testing.T) {
	p := newTestPair(t, nil)
	keys := p.supply(t, 8)
	b := p.b
	b.k.SetRelays([]RelayPlan{{Stream: peerFuzzRelay, In: &RelayHop{Stream: peerFuzzPads, Link: linkAB, Peer: "A"}}})
	stPads := keysync.ToProto(keystore.Stream{ID: peerFuzzPads, MasterSAE: "SAE_X", SlaveSAE: saeB, Link: linkAB})
	if _, err := b.k.Apply(context.Background(), "A", "pads", keysync.FromProto(stPads), 0, []string{keys[0].id, keys[1].id}); err != nil {
		t.Fatal(err)
	}
	cl, err := p.a.peers.KeySync("B")
	if err != nil {
		t.Fatal(err)
	}
	before := snapStore(t, b.store, peerFuzzRelay)
	ctx := asCaller(t, pki.Identity{Kind: pki.KindNode, ID: "A"})
	stAB := keysync.ToProto(keystore.Stream{ID: StreamID(saeA, saeB), MasterSAE: saeA, SlaveSAE: saeB, Link: linkAB})
	for _, tc := range []struct {
		desc string
		call func() error
	}{
		{"batch past the last sequence number", func() error {
			_, err := cl.Allocate(ctx, &qkdv1.AllocateRequest{BatchId: "x1", Stream: stAB, FirstSeq: ^uint64(0) - 1, KeyIds: []string{keys[2].id, keys[3].id}})
			return err
		}},
		{"relayed key of another size than its pad", func() error {
			_, err := cl.Relay(ctx, &qkdv1.RelayRequest{StreamId: peerFuzzRelay, HopStreamId: peerFuzzPads,
				Keys: []*qkdv1.RelayedKey{{Seq: 1, KeyId: "k", Z: []byte{1, 2, 3}, Check: []byte{1}}}})
			return err
		}},
	} {
		if err := tc.call(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", tc.desc, err)
		}
	}
	if !snapsEqual(before, snapStore(t, b.store, peerFuzzRelay)) {
		t.Error("a refused message changed the store")
	}
}
