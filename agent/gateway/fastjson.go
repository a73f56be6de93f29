package gateway

import (
	"encoding/base64"

	"google.golang.org/protobuf/proto"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/internal/jsonscan"
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

// parseKeyRequest reads {"number": N, "size": S}, either member optional.
func parseKeyRequest(b []byte) (number, size int32, ok bool) {
	s := jsonscan.New(b)
	if !s.Next('{') {
		return 0, 0, false
	}
	var haveNumber, haveSize bool
	if !s.Next('}') {
		for {
			name, ok := s.Str()
			if !ok || !s.Next(':') {
				return 0, 0, false
			}
			switch {
			case string(name) == "number" && !haveNumber:
				number, haveNumber = s.Int32()
				if !haveNumber {
					return 0, 0, false
				}
			case string(name) == "size" && !haveSize:
				size, haveSize = s.Int32()
				if !haveSize {
					return 0, 0, false
				}
			default:
				return 0, 0, false
			}
			if s.Next(',') {
				continue
			}
			if s.Next('}') {
				break
			}
			return 0, 0, false
		}
	}
	return number, size, s.End()
}

// parseKeyIDs reads {"key_IDs": [{"key_ID": "…"}, …]}.
func parseKeyIDs(b []byte) ([]*qkdv1.KeyID, bool) {
	s := jsonscan.New(b)
	if !s.Next('{') {
		return nil, false
	}
	name, ok := s.Str()
	if !ok || string(name) != "key_IDs" || !s.Next(':') || !s.Next('[') {
		return nil, false
	}
	var ids []*qkdv1.KeyID
	if !s.Next(']') {
		for {
			if !s.Next('{') {
				return nil, false
			}
			name, ok := s.Str()
			if !ok || string(name) != "key_ID" || !s.Next(':') {
				return nil, false
			}
			id, ok := s.Str()
			if !ok || !s.Next('}') {
				return nil, false
			}
			ids = append(ids, &qkdv1.KeyID{KeyId: string(id)})
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
		if k == nil || k.GetKeyIdExtension() != nil || k.GetKeyExtension() != nil || !jsonscan.PlainString(k.GetKeyId()) {
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
