// Package e2e tests the whole testbed through its real binaries: one agent
// OS process per node, talking gRPC and HTTPS over mutual TLS on loopback.
package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/etsi014client"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/testbed"
)

var qkdnetBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qkdnet-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	qkdnetBin = filepath.Join(dir, "qkdnet")
	args := []string{"build", "-o", qkdnetBin}
	if os.Getenv("QKDNET_E2E_RACE") != "" {
		// The agents and controllers themselves under the race detector.
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "github.com/qkdnet/qkdnet/cmd/qkdnet")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build qkdnet:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// up starts a network of its own, with a 3-replica controller, in a temp
// state dir on free ports.
func up(t *testing.T, keyRate float64) *testbed.Network {
	return upWith(t, testbed.Options{KeyRate: keyRate})
}

func upWith(t testing.TB, o testbed.Options) *testbed.Network {
	t.Helper()
	nodes := 2
	if o.Topology != nil {
		nodes = len(o.Topology.Nodes)
	}
	base, err := testbed.FreeBasePort(nodes)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	o.StateDir = t.TempDir()
	o.BasePort = base
	o.Executable = qkdnetBin
	if o.Controllers == 0 {
		o.Controllers = 3
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if os.Getenv("QKDNET_E2E_RACE") != "" {
		// A data race kills the process, and so fails the test.
		o.Env = append(o.Env, "GORACE=halt_on_error=1")
	}
	n, err := testbed.Up(ctx, o)
	if err != nil {
		t.Fatalf("testbed up: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return n
}

// client returns an ETSI 014 client for an SAE of the running network.
func client(t *testing.T, n *testbed.Network, sae string) *etsi014client.Client {
	return clientTB(t, n, sae)
}

func clientTB(t testing.TB, n *testbed.Network, sae string) *etsi014client.Client {
	t.Helper()
	ep := n.Endpoints()
	s, ok := ep.SAE(sae)
	if !ok {
		t.Fatalf("no SAE %s in endpoints.json", sae)
	}
	k, ok := ep.KMM(s.KMM)
	if !ok {
		t.Fatalf("no KMM %s in endpoints.json", s.KMM)
	}
	c, err := etsi014client.NewFromFiles(k.URL, ep.CACert, s.Cert, s.Key, etsi014client.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// encKeys retries while the KME answers 503 (no key yet), bounded by ctx.
func encKeys(ctx context.Context, c *etsi014client.Client, slave string, req etsi014client.KeyRequest) (*etsi014client.KeyContainer, error) {
	kc, err := retry503(ctx, func() (*etsi014client.KeyContainer, error) { return c.EncKeys(ctx, slave, req) })
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("%w (last: %v)", ctx.Err(), err)
	}
	return kc, err
}

// retry503 calls f until the KME answers anything but 503 (no key yet, a
// relayed key still on its way) or ctx ends; it returns the last answer.
func retry503[T any](ctx context.Context, f func() (T, error)) (T, error) {
	for {
		v, err := f()
		if etsi014client.StatusCode(err) != http.StatusServiceUnavailable {
			return v, err
		}
		select {
		case <-ctx.Done():
			var zero T
			return zero, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestEndToEnd(t *testing.T) {
	n := up(t, 500)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("endpoints.json contract", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(n.StateDir(), "endpoints.json"))
		if err != nil {
			t.Fatal(err)
		}
		var raw map[string]any
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"ca_cert", "kmms", "saes"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("endpoints.json lacks %q", k)
			}
		}
		kmms := raw["kmms"].([]any)
		for _, k := range []string{"node", "kme_id", "url", "grpc", "metrics"} {
			if _, ok := kmms[0].(map[string]any)[k]; !ok {
				t.Errorf("kmms[0] lacks %q", k)
			}
		}
		saes := raw["saes"].([]any)
		for _, k := range []string{"sae_id", "kmm", "cert", "key"} {
			if _, ok := saes[0].(map[string]any)[k]; !ok {
				t.Errorf("saes[0] lacks %q", k)
			}
		}
	})

	a, b := client(t, n, "SAE_A"), client(t, n, "SAE_B")

	t.Run("both directions, several sizes", func(t *testing.T) {
		for _, tc := range []struct {
			desc          string
			master, slave *etsi014client.Client
			slaveID       string
			masterID      string
			number, size  int
		}{
			{"A to B, default", a, b, "SAE_B", "SAE_A", 0, 0},
			{"A to B, 4 keys of 512 bits", a, b, "SAE_B", "SAE_A", 4, 512},
			{"A to B, 8 bits", a, b, "SAE_B", "SAE_A", 1, 8},
			{"B to A (B is the link's slave KMM)", b, a, "SAE_A", "SAE_B", 3, 256},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				kc, err := encKeys(ctx, tc.master, tc.slaveID, etsi014client.KeyRequest{Number: tc.number, Size: tc.size})
				if err != nil {
					t.Fatal(err)
				}
				wantN, wantBytes := max(tc.number, 1), 32
				if tc.size != 0 {
					wantBytes = tc.size / 8
				}
				if len(kc.Keys) != wantN {
					t.Fatalf("got %d keys, want %d", len(kc.Keys), wantN)
				}
				var ids []string
				for _, k := range kc.Keys {
					if len(k.Bytes) != wantBytes {
						t.Errorf("key %s has %d bytes, want %d", k.KeyID, len(k.Bytes), wantBytes)
					}
					ids = append(ids, k.KeyID)
				}
				dc, err := tc.slave.DecKeys(ctx, tc.masterID, ids...)
				if err != nil {
					t.Fatal(err)
				}
				for i := range kc.Keys {
					if dc.Keys[i].KeyID != kc.Keys[i].KeyID || !bytes.Equal(dc.Keys[i].Bytes, kc.Keys[i].Bytes) {
						t.Errorf("key %d differs between master and slave", i)
					}
				}
				// Served once: a second dec_keys of the same key is refused.
				if _, err := tc.slave.DecKeys(ctx, tc.masterID, ids[0]); etsi014client.StatusCode(err) != http.StatusBadRequest {
					t.Errorf("second dec_keys: got %v, want HTTP 400", err)
				}
			})
		}
	})

	t.Run("status", func(t *testing.T) {
		st, err := a.Status(ctx, "SAE_B")
		if err != nil {
			t.Fatal(err)
		}
		if st.SourceKMEID != "KME_A" || st.TargetKMEID != "KME_B" || st.MasterSAEID != "SAE_A" || st.SlaveSAEID != "SAE_B" || st.KeySize != 256 || st.MaxSAEIDCount != 0 {
			t.Errorf("status = %+v", st)
		}
	})

	ep := n.Endpoints()
	kA, _ := ep.KMM("A")
	t.Run("HTTP errors", func(t *testing.T) {
		saeA, _ := ep.SAE("SAE_A")
		saeB, _ := ep.SAE("SAE_B")
		noCert, err := pki.ClientTLS(ep.CACert, "", "")
		if err != nil {
			t.Fatal(err)
		}
		withA, err := pki.ClientTLS(ep.CACert, saeA.Cert, saeA.Key)
		if err != nil {
			t.Fatal(err)
		}
		withB, err := pki.ClientTLS(ep.CACert, saeB.Cert, saeB.Key)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			desc         string
			tls          *http.Transport
			method, path string
			body         string
			want         int
		}{
			{"no client certificate", &http.Transport{TLSClientConfig: noCert}, "GET", "/api/v1/keys/SAE_B/status", "", 401},
			{"SAE of node B at KME A", &http.Transport{TLSClientConfig: withB}, "GET", "/api/v1/keys/SAE_A/status", "", 401},
			{"size not a multiple of 8", &http.Transport{TLSClientConfig: withA}, "POST", "/api/v1/keys/SAE_B/enc_keys", `{"number":1,"size":7}`, 400},
			{"malformed JSON", &http.Transport{TLSClientConfig: withA}, "POST", "/api/v1/keys/SAE_B/enc_keys", `{"number":`, 400},
			{"multicast", &http.Transport{TLSClientConfig: withA}, "POST", "/api/v1/keys/SAE_B/enc_keys", `{"additional_slave_SAE_IDs":["SAE_X"]}`, 400},
			{"unknown key_ID", &http.Transport{TLSClientConfig: withA}, "GET", "/api/v1/keys/SAE_B/dec_keys?key_ID=00000000-0000-8000-8000-000000000000", "", 400},
			{"unknown slave", &http.Transport{TLSClientConfig: withA}, "GET", "/api/v1/keys/SAE_NOPE/enc_keys", "", 400},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				hc := &http.Client{Transport: tc.tls, Timeout: 10 * time.Second}
				defer tc.tls.CloseIdleConnections()
				var body io.Reader
				if tc.body != "" {
					body = strings.NewReader(tc.body)
				}
				req, _ := http.NewRequestWithContext(ctx, tc.method, kA.URL+tc.path, body)
				if body != nil {
					req.Header.Set("Content-Type", "application/json")
				}
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var e struct {
					Message string `json:"message"`
				}
				if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
					t.Fatalf("body is not an ETSI error object: %v", err)
				}
				if resp.StatusCode != tc.want || e.Message == "" {
					t.Errorf("got HTTP %d %q, want %d with a message", resp.StatusCode, e.Message, tc.want)
				}
			})
		}
	})

	t.Run("metrics", func(t *testing.T) {
		b := scrape(t, kA.Metrics)
		for _, want := range []string{"qkd_kmm_pool_keys", `qkd_kmm_stream_keys_total{event="delivered_enc"`, "qkd_etsi014_requests_total", `qkd_kmm_link_keys_total{event="supplied"`,
			`grpc_server_handling_seconds_bucket{grpc_method="GetStreamKey"`} {
			if !bytes.Contains(b, []byte(want)) {
				t.Errorf("agent metrics lack %s", want)
			}
		}
		// gRPC: the Slave KMMs answered the Master's allocations.
		allocs := 0.0
		for _, k := range n.Endpoints().KMMs {
			b := scrape(t, k.Metrics)
			const series = `grpc_server_handled_total{grpc_code="OK",grpc_method="Allocate",grpc_service="qkd.v1.KeySyncService",grpc_type="unary"} `
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, series); ok {
					f, _ := strconv.ParseFloat(v, 64)
					allocs += f
				}
			}
		}
		if allocs == 0 {
			t.Error("no agent counts a KeySyncService.Allocate call answered OK in grpc_server_handled_total")
		}
		// Every controller replica: Raft state and its gRPC services.
		for _, c := range n.Endpoints().Controllers {
			b := scrape(t, c.Metrics)
			for _, want := range []string{"raft_term", "raft_commit_index", `grpc_server_started_total{grpc_method="Session"`} {
				if !bytes.Contains(b, []byte(want)) {
					t.Errorf("controller %s metrics lack %s", c.ID, want)
				}
			}
		}
	})
}

// scrape reads a Prometheus metrics page.
func scrape(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// served records what each SAE was given, to check the invariants.
type served struct {
	mu  sync.Mutex
	enc map[string][]byte // key_ID → bits, as served to the master SAE
	dec map[string][]byte // key_ID → bits, as served to the slave SAE
	// inflight are keys whose dec_keys got no answer because the slave's
	// agent was killed mid-request: the KME may have served (and erased)
	// them with the answer lost. Delivery is at most once, so these may be
	// gone; every other key must still be there.
	inflight map[string]bool
	dup      []string
}

func (s *served) add(m map[string][]byte, kc *etsi014client.KeyContainer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range kc.Keys {
		if _, ok := m[k.KeyID]; ok {
			s.dup = append(s.dup, k.KeyID)
		}
		m[k.KeyID] = append([]byte(nil), k.Bytes...)
	}
}

// TestCrashUnderLoad kills an agent with SIGKILL while SAEs are fetching keys,
// restarts it, and checks the invariants of DESIGN.md: no key served twice,
// both ends agree on every key, nothing acknowledged lost. It also checks that
// no key bytes reached a log or a key store file in plaintext.
func TestCrashUnderLoad(t *testing.T) {
	n := up(t, 2000)
	a, b := client(t, n, "SAE_A"), client(t, n, "SAE_B")
	s := &served{enc: map[string][]byte{}, dec: map[string][]byte{}, inflight: map[string]bool{}}

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// load runs enc_keys at A and dec_keys at B until stop; requests that fail
	// because an agent is down are simply retried later.
	load := func(stop <-chan struct{}) *sync.WaitGroup {
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
					kc, err := a.EncKeys(rctx, "SAE_B", etsi014client.KeyRequest{Number: 4})
					rcancel()
					if err != nil {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					s.add(s.enc, kc)
					var ids []string
					for _, k := range kc.Keys {
						ids = append(ids, k.KeyID)
					}
					rctx, rcancel = context.WithTimeout(ctx, 5*time.Second)
					dc, err := b.DecKeys(rctx, "SAE_A", ids...)
					rcancel()
					switch {
					case err == nil:
						s.add(s.dec, dc)
					case etsi014client.StatusCode(err) == 0:
						s.mu.Lock()
						for _, id := range ids {
							s.inflight[id] = true
						}
						s.mu.Unlock()
					}
				}
			}()
		}
		return &wg
	}
	waitServed := func(atLeast int) {
		t.Helper()
		for {
			s.mu.Lock()
			got := len(s.enc)
			s.mu.Unlock()
			if got >= atLeast {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("only %d keys served before the deadline, want %d", got, atLeast)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	for _, victim := range []string{"B", "A", "B", "A"} {
		stop := make(chan struct{})
		wg := load(stop)
		s.mu.Lock()
		before := len(s.enc)
		s.mu.Unlock()
		waitServed(before + 200)
		if err := n.Kill(victim); err != nil {
			t.Fatalf("kill %s: %v", victim, err)
		}
		if err := n.Restart(ctx, victim); err != nil {
			t.Fatalf("restart %s: %v", victim, err)
		}
		s.mu.Lock()
		before = len(s.enc)
		s.mu.Unlock()
		waitServed(before + 200)
		close(stop)
		wg.Wait()
	}

	// Every key served to SAE_A must be servable to SAE_B exactly once, with
	// the same bits, even if the crash hit between the two requests.
	var missing []string
	for id := range s.enc {
		if _, ok := s.dec[id]; !ok {
			missing = append(missing, id)
		}
	}
	lostInFlight := 0
	for _, id := range missing {
		dc, err := b.DecKeys(ctx, "SAE_A", id)
		switch {
		case err == nil:
			s.add(s.dec, dc)
		case s.inflight[id] && etsi014client.StatusCode(err) == http.StatusBadRequest:
			lostInFlight++
		default:
			t.Fatalf("key %s acknowledged to SAE_A is lost at B: %v", id, err)
		}
	}
	if len(s.dup) > 0 {
		t.Fatalf("keys served twice: %v", s.dup[:min(len(s.dup), 5)])
	}
	for id, kb := range s.enc {
		if _, ok := s.dec[id]; !ok && s.inflight[id] {
			continue
		}
		if !bytes.Equal(kb, s.dec[id]) {
			t.Fatalf("key %s differs between the two ends", id)
		}
	}
	for id := range s.dec {
		if _, ok := s.enc[id]; !ok {
			t.Fatalf("key %s served to SAE_B was never served to SAE_A", id)
		}
	}
	t.Logf("%d keys served to SAE_A across four SIGKILLs; %d of them lost with a dec_keys answer the crash cut off", len(s.enc), lostInFlight)

	// Secrets: no served key, in any encoding, in any log or store file.
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	var files []string
	filepath.Walk(n.StateDir(), func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() && (strings.HasSuffix(p, ".log") || strings.HasSuffix(p, ".db")) {
			files = append(files, p)
		}
		return nil
	})
	// Two agents (log, key store) and three controller replicas (log,
	// raft.db): key material must not reach the controller either.
	if len(files) < 10 {
		t.Fatalf("found only %v; want the logs and stores of both nodes and all three controller replicas", files)
	}
	for _, f := range files {
		content, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".db") {
			if info, _ := os.Stat(f); info.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", f, info.Mode().Perm())
			}
		}
		for id, kb := range s.enc {
			for _, enc := range [][]byte{kb, []byte(base64.StdEncoding.EncodeToString(kb)), []byte(hex.EncodeToString(kb))} {
				if bytes.Contains(content, enc) {
					t.Fatalf("key %s appears in plaintext in %s", id, f)
				}
			}
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("test ran out of time")
	}
}
