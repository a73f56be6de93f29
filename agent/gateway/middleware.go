package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/pki"
)

// requestNote collects, for the request's log line, what the layers below
// the logger learnt: who called and why the request failed. It lives in the
// request context; one request is served by one goroutine, so it needs no
// lock.
type requestNote struct {
	caller   string
	errMsg   string
	internal *status.Status // an error whose text the SAE was not shown
}

type noteKey struct{}

func noteFrom(ctx context.Context) *requestNote {
	n, _ := ctx.Value(noteKey{}).(*requestNote)
	return n
}

func noteError(ctx context.Context, msg string) {
	if n := noteFrom(ctx); n != nil {
		n.errMsg = msg
	}
}

func noteInternal(ctx context.Context, st *status.Status) {
	if n := noteFrom(ctx); n != nil {
		n.internal = st
	}
}

// logRequests logs one line per request at Debug: method, path, caller SAE,
// status and duration. It never logs bodies or the query string: bodies hold
// key material, and the path already says which endpoint was asked. A 500,
// whose cause the SAE was not told, is logged at Error with that cause so it
// is not lost.
//
// It also marks every answer Cache-Control: no-store. Key containers must
// never be kept by a cache; status answers are live counts; so the rule is
// simplest stated for all of them.
func (g *gateway) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		note := &requestNote{}
		rec := &statusRecorder{ResponseWriter: w}
		w.Header().Set("Cache-Control", "no-store")
		ctx := context.WithValue(r.Context(), noteKey{}, note)
		next.ServeHTTP(rec, r.WithContext(ctx))

		level := slog.LevelDebug
		if note.internal != nil {
			level = slog.LevelError
		}
		if !g.logger.Enabled(ctx, level) {
			return
		}
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.String("sae", note.caller),
			slog.Int("status", rec.status()),
			slog.Duration("duration", time.Since(start)),
		}
		switch {
		case note.internal != nil:
			attrs = append(attrs, slog.String("code", note.internal.Code().String()), slog.String("error", note.internal.Message()))
		case note.errMsg != "":
			attrs = append(attrs, slog.String("error", note.errMsg))
		}
		g.logger.LogAttrs(ctx, level, "etsi014 request", attrs...)
	})
}

// statusRecorder remembers the status code written through it.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}

// requireSAE admits only requests over TLS whose verified client certificate
// names an SAE, and puts that identity in the context for the service. It
// runs before routing, so an unauthenticated caller learns nothing from the
// gateway but 401.
func requireSAE(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, problem := callerOf(r)
		if problem != "" {
			noteError(r.Context(), problem)
			writeError(w, http.StatusUnauthorized, problem, nil)
			return
		}
		if n := noteFrom(r.Context()); n != nil {
			n.caller = id.ID
		}
		next.ServeHTTP(w, r.WithContext(pki.WithCaller(r.Context(), id)))
	})
}

// limitSAE refuses a request of an SAE over its request limit, before it
// reaches routing or the KMM.
//
// The answer is 503 with the ETSI error object and a Retry-After header.
// ETSI GS QKD 014 defines 400, 401 and 503 only; 429 would be the HTTP
// idiom, but an SAE written to the standard knows 503 as "server side,
// retry later", which is exactly what it should do here, while a 429 it may
// treat as an unknown failure. The message and the RATE_LIMITED reason say
// which limit it hit.
func (g *gateway) limitSAE(next http.Handler) http.Handler {
	if g.limit == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := pki.Caller(r.Context())
		if ok, retry := g.limit.Allow(id.ID); !ok {
			msg := g.limit.Message(id.ID, retry)
			noteError(r.Context(), msg)
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(retry.Seconds()))))
			writeError(w, http.StatusServiceUnavailable, msg, []map[string]string{{"reason": "RATE_LIMITED"}})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// callerOf returns the SAE identity of r's client, or why there is none.
func callerOf(r *http.Request) (pki.Identity, string) {
	// The server is meant to serve TLS only; checking here as well keeps a
	// misconfigured plain-HTTP listener from serving anyone.
	if r.TLS == nil {
		return pki.Identity{}, "HTTPS with an SAE client certificate is required"
	}
	// Only VerifiedChains is trusted: PeerCertificates is filled in even when
	// the server did not verify them (e.g. tls.RequireAnyClientCert).
	if len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return pki.Identity{}, "a verified SAE client certificate is required"
	}
	id, err := pki.Identify(r.TLS.VerifiedChains[0][0])
	if err != nil {
		return pki.Identity{}, fmt.Sprintf("the client certificate does not identify an SAE: %v", err)
	}
	if id.Kind != pki.KindSAE {
		return pki.Identity{}, fmt.Sprintf("the client certificate identifies %s, not an SAE", id)
	}
	return id, ""
}

// checkBody applies the body policy to POST requests that reached an ETSI
// endpoint:
//
//   - Content-Type, when present, must be application/json (charset, if
//     given, utf-8, the only encoding RFC 8259 allows between systems);
//     anything else is 415 Unsupported Media Type. A missing Content-Type is
//     accepted and read as JSON, since ETSI defines no other body format and
//     some minimal clients omit the header.
//   - The body may hold at most MaxBodyBytes: 413 when Content-Length says
//     so up front, and a 400 from the decoder when a chunked body runs over.
func checkBody(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, pathParams map[string]string) {
		if r.Method != http.MethodPost {
			next(w, r, pathParams)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "" && !isJSON(ct) {
			msg := fmt.Sprintf("Content-Type %q is not supported; send application/json", ct)
			noteError(r.Context(), msg)
			writeError(w, http.StatusUnsupportedMediaType, msg, nil)
			return
		}
		if r.ContentLength > MaxBodyBytes {
			msg := fmt.Sprintf("body of %d bytes is larger than %d", r.ContentLength, MaxBodyBytes)
			noteError(r.Context(), msg)
			writeError(w, http.StatusRequestEntityTooLarge, msg, nil)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		next(w, r, pathParams)
	}
}

func isJSON(contentType string) bool {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/json" {
		return false
	}
	cs, ok := params["charset"]
	return !ok || strings.EqualFold(cs, "utf-8")
}
