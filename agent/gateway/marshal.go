package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/proto"
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
	})
}

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
