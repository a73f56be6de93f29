package main

import (
	"encoding/base64"
	"strconv"

	"github.com/qkdnet/qkdnet/internal/jsonscan"
)

// The load generator shares the machine with the KMMs it measures, so the
// two bodies it handles on every cycle are written and read by hand instead
// of through encoding/json's reflection. Anything the fast reader does not
// expect (an extension field, an escaped string, a duplicate member) makes
// it give up, and encoding/json decides instead, so the fast path never
// accepts or rejects differently.

// appendKeyRequest appends the enc_keys body {"number":N,"size":S}.
func appendKeyRequest(dst []byte, number, size int) []byte {
	dst = append(dst, `{"number":`...)
	dst = strconv.AppendInt(dst, int64(number), 10)
	dst = append(dst, `,"size":`...)
	dst = strconv.AppendInt(dst, int64(size), 10)
	return append(dst, '}')
}

// appendKeyIDsRequest appends the dec_keys body {"key_IDs":[{"key_ID":…},…]}.
// ok is false if an ID would need escaping.
func appendKeyIDsRequest(dst []byte, ids []string) ([]byte, bool) {
	dst = append(dst, `{"key_IDs":[`...)
	for i, id := range ids {
		if !jsonscan.PlainString(id) {
			return dst, false
		}
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"key_ID":"`...)
		dst = append(dst, id...)
		dst = append(dst, `"}`...)
	}
	return append(dst, "]}"...), true
}

// fastKeyContainer reads {"keys":[{"key_ID":"…","key":"…base64…"},…]}, with
// any whitespace and the members of a key in any order. ok is false for
// anything else, including a key without both members; then the caller
// decodes with encoding/json. The key bytes of all keys share one buffer.
func fastKeyContainer(b []byte) (keys []key, ok bool) {
	var slab []byte
	keys, ok = parseKeyContainer(b, &slab)
	if !ok {
		clear(slab[:cap(slab)])
		return nil, false
	}
	return keys, true
}

func parseKeyContainer(b []byte, slabp *[]byte) (keys []key, ok bool) {
	s := jsonscan.New(b)
	defer func() {
		if !ok {
			for _, k := range keys {
				clear(k.Key)
			}
		}
	}()
	if !s.Next('{') {
		return nil, false
	}
	name, ok := s.Str()
	if !ok || string(name) != "keys" || !s.Next(':') || !s.Next('[') {
		return nil, false
	}
	if !s.Next(']') {
		for {
			var k key
			var haveID, haveKey bool
			if !s.Next('{') {
				return nil, false
			}
			for {
				name, ok := s.Str()
				if !ok || !s.Next(':') {
					return nil, false
				}
				v, ok := s.Str()
				if !ok {
					return nil, false
				}
				switch {
				case string(name) == "key_ID" && !haveID:
					k.KeyID, haveID = string(v), true
				case string(name) == "key" && !haveKey:
					n := base64.StdEncoding.DecodedLen(len(v))
					slab := *slabp
					if cap(slab)-len(slab) < n {
						slab = make([]byte, 0, max(n, 64*n))
					}
					dst := slab[len(slab) : len(slab)+n]
					m, err := base64.StdEncoding.Decode(dst, v)
					if err != nil {
						clear(dst)
						return nil, false
					}
					k.Key = dst[:m:m]
					*slabp = slab[:len(slab)+m]
					haveKey = true
				default:
					return nil, false
				}
				if s.Next(',') {
					continue
				}
				if s.Next('}') {
					break
				}
				return nil, false
			}
			if !haveID || !haveKey {
				return nil, false
			}
			keys = append(keys, k)
			if s.Next(',') {
				continue
			}
			if s.Next(']') {
				break
			}
			return nil, false
		}
	}
	if !s.Next('}') || !s.End() {
		return nil, false
	}
	return keys, true
}
