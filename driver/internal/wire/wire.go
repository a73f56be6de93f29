// Package wire converts keys between driver.Key and their protobuf form and
// checks what arrives from the network.
package wire

import (
	"fmt"

	"github.com/qkdnet/qkdnet/driver"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// MaxBatchBytes bounds the key material in one message, well below gRPC's
// default 4 MiB receive limit, so a batch never fails for its size alone.
const MaxBatchBytes = 1 << 20

// ToProto returns keys as protobuf messages holding copies of the bytes, so the
// caller may zero the messages (ZeroProto) without touching keys.
func ToProto(keys []driver.Key) []*qkdv1.QKDKey {
	out := make([]*qkdv1.QKDKey, len(keys))
	for i, k := range keys {
		out[i] = &qkdv1.QKDKey{KeyId: k.ID, Key: clone(k.Bytes)}
	}
	return out
}

// FromProto returns the keys of pk, sharing their bytes (a received message is
// freshly allocated, so nobody else holds them). It fails, without keeping
// anything, on a key with an empty ID or no bytes, or an ID seen twice.
func FromProto(pk []*qkdv1.QKDKey) ([]driver.Key, error) {
	keys := make([]driver.Key, len(pk))
	seen := make(map[string]struct{}, len(pk))
	for i, k := range pk {
		if k.GetKeyId() == "" || len(k.GetKey()) == 0 {
			return nil, fmt.Errorf("key %d has an empty key_id or no key bytes", i)
		}
		if _, dup := seen[k.GetKeyId()]; dup {
			return nil, fmt.Errorf("key_id %q appears twice in one batch", k.GetKeyId())
		}
		seen[k.GetKeyId()] = struct{}{}
		keys[i] = driver.Key{ID: k.GetKeyId(), Bytes: k.GetKey()}
	}
	return keys, nil
}

// ZeroProto zeroes the key bytes of pk.
func ZeroProto(pk []*qkdv1.QKDKey) {
	for _, k := range pk {
		driver.Zero(k.GetKey())
	}
}

// Clone returns keys with copies of their bytes.
func Clone(keys []driver.Key) []driver.Key {
	out := make([]driver.Key, len(keys))
	for i, k := range keys {
		out[i] = driver.Key{ID: k.ID, Bytes: clone(k.Bytes)}
	}
	return out
}

func clone(b []byte) []byte { return append(make([]byte, 0, len(b)), b...) }
