package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/qkdnet/qkdnet/etsi014client"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/testbed"
)

// TestNoKeyMaterialInLogsOrAtRest runs a real network (three nodes in a
// line, so keys are relayed through B) with every agent and controller
// logging at debug, has SAEs take keys through ETSI 014 (enc_keys and
// dec_keys, GET and POST, direct and relayed) and ETSI 004 (OPEN_CONNECT,
// GET_KEY at both ends, CLOSE), stops it, and then reads every file the
// system wrote under its state dir (logs, key stores, serve logs, Raft logs
// and snapshots, configurations) looking for every delivered key as raw
// bytes, base64 (standard and URL alphabets, padded or not) and hex (lower
// and upper case). Any hit fails: keys are sealed at rest and never logged.
func TestNoKeyMaterialInLogsOrAtRest(t *testing.T) {
	n := upWith(t, testbed.Options{Topology: lineTopology(),
		Args: []string{"agent", "--log-level", "debug"}, ControllerArgs: []string{"controller", "--log-level", "debug"}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var delivered [][]byte
	keep := func(kc *etsi014client.KeyContainer) {
		for _, k := range kc.Keys {
			delivered = append(delivered, append([]byte(nil), k.Bytes...))
		}
	}
	a, b, c := client(t, n, "SAE_A"), client(t, n, "SAE_B"), client(t, n, "SAE_C")
	for _, tc := range []struct {
		m, s          *etsi014client.Client
		master, slave string
		number, size  int
	}{
		{a, b, "SAE_A", "SAE_B", 4, 256},  // one hop
		{b, a, "SAE_B", "SAE_A", 2, 512},  // one hop, B is the link's slave KMM
		{a, c, "SAE_A", "SAE_C", 3, 256},  // relayed through B
		{c, a, "SAE_C", "SAE_A", 1, 1024}, // relayed, several link keys per key
	} {
		kc, err := encKeys(ctx, tc.m, tc.slave, etsi014client.KeyRequest{Number: tc.number, Size: tc.size})
		if err != nil {
			t.Fatalf("enc_keys %s -> %s: %v", tc.master, tc.slave, err)
		}
		keep(kc)
		var ids []string
		for _, k := range kc.Keys {
			ids = append(ids, k.KeyID)
		}
		// One by GET (the key_ID in the query string), the rest by POST.
		dc, err := decKeys(ctx, tc.s, tc.master, ids[0])
		if err != nil {
			t.Fatalf("dec_keys (GET) at %s: %v", tc.slave, err)
		}
		keep(dc)
		if len(ids) > 1 {
			if dc, err = decKeys(ctx, tc.s, tc.master, ids[1:]...); err != nil {
				t.Fatalf("dec_keys (POST) at %s: %v", tc.slave, err)
			}
			keep(dc)
		}
	}

	// ETSI 004 between SAE_B and SAE_C (a pair 014 has not used: a
	// stream is the same object for both, named after the pair).
	ka, kb := ksClient(t, n, "SAE_B"), ksClient(t, n, "SAE_C")
	open, err := ka.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_B"), Destination: uri("SAE_C"), Qos: &qkdv1.KeyStreamQoS{KeyChunkSize: 32, Timeout: 5000}})
	if err != nil || open.GetKeyStreamId() == "" {
		t.Fatalf("OPEN_CONNECT at B: %v, %v", open, err)
	}
	id := open.GetKeyStreamId()
	if r, err := kb.OpenConnect(ctx, &qkdv1.OpenConnectRequest{Source: uri("SAE_C"), Destination: uri("SAE_B"), KeyStreamId: id, Qos: &qkdv1.KeyStreamQoS{Timeout: 5000}}); err != nil || r.GetStatus() != 0 {
		t.Fatalf("OPEN_CONNECT at C: %v, %v", r, err)
	}
	for i := range uint32(3) {
		for _, cl := range []qkdv1.KeyStreamServiceClient{ka, kb} {
			r, err := cl.GetStreamKey(ctx, &qkdv1.GetStreamKeyRequest{KeyStreamId: id, Index: proto.Uint32(i), MetadataSize: 256})
			if err != nil || r.GetStatus() != 0 || len(r.GetKeyBuffer()) != 32 {
				t.Fatalf("GET_KEY %d: %v, %v", i, r, err)
			}
			delivered = append(delivered, r.GetKeyBuffer())
		}
	}
	for _, cl := range []qkdv1.KeyStreamServiceClient{ka, kb} {
		if _, err := cl.CloseStream(ctx, &qkdv1.CloseStreamRequest{KeyStreamId: id}); err != nil {
			t.Fatalf("CLOSE: %v", err)
		}
	}

	// Stopping flushes every log and closes every store.
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	var needles []struct {
		form string
		b    []byte
	}
	for _, k := range delivered {
		if len(k) < 16 {
			t.Fatalf("a delivered key of %d bytes is too short to look for", len(k))
		}
		for form, s := range map[string]string{
			"base64": base64.StdEncoding.EncodeToString(k), "base64 unpadded": base64.RawStdEncoding.EncodeToString(k),
			"base64url": base64.URLEncoding.EncodeToString(k), "base64url unpadded": base64.RawURLEncoding.EncodeToString(k),
			"hex": hex.EncodeToString(k), "HEX": strings.ToUpper(hex.EncodeToString(k)),
		} {
			needles = append(needles, struct {
				form string
				b    []byte
			}{form, []byte(s)})
		}
		needles = append(needles, struct {
			form string
			b    []byte
		}{"raw bytes", k})
	}
	var files, logs []string
	debugLines := 0
	err = filepath.WalkDir(n.StateDir(), func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		files = append(files, p)
		content, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(n.StateDir(), p)
		for _, nd := range needles {
			if i := bytes.Index(content, nd.b); i >= 0 {
				t.Errorf("%s holds a delivered key (%s) at byte %d", rel, nd.form, i)
				break
			}
		}
		if strings.HasSuffix(p, "agent.log") || strings.HasSuffix(p, "controller.log") {
			logs = append(logs, rel)
			debugLines += bytes.Count(content, []byte("level=DEBUG"))
		}
		// The node's secrets and its keys (sealed) are for the agent only.
		if base := filepath.Base(p); base == "kek" || strings.HasSuffix(base, ".db") || strings.HasPrefix(base, "served-") {
			if info, err := d.Info(); err == nil && info.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", rel, info.Mode().Perm())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The scan must have had something to look at: the logs of three
	// agents and three controller replicas, at debug.
	if len(logs) < 6 || debugLines == 0 {
		t.Fatalf("scanned %d files, logs %v with %d debug lines; want 6 logs at debug level", len(files), logs, debugLines)
	}
	t.Logf("%d delivered keys looked for in %d forms in %d files (%d debug log lines)", len(delivered), 7, len(files), debugLines)
}
