package gateway

import (
	"encoding/base64"
	"strconv"

	"google.golang.org/protobuf/proto"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// Fast paths for the bodies every enc_keys and dec_keys exchange carries.
//
// The general codec (strictJSON) checks a request with encoding/json and then
// decodes it again with protojson, and protojson writes the answer by
// reflection; together that was a large part of the gateway's CPU time under
// load. The requests SAEs send are almost always one of two tiny shapes and
// the answer one fixed shape, so those are read and written directly here.
// The fast reader accepts only bodies it fully understands (plain strings,
// small non-negative integers, the standard's field names, no duplicates)
// and otherwise declines, leaving the body to the general decoder; so a body
// is never accepted, refused or read differently than the general decoder
// would.

// fastDecode fills msg from body if body is one of the simple shapes; ok is
// false when the general decoder must decide.
func fastDecode(body []byte, msg proto.Message) (ok bool) {
	switch m := msg.(type) {
	case *qkdv1.GetKeyRequest:
		number, size, ok := parseKeyRequest(body)
		if !ok {
			return false
		}
		proto.Reset(m)
		m.Number, m.Size = number, size
		return true
	case *qkdv1.GetKeyWithKeyIDsRequest:
		ids, ok := parseKeyIDs(body)
		if !ok {
			return false
		}
		proto.Reset(m)
		m.KeyIds = ids
		return true
	}
	return false
}

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

func (s *scanner) next(c byte) bool {
	s.ws()
	if s.pos < len(s.b) && s.b[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

// end reports whether only whitespace is left.
func (s *scanner) end() bool {
	s.ws()
	return s.pos == len(s.b)
}

// str reads a string of printable ASCII without escapes (shared bytes).
func (s *scanner) str() ([]byte, bool) {
	if !s.next('"') {
		return nil, false
	}
	start := s.pos
	for s.pos < len(s.b) {
		c := s.b[s.pos]
		if c == '"' {
			v := s.b[start:s.pos]
			s.pos++
			return v, true
		}
		if c == '\\' || c < 0x20 || c >= 0x7f {
			return nil, false
		}
		s.pos++
	}
	return nil, false
}

// int32 reads a JSON integer 0 ≤ n < 10^9 without sign, fraction or exponent.
func (s *scanner) int32() (int32, bool) {
	s.ws()
	start := s.pos
	for s.pos < len(s.b) && s.b[s.pos] >= '0' && s.b[s.pos] <= '9' {
		s.pos++
	}
	digits := s.b[start:s.pos]
	if len(digits) == 0 || len(digits) > 9 || (len(digits) > 1 && digits[0] == '0') {
		return 0, false
	}
	if s.pos < len(s.b) {
		switch s.b[s.pos] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	n, err := strconv.ParseInt(string(digits), 10, 32)
	return int32(n), err == nil
}

// parseKeyRequest reads {"number": N, "size": S}, either member optional.
func parseKeyRequest(b []byte) (number, size int32, ok bool) {
	s := scanner{b: b}
	if !s.next('{') {
		return 0, 0, false
	}
	var haveNumber, haveSize bool
	if !s.next('}') {
		for {
			name, ok := s.str()
			if !ok || !s.next(':') {
				return 0, 0, false
			}
			switch {
			case string(name) == "number" && !haveNumber:
				number, haveNumber = s.int32()
				if !haveNumber {
					return 0, 0, false
				}
			case string(name) == "size" && !haveSize:
				size, haveSize = s.int32()
				if !haveSize {
					return 0, 0, false
				}
			default:
				return 0, 0, false
			}
			if s.next(',') {
				continue
			}
			if s.next('}') {
				break
			}
			return 0, 0, false
		}
	}
	return number, size, s.end()
}

// parseKeyIDs reads {"key_IDs": [{"key_ID": "…"}, …]}.
func parseKeyIDs(b []byte) ([]*qkdv1.KeyID, bool) {
	s := scanner{b: b}
	if !s.next('{') {
		return nil, false
	}
	name, ok := s.str()
	if !ok || string(name) != "key_IDs" || !s.next(':') || !s.next('[') {
		return nil, false
	}
	var ids []*qkdv1.KeyID
	if !s.next(']') {
		for {
			if !s.next('{') {
				return nil, false
			}
			name, ok := s.str()
			if !ok || string(name) != "key_ID" || !s.next(':') {
				return nil, false
			}
			id, ok := s.str()
			if !ok || !s.next('}') {
				return nil, false
			}
			ids = append(ids, &qkdv1.KeyID{KeyId: string(id)})
			if s.next(',') {
				continue
			}
			if s.next(']') {
				break
			}
			return nil, false
		}
	}
	if !s.next('}') || !s.end() {
		return nil, false
	}
	return ids, true
}

// appendKeyContainer writes kc as protojson would (field names, base64 with
// padding, every key's key_ID and key even when empty), if it holds nothing
// but key IDs and keys; ok is false otherwise.
func appendKeyContainer(dst []byte, kc *qkdv1.KeyContainer) ([]byte, bool) {
	if kc.GetKeyContainerExtension() != nil {
		return nil, false
	}
	size := len(`{"keys":[]}`)
	for _, k := range kc.GetKeys() {
		if k == nil || k.GetKeyIdExtension() != nil || k.GetKeyExtension() != nil || !plainString(k.GetKeyId()) {
			return nil, false
		}
		size += len(`{"key_ID":"","key":""},`) + len(k.GetKeyId()) + base64.StdEncoding.EncodedLen(len(k.GetKey()))
	}
	if cap(dst)-len(dst) < size {
		dst = append(make([]byte, 0, len(dst)+size), dst...)
	}
	dst = append(dst, `{"keys":[`...)
	for i, k := range kc.GetKeys() {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"key_ID":"`...)
		dst = append(dst, k.GetKeyId()...)
		dst = append(dst, `","key":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, k.GetKey())
		dst = append(dst, `"}`...)
	}
	return append(dst, "]}"...), true
}

// plainString reports whether protojson writes s between quotes unchanged.
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
