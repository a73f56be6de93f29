package keystore

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qkdnet/qkdnet/driver"
)

func testSealer(t *testing.T) *sealer {
	t.Helper()
	kek := make([]byte, kekSize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	return newSealer(kek)
}

func TestSealRoundTrip(t *testing.T) {
	s := testSealer(t)
	for _, tc := range []struct {
		desc  string
		keyID string
		size  int
	}{
		{"one byte", "k-1", 1},
		{"AES-256 key", "k-2", 32},
		{"odd size", "k-3", 33},
		{"large key", "k-4", 4096},
		{"uuid key ID", "0b1c0e2e-8d1f-4a4e-9a7b-2f0c3b7d9e11", 32},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			key := keyBytes(tc.keyID, tc.size)
			blob, err := s.seal(tc.keyID, key)
			if err != nil {
				t.Fatalf("seal: %v", err)
			}
			if want := dekIDSize + 12 + tc.size + 16; len(blob) != want {
				t.Errorf("sealed length %d, want %d", len(blob), want)
			}
			if tc.size >= 8 && bytes.Contains(blob, key) {
				t.Errorf("sealed blob contains the plaintext")
			}
			pt, err := s.open(tc.keyID, blob)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if !bytes.Equal(pt, key) {
				t.Errorf("open returned %x, want %x", pt, key)
			}
		})
	}
}

func TestSealNoncesDiffer(t *testing.T) {
	s := testSealer(t)
	key := keyBytes("k", 32)
	a, err := s.seal("k", key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.seal("k", key)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, b) {
		t.Fatal("sealing the same key twice gave the same blob (nonce reuse)")
	}
}

func TestSealOpenRejects(t *testing.T) {
	s := testSealer(t)
	key := keyBytes("key-A", 32)
	blob, err := s.seal("key-A", key)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(blob)
		b[i] ^= 0x01
		return b
	}
	other := testSealer(t)
	for _, tc := range []struct {
		desc  string
		s     *sealer
		keyID string
		blob  []byte
	}{
		{"wrong key_ID as AAD", s, "key-B", blob},
		{"key_ID prefix as AAD", s, "key-", blob},
		{"empty key_ID as AAD", s, "", blob},
		{"flipped DEK ID byte", s, "key-A", flip(0)},
		{"flipped nonce byte", s, "key-A", flip(dekIDSize)},
		{"flipped ciphertext byte", s, "key-A", flip(dekIDSize + 12)},
		{"flipped tag byte", s, "key-A", flip(len(blob) - 1)},
		{"truncated tag", s, "key-A", blob[:len(blob)-1]},
		{"extra byte", s, "key-A", append(bytes.Clone(blob), 0)},
		{"other KEK", other, "key-A", blob},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			pt, err := tc.s.open(tc.keyID, tc.blob)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open = %x, %v; want ErrCorrupt", pt, err)
			}
			if pt != nil {
				t.Errorf("open returned plaintext %x with an error", pt)
			}
		})
	}
}

// TestSealRotationAndCache checks that blobs sealed under many DEKs (more
// than the DEK cache holds) still open.
func TestSealRotationAndCache(t *testing.T) {
	s := testSealer(t)
	type sealed struct {
		id   string
		blob []byte
	}
	var all []sealed
	dekIDs := map[string]bool{}
	for i := 0; i < 100; i++ {
		id := "k-" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		blob, err := s.seal(id, keyBytes(id, 32))
		if err != nil {
			t.Fatal(err)
		}
		dekIDs[string(blob[:dekIDSize])] = true
		all = append(all, sealed{id, blob})
		// Force the next seal onto a fresh DEK, as after 2^20 seals.
		s.mu.Lock()
		s.used = dekRotation
		s.mu.Unlock()
	}
	if len(dekIDs) != 100 {
		t.Fatalf("%d distinct DEK IDs after 100 rotations, want 100", len(dekIDs))
	}
	if n := len(s.cache); n > 65 {
		t.Errorf("DEK cache holds %d entries, want it bounded", n)
	}
	for _, x := range all {
		pt, err := s.open(x.id, x.blob)
		if err != nil {
			t.Fatalf("open %s after rotation: %v", x.id, err)
		}
		if !bytes.Equal(pt, keyBytes(x.id, 32)) {
			t.Fatalf("open %s after rotation returned wrong bytes", x.id)
		}
	}
}

func TestLoadKEKCreates0600AndReuses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kek")
	kek, err := loadKEK(path, path+".db")
	if err != nil {
		t.Fatalf("loadKEK (create): %v", err)
	}
	if len(kek) != kekSize {
		t.Fatalf("KEK has %d bytes, want %d", len(kek), kekSize)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("KEK file mode %v, want 0600", st.Mode().Perm())
	}
	onDisk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, kek) {
		t.Errorf("KEK file holds %x, loadKEK returned %x", onDisk, kek)
	}
	again, err := loadKEK(path, path+".db")
	if err != nil {
		t.Fatalf("loadKEK (reuse): %v", err)
	}
	if !bytes.Equal(again, kek) {
		t.Errorf("second loadKEK returned a different KEK")
	}
}

// TestOpenKEKReusedAcrossReopen checks through the Store that the KEK file is
// created 0600 with the database, reused on reopen, and that keys sealed
// before the reopen still open after it.
func TestOpenKEKReusedAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"kek", "keys.db"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", name, st.Mode().Perm())
		}
	}
	kek1, err := os.ReadFile(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	keys := mkKeys("reuse", 0, 4)
	mustAdd(t, s, "L", keys)
	mustPutStream(t, s, testStream("S", "L"))
	if _, err := s.Reserve("S", "b1", 4); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit("b1", nil, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir, Options{})
	kek2, err := os.ReadFile(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kek1, kek2) {
		t.Fatal("reopen replaced the KEK file")
	}
	sv, err := s.TakeNext("S", 4, 256)
	if err != nil {
		t.Fatalf("TakeNext after reopen: %v", err)
	}
	for i, k := range sv {
		if !bytes.Equal(k.Key, keys[i].Bytes) {
			t.Errorf("key %d after reopen = %x, want %x", i, k.Key, keys[i].Bytes)
		}
	}
}

func TestLoadKEKRefuses(t *testing.T) {
	for _, tc := range []struct {
		desc    string
		content []byte
		mode    os.FileMode
		wantSub string
	}{
		{"group and world readable", make([]byte, kekSize), 0o644, "chmod 600"},
		{"group readable", make([]byte, kekSize), 0o640, "chmod 600"},
		{"world writable", make([]byte, kekSize), 0o602, "chmod 600"},
		{"too short", make([]byte, 16), 0o600, "16 bytes"},
		{"too long", make([]byte, kekSize+1), 0o600, "33 bytes"},
		{"empty", nil, 0o600, "0 bytes"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "kek")
			if err := os.WriteFile(path, tc.content, tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil { // umask-proof
				t.Fatal(err)
			}
			if _, err := loadKEK(path, path+".db"); err == nil || !strings.Contains(err.Error(), tc.wantSub) {
				t.Fatalf("loadKEK = %v, want an error containing %q", err, tc.wantSub)
			}
			// Open refuses it too, and creates no database.
			if s, err := Open(dir, Options{}); err == nil {
				s.Close()
				t.Fatalf("Open accepted the KEK file")
			} else if !strings.Contains(err.Error(), tc.wantSub) {
				t.Errorf("Open error %q does not contain %q", err, tc.wantSub)
			}
			if _, err := os.Stat(filepath.Join(dir, "keys.db")); err == nil {
				t.Errorf("Open created keys.db despite a bad KEK")
			}
		})
	}
}

// A store whose KEK went missing must not silently get a new one: its keys
// would fail to unseal only when served, after being erased.
func TestOpenRefusesNewKEKBesideExistingStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddToPool("L", []driver.Key{{ID: "k1", Bytes: make32(1)}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := os.Remove(filepath.Join(dir, "kek")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "key-encryption key") {
		t.Fatalf("Open with the KEK removed = %v, want an error about the missing key-encryption key", err)
	}
}

func make32(b byte) []byte {
	out := make([]byte, 32)
	for i := range out {
		out[i] = b + byte(i)
	}
	return out
}
