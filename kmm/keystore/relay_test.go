package keystore

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// TestPutRelayed stores relayed keys at the next node of a path: X is
// recovered from Z and the hop's pad, the pad is erased in the same
// transaction, repeats are answered from what is held, a key whose pad is
// not here yet waits, and one that fails its check is refused.
func TestPutRelayed(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	pads := mkKeys("pad", 0, 4)
	mustAdd(t, s, "L", pads)
	if _, err := s.Apply("b1", testStream("S#1", "L"), 0, keyIDs(pads)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutStream(Stream{ID: "S", MasterSAE: "SAE_A", SlaveSAE: "SAE_C", Link: "relay:L"}); err != nil {
		t.Fatal(err)
	}
	xs := mkKeys("x", 0, 4)
	item := func(seq int) RelayItem {
		z := bytes.Clone(xs[seq].Bytes)
		for i := range z {
			z[i] ^= pads[seq].Bytes[i]
		}
		return RelayItem{Seq: uint64(seq), KeyID: xs[seq].ID, Z: z}
	}
	ok := func(uint64, []byte) bool { return true }

	held, err := s.PutRelayed("S", "S#1", []RelayItem{item(0), item(1)}, ok)
	if err != nil || !slices.Equal(held, []uint64{0, 1}) {
		t.Fatalf("PutRelayed = %v, %v", held, err)
	}
	got, err := s.ReadSeqs("S", 0, 10)
	if err != nil || len(got) != 2 {
		t.Fatalf("ReadSeqs = %v, %v", got, err)
	}
	for i, k := range got {
		if k.Seq != uint64(i) || k.KeyID != xs[i].ID || !bytes.Equal(k.Key, xs[i].Bytes) {
			t.Errorf("relayed key %d = %+v, want %s", i, k, xs[i].ID)
		}
	}
	if n := s.StreamCount("S#1"); n != 2 {
		t.Errorf("pads left = %d, want 2 (the used ones erased)", n)
	}

	// The same message again (the sender did not see the answer): held,
	// nothing changes.
	held, err = s.PutRelayed("S", "S#1", []RelayItem{item(0), item(1)}, ok)
	if err != nil || !slices.Equal(held, []uint64{0, 1}) || s.StreamCount("S") != 2 || s.StreamCount("S#1") != 2 {
		t.Fatalf("repeat = %v, %v; S %d, S#1 %d", held, err, s.StreamCount("S"), s.StreamCount("S#1"))
	}

	// No pad 7 here: not held, nothing stored.
	far := RelayItem{Seq: 7, KeyID: "x-7", Z: make([]byte, partSize)}
	if held, err = s.PutRelayed("S", "S#1", []RelayItem{far}, ok); err != nil || len(held) != 0 {
		t.Errorf("without its pad = %v, %v", held, err)
	}

	// A failed check refuses that key and keeps its pad; the others go in.
	bad := func(seq uint64, _ []byte) bool { return seq != 2 }
	held, err = s.PutRelayed("S", "S#1", []RelayItem{item(2), item(3)}, bad)
	if !errors.Is(err, ErrRelayCheck) || !slices.Equal(held, []uint64{3}) {
		t.Fatalf("with a bad check = %v, %v", held, err)
	}
	if p, _ := s.ReadSeqs("S#1", 0, 10); len(p) != 1 || p[0].Seq != 2 {
		t.Errorf("pads after the failed check = %v, want only seq 2", p)
	}

	// The relay node erases what the next node holds.
	if err := s.EraseSeqs(map[string][]uint64{"S": {0, 3}, "S#1": {2}}, "relayed_out"); err != nil {
		t.Fatal(err)
	}
	c := s.Counters()
	if s.StreamCount("S") != 1 || s.StreamCount("S#1") != 0 || c["stream/S/relayed_in"] != 3 || c["stream/S/relayed_out"] != 2 || c["stream/S#1/pads_used"] != 3 {
		t.Errorf("after erase: S %d, S#1 %d, counters %v", s.StreamCount("S"), s.StreamCount("S#1"), c)
	}

	// A key received, then served (here: erased), is still held for a
	// resend: the sender crashed before it saw the answer.
	if held, err = s.PutRelayed("S", "S#1", []RelayItem{item(0)}, ok); err != nil || !slices.Equal(held, []uint64{0}) {
		t.Errorf("resend of a key served since = %v, %v; want held", held, err)
	}
	if s.StreamCount("S") != 1 {
		t.Errorf("the resend stored the key again: S holds %d", s.StreamCount("S"))
	}

	// Durable: a reopened store holds the same.
	s.Close()
	s = openStore(t, dir, Options{})
	if got, _ := s.ReadSeqs("S", 0, 10); len(got) != 1 || got[0].Seq != 1 || !bytes.Equal(got[0].Key, xs[1].Bytes) {
		t.Errorf("after reopen: %v", got)
	}
}
