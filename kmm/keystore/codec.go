package keystore

import (
	"encoding/binary"
	"encoding/json"
)

// Binary forms of the store's bookkeeping records (pending batches, Apply
// answers, a link's last driver batch). Every key of a batch passes through
// them, so they are plain length-prefixed bytes rather than JSON: encoding
// and decoding cost a copy, not a reflection walk and base64 of every sealed
// key. Each starts with a format byte that JSON never starts with; values
// written as JSON by earlier versions are still read.
const formatV1 = 0x01

// appendRecord appends a stored key record (see record) to dst.
func appendRecord(dst []byte, created int64, rejects uint8, keyID string, sealed []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(created))
	dst = append(dst, rejects)
	dst = binary.AppendUvarint(dst, uint64(len(keyID)))
	dst = append(dst, keyID...)
	return append(dst, sealed...)
}

// recordKeyID returns the QKD key_ID of a stored record without copying: the
// slice is only valid while v is.
func recordKeyID(v []byte) ([]byte, error) {
	if len(v) < 10 {
		return nil, ErrCorrupt
	}
	n, w := binary.Uvarint(v[9:])
	if w <= 0 || uint64(len(v)-9-w) < n {
		return nil, ErrCorrupt
	}
	off := 9 + w
	return v[off : off+int(n)], nil
}

// reader walks a binary value; any read past the end marks it corrupt.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) u64() uint64 {
	if len(r.b) < 8 {
		r.bad = true
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) uvarint() uint64 {
	v, w := binary.Uvarint(r.b)
	if w <= 0 {
		r.bad = true
		return 0
	}
	r.b = r.b[w:]
	return v
}

// bytes returns the next length-prefixed field, sharing r's memory.
func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.bad || uint64(len(r.b)) < n {
		r.bad = true
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// count reads a number of items each at least min bytes long, refusing
// counts the rest of the value cannot hold (so a corrupt count cannot make
// a decoder allocate without bound).
func (r *reader) count(min int) int {
	n := r.uvarint()
	if r.bad || n > uint64(len(r.b)/max(min, 1)) {
		r.bad = true
		return 0
	}
	return int(n)
}

func appendBytes(dst []byte, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// ---- pending batch ----

// encodePending is the binary form of pb:
//
//	0x01 | batch ID | link | stream ID | first seq (8) | count | count × (pool seq (8) | record)
//
// with strings and records prefixed by their uvarint length.
func encodePending(pb *pendingBatch) []byte {
	size := 1 + 3*binary.MaxVarintLen64 + len(pb.BatchID) + len(pb.Link) + len(pb.StreamID) + 8 + binary.MaxVarintLen64
	for _, e := range pb.Entries {
		size += 8 + binary.MaxVarintLen64 + len(e.Record)
	}
	b := make([]byte, 0, size)
	b = append(b, formatV1)
	b = appendString(b, pb.BatchID)
	b = appendString(b, pb.Link)
	b = appendString(b, pb.StreamID)
	b = binary.BigEndian.AppendUint64(b, pb.FirstSeq)
	b = binary.AppendUvarint(b, uint64(len(pb.Entries)))
	for _, e := range pb.Entries {
		b = binary.BigEndian.AppendUint64(b, e.PoolSeq)
		b = appendBytes(b, e.Record)
	}
	return b
}

// decodePending reads a pending batch. Its records share v's memory, which
// bbolt owns only for the transaction.
func decodePending(v []byte) (pendingBatch, error) {
	var pb pendingBatch
	if len(v) > 0 && v[0] == '{' {
		if err := json.Unmarshal(v, &pb); err != nil {
			return pendingBatch{}, ErrCorrupt
		}
		return pb, nil
	}
	if len(v) == 0 || v[0] != formatV1 {
		return pendingBatch{}, ErrCorrupt
	}
	r := reader{b: v[1:]}
	pb.BatchID = string(r.bytes())
	pb.Link = string(r.bytes())
	pb.StreamID = string(r.bytes())
	pb.FirstSeq = r.u64()
	n := r.count(9)
	if r.bad {
		return pendingBatch{}, ErrCorrupt
	}
	pb.Entries = make([]pendingEntry, n)
	for i := range pb.Entries {
		pb.Entries[i].PoolSeq = r.u64()
		pb.Entries[i].Record = r.bytes()
	}
	if r.bad || len(r.b) != 0 {
		return pendingBatch{}, ErrCorrupt
	}
	return pb, nil
}

// pendingHeader reads what IsPending needs without touching the entries.
func pendingHeader(v []byte) (streamID []byte, firstSeq uint64, n int, err error) {
	if len(v) > 0 && v[0] == '{' {
		pb, err := decodePending(v)
		if err != nil {
			return nil, 0, 0, err
		}
		return []byte(pb.StreamID), pb.FirstSeq, len(pb.Entries), nil
	}
	if len(v) == 0 || v[0] != formatV1 {
		return nil, 0, 0, ErrCorrupt
	}
	r := reader{b: v[1:]}
	r.bytes()
	r.bytes()
	streamID = r.bytes()
	firstSeq = r.u64()
	n = r.count(9)
	if r.bad {
		return nil, 0, 0, ErrCorrupt
	}
	return streamID, firstSeq, n, nil
}

// ---- Apply answer ----

// encodeApplied is 0x01 | at (8) | count | count × key ID.
func encodeApplied(ab appliedBatch) []byte {
	size := 1 + 8 + binary.MaxVarintLen64
	for _, id := range ab.Unknown {
		size += binary.MaxVarintLen64 + len(id)
	}
	b := make([]byte, 0, size)
	b = append(b, formatV1)
	b = binary.BigEndian.AppendUint64(b, uint64(ab.At))
	b = binary.AppendUvarint(b, uint64(len(ab.Unknown)))
	for _, id := range ab.Unknown {
		b = appendString(b, id)
	}
	return b
}

func decodeApplied(v []byte) (appliedBatch, error) {
	var ab appliedBatch
	if len(v) > 0 && v[0] == '{' {
		if err := json.Unmarshal(v, &ab); err != nil {
			return appliedBatch{}, ErrCorrupt
		}
		return ab, nil
	}
	if len(v) == 0 || v[0] != formatV1 {
		return appliedBatch{}, ErrCorrupt
	}
	r := reader{b: v[1:]}
	ab.At = int64(r.u64())
	n := r.count(1)
	for i := 0; i < n && !r.bad; i++ {
		ab.Unknown = append(ab.Unknown, string(r.bytes()))
	}
	if r.bad || len(r.b) != 0 {
		return appliedBatch{}, ErrCorrupt
	}
	return ab, nil
}

// appliedAt reads only the time of an Apply answer.
func appliedAt(v []byte) (int64, error) {
	if len(v) > 0 && v[0] == formatV1 {
		r := reader{b: v[1:]}
		at := int64(r.u64())
		if r.bad {
			return 0, ErrCorrupt
		}
		return at, nil
	}
	ab, err := decodeApplied(v)
	return ab.At, err
}

// ---- a link's last driver batch ----

// encodeIDs is 0x01 | count | count × key ID.
func encodeIDs(ids []string) []byte {
	size := 1 + binary.MaxVarintLen64
	for _, id := range ids {
		size += binary.MaxVarintLen64 + len(id)
	}
	b := make([]byte, 0, size)
	b = append(b, formatV1)
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = appendString(b, id)
	}
	return b
}

// eachID calls f with every key ID of an encodeIDs value (or of the JSON
// array earlier versions wrote), sharing v's memory.
func eachID(v []byte, f func(id []byte)) error {
	if len(v) > 0 && v[0] == '[' {
		var ids []string
		if err := json.Unmarshal(v, &ids); err != nil {
			return ErrCorrupt
		}
		for _, id := range ids {
			f([]byte(id))
		}
		return nil
	}
	if len(v) == 0 || v[0] != formatV1 {
		return ErrCorrupt
	}
	r := reader{b: v[1:]}
	n := r.count(1)
	for i := 0; i < n && !r.bad; i++ {
		id := r.bytes()
		if !r.bad {
			f(id)
		}
	}
	if r.bad {
		return ErrCorrupt
	}
	return nil
}
