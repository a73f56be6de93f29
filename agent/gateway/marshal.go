package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/proto"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// strictJSON is runtime.JSONPb with a stricter request decoder.
type strictJSON struct {
	*runtime.JSONPb
}

// NewDecoder reads exactly one JSON value into a request message.
//
// runtime.JSONPb's decoder stops after the first JSON value, so a body such as
// `{"number": 1} garbage` would be served as if it were well formed; ETSI asks
// for a 400 on malformed JSON. Its errors also come straight from protojson
// with a "proto:" prefix that means nothing to an SAE; these name the problem.
//
// An empty body decodes to io.EOF, which the generated handlers take as "no
// body": every field of an ETSI key request is optional.
func (m *strictJSON) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		msg, ok := v.(proto.Message)
		if !ok {
			return fmt.Errorf("cannot decode a request body into %T", v)
		}
		// Read the body once: the usual shapes are decoded from it directly
		// (fastDecode), anything else by the general path below, which
		// then reads the same bytes and, if reading stopped early, the
		// same error.
		body, rerr := io.ReadAll(r)
		if rerr == nil && fastDecode(body, msg) {
			return nil
		}
		var src io.Reader = bytes.NewReader(body)
		if rerr != nil {
			src = io.MultiReader(src, errReader{rerr})
		}
		return m.decodeGeneral(src, msg)
	})
}

// decodeGeneral checks that r holds exactly one JSON value and decodes it
// with protojson.
func (m *strictJSON) decodeGeneral(r io.Reader, msg proto.Message) error {
	d := json.NewDecoder(r)
	var raw json.RawMessage
	if err := d.Decode(&raw); err != nil {
		// json.Decoder returns io.EOF itself, unwrapped, for an empty
		// stream, and only then.
		if err == io.EOF {
			return io.EOF
		}
		return fmt.Errorf("malformed JSON body: %s", describeJSONError(err))
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("malformed JSON body: unexpected data after the JSON object")
	}
	if err := m.UnmarshalOptions.Unmarshal(raw, msg); err != nil {
		return fmt.Errorf("invalid request body: %s", trimProtoPrefix(err.Error()))
	}
	return nil
}

// Marshal writes a key container directly (appendKeyContainer) and
// everything else with protojson.
//
// It is the last reader of a response's keys (the KMM made the response for
// this one request), so it zeroes them once they are encoded: the plaintext
// then lives on only in the encoded body, which net/http and crypto/tls copy
// into buffers of their own that Go gives no way to wipe.
func (m *strictJSON) Marshal(v any) ([]byte, error) {
	defer ZeroKeys(v)
	if kc, ok := v.(*qkdv1.KeyContainer); ok {
		if b, ok := appendKeyContainer(nil, kc); ok {
			return b, nil
		}
	}
	return m.JSONPb.Marshal(v)
}

// errReader fails every read with err.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// describeJSONError words an encoding/json error for an SAE.
func describeJSONError(err error) string {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return fmt.Sprintf("body larger than %d bytes", tooLarge.Limit)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "body ends before the JSON object does"
	}
	return err.Error()
}

// trimProtoPrefix drops protojson's "proto:" prefix. protojson deliberately
// varies the space after it (sometimes U+00A0) so that nobody matches on its
// messages, so this trims any kind of space rather than one fixed string.
func trimProtoPrefix(s string) string {
	s = strings.TrimPrefix(s, "proto:")
	return strings.TrimLeft(s, " \u00a0")
}

// ZeroKeys zeroes the key bytes of an ETSI 014 key container or an ETSI 004
// GET_KEY answer (anything else is left alone). Servers call it once the
// response is encoded.
func ZeroKeys(v any) {
	switch m := v.(type) {
	case *qkdv1.KeyContainer:
		for _, k := range m.GetKeys() {
			clear(k.GetKey())
		}
	case *qkdv1.GetStreamKeyResponse:
		clear(m.GetKeyBuffer())
	}
}
