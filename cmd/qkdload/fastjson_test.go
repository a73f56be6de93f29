package main

import (
	"bytes"
	"encoding/json"
	"testing"
)

// The fast reader must either give up or agree with encoding/json.
func TestFastKeyContainerAgreesWithEncodingJSON(t *testing.T) {
	bodies := []struct {
		body     string
		wantFast bool
	}{
		{`{"keys":[{"key_ID":"00000000-0000-8000-8000-000000000001","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}]}`, true},
		{`{"keys": [{"key_ID": "a", "key": "AQI="}, {"key":"AwQ=","key_ID":"b"}]}`, true},
		{" {\n\"keys\" :[ ]\t} \n", true},
		{`{"keys":[]}`, true},
		{`{"keys":[{"key_ID":"a","key":""}]}`, true},
		{`{"keys":[{"key_ID":"a","key":"AQI=","key_extension":{}}]}`, false},
		{`{"keys":[{"key_ID":"a","key":"AQI="}],"key_container_extension":{}}`, false},
		{`{"keys":[{"key_ID":"a\u0062","key":"AQI="}]}`, false},
		{`{"keys":[{"key_ID":"a","key_ID":"b","key":"AQI="}]}`, false},
		{`{"keys":[{"KEY_ID":"a","key":"AQI="}]}`, false},
		{`{"keys":[{"key_ID":"a"}]}`, false},
		{`{"keys":null}`, false},
		{`{"keys":[{"key_ID":"a","key":"not base64!"}]}`, false},
		{`{"keys":[{"key_ID":"a","key":"AQI="}]} x`, false},
		{`{"keys":[{"key_ID":"a","key":"AQI="},]}`, false},
		{`{"keys":[{"key_ID":"a","key":"AQI="}]`, false},
		{``, false},
	}
	for _, tc := range bodies {
		fast, ok := fastKeyContainer([]byte(tc.body))
		if ok != tc.wantFast {
			t.Errorf("%q: fast path ok = %v, want %v", tc.body, ok, tc.wantFast)
		}
		if !ok {
			continue
		}
		var kc keyContainer
		if err := json.Unmarshal([]byte(tc.body), &kc); err != nil {
			t.Errorf("%q: fast path accepted what encoding/json refuses: %v", tc.body, err)
			continue
		}
		if len(kc.Keys) != len(fast) {
			t.Errorf("%q: %d keys, encoding/json %d", tc.body, len(fast), len(kc.Keys))
			continue
		}
		for i := range fast {
			if fast[i].KeyID != kc.Keys[i].KeyID || !bytes.Equal(fast[i].Key, kc.Keys[i].Key) {
				t.Errorf("%q: key %d = %+v, encoding/json %+v", tc.body, i, fast[i], kc.Keys[i])
			}
		}
	}
}

func TestRequestBodies(t *testing.T) {
	var req keyRequest
	if err := json.Unmarshal(appendKeyRequest(nil, 16, 256), &req); err != nil || req != (keyRequest{Number: 16, Size: 256}) {
		t.Errorf("enc_keys body = %+v, %v", req, err)
	}
	ids := []string{"00000000-0000-8000-8000-000000000001", "b"}
	b, ok := appendKeyIDsRequest(nil, ids)
	var got keyIDsRequest
	if !ok || json.Unmarshal(b, &got) != nil || len(got.KeyIDs) != 2 || got.KeyIDs[0].KeyID != ids[0] || got.KeyIDs[1].KeyID != ids[1] {
		t.Errorf("dec_keys body %s = %+v (ok %v)", b, got, ok)
	}
	if _, ok := appendKeyIDsRequest(nil, []string{`a"b`}); ok {
		t.Error("an ID with a quote was written without escaping")
	}
}
