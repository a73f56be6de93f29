package main

import (
	"encoding/base64"
	"strconv"
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
		if !plainJSONString(id) {
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

// plainJSONString reports whether s can be written between quotes as it is:
// printable ASCII other than the quote and the backslash (encoding/json
// would also escape <, > and &, which means the same to a JSON reader).
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// scanner reads the few JSON shapes qkdload expects.
type scanner struct {
	b   []byte
	pos int
}

func (s *scanner) ws() {
	for s.pos < len(s.b) {
		switch s.b[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// next skips whitespace and consumes c.
func (s *scanner) next(c byte) bool {
	s.ws()
	if s.pos < len(s.b) && s.b[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

// peek skips whitespace and returns the next byte, or 0 at the end.
func (s *scanner) peek() byte {
	s.ws()
	if s.pos < len(s.b) {
		return s.b[s.pos]
	}
	return 0
}

// str reads a string without escapes and returns its bytes (shared).
func (s *scanner) str() ([]byte, bool) {
	if !s.next('"') {
		return nil, false
	}
	start := s.pos
	for s.pos < len(s.b) {
		switch c := s.b[s.pos]; {
		case c == '"':
			v := s.b[start:s.pos]
			s.pos++
			return v, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, false
		}
		s.pos++
	}
	return nil, false
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
	s := scanner{b: b}
	defer func() {
		if !ok {
			for _, k := range keys {
				clear(k.Key)
			}
		}
	}()
	if !s.next('{') {
		return nil, false
	}
	name, ok := s.str()
	if !ok || string(name) != "keys" || !s.next(':') || !s.next('[') {
		return nil, false
	}
	if s.peek() == ']' {
		s.pos++
	} else {
		for {
			var k key
			var haveID, haveKey bool
			if !s.next('{') {
				return nil, false
			}
			for {
				name, ok := s.str()
				if !ok || !s.next(':') {
					return nil, false
				}
				v, ok := s.str()
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
				if s.next(',') {
					continue
				}
				if s.next('}') {
					break
				}
				return nil, false
			}
			if !haveID || !haveKey {
				return nil, false
			}
			keys = append(keys, k)
			if s.next(',') {
				continue
			}
			if s.next(']') {
				break
			}
			return nil, false
		}
	}
	if !s.next('}') {
		return nil, false
	}
	s.ws()
	if s.pos != len(s.b) {
		return nil, false
	}
	return keys, true
}
