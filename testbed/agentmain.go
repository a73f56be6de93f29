package testbed

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/qkdnet/qkdnet/agent"
	"github.com/qkdnet/qkdnet/internal/logflags"
)

// AgentMain is the command line of one node agent, shared by `qkd-agent` and
// the hidden `qkdnet agent` (what Up starts for each node): it reads the
// agent config, runs the agent until SIGINT or SIGTERM and shuts it down
// gracefully. name is the program name for usage and errors; args exclude it.
// It returns the process exit code: 0 after a clean stop, 1 on failure, 2 on
// bad usage.
func AgentMain(name string, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "agent config `file` (JSON, as written by qkdnet up to <state-dir>/nodes/<node>/agent.json)")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	format := fs.String("log-format", "text", "log `format`: text or json")
	saeRate := fs.Float64("sae-rate", 0, "requests per second each SAE may make on the SAE API (ETSI 014, 004); 0: the config's sae_rate_limit or 5000; negative: no limit")
	saeBurst := fs.Int("sae-burst", 0, "burst of requests each SAE may make at once; 0: the config's or 1000")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s --config FILE [--log-level L] [--log-format text|json] [--sae-rate R] [--sae-burst B]\n\n", name)
		fmt.Fprintf(stderr, "Runs one trusted node's agent (KMM, QKD drivers, ETSI 014 REST and gRPC, metrics)\nuntil SIGINT or SIGTERM.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", name, fs.Arg(0))
		return 2
	}
	if *config == "" {
		fmt.Fprintf(stderr, "%s: --config is required\n", name)
		return 2
	}
	logger, err := logflags.New(stderr, *level, *format)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}

	// The agent's live heap is small (keys are sealed in bbolt's mmap) but
	// it allocates per request; collecting less often buys throughput for
	// little memory. GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	cfg, err := agent.LoadConfig(*config)
	if err != nil {
		fmt.Fprintf(stderr, "%s: config: %v\n", name, err)
		return 1
	}
	if *saeRate != 0 || *saeBurst != 0 {
		lim := agent.RateLimit{}
		if cfg.SAELimit != nil {
			lim = *cfg.SAELimit
		}
		if *saeRate != 0 {
			lim.RequestsPerSecond = *saeRate
		}
		if *saeBurst != 0 {
			lim.Burst = *saeBurst
		}
		cfg.SAELimit = &lim
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	a, err := agent.New(cfg, logger)
	if err != nil {
		logger.Error("agent: bad config", "node", cfg.Node, "err", err)
		return 1
	}
	logger.Info("agent starting", "node", cfg.Node, "rest", cfg.RESTAddr, "grpc", cfg.GRPCAddr, "metrics", cfg.MetricsAddr)
	err = a.Run(ctx)
	if err != nil && !(ctx.Err() != nil && errors.Is(err, context.Canceled)) {
		logger.Error("agent failed", "node", cfg.Node, "err", err)
		return 1
	}
	return 0
}
