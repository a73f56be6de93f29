package testbed

import (
	"fmt"
	"net"
	"os"
	"strconv"
)

// Ports are the loopback ports of one node's agent.
type Ports struct {
	REST    int // ETSI 014 over HTTPS, mutual TLS
	GRPC    int // gRPC, mutual TLS
	Metrics int // Prometheus, plain HTTP
}

// The default port plan, giving the URLs of the endpoints.json contract:
// node i serves REST on 8443+i, gRPC on 9443+i, metrics on 9100+i.
const (
	DefaultRESTPort    = 8443
	DefaultGRPCPort    = 9443
	DefaultMetricsPort = 9100
)

// Offsets of the port plan with an explicit base port P: node i serves REST
// on P+i, gRPC on P+GRPCOffset+i, metrics on P+MetricsOffset+i.
//
// A network of N nodes thus uses [P, P+N), [P+1000, P+1000+N) and
// [P+2000, P+2000+N). Two networks never collide when their base ports
// differ by at least N and by other than 1000±N or 2000±N, e.g. any two base
// ports in [P0, P0+1000) at least N apart; nor does one with 10000 <= P <=
// 60000 collide with the default plan (8443.., 9100.., 9443..) as long as N is
// below 500.
const (
	GRPCOffset    = 1000
	MetricsOffset = 2000
)

// PortPlan returns the ports of n nodes. basePort 0 is the default plan;
// otherwise the plan above.
func PortPlan(basePort, n int) ([]Ports, error) {
	if n < 1 {
		return nil, fmt.Errorf("port plan: %d nodes", n)
	}
	ps := make([]Ports, n)
	if basePort == 0 {
		if n > DefaultGRPCPort-DefaultRESTPort || n > DefaultGRPCPort-DefaultMetricsPort {
			return nil, fmt.Errorf("port plan: the default plan fits at most %d nodes; use a base port", DefaultGRPCPort-DefaultMetricsPort)
		}
		for i := range ps {
			ps[i] = Ports{REST: DefaultRESTPort + i, GRPC: DefaultGRPCPort + i, Metrics: DefaultMetricsPort + i}
		}
		return ps, nil
	}
	if n > GRPCOffset {
		return nil, fmt.Errorf("port plan: at most %d nodes", GRPCOffset)
	}
	if basePort < 1024 || basePort+MetricsOffset+n-1 > 65535 {
		return nil, fmt.Errorf("base port %d: must be in [1024, %d] for %d nodes", basePort, 65535-MetricsOffset-n+1, n)
	}
	for i := range ps {
		ps[i] = Ports{REST: basePort + i, GRPC: basePort + GRPCOffset + i, Metrics: basePort + MetricsOffset + i}
	}
	return ps, nil
}

// portsInUse reports the first port of ps that cannot be bound on
// 127.0.0.1 right now, naming its node and role, or nil.
func portsInUse(nodes []string, ps []Ports) error {
	for i, p := range ps {
		for _, c := range []struct {
			role string
			port int
		}{{"REST", p.REST}, {"gRPC", p.GRPC}, {"metrics", p.Metrics}} {
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)))
			if err != nil {
				return fmt.Errorf("port %d (%s of node %s) is in use; is another network running? choose another --base-port", c.port, c.role, nodes[i])
			}
			ln.Close()
		}
	}
	return nil
}

// FreeBasePort returns a base port for n nodes whose whole plan can be bound
// on loopback now. It starts from a point derived from the process ID, so
// tests running in parallel processes rarely try the same ports, and steps by
// 16 within [20000, 21000), a range that does not collide with the default
// plan. The ports are free when checked, not reserved.
func FreeBasePort(n int) (int, error) {
	const lo, span, step = 20000, 1000, 16
	if n > step {
		// Bases 16 apart keep each role's ranges apart only for n <= 16;
		// within [20000, 21000) the gRPC and metrics ranges (+1000, +2000)
		// lie above every REST range.
		return 0, fmt.Errorf("FreeBasePort: at most %d nodes", step)
	}
	slots := (span - step) / step
	start := os.Getpid() % slots
	names := make([]string, n)
	for i := range names {
		names[i] = strconv.Itoa(i)
	}
	for k := range slots {
		base := lo + ((start+k)%slots)*step
		ps, err := PortPlan(base, n)
		if err != nil {
			return 0, err
		}
		cps, err := ControllerPortPlan(base, MaxControllers)
		if err != nil {
			return 0, err
		}
		if portsInUse(names, ps) == nil && controllerPortsInUse(make([]string, MaxControllers), cps) == nil {
			return base, nil
		}
	}
	return 0, fmt.Errorf("FreeBasePort: no free base port in [%d, %d)", lo, lo+span)
}

// ControllerPorts are the loopback ports of one controller replica.
type ControllerPorts struct {
	GRPC    int // gRPC API, mutual TLS
	Raft    int // Raft transport, mutual TLS
	Metrics int // Prometheus, plain HTTP
}

// The default ports of controller replica i: gRPC 7443+i, Raft 7543+i,
// metrics 7643+i. With a base port P: P+3000+i, P+3100+i, P+3200+i.
const (
	DefaultControllerGRPCPort    = 7443
	DefaultControllerRaftPort    = 7543
	DefaultControllerMetricsPort = 7643
	ControllerOffset             = 3000
	MaxControllers               = 5
)

// ControllerPortPlan returns the ports of n controller replicas.
func ControllerPortPlan(basePort, n int) ([]ControllerPorts, error) {
	if n < 0 || n > MaxControllers {
		return nil, fmt.Errorf("port plan: %d controller replicas (at most %d)", n, MaxControllers)
	}
	grpc, raft, metrics := DefaultControllerGRPCPort, DefaultControllerRaftPort, DefaultControllerMetricsPort
	if basePort != 0 {
		grpc, raft, metrics = basePort+ControllerOffset, basePort+ControllerOffset+100, basePort+ControllerOffset+200
		if metrics+n-1 > 65535 {
			return nil, fmt.Errorf("base port %d: too high for %d controller replicas", basePort, n)
		}
	}
	ps := make([]ControllerPorts, n)
	for i := range ps {
		ps[i] = ControllerPorts{GRPC: grpc + i, Raft: raft + i, Metrics: metrics + i}
	}
	return ps, nil
}

// controllerPortsInUse is portsInUse for controller replicas.
func controllerPortsInUse(ids []string, ps []ControllerPorts) error {
	for i, p := range ps {
		for _, c := range []struct {
			role string
			port int
		}{{"gRPC", p.GRPC}, {"Raft", p.Raft}, {"metrics", p.Metrics}} {
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)))
			if err != nil {
				return fmt.Errorf("port %d (%s of controller %s) is in use; is another network running? choose another --base-port", c.port, c.role, ids[i])
			}
			ln.Close()
		}
	}
	return nil
}
