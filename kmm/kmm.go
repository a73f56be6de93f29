// Package kmm is the Key Management Module of a trusted node: the facade the
// agent hosts. It ties the paper's sub-modules together:
//
//	App Request Handler        etsi014.go (ETSI GS QKD 014 KeyService)
//	Key Store, App Store,
//	Metric Store               kmm/keystore (sealed, transactional, on disk)
//	Key Allocation Element     kmm/allocator
//	Synchronizer               kmm/keysync (KMM ↔ KMM over gRPC, mutual TLS)
//	Statistics Manager         kmm/stats (Prometheus and the 014 status)
//
// and takes keys from QKD drivers through Sink. Who is Master on which link
// and which SAE sits at which node come from a Topology, today read from the
// agent's configuration and later pushed by the controller.
package kmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/qkdnet/qkdnet/driver"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/allocator"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/keysync"
	"github.com/qkdnet/qkdnet/kmm/stats"
)

// Link is a QKD link that ends at this node.
type Link struct {
	ID string
	// Peer is the node at the other end.
	Peer string
	// Master is true when this KMM allocates the link's keys to streams.
	Master bool
	// KeyBytes is the size of the keys the link's driver delivers.
	KeyBytes int
}

// Topology is what the KMM needs to know of the network. The agent serves it
// from its configuration; the controller will push it later.
type Topology interface {
	// SAENode returns the node an SAE is attached to.
	SAENode(saeID string) (node string, ok bool)
	// LinkTo returns the QKD link from this node to a neighbour.
	LinkTo(node string) (Link, bool)
	// LinkByID returns a link that ends at this node.
	LinkByID(id string) (Link, bool)
	// KMEID returns the KME_ID of a node.
	KMEID(node string) (string, bool)
}

// Configured is implemented by a Topology that can be empty for a while: an
// agent run by a controller knows no SAE from its restart until the
// controller's first push. Until then an SAE the KMM does not know may well
// be attached here, so it is told to retry (503), not that it is refused
// (401), which clients take as final.
type Configured interface {
	Configured() bool
}

// Apps is where key streams come from when a controller runs the network
// (paper steps 3-6): the KMM asks it for the application joining a master
// SAE to a slave SAE, and the controller pushes it to both KMMs.
type Apps interface {
	// Open returns once this node's configuration holds the application
	// from master to slave, asking the controller to create it if needed.
	// An SAE the controller does not know is reported as ErrUnknownSAE.
	Open(ctx context.Context, master, slave string) error
}

// ErrUnknownSAE means no node serves the SAE.
var ErrUnknownSAE = errors.New("unknown SAE")

// Option configures a KMM.
type Option func(*KMM)

// WithApps makes the KMM ask apps for every new key stream.
func WithApps(apps Apps) Option { return func(k *KMM) { k.apps = apps } }

// Peers reaches the KMM of another node.
type Peers interface {
	KeySync(node string) (qkdv1.KeySyncServiceClient, error)
}

// Settings tune the KMM.
type Settings struct {
	Node  string
	KMEID string
	// KeySize is the default key size in bits.
	KeySize           int
	MinKeySize        int
	MaxKeySize        int
	MaxKeysPerRequest int
	// PoolMax is the most unallocated keys kept per link; drivers wait
	// (back-pressure) while the pool is full.
	PoolMax     int
	KeyLifetime time.Duration
	AllocPeriod time.Duration
	// DefaultQoS is given to a stream opened by a plain ETSI 014 request.
	DefaultQoS keystore.QoS
	// ConfigWait is how long a peer KMM's message about a stream or hop
	// this node does not know yet waits for the node's next configuration
	// before it is refused. The controller pushes a new stream to every
	// node of its path at once; the node that gets it first must not be
	// sent away to retry later because its neighbour is a moment behind.
	// Zero: refuse at once (a node without a controller).
	ConfigWait time.Duration
}

func (s *Settings) defaults() {
	if s.KeySize == 0 {
		s.KeySize = 256
	}
	if s.MinKeySize == 0 {
		s.MinKeySize = 8
	}
	if s.MaxKeySize == 0 {
		s.MaxKeySize = 8192
	}
	if s.MaxKeysPerRequest == 0 {
		s.MaxKeysPerRequest = 1024
	}
	if s.PoolMax == 0 {
		s.PoolMax = 1_000_000
	}
	if s.KeyLifetime == 0 {
		s.KeyLifetime = time.Hour
	}
	if s.AllocPeriod == 0 {
		s.AllocPeriod = 500 * time.Millisecond
	}
	if s.DefaultQoS.KeyRate == 0 {
		s.DefaultQoS.KeyRate = 1
	}
	if s.DefaultQoS.MaxBuffer == 0 {
		s.DefaultQoS.MaxBuffer = 4096
	}
}

// Validate reports settings that cannot work.
func (s Settings) Validate() error {
	switch {
	case s.Node == "" || s.KMEID == "":
		return errors.New("kmm: node and KME ID are required")
	case s.KeySize%8 != 0 || s.MinKeySize%8 != 0 || s.MaxKeySize%8 != 0:
		return errors.New("kmm: key sizes must be multiples of 8 bits")
	case s.MinKeySize > s.KeySize || s.KeySize > s.MaxKeySize:
		return fmt.Errorf("kmm: need min_key_size %d <= key_size %d <= max_key_size %d", s.MinKeySize, s.KeySize, s.MaxKeySize)
	case s.MaxKeySize > keystore.MaxKeyBits:
		return fmt.Errorf("kmm: max_key_size %d exceeds %d bits", s.MaxKeySize, keystore.MaxKeyBits)
	case s.MaxKeysPerRequest < 1 || s.PoolMax < 1:
		return errors.New("kmm: max_keys_per_request and pool_max must be positive")
	case s.KeyLifetime < time.Second:
		return fmt.Errorf("kmm: key_lifetime %v is shorter than a second", s.KeyLifetime)
	case s.AllocPeriod < time.Millisecond:
		return fmt.Errorf("kmm: alloc_period %v is shorter than a millisecond", s.AllocPeriod)
	}
	return nil
}

// KMM is one node's key management module.
type KMM struct {
	qkdv1.UnimplementedKeyServiceServer
	qkdv1.UnimplementedKeyStreamServiceServer

	set     Settings
	store   *keystore.Store
	topo    Topology
	peers   Peers
	apps    Apps
	streams KeyStreams
	c004    conns004
	relay   relays
	// expireWake tells the destruction loop a stream with a TTL appeared.
	expireWake chan struct{}
	alloc      *allocator.Allocator
	stats      *stats.Stats
	logger     *slog.Logger

	replacing keyedLock // replace_keys, per stream (replace.go)

	mu        sync.Mutex      // guards announced
	announced map[string]bool // streams the link's Master KMM has been told of
}

// New builds a KMM around an open store.
func New(set Settings, store *keystore.Store, topo Topology, peers Peers, st *stats.Stats, logger *slog.Logger, opts ...Option) (*KMM, error) {
	set.defaults()
	if err := set.Validate(); err != nil {
		return nil, err
	}
	k := &KMM{set: set, store: store, topo: topo, peers: peers, stats: st, logger: logger, announced: map[string]bool{},
		relay: relays{wake: make(chan struct{}, 1)}, expireWake: make(chan struct{}, 1)}
	for _, o := range opts {
		o(k)
	}
	syncer := keysync.NewClient(func(link string) (qkdv1.KeySyncServiceClient, error) {
		l, ok := topo.LinkByID(link)
		if !ok {
			return nil, fmt.Errorf("link %q does not end here", link)
		}
		return peers.KeySync(l.Peer)
	})
	master := func(link string) bool {
		l, ok := topo.LinkByID(link)
		return ok && l.Master
	}
	k.alloc = allocator.New(store, syncer, master, allocator.Config{Period: set.AllocPeriod}, logger.With("part", "allocator"))
	return k, nil
}

// Settings returns the effective settings.
func (k *KMM) Settings() Settings { return k.set }

// Run runs the allocation cycle and key destruction until ctx is done.
func (k *KMM) Run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- k.alloc.Run(ctx) }()
	relayed := make(chan struct{})
	go func() { defer close(relayed); k.relayLoop(ctx) }()
	k.expireLoop(ctx)
	<-relayed
	return <-done
}

func (k *KMM) expireLoop(ctx context.Context) {
	every := min(k.set.KeyLifetime/4, 10*time.Second)
	for {
		// A stream with a short TTL is checked often enough to honour it.
		wait := every
		for _, st := range k.store.Streams() {
			if st.QoS.TTL > 0 {
				wait = max(100*time.Millisecond, min(wait, time.Duration(st.QoS.TTL)*time.Second/4))
			}
		}
		n, err := k.store.Expire(k.set.KeyLifetime)
		switch {
		case err != nil && !errors.Is(err, keystore.ErrClosed):
			k.logger.ErrorContext(ctx, "key destruction failed", "err", err)
		case n > 0:
			k.logger.InfoContext(ctx, "destroyed keys at end of lifetime", "keys", n, "lifetime", k.set.KeyLifetime)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-k.expireWake:
		}
	}
}

// Sink is where the driver of a link hands keys. It waits while the link's
// pool is full, stores the keys sealed, and zeroes the driver's buffers.
func (k *KMM) Sink(link string) driver.Sink {
	return func(ctx context.Context, keys []driver.Key) error {
		defer func() {
			for _, key := range keys {
				driver.Zero(key.Bytes)
			}
		}()
		for {
			// Take the change signal before reading the count, so a change
			// in between cannot be missed.
			changed := k.store.Changed()
			if k.store.PoolCount(link) < k.set.PoolMax {
				break
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := k.store.AddToPool(link, keys); err != nil {
			return err
		}
		k.alloc.Wake()
		return nil
	}
}

// StreamID names the key stream from a master SAE to a slave SAE.
func StreamID(master, slave string) string { return master + "->" + slave }

// openStream finds or creates the stream from master to slave and makes sure
// the link's Master KMM knows it.
func (k *KMM) openStream(ctx context.Context, master, slave string) (keystore.Stream, Link, error) {
	if k.apps != nil {
		if err := k.apps.Open(ctx, master, slave); err != nil {
			if errors.Is(err, ErrUnknownSAE) {
				return keystore.Stream{}, Link{}, badRequest("slave_SAE_ID", err.Error())
			}
			if ctx.Err() != nil {
				return keystore.Stream{}, Link{}, ctx.Err()
			}
			return keystore.Stream{}, Link{}, unavailable(fmt.Sprintf("the controller did not open the key stream %s -> %s: %v", master, slave, err))
		}
	}
	node, ok := k.topo.SAENode(slave)
	if !ok {
		return keystore.Stream{}, Link{}, badRequest("slave_SAE_ID", fmt.Sprintf("unknown SAE %q", slave))
	}
	// A stream the controller configured (a multi-hop one runs over the
	// path's first link, not a link to the slave's node).
	_, current := k.currentGen(StreamID(master, slave))
	if st, ok := k.store.Stream(current); ok && k.apps != nil {
		if l, ok := k.topo.LinkByID(st.Link); ok {
			if l.Master {
				k.alloc.Wake()
			}
			return st, l, nil
		}
	}
	if node == k.set.Node {
		return keystore.Stream{}, Link{}, badRequest("slave_SAE_ID", fmt.Sprintf("SAE %q is attached to this KME too; key delivery needs a QKD link between two nodes", slave))
	}
	link, ok := k.topo.LinkTo(node)
	if !ok {
		return keystore.Stream{}, Link{}, unavailable(fmt.Sprintf("no QKD link from node %s to node %s of SAE %s (key relay is not configured)", k.set.Node, node, slave))
	}
	id := StreamID(master, slave)
	st, ok := k.store.Stream(id)
	if !ok || st.Link != link.ID {
		var err error
		st, err = k.store.PutStream(keystore.Stream{ID: id, MasterSAE: master, SlaveSAE: slave, Link: link.ID, QoS: k.set.DefaultQoS})
		if err != nil {
			return keystore.Stream{}, Link{}, err
		}
	}
	if link.Master {
		k.alloc.Wake()
		return st, link, nil
	}
	k.mu.Lock()
	done := k.announced[id]
	k.mu.Unlock()
	if done {
		return st, link, nil
	}
	cl, err := k.peers.KeySync(link.Peer)
	if err != nil {
		return keystore.Stream{}, Link{}, unavailable(fmt.Sprintf("master KMM of link %s unreachable: %v", link.ID, err))
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cl.OpenStream(cctx, &qkdv1.OpenStreamRequest{Stream: keysync.ToProto(st)}); err != nil {
		return keystore.Stream{}, Link{}, unavailable(fmt.Sprintf("master KMM of link %s did not open the key stream: %v", link.ID, err))
	}
	k.mu.Lock()
	k.announced[id] = true
	k.mu.Unlock()
	return st, link, nil
}

// EnsureStreams creates the key streams a configuration from the controller
// names that this KMM does not hold yet (or holds on another link, or with
// another QoS or draining mark), in one transaction, so that each link's
// Master starts allocating to them before any SAE asks.
func (k *KMM) EnsureStreams(sts []keystore.Stream) error {
	var write []keystore.Stream
	var created []bool
	for _, st := range sts {
		if st.QoS == (keystore.QoS{}) {
			st.QoS = k.set.DefaultQoS
		}
		have, existed := k.store.Stream(st.ID)
		if existed && have.Link == st.Link && have.QoS == st.QoS && have.Draining == st.Draining {
			continue
		}
		write = append(write, st)
		created = append(created, !existed)
	}
	if len(write) == 0 {
		return nil
	}
	if _, err := k.store.PutStreams(write); err != nil {
		return err
	}
	k.alloc.Wake()
	for i, st := range write {
		if st.QoS.TTL > 0 {
			select {
			case k.expireWake <- struct{}{}:
			default:
			}
		}
		// A new stream on a link this KMM allocates gets a few keys at
		// once, so that the first request of either SAE (ETSI 004 asks for
		// the first key at both ends right after OPEN_CONNECT) finds them,
		// and a relay node can start relaying.
		if l, ok := k.topo.LinkByID(st.Link); created[i] && !st.Draining && ok && l.Master {
			go k.giveFirstKeys(st)
		}
	}
	return nil
}

// giveFirstKeys allocates a new stream its first prefill keys.
func (k *KMM) giveFirstKeys(st keystore.Stream) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The peer KMM may get the controller's push a moment after this one
	// and refuse the stream until then: try again shortly.
	for wait := 10 * time.Millisecond; ; wait *= 2 {
		_, err := k.alloc.Fill(ctx, st.ID, st.Link, prefill)
		if err == nil || errors.Is(err, keystore.ErrClosed) || wait > time.Second {
			return
		}
		k.logger.Debug("no keys for a new stream yet; retrying", "stream", st.ID, "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// prefill is how many keys a new stream gets at once.
const prefill = 32

// DefaultQoS is the QoS of a stream whose application asks for nothing.
func (k *KMM) DefaultQoS() keystore.QoS { return k.set.DefaultQoS }

// fill allocates keys to a stream now: directly where this KMM is the link's
// Master, else by asking the Master KMM, which synchronises back before it
// answers.
func (k *KMM) fill(ctx context.Context, st keystore.Stream, link Link, want int) error {
	if link.Master {
		_, err := k.alloc.Fill(ctx, st.ID, link.ID, want)
		return err
	}
	cl, err := k.peers.KeySync(link.Peer)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = cl.RequestAllocation(cctx, &qkdv1.RequestAllocationRequest{Stream: keysync.ToProto(st), Want: uint32(want)})
	return err
}

// ---- keysync.Handler: what the peer KMM may ask ----

// PeerOfLink implements keysync.Handler.
func (k *KMM) PeerOfLink(link string) (string, bool) {
	l, ok := k.topo.LinkByID(link)
	return l.Peer, ok
}

// awaitPeerStream is checkPeerStream, given up to ConfigWait for this
// node's configuration to catch up with the peer's.
func (k *KMM) awaitPeerStream(ctx context.Context, peer string, st keystore.Stream) (Link, error) {
	var l Link
	err := k.awaitConfig(ctx, func() error {
		var err error
		l, err = k.checkPeerStream(peer, st)
		return err
	})
	return l, err
}

// checkPeerStream makes sure a stream named by the peer KMM connects an SAE
// of this node and an SAE of the peer over the link between them.
func (k *KMM) checkPeerStream(peer string, st keystore.Stream) (Link, error) {
	l, ok := k.topo.LinkByID(st.Link)
	if !ok || l.Peer != peer {
		return Link{}, fmt.Errorf("link %s does not join this node to %s", st.Link, peer)
	}
	// A hop of a multi-hop stream: the configuration says which.
	if k.hopOf(st.ID, st.Link, peer) {
		return l, nil
	}
	if st.ID != StreamID(st.MasterSAE, st.SlaveSAE) {
		return Link{}, fmt.Errorf("stream ID %q does not match its SAEs", st.ID)
	}
	mn, ok1 := k.topo.SAENode(st.MasterSAE)
	sn, ok2 := k.topo.SAENode(st.SlaveSAE)
	if !ok1 || !ok2 || !((mn == k.set.Node && sn == peer) || (mn == peer && sn == k.set.Node)) {
		return Link{}, fmt.Errorf("stream %s does not join an SAE of node %s and one of node %s", st.ID, k.set.Node, peer)
	}
	return l, nil
}

// OpenStream implements keysync.Handler: the Slave KMM of a link tells this
// (Master) KMM that one of its SAEs opened a stream.
func (k *KMM) OpenStream(ctx context.Context, peer string, st keystore.Stream) (keystore.Stream, error) {
	l, err := k.awaitPeerStream(ctx, peer, st)
	if err != nil {
		return keystore.Stream{}, err
	}
	if !l.Master {
		return keystore.Stream{}, keysync.ErrNotMaster
	}
	out, err := k.store.PutStream(k.fromPeer(st))
	if err == nil {
		k.alloc.Wake()
	}
	return out, err
}

// Apply implements keysync.Handler: the Master KMM allocated keys.
func (k *KMM) Apply(ctx context.Context, peer, batchID string, st keystore.Stream, firstSeq uint64, keyIDs []string) ([]string, error) {
	l, err := k.awaitPeerStream(ctx, peer, st)
	if err != nil {
		return nil, err
	}
	if l.Master {
		return nil, fmt.Errorf("node %s is not the master of link %s: %w", peer, l.ID, keysync.ErrNotMaster)
	}
	return k.store.Apply(batchID, k.planned(st), firstSeq, keyIDs)
}

// fromPeer is a stream a peer KMM asked this (Master) KMM to open or fill,
// as it is stored here: with the default QoS if it names none, and where its
// sequence numbers start and whether it drains as this node's plans say.
func (k *KMM) fromPeer(st keystore.Stream) keystore.Stream {
	if st.QoS == (keystore.QoS{}) {
		st.QoS = k.set.DefaultQoS
	}
	return k.planned(st)
}

// maxOnDemand bounds what one on-demand request may pull out of a pool.
const maxOnDemand = 1 << 20

// RequestAllocation implements keysync.Handler: the Slave KMM's SAE wants
// keys now.
func (k *KMM) RequestAllocation(ctx context.Context, peer string, st keystore.Stream, want int) (int, error) {
	l, err := k.awaitPeerStream(ctx, peer, st)
	if err != nil {
		return 0, err
	}
	if !l.Master {
		return 0, keysync.ErrNotMaster
	}
	if have, ok := k.store.Stream(st.ID); !ok || have.Link != st.Link {
		if _, err := k.store.PutStream(k.fromPeer(st)); err != nil {
			return 0, err
		}
	}
	return k.alloc.Fill(ctx, st.ID, st.Link, min(want, maxOnDemand))
}
