package keystore

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestKeyIDRoundTrip(t *testing.T) {
	sizes := []int{8, 16, 128, 256, 264, 512, 1024, 2048, 4096, 32760, MaxKeyBits}
	seqs := []uint64{0, 1, 255, 256, 1<<32 - 1, 1 << 32, 1<<40 + 12345, maxSeq - 1, maxSeq}
	for _, size := range sizes {
		for _, seq := range seqs {
			id := encodeKeyID("stream-1", "qkd-key-7", seq, size)
			p, err := parseKeyID(id)
			if err != nil {
				t.Fatalf("parseKeyID(encodeKeyID(seq %d, %d bits) = %s): %v", seq, size, id, err)
			}
			if p.seq != seq || p.sizeBits != size {
				t.Errorf("%s parsed as seq %d, %d bits; want seq %d, %d bits", id, p.seq, p.sizeBits, seq, size)
			}
			if !p.matches("stream-1", "qkd-key-7") {
				t.Errorf("%s (seq %d, %d bits) does not match its own stream and part", id, seq, size)
			}
			u, err := uuid.Parse(id)
			if err != nil {
				t.Fatalf("%s is not a UUID: %v", id, err)
			}
			if u.Version() != 8 {
				t.Errorf("%s has version %d, want 8", id, u.Version())
			}
			if u.Variant() != uuid.RFC4122 {
				t.Errorf("%s has variant %v, want RFC 4122/9562", id, u.Variant())
			}
			if id != strings.ToLower(id) || len(id) != 36 {
				t.Errorf("%s is not the canonical lowercase 36-character form", id)
			}
		}
	}
}

func TestKeyIDDistinct(t *testing.T) {
	base := encodeKeyID("S", "k1", 5, 256)
	for _, tc := range []struct {
		desc string
		id   string
	}{
		{"other stream", encodeKeyID("T", "k1", 5, 256)},
		{"other first part", encodeKeyID("S", "k2", 5, 256)},
		{"other seq", encodeKeyID("S", "k1", 6, 256)},
		{"other size", encodeKeyID("S", "k1", 5, 264)},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if tc.id == base {
				t.Errorf("key_ID %s equals the base key_ID", tc.id)
			}
		})
	}
}

func TestKeyIDMatches(t *testing.T) {
	id := encodeKeyID("stream-A", "part-1", 42, 512)
	p, err := parseKeyID(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc    string
		stream  string
		part    string
		matches bool
	}{
		{"right stream and part", "stream-A", "part-1", true},
		{"other stream", "stream-B", "part-1", false},
		{"other first part", "stream-A", "part-2", false},
		{"both other", "stream-B", "part-2", false},
		{"stream/part boundary moved", "stream-Ap", "art-1", false},
		{"empty", "", "", false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if got := p.matches(tc.stream, tc.part); got != tc.matches {
				t.Errorf("matches(%q, %q) = %v, want %v", tc.stream, tc.part, got, tc.matches)
			}
		})
	}
	// A size changed in the ID (version nibble kept) no longer matches.
	u := uuid.MustParse(id)
	u[7] ^= 0x01
	q, err := parseKeyID(u.String())
	if err != nil {
		t.Fatal(err)
	}
	if q.matches("stream-A", "part-1") {
		t.Errorf("key_ID with its size field altered still matches")
	}
}

func TestParseKeyIDRejects(t *testing.T) {
	good := encodeKeyID("S", "k", 7, 256)
	u := uuid.MustParse(good)
	withByte := func(i int, f func(byte) byte) string {
		v := u
		v[i] = f(v[i])
		return v.String()
	}
	for _, tc := range []struct {
		desc string
		s    string
	}{
		{"empty", ""},
		{"not a UUID", "hello world"},
		{"36 characters, not hex", strings.Repeat("z", 36)},
		{"random v4 UUID", "3f2b8c1e-9d4a-4b7e-8f21-6c5d4e3b2a19"},
		{"nil UUID", "00000000-0000-0000-0000-000000000000"},
		{"version 7", withByte(6, func(b byte) byte { return b&0x0f | 0x70 })},
		{"version 9", withByte(6, func(b byte) byte { return b&0x0f | 0x90 })},
		{"NCS variant 0xx", withByte(8, func(b byte) byte { return b & 0x3f })},
		{"Microsoft variant 110", withByte(8, func(b byte) byte { return b&0x1f | 0xc0 })},
		{"future variant 111", withByte(8, func(b byte) byte { return b | 0xe0 })},
		{"urn form", "urn:uuid:" + good},
		{"braced form", "{" + good + "}"},
		{"no hyphens", strings.ReplaceAll(good, "-", "")},
		{"trailing space", good + " "},
		{"leading space", " " + good},
		{"truncated", good[:35]},
		{"hyphen misplaced", good[:7] + "-" + good[7:8] + good[9:]},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if p, err := parseKeyID(tc.s); !errors.Is(err, ErrBadKeyID) {
				t.Fatalf("parseKeyID(%q) = %+v, %v; want ErrBadKeyID", tc.s, p, err)
			}
		})
	}
}

// UUIDs are case-insensitive (RFC 9562 section 4); parseKeyID accepts an
// uppercase key_ID and reads the same fields from it.
func TestParseKeyIDUppercase(t *testing.T) {
	id := encodeKeyID("S", "k", 1<<40+3, 1024)
	lower, err := parseKeyID(id)
	if err != nil {
		t.Fatal(err)
	}
	upper, err := parseKeyID(strings.ToUpper(id))
	if err != nil {
		t.Fatalf("parseKeyID(uppercase): %v", err)
	}
	if upper != lower {
		t.Errorf("uppercase parsed as %+v, lowercase as %+v", upper, lower)
	}
}
