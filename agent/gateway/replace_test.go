package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

func (f *fakeKeys) ReplaceKeys(ctx context.Context, req *qkdv1.ReplaceKeysRequest) (*qkdv1.KeyContainer, error) {
	f.record(ctx, "ReplaceKeys", req)
	if f.err != nil {
		return nil, f.err
	}
	return proto.Clone(f.keys).(*qkdv1.KeyContainer), nil
}

// TestReplaceKeysEndpoint: POST /api/v1/keys/{slave}/replace_keys reaches
// ReplaceKeys with the path's SAE and the body's key_IDs, answers a key
// container with the key_ID_extension, takes only POST, and errors are the
// ETSI object.
func TestReplaceKeysEndpoint(t *testing.T) {
	ext, _ := structpb.NewStruct(map[string]any{"replaces": keyID1})
	f := &fakeKeys{keys: &qkdv1.KeyContainer{Keys: []*qkdv1.Key{{KeyId: keyID2, Key: keyBits, KeyIdExtension: ext}}}}
	ts := serve(t, f, nil)
	c := clientWith(t, asSAE(certs(t)))
	url := ts.URL + "/api/v1/keys/SAE_B/replace_keys"

	resp := do(t, c, "POST", url, "application/json", `{"key_IDs":[{"key_ID":"`+keyID1+`"}]}`)
	if resp.code != http.StatusOK {
		t.Fatalf("status %d: %s", resp.code, resp.body)
	}
	var body struct {
		Keys []struct {
			KeyID string            `json:"key_ID"`
			Key   string            `json:"key"`
			Ext   map[string]string `json:"key_ID_extension"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(resp.body, &body); err != nil || len(body.Keys) != 1 || body.Keys[0].KeyID != keyID2 || body.Keys[0].Ext["replaces"] != keyID1 {
		t.Fatalf("answer %s (%v)", resp.body, err)
	}
	calls := f.Calls()
	want := &qkdv1.ReplaceKeysRequest{SlaveSaeId: "SAE_B", KeyIds: []*qkdv1.KeyID{{KeyId: keyID1}}}
	if len(calls) != 1 || calls[0].method != "ReplaceKeys" || !proto.Equal(calls[0].req, want) || calls[0].caller.ID != "SAE_A" {
		t.Fatalf("calls %+v, want one ReplaceKeys %v by SAE_A", calls, want)
	}

	resp = do(t, c, "GET", url, "", "")
	checkError(t, errorCase{wantCode: http.StatusMethodNotAllowed, wantHeader: map[string]string{"Allow": "POST"}, wantMsg: "not allowed"}, resp)

	st, err := status.New(codes.InvalidArgument, "bad request: key_ID "+keyID1+" was replaced already").WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "key_ID", Description: keyID1 + " was replaced already"}}})
	if err != nil {
		t.Fatal(err)
	}
	f.err = st.Err()
	resp = do(t, c, "POST", url, "application/json", `{"key_IDs":[{"key_ID":"`+keyID1+`"}]}`)
	checkError(t, errorCase{wantCode: http.StatusBadRequest, wantMsg: "replaced already", wantDetails: []map[string]string{{"parameter": "key_ID", "reason": keyID1 + " was replaced already"}}}, resp)
}
