package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/qkdnet/qkdnet/chaos"
)

// TestChaos runs `qkdchaos chaos` briefly over a real network (3 controller
// replicas, the ring A-B-C-D, so that link-down reroutes the relayed
// streams A <-> C through the other side): every fault kind must actually be injected
// (disk-full needs root; without it the report must say why it was
// skipped), keys must flow, and the invariant check over every key must
// find nothing. The seed is fixed so a failure can be replayed with the
// same fault schedule; the run's log is in the test output.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a network under faults for 25 s")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "qkdchaos")
	build := exec.Command("go", "build", "-o", bin, "github.com/qkdnet/qkdnet/cmd/qkdchaos")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build qkdchaos: %v\n%s", err, out)
	}
	report := filepath.Join(dir, "report.json")
	cmd := exec.Command(bin, "chaos", "--topology", "ring", "--duration", "25s", "--seed", "20240601", "--report", report)
	out, err := cmd.CombinedOutput()
	t.Logf("qkdchaos output:\n%s", out)
	if err != nil {
		t.Fatalf("qkdchaos chaos: %v", err)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep chaos.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Error != "" {
		t.Fatalf("run failed: %s", rep.Error)
	}
	if len(rep.Violations) != 0 {
		t.Fatalf("%d invariant violations, first: %s", len(rep.Violations), rep.Violations[0])
	}
	for _, k := range chaos.FaultKinds {
		if why, ok := rep.Skipped[k]; ok {
			if k != chaos.DiskFull {
				t.Errorf("fault kind %s skipped: %s", k, why)
			}
			t.Logf("fault kind %s skipped: %s", k, why)
			continue
		}
		if rep.Faults[k] == 0 {
			t.Errorf("no %s fault was injected", k)
		}
	}
	if rep.KeysEnc == 0 || rep.KeysDec == 0 {
		t.Fatalf("no keys delivered (enc %d, dec %d)", rep.KeysEnc, rep.KeysDec)
	}
	t.Logf("faults %v, %d keys delivered, %d lost in flight, 0 violations", rep.Faults, rep.KeysEnc, rep.LostInFlight)
}
