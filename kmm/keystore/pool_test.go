package keystore

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/qkdnet/qkdnet/driver"
)

func TestAddToPoolCounts(t *testing.T) {
	s := newStore(t)
	a := mkKeys("a", 0, 10)
	for _, tc := range []struct {
		desc      string
		link      string
		keys      []driver.Key
		wantCount map[string]int
		supplied  map[string]uint64
	}{
		{"first batch", "L1", a[:6], map[string]int{"L1": 6, "L2": 0}, map[string]uint64{"L1": 6}},
		{"empty batch is a no-op", "L1", nil, map[string]int{"L1": 6}, map[string]uint64{"L1": 6}},
		{"same IDs again (driver re-delivery)", "L1", a[:6], map[string]int{"L1": 6}, map[string]uint64{"L1": 6}},
		{"overlapping batch adds only the new IDs", "L1", a[4:10], map[string]int{"L1": 10}, map[string]uint64{"L1": 10}},
		{"duplicate within one batch counts once", "L2", []driver.Key{a[0], a[0], a[1]}, map[string]int{"L1": 10, "L2": 2}, map[string]uint64{"L1": 10, "L2": 2}},
		{"same IDs on another link are other keys", "L3", a[:3], map[string]int{"L1": 10, "L2": 2, "L3": 3}, map[string]uint64{"L3": 3}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if err := s.AddToPool(tc.link, copyKeys(tc.keys)); err != nil {
				t.Fatalf("AddToPool: %v", err)
			}
			for link, want := range tc.wantCount {
				if got := s.PoolCount(link); got != want {
					t.Errorf("PoolCount(%s) = %d, want %d", link, got, want)
				}
			}
			c := s.Counters()
			for link, want := range tc.supplied {
				if got := c["link/"+link+"/supplied"]; got != want {
					t.Errorf("link/%s/supplied = %d, want %d", link, got, want)
				}
			}
		})
	}
}

func TestAddToPoolRejectsEmpty(t *testing.T) {
	for _, tc := range []struct {
		desc string
		keys []driver.Key
	}{
		{"empty ID", []driver.Key{{ID: "", Bytes: []byte{1, 2, 3}}}},
		{"nil bytes", []driver.Key{{ID: "k", Bytes: nil}}},
		{"zero-length bytes", []driver.Key{{ID: "k", Bytes: []byte{}}}},
		{"bad key after good ones", append(mkKeys("g", 0, 3), driver.Key{ID: "", Bytes: []byte{1}})},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			s := newStore(t)
			if err := s.AddToPool("L", tc.keys); err == nil {
				t.Fatal("AddToPool accepted the batch")
			}
			if n := s.PoolCount("L"); n != 0 {
				t.Errorf("PoolCount = %d after a refused batch, want 0 (all or nothing)", n)
			}
			if n := s.Counters()["link/L/supplied"]; n != 0 {
				t.Errorf("supplied counter = %d after a refused batch", n)
			}
		})
	}
}

// TestAddToPoolCallerKeepsBytes: the store seals a copy; the caller may zero
// its buffers afterwards.
func TestAddToPoolCallerKeepsBytes(t *testing.T) {
	s := newStore(t)
	keys := mkKeys("own", 0, 2)
	want := copyKeys(keys)
	if err := s.AddToPool("L", keys); err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if !bytes.Equal(keys[i].Bytes, want[i].Bytes) {
			t.Errorf("AddToPool modified the caller's key %d", i)
		}
		driver.Zero(keys[i].Bytes)
	}
	mustPutStream(t, s, testStream("S", "L"))
	if _, err := s.Reserve("S", "b", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit("b", nil, 3); err != nil {
		t.Fatal(err)
	}
	sv, err := s.TakeNext("S", 2, 256)
	if err != nil {
		t.Fatal(err)
	}
	for i := range sv {
		if !bytes.Equal(sv[i].Key, want[i].Bytes) {
			t.Errorf("key %d = %x after the caller zeroed its buffer, want %x", i, sv[i].Key, want[i].Bytes)
		}
	}
}

// TestNoPlaintextOnDisk writes distinctive keys, takes them through every
// state (pool, pending, stream, served) and checks that neither the bytes nor
// their base64 or hex form appear anywhere in keys.db.
func TestNoPlaintextOnDisk(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 64
	keys := make([]driver.Key, n)
	for i := range keys {
		b := make([]byte, 32)
		for j := range b {
			b[j] = byte(0xA5 ^ i ^ j*7) // distinctive, not random-looking
		}
		copy(b, "PLAINTEXT-KEY-")
		b[14] = byte('A' + i%26)
		b[15] = byte('a' + i/26)
		keys[i] = driver.Key{ID: "plain-" + string(rune('A'+i%26)) + string(rune('a'+i/26)), Bytes: b}
	}
	mustAdd(t, s, "L", keys)
	mustPutStream(t, s, testStream("S", "L"))
	if _, err := s.Reserve("S", "committed", 32); err != nil { // 32 → stream
		t.Fatal(err)
	}
	if _, err := s.Commit("committed", []string{keys[3].ID}, 3); err != nil { // one back to the pool
		t.Fatal(err)
	}
	if _, err := s.Reserve("S", "pending", 16); err != nil { // 16 stay pending
		t.Fatal(err)
	}
	sv, err := s.TakeNext("S", 4, 256) // 4 served and erased
	if err != nil {
		t.Fatal(err)
	}
	zeroServed(sv)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(filepath.Join(dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(keys[0].ID)) {
		t.Fatal("keys.db does not even hold the key IDs; the scan would prove nothing")
	}
	encodings := []struct {
		name string
		enc  func([]byte) []byte
	}{
		{"raw", func(b []byte) []byte { return b }},
		{"base64", func(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b)) }},
		{"base64 unpadded", func(b []byte) []byte { return []byte(base64.RawStdEncoding.EncodeToString(b)) }},
		{"base64url", func(b []byte) []byte { return []byte(base64.RawURLEncoding.EncodeToString(b)) }},
		{"hex", func(b []byte) []byte { return []byte(hex.EncodeToString(b)) }},
		{"first 16 bytes raw", func(b []byte) []byte { return b[:16] }},
		{"last 16 bytes raw", func(b []byte) []byte { return b[16:] }},
	}
	for _, k := range keys {
		for _, e := range encodings {
			if bytes.Contains(raw, e.enc(k.Bytes)) {
				t.Errorf("keys.db holds key %s in %s form", k.ID, e.name)
			}
		}
	}
	if bytes.Contains(raw, []byte("PLAINTEXT-KEY-")) {
		t.Errorf("keys.db holds the plaintext marker")
	}
}

func TestPutStream(t *testing.T) {
	s := newStore(t)
	mustAdd(t, s, "L", mkKeys("k", 0, 5))

	created := mustPutStream(t, s, Stream{ID: "S", MasterSAE: "A", SlaveSAE: "B", Link: "L", QoS: QoS{KeyRate: 1}, NextSeq: 99})
	if created.NextSeq != 0 {
		t.Errorf("new stream NextSeq = %d, want 0 (a caller cannot pick it)", created.NextSeq)
	}
	if _, err := s.Reserve("S", "b1", 3); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc string
		in   Stream
		want Stream
	}{
		{
			"same QoS is a no-op",
			Stream{ID: "S", Link: "L", QoS: QoS{KeyRate: 1}},
			Stream{ID: "S", MasterSAE: "A", SlaveSAE: "B", Link: "L", QoS: QoS{KeyRate: 1}, NextSeq: 3},
		},
		{
			"new QoS keeps NextSeq, link and SAEs",
			Stream{ID: "S", MasterSAE: "X", SlaveSAE: "Y", Link: "OTHER", QoS: QoS{KeyRate: 7, MaxBuffer: 100, Priority: 2}, NextSeq: 0},
			Stream{ID: "S", MasterSAE: "A", SlaveSAE: "B", Link: "L", QoS: QoS{KeyRate: 7, MaxBuffer: 100, Priority: 2}, NextSeq: 3},
		},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got := mustPutStream(t, s, tc.in)
			if got != tc.want {
				t.Errorf("PutStream = %+v, want %+v", got, tc.want)
			}
			if st, ok := s.Stream("S"); !ok || st != tc.want {
				t.Errorf("Stream(S) = %+v, %v; want %+v", st, ok, tc.want)
			}
		})
	}

	mustPutStream(t, s, Stream{ID: "T", Link: "L2"})
	var ids []string
	for _, st := range s.Streams() {
		ids = append(ids, st.ID)
	}
	sort.Strings(ids)
	if !reflect.DeepEqual(ids, []string{"S", "T"}) {
		t.Errorf("Streams() IDs = %v, want [S T]", ids)
	}
	if _, ok := s.Stream("nope"); ok {
		t.Errorf("Stream(nope) found")
	}
}

func TestPutStreamRejects(t *testing.T) {
	s := newStore(t)
	for _, tc := range []struct {
		desc string
		st   Stream
	}{
		{"no ID", Stream{Link: "L"}},
		{"no link", Stream{ID: "S"}},
		{"nothing", Stream{}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if _, err := s.PutStream(tc.st); err == nil {
				t.Fatal("PutStream accepted it")
			}
		})
	}
	if n := len(s.Streams()); n != 0 {
		t.Errorf("%d streams after refused PutStreams", n)
	}
}

func TestParseCounter(t *testing.T) {
	for _, tc := range []struct {
		desc            string
		name            string
		scope, id, what string
		ok              bool
	}{
		{"link counter", linkCounter("L1", "supplied"), "link", "L1", "supplied", true},
		{"stream counter", streamCounter("S1", "delivered_enc"), "stream", "S1", "delivered_enc", true},
		{"ID with slashes", streamCounter("a/b/c", "expired"), "stream", "a/b/c", "expired", true},
		{"no slash", "foo", "", "", "", false},
		{"one slash", "link/foo", "", "", "", false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			scope, id, what, ok := ParseCounter(tc.name)
			if scope != tc.scope || id != tc.id || what != tc.what || ok != tc.ok {
				t.Errorf("ParseCounter(%q) = %q, %q, %q, %v; want %q, %q, %q, %v",
					tc.name, scope, id, what, ok, tc.scope, tc.id, tc.what, tc.ok)
			}
		})
	}
	if !strings.HasPrefix(linkCounter("L", "x"), "link/") {
		t.Error("link counters do not start with link/")
	}
}
