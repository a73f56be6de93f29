package kmm

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/stats"
	"github.com/qkdnet/qkdnet/pki"
)

// A three-node path for key relay: A -L_AB- B -L_BC- C, A the Master of
// L_AB, B of L_BC; SAE_A at A sends to SAE_Z at C, through B, as the
// controller would configure it.
const (
	linkBC = "L_BC"
	saeZ   = "SAE_Z"
)

// openedApps stands for a controller that already configured every stream.
type openedApps struct{}

func (openedApps) Open(context.Context, string, string) error { return nil }

type chain struct {
	a, b, c *testNode
	s       string      // the end-to-end stream SAE_A -> SAE_Z
	plans   []RelayPlan // A's, B's, C's
	pair    testPair    // for makeKeys
}

func newChain(t *testing.T) *chain {
	t.Helper()
	saes := map[string]string{saeA: "A", saeZ: "C"}
	kmes := map[string]string{"A": "KME_A", "B": "KME_B", "C": "KME_C"}
	ab := func(master bool, peer string) Link {
		return Link{ID: linkAB, Peer: peer, Master: master, KeyBytes: linkKeyBytes}
	}
	bc := func(master bool, peer string) Link {
		return Link{ID: linkBC, Peer: peer, Master: master, KeyBytes: linkKeyBytes}
	}
	topos := map[string]*testTopo{
		"A": {node: "A", saes: saes, kmes: kmes, links: map[string]Link{"B": ab(true, "B")}},
		"B": {node: "B", saes: saes, kmes: kmes, links: map[string]Link{"A": ab(false, "A"), "C": bc(true, "C")}},
		"C": {node: "C", saes: saes, kmes: kmes, links: map[string]Link{"B": bc(false, "B")}},
	}
	// Who calls each node's KeySyncService: A is called by B, B by A, C by B.
	callers := map[string]string{"A": "B", "B": "A", "C": "B"}
	ch := &chain{s: StreamID(saeA, saeZ)}
	node := func(name string) *testNode {
		store, err := keystore.Open(t.TempDir(), keystore.Options{})
		if err != nil {
			t.Fatalf("keystore.Open: %v", err)
		}
		t.Cleanup(func() { store.Close() })
		st := stats.New(name, store, func() []string { return []string{linkAB, linkBC} })
		n := &testNode{name: name, store: store, stats: st, peers: &testPeers{clients: map[string]qkdv1.KeySyncServiceClient{}}}
		n.k, err = New(Settings{Node: name, KMEID: "KME_" + name, MaxKeysPerRequest: 64}, store, topos[name], n.peers, st, slog.New(slog.DiscardHandler), WithApps(openedApps{}))
		if err != nil {
			t.Fatalf("New(%s): %v", name, err)
		}
		n.srv = &syncServer{h: n.k, caller: pki.Identity{Kind: pki.KindNode, ID: callers[name]}}
		n.srv.start()
		t.Cleanup(n.srv.stop)
		return n
	}
	ch.a, ch.b, ch.c = node("A"), node("B"), node("C")
	connect(t, ch.a, ch.b)
	connect(t, ch.b, ch.a)
	connect(t, ch.b, ch.c)
	hop1 := HopStreamID(ch.s, 1)
	ch.plans = []RelayPlan{
		{Stream: ch.s, Out: &RelayHop{Stream: ch.s, Link: linkAB, Peer: "B"}},
		{Stream: ch.s, In: &RelayHop{Stream: ch.s, Link: linkAB, Peer: "A"}, Out: &RelayHop{Stream: hop1, Link: linkBC, Peer: "C"}},
		{Stream: ch.s, In: &RelayHop{Stream: hop1, Link: linkBC, Peer: "B"}},
	}
	streams := map[*testNode][]keystore.Stream{
		ch.a: {{ID: ch.s, MasterSAE: saeA, SlaveSAE: saeZ, Link: linkAB}},
		ch.b: {{ID: ch.s, MasterSAE: saeA, SlaveSAE: saeZ, Link: linkAB}, {ID: hop1, MasterSAE: saeA, SlaveSAE: saeZ, Link: linkBC}},
		ch.c: {{ID: hop1, MasterSAE: saeA, SlaveSAE: saeZ, Link: linkBC}, {ID: ch.s, MasterSAE: saeA, SlaveSAE: saeZ, Link: "relay:" + linkBC}},
	}
	for i, n := range []*testNode{ch.a, ch.b, ch.c} {
		for _, st := range streams[n] {
			st.QoS = n.k.DefaultQoS()
			if _, err := n.store.PutStream(st); err != nil {
				t.Fatalf("PutStream at %s: %v", n.name, err)
			}
		}
		n.k.SetRelays([]RelayPlan{ch.plans[i]})
	}
	return ch
}

// supply delivers n keys to both ends of link.
func (ch *chain) supply(t *testing.T, link string, n int) {
	t.Helper()
	keys := ch.pair.makeKeys(t, n)
	ends := map[string][]*testNode{linkAB: {ch.a, ch.b}, linkBC: {ch.b, ch.c}}[link]
	for _, nd := range ends {
		if err := nd.k.Sink(link)(anonymous(t), driverKeys(keys)); err != nil {
			t.Fatalf("Sink at %s: %v", nd.name, err)
		}
	}
}

// TestReplaceKeysMultiHop: a key replaced while it waits at the relay node
// is erased there with its pad; when a relay message of it sent before the
// replacement arrives at the slave's node afterwards, the key is dropped
// and the pad erased there too, and the slave SAE is told it was replaced;
// the new key and the others arrive by relay as usual.
func TestReplaceKeysMultiHop(t *testing.T) {
	ch := newChain(t)
	ch.supply(t, linkAB, 16)
	ch.supply(t, linkBC, 16)
	got, err := enc(t, ch.a, saeA, saeZ, 2, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	want := byID(got)
	old, kept := keyIDs(got)[0], keyIDs(got)[1]

	// B reads X and has its pad allocated on L_BC, as its relay loop would,
	// and builds the Relay message of the old key; it is "in flight" (held
	// back here) while the master SAE replaces the key.
	ctx := anonymous(t)
	hop1 := HopStreamID(ch.s, 1)
	if err := ch.b.k.fillHop(ctx, ch.plans[1], 4); err != nil {
		t.Fatalf("pads on L_BC: %v", err)
	}
	xs, err := ch.b.store.ReadSeqs(ch.s, 0, 1)
	if err != nil || len(xs) != 1 {
		t.Fatalf("B's first key of the stream: %v, %v", xs, err)
	}
	if !bytes.Equal(xs[0].Key, want[old]) {
		t.Fatal("B's first key of the stream is not the key the master SAE got first")
	}
	pads, err := ch.b.store.ReadSeqs(hop1, xs[0].Seq, 1)
	if err != nil || len(pads) != 1 || pads[0].Seq != xs[0].Seq {
		t.Fatalf("B's pad of sequence %d: %v, %v", xs[0].Seq, pads, err)
	}
	z := make([]byte, len(pads[0].Key))
	for i := range z {
		z[i] = xs[0].Key[i] ^ pads[0].Key[i]
	}
	inFlight := &qkdv1.RelayRequest{StreamId: ch.s, HopStreamId: hop1, Keys: []*qkdv1.RelayedKey{
		{Seq: xs[0].Seq, KeyId: xs[0].KeyID, Z: z, Check: relayCheck(ch.s, xs[0].Seq, xs[0].Key)},
	}}
	seq := xs[0].Seq
	cPadsBefore := ch.c.store.StreamCount(hop1)

	nw, err := replace(t, ch.a, saeA, saeZ, old)
	if err != nil {
		t.Fatalf("replace_keys: %v", err)
	}
	for k, v := range byID(nw) {
		want[k] = v
	}
	// B holds neither the key nor its pad any more.
	if x, _ := ch.b.store.ReadSeqs(ch.s, seq, 1); len(x) > 0 && x[0].Seq == seq {
		t.Fatal("B still holds the replaced key")
	}
	if x, _ := ch.b.store.ReadSeqs(hop1, seq, 1); len(x) > 0 && x[0].Seq == seq {
		t.Fatal("B still holds the replaced key's pad")
	}
	if got := ch.c.store.StreamCount(hop1); got != cPadsBefore-1 {
		t.Fatalf("C holds %d pads, want %d (the replaced key's erased)", got, cPadsBefore-1)
	}

	// The Relay message sent before the replacement arrives now.
	held, err := ch.c.k.Relay(ctx, "B", inFlight)
	if err != nil || len(held) != 1 || held[0] != seq {
		t.Fatalf("late Relay at C: held %v, %v; want [%d] (dropped, answered as held)", held, err, seq)
	}
	if x, _ := ch.c.store.ReadSeqs(ch.s, seq, 1); len(x) > 0 && x[0].Seq == seq {
		t.Fatal("C stored a key relayed after it was revoked")
	}
	if x, _ := ch.c.store.ReadSeqs(hop1, seq, 1); len(x) > 0 && x[0].Seq == seq {
		t.Fatal("C kept the pad of a key dropped as revoked")
	}

	// The rest goes through the relay as usual.
	for i := 0; i < 10 && ch.c.store.StreamCount(ch.s) < 2; i++ {
		if _, err := ch.b.k.relayOnce(ctx, ch.plans[1]); err != nil {
			t.Fatalf("relay at B: %v", err)
		}
	}
	_, err = dec(t, ch.c, saeZ, saeA, old)
	checkErr(t, err, codes.InvalidArgument, "key_ID")
	if !strings.Contains(status.Convert(err).Message(), "replaced at the master SAE's request") {
		t.Fatalf("dec_keys of the replaced key at C: %v", err)
	}
	mustDec(t, ch.c, saeZ, saeA, want, kept, keyIDs(nw)[0])
}

// TestReplaceKeysMultiHopUnknownWritesNothing: a key_ID found on no node of
// the path is refused, and no node erases or marks anything for the good
// key_IDs named beside it.
func TestReplaceKeysMultiHopUnknownWritesNothing(t *testing.T) {
	ch := newChain(t)
	ch.supply(t, linkAB, 8)
	ch.supply(t, linkBC, 8)
	got, err := enc(t, ch.a, saeA, saeZ, 2, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	ctx := anonymous(t)
	// The first key reaches C, the second waits at B.
	if err := ch.b.k.fillHop(ctx, ch.plans[1], 1); err != nil {
		t.Fatalf("pads on L_BC: %v", err)
	}
	if _, err := ch.b.k.relayOnce(ctx, ch.plans[1]); err != nil {
		t.Fatalf("relay at B: %v", err)
	}
	if ch.c.store.StreamCount(ch.s) != 1 || ch.b.store.StreamCount(ch.s) != 1 {
		t.Fatalf("want one key at C and one at B, have %d and %d", ch.c.store.StreamCount(ch.s), ch.b.store.StreamCount(ch.s))
	}
	unknown := "00000000-0fff-801f-a7ac-f0acf18dd183"
	_, err = replace(t, ch.a, saeA, saeZ, keyIDs(got)[0], unknown, keyIDs(got)[1])
	checkErr(t, err, codes.InvalidArgument, "key_ID")
	if ch.c.store.StreamCount(ch.s) != 1 || ch.b.store.StreamCount(ch.s) != 1 {
		t.Fatal("a refused replace erased keys")
	}
	// Both keys found, one at each node: replaced.
	if _, err := replace(t, ch.a, saeA, saeZ, keyIDs(got)...); err != nil {
		t.Fatalf("replace_keys: %v", err)
	}
	// (B holds the new keys now, at higher sequence numbers.)
	for _, n := range []*testNode{ch.b, ch.c} {
		xs, err := n.store.ReadSeqs(ch.s, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range xs {
			if x.Seq < 2 {
				t.Fatalf("%s still holds sequence %d of a replaced key", n.name, x.Seq)
			}
		}
	}
}
