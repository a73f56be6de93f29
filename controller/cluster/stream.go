package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"github.com/qkdnet/qkdnet/pki"
)

// tlsStream is a raft.StreamLayer over mutual TLS: replicas accept and dial
// only peers whose certificate names a controller (qkd://controller/<id>),
// so nothing else can join the Raft conversation or read the log.
type tlsStream struct {
	net.Listener
	advertise net.Addr
	client    *tls.Config
}

// newTLSStream listens on addr. server must require and verify client
// certificates; client must carry this replica's certificate.
func newTLSStream(addr string, server, client *tls.Config) (*tlsStream, error) {
	if server == nil || client == nil {
		return nil, errors.New("cluster: raft transport needs TLS configurations")
	}
	server = server.Clone()
	server.ClientAuth = tls.RequireAndVerifyClientCert
	server.VerifyConnection = controllerOnly
	client = client.Clone()
	client.VerifyConnection = controllerOnly
	ln, err := tls.Listen("tcp", addr, server)
	if err != nil {
		return nil, fmt.Errorf("cluster: raft listen: %w", err)
	}
	return &tlsStream{Listener: ln, advertise: advertised(addr, ln.Addr()), client: client}, nil
}

// advertised is the address other replicas are told to dial: addr itself
// when it names a host (a stable DNS name, such as a StatefulSet Pod's,
// whose IP changes when the Pod is rescheduled: the Raft configuration must
// keep the name), else the address the listener got (an IP literal, or
// port 0 in tests).
func advertised(addr string, bound net.Addr) net.Addr {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "0" || net.ParseIP(host) != nil {
		return bound
	}
	return hostAddr(addr)
}

// hostAddr is a TCP address given by host name.
type hostAddr string

func (a hostAddr) Network() string { return "tcp" }
func (a hostAddr) String() string  { return string(a) }

func controllerOnly(cs tls.ConnectionState) error {
	id, err := pki.PeerIdentity(cs)
	if err != nil {
		return err
	}
	if id.Kind != pki.KindController {
		return fmt.Errorf("raft peer %s is not a controller replica", id)
	}
	return nil
}

// Addr is the address other replicas dial.
func (s *tlsStream) Addr() net.Addr { return s.advertise }

// Dial implements raft.StreamLayer.
func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	cfg := s.client.Clone()
	if host, _, err := net.SplitHostPort(string(address)); err == nil && cfg.ServerName == "" {
		cfg.ServerName = host
	}
	conn, err := tls.DialWithDialer(d, "tcp", string(address), cfg)
	if err != nil {
		return nil, err
	}
	return conn, nil
}
