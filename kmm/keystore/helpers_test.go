package keystore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/driver"
)

// partSize is the size of the keys the tests' QKD "links" deliver.
const partSize = 32

// testClock is an injectable clock (Options.Now).
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// openStore opens a store in dir and closes it when the test ends.
func openStore(tb testing.TB, dir string, opts Options) *Store {
	tb.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		tb.Fatalf("Open(%s): %v", dir, err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func newStore(tb testing.TB) *Store {
	tb.Helper()
	return openStore(tb, tb.TempDir(), Options{})
}

// keyBytes is the deterministic, distinctive material of QKD key id.
func keyBytes(id string, size int) []byte {
	out := make([]byte, 0, size+sha256.Size)
	for ctr := uint32(0); len(out) < size; ctr++ {
		var c [4]byte
		binary.BigEndian.PutUint32(c[:], ctr)
		h := sha256.Sum256(append([]byte("qkdnet test key\x00"+id+"\x00"), c[:]...))
		out = append(out, h[:]...)
	}
	return out[:size]
}

// mkKeys makes n driver keys named prefix-000000.. with partSize bytes each.
func mkKeys(prefix string, first, n int) []driver.Key {
	keys := make([]driver.Key, n)
	for i := range keys {
		id := fmt.Sprintf("%s-%06d", prefix, first+i)
		keys[i] = driver.Key{ID: id, Bytes: keyBytes(id, partSize)}
	}
	return keys
}

func keyIDs(keys []driver.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID
	}
	return out
}

// copyKeys deep-copies keys, as each link end's driver hands its own buffers.
func copyKeys(keys []driver.Key) []driver.Key {
	out := make([]driver.Key, len(keys))
	for i, k := range keys {
		out[i] = driver.Key{ID: k.ID, Bytes: bytes.Clone(k.Bytes)}
	}
	return out
}

func mustAdd(tb testing.TB, s *Store, link string, keys []driver.Key) {
	tb.Helper()
	if err := s.AddToPool(link, copyKeys(keys)); err != nil {
		tb.Fatalf("AddToPool(%s, %d keys): %v", link, len(keys), err)
	}
}

func mustPutStream(tb testing.TB, s *Store, st Stream) Stream {
	tb.Helper()
	out, err := s.PutStream(st)
	if err != nil {
		tb.Fatalf("PutStream(%+v): %v", st, err)
	}
	return out
}

func testStream(id, link string) Stream {
	return Stream{ID: id, MasterSAE: "sae-a", SlaveSAE: "sae-b", Link: link, QoS: QoS{KeyRate: 10, MaxBuffer: 1000, Priority: 1}}
}

// pair is both ends of one QKD link: the Master KMM's store and the Slave's,
// fed the same keys.
type pair struct {
	master, slave *Store
	link          string
	stream        Stream
	batch         int
}

func newPair(tb testing.TB, link, streamID string, mopts, sopts Options) *pair {
	tb.Helper()
	p := &pair{
		master: openStore(tb, tb.TempDir(), mopts),
		slave:  openStore(tb, tb.TempDir(), sopts),
		link:   link,
		stream: testStream(streamID, link),
	}
	p.stream = mustPutStream(tb, p.master, p.stream)
	return p
}

// supply hands both ends the same keys.
func (p *pair) supply(tb testing.TB, keys []driver.Key) {
	tb.Helper()
	mustAdd(tb, p.master, p.link, keys)
	mustAdd(tb, p.slave, p.link, keys)
}

// allocate runs one synchronisation round: Reserve on the master, Apply on
// the slave, Commit on the master with the slave's answer.
func (p *pair) allocate(tb testing.TB, n int) (Pending, []string) {
	tb.Helper()
	p.batch++
	batchID := fmt.Sprintf("%s-batch-%d", p.stream.ID, p.batch)
	pend, err := p.master.Reserve(p.stream.ID, batchID, n)
	if err != nil {
		tb.Fatalf("Reserve(%s, %d): %v", batchID, n, err)
	}
	unknown, err := p.slave.Apply(batchID, pend.Stream, pend.FirstSeq, pend.KeyIDs)
	if err != nil {
		tb.Fatalf("Apply(%s): %v", batchID, err)
	}
	if _, err := p.master.Commit(batchID, unknown, 3); err != nil {
		tb.Fatalf("Commit(%s): %v", batchID, err)
	}
	return pend, unknown
}

func zeroServed(sv []Served) {
	for _, s := range sv {
		driver.Zero(s.Key)
	}
}

func servedIDs(sv []Served) []string {
	out := make([]string, len(sv))
	for i, s := range sv {
		out[i] = s.KeyID
	}
	return out
}

// concat is the expected bytes of a served key made of parts, truncated.
func concat(parts []driver.Key, sizeBytes int) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p.Bytes...)
	}
	return b[:sizeBytes]
}

// waitDone runs f in a goroutine and fails the test if it does not return
// within d (a bound on a test that would otherwise hang, not a sleep).
func waitDone(tb testing.TB, d time.Duration, what string, f func()) bool {
	tb.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		tb.Errorf("%s did not return within %v", what, d)
		return false
	}
}
