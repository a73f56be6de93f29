package keystore

// Tests that expose defects of store.go and seal.go found while writing the
// package's tests. Each fails until the defect it names is fixed; the comment
// above each says what is wrong and where.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Store.update (store.go, the select at the top of update) picks at random
// between sending the op and seeing s.closing; once Close has stopped the
// writer, the send case is still ready (ops is buffered), so about half of
// the calls made after Close queue an op nobody will run and block forever on
// <-o.done instead of returning ErrClosed.
func TestOperationsAfterCloseReturnErrClosed(t *testing.T) {
	s := newStore(t)
	mustPutStream(t, s, testStream("S", "L"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ops := []struct {
		desc string
		op   func() error
	}{
		{"AddToPool", func() error { return s.AddToPool("L", mkKeys("k", 0, 1)) }},
		{"PutStream", func() error { _, err := s.PutStream(testStream("T", "L")); return err }},
		{"Reserve", func() error { _, err := s.Reserve("S", "b", 1); return err }},
		{"TakeNext", func() error { _, err := s.TakeNext("S", 1, 256); return err }},
		{"Expire", func() error { _, err := s.Expire(time.Hour); return err }},
	}
	const tries = 16
	type result struct {
		desc string
		err  error
	}
	results := make(chan result, tries*len(ops))
	for _, o := range ops {
		for i := 0; i < tries; i++ {
			go func() { results <- result{o.desc, o.op()} }()
		}
	}
	returned := map[string]int{}
	deadline := time.After(3 * time.Second)
	for i := 0; i < tries*len(ops); i++ {
		select {
		case r := <-results:
			returned[r.desc]++
			if !errors.Is(r.err, ErrClosed) {
				t.Errorf("%s after Close = %v, want ErrClosed", r.desc, r.err)
			}
		case <-deadline:
			for _, o := range ops {
				if n := tries - returned[o.desc]; n > 0 {
					t.Errorf("%d of %d %s calls after Close never returned", n, tries, o.desc)
				}
			}
			return
		}
	}
}

// TakeIDs (store.go, in the update closure: reject(&KeyError{KeyID:
// keyIDs[0], ...}) when the stream has no keys bucket) indexes keyIDs[0]
// without checking that the request names any key. An empty dec_keys request
// for a stream that never held keys panics in the writer goroutine and takes
// the whole node down. The panic would kill the test binary, so the request
// runs in a child process.
func TestTakeIDsEmptyRequestDoesNotPanic(t *testing.T) {
	if os.Getenv("KEYSTORE_TEST_CHILD") == "empty-takeids" {
		s := newStore(t)
		mustPutStream(t, s, testStream("S", "L"))
		for _, stream := range []string{"S", "never-created"} {
			sv, err := s.TakeIDs(stream, nil)
			if len(sv) != 0 {
				t.Errorf("TakeIDs(%s, nil) served %d keys", stream, len(sv))
			}
			_ = err // an error or an empty answer are both fine; a panic is not
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestTakeIDsEmptyRequestDoesNotPanic$", "-test.count=1")
	cmd.Env = append(os.Environ(), "KEYSTORE_TEST_CHILD=empty-takeids")
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := string(out)
		if i := strings.Index(msg, "panic:"); i >= 0 {
			msg = msg[i:]
			if len(msg) > 600 {
				msg = msg[:600]
			}
		}
		t.Fatalf("TakeIDs with an empty key_ID list crashed the process (%v):\n%s", err, msg)
	}
}

// Reserve (store.go, tx.Bucket(bucketPending).Put([]byte(batchID), v))
// overwrites a pending batch of the same ID: the first batch's keys have
// already left the pool and are now in no batch and no stream — destroyed
// without a counter, and the stream's NextSeq has moved past them. Reserve
// should refuse (reject) a batch ID that is already pending.
func TestReserveSamePendingBatchIDLosesNoKeys(t *testing.T) {
	s := newStore(t)
	mustAdd(t, s, "L", mkKeys("k", 0, 4))
	mustPutStream(t, s, testStream("S", "L"))
	if _, err := s.Reserve("S", "b", 2); err != nil {
		t.Fatal(err)
	}
	_, err := s.Reserve("S", "b", 2) // e.g. a Synchronizer retrying after a timeout
	pend, perr := s.PendingBatches()
	if perr != nil {
		t.Fatal(perr)
	}
	accounted := s.PoolCount("L")
	for _, p := range pend {
		accounted += len(p.KeyIDs)
	}
	if accounted != 4 {
		t.Errorf("second Reserve of pending batch b returned %v; pool %d + pending %v accounts for %d keys, want 4",
			err, s.PoolCount("L"), pend, accounted)
	}
}

// AddToPool (store.go, `if idx.Get([]byte(k.ID)) != nil { continue }`)
// skips a re-delivered key only while it sits in the pool: Reserve, Apply and
// Expire delete its poolidx entry. A driver re-delivering a batch after a
// crash (which the AddToPool doc allows) puts keys that are pending, already
// allocated to a stream, or already served back into the pool, from where
// they are allocated again — the same QKD bits in two streams (invariant 3)
// or delivered twice (invariant 1). AddToPool should remember every key_ID a
// link supplied (e.g. a per-link "seen" bucket pruned by Expire after the
// lifetime) and skip those.
func TestAddToPoolRedeliveryOfKeysThatLeftThePool(t *testing.T) {
	for _, tc := range []struct {
		desc  string
		after func(t *testing.T, s *Store)
	}{
		{"pending", func(t *testing.T, s *Store) {
			if _, err := s.Reserve("S", "b", 4); err != nil {
				t.Fatal(err)
			}
		}},
		{"allocated to a stream", func(t *testing.T, s *Store) {
			if _, err := s.Reserve("S", "b", 4); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Commit("b", nil, 3); err != nil {
				t.Fatal(err)
			}
		}},
		{"served", func(t *testing.T, s *Store) {
			if _, err := s.Reserve("S", "b", 4); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Commit("b", nil, 3); err != nil {
				t.Fatal(err)
			}
			if _, err := s.TakeNext("S", 4, 256); err != nil {
				t.Fatal(err)
			}
		}},
		{"applied at the slave", func(t *testing.T, s *Store) {
			if _, err := s.Apply("b", testStream("S", "L"), 0, keyIDs(mkKeys("k", 0, 4))); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			s := newStore(t)
			keys := mkKeys("k", 0, 4)
			mustAdd(t, s, "L", keys)
			mustPutStream(t, s, testStream("S", "L"))
			mustPutStream(t, s, testStream("OTHER", "L"))
			tc.after(t, s)
			mustAdd(t, s, "L", keys) // the driver re-delivers after a crash
			if n := s.PoolCount("L"); n != 0 {
				t.Errorf("PoolCount = %d after re-delivery of keys that were %s, want 0", n, tc.desc)
			}
			if got := s.Counters()["link/L/supplied"]; got != 4 {
				t.Errorf("link/L/supplied = %d, want 4", got)
			}
			if p, err := s.Reserve("OTHER", "again", 4); err == nil {
				t.Errorf("keys that were %s were allocated again, to stream OTHER: %v", tc.desc, p.KeyIDs)
			}
		})
	}
}

// Expire (store.go, the expire closure: "Keys sit in supply order, so each
// scan stops at the first key still alive") is wrong for stream buckets: a key
// the Slave did not know goes back to the pool and is later allocated at a
// higher sequence number than younger keys another batch allocated meanwhile.
// The scan stops at the younger key and the older one outlives its lifetime.
// Stream buckets need a full scan (they are bounded by MaxBuffer) or an index
// by supply time.
func TestExpireStreamKeysOutOfSupplyOrder(t *testing.T) {
	clk := newTestClock()
	s := openStore(t, t.TempDir(), Options{Now: clk.Now})
	mustPutStream(t, s, testStream("A", "L"))
	mustPutStream(t, s, testStream("B", "L"))
	old := mkKeys("old", 0, 2)
	young := mkKeys("young", 0, 2)

	mustAdd(t, s, "L", old) // t0
	if _, err := s.Reserve("A", "a1", 2); err != nil {
		t.Fatal(err)
	}
	clk.Advance(40 * time.Minute)
	mustAdd(t, s, "L", young) // t0+40m
	if _, err := s.Reserve("B", "b1", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit("b1", nil, 3); err != nil { // B: seq 0, 1 = young
		t.Fatal(err)
	}
	if _, err := s.Commit("a1", []string{old[0].ID}, 3); err != nil { // old[0] back to the pool
		t.Fatal(err)
	}
	p, err := s.Reserve("B", "b2", 1) // B: seq 2 = old[0]
	if err != nil {
		t.Fatal(err)
	}
	if p.KeyIDs[0] != old[0].ID {
		t.Fatalf("b2 took %v, want %s", p.KeyIDs, old[0].ID)
	}
	if _, err := s.Commit("b2", nil, 3); err != nil {
		t.Fatal(err)
	}

	clk.Advance(30 * time.Minute) // old keys are 70 minutes old, young 30
	n, err := s.Expire(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("Expire destroyed %d keys, want 2 (old[1] in A and old[0] in B)", n)
	}
	if got := s.StreamCount("B"); got != 2 {
		t.Errorf("StreamCount(B) = %d, want 2: old[0] at seq 2 outlived its lifetime", got)
	}
	if s.Holds("B", encodeKeyID("B", old[0].ID, 2, 256)) {
		t.Errorf("stream B still holds old[0], supplied 70 minutes ago with a 1 hour lifetime")
	}
}

// Apply (store.go, `if firstSeq+uint64(len(keyIDs)) > maxSeq`) checks the
// range with an addition that wraps: a firstSeq near 2^64 from a faulty or
// hostile peer passes, and keys are filed at sequence numbers no key_ID can
// name (48 bits), stranded until they expire. Check
// `firstSeq > maxSeq || uint64(len(keyIDs)) > maxSeq-firstSeq` instead.
func TestApplyRejectsWrappingFirstSeq(t *testing.T) {
	for _, tc := range []struct {
		desc     string
		firstSeq uint64
		n        int
	}{
		{"2^64-1, one key", math.MaxUint64, 1},
		{"2^64-2, two keys", math.MaxUint64 - 1, 2},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			s := newStore(t)
			keys := mkKeys("k", 0, tc.n)
			mustAdd(t, s, "L", keys)
			unk, err := s.Apply("b", testStream("S", "L"), tc.firstSeq, keyIDs(keys))
			if err == nil {
				t.Errorf("Apply(firstSeq %d) = %v, nil; want an error", tc.firstSeq, unk)
			}
			if got := s.PoolCount("L"); got != tc.n {
				t.Errorf("PoolCount = %d, want %d (nothing moved)", got, tc.n)
			}
		})
	}
}

// sealer.open (seal.go, `return nil, errors.New("sealed key too short")`)
// reports a truncated record without ErrCorrupt, unlike every other damaged
// record, so a caller testing errors.Is(err, ErrCorrupt) misses it. Wrap
// ErrCorrupt there too.
func TestSealOpenTruncatedIsCorrupt(t *testing.T) {
	s := testSealer(t)
	blob, err := s.seal("k", keyBytes("k", 32))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, dekIDSize, dekIDSize + 12, dekIDSize + 12 + 15} {
		t.Run(fmt.Sprintf("%d bytes", n), func(t *testing.T) {
			if _, err := s.open("k", blob[:n]); !errors.Is(err, ErrCorrupt) {
				t.Errorf("open of a %d-byte blob = %v, want ErrCorrupt", n, err)
			}
		})
	}
}
