package agent

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/qkdnet/qkdnet/agent/gateway"
	"github.com/qkdnet/qkdnet/agent/ratelimit"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// maxGRPCMessage bounds what the agent's gRPC server reads in one message.
// The server is shared by SAEs, peer KMMs and QKD drivers, so the bound is
// set by the largest legitimate peer message: a driver batch (the emulator
// and remote drivers keep batches under 1 MiB), a keysync Allocate of 4096
// key_IDs (~0.3 MiB) or a Relay of 512 keys of up to 1 KiB (~0.6 MiB). It is
// half gRPC's default of 4 MiB; SAE requests are held to far less below.
const maxGRPCMessage = 2 << 20

// isSAEMethod reports whether a gRPC method is on the SAE API (ETSI 014 and
// 004), the part the per-SAE limits apply to.
func isSAEMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/"+qkdv1.KeyService_ServiceDesc.ServiceName+"/") ||
		strings.HasPrefix(fullMethod, "/"+qkdv1.KeyStreamService_ServiceDesc.ServiceName+"/")
}

// saeLimits is the unary interceptor of the SAE API on gRPC: a request
// larger than the REST body limit is refused, and so is an SAE over its
// request rate, both with RESOURCE_EXHAUSTED (the code gRPC itself gives an
// oversized message; ETSI 004 names no transport error of its own). The
// caller is identified as the KMM identifies it, from its verified client
// certificate; a caller without one is left to the KMM to refuse.
func saeLimits(l *ratelimit.Limiter) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !isSAEMethod(info.FullMethod) {
			return handler(ctx, req)
		}
		if m, ok := req.(proto.Message); ok && proto.Size(m) > gateway.MaxBodyBytes {
			return nil, status.Errorf(codes.ResourceExhausted, "request of %d bytes is larger than %d", proto.Size(m), gateway.MaxBodyBytes)
		}
		if id, err := pki.Caller(ctx); err == nil && id.Kind == pki.KindSAE {
			if ok, retry := l.Allow(id.ID); !ok {
				return nil, status.Error(codes.ResourceExhausted, l.Message(id.ID, retry))
			}
		}
		return handler(ctx, req)
	}
}

// zeroingCodec is the gRPC server's protobuf codec, which also zeroes the
// keys of an ETSI 014/004 response once it is encoded (gateway.ZeroKeys):
// the server is the last reader of a response the KMM made for one call.
// The encoded message lives on in gRPC's pooled buffers, which Go gives no
// way to wipe; this removes the plaintext the KMM itself handed over.
type zeroingCodec struct{ encoding.CodecV2 }

func (c zeroingCodec) Marshal(v any) (mem.BufferSlice, error) {
	out, err := c.CodecV2.Marshal(v)
	gateway.ZeroKeys(v)
	return out, err
}

func newZeroingCodec() zeroingCodec {
	return zeroingCodec{encoding.GetCodecV2(protoenc.Name)}
}
