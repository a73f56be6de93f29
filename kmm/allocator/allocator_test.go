package allocator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/kmm/keystore"
)

func stream(id string, rate, buffer, priority uint32) keystore.Stream {
	return keystore.Stream{ID: id, Link: "L", QoS: keystore.QoS{KeyRate: rate, MaxBuffer: buffer, Priority: priority}}
}

func heldFrom(m map[string]int) func(string) int {
	return func(id string) int { return m[id] }
}

// TestPlan: the allocation policy, a pure function.
func TestPlan(t *testing.T) {
	tests := []struct {
		desc      string
		streams   []keystore.Stream
		held      map[string]int
		available int
		period    time.Duration
		want      []Grant
	}{
		{desc: "no streams", available: 100, period: time.Second, want: nil},
		{desc: "nothing available", streams: []keystore.Stream{stream("s1", 10, 100, 0)}, available: 0, period: time.Second, want: nil},
		{desc: "negative available", streams: []keystore.Stream{stream("s1", 10, 100, 0)}, available: -3, period: time.Second, want: nil},
		{desc: "one stream fills its free buffer", streams: []keystore.Stream{stream("s1", 10, 100, 0)}, available: 1000, period: time.Second,
			want: []Grant{{"s1", 100}}},
		{desc: "never more than available", streams: []keystore.Stream{stream("s1", 10, 100, 0)}, available: 5, period: time.Second,
			want: []Grant{{"s1", 5}}},
		{desc: "never more than free buffer", streams: []keystore.Stream{stream("s1", 100, 10, 0)}, held: map[string]int{"s1": 7}, available: 1000, period: time.Second,
			want: []Grant{{"s1", 3}}},
		{desc: "full buffer gets nothing", streams: []keystore.Stream{stream("s1", 10, 10, 9), stream("s2", 10, 10, 0)}, held: map[string]int{"s1": 10}, available: 100, period: time.Second,
			want: []Grant{{"s2", 10}}},
		{desc: "over-full buffer gets nothing", streams: []keystore.Stream{stream("s1", 10, 10, 0)}, held: map[string]int{"s1": 12}, available: 100, period: time.Second,
			want: nil},
		{desc: "zero buffer gets nothing", streams: []keystore.Stream{stream("s1", 10, 0, 0)}, available: 100, period: time.Second,
			want: nil},
		{desc: "priority order when short", streams: []keystore.Stream{stream("low", 10, 100, 1), stream("high", 10, 100, 5)}, available: 3, period: time.Second,
			want: []Grant{{"high", 3}}},
		{desc: "promised rate first, then leftovers by priority",
			streams: []keystore.Stream{stream("low", 2, 100, 1), stream("high", 2, 100, 5)}, available: 10, period: time.Second,
			want: []Grant{{"high", 8}, {"low", 2}}},
		{desc: "promised rate of everyone before any leftovers",
			streams: []keystore.Stream{stream("a", 4, 100, 3), stream("b", 4, 100, 2), stream("c", 4, 100, 1)}, available: 12, period: time.Second,
			want: []Grant{{"a", 4}, {"b", 4}, {"c", 4}}},
		{desc: "promised is per period", streams: []keystore.Stream{stream("s1", 10, 100, 1), stream("s2", 10, 100, 0)}, available: 10, period: 500 * time.Millisecond,
			want: []Grant{{"s1", 5}, {"s2", 5}}},
		{desc: "promised rounds up", streams: []keystore.Stream{stream("s1", 3, 100, 1), stream("s2", 3, 100, 0)}, available: 4, period: 500 * time.Millisecond,
			want: []Grant{{"s1", 2}, {"s2", 2}}},
		{desc: "at least one key each", streams: []keystore.Stream{stream("s1", 0, 100, 1), stream("s2", 1, 100, 0)}, available: 2, period: 100 * time.Millisecond,
			want: []Grant{{"s1", 1}, {"s2", 1}}},
		{desc: "promised capped by free buffer, rest to next",
			streams: []keystore.Stream{stream("s1", 100, 10, 2), stream("s2", 100, 50, 1)}, held: map[string]int{"s1": 8}, available: 30, period: time.Second,
			want: []Grant{{"s1", 2}, {"s2", 28}}},
		{desc: "equal priority shares leftovers evenly, remainder by stream ID",
			streams: []keystore.Stream{stream("b", 1, 5, 0), stream("c", 1, 5, 0), stream("a", 1, 5, 0)}, available: 7, period: time.Second,
			want: []Grant{{"a", 3}, {"b", 2}, {"c", 2}}},
		{desc: "every buffer full after plan", streams: []keystore.Stream{stream("s1", 1, 4, 0), stream("s2", 1, 6, 0)}, held: map[string]int{"s1": 1, "s2": 1}, available: 1000, period: time.Second,
			want: []Grant{{"s1", 3}, {"s2", 5}}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got := Plan(tc.streams, heldFrom(tc.held), nil, tc.available, tc.period)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Plan = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPlanProperties checks Plan's promises on random inputs: never more than
// available, never more than a stream's free buffer, nothing for a full
// buffer, grants in priority order, each stream's promised keys before any
// lower-priority stream's, and nothing left over while a buffer has room.
func TestPlanProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 2000 {
		n := r.IntN(6)
		var streams []keystore.Stream
		held := map[string]int{}
		for i := range n {
			id := fmt.Sprintf("s%d", i)
			streams = append(streams, stream(id, uint32(r.IntN(50)), uint32(r.IntN(40)), uint32(r.IntN(3))))
			held[id] = r.IntN(45)
		}
		available := r.IntN(120)
		period := time.Duration(r.IntN(1000)+1) * time.Millisecond
		got := Plan(streams, heldFrom(held), nil, available, period)

		byID := map[string]keystore.Stream{}
		for _, st := range streams {
			byID[st.ID] = st
		}
		total, room := 0, 0
		granted := map[string]int{}
		for _, g := range got {
			st := byID[g.StreamID]
			free := int(st.QoS.MaxBuffer) - held[g.StreamID]
			if g.Keys <= 0 || g.Keys > free {
				t.Fatalf("iter %d: grant %v with free buffer %d", iter, g, free)
			}
			granted[g.StreamID] = g.Keys
			total += g.Keys
		}
		for _, st := range streams {
			if free := int(st.QoS.MaxBuffer) - held[st.ID]; free > 0 {
				room += free - granted[st.ID]
			}
		}
		if total > available {
			t.Fatalf("iter %d: granted %d of %d available", iter, total, available)
		}
		if total < available && room > 0 {
			t.Fatalf("iter %d: %d keys left in the pool while buffers have room for %d", iter, available-total, room)
		}
		if !sort.SliceIsSorted(got, func(i, j int) bool {
			return byID[got[i].StreamID].QoS.Priority > byID[got[j].StreamID].QoS.Priority
		}) {
			t.Fatalf("iter %d: grants not in priority order: %v", iter, got)
		}
		// Promises first: a stream short of min(promise, free buffer) means
		// the pool ran dry there, so every stream after it in priority (then
		// ID) order got nothing.
		order := append([]keystore.Stream(nil), streams...)
		sort.Slice(order, func(i, j int) bool {
			if order[i].QoS.Priority != order[j].QoS.Priority {
				return order[i].QoS.Priority > order[j].QoS.Priority
			}
			return order[i].ID < order[j].ID
		})
		short := ""
		for _, st := range order {
			free := int(st.QoS.MaxBuffer) - held[st.ID]
			if free <= 0 {
				continue
			}
			if short != "" && granted[st.ID] > 0 {
				t.Fatalf("iter %d: stream %s got %d keys although %s, before it, did not get its promise: %v", iter, st.ID, granted[st.ID], short, got)
			}
			promised := max(1, int(math.Ceil(float64(st.QoS.KeyRate)*period.Seconds())))
			if granted[st.ID] < min(promised, free) {
				short = st.ID
			}
		}
	}
}

// fakeStore is an in-memory allocator.Store: a pool per link, streams, and
// pending batches, with the same outcomes as the key store.
type fakeStore struct {
	mu       sync.Mutex
	streams  map[string]keystore.Stream
	inStream map[string]int
	pool     map[string][]string // link → key IDs, oldest first
	pending  map[string]pendingRec
	commits  []string
	reserved []string
	supplied int
}

type pendingRec struct {
	p   keystore.Pending
	ids []string
}

func newFakeStore(streams ...keystore.Stream) *fakeStore {
	s := &fakeStore{streams: map[string]keystore.Stream{}, inStream: map[string]int{}, pool: map[string][]string{}, pending: map[string]pendingRec{}}
	for _, st := range streams {
		s.streams[st.ID] = st
	}
	return s
}

func (s *fakeStore) supply(link string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.supplied++
		s.pool[link] = append(s.pool[link], fmt.Sprintf("%s-k%d", link, s.supplied))
	}
}

func (s *fakeStore) Streams() []keystore.Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []keystore.Stream
	for _, st := range s.streams {
		out = append(out, st)
	}
	return out
}

func (s *fakeStore) StreamCount(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inStream[id]
}

func (s *fakeStore) PoolCount(link string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pool[link])
}

func (s *fakeStore) Reserve(streamID, batchID string, n int) (keystore.Pending, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[streamID]
	if !ok {
		return keystore.Pending{}, keystore.ErrUnknownStream
	}
	pool := s.pool[st.Link]
	if len(pool) == 0 || n <= 0 {
		return keystore.Pending{}, keystore.ErrNotEnoughKeys
	}
	n = min(n, len(pool))
	ids := append([]string(nil), pool[:n]...)
	s.pool[st.Link] = pool[n:]
	p := keystore.Pending{BatchID: batchID, Link: st.Link, Stream: st, FirstSeq: st.NextSeq, KeyIDs: ids}
	st.NextSeq += uint64(n)
	s.streams[streamID] = st
	s.pending[batchID] = pendingRec{p: p, ids: ids}
	s.reserved = append(s.reserved, batchID)
	return p, nil
}

func (s *fakeStore) Commit(batchID string, unknown []string, _ int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.pending[batchID]
	if !ok {
		return 0, fmt.Errorf("batch %s is not pending", batchID)
	}
	delete(s.pending, batchID)
	s.commits = append(s.commits, batchID)
	n := len(rec.ids) - len(unknown)
	s.inStream[rec.p.Stream.ID] += n
	return n, nil
}

func (s *fakeStore) PendingBatches() ([]keystore.Pending, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []keystore.Pending
	for _, r := range s.pending {
		out = append(out, r.p)
	}
	return out, nil
}

// fakeSyncer is the Slave KMM: it records the batches it gets and fails
// while down.
type fakeSyncer struct {
	mu      sync.Mutex
	down    bool
	unknown map[string]bool
	sent    []keystore.Pending
}

func (f *fakeSyncer) Allocate(_ context.Context, p keystore.Pending) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, p)
	if f.down {
		return nil, errors.New("slave KMM unreachable")
	}
	var unk []string
	for _, id := range p.KeyIDs {
		if f.unknown[id] {
			unk = append(unk, id)
		}
	}
	return unk, nil
}

func (f *fakeSyncer) setDown(d bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = d
}

func newAllocator(st Store, sy Syncer, masterLinks ...string) *Allocator {
	m := map[string]bool{}
	for _, l := range masterLinks {
		m[l] = true
	}
	return New(st, sy, func(l string) bool { return m[l] }, Config{MaxBatch: 4}, slog.New(slog.DiscardHandler))
}

// TestFill: the on-demand path allocates what the stream lacks, in batches of
// at most MaxBatch, each synchronised before it is committed.
func TestFill(t *testing.T) {
	tests := []struct {
		desc        string
		supply      int
		held        int
		want        int
		unknown     int // the first unknown keys of the pool the Slave does not hold
		wantN       int
		wantBatches []int
	}{
		// Fill allocates want more whatever the stream holds: concurrent
		// requests each need their own keys.
		{desc: "keys held do not count", supply: 10, held: 5, want: 5, wantN: 5, wantBatches: []int{4, 1}},
		{desc: "nothing wanted", supply: 10, held: 5, want: 0, wantN: 0},
		{desc: "one batch", supply: 10, want: 3, wantN: 3, wantBatches: []int{3}},
		{desc: "split in batches", supply: 20, want: 10, wantN: 10, wantBatches: []int{4, 4, 2}},
		{desc: "held keys do not reduce the allocation", supply: 20, held: 6, want: 10, wantN: 10, wantBatches: []int{4, 4, 2}},
		{desc: "pool short", supply: 5, want: 10, wantN: 5, wantBatches: []int{4, 1}},
		{desc: "empty pool", supply: 0, want: 10, wantN: 0},
		{desc: "keys the Slave lacks are not counted", supply: 10, want: 4, unknown: 1, wantN: 3, wantBatches: []int{4}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			st := newFakeStore(stream("s", 1, 100, 0))
			st.inStream["s"] = tc.held
			st.supply("L", tc.supply)
			sy := &fakeSyncer{unknown: map[string]bool{}}
			for i := range tc.unknown {
				sy.unknown[st.pool["L"][i]] = true
			}
			a := newAllocator(st, sy, "L")
			n, err := a.Fill(context.Background(), "s", "L", tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.wantN {
				t.Errorf("Fill allocated %d, want %d", n, tc.wantN)
			}
			var sizes []int
			for _, p := range sy.sent {
				sizes = append(sizes, len(p.KeyIDs))
			}
			if !reflect.DeepEqual(sizes, tc.wantBatches) {
				t.Errorf("batches sent %v, want %v", sizes, tc.wantBatches)
			}
			if len(st.commits) != len(tc.wantBatches) {
				t.Errorf("%d commits for %d batches", len(st.commits), len(tc.wantBatches))
			}
		})
	}
}

// TestPendingResent: a batch whose Synchronizer call failed stays pending,
// nothing else is reserved while it is, and it is resent (same batch ID,
// oldest first) before any new allocation once the Slave answers again.
func TestPendingResent(t *testing.T) {
	tests := []struct {
		desc  string
		retry func(a *Allocator) error
	}{
		{desc: "by Fill", retry: func(a *Allocator) error { _, err := a.Fill(context.Background(), "s", "L", 6); return err }},
		{desc: "by Cycle", retry: func(a *Allocator) error { a.Cycle(context.Background()); return nil }},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			st := newFakeStore(stream("s", 1, 100, 0))
			st.supply("L", 20)
			sy := &fakeSyncer{down: true}
			a := newAllocator(st, sy, "L")
			if _, err := a.Fill(context.Background(), "s", "L", 3); err == nil {
				t.Fatal("Fill with the Slave down succeeded")
			}
			if len(st.pending) != 1 || len(st.commits) != 0 {
				t.Fatalf("after a failed call: %d pending, %d commits; want 1, 0", len(st.pending), len(st.commits))
			}
			first := st.reserved[0]
			// Still down: retried, nothing new reserved.
			if _, err := a.Fill(context.Background(), "s", "L", 3); err == nil {
				t.Fatal("Fill with the Slave still down succeeded")
			}
			a.Cycle(context.Background())
			if len(st.reserved) != 1 {
				t.Fatalf("reserved %d batches while one was pending, want 1", len(st.reserved))
			}
			sy.setDown(false)
			if err := tc.retry(a); err != nil {
				t.Fatal(err)
			}
			if len(st.commits) == 0 || st.commits[0] != first {
				t.Fatalf("commits %v, want the pending batch %s first", st.commits, first)
			}
			if len(st.pending) != 0 {
				t.Errorf("%d batches still pending", len(st.pending))
			}
			for _, p := range sy.sent[:3] {
				if p.BatchID != first {
					t.Errorf("resent batch %s, want %s", p.BatchID, first)
				}
			}
		})
	}
}

// TestCycleOnlyMasterLinks: the cycle allocates on links where this KMM is
// Master and leaves the others alone.
func TestCycleOnlyMasterLinks(t *testing.T) {
	st := newFakeStore(
		keystore.Stream{ID: "m", Link: "LM", QoS: keystore.QoS{KeyRate: 1, MaxBuffer: 5}},
		keystore.Stream{ID: "s", Link: "LS", QoS: keystore.QoS{KeyRate: 1, MaxBuffer: 5}},
	)
	st.supply("LM", 10)
	st.supply("LS", 10)
	sy := &fakeSyncer{}
	a := newAllocator(st, sy, "LM")
	a.Cycle(context.Background())
	if got := st.StreamCount("m"); got != 5 {
		t.Errorf("master-link stream holds %d, want 5", got)
	}
	if got := st.StreamCount("s"); got != 0 {
		t.Errorf("slave-link stream holds %d, want 0", got)
	}
	if got := st.PoolCount("LS"); got != 10 {
		t.Errorf("slave-link pool %d, want 10", got)
	}
}

// TestRunWakes: Run cycles at once on Wake, and stops with its context.
func TestRunWakes(t *testing.T) {
	st := newFakeStore(stream("s", 1, 100, 0))
	sy := &fakeSyncer{}
	a := New(st, sy, func(string) bool { return true }, Config{Period: time.Hour}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	st.supply("L", 7)
	deadline := time.Now().Add(10 * time.Second)
	for st.StreamCount("s") != 7 {
		if time.Now().After(deadline) {
			t.Fatal("Wake did not trigger a cycle")
		}
		a.Wake()
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
}

// TestOnDemandLeavesOthersTheirRate: a stream asking for keys on demand gets
// only what the other streams are not promised: two periods of the rate of
// those above it, one period of the others'.
func TestOnDemandLeavesOthersTheirRate(t *testing.T) {
	streams := []keystore.Stream{stream("high", 100, 1000, 10), stream("mid", 50, 1000, 5), stream("low", 10, 1000, 1)}
	held := map[string]int{"high": 20, "mid": 0, "low": 0}
	get := func(id string) int { return held[id] }
	for _, tc := range []struct {
		id        string
		available int
		want      int
	}{
		// 0.5 s period. high: 100 keys/s, holds 20; mid: 50/s; low: 10/s.
		{"low", 500, 500 - (100 - 20) - 50}, // two periods of both above
		{"low", 100, 0},                     // all promised to the others
		{"mid", 500, 500 - (100 - 20) - 5},  // two of high, one of low
		{"high", 500, 500 - 25 - 5},         // one period of each below
		{"high", 3, 0},                      // the lower streams' minimum first
		{"high", 40, 40 - 25 - 5},
	} {
		if got := OnDemand(streams, tc.id, get, tc.available, 500*time.Millisecond); got != tc.want {
			t.Errorf("OnDemand(%s, %d available) = %d, want %d", tc.id, tc.available, got, tc.want)
		}
	}
	// Streams that hold what they are promised reserve nothing.
	held["high"], held["mid"] = 200, 200
	if got := OnDemand(streams, "low", get, 10, 500*time.Millisecond); got != 10 {
		t.Errorf("with the others served, low may take %d of 10", got)
	}
}

// TestPlanCountsTheWholePeriod: a stream granted its promise earlier in the
// period gets no more promised keys in it, so a lower-priority stream gets
// its own even when keys arrive one at a time (each arrival wakes a cycle).
func TestPlanCountsTheWholePeriod(t *testing.T) {
	streams := []keystore.Stream{stream("high", 10, 100, 10), stream("low", 4, 100, 1)}
	granted := map[string]int{}
	got := map[string]int{}
	for range 10 { // ten keys arrive in one 500 ms period
		for _, g := range Plan(streams, heldFrom(nil), func(id string) int { return granted[id] }, 1, 500*time.Millisecond) {
			granted[g.StreamID] += g.Keys
			got[g.StreamID] += g.Keys
		}
	}
	// high is promised 5, low 2, the 3 left go by priority.
	if got["high"] != 8 || got["low"] != 2 {
		t.Errorf("one key at a time over a period: %v; want high 8, low 2", got)
	}
}

// TestDrainingStream: a stream of a rerouted key stream's earlier path gets
// nothing from the cycle on its own, nor does it hold keys back from the
// current one; what it asks for on demand (the pads its last relays need:
// keys an SAE already has) comes before any promise, now from the pool and
// the rest from the next cycles.
func TestDrainingStream(t *testing.T) {
	old := stream("old", 100, 100, 0)
	old.Draining = true
	st := newFakeStore(old, stream("new", 1, 1000, 5))
	st.supply("L", 50)
	a := newAllocator(st, &fakeSyncer{unknown: map[string]bool{}}, "L")
	a.Cycle(context.Background())
	if st.inStream["old"] != 0 || st.inStream["new"] != 50 {
		t.Fatalf("after a cycle: old %d, new %d; want 0 and 50", st.inStream["old"], st.inStream["new"])
	}
	// The pool holds 10; new is promised more than that, old asks for 16.
	st.supply("L", 10)
	n, err := a.Fill(context.Background(), "old", "L", 16)
	if err != nil || n != 10 || st.inStream["old"] != 10 {
		t.Fatalf("on demand: %d, %v (holds %d); want 10", n, err, st.inStream["old"])
	}
	st.supply("L", 20)
	a.Cycle(context.Background())
	if st.inStream["old"] != 16 || st.inStream["new"] != 64 {
		t.Fatalf("next cycle: old %d, new %d; want 16 (its demand first) and 64", st.inStream["old"], st.inStream["new"])
	}
	a.Cycle(context.Background())
	if st.inStream["old"] != 16 {
		t.Fatalf("a demand met is not served again: old holds %d", st.inStream["old"])
	}
}

// TestFirstBatchSmall: a stream that holds no key gets a small batch first,
// so its first key does not wait for the Slave KMM to store thousands.
func TestFirstBatchSmall(t *testing.T) {
	for _, tc := range []struct {
		held int
		want []int
	}{{0, []int{firstBatch, 100 - firstBatch}}, {1, []int{100}}} {
		st := newFakeStore(stream("s", 1, 1000, 0))
		st.inStream["s"] = tc.held
		st.supply("L", 200)
		sy := &fakeSyncer{unknown: map[string]bool{}}
		a := New(st, sy, func(string) bool { return true }, Config{MaxBatch: 1000}, slog.New(slog.DiscardHandler))
		if n, err := a.Fill(context.Background(), "s", "L", 100); err != nil || n != 100 {
			t.Fatalf("held %d: Fill = %d, %v", tc.held, n, err)
		}
		var sizes []int
		for _, p := range sy.sent {
			sizes = append(sizes, len(p.KeyIDs))
		}
		if !reflect.DeepEqual(sizes, tc.want) {
			t.Errorf("held %d: batches %v, want %v", tc.held, sizes, tc.want)
		}
	}
}
