// Command qkdload is the benchmark load generator of the ETSI GS QKD 014
// key delivery API on a local testbed.
//
// It reads <state-dir>/endpoints.json, pairs master and slave SAEs on
// different KMMs, and runs concurrent clients that each loop: enc_keys as the
// master SAE, dec_keys as the slave SAE with the key_IDs it got, and a
// byte-for-byte comparison of the two. It reports end-to-end keys/s,
// requests/s, latency percentiles, not-enough-keys answers, errors by kind,
// and mismatches, which are correctness failures and fail the run.
//
// With --start it first starts a network of its own with `qkdnet up` and
// stops it when done. It only ever connects to loopback addresses.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/qkdnet/qkdnet/testbed"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	stateDir string
	clients  int
	number   int
	size     int
	duration time.Duration
	warmup   time.Duration
	requests int64
	single   time.Duration
	timeout  time.Duration
	http2    bool
	jsonOut  bool
	cpuProf  string
	pairs    string

	start        bool
	qkdnet       string
	topology     string
	keyRate      float64
	basePort     int
	startTimeout time.Duration
	fillTimeout  time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("qkdload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.stateDir, "state-dir", ".qkdnet", "testbed state directory holding endpoints.json")
	fs.IntVar(&o.clients, "clients", 16, "concurrent clients; client i drives SAE pair i % pairs")
	fs.IntVar(&o.number, "number", 16, "keys per enc_keys request (ETSI \"number\")")
	fs.IntVar(&o.size, "size", 256, "key size in bits (ETSI \"size\"), a multiple of 8")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured time after the warmup (with --requests: only a cap, 10m unless given)")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "load before measuring starts")
	fs.Int64Var(&o.requests, "requests", 0, "stop after this many measured enc_keys/dec_keys cycles instead of after --duration")
	fs.DurationVar(&o.single, "single", 2*time.Second, "then measure single-key enc_keys (number=1, one client) for this long; 0 skips it")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "timeout of one HTTP request")
	fs.BoolVar(&o.http2, "http2", false, "offer HTTP/2 (one multiplexed connection per SAE) instead of HTTP/1.1 keep-alive connections")
	fs.BoolVar(&o.jsonOut, "json", false, "print one JSON object instead of the table")
	fs.StringVar(&o.cpuProf, "cpuprofile", "", "write a CPU profile of qkdload itself (the load phases) to this file")
	fs.StringVar(&o.pairs, "pairs", "", "explicit SAE pairs MASTER:SLAVE[,MASTER:SLAVE...] instead of pairing by KMM")

	fs.BoolVar(&o.start, "start", false, "start a network first (qkdnet up in --state-dir) and stop it at the end")
	fs.StringVar(&o.qkdnet, "qkdnet", "", "with --start, the qkdnet executable (default: go run ./cmd/qkdnet in this source tree)")
	fs.StringVar(&o.topology, "topology", "deploy/topologies/bench.yaml", "with --start, the topology file")
	fs.Float64Var(&o.keyRate, "key-rate", 100000, "with --start, the emulated links' keys per second")
	fs.IntVar(&o.basePort, "base-port", 18443, "with --start, the network's base port")
	fs.DurationVar(&o.startTimeout, "start-timeout", 3*time.Minute, "with --start, how long to wait for endpoints.json (includes go run compiling)")
	fs.DurationVar(&o.fillTimeout, "fill-timeout", 30*time.Second, "with --start, how long to wait for the first pair's pool to fill before starting anyway")

	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: qkdload [flags]

qkdload drives the ETSI GS QKD 014 API of a local testbed: each client loops
enc_keys at the master SAE's KMM, dec_keys at the slave SAE's KMM with the
key_IDs it got, and checks that the keys match byte for byte.

SAE pairs: SAEs are grouped by KMM; the i-th SAE (natural order) of the first
KMM is the master of the i-th SAE of the others (SAE_A1->SAE_B1, ...).

Output: end-to-end keys/s (keys that both calls returned and that matched,
over the measured wall time), requests/s (200 answers), latency p50/p90/p99/max
of enc_keys and dec_keys and of a single-key phase, HTTP 503 "not enough keys"
answers (retried after a short backoff; not errors), errors by kind, and
mismatches. Latencies are of 200 answers only. --json prints one object.

Exit status: 0 when every key matched, no request failed (503 "not enough
keys" is not a failure) and at least one cycle was measured; 1 otherwise (a
mismatch always fails the run); 2 for bad flags.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.requests > 0 && !set["duration"] {
		o.duration = 10 * time.Minute
	}
	switch {
	case o.clients < 1:
		return o, errors.New("--clients must be at least 1")
	case o.number < 1:
		return o, errors.New("--number must be at least 1")
	case o.size < 8 || o.size%8 != 0:
		return o, errors.New("--size must be a positive multiple of 8 bits")
	case o.duration <= 0:
		return o, errors.New("--duration must be positive")
	case o.warmup < 0 || o.single < 0 || o.requests < 0:
		return o, errors.New("--warmup, --single and --requests must not be negative")
	case o.timeout <= 0:
		return o, errors.New("--timeout must be positive")
	}
	return o, nil
}

func realMain(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "qkdload:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	stateDir, err := filepath.Abs(o.stateDir)
	if err != nil {
		fmt.Fprintln(stderr, "qkdload:", err)
		return 1
	}
	if o.start {
		n, err := startNetwork(ctx, startOptions{
			stateDir: stateDir, qkdnet: o.qkdnet, topology: o.topology, keyRate: o.keyRate,
			basePort: o.basePort, timeout: o.startTimeout, stderr: stderr,
		})
		if err != nil {
			fmt.Fprintln(stderr, "qkdload:", err)
			return 1
		}
		defer n.stop(stderr)
	}

	cfg, closeClients, err := setup(stateDir, o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "qkdload:", err)
		return 1
	}
	defer closeClients()
	if o.start {
		waitForKeys(ctx, cfg.pairs[0], o.number*o.clients, o.fillTimeout, stderr)
	}

	if o.cpuProf != "" {
		f, err := os.Create(o.cpuProf)
		if err != nil {
			fmt.Fprintln(stderr, "qkdload:", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			fmt.Fprintln(stderr, "qkdload:", err)
			return 1
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	res := run(ctx, cfg)
	if o.jsonOut {
		err = writeJSON(stdout, res)
	} else {
		err = writeTable(stdout, res)
	}
	if err != nil {
		fmt.Fprintln(stderr, "qkdload:", err)
		return 1
	}
	if !res.OK() {
		return 1
	}
	return 0
}

// setup reads endpoints.json, pairs the SAEs and makes their clients.
func setup(stateDir string, o options, stderr io.Writer) (loadConfig, func(), error) {
	e, err := testbed.ReadEndpoints(stateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return loadConfig{}, nil, fmt.Errorf("no %s in %s: start a network with `qkdnet up --state-dir %s`", testbed.EndpointsFile, stateDir, stateDir)
	}
	if err != nil {
		return loadConfig{}, nil, err
	}
	var pairs []pair
	if o.pairs != "" {
		pairs, err = parsePairs(e, o.pairs)
	} else {
		pairs, err = findPairs(e)
	}
	if err != nil {
		return loadConfig{}, nil, err
	}
	// One client per (SAE, KMM): an SAE in several pairs keeps one pool.
	clients := map[string]*saeClient{}
	closeAll := func() {
		for _, c := range clients {
			c.close()
		}
	}
	get := func(s testbed.SAEEntry, k testbed.KMMEntry) (*saeClient, error) {
		id := s.SAEID + "@" + k.Node
		if c, ok := clients[id]; ok {
			return c, nil
		}
		c, err := newSAEClient(s, k, clientOptions{caFile: e.CACert, http2: o.http2, conns: o.clients, timeout: o.timeout})
		if err != nil {
			return nil, err
		}
		clients[id] = c
		return c, nil
	}
	cfg := loadConfig{
		workers: o.clients, number: o.number, size: o.size, warmup: o.warmup, duration: o.duration,
		requests: o.requests, single: o.single, timeout: o.timeout, log: stderr,
	}
	for _, p := range pairs {
		enc, err := get(p.Master, p.MasterKMM)
		if err != nil {
			closeAll()
			return loadConfig{}, nil, err
		}
		dec, err := get(p.Slave, p.SlaveKMM)
		if err != nil {
			closeAll()
			return loadConfig{}, nil, err
		}
		cfg.pairs = append(cfg.pairs, pairClients{pair: p, enc: enc, dec: dec})
	}
	if len(pairs) < o.clients {
		fmt.Fprintf(stderr, "qkdload: %d SAE pairs for %d clients; clients share pairs\n", len(pairs), o.clients)
	}
	return cfg, closeAll, nil
}

// waitForKeys polls the first pair's status until its pool holds want keys
// (or max_key_count, if smaller), so that a fresh network's first seconds
// of key generation are not measured as "not enough keys". If the pool does
// not fill in time the run goes ahead: the report will show the 503s.
func waitForKeys(ctx context.Context, pc pairClients, want int, timeout time.Duration, stderr io.Writer) {
	start := time.Now()
	deadline := start.Add(timeout)
	lastProgress := start
	for ctx.Err() == nil {
		st, err := pc.enc.status(ctx, pc.Slave.SAEID)
		target := want
		if err == nil && st.MaxKeyCount > 0 {
			target = min(target, st.MaxKeyCount)
		}
		if err == nil && st.StoredKeyCount >= target {
			fmt.Fprintf(stderr, "qkdload: %s holds %d keys after %s\n", pc.pair, st.StoredKeyCount, time.Since(start).Round(100*time.Millisecond))
			return
		}
		now := time.Now()
		if now.After(deadline) {
			fmt.Fprintf(stderr, "qkdload: %s did not reach %d keys in %s (last: %s); starting anyway\n", pc.pair, target, timeout, describeStatus(st, err))
			return
		}
		if now.Sub(lastProgress) >= 2*time.Second {
			lastProgress = now
			fmt.Fprintf(stderr, "qkdload: waiting for keys on %s: %s (%s)\n", pc.pair, describeStatus(st, err), now.Sub(start).Round(time.Second))
		}
		sleep(ctx, 200*time.Millisecond)
	}
}

func describeStatus(st statusResponse, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("stored_key_count %d", st.StoredKeyCount)
}
