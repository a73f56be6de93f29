package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qkdnet/qkdnet/pki"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestPKICommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")

	if code, _, stderr := runCLI("pki", "node", "--dir", dir, "--id", "A"); code != 1 || !strings.Contains(stderr, "no CA in") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("node before init: code %d, stderr %q", code, stderr)
	}
	code, out, stderr := runCLI("pki", "init", "--dir", dir)
	if code != 0 || !strings.Contains(out, "ca.pem") {
		t.Fatalf("init: %d %q %q", code, out, stderr)
	}
	code, out, stderr = runCLI("pki", "node", "--dir", dir, "--id", "A", "--ip", "10.0.0.1,10.0.0.2", "--ip", "192.0.2.1")
	if code != 0 || !strings.Contains(out, "node_a.pem") {
		t.Fatalf("node: %d %q %q", code, out, stderr)
	}
	c, err := pki.ReadCertificate(filepath.Join(dir, "node_a.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"10.0.0.2", "192.0.2.1", "127.0.0.1", "localhost"} {
		if err := c.VerifyHostname(h); err != nil {
			t.Errorf("node cert: %v", err)
		}
	}
	if code, _, stderr = runCLI("pki", "sae", "--dir", dir, "--id", "SAE_A"); code != 0 {
		t.Fatalf("sae: %d %q", code, stderr)
	}
	st, err := os.Stat(filepath.Join(dir, "sae_a-key.pem"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("SAE key: %v %v", st, err)
	}
	code, out, _ = runCLI("pki", "show", filepath.Join(dir, "sae_a.pem"))
	if code != 0 || !strings.Contains(out, "qkd://sae/SAE_A") {
		t.Errorf("show: %d %q", code, out)
	}
	for _, k := range []struct{ sub, id, file string }{{"controller", "c1", "controller_c1.pem"}, {"operator", "ops", "operator_ops.pem"}} {
		if code, _, stderr = runCLI("pki", k.sub, "--dir", dir, "--id", k.id); code != 0 {
			t.Fatalf("%s: %d %q", k.sub, code, stderr)
		}
		code, out, _ = runCLI("pki", "show", filepath.Join(dir, k.file))
		if code != 0 || !strings.Contains(out, "qkd://"+k.sub+"/"+k.id) {
			t.Errorf("show %s: %d %q", k.file, code, out)
		}
	}

	// Bad input: one line naming the problem, exit status 1 or 2, no panic.
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"pki", "sae", "--dir", dir}, 2, "--id is required"},
		{[]string{"pki", "sae", "--dir", dir, "--id", "a/b"}, 1, `id "a/b" must be`},
		{[]string{"pki", "node", "--dir", dir, "--id", "B", "--ip", "nope"}, 2, `"nope" is not an IP address`},
		{[]string{"pki", "frob"}, 2, `unknown command "frob"`},
		{[]string{"pki", "show", filepath.Join(dir, "missing.pem")}, 1, "no such file"},
		{[]string{"frob"}, 2, `unknown command "frob"`},
		{[]string{"up", "--topology", "nope"}, 1, "no such file, nor an embedded topology"},
		{[]string{"up", "--base-port", "80"}, 1, "--base-port 80"},
		{[]string{"up", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"demo", "--to", "SAE_Q"}, 1, "--to SAE_Q: no such SAE"},
		{[]string{"agent"}, 2, "--config is required"},
		{[]string{"agent", "--config", filepath.Join(dir, "none.json")}, 1, "no such file"},
	} {
		code, _, stderr := runCLI(tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: code %d, stderr %q; want code %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
		if strings.Contains(stderr, "goroutine") || strings.Contains(stderr, "panic") {
			t.Errorf("%v: stack trace in %q", tc.args, stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"up", "--help"}, {"demo", "-h"}, {"pki", "--help"}, {"pki", "node", "--help"}, {"agent", "--help"}} {
		code, out, stderr := runCLI(args...)
		if code != 0 || !strings.Contains(out+stderr, "Usage: qkdnet") {
			t.Errorf("%v: code %d, output %q", args, code, out+stderr)
		}
	}
}
