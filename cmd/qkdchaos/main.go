// Command qkdchaos starts a whole QKD network on loopback (3 controller
// replicas, one agent process per node, emulated QKD links), puts ETSI 014
// load on it and either injects faults (chaos) or just keeps the load up
// (soak), then reports.
//
//	qkdchaos chaos [--duration 90s] [--seed N] [--faults kill-agent,...] [--report FILE]
//	qkdchaos soak  [--duration 10m] [--window 1m] [--report FILE]
//
// chaos SIGKILLs and restarts agents and controller replicas, SIGSTOPs and
// SIGCONTs them, fills the tmpfs under one node's key store (root only;
// otherwise that kind is reported skipped) and cuts inter-KMM connections
// through a TCP proxy, at random moments from a seeded RNG, then checks the
// invariants of DESIGN.md over every key delivered and exits 1 on any
// violation. soak reports memory and goroutines of every process at start
// and end, keys/s and latency percentiles per window.
//
// The hidden `qkdchaos agent` and `qkdchaos controller` are what the
// network runs for each node and replica (this program, re-executed).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/qkdnet/qkdnet/chaos"
	"github.com/qkdnet/qkdnet/controller/daemon"
	"github.com/qkdnet/qkdnet/internal/logflags"
	"github.com/qkdnet/qkdnet/testbed"
)

const usage = `Usage: qkdchaos <command> [flags]

Runs a local QKD network (3 controller replicas, rooftops A-B-C) under ETSI 014
load on loopback, and checks what it delivered.

Commands:
  chaos   inject faults at random moments (seeded) and check the invariants
  soak    steady load; memory, goroutines, keys/s and latency over time

Run 'qkdchaos <command> --help' for its flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "chaos", "soak":
		return runMode(args[0], args[1:], stdout, stderr)
	case "agent":
		// What the network starts for each node; not listed in the usage.
		return testbed.AgentMain("qkdchaos agent", args[1:], stderr)
	case "controller":
		return daemon.Main("qkdchaos controller", args[1:], stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "qkdchaos: unknown command %q (want chaos or soak)\n", args[0])
		return 2
	}
}

func runMode(mode string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("qkdchaos "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	defDuration := 90 * time.Second
	about := "Starts the network, runs SAE pairs (one hop and relayed) getting keys with\n" +
		"enc_keys at the master's KME and dec_keys at the slave's, and meanwhile\n" +
		"injects faults one at a time at random moments: kill-agent, kill-controller\n" +
		"(SIGKILL, then restart), pause (SIGSTOP, then SIGCONT), disk-full (a tmpfs\n" +
		"under one node's key store, filled then freed; needs root, else skipped),\n" +
		"cut-kmm (a TCP proxy in front of each node resets and refuses peer KMM\n" +
		"connections), link-down (a QKD link disabled through the controller:\n" +
		"its drivers stop, streams are rerouted where another path exists, else\n" +
		"wait; then enabled again). Then it fetches at the slaves every key their masters got,\n" +
		"checks that no key was served twice, both ends got the same bits and no\n" +
		"key enc_keys returned is lost, prints the faults by kind, keys delivered\n" +
		"and violations, and exits 1 on any violation. The seed is printed; the\n" +
		"same seed gives the same faults, targets and timings (process behaviour\n" +
		"may still differ)."
	if mode == chaos.ModeSoak {
		defDuration = 10 * time.Minute
		about = "Starts the network and runs the same load as chaos, without faults, for\n" +
			"--duration. Reports every process's RSS (/proc), Go heap in use and\n" +
			"goroutines (their Prometheus metrics) after a warm-up and at the end,\n" +
			"flagging growth, and keys/s and enc_keys/dec_keys latency percentiles per\n" +
			"--window. Checks the invariants too."
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: qkdchaos %s [flags]\n\n%s\n\nFlags:\n", mode, about)
		fs.PrintDefaults()
	}
	duration := fs.Duration("duration", defDuration, "how long the load (and faults) run, after the network is up")
	seed := fs.Uint64("seed", 0, "seed of the fault schedule; 0 picks one from the clock (printed)")
	stateDir := fs.String("state-dir", "", "state `directory` of the network; default a temporary one, removed at the end")
	keep := fs.Bool("keep", false, "keep the temporary state dir (logs, stores) after the run")
	topo := fs.String("topology", testbed.DefaultTopologyName, "topology YAML `file`, or an embedded one: "+strings.Join(testbed.EmbeddedTopologies(), ", "))
	keyRate := fs.Float64("key-rate", 200, "every emulated link's key `rate` in keys/s")
	workers := fs.Int("workers", 2, "concurrent loops per SAE pair")
	number := fs.Int("number", 4, "keys per enc_keys request")
	faults := fs.String("faults", strings.Join(chaos.FaultKinds, ","), "comma-separated fault `kinds` to inject (chaos)")
	diskNode := fs.String("disk-node", "", "`node` whose key store goes on a tmpfs for disk-full; default the relay node")
	diskMB := fs.Int("disk-mb", 128, "size of that tmpfs in `MiB`")
	window := fs.Duration("window", time.Minute, "width of a keys/s and latency row")
	warmup := fs.Duration("warmup", 0, "soak: load before the first memory sample; default min(30s, duration/10)")
	report := fs.String("report", "", "also write the report as JSON to this `file`")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	format := fs.String("log-format", "text", "log `format`: text or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "qkdchaos %s: unexpected argument %q\n", mode, fs.Arg(0))
		return 2
	}
	logger, err := logflags.New(stderr, *level, *format)
	if err != nil {
		fmt.Fprintf(stderr, "qkdchaos %s: %v\n", mode, err)
		return 2
	}
	top, err := testbed.LoadTopology(*topo)
	if err != nil {
		fmt.Fprintf(stderr, "qkdchaos %s: %v\n", mode, err)
		return 2
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	var kinds []string
	for _, k := range strings.Split(*faults, ",") {
		if k = strings.TrimSpace(k); k != "" {
			kinds = append(kinds, k)
		}
	}
	for _, k := range kinds {
		if !slices.Contains(chaos.FaultKinds, k) {
			fmt.Fprintf(stderr, "qkdchaos %s: --faults: unknown kind %q (want some of %s)\n", mode, k, strings.Join(chaos.FaultKinds, ","))
			return 2
		}
	}
	if *duration <= 0 || *workers <= 0 || *number <= 0 || *keyRate <= 0 || *window <= 0 {
		fmt.Fprintf(stderr, "qkdchaos %s: --duration, --workers, --number, --key-rate and --window must be positive\n", mode)
		return 2
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "qkdchaos %s: finding this program to start agents: %v\n", mode, err)
		return 1
	}
	cfg := chaos.Config{
		Mode: mode, Duration: *duration, Seed: *seed, StateDir: *stateDir, Keep: *keep, Topology: top,
		KeyRate: *keyRate, Workers: *workers, Number: *number, Faults: kinds, DiskNode: *diskNode, DiskMB: *diskMB,
		Window: *window, Warmup: *warmup, Executable: exe, Args: []string{"agent"}, ControllerArgs: []string{"controller"},
		Logger: logger,
	}
	if mode == chaos.ModeChaos {
		logger.Info("qkdchaos", "mode", mode, "seed", *seed, "duration", *duration, "repeat_with", fmt.Sprintf("--seed %d", *seed))
	} else {
		logger.Info("qkdchaos", "mode", mode, "duration", *duration)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := chaos.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "qkdchaos %s: %v\n", mode, err)
		return 1
	}
	rep.Print(stdout)
	if *report != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*report, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "qkdchaos %s: report: %v\n", mode, err)
			return 1
		}
	}
	if *keep || *stateDir != "" {
		fmt.Fprintf(stdout, "state dir (logs, stores): %s\n", rep.StateDir)
	}
	if rep.Failed() {
		return 1
	}
	return 0
}
