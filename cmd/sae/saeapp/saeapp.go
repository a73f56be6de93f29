// Package saeapp is the example secure application of the paper's testbed: a
// sender SAE that gets a key with ETSI 014 enc_keys, encrypts a message with
// AES-256-GCM and sends ciphertext and key_ID over a plain TCP channel, and a
// receiver SAE that gets the same key with dec_keys and decrypts. `sae send`,
// `sae receive` and `qkdnet demo` use it.
//
// Wire format on the TCP channel: one JSON object per line. The sender
// writes a Message; the receiver answers each with an Ack line. The channel
// needs no confidentiality: only the key_ID, nonce and ciphertext cross it.
package saeapp

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/qkdnet/qkdnet/etsi014client"
	"github.com/qkdnet/qkdnet/testbed"
)

// KeyBits is the key size the SAEs ask for: AES-256.
const KeyBits = 256

// maxLine bounds one line on the channel, so a bad peer cannot make the
// receiver buffer without limit.
const maxLine = 1 << 20

// Message is what the sender sends for each encrypted message.
type Message struct {
	Sender     string `json:"sender"`
	KeyID      string `json:"key_ID"`
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"`
}

// Ack is the receiver's answer to a Message.
type Ack struct {
	KeyID string `json:"key_ID"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Connect returns an ETSI 014 client for SAE saeID of the network described
// by <stateDir>/endpoints.json: its KMM's URL, its certificate and the CA.
// stateDir may also name the endpoints.json file itself.
func Connect(stateDir, saeID string) (*etsi014client.Client, testbed.SAEEntry, error) {
	if strings.HasSuffix(stateDir, ".json") {
		stateDir = filepath.Dir(stateDir)
	}
	e, err := testbed.ReadEndpoints(stateDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, testbed.SAEEntry{}, fmt.Errorf("no %s in %s; is `qkdnet up --state-dir %s` running?", testbed.EndpointsFile, stateDir, stateDir)
		}
		return nil, testbed.SAEEntry{}, err
	}
	s, ok := e.SAE(saeID)
	if !ok {
		var have []string
		for _, s := range e.SAEs {
			have = append(have, s.SAEID)
		}
		return nil, s, fmt.Errorf("no SAE %q in %s (it has %s)", saeID, filepath.Join(stateDir, testbed.EndpointsFile), strings.Join(have, ", "))
	}
	k, ok := e.KMM(s.KMM)
	if !ok {
		return nil, s, fmt.Errorf("SAE %s is attached to node %q, which %s does not list", saeID, s.KMM, testbed.EndpointsFile)
	}
	c, err := etsi014client.NewFromFiles(k.URL, e.CACert, s.Cert, s.Key, etsi014client.Options{MaxConns: 4})
	if err != nil {
		return nil, s, err
	}
	return c, s, nil
}

// Encrypt seals plaintext with AES-256-GCM under key, a fresh random nonce
// and the key_ID as additional data (so a ciphertext cannot be passed off
// under another key_ID).
func Encrypt(key []byte, keyID string, plaintext []byte) (nonce, ciphertext []byte, err error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, nil, err
	}
	nonce = make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, err
	}
	return nonce, aead.Seal(nil, nonce, plaintext, []byte(keyID)), nil
}

// Decrypt opens what Encrypt sealed.
func Decrypt(key []byte, keyID string, nonce, ciphertext []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(nonce) != aead.NonceSize() {
		return nil, fmt.Errorf("nonce is %d bytes, want %d", len(nonce), aead.NonceSize())
	}
	pt, err := aead.Open(nil, nonce, ciphertext, []byte(keyID))
	if err != nil {
		return nil, errors.New("decryption failed: wrong key or tampered message")
	}
	return pt, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != KeyBits/8 {
		return nil, fmt.Errorf("key is %d bytes, want %d for AES-256", len(key), KeyBits/8)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// retry calls f until it succeeds, fails with an error that is not a 503,
// or wait has passed. A 503 means the KMM has no key for the pair yet (the
// link makes one key per second in the paper's setup) or a peer is briefly
// unreachable; the SAE did nothing wrong and may retry.
func retry[T any](ctx context.Context, wait time.Duration, logger *slog.Logger, what string, f func() (T, error)) (T, error) {
	begin := time.Now()
	deadline := begin.Add(wait)
	backoff := 100 * time.Millisecond
	logged := false
	for {
		v, err := f()
		var e *etsi014client.Error
		if err == nil || !errors.As(err, &e) || !e.Temporary() || time.Now().Add(backoff).After(deadline) {
			return v, err
		}
		// At the paper's rate (one key per second) short waits are normal;
		// say something only when the wait gets long.
		if !logged && time.Since(begin) > 2*time.Second {
			logger.Info("KMM cannot serve yet; still retrying", "call", what, "reason", e.Message)
			logged = true
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// Sender is the master SAE: it sends encrypted messages to one peer.
type Sender struct {
	Client *etsi014client.Client
	// SAEID is this SAE (the master); Peer is the receiving SAE (the slave).
	SAEID string
	Peer  string
	// Addr is the receiver's TCP address.
	Addr string
	// KeyWait is how long to keep retrying when the KMM answers 503.
	// Default 30 s.
	KeyWait time.Duration
	Logger  *slog.Logger

	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
}

// Sent describes one message that was sent and acknowledged.
type Sent struct {
	KeyID         string
	CiphertextLen int
}

// Send gets a fresh key, encrypts plaintext, sends it and waits for the
// receiver's acknowledgement. Each call uses a new key.
func (s *Sender) Send(ctx context.Context, plaintext []byte) (Sent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	logger := s.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	wait := s.KeyWait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	kc, err := retry(ctx, wait, logger, "enc_keys", func() (*etsi014client.KeyContainer, error) {
		return s.Client.EncKeys(ctx, s.Peer, etsi014client.KeyRequest{Number: 1, Size: KeyBits})
	})
	if err != nil {
		return Sent{}, err
	}
	defer kc.Zero()
	if len(kc.Keys) != 1 {
		return Sent{}, fmt.Errorf("enc_keys returned %d keys, want 1", len(kc.Keys))
	}
	k := kc.Keys[0]
	nonce, ct, err := Encrypt(k.Bytes, k.KeyID, plaintext)
	if err != nil {
		return Sent{}, fmt.Errorf("key %s: %w", k.KeyID, err)
	}
	msg := Message{Sender: s.SAEID, KeyID: k.KeyID, Nonce: nonce, Ciphertext: ct}
	ack, err := s.roundTrip(ctx, msg, wait)
	if err != nil {
		return Sent{}, err
	}
	if ack.KeyID != k.KeyID {
		return Sent{}, fmt.Errorf("receiver acknowledged key_ID %q, sent %q", ack.KeyID, k.KeyID)
	}
	if !ack.OK {
		return Sent{}, fmt.Errorf("receiver could not decrypt message with key_ID %s: %s", k.KeyID, ack.Error)
	}
	return Sent{KeyID: k.KeyID, CiphertextLen: len(ct)}, nil
}

func (s *Sender) roundTrip(ctx context.Context, msg Message, wait time.Duration) (Ack, error) {
	if s.conn == nil {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := d.DialContext(dctx, "tcp", s.Addr)
		cancel()
		if err != nil {
			return Ack{}, fmt.Errorf("connecting to receiver %s: %w", s.Addr, err)
		}
		s.conn, s.rd = c, bufio.NewReaderSize(c, 4096)
	}
	fail := func(err error) (Ack, error) {
		s.conn.Close()
		s.conn, s.rd = nil, nil
		return Ack{}, fmt.Errorf("receiver %s: %w", s.Addr, err)
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return Ack{}, err
	}
	// The receiver may itself wait for its KMM (503 retries), so allow it
	// the same time the sender allows itself, plus margin.
	deadline := time.Now().Add(wait + 30*time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	s.conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { s.conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := s.conn.Write(append(b, '\n')); err != nil {
		return fail(err)
	}
	line, err := readLine(s.rd)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fail(err)
	}
	var ack Ack
	if err := json.Unmarshal(line, &ack); err != nil {
		return fail(fmt.Errorf("malformed acknowledgement: %w", err))
	}
	return ack, nil
}

// Close closes the channel to the receiver.
func (s *Sender) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn, s.rd = nil, nil
	return err
}

func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		frag, isPrefix, err := r.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, frag...)
		if len(line) > maxLine {
			return nil, fmt.Errorf("line longer than %d bytes", maxLine)
		}
		if !isPrefix {
			return line, nil
		}
	}
}

// Received is one message the receiver handled.
type Received struct {
	From          string
	KeyID         string
	CiphertextLen int
	// Plaintext is the decrypted message, if Err is nil.
	Plaintext []byte
	Err       error
}

// Receiver is the slave SAE: it decrypts what senders send it.
type Receiver struct {
	Client *etsi014client.Client
	// SAEID is this SAE.
	SAEID string
	// KeyWait is how long to keep retrying when the KMM answers 503.
	// Default 30 s.
	KeyWait time.Duration
	Logger  *slog.Logger
	// OnMessage is called for every message, from the connection's
	// goroutine; it must not keep Plaintext's slice.
	OnMessage func(Received)
}

// Serve accepts senders on ln until ctx ends; it then closes ln and every
// connection and returns nil.
func (r *Receiver) Serve(ctx context.Context, ln net.Listener) error {
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Go(func() {
			r.handle(ctx, c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close()
		})
	}
}

func (r *Receiver) handle(ctx context.Context, c net.Conn) {
	log := r.Logger.With("peer", c.RemoteAddr().String())
	rd := bufio.NewReaderSize(c, 4096)
	for {
		line, err := readLine(rd)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				log.Warn("channel closed", "err", err)
			}
			return
		}
		ack, rec := r.process(ctx, line)
		if rec.Err != nil {
			log.Warn("message rejected", "from", rec.From, "key_ID", rec.KeyID, "err", rec.Err)
		}
		if r.OnMessage != nil {
			r.OnMessage(rec)
		}
		clear(rec.Plaintext)
		b, _ := json.Marshal(ack)
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(append(b, '\n')); err != nil {
			return
		}
	}
}

func (r *Receiver) process(ctx context.Context, line []byte) (Ack, Received) {
	var m Message
	if err := json.Unmarshal(line, &m); err != nil {
		err = fmt.Errorf("malformed message: %w", err)
		return Ack{OK: false, Error: err.Error()}, Received{Err: err}
	}
	rec := Received{From: m.Sender, KeyID: m.KeyID, CiphertextLen: len(m.Ciphertext)}
	bad := func(err error) (Ack, Received) {
		rec.Err = err
		return Ack{KeyID: m.KeyID, OK: false, Error: err.Error()}, rec
	}
	if m.Sender == "" || m.KeyID == "" || len(m.Nonce) == 0 || len(m.Ciphertext) == 0 {
		return bad(errors.New("message lacks sender, key_ID, nonce or ciphertext"))
	}
	wait := r.KeyWait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	kc, err := retry(ctx, wait, r.Logger, "dec_keys", func() (*etsi014client.KeyContainer, error) {
		return r.Client.DecKeys(ctx, m.Sender, m.KeyID)
	})
	if err != nil {
		return bad(err)
	}
	defer kc.Zero()
	i := slices.IndexFunc(kc.Keys, func(k etsi014client.Key) bool { return k.KeyID == m.KeyID })
	if i < 0 {
		return bad(fmt.Errorf("dec_keys did not return key_ID %s", m.KeyID))
	}
	pt, err := Decrypt(kc.Keys[i].Bytes, m.KeyID, m.Nonce, m.Ciphertext)
	if err != nil {
		return bad(err)
	}
	rec.Plaintext = pt
	return Ack{KeyID: m.KeyID, OK: true}, rec
}
