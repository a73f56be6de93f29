package keystore

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestExpire(t *testing.T) {
	const lifetime = time.Hour
	clk := newTestClock()
	opts := Options{Now: clk.Now}
	p := newPair(t, "L", "S", opts, opts)
	old := mkKeys("old", 0, 6)
	young := mkKeys("young", 0, 6)

	// t0: six old keys; four go to the stream, two stay in the pool.
	p.supply(t, old)
	p.allocate(t, 4)
	clk.Advance(40 * time.Minute)
	// t0+40m: six young keys; two go to the stream, four stay in the pool.
	p.supply(t, young)
	p.allocate(t, 4) // old[4], old[5], young[0], young[1]
	for _, s := range []*Store{p.master, p.slave} {
		if s.PoolCount("L") != 4 || s.StreamCount("S") != 8 {
			t.Fatalf("setup: pool %d, stream %d; want 4, 8", s.PoolCount("L"), s.StreamCount("S"))
		}
	}

	for _, step := range []struct {
		desc          string
		advance       time.Duration
		destroyed     int
		pool, stream  int
		linkExpired   uint64
		streamExpired uint64
	}{
		{"nothing is an hour old yet", 10 * time.Minute, 0, 4, 8, 0, 0},
		{"the old keys are", 30 * time.Minute, 6, 4, 2, 0, 6},
		{"again: nothing more", 0, 0, 4, 2, 0, 6},
		{"the young keys are", 40 * time.Minute, 4, 0, 0, 2, 8},
	} {
		t.Run(step.desc, func(t *testing.T) {
			clk.Advance(step.advance)
			for _, end := range []struct {
				name string
				s    *Store
			}{{"master", p.master}, {"slave", p.slave}} {
				s := end.s
				n, err := s.Expire(lifetime)
				if err != nil {
					t.Fatalf("%s Expire: %v", end.name, err)
				}
				if n != step.destroyed {
					t.Errorf("%s Expire destroyed %d, want %d", end.name, n, step.destroyed)
				}
				if got := s.PoolCount("L"); got != step.pool {
					t.Errorf("%s PoolCount = %d, want %d", end.name, got, step.pool)
				}
				if got := s.StreamCount("S"); got != step.stream {
					t.Errorf("%s StreamCount = %d, want %d", end.name, got, step.stream)
				}
				c := s.Counters()
				if c["link/L/expired"] != step.linkExpired || c["stream/S/expired"] != step.streamExpired {
					t.Errorf("%s expired counters link %d, stream %d; want %d, %d", end.name,
						c["link/L/expired"], c["stream/S/expired"], step.linkExpired, step.streamExpired)
				}
			}
		})
		if step.desc == "again: nothing more" {
			// The survivors are the young keys at seqs 6 and 7, and both
			// ends still agree on them.
			enc, err := p.master.TakeNext("S", 1, 512)
			if err != nil {
				t.Fatalf("TakeNext after expiry: %v", err)
			}
			if pk, _ := parseKeyID(enc[0].KeyID); pk.seq != 6 {
				t.Errorf("first key after expiry starts at seq %d, want 6", pk.seq)
			}
			if want := concat(young[0:2], 64); !bytes.Equal(enc[0].Key, want) {
				t.Errorf("key after expiry = %x, want %x", enc[0].Key, want)
			}
			dec, err := p.slave.TakeIDs("S", servedIDs(enc))
			if err != nil || !bytes.Equal(dec[0].Key, enc[0].Key) {
				t.Fatalf("slave TakeIDs after expiry: %v", err)
			}
			// Move two more young keys to the stream, so the last step
			// expires two in the pool and two in the stream.
			p.allocate(t, 2)
		}
	}
}

func TestExpiredKeyIsUnknown(t *testing.T) {
	clk := newTestClock()
	opts := Options{Now: clk.Now}
	p := newPair(t, "L", "S", opts, opts)
	p.supply(t, mkKeys("k", 0, 4))
	p.allocate(t, 4)
	enc, err := p.master.TakeNext("S", 2, 256)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Hour)
	if _, err := p.slave.Expire(time.Hour); err != nil {
		t.Fatal(err)
	}
	_, err = p.slave.TakeIDs("S", servedIDs(enc))
	var ke *KeyError
	if !errors.As(err, &ke) || !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("TakeIDs of expired keys = %v, want *KeyError wrapping ErrUnknownKey", err)
	}
}

// TestExpireForgetsApplyAnswers: an Apply answer older than the lifetime is
// forgotten, so the batch ID table does not grow without end.
func TestExpireForgetsApplyAnswers(t *testing.T) {
	clk := newTestClock()
	s := openStore(t, t.TempDir(), Options{Now: clk.Now})
	keys := mkKeys("k", 0, 2)
	mustAdd(t, s, "L", keys)
	st := testStream("S", "L")
	if unk, err := s.Apply("b", st, 0, keyIDs(keys)); err != nil || len(unk) != 0 {
		t.Fatalf("Apply = %v, %v", unk, err)
	}
	clk.Advance(2 * time.Hour)
	if _, err := s.Expire(time.Hour); err != nil {
		t.Fatal(err)
	}
	// Asked again, the batch is new: its keys are gone, so all are unknown.
	unk, err := s.Apply("b", st, 0, keyIDs(keys))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(unk, keyIDs(keys)) {
		t.Errorf("Apply after expiry = %v, want %v", unk, keyIDs(keys))
	}
}

// TestExpireStreamTTL: a stream whose QoS has a TTL loses its keys after the
// TTL, at both ends, while the pool and other streams keep the lifetime.
func TestExpireStreamTTL(t *testing.T) {
	clk := newTestClock()
	opts := Options{Now: clk.Now}
	p := newPair(t, "L", "S", opts, opts)
	p.supply(t, mkKeys("k", 0, 6))
	p.allocate(t, 4)
	for _, s := range []*Store{p.master, p.slave} {
		st, _ := s.Stream("S")
		st.QoS.TTL = 30
		if _, err := s.PutStream(st); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(20 * time.Second)
	for _, s := range []*Store{p.master, p.slave} {
		if n, err := s.Expire(time.Hour); err != nil || n != 0 {
			t.Fatalf("before the TTL: destroyed %d, %v", n, err)
		}
	}
	clk.Advance(20 * time.Second)
	for _, s := range []*Store{p.master, p.slave} {
		n, err := s.Expire(time.Hour)
		if err != nil || n != 4 || s.StreamCount("S") != 0 || s.PoolCount("L") != 2 {
			t.Fatalf("after the TTL: destroyed %d (%v); stream %d, pool %d; want 4, 0, 2", n, err, s.StreamCount("S"), s.PoolCount("L"))
		}
	}
}
