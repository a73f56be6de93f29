// Package pki is the project's local public key infrastructure: a CA, node
// certificates and SAE certificates, and the rule that turns a verified peer
// certificate into an identity.
package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Kind is what a certificate identifies.
type Kind string

// The kinds of identity a certificate can carry.
const (
	KindNode       Kind = "node"       // a trusted node (agent, KMM)
	KindSAE        Kind = "sae"        // a secure application entity
	KindController Kind = "controller" // a replica of the QKD SDN controller
	KindOperator   Kind = "operator"   // a person or tool operating the network
)

func (k Kind) known() bool {
	switch k {
	case KindNode, KindSAE, KindController, KindOperator:
		return true
	}
	return false
}

// Identity is who a peer is, as its certificate says.
type Identity struct {
	Kind Kind
	ID   string
}

func (i Identity) String() string { return string(i.Kind) + ":" + i.ID }

// URI is the URI SAN that names an identity in a certificate:
// qkd://node/<node ID>, qkd://sae/<SAE_ID>, qkd://controller/<replica ID>
// or qkd://operator/<name>.
func (i Identity) URI() *url.URL {
	return &url.URL{Scheme: "qkd", Host: string(i.Kind), Path: "/" + i.ID}
}

// ErrNoIdentity means a certificate carries no qkd:// URI SAN.
var ErrNoIdentity = errors.New("certificate carries no qkd:// identity")

// Identify returns the identity in an already verified certificate: its single
// qkd://<kind>/<id> URI SAN.
func Identify(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != "qkd" {
			continue
		}
		id := strings.TrimPrefix(u.Path, "/")
		k := Kind(u.Host)
		if !k.known() || id == "" || strings.Contains(id, "/") {
			return Identity{}, fmt.Errorf("certificate has a malformed identity URI %q", u.String())
		}
		found = append(found, Identity{Kind: k, ID: id})
	}
	switch len(found) {
	case 0:
		return Identity{}, ErrNoIdentity
	case 1:
		return found[0], nil
	default:
		return Identity{}, fmt.Errorf("certificate carries %d qkd:// identities, want one", len(found))
	}
}
