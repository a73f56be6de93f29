package keystore

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The Key Relay Element's storage (paper Fig. 2, ITU-T Y.3803): a node on a
// multi-hop path reads a key X of the stream and the pad P of the next hop
// with the same sequence number, sends X xor P on, and erases both once the
// next node holds X; that node recovers X, stores it and erases its P, in one
// transaction. A pad is thus used once and erased at both ends.

// SeqKey is a stream key with its sequence number and QKD key_ID. The caller
// zeroes Key when done.
type SeqKey struct {
	Seq   uint64
	KeyID string
	Key   []byte
}

// ReadSeqs returns, in order, up to max keys of a stream with sequence
// numbers from from on, without serving or erasing them.
func (s *Store) ReadSeqs(streamID string, from uint64, max int) ([]SeqKey, error) {
	var out []SeqKey
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketKeys).Bucket([]byte(streamID))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(u64(from)); k != nil && len(out) < max; k, v = c.Next() {
			r, err := decodeRecord(v)
			if err != nil {
				return err
			}
			pt, err := s.seal.open(r.keyID, r.sealed)
			if err != nil {
				return err
			}
			out = append(out, SeqKey{Seq: binary.BigEndian.Uint64(k), KeyID: r.keyID, Key: pt})
		}
		return nil
	})
	if err != nil {
		for _, k := range out {
			clear(k.Key)
		}
		return nil, err
	}
	return out, nil
}

// EraseSeqs erases, in one transaction, the given sequence numbers of each
// stream (keys relayed on, pads used), counting them under what.
func (s *Store) EraseSeqs(seqs map[string][]uint64, what string) error {
	return s.update(func(tx *bolt.Tx) error {
		deltas := map[string]uint64{}
		for stream, list := range seqs {
			b := tx.Bucket(bucketKeys).Bucket([]byte(stream))
			if b == nil {
				continue
			}
			n, err := deleteSeqs(b, list...)
			if err != nil {
				return err
			}
			s.afterCommit(tx, func() { s.inStream[stream] -= n })
			deltas[streamCounter(stream, what)] += uint64(n)
		}
		return s.add(tx, deltas)
	})
}

// RelayItem is a relayed key as it arrives: X xor the hop's pad.
type RelayItem struct {
	Seq   uint64
	KeyID string
	Z     []byte
}

// ErrRelayCheck means a relayed key failed its integrity check: the pads at
// the two ends of the hop differ, or Z was changed on the way.
var ErrRelayCheck = errors.New("relayed key fails its check")

// PutRelayed stores relayed keys in streamID. For each item whose sequence
// number the stream does not hold yet and whose pad padStream holds, it
// recovers the key as Z xor pad, has verify check it, stores it sealed under
// the item's key_ID and erases the pad, all in one transaction. It returns
// the items' sequence numbers the stream holds afterwards (stored now or
// before); an item whose pad is not here yet is left for a retry. An item
// that fails verify is not stored, its pad is kept, and the error wraps
// ErrRelayCheck (the others are stored).
func (s *Store) PutRelayed(streamID, padStream string, items []RelayItem, verify func(seq uint64, key []byte) bool) ([]uint64, error) {
	var held, failed []uint64
	err := s.update(func(tx *bolt.Tx) error {
		held, failed = held[:0], failed[:0]
		dst, err := tx.Bucket(bucketKeys).CreateBucketIfNotExists([]byte(streamID))
		if err != nil {
			return err
		}
		dst.FillPercent = appendFill
		pads := tx.Bucket(bucketKeys).Bucket([]byte(padStream))
		marks := tx.Bucket(bucketRelayed)
		revoked := tx.Bucket(bucketRevoked)
		now := s.now().UnixNano()
		stored, used, dropped := 0, 0, 0
		for _, it := range items {
			// Revoked while on its way (key replacement): dropped here.
			if rv, padGone, err := dropRevokedRelay(revoked, pads, streamID, it.Seq); err != nil {
				return err
			} else if rv {
				if padGone {
					dropped++
				}
				held = append(held, it.Seq)
				continue
			}
			// Held: still in the stream, or received before and since
			// served (the mark outlives the key), so a resend after a
			// crash of the sender is answered and nothing is stored twice.
			if dst.Get(u64(it.Seq)) != nil || marks.Get(relayMark(streamID, it.Seq)) != nil {
				held = append(held, it.Seq)
				continue
			}
			if pads == nil || it.KeyID == "" {
				continue
			}
			v := pads.Get(u64(it.Seq))
			if v == nil {
				continue
			}
			r, err := decodeRecord(v)
			if err != nil {
				return err
			}
			pad, err := s.seal.open(r.keyID, r.sealed)
			if err != nil {
				return err
			}
			if len(pad) != len(it.Z) {
				clear(pad)
				return reject(fmt.Errorf("%w: relayed key %d has %d bytes, its pad %d", ErrInvalid, it.Seq, len(it.Z), len(pad)))
			}
			for i := range pad {
				pad[i] ^= it.Z[i]
			}
			key := pad // now X
			if !verify(it.Seq, key) {
				clear(key)
				failed = append(failed, it.Seq)
				continue
			}
			sealed, err := s.seal.seal(it.KeyID, key)
			clear(key)
			if err != nil {
				return err
			}
			rec := record{created: now, keyID: it.KeyID, sealed: sealed}
			if err := dst.Put(u64(it.Seq), rec.encode()); err != nil {
				return err
			}
			if err := pads.Delete(u64(it.Seq)); err != nil {
				return err
			}
			if err := marks.Put(relayMark(streamID, it.Seq), binary.BigEndian.AppendUint64(nil, uint64(now))); err != nil {
				return err
			}
			held = append(held, it.Seq)
			stored++
			used++
		}
		lowest := uint64(maxSeq)
		for _, q := range held {
			lowest = min(lowest, q)
		}
		s.afterCommit(tx, func() {
			s.inStream[streamID] += stored
			s.inStream[padStream] -= used + dropped
			s.lowerHead(streamID, lowest)
		})
		return s.add(tx, map[string]uint64{streamCounter(streamID, "relayed_in"): uint64(stored), streamCounter(padStream, "pads_used"): uint64(used), streamCounter(padStream, "pads_revoked"): uint64(dropped)})
	})
	if err != nil {
		return nil, err
	}
	if len(failed) > 0 {
		return held, fmt.Errorf("%w: sequence numbers %v of stream %s", ErrRelayCheck, failed, streamID)
	}
	return held, nil
}

// relayMark is the key of the mark that a relayed key arrived.
func relayMark(stream string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(stream), 0), seq)
}

// deleteSeqs deletes the keys at seqs from a stream's bucket (nil: none)
// and returns how many were there.
func deleteSeqs(b *bolt.Bucket, seqs ...uint64) (int, error) {
	if b == nil {
		return 0, nil
	}
	n := 0
	for _, q := range seqs {
		if b.Get(u64(q)) == nil {
			continue
		}
		if err := b.Delete(u64(q)); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
