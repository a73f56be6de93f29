package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustCA(t *testing.T, dir string) *CA {
	t.Helper()
	ca, err := InitCA(dir)
	if err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	return ca
}

func TestIdentityRoundTrip(t *testing.T) {
	ca := mustCA(t, filepath.Join(t.TempDir(), "pki"))
	nf, err := ca.IssueNode("A", net.ParseIP("10.1.2.3"))
	if err != nil {
		t.Fatal(err)
	}
	sf, err := ca.IssueSAE("SAE_A")
	if err != nil {
		t.Fatal(err)
	}
	cf, err := ca.IssueController("c1")
	if err != nil {
		t.Fatal(err)
	}
	of, err := ca.IssueOperator("alice")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		f     Files
		want  Identity
		usage x509.ExtKeyUsage
	}{
		{nf, Identity{KindNode, "A"}, x509.ExtKeyUsageServerAuth},
		{nf, Identity{KindNode, "A"}, x509.ExtKeyUsageClientAuth},
		{sf, Identity{KindSAE, "SAE_A"}, x509.ExtKeyUsageClientAuth},
		{cf, Identity{KindController, "c1"}, x509.ExtKeyUsageServerAuth},
		{cf, Identity{KindController, "c1"}, x509.ExtKeyUsageClientAuth},
		{of, Identity{KindOperator, "alice"}, x509.ExtKeyUsageClientAuth},
	} {
		c, err := ReadCertificate(tc.f.Cert)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Identify(c)
		if err != nil || got != tc.want {
			t.Errorf("Identify(%s) = %v, %v; want %v", tc.f.Cert, got, err, tc.want)
		}
		pool := x509.NewCertPool()
		pool.AddCert(ca.Cert)
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s does not verify for usage %v: %v", tc.f.Cert, tc.usage, err)
		}
	}
	// A node certificate must verify for the loopback names clients dial.
	c, _ := ReadCertificate(nf.Cert)
	for _, host := range []string{"localhost", "127.0.0.1", "::1", "10.1.2.3"} {
		if err := c.VerifyHostname(host); err != nil {
			t.Errorf("node cert does not cover %s: %v", host, err)
		}
	}
	// An SAE certificate must not be usable as a server certificate.
	sc, _ := ReadCertificate(sf.Cert)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := sc.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("SAE certificate verifies as a server certificate")
	}
	// Nor an operator certificate.
	oc, _ := ReadCertificate(of.Cert)
	if _, err := oc.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("operator certificate verifies as a server certificate")
	}
	if got := filepath.Base(cf.Cert); got != "controller_c1.pem" {
		t.Errorf("controller cert file = %s, want controller_c1.pem", got)
	}
	if got := filepath.Base(sf.Cert); got != "sae_a.pem" {
		t.Errorf("SAE cert file = %s, want sae_a.pem", got)
	}
	if got := filepath.Base(nf.Key); got != "node_a-key.pem" {
		t.Errorf("node key file = %s, want node_a-key.pem", got)
	}
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca := mustCA(t, dir)
	nf, err := ca.IssueNode("B")
	if err != nil {
		t.Fatal(err)
	}
	sf, err := ca.IssueSAE("SAE_B")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := st.Mode().Perm(); m != 0o700 {
		t.Errorf("dir mode %o, want 700", m)
	}
	for _, k := range []string{ca.Files().Key, nf.Key, sf.Key} {
		st, err := os.Stat(k)
		if err != nil {
			t.Fatal(err)
		}
		if m := st.Mode().Perm(); m != 0o600 {
			t.Errorf("%s mode %o, want 600", filepath.Base(k), m)
		}
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("leftover temporary file %s", e.Name())
		}
	}
}

func TestReuse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca := mustCA(t, dir)
	nf, _ := ca.IssueNode("A")
	sf, _ := ca.IssueSAE("SAE_A")
	snap := map[string][]byte{}
	for _, p := range []string{ca.Files().Cert, ca.Files().Key, nf.Cert, nf.Key, sf.Cert, sf.Key} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		snap[p] = b
	}

	ca2 := mustCA(t, dir)
	if !ca2.Cert.Equal(ca.Cert) {
		t.Fatal("second InitCA made a new CA")
	}
	if _, err := ca2.IssueNode("A"); err != nil {
		t.Fatal(err)
	}
	if _, err := ca2.IssueSAE("SAE_A"); err != nil {
		t.Fatal(err)
	}
	for p, b := range snap {
		now, _ := os.ReadFile(p)
		if !bytes.Equal(now, b) {
			t.Errorf("%s was rewritten on the second run", filepath.Base(p))
		}
	}

	// Asking for an IP the certificate lacks re-issues it.
	if _, err := ca2.IssueNode("A", net.ParseIP("192.0.2.7")); err != nil {
		t.Fatal(err)
	}
	c, _ := ReadCertificate(nf.Cert)
	if err := c.VerifyHostname("192.0.2.7"); err != nil {
		t.Errorf("re-issued node cert lacks the new IP: %v", err)
	}

	// A certificate signed by another CA is replaced.
	other := mustCA(t, filepath.Join(t.TempDir(), "other"))
	of, _ := other.IssueSAE("SAE_A")
	for _, p := range [][2]string{{of.Cert, sf.Cert}, {of.Key, sf.Key}} {
		b, _ := os.ReadFile(p[0])
		if err := os.WriteFile(p[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ca2.IssueSAE("SAE_A"); err != nil {
		t.Fatal(err)
	}
	c, _ = ReadCertificate(sf.Cert)
	if err := c.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("foreign certificate was not replaced: %v", err)
	}
}

func TestBrokenCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	mustCA(t, dir)
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	_, err := InitCA(dir)
	if err == nil || !strings.Contains(err.Error(), "only one of") {
		t.Fatalf("InitCA with a missing key: %v, want an error saying so", err)
	}
	if _, err := LoadCA(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no CA") {
		t.Fatalf("LoadCA of an empty dir: %v", err)
	}
}

func TestBadIDs(t *testing.T) {
	ca := mustCA(t, filepath.Join(t.TempDir(), "pki"))
	for _, id := range []string{"", "a/b", "../x", "-x", "a b", strings.Repeat("x", 65)} {
		if _, err := ca.IssueSAE(id); err == nil {
			t.Errorf("IssueSAE(%q) succeeded", id)
		}
		if _, err := ca.IssueNode(id); err == nil {
			t.Errorf("IssueNode(%q) succeeded", id)
		}
	}
}

// TestMutualTLS runs a handshake between ServerTLS and ClientTLS and checks
// who is accepted and what identity the server sees.
func TestMutualTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca := mustCA(t, dir)
	nf, _ := ca.IssueNode("A")
	sf, _ := ca.IssueSAE("SAE_A")
	other := mustCA(t, filepath.Join(t.TempDir(), "other"))
	of, _ := other.IssueSAE("SAE_X")
	caFile := ca.Files().Cert

	srvCfg, err := ServerTLS(caFile, nf.Cert, nf.Key, tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	if srvCfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("server MinVersion %x", srvCfg.MinVersion)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ids := make(chan string, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				tc := c.(*tls.Conn)
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if err := tc.Handshake(); err != nil {
					ids <- "error"
					return
				}
				id, err := PeerIdentity(tc.ConnectionState())
				if err != nil {
					ids <- "error"
					return
				}
				ids <- id.String()
				io.WriteString(c, "ok")
			}(c)
		}
	}()

	dial := func(cfg *tls.Config) (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), cfg)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// In TLS 1.3 the client finishes before the server checks its
		// certificate; reading surfaces the server's verdict.
		b := make([]byte, 2)
		_, err = io.ReadFull(c, b)
		return <-ids, err
	}

	for _, tc := range []struct {
		name       string
		cert, key  string
		wantID     string
		wantReject bool
	}{
		{"SAE", sf.Cert, sf.Key, "sae:SAE_A", false},
		{"node", nf.Cert, nf.Key, "node:A", false},
		{"foreign CA", of.Cert, of.Key, "", true},
		{"no cert", "", "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ClientTLS(caFile, tc.cert, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			id, err := dial(cfg)
			if tc.wantReject {
				if err == nil {
					t.Fatalf("accepted as %s", id)
				}
				return
			}
			if err != nil || id != tc.wantID {
				t.Fatalf("got %q, %v; want %q", id, err, tc.wantID)
			}
		})
	}

	// A client trusting another CA refuses our server.
	cfg, _ := ClientTLS(other.Files().Cert, of.Cert, of.Key)
	if c, err := tls.Dial("tcp", ln.Addr().String(), cfg); err == nil {
		c.Close()
		t.Error("client accepted a server signed by an unknown CA")
	}
	<-ids // the server side of that failed handshake

	if _, err := ClientTLS(filepath.Join(dir, "missing.pem"), "", ""); err == nil {
		t.Error("ClientTLS with a missing CA file succeeded")
	}
	if _, err := ServerTLS(caFile, sf.Cert, nf.Key, tls.RequireAndVerifyClientCert); err == nil {
		t.Error("ServerTLS with a mismatched key succeeded")
	}
}
