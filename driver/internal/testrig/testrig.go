// Package testrig holds what the driver packages' tests share: in-memory and
// mutual-TLS gRPC plumbing, a recording sink, and polling helpers.
package testrig

import (
	"context"
	"crypto/tls"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/qkdnet/qkdnet/driver"
	"github.com/qkdnet/qkdnet/driver/internal/testcerts"
	"github.com/qkdnet/qkdnet/pki"
)

// fastReconnect makes a client reconnect within milliseconds after a server
// restart, instead of gRPC's default second or more. MinConnectTimeout must
// be set with it: left zero, a connection attempt gets only the backoff's
// 5 ms to finish its handshake, and on a busy machine gRPC closes the new
// connection under the first stream ("transport is closing", Unavailable).
var fastReconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.5, MaxDelay: 50 * time.Millisecond},
	MinConnectTimeout: 5 * time.Second,
})

// Serve serves what register puts on a new in-memory gRPC server until the
// test ends, and returns its listener.
func Serve(t testing.TB, register func(grpc.ServiceRegistrar), opts ...grpc.ServerOption) (*bufconn.Listener, *grpc.Server) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(opts...)
	register(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis, srv
}

// Dial connects, without TLS, through whatever listener lis returns at each
// dial, so that a test can swap servers. The connection closes when the test
// ends.
func Dial(t testing.TB, lis func() *bufconn.Listener, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append(opts,
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis().DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		fastReconnect,
	)
	conn, err := grpc.NewClient("passthrough:///bufnet", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// ServeDial is Serve then Dial.
func ServeDial(t testing.TB, register func(grpc.ServiceRegistrar), opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	lis, _ := Serve(t, register)
	return Dial(t, func() *bufconn.Listener { return lis }, opts...)
}

// Node is the identity of node id.
func Node(id string) pki.Identity { return pki.Identity{Kind: pki.KindNode, ID: id} }

// ServeTLS serves what register puts on a mutual-TLS gRPC server on 127.0.0.1
// presenting id's certificate, and returns its address.
func ServeTLS(t testing.TB, ca *testcerts.CA, id pki.Identity, register func(grpc.ServiceRegistrar)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLS(ca.Issue(t, id)))))
	register(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// DialTLS connects to addr over mutual TLS presenting cert.
func DialTLS(t testing.TB, ca *testcerts.CA, cert tls.Certificate, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ca.ClientTLS(cert))), fastReconnect)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Collector is a sink that keeps what it accepted.
type Collector struct {
	mu   sync.Mutex
	keys []driver.Key
}

// Sink accepts keys.
func (c *Collector) Sink(_ context.Context, keys []driver.Key) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keys = append(c.keys, keys...)
	return nil
}

// Keys returns what was accepted so far.
func (c *Collector) Keys() []driver.Key {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.keys)
}

// Len counts what was accepted so far.
func (c *Collector) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.keys)
}

// Start Runs d in a goroutine; stop cancels it and returns what Run returned.
// It is stopped when the test ends at the latest.
func Start(t testing.TB, d driver.Driver, sink driver.Sink) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, sink) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return within 10s of its context ending")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// Eventually polls cond every few milliseconds, failing after 10 s.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// SamePrefix fails unless a and b agree on their common length and neither
// holds a key_ID twice.
func SamePrefix(t testing.TB, a, b []driver.Key) {
	t.Helper()
	for i := range min(len(a), len(b)) {
		if a[i].ID != b[i].ID || string(a[i].Bytes) != string(b[i].Bytes) {
			t.Fatalf("key %d differs: %s vs %s", i, a[i].ID, b[i].ID)
		}
	}
	for _, keys := range [][]driver.Key{a, b} {
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k.ID] {
				t.Fatalf("key_ID %s delivered twice", k.ID)
			}
			seen[k.ID] = true
		}
	}
}
