// Package grpcmetrics gives a gRPC server Prometheus metrics of its own:
// calls started and handled by service, method and code, and handling time,
// the same for the agent and the controller.
package grpcmetrics

import (
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc"
)

// Metrics are a gRPC server's metrics; register them with Prometheus and
// pass ServerOptions to grpc.NewServer.
type Metrics struct{ *grpcprom.ServerMetrics }

// New returns the metrics, with a handling-time histogram whose buckets
// span the sub-millisecond key calls and the seconds-long streams' opening.
func New() Metrics {
	return Metrics{grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5}),
	))}
}

// ServerOptions count every unary and streaming call.
func (m Metrics) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(m.StreamServerInterceptor()),
	}
}

// Init makes every method of the server's services show up at zero, so
// dashboards see them before the first call.
func (m Metrics) Init(s *grpc.Server) { m.InitializeMetrics(s) }
