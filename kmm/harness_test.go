package kmm

// The test harness: two KMMs in one process, A (Master of link L_AB, SAEs
// SAE_A and SAE_A2) and B (Slave, SAEs SAE_B and SAE_C), each with its own
// key store, reaching each other's KeySyncService over gRPC on bufconn. An
// interceptor on each server puts the calling node's identity in the
// context, as the mutual TLS of the agent would.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/qkdnet/qkdnet/driver"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/keysync"
	"github.com/qkdnet/qkdnet/kmm/stats"
	"github.com/qkdnet/qkdnet/pki"
)

const (
	linkAB       = "L_AB"
	linkKeyBytes = 32 // the QKD link delivers 256-bit keys
	saeA         = "SAE_A"
	saeA2        = "SAE_A2"
	saeB         = "SAE_B"
	saeC         = "SAE_C"
	testTimeout  = 20 * time.Second
)

// testTopo is one node's view of the two-node network.
type testTopo struct {
	node  string
	saes  map[string]string // SAE → node
	links map[string]Link   // neighbour node → link
	kmes  map[string]string // node → KME_ID
}

func (t *testTopo) SAENode(sae string) (string, bool) { n, ok := t.saes[sae]; return n, ok }
func (t *testTopo) LinkTo(node string) (Link, bool)   { l, ok := t.links[node]; return l, ok }
func (t *testTopo) KMEID(node string) (string, bool)  { k, ok := t.kmes[node]; return k, ok }
func (t *testTopo) LinkByID(id string) (Link, bool) {
	for _, l := range t.links {
		if l.ID == id {
			return l, true
		}
	}
	return Link{}, false
}

func newTopo(node, peer string, master bool) *testTopo {
	return &testTopo{
		node:  node,
		saes:  map[string]string{saeA: "A", saeA2: "A", saeB: "B", saeC: "B"},
		links: map[string]Link{peer: {ID: linkAB, Peer: peer, Master: master, KeyBytes: linkKeyBytes}},
		kmes:  map[string]string{"A": "KME_A", "B": "KME_B"},
	}
}

// syncServer serves one KMM's KeySyncService on bufconn and can be stopped
// and started again (a peer KMM going away and coming back).
type syncServer struct {
	h      keysync.Handler
	caller pki.Identity // who calls this server: the node at the other end

	mu  sync.Mutex
	lis *bufconn.Listener
	srv *grpc.Server
}

func (s *syncServer) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return
	}
	caller := s.caller
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(pki.WithCaller(ctx, caller), req)
	}))
	keysync.Register(srv, s.h)
	lis := bufconn.Listen(1 << 20)
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	s.lis, s.srv = lis, srv
}

func (s *syncServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return
	}
	s.srv.Stop()
	s.lis.Close()
	s.lis, s.srv = nil, nil
}

func (s *syncServer) dial(ctx context.Context, _ string) (net.Conn, error) {
	s.mu.Lock()
	lis := s.lis
	s.mu.Unlock()
	if lis == nil {
		return nil, errors.New("peer KMM is down")
	}
	return lis.DialContext(ctx)
}

// testPeers is a KMM's Peers: one gRPC client per neighbour node.
type testPeers struct {
	mu      sync.Mutex
	clients map[string]qkdv1.KeySyncServiceClient
	// afterReply, if set, runs after each keysync call returns, before the
	// caller sees the answer: a test holds a reply in flight with it.
	afterReply func(method string)
}

func (p *testPeers) setAfterReply(f func(method string)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.afterReply = f
}

func (p *testPeers) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	p.mu.Lock()
	f := p.afterReply
	p.mu.Unlock()
	if f != nil {
		f(method)
	}
	return err
}

func (p *testPeers) KeySync(node string) (qkdv1.KeySyncServiceClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cl, ok := p.clients[node]
	if !ok {
		return nil, fmt.Errorf("no connection to node %s", node)
	}
	return cl, nil
}

// testNode is one trusted node: its KMM and what the tests look at.
type testNode struct {
	name  string
	k     *KMM
	store *keystore.Store
	stats *stats.Stats
	srv   *syncServer
	peers *testPeers

	dir    string
	peer   string
	master bool
	set    Settings
}

// testPair is nodes A and B joined by link L_AB.
type testPair struct {
	a, b   *testNode
	nextID atomic.Int64
}

func newTestNode(t *testing.T, name, peer string, master bool, set Settings) *testNode {
	t.Helper()
	set.Node, set.KMEID = name, "KME_"+name
	if set.MaxKeysPerRequest == 0 {
		set.MaxKeysPerRequest = 64
	}
	n := &testNode{name: name, dir: t.TempDir(), peer: peer, master: master, set: set,
		peers: &testPeers{clients: map[string]qkdv1.KeySyncServiceClient{}}}
	n.open(t)
	n.srv = &syncServer{h: n.k, caller: pki.Identity{Kind: pki.KindNode, ID: peer}}
	n.srv.start()
	t.Cleanup(n.srv.stop)
	return n
}

// open opens the node's store and builds its KMM.
func (n *testNode) open(t *testing.T) {
	t.Helper()
	store, err := keystore.Open(n.dir, keystore.Options{})
	if err != nil {
		t.Fatalf("keystore.Open: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	st := stats.New(n.name, store, func() []string { return []string{linkAB} })
	k, err := New(n.set, store, newTopo(n.name, n.peer, n.master), n.peers, st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("New(%s): %v", n.name, err)
	}
	n.k, n.store, n.stats = k, store, st
}

// restart stops the node as a crash would (nothing but the store on disk
// survives) and starts it again on the same store.
func (n *testNode) restart(t *testing.T) {
	t.Helper()
	n.srv.stop()
	if err := n.store.Close(); err != nil {
		t.Fatalf("close store of %s: %v", n.name, err)
	}
	n.open(t)
	n.srv.mu.Lock()
	n.srv.h = n.k
	n.srv.mu.Unlock()
	n.srv.start()
}

// connect gives from a client of to's KeySyncService.
func connect(t *testing.T, from, to *testNode) {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+to.name,
		grpc.WithContextDialer(to.srv.dial),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(from.peers.intercept),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.2, MaxDelay: 20 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	from.peers.mu.Lock()
	from.peers.clients[to.name] = qkdv1.NewKeySyncServiceClient(cc)
	from.peers.mu.Unlock()
}

// newTestPair builds A and B; adjust, if given, changes both nodes' settings.
func newTestPair(t *testing.T, adjust func(*Settings)) *testPair {
	t.Helper()
	var set Settings
	if adjust != nil {
		adjust(&set)
	}
	p := &testPair{
		a: newTestNode(t, "A", "B", true, set),
		b: newTestNode(t, "B", "A", false, set),
	}
	connect(t, p.a, p.b)
	connect(t, p.b, p.a)
	return p
}

// run runs both KMMs' allocation cycles and key destruction until the test ends.
func (p *testPair) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, n := range []*testNode{p.a, p.b} {
		wg.Add(1)
		go func() { defer wg.Done(); n.k.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// qkdKey is a key the QKD link delivered to both ends.
type qkdKey struct {
	id   string
	bits []byte
}

// makeKeys returns n new link keys with fresh random bits.
func (p *testPair) makeKeys(t *testing.T, n int) []qkdKey {
	t.Helper()
	out := make([]qkdKey, n)
	for i := range out {
		b := make([]byte, linkKeyBytes)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		out[i] = qkdKey{id: fmt.Sprintf("qkd-%08d", p.nextID.Add(1)), bits: b}
	}
	return out
}

// driverKeys copies keys for one sink, which zeroes what it is given.
func driverKeys(keys []qkdKey) []driver.Key {
	out := make([]driver.Key, len(keys))
	for i, k := range keys {
		out[i] = driver.Key{ID: k.id, Bytes: append([]byte(nil), k.bits...)}
	}
	return out
}

// supply delivers n new keys to both ends of L_AB, as the QKD link does.
func (p *testPair) supply(t *testing.T, n int) []qkdKey {
	t.Helper()
	keys := p.makeKeys(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for _, nd := range []*testNode{p.a, p.b} {
		if err := nd.k.Sink(linkAB)(ctx, driverKeys(keys)); err != nil {
			t.Fatalf("Sink at %s: %v", nd.name, err)
		}
	}
	return keys
}

// asSAE is a request context of an SAE authenticated by its certificate.
func asSAE(t *testing.T, id string) context.Context {
	return asCaller(t, pki.Identity{Kind: pki.KindSAE, ID: id})
}

func asCaller(t *testing.T, id pki.Identity) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return pki.WithCaller(ctx, id)
}

func anonymous(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// enc is enc_keys by sae at node n for slave.
func enc(t *testing.T, n *testNode, sae, slave string, number, size int) (*qkdv1.KeyContainer, error) {
	return n.k.GetKey(asSAE(t, sae), &qkdv1.GetKeyRequest{SlaveSaeId: slave, Number: int32(number), Size: int32(size)})
}

// dec is POST dec_keys by sae at node n for keys of master.
func dec(t *testing.T, n *testNode, sae, master string, ids ...string) (*qkdv1.KeyContainer, error) {
	return n.k.GetKeyWithKeyIDs(asSAE(t, sae), decReq(master, ids...))
}

func decReq(master string, ids ...string) *qkdv1.GetKeyWithKeyIDsRequest {
	req := &qkdv1.GetKeyWithKeyIDsRequest{MasterSaeId: master}
	for _, id := range ids {
		req.KeyIds = append(req.KeyIds, &qkdv1.KeyID{KeyId: id})
	}
	return req
}

func keyIDs(c *qkdv1.KeyContainer) []string {
	var out []string
	for _, k := range c.GetKeys() {
		out = append(out, k.GetKeyId())
	}
	return out
}

// badRequestFields lists the parameters an error's errdetails.BadRequest names.
func badRequestFields(err error) []string {
	var out []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}

// checkErr checks an error's gRPC code and, for codes.InvalidArgument, that
// the status carries an errdetails.BadRequest naming wantField.
func checkErr(t *testing.T, err error, wantCode codes.Code, wantField string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got success, want %v", wantCode)
	}
	if got := status.Code(err); got != wantCode {
		t.Fatalf("got %v (%v), want %v", got, err, wantCode)
	}
	if wantCode != codes.InvalidArgument {
		return
	}
	fields := badRequestFields(err)
	if len(fields) != 1 || fields[0] != wantField {
		t.Fatalf("BadRequest fields = %q, want [%q] (err %v)", fields, wantField, err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
