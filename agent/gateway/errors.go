package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// internalMessage replaces the text (and details) of errors that map to 500.
// Those are errors the service did not map to a status (a bug at its edge) or
// reported as internal, and what they say was written for operators, not
// SAEs; it goes to the request's log line instead.
const internalMessage = "internal error"

// handleError is the runtime.ErrorHandlerFunc: it answers a failed call with
// the ETSI Error body and the HTTP status that the gateway's default table
// (runtime.HTTPStatusFromCode) gives the gRPC code: InvalidArgument 400,
// Unauthenticated 401, Unavailable 503, and so on.
func (g *gateway) handleError(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
	httpStatus := 0
	var hse *runtime.HTTPStatusError
	if errors.As(err, &hse) {
		httpStatus, err = hse.HTTPStatus, hse.Err
	}
	var st *status.Status
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		st = status.FromContextError(err)
	} else {
		st = status.Convert(err)
	}
	if httpStatus == 0 {
		httpStatus = runtime.HTTPStatusFromCode(st.Code())
	}
	if httpStatus == http.StatusInternalServerError {
		noteInternal(ctx, st)
		writeError(w, httpStatus, internalMessage, nil)
		return
	}
	noteError(ctx, st.Message())
	writeError(w, httpStatus, st.Message(), renderDetails(st))
}

// handleRoutingError is the runtime.RoutingErrorHandlerFunc: paths that are
// not ETSI 014 endpoints and methods an endpoint does not take get the ETSI
// body too, so an SAE never has to parse two error formats.
func (g *gateway) handleRoutingError(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	var msg string
	switch httpStatus {
	case http.StatusNotFound:
		msg = "no such endpoint; ETSI GS QKD 014 serves /api/v1/keys/{SAE_ID}/status, enc_keys and dec_keys (and replace_keys)"
	case http.StatusMethodNotAllowed:
		allow := allowedMethods(r.URL.Path)
		// RFC 9110 section 15.5.6: a 405 must list what the resource takes.
		w.Header().Set("Allow", allow)
		msg = fmt.Sprintf("method %s is not allowed here; use %s", r.Method, allow)
	case http.StatusBadRequest:
		msg = "malformed request path"
	default:
		msg = http.StatusText(httpStatus)
	}
	noteError(ctx, msg)
	writeError(w, httpStatus, msg, nil)
}

// allowedMethods is the Allow header of an ETSI 014 path. It is derived from
// the path's last segment because the mux only reports that some other
// method matched, not which.
func allowedMethods(path string) string {
	if strings.HasSuffix(path, "/status") {
		return http.MethodGet
	}
	if strings.HasSuffix(path, "/replace_keys") {
		return http.MethodPost
	}
	return http.MethodGet + ", " + http.MethodPost
}

// renderDetails turns the typed details of st into ETSI "details" objects.
// Only the detail types below are rendered; any other is dropped, because
// its fields were never reviewed for what they may reveal.
//
//   - errdetails.BadRequest: one {"parameter": field, "reason": description}
//     per field violation, the shape ETSI shows.
//   - errdetails.ErrorInfo: its metadata as one object, plus "reason" (the
//     machine-readable cause, e.g. NOT_ENOUGH_KEYS) unless the metadata
//     already has that key.
func renderDetails(st *status.Status) []map[string]string {
	var out []map[string]string
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out = append(out, map[string]string{"parameter": v.GetField(), "reason": v.GetDescription()})
			}
		case *errdetails.ErrorInfo:
			m := make(map[string]string, len(d.GetMetadata())+1)
			for k, v := range d.GetMetadata() {
				m[k] = v
			}
			if _, ok := m["reason"]; !ok && d.GetReason() != "" {
				m["reason"] = d.GetReason()
			}
			out = append(out, m)
		}
	}
	return out
}

// errorJSON writes the body through qkdv1.Error, the message that documents
// it in the OpenAPI, with protojson's defaults so that an empty "details" is
// left out (the standard makes it optional) rather than written as [].
var errorJSON = protojson.MarshalOptions{}

// writeError answers with status httpStatus and the ETSI Error body.
func writeError(w http.ResponseWriter, httpStatus int, msg string, details []map[string]string) {
	// protojson refuses invalid UTF-8, and a message may quote what the
	// caller sent.
	valid := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
	e := &qkdv1.Error{Message: valid(msg)}
	for _, d := range details {
		fields := make(map[string]*structpb.Value, len(d))
		for k, v := range d {
			fields[valid(k)] = structpb.NewStringValue(valid(v))
		}
		e.Details = append(e.Details, &structpb.Struct{Fields: fields})
	}
	body, err := errorJSON.Marshal(e)
	if err != nil {
		// Only strings go in, so this cannot fail; if it ever does, the status
		// code still tells the SAE what happened.
		body = []byte(`{"message":"` + http.StatusText(httpStatus) + `"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(httpStatus)
	_, _ = w.Write(body)
}
