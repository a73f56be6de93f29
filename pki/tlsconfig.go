package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// CertPool reads every certificate in a PEM file into a pool.
func CertPool(caFile string) (*x509.CertPool, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: CA: %w", err)
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: CA %s: %w", caFile, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("pki: CA %s holds no PEM certificate", caFile)
	}
	return pool, nil
}

func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return c, fmt.Errorf("pki: certificate %s / key %s: %w", certFile, keyFile, err)
	}
	return c, nil
}

// ServerTLS is the TLS configuration of a server that presents certFile and
// verifies client certificates against caFile as clientAuth says (use
// tls.RequireAndVerifyClientCert for mutual TLS). TLS 1.2 is the minimum, as
// ETSI GS QKD 014 requires. Callers read the client's identity with Identify
// on the verified chain (or Caller on a gRPC context).
func ServerTLS(caFile, certFile, keyFile string, clientAuth tls.ClientAuthType) (*tls.Config, error) {
	pool, err := CertPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   clientAuth,
	}, nil
}

// ClientTLS is the TLS configuration of a client that presents certFile
// (skipped when certFile and keyFile are both empty) and verifies the server
// against caFile, including the host name or IP it dials: node certificates
// carry localhost, 127.0.0.1 and ::1, so loopback addresses verify. TLS 1.2 is
// the minimum.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, err := CertPool(caFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	if certFile != "" || keyFile != "" {
		cert, err := loadKeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// PeerIdentity returns the identity of the peer of a completed TLS
// connection, from its verified certificate chain.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoClientCert
	}
	return Identify(cs.VerifiedChains[0][0])
}
