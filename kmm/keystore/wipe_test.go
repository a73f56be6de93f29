package keystore

import (
	"bytes"
	"errors"
	"testing"
)

// TestCloseWipesKEK: closing the store zeroes the node KEK in memory, and a
// seal or open still in flight fails with ErrClosed instead of using a
// zeroed key.
func TestCloseWipesKEK(t *testing.T) {
	s := newStore(t)
	mustAdd(t, s, "L", mkKeys("k", 0, 2))
	kek := s.seal.kek
	if bytes.Equal(kek, make([]byte, len(kek))) {
		t.Fatal("the KEK is all zeros before Close")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kek, make([]byte, len(kek))) {
		t.Fatal("the KEK is still in memory after Close")
	}
	if _, err := s.seal.seal("k", []byte{1, 2, 3}); !errors.Is(err, ErrClosed) {
		t.Fatalf("seal after Close: %v, want ErrClosed", err)
	}
	var id [dekIDSize]byte
	if _, err := s.seal.open("k", append(id[:], make([]byte, 40)...)); !errors.Is(err, ErrClosed) {
		t.Fatalf("open after Close: %v, want ErrClosed", err)
	}
}
