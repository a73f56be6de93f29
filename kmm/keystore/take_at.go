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
	err := s.update(func(tx *bolt.Tx) error {
		g = g[:0]
		b := tx.Bucket(bucketKeys).Bucket([]byte(streamID))
		if b == nil {
			return reject(ErrNotEnoughKeys)
		}
		for q, have := seq, 0; have < size; q++ {
			v := b.Get(u64(q))
			if v == nil {
				return reject(ErrNotEnoughKeys)
			}
			r, err := decodeRecord(v)
			if err != nil {
				return err
			}
			g = append(g, part{seq: q, rec: r})
			have += len(r.sealed) - dekIDSize - 12 - 16
		}
		for _, p := range g {
			if err := b.Delete(u64(p.seq)); err != nil {
				return err
			}
		}
		used := len(g)
		s.afterCommit(tx, func() { s.inStream[streamID] -= used })
		return s.add(tx, map[string]uint64{streamCounter(streamID, what): 1})
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
