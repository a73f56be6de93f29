package keystore

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"

	"github.com/google/uuid"
)

// Served key IDs.
//
// A key served through ETSI 014 is built from one or more consecutive keys of
// a stream ("parts", the keys the QKD link delivered) and truncated to the size
// the master SAE asked for. Its key_ID is an RFC 9562 version 8 UUID that says,
// without any further message between the KMMs, which parts make it up:
//
//	bits  0-47  stream sequence number of the first part
//	bits 48-51  version 8
//	bits 52-63  size in bytes minus one (so 8 .. 32768 bits)
//	bits 64-65  variant 10
//	bits 66-127 62 bits of SHA-256(stream ID, first part's QKD key_ID, size)
//
// Both KMMs hold the same parts under the same sequence numbers (the
// Synchronizer made it so), so the slave KMM finds the key from its ID alone,
// and the hash stops an SAE from naming parts of a stream it was not given.
// Two streams never issue the same ID: the hash covers the stream and a QKD
// key that only one stream ever holds.

// MaxKeyBits is the largest key a served key ID can describe.
const MaxKeyBits = 4096 * 8

// maxSeq is the largest stream sequence number a key ID holds (48 bits).
const maxSeq = 1<<48 - 1

// ErrBadKeyID means a string is not a key_ID this KMM could have issued.
var ErrBadKeyID = errors.New("not a key_ID issued by this network")

func keyIDCheck(streamID, firstPartID string, sizeBits int) [8]byte {
	h := sha256.New()
	h.Write([]byte("qkdnet served key_ID v1\x00"))
	h.Write([]byte(streamID))
	h.Write([]byte{0})
	h.Write([]byte(firstPartID))
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(sizeBits))
	h.Write(b[:])
	var out [8]byte
	copy(out[:], h.Sum(nil))
	return out
}

// encodeKeyID makes the served key_ID of a key of sizeBits whose first part is
// the stream key at seq with QKD key_ID firstPartID.
func encodeKeyID(streamID, firstPartID string, seq uint64, sizeBits int) string {
	var u uuid.UUID
	u[0] = byte(seq >> 40)
	u[1] = byte(seq >> 32)
	u[2] = byte(seq >> 24)
	u[3] = byte(seq >> 16)
	u[4] = byte(seq >> 8)
	u[5] = byte(seq)
	code := uint16(sizeBits/8 - 1)
	u[6] = 0x80 | byte(code>>8)&0x0f
	u[7] = byte(code)
	c := keyIDCheck(streamID, firstPartID, sizeBits)
	u[8] = 0x80 | c[0]&0x3f
	copy(u[9:], c[1:8])
	return u.String()
}

// parsedKeyID is what a served key_ID says.
type parsedKeyID struct {
	seq      uint64
	sizeBits int
	check    [8]byte // check[0] holds 6 bits
}

func parseKeyID(s string) (parsedKeyID, error) {
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 || u[6]>>4 != 8 || u[8]>>6 != 2 {
		return parsedKeyID{}, ErrBadKeyID
	}
	var p parsedKeyID
	for i := 0; i < 6; i++ {
		p.seq = p.seq<<8 | uint64(u[i])
	}
	p.sizeBits = (int(u[6]&0x0f)<<8 | int(u[7]) + 1) * 8
	p.check[0] = u[8] & 0x3f
	copy(p.check[1:], u[9:])
	return p, nil
}

func (p parsedKeyID) matches(streamID, firstPartID string) bool {
	c := keyIDCheck(streamID, firstPartID, p.sizeBits)
	c[0] &= 0x3f
	return c == p.check
}

// KeyIDSeq returns the stream sequence number of the first part of the key
// a served key_ID names (which says, for one thing, the path generation of
// a rerouted key stream it came from).
func KeyIDSeq(id string) (uint64, bool) {
	p, err := parseKeyID(id)
	return p.seq, err == nil
}
