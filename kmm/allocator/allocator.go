// Package allocator is the KMM's Key Allocation Element: on the links where
// this KMM is Master it moves keys from the link's unallocated pool to the key
// streams that run over the link, by their QoS, on a periodic cycle (0.5 s in
// the paper) and on demand, and has the Synchronizer tell the Slave KMM before
// any allocated key can be served.
package allocator

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/qkdnet/qkdnet/kmm/keystore"
)

// Store is what the allocator needs of the key store.
type Store interface {
	Streams() []keystore.Stream
	StreamCount(streamID string) int
	PoolCount(link string) int
	Reserve(streamID, batchID string, n int) (keystore.Pending, error)
	Commit(batchID string, unknown []string, maxRejects int) (int, error)
	PendingBatches() ([]keystore.Pending, error)
}

// Syncer tells the Slave KMM of a link about an allocation and returns the
// key IDs it does not hold. An error means the outcome is unknown; the batch
// is sent again later with the same ID.
type Syncer interface {
	Allocate(ctx context.Context, p keystore.Pending) (unknown []string, err error)
}

// Config tunes the allocator.
type Config struct {
	// Period is the allocation cycle. Default 500 ms.
	Period time.Duration
	// MaxBatch bounds the keys of one Synchronizer message. Default 4096.
	MaxBatch int
	// MaxRejects is how often a key may be refused by the Slave KMM (it did
	// not hold it yet) before it is destroyed. Default 3.
	MaxRejects int
	// SyncTimeout bounds one Synchronizer call. Default 5 s.
	SyncTimeout time.Duration
}

func (c *Config) defaults() {
	if c.Period <= 0 {
		c.Period = 500 * time.Millisecond
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 4096
	}
	if c.MaxRejects <= 0 {
		c.MaxRejects = 3
	}
	if c.SyncTimeout <= 0 {
		c.SyncTimeout = 5 * time.Second
	}
}

// Allocator allocates keys on the links where this KMM is Master.
type Allocator struct {
	store  Store
	sync   Syncer
	master func(link string) bool
	cfg    Config
	logger *slog.Logger
	wake   chan struct{}

	mu    sync.Mutex // guards links and recent
	links map[string]*sync.Mutex
	// windows count, per link, the keys each stream got in the current
	// period (by cycle or on demand): the rate a stream is promised is per
	// period, however often cycles run (a key arriving wakes one).
	windows map[string]*window
	// demand is what draining streams asked for on demand and did not get.
	// Their keys carry keys an SAE already has (the pads of a relay on an
	// earlier path), so cycles serve it before any promise.
	demand map[string]int
}

type window struct {
	start   time.Time
	granted map[string]int
}

// granted returns the link's current window, starting a new one when a
// period has passed. The caller holds a.mu.
func (a *Allocator) windowOf(link string) *window {
	if a.windows == nil {
		a.windows = map[string]*window{}
	}
	w := a.windows[link]
	if w == nil || time.Since(w.start) >= a.cfg.Period {
		w = &window{start: time.Now(), granted: map[string]int{}}
		a.windows[link] = w
	}
	return w
}

func (a *Allocator) note(link, stream string, n int) {
	if n <= 0 {
		return
	}
	a.mu.Lock()
	a.windowOf(link).granted[stream] += n
	a.mu.Unlock()
}

// New returns an allocator for the links for which master reports true.
func New(store Store, syncer Syncer, master func(link string) bool, cfg Config, logger *slog.Logger) *Allocator {
	cfg.defaults()
	return &Allocator{
		store: store, sync: syncer, master: master, cfg: cfg, logger: logger,
		wake:  make(chan struct{}, 1),
		links: map[string]*sync.Mutex{},
	}
}

// linkLock serialises allocation per link: the periodic cycle and on-demand
// requests must not reserve the same pool keys' sequence numbers at once.
func (a *Allocator) linkLock(link string) *sync.Mutex {
	a.mu.Lock()
	defer a.mu.Unlock()
	m, ok := a.links[link]
	if !ok {
		m = &sync.Mutex{}
		a.links[link] = m
	}
	return m
}

// Wake asks for a cycle now instead of at the next tick.
func (a *Allocator) Wake() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Run runs allocation cycles until ctx is done.
func (a *Allocator) Run(ctx context.Context) error {
	t := time.NewTicker(a.cfg.Period)
	defer t.Stop()
	for {
		a.Cycle(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-a.wake:
		}
	}
}

// Cycle runs one allocation cycle on every link where this KMM is Master.
func (a *Allocator) Cycle(ctx context.Context) {
	byLink := map[string][]keystore.Stream{}
	for _, st := range a.store.Streams() {
		// A draining stream (an earlier path of a rerouted one) gets only
		// what it asked for on demand.
		if a.master(st.Link) && (!st.Draining || a.demandOf(st.ID) > 0) {
			byLink[st.Link] = append(byLink[st.Link], st)
		}
	}
	for link, streams := range byLink {
		if ctx.Err() != nil {
			return
		}
		if err := a.cycleLink(ctx, link, streams); err != nil && ctx.Err() == nil {
			a.logger.WarnContext(ctx, "allocation cycle incomplete", "link", link, "err", err)
		}
	}
}

func (a *Allocator) cycleLink(ctx context.Context, link string, streams []keystore.Stream) error {
	m := a.linkLock(link)
	m.Lock()
	if err := a.resendPending(ctx, link); err != nil {
		m.Unlock()
		return err
	}
	a.mu.Lock()
	granted := maps.Clone(a.windowOf(link).granted)
	a.mu.Unlock()
	var drains []Grant
	var regular []keystore.Stream
	for _, st := range streams {
		if st.Draining {
			drains = append(drains, Grant{StreamID: st.ID, Keys: a.demandOf(st.ID)})
		} else {
			regular = append(regular, st)
		}
	}
	m.Unlock()
	// The link is locked for one batch at a time: filling a new stream's
	// buffer takes many batches, and an on-demand Fill (an SAE waiting)
	// must not wait for all of them.
	var errs []error
	give := func(p Grant) int {
		n, err := a.allocate(ctx, p.StreamID, p.Keys, m)
		a.note(link, p.StreamID, n)
		if err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", p.StreamID, err))
		}
		return n
	}
	// First what draining streams asked for, then the plan, made after them.
	for _, p := range drains {
		n := give(p)
		a.mu.Lock()
		a.demand[p.StreamID] = max(0, a.demand[p.StreamID]-n)
		a.mu.Unlock()
	}
	m.Lock()
	plan := Plan(regular, a.store.StreamCount, func(id string) int { return granted[id] }, a.store.PoolCount(link), a.cfg.Period)
	m.Unlock()
	for _, p := range plan {
		give(p)
	}
	return errors.Join(errs...)
}

// Grant is the number of keys one stream gets in a cycle.
type Grant struct {
	StreamID string
	Keys     int
}

func (a *Allocator) demandOf(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.demand[id]
}

// Plan divides the available pool keys among streams by QoS. First, in order
// of priority, every stream gets what its key rate promises for one period
// (at least one key) less what it was granted in the period already (nil:
// nothing), up to its free buffer; then what is left fills free buffers, by
// priority, shared evenly among streams of equal priority. It is a pure
// function so the policy is tested on its own.
func Plan(streams []keystore.Stream, held, granted func(streamID string) int, available int, period time.Duration) []Grant {
	type want struct {
		id        string
		free, got int
		promised  int
		priority  uint32
	}
	ws := make([]*want, 0, len(streams))
	for _, st := range streams {
		free := int(st.QoS.MaxBuffer) - held(st.ID)
		if free <= 0 {
			continue
		}
		promised := int(math.Ceil(float64(st.QoS.KeyRate) * period.Seconds()))
		if promised < 1 {
			promised = 1
		}
		if granted != nil {
			promised = max(0, promised-granted(st.ID))
		}
		ws = append(ws, &want{id: st.ID, free: free, promised: promised, priority: st.QoS.Priority})
	}
	sort.SliceStable(ws, func(i, j int) bool {
		if ws[i].priority != ws[j].priority {
			return ws[i].priority > ws[j].priority
		}
		return ws[i].id < ws[j].id
	})
	for _, w := range ws {
		n := min(w.promised, w.free, available)
		w.got += n
		available -= n
	}
	// Leftovers go to free buffers by priority; streams of equal priority
	// share evenly (water-filling), so one stream cannot take the pool.
	for i := 0; i < len(ws) && available > 0; {
		j := i
		for j < len(ws) && ws[j].priority == ws[i].priority {
			j++
		}
		group := ws[i:j]
		for available > 0 {
			open := 0
			for _, w := range group {
				if w.got < w.free {
					open++
				}
			}
			if open == 0 {
				break
			}
			share := max(available/open, 1)
			for _, w := range group {
				if available == 0 {
					break
				}
				n := min(w.free-w.got, share, available)
				w.got += n
				available -= n
			}
		}
		i = j
	}
	var out []Grant
	for _, w := range ws {
		if w.got > 0 {
			out = append(out, Grant{StreamID: w.id, Keys: w.got})
		}
	}
	return out
}

// Fill allocates want more keys to the stream now, if the pool allows; it is
// the on-demand path of an SAE request. It allocates want more rather than
// "up to want": concurrent requests each need their own keys, and the keys
// this KMM holds may be waiting for the other end's SAE (a stream served at
// the Slave KMM). It returns how many keys it allocated.
func (a *Allocator) Fill(ctx context.Context, streamID, link string, want int) (int, error) {
	m := a.linkLock(link)
	m.Lock()
	defer m.Unlock()
	if err := a.resendPending(ctx, link); err != nil {
		return 0, err
	}
	if want <= 0 {
		return 0, nil
	}
	// Keys promised to streams of higher priority stay in the pool: an
	// eager stream of low priority must not starve them between cycles.
	var streams []keystore.Stream
	draining := false
	for _, st := range a.store.Streams() {
		if st.Link == link && (!st.Draining || st.ID == streamID) {
			streams = append(streams, st)
		}
		if st.ID == streamID {
			draining = st.Draining
		}
	}
	if draining {
		// Before any promise; what the pool cannot give now, the next
		// cycles give as keys arrive.
		n, err := a.allocate(ctx, streamID, want, nil)
		a.note(link, streamID, n)
		a.mu.Lock()
		if a.demand == nil {
			a.demand = map[string]int{}
		}
		a.demand[streamID] = want - n
		a.mu.Unlock()
		return n, err
	}
	allowed := OnDemand(streams, streamID, a.store.StreamCount, a.store.PoolCount(link), a.cfg.Period)
	if allowed <= 0 {
		return 0, nil
	}
	n, err := a.allocate(ctx, streamID, min(want, allowed), nil)
	a.note(link, streamID, n)
	return n, err
}

// OnDemand is how many pool keys stream id may take now, on demand: the pool
// less what the other streams are promised and do not hold yet. Every
// stream's promised rate (its minimum) is guaranteed: streams of higher
// priority keep two periods of it, the others one. A pure function, like
// Plan.
func OnDemand(streams []keystore.Stream, id string, held func(streamID string) int, available int, period time.Duration) int {
	var mine uint32
	for _, st := range streams {
		if st.ID == id {
			mine = st.QoS.Priority
		}
	}
	reserve := 0
	for _, st := range streams {
		if st.ID == id {
			continue
		}
		periods := 1.0
		if st.QoS.Priority > mine {
			periods = 2
		}
		promised := max(1, int(math.Ceil(float64(st.QoS.KeyRate)*periods*period.Seconds())))
		reserve += max(0, min(promised, int(st.QoS.MaxBuffer))-held(st.ID))
	}
	return max(0, available-reserve)
}

// firstBatch bounds the first batch allocated to an empty stream.
const firstBatch = 32

// allocate reserves up to n keys in batches, synchronises each with the
// Slave KMM and commits it. It stops at the first batch the pool cannot
// supply or the Slave does not answer. With lock, it holds lock for each
// batch; without, the caller holds the link lock.
func (a *Allocator) allocate(ctx context.Context, streamID string, n int, lock sync.Locker) (int, error) {
	total := 0
	for first := true; n > 0; first = false {
		got, size, err := a.allocateBatch(ctx, streamID, n, first, lock)
		total += got
		if err != nil || size == 0 {
			return total, err
		}
		n -= size
	}
	return total, nil
}

// allocateBatch reserves and settles one batch of at most n keys. It
// returns the keys allocated and the batch's size (0: the pool is empty).
func (a *Allocator) allocateBatch(ctx context.Context, streamID string, n int, first bool, lock sync.Locker) (int, int, error) {
	if lock != nil {
		lock.Lock()
		defer lock.Unlock()
	}
	size := min(n, a.cfg.MaxBatch)
	// A stream that holds nothing gets a small batch first: its first key
	// is waited for (ETSI 004 asks for it right after OPEN_CONNECT; a relay
	// node waits for it to relay), and a batch of thousands takes the Slave
	// KMM tens of milliseconds to store.
	if first && a.store.StreamCount(streamID) == 0 {
		size = min(size, firstBatch)
	}
	p, err := a.store.Reserve(streamID, newBatchID(), size)
	if errors.Is(err, keystore.ErrNotEnoughKeys) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	got, err := a.settle(ctx, p)
	return got, len(p.KeyIDs), err
}

// settle sends a reserved batch to the Slave KMM and commits the answer. On a
// failed call the batch stays pending, to be resent with the same ID.
func (a *Allocator) settle(ctx context.Context, p keystore.Pending) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, a.cfg.SyncTimeout)
	unknown, err := a.sync.Allocate(cctx, p)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("synchronise batch %s with slave KMM: %w", p.BatchID, err)
	}
	if len(unknown) > 0 {
		a.logger.InfoContext(ctx, "slave KMM does not hold some keys yet", "link", p.Link, "stream", p.Stream.ID, "unknown", len(unknown), "batch", len(p.KeyIDs))
	}
	return a.store.Commit(p.BatchID, unknown, a.cfg.MaxRejects)
}

// resendPending settles the batches of link left pending by a failed call or
// a crash, oldest first by sequence number. The caller holds the link lock.
func (a *Allocator) resendPending(ctx context.Context, link string) error {
	pending, err := a.store.PendingBatches()
	if err != nil {
		return err
	}
	sort.Slice(pending, func(i, j int) bool { return pending[i].FirstSeq < pending[j].FirstSeq })
	for _, p := range pending {
		if p.Link != link {
			continue
		}
		if _, err := a.settle(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

func newBatchID() string {
	return uuid.Must(uuid.NewRandomFromReader(rand.Reader)).String()
}
