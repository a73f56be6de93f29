package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/agent/gateway"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/testbed"
)

// fakeNet stands in for a two-node testbed: KMMs A and B behind the real
// ETSI 014 gateway over mutual TLS, sharing one key table as if their stores
// were perfectly synchronised. SAE_A<i> on A is the master of SAE_B<i> on B.
// It checks what a KMM would (who may fetch which key) and can be told to
// misbehave.
type fakeNet struct {
	mu        sync.Mutex
	keys      map[string]fakeKey // guarded by mu
	serial    int                // guarded by mu
	notEnough int                // enc_keys answers still to refuse with 503; guarded by mu
	corrupt   bool               // dec_keys flips a bit of its first key
	encErr    error              // every enc_keys fails with this

	servers []*http.Server
}

type fakeKey struct {
	master, slave string
	bits          []byte
}

// fakeKMM is one node's KeyService.
type fakeKMM struct {
	qkdv1.UnimplementedKeyServiceServer
	net  *fakeNet
	node string
}

func (k *fakeKMM) caller(ctx context.Context) (string, error) {
	id, err := pki.Caller(ctx)
	if err != nil {
		return "", status.Error(codes.Unauthenticated, err.Error())
	}
	// SAE_A<i> belongs to node A, SAE_B<i> to node B.
	if !strings.HasPrefix(id.ID, "SAE_"+k.node) {
		return "", status.Errorf(codes.PermissionDenied, "%s is not attached to node %s", id.ID, k.node)
	}
	return id.ID, nil
}

func (k *fakeKMM) GetStatus(ctx context.Context, req *qkdv1.GetStatusRequest) (*qkdv1.Status, error) {
	if _, err := k.caller(ctx); err != nil {
		return nil, err
	}
	return &qkdv1.Status{StoredKeyCount: 1 << 20, MaxKeyCount: 1 << 20, KeySize: 256}, nil
}

func (k *fakeKMM) GetKey(ctx context.Context, req *qkdv1.GetKeyRequest) (*qkdv1.KeyContainer, error) {
	master, err := k.caller(ctx)
	if err != nil {
		return nil, err
	}
	if want := "SAE_B" + strings.TrimPrefix(master, "SAE_A"); req.GetSlaveSaeId() != want {
		return nil, status.Errorf(codes.Unauthenticated, "%s is not the slave of %s", req.GetSlaveSaeId(), master)
	}
	n := k.net
	if n.encErr != nil {
		return nil, n.encErr
	}
	number, size := max(int(req.GetNumber()), 1), int(req.GetSize())
	if size == 0 {
		size = 256
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.notEnough > 0 {
		n.notEnough--
		return nil, status.Error(codes.Unavailable, "not enough keys for this pair right now")
	}
	kc := &qkdv1.KeyContainer{}
	for range number {
		n.serial++
		id := fmt.Sprintf("00000000-0000-4000-8000-%012d", n.serial)
		bits := make([]byte, size/8)
		rand.Read(bits)
		n.keys[id] = fakeKey{master: master, slave: req.GetSlaveSaeId(), bits: bits}
		kc.Keys = append(kc.Keys, &qkdv1.Key{KeyId: id, Key: append([]byte(nil), bits...)})
	}
	return kc, nil
}

func (k *fakeKMM) GetKeyWithKeyIDs(ctx context.Context, req *qkdv1.GetKeyWithKeyIDsRequest) (*qkdv1.KeyContainer, error) {
	slave, err := k.caller(ctx)
	if err != nil {
		return nil, err
	}
	n := k.net
	n.mu.Lock()
	defer n.mu.Unlock()
	kc := &qkdv1.KeyContainer{}
	for _, ref := range req.GetKeyIds() {
		key, ok := n.keys[ref.GetKeyId()]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "unknown key_ID %s", ref.GetKeyId())
		}
		if key.slave != slave || key.master != req.GetMasterSaeId() {
			return nil, status.Errorf(codes.Unauthenticated, "key %s is not for %s from %s", ref.GetKeyId(), slave, req.GetMasterSaeId())
		}
		delete(n.keys, ref.GetKeyId())
		kc.Keys = append(kc.Keys, &qkdv1.Key{KeyId: ref.GetKeyId(), Key: key.bits})
	}
	if n.corrupt && len(kc.Keys) > 0 {
		kc.Keys[0].Key[0] ^= 1
	}
	return kc, nil
}

// start serves KMMs A and B on loopback with a fresh PKI in dir and writes
// dir/endpoints.json for pairs SAE pairs, with paths relative to dir as
// qkdnet writes them.
func (n *fakeNet) start(dir string, pairs int) error {
	n.keys = map[string]fakeKey{}
	ca, err := pki.InitCA(filepath.Join(dir, "pki"))
	if err != nil {
		return err
	}
	rel := func(p string) string {
		r, err := filepath.Rel(dir, p)
		if err != nil {
			return p
		}
		return r
	}
	e := testbed.Endpoints{CACert: rel(ca.Files().Cert)}
	for _, node := range []string{"A", "B"} {
		f, err := ca.IssueNode(node)
		if err != nil {
			return err
		}
		cfg, err := pki.ServerTLS(ca.Files().Cert, f.Cert, f.Key, tls.VerifyClientCertIfGiven)
		if err != nil {
			return err
		}
		h, err := gateway.New(&fakeKMM{net: n, node: node}, nil)
		if err != nil {
			return err
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: h, TLSConfig: cfg}
		n.servers = append(n.servers, srv)
		go func() { _ = srv.ServeTLS(l, "", "") }()
		e.KMMs = append(e.KMMs, testbed.KMMEntry{Node: node, KMEID: "KME_" + node, URL: "https://" + l.Addr().String()})
		for i := 1; i <= pairs; i++ {
			id := fmt.Sprintf("SAE_%s%d", node, i)
			sf, err := ca.IssueSAE(id)
			if err != nil {
				return err
			}
			e.SAEs = append(e.SAEs, testbed.SAEEntry{SAEID: id, KMM: node, Cert: rel(sf.Cert), Key: rel(sf.Key)})
		}
	}
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	// Written whole and renamed, as a reader may be polling for it.
	tmp := filepath.Join(dir, testbed.EndpointsFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, testbed.EndpointsFile))
}

func (n *fakeNet) close() {
	for _, s := range n.servers {
		if err := s.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "fake KMM close:", err)
		}
	}
}
