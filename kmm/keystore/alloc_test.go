package keystore

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"
)

func TestReserveTakesOldestInOrder(t *testing.T) {
	s := newStore(t)
	keys := mkKeys("k", 0, 10)
	mustAdd(t, s, "L", keys[:4])
	mustAdd(t, s, "L", keys[4:])
	mustPutStream(t, s, testStream("S", "L"))

	for _, tc := range []struct {
		desc      string
		batch     string
		n         int
		wantIDs   []string
		wantFirst uint64
		wantPool  int
	}{
		{"first three", "b1", 3, keyIDs(keys[0:3]), 0, 7},
		{"across supply batches", "b2", 4, keyIDs(keys[3:7]), 3, 3},
		{"more than the pool holds takes what is there", "b3", 100, keyIDs(keys[7:10]), 7, 0},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			p, err := s.Reserve("S", tc.batch, tc.n)
			if err != nil {
				t.Fatalf("Reserve: %v", err)
			}
			if p.BatchID != tc.batch || p.Link != "L" || p.Stream.ID != "S" {
				t.Errorf("Pending = %+v, want batch %s on link L, stream S", p, tc.batch)
			}
			if !reflect.DeepEqual(p.KeyIDs, tc.wantIDs) {
				t.Errorf("KeyIDs = %v, want %v", p.KeyIDs, tc.wantIDs)
			}
			if p.FirstSeq != tc.wantFirst {
				t.Errorf("FirstSeq = %d, want %d", p.FirstSeq, tc.wantFirst)
			}
			if got := s.PoolCount("L"); got != tc.wantPool {
				t.Errorf("PoolCount = %d, want %d", got, tc.wantPool)
			}
			st, _ := s.Stream("S")
			if want := tc.wantFirst + uint64(len(tc.wantIDs)); st.NextSeq != want {
				t.Errorf("NextSeq = %d, want %d", st.NextSeq, want)
			}
			if n := s.StreamCount("S"); n != 0 {
				t.Errorf("StreamCount = %d before any Commit, want 0 (nothing servable)", n)
			}
		})
	}
	if _, err := s.TakeNext("S", 1, 256); !errors.Is(err, ErrNotEnoughKeys) {
		t.Errorf("TakeNext before Commit = %v, want ErrNotEnoughKeys", err)
	}
}

func TestReserveErrors(t *testing.T) {
	s := newStore(t)
	mustPutStream(t, s, testStream("S", "L"))
	mustPutStream(t, s, testStream("E", "EMPTY"))
	mustAdd(t, s, "EMPTY", mkKeys("e", 0, 1))
	if _, err := s.Reserve("E", "drain", 1); err != nil {
		t.Fatal(err)
	}
	mustAdd(t, s, "L", mkKeys("k", 0, 2))
	mustPutStream(t, s, testStream("N", "NEVER"))
	for _, tc := range []struct {
		desc   string
		stream string
		n      int
		want   error
	}{
		{"unknown stream", "X-none", 1, ErrUnknownStream},
		{"link pool never supplied", "N", 1, ErrNotEnoughKeys},
		{"pool emptied", "E", 1, ErrNotEnoughKeys},
		{"zero keys", "S", 0, ErrNotEnoughKeys},
		{"negative keys", "S", -1, ErrNotEnoughKeys},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			p, err := s.Reserve(tc.stream, "x-"+tc.desc, tc.n)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Reserve = %+v, %v; want %v", p, err, tc.want)
			}
		})
	}
	if n := s.PoolCount("L"); n != 2 {
		t.Errorf("PoolCount(L) = %d after failed Reserves, want 2", n)
	}
	pend, err := s.PendingBatches()
	if err != nil {
		t.Fatal(err)
	}
	if len(pend) != 1 || pend[0].BatchID != "drain" {
		t.Errorf("PendingBatches = %+v, want only batch drain", pend)
	}
}

func TestPendingBatchesSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	keys := mkKeys("k", 0, 6)
	mustAdd(t, s, "L", keys)
	mustPutStream(t, s, testStream("S", "L"))
	p1, err := s.Reserve("S", "b1", 2)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := s.Reserve("S", "b2", 3)
	if err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, s *Store) {
		t.Helper()
		pend, err := s.PendingBatches()
		if err != nil {
			t.Fatal(err)
		}
		sort.Slice(pend, func(i, j int) bool { return pend[i].BatchID < pend[j].BatchID })
		if len(pend) != 2 {
			t.Fatalf("PendingBatches = %+v, want 2", pend)
		}
		for i, want := range []Pending{p1, p2} {
			got := pend[i]
			if got.BatchID != want.BatchID || got.Link != want.Link || got.FirstSeq != want.FirstSeq ||
				!reflect.DeepEqual(got.KeyIDs, want.KeyIDs) || got.Stream.ID != "S" {
				t.Errorf("pending %d = %+v, want %+v", i, got, want)
			}
		}
		if n := s.PoolCount("L"); n != 1 {
			t.Errorf("PoolCount = %d, want 1", n)
		}
		st, _ := s.Stream("S")
		if st.NextSeq != 5 {
			t.Errorf("NextSeq = %d, want 5", st.NextSeq)
		}
	}
	t.Run("before close", func(t *testing.T) { check(t, s) })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, Options{})
	t.Run("after reopen", func(t *testing.T) { check(t, s) })

	// Crash recovery: the batches are committed after the restart.
	if n, err := s.Commit("b2", nil, 3); err != nil || n != 3 {
		t.Fatalf("Commit(b2) after reopen = %d, %v", n, err)
	}
	if n, err := s.Commit("b1", nil, 3); err != nil || n != 2 {
		t.Fatalf("Commit(b1) after reopen = %d, %v", n, err)
	}
	sv, err := s.TakeNext("S", 5, 256)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range sv {
		p, _ := parseKeyID(k.KeyID)
		if p.seq != uint64(i) || string(k.Key) != string(keys[i].Bytes) {
			t.Errorf("served %d: seq %d, key %x; want seq %d, key %x", i, p.seq, k.Key, i, keys[i].Bytes)
		}
	}
}

func TestCommitAllKnown(t *testing.T) {
	s := newStore(t)
	mustAdd(t, s, "L", mkKeys("k", 0, 5))
	mustPutStream(t, s, testStream("S", "L"))
	if _, err := s.Reserve("S", "b1", 5); err != nil {
		t.Fatal(err)
	}
	n, err := s.Commit("b1", nil, 3)
	if err != nil || n != 5 {
		t.Fatalf("Commit = %d, %v; want 5, nil", n, err)
	}
	if got := s.StreamCount("S"); got != 5 {
		t.Errorf("StreamCount = %d, want 5", got)
	}
	if got := s.PoolCount("L"); got != 0 {
		t.Errorf("PoolCount = %d, want 0", got)
	}
	c := s.Counters()
	for name, want := range map[string]uint64{"link/L/allocated": 5, "stream/S/allocated": 5, "link/L/discarded": 0} {
		if c[name] != want {
			t.Errorf("%s = %d, want %d", name, c[name], want)
		}
	}
	if pend, _ := s.PendingBatches(); len(pend) != 0 {
		t.Errorf("PendingBatches after Commit = %+v", pend)
	}
	for _, tc := range []struct {
		desc  string
		batch string
	}{
		{"committed twice", "b1"},
		{"never reserved", "nope"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if _, err := s.Commit(tc.batch, nil, 3); err == nil {
				t.Fatal("Commit succeeded")
			}
			if got := s.StreamCount("S"); got != 5 {
				t.Errorf("StreamCount = %d, want 5", got)
			}
		})
	}
}

func TestCommitUnknownReturnsToPoolThenDiscards(t *testing.T) {
	const maxRejects = 3
	s := newStore(t)
	keys := mkKeys("k", 0, 6)
	mustAdd(t, s, "L", keys)
	mustPutStream(t, s, testStream("S", "L"))

	// Round 1: k1 and k3 unknown to the slave; they go back to the pool at
	// their original places, ahead of k4 and k5.
	p, err := s.Reserve("S", "r1", 4)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Commit("r1", []string{keys[1].ID, keys[3].ID, "not-in-batch"}, maxRejects)
	if err != nil || n != 2 {
		t.Fatalf("Commit(r1) = %d, %v; want 2", n, err)
	}
	if got := s.PoolCount("L"); got != 4 {
		t.Errorf("PoolCount = %d, want 4 (2 left + 2 returned)", got)
	}
	if got := s.StreamCount("S"); got != 2 {
		t.Errorf("StreamCount = %d, want 2", got)
	}
	// The stream holds seqs 0 and 2; 1 and 3 are gaps.
	if p.FirstSeq != 0 {
		t.Fatalf("FirstSeq = %d", p.FirstSeq)
	}

	// The next Reserve takes the returned keys first, in their order.
	for round := 2; round <= maxRejects; round++ {
		batch := "r" + string(rune('0'+round))
		p, err := s.Reserve("S", batch, 2)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{keys[1].ID, keys[3].ID}; !reflect.DeepEqual(p.KeyIDs, want) {
			t.Fatalf("round %d Reserve took %v, want %v (returned keys first)", round, p.KeyIDs, want)
		}
		if _, err := s.Commit(batch, p.KeyIDs, maxRejects); err != nil {
			t.Fatal(err)
		}
		wantPool, wantDiscarded := 4, uint64(0)
		if round == maxRejects {
			wantPool, wantDiscarded = 2, 2
		}
		if got := s.PoolCount("L"); got != wantPool {
			t.Errorf("round %d: PoolCount = %d, want %d", round, got, wantPool)
		}
		if got := s.Counters()["link/L/discarded"]; got != wantDiscarded {
			t.Errorf("round %d: link/L/discarded = %d, want %d", round, got, wantDiscarded)
		}
	}
	// Destroyed keys are gone for good: the pool now holds k4, k5 only.
	p, err = s.Reserve("S", "last", 10)
	if err != nil {
		t.Fatal(err)
	}
	if want := keyIDs(keys[4:6]); !reflect.DeepEqual(p.KeyIDs, want) {
		t.Errorf("last Reserve took %v, want %v", p.KeyIDs, want)
	}
	if _, err := s.Commit("last", nil, maxRejects); err != nil {
		t.Fatal(err)
	}
	if got, want := s.Counters()["link/L/allocated"], uint64(4); got != want {
		t.Errorf("link/L/allocated = %d, want %d", got, want)
	}
	if got := s.StreamCount("S"); got != 4 {
		t.Errorf("StreamCount = %d, want 4", got)
	}
}

func TestApply(t *testing.T) {
	s := newStore(t)
	keys := mkKeys("k", 0, 8)
	mustAdd(t, s, "L", keys)
	st := testStream("S", "L")
	ids := []string{keys[2].ID, "ghost-1", keys[0].ID, keys[5].ID, "ghost-2"}

	unknown, err := s.Apply("b1", st, 10, ids)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if want := []string{"ghost-1", "ghost-2"}; !reflect.DeepEqual(unknown, want) {
		t.Errorf("unknown = %v, want %v", unknown, want)
	}
	got, ok := s.Stream("S")
	if !ok || got.Link != "L" || got.MasterSAE != st.MasterSAE || got.QoS != st.QoS {
		t.Errorf("Apply created stream %+v, %v; want %+v", got, ok, st)
	}
	check := func(t *testing.T, s *Store) {
		t.Helper()
		if n := s.PoolCount("L"); n != 5 {
			t.Errorf("PoolCount = %d, want 5", n)
		}
		if n := s.StreamCount("S"); n != 3 {
			t.Errorf("StreamCount = %d, want 3", n)
		}
		c := s.Counters()
		if c["link/L/allocated"] != 3 || c["stream/S/allocated"] != 3 {
			t.Errorf("allocated counters = %d, %d; want 3, 3", c["link/L/allocated"], c["stream/S/allocated"])
		}
	}
	check(t, s)

	for _, tc := range []struct {
		desc string
		ids  []string
	}{
		{"same batch again", ids},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			again, err := s.Apply("b1", st, 10, tc.ids)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(again, unknown) {
				t.Errorf("repeated Apply = %v, want %v", again, unknown)
			}
			check(t, s)
		})
	}

	// The keys sit at firstSeq+i: the master's key_ID for seq 10 (k2) and
	// seq 13 (k5) name them; seq 11 (ghost-1) is a gap.
	for _, tc := range []struct {
		desc string
		id   string
		want bool
	}{
		{"seq 10 = k2", encodeKeyID("S", keys[2].ID, 10, 256), true},
		{"seq 12 = k0", encodeKeyID("S", keys[0].ID, 12, 256), true},
		{"seq 13 = k5", encodeKeyID("S", keys[5].ID, 13, 256), true},
		{"seq 11 gap", encodeKeyID("S", "ghost-1", 11, 256), false},
		{"k2 at wrong seq", encodeKeyID("S", keys[2].ID, 12, 256), false},
		{"seq 12-13 as one 512-bit key", encodeKeyID("S", keys[0].ID, 12, 512), true},
		{"seq 10-11 across the gap", encodeKeyID("S", keys[2].ID, 10, 512), false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if got := s.Holds("S", tc.id); got != tc.want {
				t.Errorf("Holds = %v, want %v", got, tc.want)
			}
		})
	}

	// A later batch on the same stream; a key already moved is unknown.
	unknown2, err := s.Apply("b2", st, 15, []string{keys[2].ID, keys[7].ID})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{keys[2].ID}; !reflect.DeepEqual(unknown2, want) {
		t.Errorf("b2 unknown = %v, want %v", unknown2, want)
	}

	// Survives reopen: the answer is remembered and the keys stay put.
	dir := dirOf(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, Options{})
	again, err := s.Apply("b1", st, 10, ids)
	if err != nil || !reflect.DeepEqual(again, unknown) {
		t.Errorf("Apply(b1) after reopen = %v, %v; want %v", again, err, unknown)
	}
	if n := s.StreamCount("S"); n != 4 {
		t.Errorf("StreamCount after reopen = %d, want 4", n)
	}
	if n := s.PoolCount("L"); n != 4 {
		t.Errorf("PoolCount after reopen = %d, want 4", n)
	}
	if !s.Holds("S", encodeKeyID("S", keys[7].ID, 16, 256)) {
		t.Errorf("k7 at seq 16 lost across reopen")
	}
}

func TestApplyRejects(t *testing.T) {
	s := newStore(t)
	keys := mkKeys("k", 0, 4)
	mustAdd(t, s, "L", keys)
	mustPutStream(t, s, testStream("S", "L"))
	for _, tc := range []struct {
		desc     string
		st       Stream
		firstSeq uint64
		ids      []string
	}{
		{"stream on another link", testStream("S", "L2"), 0, keyIDs(keys[:1])},
		{"seq beyond 48 bits", testStream("S", "L"), maxSeq, keyIDs(keys[:2])},
		{"new stream without a link", Stream{ID: "N"}, 0, keyIDs(keys[:1])},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if _, err := s.Apply("bad-"+tc.desc, tc.st, tc.firstSeq, tc.ids); err == nil {
				t.Fatal("Apply accepted it")
			}
			if n := s.PoolCount("L"); n != 4 {
				t.Errorf("PoolCount = %d, want 4 (nothing moved)", n)
			}
		})
	}
	// A refused batch is not remembered: the same ID may be applied later.
	if unk, err := s.Apply("bad-stream on another link", testStream("S", "L"), 0, keyIDs(keys[:1])); err != nil || len(unk) != 0 {
		t.Errorf("Apply after a refused try = %v, %v", unk, err)
	}
}

func TestApplyNoPool(t *testing.T) {
	s := newStore(t)
	unknown, err := s.Apply("b", testStream("S", "L"), 0, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(unknown, []string{"a", "b"}) {
		t.Errorf("unknown = %v, want [a b]", unknown)
	}
	if _, ok := s.Stream("S"); !ok {
		t.Errorf("stream not created")
	}
}

// dirOf is the directory of a store's database.
func dirOf(s *Store) string { return filepath.Dir(s.Path()) }

// TestGroupCommitIsolatesFailingOp: an Apply that fails after writing (a
// sequence number the stream already holds) aborts the shared transaction;
// the writes grouped with it must still commit, each on its own.
func TestGroupCommitIsolatesFailingOp(t *testing.T) {
	s := newStore(t)
	st := testStream("S", "L")
	base := mkKeys("base", 0, 8)
	mustAdd(t, s, "L", base)
	// The stream holds seqs 0, 2 and 3; 1 is free.
	if unk, err := s.Apply("a", st, 0, keyIDs(base[:1])); err != nil || len(unk) != 0 {
		t.Fatalf("Apply(a) = %v, %v", unk, err)
	}
	if unk, err := s.Apply("a2", st, 2, keyIDs(base[1:3])); err != nil || len(unk) != 0 {
		t.Fatalf("Apply(a2) = %v, %v", unk, err)
	}
	const workers = 16
	errs := make(chan error, 2*workers)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(2)
			go func(w int) { // good writes
				defer wg.Done()
				errs <- s.AddToPool("L", mkKeys(fmt.Sprintf("w%d", w), 0, 4))
			}(w)
			go func(w int) { // bad: base[4] moves to free seq 1, then base[5] hits seq 2
				defer wg.Done()
				_, err := s.Apply(fmt.Sprintf("bad-%d", w), st, 1, keyIDs(base[4:6]))
				if !errors.Is(err, ErrCorrupt) {
					errs <- fmt.Errorf("colliding Apply = %v, want ErrCorrupt", err)
					return
				}
				errs <- nil
			}(w)
		}
		wg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("concurrent writes did not finish")
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got, want := s.PoolCount("L"), 5+workers*4; got != want {
		t.Errorf("PoolCount = %d, want %d (good writes kept, bad Applies moved nothing)", got, want)
	}
	if got := s.StreamCount("S"); got != 3 {
		t.Errorf("StreamCount = %d, want 3", got)
	}
	if s.Holds("S", encodeKeyID("S", base[4].ID, 1, 256)) {
		t.Errorf("a failed Apply left base[4] at seq 1")
	}
	if got, want := s.Counters()["link/L/supplied"], uint64(8+workers*4); got != want {
		t.Errorf("supplied = %d, want %d", got, want)
	}
	// A failed Apply is not remembered as answered.
	if unk, err := s.Apply("bad-0", st, 4, keyIDs(base[4:6])); err != nil || len(unk) != 0 {
		t.Errorf("Apply(bad-0) at free seqs = %v, %v", unk, err)
	}
}
