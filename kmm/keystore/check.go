package keystore

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Check reports whether the store can serve: it is not closed and its
// database answers a read transaction that finds the buckets Open created.
// The agent's readiness probe calls it; it reads no key.
func (s *Store) Check() error {
	select {
	case <-s.closing:
		return ErrClosed
	default:
	}
	return s.db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPool, bucketKeys, bucketStreams, bucketStats} {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("key store: bucket %q is missing", b)
			}
		}
		return nil
	})
}
