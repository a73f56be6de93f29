package keystore

import (
	"errors"
	"testing"
	"time"
)

// TestRevoke: at the slave's end, Revoke finds keys by served key_ID, writes
// nothing unless every key is found, erases the parts and marks them when
// it commits (served no more, reported as revoked, again found as
// RevokeMarked), and the marks go with the key lifetime.
func TestRevoke(t *testing.T) {
	clock := newTestClock()
	p := newPair(t, "L", "S", Options{Now: clock.Now}, Options{Now: clock.Now})
	p.supply(t, mkKeys("k", 0, 6))
	p.allocate(t, 6)
	big, err := p.master.TakeNext("S", 1, 512)
	if err != nil {
		t.Fatal(err)
	}
	small, err := p.master.TakeNext("S", 2, 256)
	if err != nil {
		t.Fatal(err)
	}
	defer zeroServed(big)
	defer zeroServed(small)
	keys := []RevokeKey{{KeyID: big[0].KeyID}, {KeyID: small[0].KeyID}}
	unknown := "00000000-0fff-801f-a7ac-f0acf18dd183"

	found, done, err := p.slave.Revoke("S", append(keys, RevokeKey{KeyID: unknown}), nil, true)
	if err != nil || done {
		t.Fatalf("Revoke with an unknown key_ID: done %v, %v", done, err)
	}
	if found[0].State != RevokeHeld || found[0].Parts != 2 || found[1].State != RevokeHeld || found[1].Parts != 1 || found[2].State != RevokeUnknown || found[2].Parts != 0 {
		t.Fatalf("found %+v", found)
	}
	if n := p.slave.StreamCount("S"); n != 6 {
		t.Fatalf("a refused Revoke left %d keys of 6", n)
	}
	// Known elsewhere on the path (Parts given): committed.
	if _, done, err := p.slave.Revoke("S", append(keys, RevokeKey{KeyID: small[1].KeyID, Parts: 1}), nil, true); err != nil || !done {
		t.Fatalf("Revoke: done %v, %v", done, err)
	}
	if n := p.slave.StreamCount("S"); n != 2 {
		t.Fatalf("%d keys left after revoking 4 parts of 6", n)
	}
	for _, id := range []string{big[0].KeyID, small[0].KeyID, small[1].KeyID} {
		if !p.slave.Revoked("S", id) {
			t.Errorf("%s not reported revoked", id)
		}
		if _, err := p.slave.TakeIDs("S", []string{id}); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("TakeIDs of revoked %s: %v", id, err)
		}
	}
	found, _, err = p.slave.Revoke("S", keys, nil, false)
	if err != nil || found[0].State != RevokeMarked || found[0].Parts != 2 {
		t.Fatalf("second look: %+v, %v", found, err)
	}
	if p.slave.Revoked("S", unknown) {
		t.Error("an unknown key_ID reported revoked")
	}
	clock.Advance(2 * time.Hour)
	if _, err := p.slave.Expire(time.Hour); err != nil {
		t.Fatal(err)
	}
	if p.slave.Revoked("S", big[0].KeyID) {
		t.Error("revocation mark outlived the key lifetime")
	}
}
