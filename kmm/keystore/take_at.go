package keystore

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// TakeAt serves the key of sizeBits that starts at stream sequence number
// seq and runs over the consecutive stream keys it needs (ETSI GS QKD 004
// GET_KEY: both parties address a chunk by its index, so both KMMs cut it
// from the same keys). It erases what it used and counts one delivery in
// the stream's counter named what ("delivered_enc" for the stream's master
// SAE, "delivered_dec" for its slave). ErrNotEnoughKeys means some key of
// the range is not in the stream: not allocated yet, or already served.
func (s *Store) TakeAt(streamID string, seq uint64, sizeBits int, what string) (Served, error) {
	if sizeBits <= 0 || sizeBits%8 != 0 || sizeBits > MaxKeyBits {
		return Served{}, fmt.Errorf("bad request: a key of %d bits", sizeBits)
	}
	size := sizeBits / 8
	var g []part
	counter := streamCounter(streamID, what)
	// Served through the serve log, like TakeNext and TakeIDs, so that a
	// key another request has just served (tombstoned) is not served again.
	err := s.serve(func(tx *bolt.Tx) (serveRecord, error) {
		g = g[:0]
		b := tx.Bucket(bucketKeys).Bucket([]byte(streamID))
		if b == nil {
			return serveRecord{}, ErrNotEnoughKeys
		}
		s.tombMu.RLock()
		defer s.tombMu.RUnlock()
		gone := s.goneFunc(streamID)
		rec := serveRecord{stream: streamID, counter: counter, count: 1}
		for q, have := seq, 0; have < size; q++ {
			v := b.Get(u64(q))
			if v == nil || gone(q) {
				return serveRecord{}, ErrNotEnoughKeys
			}
			r, err := decodeRecord(v)
			if err != nil {
				return serveRecord{}, err
			}
			g = append(g, part{seq: q, rec: r})
			rec.seqs = append(rec.seqs, q)
			have += len(r.sealed) - sealOverhead
		}
		return rec, nil
	})
	if err != nil {
		return Served{}, err
	}
	sv, err := s.assemble(streamID, [][]part{g}, size, nil)
	if err != nil {
		return Served{}, err
	}
	return sv[0], nil
}
