package keystore

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/driver"
)

func partsFor(sizeBits int) int { return (sizeBits/8 + partSize - 1) / partSize }

// TestServeBothEndsAgree is the end-to-end path of a key: both ends of a link
// get the same QKD keys, the master allocates them to a stream, the master SAE
// takes keys with TakeNext and the slave SAE the same keys with TakeIDs.
func TestServeBothEndsAgree(t *testing.T) {
	for _, size := range []int{8, 128, 256, 264, 512, 1024} {
		t.Run(fmt.Sprintf("%d bits", size), func(t *testing.T) {
			p := newPair(t, "L", "S", Options{}, Options{})
			const n = 3
			per := partsFor(size)
			total := 2*n*per + 1
			keys := mkKeys("k", 0, total)
			p.supply(t, keys)
			if _, unk := p.allocate(t, total); len(unk) != 0 {
				t.Fatalf("slave did not know %v", unk)
			}
			for _, s := range []*Store{p.master, p.slave} {
				if got := s.StreamCount("S"); got != total {
					t.Fatalf("StreamCount = %d, want %d", got, total)
				}
			}

			enc, err := p.master.TakeNext("S", n, size)
			if err != nil {
				t.Fatalf("TakeNext: %v", err)
			}
			if len(enc) != n {
				t.Fatalf("TakeNext returned %d keys, want %d", len(enc), n)
			}
			for i, k := range enc {
				if len(k.Key) != size/8 {
					t.Errorf("key %d has %d bytes, want %d", i, len(k.Key), size/8)
				}
				want := concat(keys[i*per:(i+1)*per], size/8)
				if !bytes.Equal(k.Key, want) {
					t.Errorf("master key %d = %x, want %x", i, k.Key, want)
				}
				pk, err := parseKeyID(k.KeyID)
				if err != nil {
					t.Fatalf("served key_ID %s: %v", k.KeyID, err)
				}
				if pk.seq != uint64(i*per) || pk.sizeBits != size {
					t.Errorf("key_ID %s says seq %d, %d bits; want seq %d, %d bits", k.KeyID, pk.seq, pk.sizeBits, i*per, size)
				}
				if !p.slave.Holds("S", k.KeyID) {
					t.Errorf("slave does not hold %s", k.KeyID)
				}
				if p.master.Holds("S", k.KeyID) {
					t.Errorf("master still holds served %s", k.KeyID)
				}
			}
			if got, want := p.master.StreamCount("S"), total-n*per; got != want {
				t.Errorf("master StreamCount = %d, want %d", got, want)
			}

			dec, err := p.slave.TakeIDs("S", servedIDs(enc))
			if err != nil {
				t.Fatalf("TakeIDs: %v", err)
			}
			for i := range enc {
				if dec[i].KeyID != enc[i].KeyID || !bytes.Equal(dec[i].Key, enc[i].Key) {
					t.Errorf("slave key %d = %s %x, master gave %s %x", i, dec[i].KeyID, dec[i].Key, enc[i].KeyID, enc[i].Key)
				}
			}
			if got, want := p.slave.StreamCount("S"), total-n*per; got != want {
				t.Errorf("slave StreamCount = %d, want %d", got, want)
			}
			if got := p.master.Counters()["stream/S/delivered_enc"]; got != n {
				t.Errorf("delivered_enc = %d, want %d", got, n)
			}
			if got := p.slave.Counters()["stream/S/delivered_dec"]; got != n {
				t.Errorf("delivered_dec = %d, want %d", got, n)
			}

			// At most once at each end.
			for _, k := range enc {
				_, err := p.slave.TakeIDs("S", []string{k.KeyID})
				var ke *KeyError
				if !errors.As(err, &ke) || ke.KeyID != k.KeyID || !errors.Is(err, ErrUnknownKey) {
					t.Errorf("second TakeIDs(%s) = %v, want *KeyError naming it, wrapping ErrUnknownKey", k.KeyID, err)
				}
				if p.slave.Holds("S", k.KeyID) {
					t.Errorf("slave still holds %s", k.KeyID)
				}
			}
			enc2, err := p.master.TakeNext("S", n, size)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, k := range append(enc, enc2...) {
				if seen[k.KeyID] {
					t.Errorf("master served %s twice", k.KeyID)
				}
				seen[k.KeyID] = true
			}
			if _, err := p.master.TakeNext("S", 1, size); size > 8*partSize && !errors.Is(err, ErrNotEnoughKeys) {
				t.Errorf("TakeNext with 1 part left = %v, want ErrNotEnoughKeys", err)
			}
			dec2, err := p.slave.TakeIDs("S", servedIDs(enc2))
			if err != nil {
				t.Fatal(err)
			}
			for i := range enc2 {
				if !bytes.Equal(dec2[i].Key, enc2[i].Key) {
					t.Errorf("second round key %d differs between ends", i)
				}
			}
			zeroServed(enc)
			zeroServed(dec)
		})
	}
}

func TestTakeNextAllOrNothing(t *testing.T) {
	s := newStore(t)
	mustAdd(t, s, "L", mkKeys("k", 0, 5))
	mustPutStream(t, s, testStream("S", "L"))
	mustPutStream(t, s, testStream("EMPTY", "L"))
	if _, err := s.Reserve("S", "b", 5); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit("b", nil, 3); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc   string
		stream string
		n      int
		bits   int
		want   error
	}{
		{"more keys than parts", "S", 6, 256, ErrNotEnoughKeys},
		{"composite keys need more parts", "S", 3, 512, ErrNotEnoughKeys},
		{"one key larger than the stream", "S", 1, 2048, ErrNotEnoughKeys},
		{"stream without keys", "EMPTY", 1, 8, ErrNotEnoughKeys},
		{"unknown stream", "NOPE", 1, 8, ErrNotEnoughKeys},
		{"zero keys", "S", 0, 256, nil},
		{"zero bits", "S", 1, 0, nil},
		{"bits not whole bytes", "S", 1, 12, nil},
		{"negative bits", "S", 1, -8, nil},
		{"beyond MaxKeyBits", "S", 1, MaxKeyBits + 8, nil},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			sv, err := s.TakeNext(tc.stream, tc.n, tc.bits)
			if err == nil {
				t.Fatalf("TakeNext = %d keys, want an error", len(sv))
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("TakeNext = %v, want %v", err, tc.want)
			}
			if got := s.StreamCount("S"); got != 5 {
				t.Errorf("StreamCount = %d, want 5 (nothing consumed)", got)
			}
		})
	}
	if got := s.Counters()["stream/S/delivered_enc"]; got != 0 {
		t.Errorf("delivered_enc = %d after refused requests", got)
	}
	if sv, err := s.TakeNext("S", 2, 512); err != nil || len(sv) != 2 {
		t.Fatalf("TakeNext(2, 512) = %d, %v", len(sv), err)
	}
	if got := s.StreamCount("S"); got != 1 {
		t.Errorf("StreamCount = %d, want 1", got)
	}
}

// twoStreamPair is a link whose master and slave carry streams X and Y.
func twoStreamPair(t *testing.T, perStream int) (master, slave *Store, keys []driver.Key) {
	t.Helper()
	master = newStore(t)
	slave = newStore(t)
	keys = mkKeys("k", 0, 2*perStream)
	for _, s := range []*Store{master, slave} {
		mustAdd(t, s, "L", keys)
	}
	for _, id := range []string{"X", "Y"} {
		mustPutStream(t, master, testStream(id, "L"))
		p, err := master.Reserve(id, "b-"+id, perStream)
		if err != nil {
			t.Fatal(err)
		}
		unk, err := slave.Apply("b-"+id, p.Stream, p.FirstSeq, p.KeyIDs)
		if err != nil || len(unk) != 0 {
			t.Fatalf("Apply(%s) = %v, %v", id, unk, err)
		}
		if _, err := master.Commit("b-"+id, unk, 3); err != nil {
			t.Fatal(err)
		}
	}
	return master, slave, keys
}

func TestTakeIDsAllOrNothing(t *testing.T) {
	master, slave, _ := twoStreamPair(t, 8)
	enc, err := master.TakeNext("X", 4, 256)
	if err != nil {
		t.Fatal(err)
	}
	fromY, err := master.TakeNext("Y", 1, 256)
	if err != nil {
		t.Fatal(err)
	}
	good := servedIDs(enc)
	forged := encodeKeyID("X", "not-a-part", 5, 256)
	notIssued := encodeKeyID("X", "k-000005", 6, 256) // a real part, but at another seq
	for _, tc := range []struct {
		desc  string
		ids   []string
		bad   string
		isErr error
	}{
		{"malformed", []string{good[0], "not-a-key-id", good[1]}, "not-a-key-id", ErrBadKeyID},
		{"v4 UUID", []string{good[0], "3f2b8c1e-9d4a-4b7e-8f21-6c5d4e3b2a19"}, "3f2b8c1e-9d4a-4b7e-8f21-6c5d4e3b2a19", ErrBadKeyID},
		{"forged check", []string{good[0], forged, good[1]}, forged, ErrUnknownKey},
		{"part at the wrong seq", []string{good[0], notIssued}, notIssued, ErrUnknownKey},
		{"key of stream Y on stream X", []string{good[0], fromY[0].KeyID, good[1]}, fromY[0].KeyID, ErrUnknownKey},
		{"bad one first", []string{fromY[0].KeyID, good[0]}, fromY[0].KeyID, ErrUnknownKey},
		{"duplicate", []string{good[0], good[1], good[0]}, good[0], nil},
		{"same key in uppercase", []string{good[2], strings.ToUpper(good[2])}, strings.ToUpper(good[2]), nil},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			sv, err := slave.TakeIDs("X", tc.ids)
			var ke *KeyError
			if !errors.As(err, &ke) {
				t.Fatalf("TakeIDs = %d keys, %v; want a *KeyError", len(sv), err)
			}
			if ke.KeyID != tc.bad {
				t.Errorf("KeyError names %s, want %s", ke.KeyID, tc.bad)
			}
			if tc.isErr != nil && !errors.Is(err, tc.isErr) {
				t.Errorf("error %v does not wrap %v", err, tc.isErr)
			}
			if got := slave.StreamCount("X"); got != 8 {
				t.Errorf("slave StreamCount(X) = %d, want 8 (nothing consumed)", got)
			}
			for _, id := range good {
				if !slave.Holds("X", id) {
					t.Errorf("slave lost %s after a refused request", id)
				}
			}
		})
	}
	if got := slave.Counters()["stream/X/delivered_dec"]; got != 0 {
		t.Errorf("delivered_dec = %d after refused requests", got)
	}
	// Holds tells which stream a key belongs to.
	for _, tc := range []struct {
		desc   string
		stream string
		id     string
		want   bool
	}{
		{"X key on X", "X", good[0], true},
		{"X key on Y", "Y", good[0], false},
		{"Y key on Y", "Y", fromY[0].KeyID, true},
		{"Y key on X", "X", fromY[0].KeyID, false},
		{"unknown stream", "Z", good[0], false},
		{"malformed", "X", "junk", false},
	} {
		t.Run("Holds "+tc.desc, func(t *testing.T) {
			if got := slave.Holds(tc.stream, tc.id); got != tc.want {
				t.Errorf("Holds(%s, %s) = %v, want %v", tc.stream, tc.id, got, tc.want)
			}
		})
	}
	if _, err := slave.TakeIDs("Y", good[:1]); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("TakeIDs(Y, X's key) = %v, want ErrUnknownKey", err)
	}
	if _, err := slave.TakeIDs("Z", good[:1]); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("TakeIDs on an unknown stream = %v, want ErrUnknownKey", err)
	}

	dec, err := slave.TakeIDs("X", good)
	if err != nil {
		t.Fatalf("TakeIDs(good) after the refused requests: %v", err)
	}
	for i := range dec {
		if !bytes.Equal(dec[i].Key, enc[i].Key) {
			t.Errorf("key %d differs between ends", i)
		}
	}
	decY, err := slave.TakeIDs("Y", []string{fromY[0].KeyID})
	if err != nil || !bytes.Equal(decY[0].Key, fromY[0].Key) {
		t.Errorf("TakeIDs(Y) = %v; keys equal: %v", err, err == nil && bytes.Equal(decY[0].Key, fromY[0].Key))
	}
	if got := slave.Counters()["stream/X/delivered_dec"]; got != 4 {
		t.Errorf("delivered_dec = %d, want 4", got)
	}
}

// TestTakeIDsAnyOrder: the slave SAE may ask for keys in any order and in
// several requests.
func TestTakeIDsAnyOrder(t *testing.T) {
	p := newPair(t, "L", "S", Options{}, Options{})
	keys := mkKeys("k", 0, 12)
	p.supply(t, keys)
	p.allocate(t, 12)
	enc, err := p.master.TakeNext("S", 6, 512)
	if err != nil {
		t.Fatal(err)
	}
	for _, order := range [][]int{{5, 0}, {3}, {1, 4, 2}} {
		var ids []string
		for _, i := range order {
			ids = append(ids, enc[i].KeyID)
		}
		dec, err := p.slave.TakeIDs("S", ids)
		if err != nil {
			t.Fatalf("TakeIDs(%v): %v", order, err)
		}
		for j, i := range order {
			if dec[j].KeyID != enc[i].KeyID || !bytes.Equal(dec[j].Key, enc[i].Key) {
				t.Errorf("TakeIDs(%v)[%d] differs from master key %d", order, j, i)
			}
		}
	}
	if n := p.slave.StreamCount("S"); n != 0 {
		t.Errorf("slave StreamCount = %d, want 0", n)
	}
}

// TestServeAcrossGaps: keys the slave did not know leave gaps in the stream;
// a multi-part key never spans one, and the slave assembles the same bytes.
func TestServeAcrossGaps(t *testing.T) {
	p := newPair(t, "L", "S", Options{}, Options{})
	keys := mkKeys("k", 0, 16)
	mustAdd(t, p.master, p.link, keys)
	// The slave's driver lost k3 and k9: seqs 3 and 9 become gaps.
	var slaveKeys []driver.Key
	for i, k := range keys {
		if i != 3 && i != 9 {
			slaveKeys = append(slaveKeys, k)
		}
	}
	mustAdd(t, p.slave, p.link, slaveKeys)
	pend, err := p.master.Reserve("S", "b1", 16)
	if err != nil {
		t.Fatal(err)
	}
	unk, err := p.slave.Apply("b1", pend.Stream, pend.FirstSeq, pend.KeyIDs)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{keys[3].ID, keys[9].ID}; fmt.Sprint(unk) != fmt.Sprint(want) {
		t.Fatalf("unknown = %v, want %v", unk, want)
	}
	if n, err := p.master.Commit("b1", unk, 1); err != nil || n != 14 {
		t.Fatalf("Commit = %d, %v", n, err)
	}
	if got := p.master.Counters()["link/L/discarded"]; got != 2 {
		t.Errorf("discarded = %d, want 2", got)
	}
	// Stream: 0 1 2 _ 4 5 6 7 8 _ 10 11 12 13 14 15
	for _, step := range []struct {
		desc      string
		n, bits   int
		firstSeqs []uint64
		parts     int
	}{
		{"4-part key skips the run 0-2 before the gap", 1, 1024, []uint64{4}, 4},
		{"3-part key fits 0-2", 1, 768, []uint64{0}, 3},
		{"two 2-part keys: 8 is cut off by the gap at 9", 2, 512, []uint64{10, 12}, 2},
		{"one part: 8 is still there", 1, 256, []uint64{8}, 1},
		{"2-part key truncated to 264 bits", 1, 264, []uint64{14}, 2},
	} {
		t.Run(step.desc, func(t *testing.T) {
			enc, err := p.master.TakeNext("S", step.n, step.bits)
			if err != nil {
				t.Fatalf("TakeNext: %v", err)
			}
			for i, k := range enc {
				pk, _ := parseKeyID(k.KeyID)
				if pk.seq != step.firstSeqs[i] {
					t.Errorf("key %d starts at seq %d, want %d", i, pk.seq, step.firstSeqs[i])
				}
				first := int(step.firstSeqs[i])
				if want := concat(keys[first:first+step.parts], step.bits/8); !bytes.Equal(k.Key, want) {
					t.Errorf("key %d = %x, want %x", i, k.Key, want)
				}
			}
			dec, err := p.slave.TakeIDs("S", servedIDs(enc))
			if err != nil {
				t.Fatalf("TakeIDs: %v", err)
			}
			for i := range enc {
				if !bytes.Equal(dec[i].Key, enc[i].Key) {
					t.Errorf("slave key %d = %x, master %x", i, dec[i].Key, enc[i].Key)
				}
			}
		})
	}
	for _, s := range []*Store{p.master, p.slave} {
		if n := s.StreamCount("S"); n != 0 {
			t.Errorf("StreamCount = %d at the end, want 0", n)
		}
	}
	// The 264-bit key used all of seq 15 though it needed one byte of it.
	if _, err := p.master.TakeNext("S", 1, 8); !errors.Is(err, ErrNotEnoughKeys) {
		t.Errorf("TakeNext on an empty stream = %v", err)
	}
}

// TestConcurrentTakeNext: 16 SAE requests at once on one stream each get
// distinct keys, and together they use exactly what was allocated.
func TestConcurrentTakeNext(t *testing.T) {
	const (
		workers = 16
		perCall = 2
		parts   = 16 * 40 * perCall
	)
	s := newStore(t)
	keys := mkKeys("k", 0, parts)
	mustAdd(t, s, "L", keys)
	mustPutStream(t, s, testStream("S", "L"))
	if _, err := s.Reserve("S", "b", parts); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit("b", nil, 3); err != nil {
		t.Fatal(err)
	}

	var (
		mu     sync.Mutex
		served = map[string][]byte{}
		dups   []string
		wg     sync.WaitGroup
		errs   = make(chan error, workers)
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				sv, err := s.TakeNext("S", perCall, 256)
				if errors.Is(err, ErrNotEnoughKeys) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for _, k := range sv {
					if _, dup := served[k.KeyID]; dup {
						dups = append(dups, k.KeyID)
					}
					served[k.KeyID] = k.Key
				}
				mu.Unlock()
			}
		}()
	}
	ok := waitDone(t, 60*time.Second, "16 concurrent TakeNext loops", wg.Wait)
	close(errs)
	for err := range errs {
		t.Errorf("TakeNext: %v", err)
	}
	if !ok {
		return
	}
	if len(dups) > 0 {
		t.Errorf("served twice: %v", dups)
	}
	if len(served) != parts {
		t.Errorf("served %d keys, allocated %d", len(served), parts)
	}
	for id, b := range served {
		pk, err := parseKeyID(id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, keys[pk.seq].Bytes) {
			t.Errorf("%s (seq %d) served %x, want %x", id, pk.seq, b, keys[pk.seq].Bytes)
		}
	}
	if n := s.StreamCount("S"); n != 0 {
		t.Errorf("StreamCount = %d, want 0", n)
	}
	if got := s.Counters()["stream/S/delivered_enc"]; got != parts {
		t.Errorf("delivered_enc = %d, want %d", got, parts)
	}
}

// TestConcurrentTakeIDsSameKeys: 16 slave SAE requests racing for the same
// key_IDs; each key is served exactly once.
func TestConcurrentTakeIDsSameKeys(t *testing.T) {
	const n = 128
	p := newPair(t, "L", "S", Options{}, Options{})
	keys := mkKeys("k", 0, n)
	p.supply(t, keys)
	p.allocate(t, n)
	enc, err := p.master.TakeNext("S", n, 256)
	if err != nil {
		t.Fatal(err)
	}
	ids := servedIDs(enc)
	var (
		mu    sync.Mutex
		count = map[string]int{}
		wg    sync.WaitGroup
		errs  = make(chan error, 16)
	)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for j := range ids {
				id := ids[(j*7+w*13)%len(ids)] // a different order per worker
				sv, err := p.slave.TakeIDs("S", []string{id})
				if err != nil {
					if !errors.Is(err, ErrUnknownKey) {
						errs <- err
						return
					}
					continue
				}
				mu.Lock()
				count[sv[0].KeyID]++
				mu.Unlock()
			}
		}(w)
	}
	ok := waitDone(t, 60*time.Second, "16 concurrent TakeIDs loops", wg.Wait)
	close(errs)
	for err := range errs {
		t.Errorf("TakeIDs: %v", err)
	}
	if !ok {
		return
	}
	for _, id := range ids {
		if count[id] != 1 {
			t.Errorf("%s served %d times, want once", id, count[id])
		}
	}
	if got := p.slave.Counters()["stream/S/delivered_dec"]; got != n {
		t.Errorf("delivered_dec = %d, want %d", got, n)
	}
}

func TestChanged(t *testing.T) {
	clk := newTestClock()
	s := openStore(t, t.TempDir(), Options{Now: clk.Now})
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	mustPutStream(t, s, testStream("S", "L"))
	for _, tc := range []struct {
		desc string
		op   func() error
	}{
		{"AddToPool", func() error { return s.AddToPool("L", mkKeys("k", 0, 8)) }},
		{"Reserve", func() error { _, err := s.Reserve("S", "b1", 6); return err }},
		{"Commit", func() error { _, err := s.Commit("b1", []string{"k-000001"}, 3); return err }},
		{"TakeNext", func() error { _, err := s.TakeNext("S", 1, 256); return err }},
		{"Apply", func() error {
			_, err := s.Apply("ext", testStream("T", "L"), 0, []string{"k-000001"})
			return err
		}},
		{"TakeIDs", func() error {
			_, err := s.TakeIDs("T", []string{encodeKeyID("T", "k-000001", 0, 256)})
			return err
		}},
		{"Expire", func() error {
			clk.Advance(2 * time.Hour)
			n, err := s.Expire(time.Hour)
			if err == nil && n == 0 {
				err = errors.New("Expire destroyed nothing")
			}
			return err
		}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			ch := s.Changed()
			if closed(ch) {
				t.Fatal("Changed() is closed before the operation")
			}
			if err := tc.op(); err != nil {
				t.Fatalf("%s: %v", tc.desc, err)
			}
			if !closed(ch) {
				t.Errorf("Changed() not closed after %s", tc.desc)
			}
			if closed(s.Changed()) {
				t.Errorf("the new Changed() channel is already closed")
			}
		})
	}
}
