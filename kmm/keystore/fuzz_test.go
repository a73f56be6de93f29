package keystore

import "testing"

// FuzzKeyID: no string makes the served key_ID parser panic, and every
// key_ID the store makes parses back to its sequence number and size and
// matches its stream and first part only.
func FuzzKeyID(f *testing.F) {
	f.Add("00000000-0000-801f-86d9-8bc640ac9674", "S", "k-1", uint64(0), 256)
	f.Add("not-a-uuid", "SAE_A->SAE_B", "x", uint64(1<<47), 8)
	f.Add("", "", "", uint64(0), 8192)
	f.Fuzz(func(t *testing.T, s, stream, first string, seq uint64, size int) {
		_, _ = parseKeyID(s)
		seq &= 1<<48 - 1
		if size <= 0 || size > MaxKeyBits || size%8 != 0 {
			return
		}
		id := encodeKeyID(stream, first, seq, size)
		p, err := parseKeyID(id)
		if err != nil || p.seq != seq || p.sizeBits != size {
			t.Fatalf("key_ID %s of seq %d, %d bits parsed as %+v, %v", id, seq, size, p, err)
		}
		if !p.matches(stream, first) || p.matches(stream+"x", first) {
			t.Fatalf("key_ID %s does not match its stream and first part only", id)
		}
	})
}
