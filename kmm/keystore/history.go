package keystore

import (
	"encoding/binary"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The Metric Store's history: the Statistics Manager appends one sample of
// the node's statistics every interval, and the oldest fall off once they
// are older than the retention. Samples are opaque here (kmm/stats encodes
// them); they hold counts and rates, never key material.

// HistoryEntry is one stored sample.
type HistoryEntry struct {
	At   time.Time
	Data []byte
}

// AppendHistory stores a sample taken at at and deletes the samples older
// than keep before at, in one transaction.
func (s *Store) AppendHistory(at time.Time, data []byte, keep time.Duration) error {
	if at.IsZero() {
		return reject(errors.New("history sample without a time"))
	}
	k := u64(uint64(at.UnixNano()))
	v := append([]byte(nil), data...)
	cutoff := u64(uint64(at.Add(-keep).UnixNano()))
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketHistory)
		b.FillPercent = appendFill
		var old [][]byte
		c := b.Cursor()
		for ok, _ := c.First(); ok != nil && string(ok) < string(cutoff); ok, _ = c.Next() {
			old = append(old, append([]byte(nil), ok...))
		}
		for _, ok := range old {
			if err := b.Delete(ok); err != nil {
				return err
			}
		}
		return b.Put(k, v)
	})
}

// History returns the samples taken at or after since, oldest first.
func (s *Store) History(since time.Time) ([]HistoryEntry, error) {
	var out []HistoryEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHistory).Cursor()
		from := uint64(0)
		if !since.IsZero() && since.UnixNano() > 0 {
			from = uint64(since.UnixNano())
		}
		for k, v := c.Seek(u64(from)); k != nil; k, v = c.Next() {
			if len(k) != 8 {
				return ErrCorrupt
			}
			out = append(out, HistoryEntry{At: time.Unix(0, int64(binary.BigEndian.Uint64(k))), Data: append([]byte(nil), v...)})
		}
		return nil
	})
	return out, err
}
