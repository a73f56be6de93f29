package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/testbed"
)

// chromium returns Debian's headless Chromium, or skips the test when it is
// not installed (CI installs it and sets QKDNET_REQUIRE_CHROMIUM, which
// turns the skip into a failure).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("QKDNET_REQUIRE_CHROMIUM") != "" {
		t.Fatal("chromium is not installed (apt-get install chromium)")
	}
	t.Skip("chromium is not installed (apt-get install chromium); skipping the dashboard test")
	return ""
}

// headless runs the page in headless Chromium for a few seconds of its own
// time (the page polls once a second) and returns the DOM it ended with,
// saving a screenshot too when shot is set.
func headless(ctx context.Context, t *testing.T, bin, url, shot string) string {
	t.Helper()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=3000", "--window-size=1200,900"}
	if shot != "" {
		if out, err := exec.CommandContext(ctx, bin, append(args, "--screenshot="+shot, url)...).CombinedOutput(); err != nil {
			t.Fatalf("chromium screenshot: %v\n%s", err, out)
		}
	}
	out, err := exec.CommandContext(ctx, bin, append(args, "--dump-dom", url)...).Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return string(out)
}

// TestDashboard loads the controller's page in headless Chromium: it draws
// the rooftops A, B, C, the links with their state, the Raft cluster with
// its leader; when a link goes down, the page shows it within seconds. The
// screenshots are saved beside the test's temporary files and their paths
// logged.
func TestDashboard(t *testing.T) {
	bin := chromium(t)
	n := upWith(t, testbed.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	url := n.Endpoints().Dashboard
	if url == "" {
		t.Fatal("endpoints.json has no dashboard")
	}
	shots := filepath.Join(os.TempDir(), "qkdnet-e2e")
	os.MkdirAll(shots, 0o755)
	state := func(dom, link string) string {
		m := regexp.MustCompile(`data-link-state="` + link + `">([A-Z]+)<`).FindStringSubmatch(dom)
		if m == nil {
			return ""
		}
		return m[1]
	}
	var dom string
	for deadline := time.Now().Add(20 * time.Second); ; {
		dom = headless(ctx, t, bin, url, filepath.Join(shots, "dashboard.png"))
		if state(dom, "FSO_AB") == "ACTIVE" && state(dom, "FSO_BC") == "ACTIVE" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dashboard does not show both links ACTIVE:\n%s", dom)
		}
	}
	for _, want := range []string{`data-node="A"`, `data-node="B"`, `data-node="C"`, `leader`, `SAE_C`} {
		if !regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(dom) {
			t.Errorf("the dashboard lacks %s", want)
		}
	}
	t.Logf("screenshot: %s", filepath.Join(shots, "dashboard.png"))

	// Link B-C goes down; the page shows it within seconds.
	cl, err := n.ControllerClient()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	err = cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := ctlclient.Network(cc).EnableLink(ctx, &qkdv1.EnableLinkRequest{Name: "FSO_BC"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	for {
		dom = headless(ctx, t, bin, url, "")
		if state(dom, "FSO_BC") == "OFF" && state(dom, "FSO_AB") == "ACTIVE" {
			break
		}
		if time.Since(down) > 10*time.Second {
			t.Fatalf("10 s after link FSO_BC went down the dashboard shows it %q", state(dom, "FSO_BC"))
		}
	}
	headless(ctx, t, bin, url, filepath.Join(shots, "dashboard-link-down.png"))
	t.Logf("link down shown %v after the change; screenshot: %s", time.Since(down).Round(100*time.Millisecond), filepath.Join(shots, "dashboard-link-down.png"))
}
