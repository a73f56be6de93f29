package keystore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

// storeState is everything a restart must not lose.
type storeState struct {
	Pool     int
	Stream   int
	Counters map[string]uint64
	Streams  []Stream
	Pending  []Pending
}

func stateOf(t *testing.T, s *Store) storeState {
	t.Helper()
	st := s.Streams()
	sort.Slice(st, func(i, j int) bool { return st[i].ID < st[j].ID })
	pend, err := s.PendingBatches()
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(pend, func(i, j int) bool { return pend[i].BatchID < pend[j].BatchID })
	counters := s.Counters()
	for k, v := range counters {
		if v == 0 { // the in-memory mirror may list counters never incremented
			delete(counters, k)
		}
	}
	return storeState{s.PoolCount("L"), s.StreamCount("S"), counters, st, pend}
}

// crashCopy copies a store's files while it is open, as a crash would leave
// them: only what was made durable before the operations returned.
func crashCopy(t *testing.T, s *Store) string {
	t.Helper()
	src := filepath.Dir(s.Path())
	dst := t.TempDir()
	// Every file of the store: the KEK, keys.db and the serve log.
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestNothingAcknowledgedIsLost runs a key's life at both ends, then restarts
// each store two ways — from a copy of its files taken while it was still
// open (a crash), and after Close — and checks that every acknowledged step
// is still there and nothing served can be served again.
func TestNothingAcknowledgedIsLost(t *testing.T) {
	p := newPair(t, "L", "S", Options{}, Options{})
	keys := mkKeys("k", 0, 20)
	p.supply(t, keys)
	p.allocate(t, 8) // seqs 0-7 servable at both ends
	pend, err := p.master.Reserve("S", "inflight", 4)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := p.master.TakeNext("S", 2, 512) // seqs 0-3
	if err != nil {
		t.Fatal(err)
	}
	dec, err := p.slave.TakeIDs("S", servedIDs(enc[:1])) // seqs 0-1 at the slave
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dec[0].Key, enc[0].Key) {
		t.Fatal("ends disagree before the restart")
	}
	if _, err := p.master.PutStream(Stream{ID: "S", Link: "L", QoS: QoS{KeyRate: 99}}); err != nil {
		t.Fatal(err)
	}
	slaveAnswer, err := p.slave.Apply("slave-only", p.stream, 100, []string{keys[19].ID, "ghost"})
	if err != nil {
		t.Fatal(err)
	}

	wantMaster, wantSlave := stateOf(t, p.master), stateOf(t, p.slave)
	if wantMaster.Pool != 8 || wantMaster.Stream != 4 || len(wantMaster.Pending) != 1 {
		t.Fatalf("master before restart: %+v", wantMaster)
	}
	if wantSlave.Pool != 11 || wantSlave.Stream != 7 {
		t.Fatalf("slave before restart: %+v", wantSlave)
	}

	restarts := []struct {
		desc    string
		restart func(t *testing.T, s *Store) *Store
	}{
		{"crash (files copied while open)", func(t *testing.T, s *Store) *Store {
			return openStore(t, crashCopy(t, s), Options{})
		}},
		{"close and reopen", func(t *testing.T, s *Store) *Store {
			dir := filepath.Dir(s.Path())
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return openStore(t, dir, Options{})
		}},
	}
	for _, r := range restarts {
		t.Run(r.desc, func(t *testing.T) {
			m, s := r.restart(t, p.master), r.restart(t, p.slave)
			if got := stateOf(t, m); !reflect.DeepEqual(got, wantMaster) {
				t.Errorf("master after restart:\n got %+v\nwant %+v", got, wantMaster)
			}
			if got := stateOf(t, s); !reflect.DeepEqual(got, wantSlave) {
				t.Errorf("slave after restart:\n got %+v\nwant %+v", got, wantSlave)
			}
			// The slave still holds the key its SAE has not taken, not the
			// one it has.
			if _, err := s.TakeIDs("S", servedIDs(enc[:1])); !errors.Is(err, ErrUnknownKey) {
				t.Errorf("slave served a taken key again after restart: %v", err)
			}
			dec, err := s.TakeIDs("S", servedIDs(enc[1:]))
			if err != nil || !bytes.Equal(dec[0].Key, enc[1].Key) {
				t.Errorf("slave lost an untaken key across restart: %v", err)
			}
			// The master goes on after what it served.
			more, err := m.TakeNext("S", 2, 512)
			if err != nil {
				t.Fatal(err)
			}
			for i, k := range more {
				if pk, _ := parseKeyID(k.KeyID); pk.seq != uint64(4+2*i) {
					t.Errorf("master after restart served seq %d, want %d", pk.seq, 4+2*i)
				}
				if want := concat(keys[4+2*i:6+2*i], 64); !bytes.Equal(k.Key, want) {
					t.Errorf("master key after restart = %x, want %x", k.Key, want)
				}
			}
			// The batch in flight completes; the slave's answer is replayed.
			if ans, err := s.Apply("slave-only", p.stream, 100, nil); err != nil || !reflect.DeepEqual(ans, slaveAnswer) {
				t.Errorf("Apply replay after restart = %v, %v; want %v", ans, err, slaveAnswer)
			}
			unk, err := s.Apply(pend.BatchID, pend.Stream, pend.FirstSeq, pend.KeyIDs)
			if err != nil || len(unk) != 0 {
				t.Fatalf("Apply(inflight) after restart = %v, %v", unk, err)
			}
			if n, err := m.Commit(pend.BatchID, unk, 3); err != nil || n != 4 {
				t.Fatalf("Commit(inflight) after restart = %d, %v", n, err)
			}
			enc2, err := m.TakeNext("S", 1, 1024)
			if err != nil {
				t.Fatal(err)
			}
			dec2, err := s.TakeIDs("S", servedIDs(enc2))
			if err != nil || !bytes.Equal(dec2[0].Key, enc2[0].Key) || !bytes.Equal(enc2[0].Key, concat(keys[8:12], 128)) {
				t.Errorf("in-flight batch after restart: %v", err)
			}
		})
	}
}

func TestClosedStore(t *testing.T) {
	s := newStore(t)
	mustAdd(t, s, "L", mkKeys("k", 0, 2))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if s.Holds("S", encodeKeyID("S", "k-000000", 0, 256)) {
		t.Errorf("Holds on a closed store = true")
	}
}
