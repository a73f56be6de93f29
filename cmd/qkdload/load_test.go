package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// runQkdload runs the command in-process and decodes its --json report.
func runQkdload(t *testing.T, args ...string) (code int, rep reportJSON, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = realMain(append(args, "--json"), &out, &errOut)
	if out.Len() > 0 {
		dec := json.NewDecoder(&out)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			t.Fatalf("stdout is not one JSON report: %v\n%s", err, out.String())
		}
		if dec.More() {
			t.Fatalf("stdout holds more than one JSON value")
		}
	}
	return code, rep, errOut.String()
}

func TestLoad(t *testing.T) {
	const number = 4
	short := []string{"--clients", "4", "--number", "4", "--size", "256", "--warmup", "50ms", "--duration", "300ms", "--single", "100ms"}
	tests := []struct {
		desc      string
		net       *fakeNet // nil: a well-behaved one
		args      []string
		wantCode  int
		check     func(t *testing.T, r reportJSON, stderr string)
		wantProto string
	}{
		{
			desc: "keys match", args: short, wantProto: "HTTP/1.1",
			check: func(t *testing.T, r reportJSON, _ string) {
				if !r.OK || r.Cycles == 0 || r.KeysMatched != r.Cycles*number {
					t.Errorf("ok=%v cycles=%d keys=%d, want ok, cycles > 0, keys = %d*cycles", r.OK, r.Cycles, r.KeysMatched, number)
				}
				if r.KeysPerSecond <= 0 || r.RequestsPerSec <= 0 {
					t.Errorf("keys/s %v, requests/s %v, want > 0", r.KeysPerSecond, r.RequestsPerSec)
				}
				if r.MeasuredSeconds < 0.29 || r.MeasuredSeconds > 0.31 {
					t.Errorf("measured %vs, want the 0.3s asked for", r.MeasuredSeconds)
				}
				for _, name := range []string{"enc_keys", "dec_keys", "enc_keys_single", "dec_keys_single"} {
					l := r.Latency[name]
					if l.N == 0 || l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.Max {
						t.Errorf("latency %s = %+v, want n > 0 and 0 < p50 <= p90 <= p99 <= max", name, l)
					}
				}
				if r.Clients != 4 || r.Pairs != 2 || r.Number != number || r.SizeBits != 256 {
					t.Errorf("report header %+v does not echo the flags", r)
				}
			},
		},
		{
			desc: "HTTP/2", args: append([]string{"--http2"}, short...), wantProto: "HTTP/2.0",
			check: func(t *testing.T, r reportJSON, _ string) {
				if !r.OK || r.Cycles == 0 {
					t.Errorf("ok=%v cycles=%d, want ok and cycles > 0", r.OK, r.Cycles)
				}
			},
		},
		{
			desc: "mismatched bits fail the run", net: &fakeNet{corrupt: true}, args: short, wantCode: 1,
			check: func(t *testing.T, r reportJSON, stderr string) {
				if r.OK || r.Mismatches == 0 || r.KeysMatched != 0 {
					t.Errorf("ok=%v mismatches=%d keys=%d, want a failed run with mismatches and no matched keys", r.OK, r.Mismatches, r.KeysMatched)
				}
				if !strings.Contains(stderr, "MISMATCH") || strings.Count(stderr, "MISMATCH") > maxMismatchLogs {
					t.Errorf("stderr should describe at most %d mismatches:\n%s", maxMismatchLogs, stderr)
				}
			},
		},
		{
			desc: "not enough keys is retried and reported", net: &fakeNet{notEnough: 7}, args: short,
			check: func(t *testing.T, r reportJSON, _ string) {
				if !r.OK || r.NotEnoughKeys != 7 || len(r.Errors) != 0 || r.Cycles == 0 {
					t.Errorf("ok=%v not_enough_keys=%d errors=%v cycles=%d, want ok, 7, none, > 0", r.OK, r.NotEnoughKeys, r.Errors, r.Cycles)
				}
			},
		},
		{
			desc: "a fixed number of requests", args: []string{"--clients", "3", "--number", "2", "--warmup", "0", "--single", "0", "--requests", "25"},
			check: func(t *testing.T, r reportJSON, _ string) {
				if !r.OK || r.Cycles != 25 || r.KeysMatched != 50 || r.EncRequests != 25 || r.DecRequests != 25 {
					t.Errorf("ok=%v cycles=%d keys=%d enc=%d dec=%d, want 25 cycles of 2 keys", r.OK, r.Cycles, r.KeysMatched, r.EncRequests, r.DecRequests)
				}
				if _, ok := r.Latency["enc_keys_single"]; ok {
					t.Error("--single 0 still reported a single-key phase")
				}
			},
		},
		{
			desc: "KMM errors are counted by status", net: &fakeNet{encErr: status.Error(codes.InvalidArgument, "size not supported")},
			args: short, wantCode: 1,
			check: func(t *testing.T, r reportJSON, _ string) {
				if r.OK || r.Errors["enc_keys HTTP 400"] == 0 || r.Cycles != 0 {
					t.Errorf("ok=%v errors=%v cycles=%d, want a failed run with enc_keys HTTP 400 errors", r.OK, r.Errors, r.Cycles)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			dir := t.TempDir()
			n := tt.net
			if n == nil {
				n = &fakeNet{}
			}
			if err := n.start(dir, 2); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(n.close)
			code, rep, stderr := runQkdload(t, append([]string{"--state-dir", dir}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.wantCode, stderr)
			}
			if tt.wantProto != "" && rep.Protocol != tt.wantProto {
				t.Errorf("protocol %q, want %q", rep.Protocol, tt.wantProto)
			}
			tt.check(t, rep, stderr)
		})
	}
}

func TestMissingEndpoints(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	if code := realMain([]string{"--state-dir", dir}, &out, &errOut); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	want := "qkdload: no endpoints.json in " + dir + ": start a network with `qkdnet up --state-dir " + dir + "`\n"
	if errOut.String() != want {
		t.Errorf("stderr\n got %q\nwant %q", errOut.String(), want)
	}
	if out.Len() != 0 {
		t.Errorf("stdout %q, want nothing", out.String())
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--size", "12"},
		{"--clients", "0"},
		{"--number", "0"},
		{"--nonsense"},
		{"extra"},
	} {
		var out, errOut bytes.Buffer
		if code := realMain(args, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, errOut.String())
		}
	}
}

// TestRefusesRemoteKMM checks the loopback guard: a KMM URL that is not
// loopback is never connected to.
func TestRefusesRemoteKMM(t *testing.T) {
	dir := t.TempDir()
	var n fakeNet
	if err := n.start(dir, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.close)
	path := filepath.Join(dir, "endpoints.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// 192.0.2.0/24 is TEST-NET-1: never routed, so even a failed guard
	// would not reach anyone.
	b = bytes.ReplaceAll(b, []byte("https://127.0.0.1:"), []byte("https://192.0.2.1:"))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	code, rep, _ := runQkdload(t, "--state-dir", dir, "--clients", "1", "--warmup", "0", "--duration", "100ms", "--single", "0")
	if code != 1 || rep.Errors["transport"] == 0 || rep.Cycles != 0 {
		t.Errorf("exit %d errors %v cycles %d, want 1, transport errors, 0", code, rep.Errors, rep.Cycles)
	}
}

func TestTable(t *testing.T) {
	r := &results{
		Protocol: "HTTP/1.1", Pairs: 16, Workers: 16, Number: 16, Size: 256,
		Warmup: 2 * time.Second, Measured: 10 * time.Second,
		Keys: 160000, Cycles: 10000, EncOK: 10000, DecOK: 10000,
		SingleFor: 2 * time.Second, NotEnough: 3,
		Errors: map[string]int64{"timeout": 2, "dec_keys HTTP 503": 1},
	}
	for range 100 {
		r.Enc.record(1500 * time.Microsecond)
		r.Dec.record(800 * time.Microsecond)
		r.EncSingle.record(400 * time.Microsecond)
	}
	var b bytes.Buffer
	if err := writeTable(&b, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"16 clients on 16 SAE pairs, number=16 size=256 bits, HTTP/1.1",
		"16000 keys/s",
		"2000 requests/s",
		"enc_keys (number=16)",
		"1.50ms",
		"800µs",
		"enc_keys (number=1, 1 client)",
		"not enough keys (HTTP 503, retried): 3",
		"dec_keys HTTP 503",
		"mismatches: 0",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestNotEnoughKeys(t *testing.T) {
	tests := []struct {
		err  apiError
		want bool
	}{
		// The KMM's own wording (kmm/etsi014.go).
		{apiError{code: 503, message: "not enough key material for SAE_A1->SAE_B1 right now (16 keys of 256 bits asked); retry later"}, true},
		{apiError{code: 503, message: "Not enough keys"}, true},
		{apiError{code: 503, message: "pool empty", reason: "NOT_ENOUGH_KEYS"}, true},
		{apiError{code: 503, message: "peer KME_B unreachable"}, false},
		{apiError{code: 400, message: "not enough keys"}, false},
	}
	for _, tt := range tests {
		if got := tt.err.notEnoughKeys(); got != tt.want {
			t.Errorf("%+v: notEnoughKeys() = %v, want %v", tt.err, got, tt.want)
		}
	}
}
