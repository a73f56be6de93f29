package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// File names inside a PKI directory. Node and SAE files are named by
// NodeFiles and SAEFiles.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

// Validity periods. The PKI is local to a testbed or a lab, so the periods are
// long; a leaf that is about to expire is re-issued by the next Issue call.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 2 * 365 * 24 * time.Hour
	// renewBefore is how close to expiry a reused certificate may be.
	renewBefore = 30 * 24 * time.Hour
)

// idPattern is what node IDs and SAE_IDs may look like. They end up in URI
// SANs and in file names, so only characters safe in both are allowed.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidID reports why id cannot name a node or an SAE, or nil if it can.
func ValidID(id string) error {
	if id == "" {
		return errors.New("id is empty")
	}
	if !idPattern.MatchString(id) {
		return fmt.Errorf("id %q must be 1-64 characters of letters, digits, '_', '.', '-', starting with a letter or digit", id)
	}
	return nil
}

// Files names a certificate and its private key, both PEM.
type Files struct {
	Cert string
	Key  string
}

// NodeFiles are the files of node id in dir: node_<lower id>.pem and
// node_<lower id>-key.pem.
func NodeFiles(dir, id string) Files {
	return leafFiles(dir, "node_", id)
}

// SAEFiles are the files of SAE id in dir: sae_<lower id>.pem and
// sae_<lower id>-key.pem, without doubling the prefix (SAE_A -> sae_a.pem).
func SAEFiles(dir, id string) Files {
	return leafFiles(dir, "sae_", id)
}

func leafFiles(dir, prefix, id string) Files {
	base := strings.ToLower(id)
	if !strings.HasPrefix(base, prefix) {
		base = prefix + base
	}
	return Files{Cert: filepath.Join(dir, base+".pem"), Key: filepath.Join(dir, base+"-key.pem")}
}

// CA is a certificate authority whose key is on local disk.
type CA struct {
	// Dir is the PKI directory that holds ca.pem and ca-key.pem.
	Dir  string
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// CAFiles are the CA's files.
func (ca *CA) Files() Files {
	return Files{Cert: filepath.Join(ca.Dir, CACertFile), Key: filepath.Join(ca.Dir, CAKeyFile)}
}

// InitCA returns the CA in dir, creating dir (0700) and a new self-signed
// ECDSA P-256 CA if there is none. An existing valid CA is reused, so every
// certificate it signed stays valid across restarts. A half-present or
// broken CA is an error rather than silently replaced, since replacing it
// would invalidate every certificate in use.
func InitCA(dir string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	_, errC := os.Stat(certPath)
	_, errK := os.Stat(keyPath)
	switch {
	case errC == nil && errK == nil:
		return LoadCA(dir)
	case errC == nil || errK == nil:
		return nil, fmt.Errorf("pki: %s has only one of %s and %s; remove it to make a new CA", dir, CACertFile, CAKeyFile)
	case !errors.Is(errC, os.ErrNotExist):
		return nil, fmt.Errorf("pki: %w", errC)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "qkdnet local CA", Organization: []string{"qkdnet"}},
		NotBefore:             now.Add(-time.Hour), // tolerate small clock skew between processes
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	// Key first: a cert without its key is the state InitCA refuses to touch,
	// while a lone key left by a crash is detected above and reported too.
	if err := writeKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(certPath, pemBytes("CERTIFICATE", der), 0o644); err != nil {
		return nil, err
	}
	return &CA{Dir: dir, Cert: cert, key: key}, nil
}

// LoadCA reads an existing CA from dir and checks that its key matches and
// that it is still valid.
func LoadCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	cert, err := readCert(certPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pki: no CA in %s (run `qkdnet pki init --dir %s` first)", dir, dir)
		}
		return nil, err
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", certPath)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match %s", keyPath, certPath)
	}
	if time.Now().After(cert.NotAfter) {
		return nil, fmt.Errorf("pki: CA %s expired on %s; remove %s to make a new PKI", certPath, cert.NotAfter.Format(time.DateOnly), dir)
	}
	return &CA{Dir: dir, Cert: cert, key: key}, nil
}

// IssueNode returns node id's certificate files in the CA's directory,
// issuing them if they are missing, not signed by this CA, about to expire,
// or lack a requested IP. The certificate carries the URI SAN qkd://node/<id>,
// DNS SAN localhost and IP SANs 127.0.0.1, ::1 and ips, and serves as both a
// TLS server and a TLS client certificate (KMM peers dial each other).
func (ca *CA) IssueNode(id string, ips ...net.IP) (Files, error) {
	if err := ValidID(id); err != nil {
		return Files{}, fmt.Errorf("pki: node %w", err)
	}
	return ca.issueServer(NodeFiles(ca.Dir, id), Identity{Kind: KindNode, ID: id}, ips)
}

// issueServer issues a certificate that is both a TLS server and a TLS
// client certificate, valid for localhost, the loopback addresses and ips.
func (ca *CA) issueServer(f Files, id Identity, ips []net.IP) (Files, error) {
	all := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, ip := range ips {
		if !slices.ContainsFunc(all, ip.Equal) {
			all = append(all, ip)
		}
	}
	return ca.issue(f, leafSpec{
		id:    id,
		dns:   []string{"localhost"},
		ips:   all,
		usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
}

// IssueSAE returns SAE id's certificate files in the CA's directory, issuing
// them if needed (see IssueNode). The certificate carries the URI SAN
// qkd://sae/<id> and is a TLS client certificate only.
func (ca *CA) IssueSAE(id string) (Files, error) {
	if err := ValidID(id); err != nil {
		return Files{}, fmt.Errorf("pki: SAE %w", err)
	}
	return ca.issue(SAEFiles(ca.Dir, id), leafSpec{
		id:    Identity{Kind: KindSAE, ID: id},
		usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// ControllerFiles are the files of controller replica id in dir:
// controller_<lower id>.pem and controller_<lower id>-key.pem.
func ControllerFiles(dir, id string) Files {
	return leafFiles(dir, "controller_", id)
}

// OperatorFiles are the files of operator id in dir: operator_<lower id>.pem
// and operator_<lower id>-key.pem.
func OperatorFiles(dir, id string) Files {
	return leafFiles(dir, "operator_", id)
}

// IssueController returns controller replica id's certificate files, issuing
// them if needed (see IssueNode). The certificate carries the URI SAN
// qkd://controller/<id> and serves as TLS server and client certificate:
// replicas dial each other for Raft, and agents and operators dial them.
func (ca *CA) IssueController(id string, ips ...net.IP) (Files, error) {
	if err := ValidID(id); err != nil {
		return Files{}, fmt.Errorf("pki: controller %w", err)
	}
	return ca.issueServer(ControllerFiles(ca.Dir, id), Identity{Kind: KindController, ID: id}, ips)
}

// IssueOperator returns operator id's certificate files, issuing them if
// needed. The certificate carries the URI SAN qkd://operator/<id> and is a
// TLS client certificate only: it may manage the network, never fetch keys.
func (ca *CA) IssueOperator(id string) (Files, error) {
	if err := ValidID(id); err != nil {
		return Files{}, fmt.Errorf("pki: operator %w", err)
	}
	return ca.issue(OperatorFiles(ca.Dir, id), leafSpec{
		id:    Identity{Kind: KindOperator, ID: id},
		usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

type leafSpec struct {
	id    Identity
	dns   []string
	ips   []net.IP
	usage []x509.ExtKeyUsage
}

func (ca *CA) issue(f Files, spec leafSpec) (Files, error) {
	if ca.reusable(f, spec) {
		return f, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("pki: %w", err)
	}
	now := time.Now()
	notAfter := now.Add(LeafValidity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: spec.id.ID, OrganizationalUnit: []string{string(spec.id.Kind)}, Organization: []string{"qkdnet"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  spec.usage,
		URIs:         []*url.URL{spec.id.URI()},
		DNSNames:     spec.dns,
		IPAddresses:  spec.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return Files{}, fmt.Errorf("pki: %w", err)
	}
	// Key before certificate: if we crash in between, the pair does not
	// match and the next run re-issues both.
	if err := writeKey(f.Key, key); err != nil {
		return Files{}, err
	}
	if err := writeFileAtomic(f.Cert, pemBytes("CERTIFICATE", der), 0o644); err != nil {
		return Files{}, err
	}
	return f, nil
}

// reusable reports whether f already holds a certificate this CA issued for
// spec, with its matching key, valid for a while yet.
func (ca *CA) reusable(f Files, spec leafSpec) bool {
	cert, err := readCert(f.Cert)
	if err != nil {
		return false
	}
	key, err := readKey(f.Key)
	if err != nil || !key.PublicKey.Equal(cert.PublicKey) {
		return false
	}
	if time.Now().Add(renewBefore).After(cert.NotAfter) {
		return false
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: spec.usage}); err != nil {
		return false
	}
	if id, err := Identify(cert); err != nil || id != spec.id {
		return false
	}
	for _, ip := range spec.ips {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return false
		}
	}
	for _, d := range spec.dns {
		if !slices.Contains(cert.DNSNames, d) {
			return false
		}
	}
	return true
}

// ReadCertificate reads the first certificate of a PEM file.
func ReadCertificate(path string) (*x509.Certificate, error) { return readCert(path) }

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("pki: %s holds no PEM certificate", path)
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("pki: %s: %w", path, err)
			}
			return c, nil
		}
	}
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	defer clear(b)
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("pki: %s holds no PEM key", path)
	}
	defer clear(blk.Bytes)
	var k crypto.PrivateKey
	switch blk.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("pki: %s: unexpected PEM block %q", path, blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("pki: %s is not an ECDSA key", path)
	}
	return ek, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	defer clear(der)
	p := pemBytes("PRIVATE KEY", der)
	defer clear(p)
	return writeFileAtomic(path, p, 0o600)
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeFileAtomic writes b to path through a temporary file in the same
// directory, created with mode from the start so a key is never readable by
// others, not even for a moment.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	ok = true
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n
}
