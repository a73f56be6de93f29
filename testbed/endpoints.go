// Package testbed starts a local QKD network on loopback: one agent process
// per node, from a topology file, and describes it in endpoints.json.
package testbed

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// EndpointsFile is the name of the file, in the state dir, that tells scripts
// where every part of a running testbed is.
const EndpointsFile = "endpoints.json"

// Endpoints is the contract of endpoints.json. Paths are relative to the
// file's folder. Fields may be added; none may be renamed.
type Endpoints struct {
	CACert string     `json:"ca_cert"`
	KMMs   []KMMEntry `json:"kmms"`
	SAEs   []SAEEntry `json:"saes"`
	// Controllers are the controller replicas (absent without a controller).
	Controllers []ControllerEntry `json:"controllers,omitempty"`
	// Operator is a certificate for qkdctl and other operator tools.
	Operator *CertEntry `json:"operator,omitempty"`
	// Dashboard is the URL of the live network page (served by the first
	// controller replica, which leads after a fresh start).
	Dashboard string `json:"dashboard,omitempty"`
}

// ControllerEntry is one controller replica.
type ControllerEntry struct {
	ID   string `json:"id"`
	GRPC string `json:"grpc"`
	Raft string `json:"raft"`
	// GNMI serves gNMI (the same port as GRPC).
	GNMI    string `json:"gnmi"`
	Metrics string `json:"metrics,omitempty"`
}

// CertEntry is a client certificate and its key.
type CertEntry struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// ControllerAddrs are the gRPC addresses of the controller replicas.
func (e Endpoints) ControllerAddrs() []string {
	var out []string
	for _, c := range e.Controllers {
		out = append(out, c.GRPC)
	}
	return out
}

// KMMEntry is one node's KMM.
type KMMEntry struct {
	Node    string `json:"node"`
	KMEID   string `json:"kme_id"`
	URL     string `json:"url"`
	GRPC    string `json:"grpc"`
	Metrics string `json:"metrics"`
	// GNMI serves the node's own ETSI 015 tree (the gRPC port; with a
	// controller only).
	GNMI string `json:"gnmi,omitempty"`
}

// SAEEntry is one SAE with its client certificate.
type SAEEntry struct {
	SAEID string `json:"sae_id"`
	KMM   string `json:"kmm"`
	Cert  string `json:"cert"`
	Key   string `json:"key"`
}

// ReadEndpoints reads <dir>/endpoints.json and makes its paths absolute.
func ReadEndpoints(dir string) (Endpoints, error) {
	var e Endpoints
	b, err := os.ReadFile(filepath.Join(dir, EndpointsFile))
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("%s: %w", filepath.Join(dir, EndpointsFile), err)
	}
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	e.CACert = abs(e.CACert)
	for i := range e.SAEs {
		e.SAEs[i].Cert = abs(e.SAEs[i].Cert)
		e.SAEs[i].Key = abs(e.SAEs[i].Key)
	}
	if e.Operator != nil {
		e.Operator = &CertEntry{Cert: abs(e.Operator.Cert), Key: abs(e.Operator.Key)}
	}
	return e, nil
}

// KMM returns the entry of the given node.
func (e Endpoints) KMM(node string) (KMMEntry, bool) {
	for _, k := range e.KMMs {
		if k.Node == node {
			return k, true
		}
	}
	return KMMEntry{}, false
}

// SAE returns the entry of the given SAE.
func (e Endpoints) SAE(id string) (SAEEntry, bool) {
	for _, s := range e.SAEs {
		if s.SAEID == id {
			return s, true
		}
	}
	return SAEEntry{}, false
}
