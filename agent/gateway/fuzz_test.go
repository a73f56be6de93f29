package gateway

import (
	"testing"

	"google.golang.org/protobuf/proto"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// FuzzKeyRequestDecode: for any body, the fast path of the ETSI 014 request
// decoder either declines or reads exactly what the general decoder reads,
// and neither panics.
func FuzzKeyRequestDecode(f *testing.F) {
	for _, s := range []string{
		`{"number":16,"size":256}`, `{}`, `{"number":1,"number":2}`, `{"number":1e1}`, `{"additional_slave_SAE_IDs":["B"]}`,
		`{"key_IDs":[{"key_ID":"00000000-0000-8000-8000-000000000001"}]}`, `{"key_IDs":[{"key_ID":"a\u0062"}]}`, `[]`, `null`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, newMsg := range []func() proto.Message{
			func() proto.Message { return &qkdv1.GetKeyRequest{} },
			func() proto.Message { return &qkdv1.GetKeyWithKeyIDsRequest{} },
		} {
			fast := newMsg()
			if !fastDecode(body, fast) {
				_ = generalDecode(string(body), newMsg())
				continue
			}
			general := newMsg()
			if err := generalDecode(string(body), general); err != nil {
				t.Fatalf("%q: fast path accepted what the general decoder refuses: %v", body, err)
			}
			if !proto.Equal(fast, general) {
				t.Fatalf("%q: fast path read %v, general decoder %v", body, fast, general)
			}
		}
	})
}
