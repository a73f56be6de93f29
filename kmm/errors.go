package kmm

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/kmm/keystore"
)

// apiError is an answer for the SAE: a gRPC code (which the gateway maps to
// the ETSI 014 HTTP status) and, for a bad request, the parameter at fault.
type apiError struct {
	code   codes.Code
	msg    string
	field  string
	reason string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(field, reason string) error {
	return &apiError{code: codes.InvalidArgument, msg: "bad request: " + field + " " + reason, field: field, reason: reason}
}

func unauthorized(msg string) error {
	return &apiError{code: codes.Unauthenticated, msg: "unauthorized: " + msg}
}

func unavailable(msg string) error {
	return &apiError{code: codes.Unavailable, msg: msg}
}

// toStatus is the one place where the App Request Handler's errors become
// gRPC statuses (and so ETSI 014 HTTP codes): 400 for what the SAE got wrong,
// 401 for what it may not do, 503 for everything on the server's side. An
// unexpected error is logged here and answered without its details.
func (k *KMM) toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		st := status.New(ae.code, ae.msg)
		if ae.field != "" {
			if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: ae.field, Description: ae.reason}}}); derr == nil {
				st = d
			}
		}
		return st.Err()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, keystore.ErrClosed):
		return status.Error(codes.Unavailable, "the KME is shutting down")
	default:
		k.logger.ErrorContext(ctx, "request failed on the server side", "err", err)
		return status.Error(codes.Unavailable, "server-side error in the KME; see its log")
	}
}
