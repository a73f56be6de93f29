package keystore

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// servedPair is a pair with 64 keys supplied and allocated to stream S.
func servedPair(t *testing.T) *pair {
	t.Helper()
	p := newPair(t, "L", "S", Options{}, Options{})
	p.supply(t, mkKeys("k", 0, 64))
	p.allocate(t, 64)
	return p
}

// A key served only through the serve log (no checkpoint yet) stays served
// after a crash, and its counter is counted once, however often the store
// is reopened.
func TestServeLogReplay(t *testing.T) {
	p := servedPair(t)
	enc, err := p.master.TakeNext("S", 3, 256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.slave.TakeIDs("S", servedIDs(enc[:2])); err != nil {
		t.Fatal(err)
	}
	want := p.slave.Counters()["stream/S/delivered_dec"]
	if want != 2 {
		t.Fatalf("delivered_dec = %d, want 2", want)
	}
	dir := crashCopy(t, p.slave)
	for i := 0; i < 3; i++ {
		s := openStore(t, dir, Options{})
		if got := s.Counters()["stream/S/delivered_dec"]; got != want {
			t.Errorf("reopen %d: delivered_dec = %d, want %d", i, got, want)
		}
		if got := s.StreamCount("S"); got != 62 {
			t.Errorf("reopen %d: StreamCount = %d, want 62", i, got)
		}
		if _, err := s.TakeIDs("S", servedIDs(enc[:1])); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("reopen %d: a served key served again: %v", i, err)
		}
		if s.Holds("S", enc[1].KeyID) {
			t.Errorf("reopen %d: Holds a served key", i)
		}
		if !s.Holds("S", enc[2].KeyID) {
			t.Errorf("reopen %d: lost a key not served", i)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Checkpoints move what was served into bbolt; serving goes on across them
// without serving a key twice, and a reopen counts nothing twice.
func TestServeLogCheckpoints(t *testing.T) {
	p := newPair(t, "L", "S", Options{}, Options{})
	p.supply(t, mkKeys("k", 0, 400))
	p.allocate(t, 400)
	seen := map[string]bool{}
	for round := 0; round < 4; round++ {
		for i := 0; i < 10; i++ {
			enc, err := p.master.TakeNext("S", 5, 256)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range enc {
				if seen[k.KeyID] {
					t.Fatalf("key %s served twice", k.KeyID)
				}
				seen[k.KeyID] = true
			}
			dec, err := p.slave.TakeIDs("S", servedIDs(enc))
			if err != nil {
				t.Fatal(err)
			}
			for j := range enc {
				if string(enc[j].Key) != string(dec[j].Key) {
					t.Fatal("ends disagree")
				}
			}
		}
		time.Sleep(checkpointEvery + 20*time.Millisecond)
	}
	// Wait for the last checkpoint, then check bbolt holds the truth.
	waitCheckpointed(t, p.master)
	dir := filepath.Dir(p.master.Path())
	if err := p.master.Close(); err != nil {
		t.Fatal(err)
	}
	m := openStore(t, dir, Options{})
	if got := m.Counters()["stream/S/delivered_enc"]; got != 200 {
		t.Errorf("delivered_enc after reopen = %d, want 200", got)
	}
	if got := m.StreamCount("S"); got != 200 {
		t.Errorf("StreamCount after reopen = %d, want 200", got)
	}
	more, err := m.TakeNext("S", 200, 256)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range more {
		if seen[k.KeyID] {
			t.Fatalf("key %s served again after reopen", k.KeyID)
		}
	}
}

func waitCheckpointed(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		s.tombMu.RLock()
		idle := !s.log.checkpointing && len(s.log.done) == 0
		s.tombMu.RUnlock()
		if idle {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("checkpoint did not finish")
}

// A torn last record and records left over from an older segment in a reused
// file are not replayed.
func TestServeLogIgnoresTornAndStaleRecords(t *testing.T) {
	p := servedPair(t)
	enc, err := p.master.TakeNext("S", 2, 256)
	if err != nil {
		t.Fatal(err)
	}
	dir := crashCopy(t, p.master)
	seg := p.master.log.seg
	path := logPath(dir, int(seg%2))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, recs, ok := readLog(b)
	if !ok || len(recs) != 1 {
		t.Fatalf("log holds %d records (ok %v), want 1", len(recs), ok)
	}
	// Tear the record: flip a byte of its payload.
	b[logHeaderSize+10] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dir, Options{})
	// The torn serve is not replayed: both keys are still there (the SAE
	// never got them, as the crash cut the write).
	if got := s.StreamCount("S"); got != 64 {
		t.Errorf("StreamCount = %d, want 64", got)
	}
	if !s.Holds("S", enc[0].KeyID) {
		t.Error("a key of a torn record is gone")
	}

	// A record of an older segment with a valid CRC for that segment is
	// not taken for one of the current segment.
	var rec serveRecord
	rec = serveRecord{stream: "S", counter: "stream/S/delivered_enc", count: 1, seqs: []uint64{5}}
	stale := rec.appendTo(nil, seg)
	hdr := make([]byte, logHeaderSize)
	copy(hdr, logMagic)
	hdr[len(hdr)-1] = byte(seg + 2)
	if _, got, _ := readLog(append(hdr, stale...)); len(got) != 0 {
		t.Errorf("a stale record was read as %+v", got)
	}
}

func TestServeAfterClose(t *testing.T) {
	p := servedPair(t)
	if err := p.master.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.master.TakeNext("S", 1, 256); !errors.Is(err, ErrClosed) {
		t.Errorf("TakeNext after Close = %v, want ErrClosed", err)
	}
	if _, err := p.master.TakeIDs("S", []string{encodeKeyID("S", "k-000000", 0, 256)}); !errors.Is(err, ErrClosed) {
		t.Errorf("TakeIDs after Close = %v, want ErrClosed", err)
	}
}

func TestSeqCursor(t *testing.T) {
	s := newStore(t)
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("seqcursor"))
		if err != nil {
			return err
		}
		for _, q := range []uint64{0, 1, 2, 5, 6, 9} {
			if err := b.Put(u64(q), []byte{byte(q)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.db.View(func(tx *bolt.Tx) error {
		sc := newSeqCursor(tx.Bucket([]byte("seqcursor")))
		held := map[uint64]bool{0: true, 1: true, 2: true, 5: true, 6: true, 9: true}
		for _, q := range []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 6, 7, 2, 3, 5, 9, 9, 8, 9} {
			v := sc.get(q)
			if held[q] != (v != nil) || (v != nil && v[0] != byte(q)) {
				t.Errorf("get(%d) = %v, held %v", q, v, held[q])
			}
		}
		return nil
	})
}
