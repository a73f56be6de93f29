package keystore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// kekSize is the size of the node key-encryption key: AES-256.
const kekSize = 32

// dekRotation bounds how many keys one data-encryption key seals. Nonces are
// random (96 bits); NIST SP 800-38D allows 2^32 random nonces per key, and a
// fast link would reach that within a day, so every 2^20 seals a new DEK is
// derived from the KEK under a fresh random label.
const dekRotation = 1 << 20

// dekIDSize is the size of the random label a DEK is derived under; it is
// stored in front of every sealed key.
const dekIDSize = 8

// sealer seals keys with AES-256-GCM under DEKs derived from the node KEK,
// binding each key's ID as associated data so a sealed blob cannot be moved
// to another key_ID.
type sealer struct {
	kek []byte

	mu    sync.Mutex // guards cur, curID, used, cache
	cur   cipher.AEAD
	curID [dekIDSize]byte
	used  int
	cache map[[dekIDSize]byte]cipher.AEAD
}

// loadKEK reads the node KEK from path, creating it (mode 0600) if missing.
// It refuses to create one beside an existing key store (dbPath): the keys in
// it are sealed under the lost KEK, and a new one would make them fail only
// later, when they are served.
func loadKEK(path, dbPath string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if st, err := os.Stat(dbPath); err == nil && st.Size() > 0 {
			return nil, fmt.Errorf("key store %s exists but its key-encryption key %s is missing; restore the key or move the store away", dbPath, path)
		}
		return createKEK(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read key-encryption key: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key-encryption key %s has mode %v; it must not be readable by group or others (chmod 600)", path, st.Mode().Perm())
	}
	if len(b) != kekSize {
		return nil, fmt.Errorf("key-encryption key %s holds %d bytes, want %d", path, len(b), kekSize)
	}
	return b, nil
}

// createKEK writes a new random KEK atomically: a crash leaves either no
// KEK or a whole one, never an empty file.
func createKEK(path string) ([]byte, error) {
	b := make([]byte, kekSize)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create key-encryption key: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return b, nil
}

func newSealer(kek []byte) *sealer {
	return &sealer{kek: kek, cache: map[[dekIDSize]byte]cipher.AEAD{}}
}

func (s *sealer) dek(id [dekIDSize]byte) (cipher.AEAD, error) {
	if a, ok := s.cache[id]; ok {
		return a, nil
	}
	if s.kek == nil {
		return nil, ErrClosed
	}
	k, err := hkdf.Key(sha256.New, s.kek, id[:], "qkdnet keystore DEK v1", 32)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	// Few DEKs are alive at once (one per 2^20 keys); a bound keeps a
	// long-lived node from growing the cache without end.
	if len(s.cache) > 64 {
		clear(s.cache)
	}
	s.cache[id] = a
	return a, nil
}

// wipe zeroes the KEK and drops the DEKs, when the store closes. A serve
// still assembling a key then fails with ErrClosed rather than deriving a
// DEK from a zeroed KEK. (The AES key schedules inside the dropped AEADs are
// Go's and cannot be wiped; the garbage collector reclaims them.)
func (s *sealer) wipe() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.kek)
	s.kek, s.cur = nil, nil
	clear(s.cache)
}

// aadPrefix is put in front of the key_ID in the associated data.
const aadPrefix = "qkdnet key v1\x00"

func aad(keyID string) []byte {
	return append([]byte(aadPrefix), keyID...)
}

// aadInto builds the associated data of keyID in buf when it fits, so that
// sealing a key allocates nothing more.
func aadInto(buf *[96]byte, keyID string) []byte {
	if len(aadPrefix)+len(keyID) > len(buf) {
		return aad(keyID)
	}
	return append(append(buf[:0], aadPrefix...), keyID...)
}

// sealOverhead is what sealing adds to a key: DEK label, nonce and tag.
const sealOverhead = dekIDSize + 12 + 16

// seal returns dekID || nonce || ciphertext+tag.
func (s *sealer) seal(keyID string, key []byte) ([]byte, error) {
	return s.sealTo(make([]byte, 0, sealOverhead+len(key)), keyID, key)
}

// sealTo appends dekID || nonce || ciphertext+tag to dst.
func (s *sealer) sealTo(dst []byte, keyID string, key []byte) ([]byte, error) {
	a, id, err := s.current()
	if err != nil {
		return nil, err
	}
	start := len(dst)
	dst = append(dst, id[:]...)
	dst = append(dst, make([]byte, a.NonceSize())...)
	nonce := dst[start+dekIDSize:]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	var buf [96]byte
	return a.Seal(dst, nonce, key, aadInto(&buf, keyID)), nil
}

// current returns the DEK to seal the next key with, rotating it every
// dekRotation keys.
func (s *sealer) current() (cipher.AEAD, [dekIDSize]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.used >= dekRotation {
		var id [dekIDSize]byte
		if _, err := rand.Read(id[:]); err != nil {
			return nil, id, err
		}
		a, err := s.dek(id)
		if err != nil {
			return nil, id, err
		}
		s.cur, s.curID, s.used = a, id, 0
	}
	s.used++
	return s.cur, s.curID, nil
}

// open returns the plaintext key; the caller zeroes it when done.
func (s *sealer) open(keyID string, sealed []byte) ([]byte, error) {
	if len(sealed) < dekIDSize+12+16 {
		return nil, fmt.Errorf("sealed key too short: %w", ErrCorrupt)
	}
	var id [dekIDSize]byte
	copy(id[:], sealed)
	s.mu.Lock()
	a, err := s.dek(id)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	ns := a.NonceSize()
	nonce := sealed[dekIDSize : dekIDSize+ns]
	pt, err := a.Open(nil, nonce, sealed[dekIDSize+ns:], aad(keyID))
	if err != nil {
		return nil, fmt.Errorf("key %s fails authentication: %w", keyID, ErrCorrupt)
	}
	return pt, nil
}
