// Package ctlclient reaches the controller cluster: it keeps a connection to
// each replica it knows and sends every call to the leader, following the
// NOT_LEADER hints followers answer with and trying the other replicas when
// one is down. Agents and qkdctl use it.
package ctlclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// The ErrorInfo reasons (domain "qkdnet") the controller answers with; the
// controller and its clients share them from here.
const (
	// ReasonNotLeader: the call went to a follower; metadata leader_id and
	// leader_grpc name the leader when one is known.
	ReasonNotLeader = "NOT_LEADER"
	// ReasonNoPath: no path of enabled links joins the SAEs' nodes.
	ReasonNoPath = "NO_PATH"
	// ReasonQoSNotMet: no path can carry the asked minimum rate; metadata
	// available_bps says what the best one can.
	ReasonQoSNotMet = "QOS_NOT_MET"
)

// Client reaches the controller cluster.
type Client struct {
	tls  *tls.Config
	opts []grpc.DialOption

	mu     sync.Mutex
	addrs  []string // known replicas, in the order to try
	leader string   // last known leader address, or ""
	conns  map[string]*grpc.ClientConn
}

// New returns a client for the replicas at addrs (gRPC host:port) using the
// client TLS configuration (mutual TLS; nil only in tests with opts giving
// credentials).
func New(addrs []string, tlsCfg *tls.Config, opts ...grpc.DialOption) (*Client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("ctlclient: no controller address")
	}
	c := &Client{tls: tlsCfg, opts: opts, addrs: slices.Clone(addrs), conns: map[string]*grpc.ClientConn{}}
	if tlsCfg != nil {
		c.opts = append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))}, c.opts...)
	}
	return c, nil
}

// Close closes every connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for a, cc := range c.conns {
		cc.Close()
		delete(c.conns, a)
	}
	return nil
}

func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, c.opts...)
	if err != nil {
		return nil, err
	}
	c.conns[addr] = cc
	return cc, nil
}

// order returns the addresses to try: the leader first.
func (c *Client) order() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := slices.Clone(c.addrs)
	if c.leader != "" {
		out = slices.DeleteFunc(out, func(a string) bool { return a == c.leader })
		out = append([]string{c.leader}, out...)
	}
	return out
}

func (c *Client) setLeader(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leader = addr
	if addr != "" && !slices.Contains(c.addrs, addr) {
		c.addrs = append(c.addrs, addr)
	}
}

// Leader returns the address of the leader as last seen, or "".
func (c *Client) Leader() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

// LeaderHint returns the leader a NOT_LEADER error names.
func LeaderHint(err error) (id, addr string, ok bool) {
	st, sok := status.FromError(err)
	if !sok {
		return "", "", false
	}
	for _, d := range st.Details() {
		if ei, isEI := d.(*errdetails.ErrorInfo); isEI && ei.GetReason() == ReasonNotLeader {
			return ei.GetMetadata()["leader_id"], ei.GetMetadata()["leader_grpc"], true
		}
	}
	return "", "", false
}

// retryable reports whether another replica (or a later try) may succeed.
func retryable(err error) bool {
	if _, _, ok := LeaderHint(err); ok {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// Do calls fn on the leader: it tries the replicas, follows leader hints,
// and waits and retries while the cluster has no leader, until fn succeeds,
// fails for a reason another replica cannot fix, or ctx ends. Each attempt
// is bounded by 3 s.
func (c *Client) Do(ctx context.Context, fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	return c.do(ctx, 3*time.Second, fn)
}

// Stream is Do for a long-lived call (a Session): attempts are not bounded
// in time, and fn returning nil ends it.
func (c *Client) Stream(ctx context.Context, fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	return c.do(ctx, 0, fn)
}

func (c *Client) do(ctx context.Context, attempt time.Duration, fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	var last error
	backoff := 50 * time.Millisecond
	for {
		for _, addr := range c.order() {
			cc, err := c.conn(addr)
			if err != nil {
				last = err
				continue
			}
			var (
				actx   context.Context
				cancel context.CancelFunc
			)
			if attempt > 0 {
				actx, cancel = context.WithTimeout(ctx, attempt)
			} else {
				actx, cancel = context.WithCancel(ctx)
			}
			err = fn(actx, cc)
			cancel()
			if err == nil {
				c.setLeader(addr)
				return nil
			}
			last = err
			if !retryable(err) {
				return err
			}
			if _, hint, ok := LeaderHint(err); ok && hint != "" && hint != addr {
				c.setLeader(hint)
				break // start over from the leader
			}
			if ctx.Err() != nil {
				return fmt.Errorf("controller: %w (last error: %v)", ctx.Err(), last)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("controller: %w (last error: %v)", ctx.Err(), last)
		case <-time.After(backoff):
		}
		// A LAN election takes a few hundred milliseconds; poll often
		// enough to find the new leader soon after.
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// Controller returns a ControllerService client on the leader's connection
// for one call; see Do.
func Controller(cc *grpc.ClientConn) qkdv1.ControllerServiceClient {
	return qkdv1.NewControllerServiceClient(cc)
}

// Cluster returns a ClusterService client on cc.
func Cluster(cc *grpc.ClientConn) qkdv1.ClusterServiceClient {
	return qkdv1.NewClusterServiceClient(cc)
}

// Network returns a NetworkService client on cc.
func Network(cc *grpc.ClientConn) qkdv1.NetworkServiceClient {
	return qkdv1.NewNetworkServiceClient(cc)
}
