package keystore

import (
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Revocation: key replacement on request (the paper's KMM function vi).
//
// A master SAE that no longer trusts a key it got names it; every node of the
// stream's path erases what it holds of the key (its parts, at the key_ID's
// sequence numbers, and the relay pads at those numbers) and keeps a
// revocation mark per sequence number, so that a part still on its way by
// relay is discarded where it arrives (PutRelayed answers it as held, and the
// sender erases its copy and pad). Marks are forgotten with the key lifetime,
// as the marks of relayed keys are.
//
// At the slave SAE's node, erasing must not race with serving: a key is
// either served to the slave SAE or revoked, never both. So the keys are
// first claimed in the serve writer (tombstoned, as serving does, so no
// TakeIDs can serve them from then on), then erased and marked in one bbolt
// transaction; if that fails, the claim is withdrawn and nothing changed.

// bucketRevoked holds revocation marks: stream 0x00 seq → revokeMark.
var bucketRevoked = []byte("revoked")

// RevokeState is what a node knows of a served key it is asked to revoke.
type RevokeState int

const (
	// RevokeUnknown: this node neither holds the key nor revoked it.
	RevokeUnknown RevokeState = iota
	// RevokeHeld: this node holds the key's first part, and the key_ID's
	// check matches it (the key_ID was issued for this stream).
	RevokeHeld
	// RevokeMarked: this node revoked the key before.
	RevokeMarked
)

// RevokeKey names a served key to revoke. Parts, when another node found
// the key, is how many consecutive stream keys from the key_ID's sequence
// number make it up; 0 when no node has found it yet.
type RevokeKey struct {
	KeyID string
	Parts int
}

// RevokeFound is what Revoke found of a key here. Parts is the key's parts
// as found here, or as given when only another node found it; 0: nobody did.
type RevokeFound struct {
	KeyID string
	State RevokeState
	Parts int
}

// KeyIDSize returns the size in bits of the key a served key_ID names, or
// ErrBadKeyID.
func KeyIDSize(keyID string) (int, error) {
	p, err := parseKeyID(keyID)
	if err != nil {
		return 0, err
	}
	return p.sizeBits, nil
}

// revokeMark is stored at every sequence number of a revoked key.
func encodeRevokeMark(at int64, parts int, keyID string) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 8+binary.MaxVarintLen64+len(keyID)), uint64(at))
	b = binary.AppendUvarint(b, uint64(parts))
	return append(b, keyID...)
}

func decodeRevokeMark(v []byte) (at int64, parts int, keyID string, ok bool) {
	if len(v) < 9 {
		return 0, 0, "", false
	}
	n, w := binary.Uvarint(v[8:])
	if w <= 0 || n > MaxKeyBits/8 {
		return 0, 0, "", false
	}
	return int64(binary.BigEndian.Uint64(v)), int(n), string(v[8+w:]), true
}

// revokedSeq reports whether seq of stream carries a revocation mark.
func revokedSeq(marks *bolt.Bucket, stream string, seq uint64) bool {
	return marks != nil && marks.Get(relayMark(stream, seq)) != nil
}

// Revoked reports whether the served key_ID of stream was revoked here.
func (s *Store) Revoked(stream, keyID string) bool {
	p, err := parseKeyID(keyID)
	if err != nil {
		return false
	}
	found := false
	s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketRevoked); b != nil {
			_, _, id, ok := decodeRevokeMark(b.Get(relayMark(stream, p.seq)))
			found = ok && id == keyID
		}
		return nil
	})
	return found
}

// Revoke looks for each key in stream: held here (RevokeHeld), revoked here
// before (RevokeMarked), or neither. If commit is set and every key is
// found, here or (Parts > 0) by another node, it erases in one durable
// transaction every key of stream and of the pad streams at the keys'
// sequence numbers, and marks those numbers revoked; it reports whether it
// did. Otherwise it writes nothing. A key_ID that is not one this network
// issues is found nowhere.
func (s *Store) Revoke(stream string, keys []RevokeKey, pads []string, commit bool) ([]RevokeFound, bool, error) {
	parsed := make([]parsedKeyID, len(keys))
	valid := make([]bool, len(keys))
	for i, k := range keys {
		p, err := parseKeyID(k.KeyID)
		if err != nil {
			continue
		}
		if k.Parts < 0 || k.Parts > p.sizeBits/8 {
			return nil, false, fmt.Errorf("%w: key_ID %s cannot have %d parts", ErrInvalid, k.KeyID, k.Parts)
		}
		parsed[i], valid[i] = p, true
	}
	var found []RevokeFound
	var claimed []uint64
	all := false
	err := s.serve(func(tx *bolt.Tx) (serveRecord, error) {
		found, claimed, all = found[:0], claimed[:0], true
		marks := tx.Bucket(bucketRevoked)
		b := tx.Bucket(bucketKeys).Bucket([]byte(stream))
		s.tombMu.RLock()
		gone := s.goneFunc(stream)
		for i, k := range keys {
			f := RevokeFound{KeyID: k.KeyID}
			if valid[i] {
				p := parsed[i]
				if marks != nil {
					if _, parts, id, ok := decodeRevokeMark(marks.Get(relayMark(stream, p.seq))); ok && id == k.KeyID && parts > 0 {
						f.State, f.Parts = RevokeMarked, parts
					}
				}
				if f.State == RevokeUnknown && b != nil && !gone(p.seq) {
					if v := b.Get(u64(p.seq)); v != nil {
						r, err := decodeRecord(v)
						if err != nil {
							s.tombMu.RUnlock()
							return serveRecord{}, err
						}
						if partLen := len(r.sealed) - sealOverhead; partLen > 0 && p.matches(stream, r.keyID) {
							f.State, f.Parts = RevokeHeld, (p.sizeBits/8+partLen-1)/partLen
						}
					}
				}
				if f.Parts == 0 {
					f.Parts = k.Parts
				}
			}
			if f.Parts == 0 {
				all = false
			}
			found = append(found, f)
		}
		if commit && all && b != nil {
			seen := map[uint64]bool{}
			for i, f := range found {
				for q := parsed[i].seq; q < parsed[i].seq+uint64(f.Parts); q++ {
					if !seen[q] && !gone(q) && b.Get(u64(q)) != nil {
						claimed = append(claimed, q)
					}
					seen[q] = true
				}
			}
		}
		s.tombMu.RUnlock()
		if commit && all && len(claimed) > 0 {
			s.tombstone(stream, claimed)
		}
		// Nothing for the serve log: the erasure is the bbolt
		// transaction below.
		return serveRecord{}, nil
	})
	if err != nil || !commit || !all {
		return found, false, err
	}
	var txid int
	err = s.update(func(tx *bolt.Tx) error {
		marks, err := tx.CreateBucketIfNotExists(bucketRevoked)
		if err != nil {
			return err
		}
		now := s.now().UnixNano()
		erased, err := deleteSeqs(tx.Bucket(bucketKeys).Bucket([]byte(stream)), claimed...)
		if err != nil {
			return err
		}
		padsErased := map[string]int{}
		for i, f := range found {
			mark := encodeRevokeMark(now, f.Parts, f.KeyID)
			for q := parsed[i].seq; q < parsed[i].seq+uint64(f.Parts); q++ {
				if err := marks.Put(relayMark(stream, q), mark); err != nil {
					return err
				}
				for _, ps := range pads {
					n, err := deleteSeqs(tx.Bucket(bucketKeys).Bucket([]byte(ps)), q)
					if err != nil {
						return err
					}
					if n > 0 {
						padsErased[ps] += n
					}
				}
			}
		}
		txid = tx.ID()
		s.afterCommit(tx, func() {
			s.inStream[stream] -= erased
			for ps, n := range padsErased {
				s.inStream[ps] -= n
			}
		})
		deltas := map[string]uint64{streamCounter(stream, "revoked"): uint64(erased)}
		for ps, n := range padsErased {
			deltas[streamCounter(ps, "pads_revoked")] += uint64(n)
		}
		return s.add(tx, deltas)
	})
	s.tombMu.Lock()
	defer s.tombMu.Unlock()
	if err != nil {
		// Withdraw the claim: the keys are still in bbolt, as before.
		m := s.tombs[stream]
		for _, q := range claimed {
			delete(m, q)
		}
		return found, false, err
	}
	if len(claimed) > 0 {
		// The tombstones go once the serve writer reads a snapshot
		// without the keys, as a checkpoint's do.
		c := checkpointed{txid: txid, segs: []*logSegment{{recs: []serveRecord{{stream: stream, seqs: claimed}}}}}
		l := s.log
		at, _ := slices.BinarySearchFunc(l.checkpointed, txid, func(c checkpointed, t int) int { return c.txid - t })
		l.checkpointed = slices.Insert(l.checkpointed, at, c)
	}
	return found, true, nil
}

// dropRevokedRelay is PutRelayed's step for a relayed key whose sequence
// number was revoked: the key is not stored, the pad is erased, and the
// number is answered as held so the sender erases its copy and pad.
func dropRevokedRelay(marks, pads *bolt.Bucket, stream string, seq uint64) (revoked, padErased bool, err error) {
	if !revokedSeq(marks, stream, seq) {
		return false, false, nil
	}
	if pads != nil && pads.Get(u64(seq)) != nil {
		if err := pads.Delete(u64(seq)); err != nil {
			return true, false, err
		}
		return true, true, nil
	}
	return true, false, nil
}

// pruneRevoked forgets revocation marks older than cutoff: by then the key
// itself would have expired everywhere.
func pruneRevoked(tx *bolt.Tx, cutoff int64) error {
	b := tx.Bucket(bucketRevoked)
	if b == nil {
		return nil
	}
	var old [][]byte
	if err := b.ForEach(func(k, v []byte) error {
		if at, _, _, ok := decodeRevokeMark(v); !ok || at < cutoff {
			old = append(old, append([]byte(nil), k...))
		}
		return nil
	}); err != nil {
		return err
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
