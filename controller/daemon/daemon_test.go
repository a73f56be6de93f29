package daemon

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qkdnet/qkdnet/pki"
)

func TestMainBadUsage(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := ca.IssueController("c1")
	if err != nil {
		t.Fatal(err)
	}
	good := []string{"--id", "c1", "--data-dir", filepath.Join(dir, "raft"), "--ca", ca.Files().Cert, "--cert", f.Cert, "--key", f.Key,
		"--grpc", "127.0.0.1:0", "--raft", "127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, 0, "Usage: qkd-controller"},
		{"no id", []string{"--data-dir", dir}, 2, "--id is required"},
		{"bad id", append(append([]string{}, good...), "--id", "c/1"), 2, "--id:"},
		{"bad log level", append(append([]string{}, good...), "--log-level", "loud"), 2, `--log-level "loud"`},
		{"stray argument", append(append([]string{}, good...), "extra"), 2, `unexpected argument "extra"`},
		{"missing key file", append(append([]string{}, good...), "--key", filepath.Join(dir, "nope.pem")), 1, "nope.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := Main("qkd-controller", tc.args, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d mentioning %q", code, stderr.String(), tc.code, tc.want)
			}
			if strings.Contains(stderr.String(), "goroutine ") {
				t.Error("stack trace on stderr")
			}
		})
	}
}
