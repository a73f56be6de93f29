package gateway

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// generalDecode is the decoder without its fast path.
func generalDecode(body string, msg proto.Message) error {
	return newMarshaler().(*strictJSON).decodeGeneral(strings.NewReader(body), msg)
}

// The fast reader either declines or decodes exactly what protojson does.
func TestFastDecodeAgreesWithGeneralDecoder(t *testing.T) {
	encBodies := []string{
		`{"number":16,"size":256}`, `{ "size" : 8 , "number" : 1 }`, `{}`, " {\n}\n", `{"number":0}`,
		`{"number":999999999}`, `{"number":2147483648}`, `{"number":-1}`, `{"number":1.0}`, `{"number":1e1}`,
		`{"number":"16"}`, `{"number":016}`, `{"number":1,"number":2}`, `{"numbr":1}`, `{"number":1} x`,
		`{"number":1,}`, `{"additional_slave_SAE_IDs":["B"]}`, `{"extension_mandatory":[{"a":1}]}`, `[]`, `null`,
		`{"slave_SAE_ID":"X"}`,
	}
	for _, body := range encBodies {
		checkFastDecode(t, body, func() proto.Message { return &qkdv1.GetKeyRequest{} })
	}
	decBodies := []string{
		`{"key_IDs":[{"key_ID":"00000000-0000-8000-8000-000000000001"}]}`,
		`{ "key_IDs" : [ { "key_ID" : "a" } , {"key_ID":"b"} ] }`, `{"key_IDs":[]}`,
		`{"key_IDs":[{"key_ID":"a\u0062"}]}`, `{"key_IDs":[{"key_ID":"a","key_ID_extension":{}}]}`,
		`{"key_IDs":[{"key_ID":"a"}],"key_IDs_extension":{}}`, `{"key_ID":"a"}`, `{"key_IDs":[{"key_ID":1}]}`,
		`{"key_IDs":[{"key_ID":"a"}]}}`, `{"key_IDs":[{}]}`, `{"key_IDs":null}`, `{"key_ids":[{"key_id":"a"}]}`,
	}
	for _, body := range decBodies {
		checkFastDecode(t, body, func() proto.Message { return &qkdv1.GetKeyWithKeyIDsRequest{} })
	}
}

func checkFastDecode(t *testing.T, body string, newMsg func() proto.Message) {
	t.Helper()
	fast := newMsg()
	if !fastDecode([]byte(body), fast) {
		return
	}
	general := newMsg()
	if err := generalDecode(body, general); err != nil {
		t.Errorf("%s: fast path accepted what the general decoder refuses: %v", body, err)
		return
	}
	if !proto.Equal(fast, general) {
		t.Errorf("%s: fast path read %v, general decoder %v", body, fast, general)
	}
}

func TestFastDecodeTakesTheUsualShapes(t *testing.T) {
	if !fastDecode([]byte(`{"number":16,"size":256}`), &qkdv1.GetKeyRequest{}) {
		t.Error("enc_keys body not decoded by the fast path")
	}
	if !fastDecode([]byte(`{"key_IDs":[{"key_ID":"a"},{"key_ID":"b"}]}`), &qkdv1.GetKeyWithKeyIDsRequest{}) {
		t.Error("dec_keys body not decoded by the fast path")
	}
}

// The fast writer says what protojson says.
func TestFastKeyContainerAgreesWithProtojson(t *testing.T) {
	ext, _ := structpb.NewStruct(map[string]any{"x": 1.0})
	cases := []struct {
		kc       *qkdv1.KeyContainer
		wantFast bool
	}{
		{&qkdv1.KeyContainer{}, true},
		{&qkdv1.KeyContainer{Keys: []*qkdv1.Key{{KeyId: "00000000-0000-8000-8000-000000000001", Key: []byte{0, 1, 2, 250, 255}}, {KeyId: "", Key: nil}}}, true},
		{&qkdv1.KeyContainer{Keys: []*qkdv1.Key{{KeyId: `a"b`, Key: []byte{1}}}}, false},
		{&qkdv1.KeyContainer{Keys: []*qkdv1.Key{{KeyId: "a", Key: []byte{1}, KeyExtension: ext}}}, false},
		{&qkdv1.KeyContainer{KeyContainerExtension: ext}, false},
	}
	m := newMarshaler().(*strictJSON)
	for _, tc := range cases {
		fast, ok := appendKeyContainer(nil, tc.kc)
		if ok != tc.wantFast {
			t.Errorf("%v: fast path ok = %v, want %v", tc.kc, ok, tc.wantFast)
		}
		general, err := m.JSONPb.Marshal(tc.kc)
		if err != nil {
			t.Fatal(err)
		}
		viaMarshal, err := m.Marshal(tc.kc)
		if err != nil {
			t.Fatal(err)
		}
		for _, got := range [][]byte{fast, viaMarshal} {
			if got == nil {
				continue
			}
			var a, b any
			if err := json.Unmarshal(got, &a); err != nil {
				t.Errorf("%v: fast output %s is not JSON: %v", tc.kc, got, err)
				continue
			}
			if err := json.Unmarshal(general, &b); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a, b) {
				t.Errorf("%v: fast output %s, protojson %s", tc.kc, got, general)
			}
		}
	}
}

// TestMarshalZeroesKeys: once a response is encoded, the plaintext keys the
// KMM put in it are zeroed, and the encoding still carries them.
func TestMarshalZeroesKeys(t *testing.T) {
	m := newMarshaler()
	k1, k2 := []byte{1, 2, 3, 4}, []byte{5, 6, 7, 8}
	kc := &qkdv1.KeyContainer{Keys: []*qkdv1.Key{{KeyId: "a", Key: k1}, {KeyId: "b", Key: k2}}}
	b, err := m.Marshal(kc)
	if err != nil || !strings.Contains(string(b), `"AQIDBA=="`) || !strings.Contains(string(b), `"BQYHCA=="`) {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	sk := &qkdv1.GetStreamKeyResponse{KeyBuffer: []byte{9, 9, 9}}
	if b, err := m.Marshal(sk); err != nil || !strings.Contains(string(b), `"CQkJ"`) {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	for _, k := range [][]byte{k1, k2, sk.GetKeyBuffer()} {
		if !bytes.Equal(k, make([]byte, len(k))) {
			t.Errorf("key bytes %v left after encoding", k)
		}
	}
}
