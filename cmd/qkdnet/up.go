package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/qkdnet/qkdnet/cmd/sae/saeapp"
	"github.com/qkdnet/qkdnet/controller/daemon"
	"github.com/qkdnet/qkdnet/testbed"
)

func agentMain(args []string, stderr io.Writer) int {
	return testbed.AgentMain("qkdnet agent", args, stderr)
}

func controllerMain(args []string, stderr io.Writer) int {
	return daemon.Main("qkdnet controller", args, stderr)
}

func cmdUp(args []string, stdout, stderr io.Writer, demo bool) error {
	name, synopsis, about := "up", "[flags]",
		"Starts a Raft-replicated QKD SDN controller (--controllers replicas, one\n"+
			"process each), writes the topology's nodes, links and SAEs into it, then\n"+
			"starts one agent process per node on loopback, each serving ETSI GS QKD 014\n"+
			"over HTTPS and gRPC with mutual TLS and running what the controller pushes.\n"+
			"Writes <state-dir>/endpoints.json once all serve, and runs until Ctrl-C\n"+
			"(SIGINT) or SIGTERM, when it stops everything. Keys, certificates and the\n"+
			"controller's Raft log in the state dir survive restarts.\n\n"+
			"Ports: node i (in topology order) serves REST on 8443+i, gRPC on 9443+i and\n"+
			"metrics on 9100+i; controller replica i serves gRPC on 7443+i, Raft on\n"+
			"7543+i and metrics on 7643+i. With --base-port P: P+i, P+1000+i, P+2000+i\n"+
			"and P+3000+i, P+3100+i, P+3200+i."
	if demo {
		name, about = "demo", "Starts the network as `qkdnet up` does, then has one SAE send another an\n"+
			"AES-256-GCM encrypted message per interval, each under a fresh 256-bit key\n"+
			"from ETSI 014 enc_keys; the receiver gets the key with dec_keys and decrypts.\n"+
			"Prints one line per message until Ctrl-C."
	}
	fs := newFlags(name, synopsis, about, stderr)
	stateDir := fs.String("state-dir", testbed.DefaultStateDir, "`directory` for certificates, agent configs, key stores, logs and endpoints.json")
	topo := fs.String("topology", testbed.DefaultTopologyName, "topology YAML `file`, or an embedded one: "+strings.Join(testbed.EmbeddedTopologies(), ", "))
	keyRate := fs.Float64("key-rate", 0, "override every emulated link's key `rate` in keys/s (0 keeps the topology's)")
	basePort := fs.Int("base-port", 0, "move every `port`: REST P+i, gRPC P+1000+i, metrics P+2000+i (0: the default plan)")
	controllers := fs.Int("controllers", 3, "controller `replicas`: 1, 3 or 5")
	verbose := fs.Bool("verbose", false, "also copy every agent's log to stderr, prefixed with [node]")
	readyTimeout := fs.Duration("ready-timeout", 60*time.Second, "how long to wait for all agents to serve")
	var from, to *string
	var interval *time.Duration
	var count *int
	if demo {
		from = fs.String("from", "", "sending SAE (master); default the first SAE of the first link's master node")
		to = fs.String("to", "", "receiving SAE (slave); default the first SAE of that link's other node")
		interval = fs.Duration("interval", time.Second, "time between messages")
		count = fs.Int("count", 0, "stop after this many messages; 0 runs until Ctrl-C")
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if *controllers != 1 && *controllers != 3 && *controllers != 5 {
		return fmt.Errorf("--controllers %d: want 1, 3 or 5 replicas", *controllers)
	}
	if *keyRate < 0 {
		return fmt.Errorf("--key-rate %v: must be positive (keys/s)", *keyRate)
	}
	if *basePort != 0 && (*basePort < 1024 || *basePort > 65535) {
		return fmt.Errorf("--base-port %d: must be in [1024, 65535]", *basePort)
	}
	top, err := testbed.LoadTopology(*topo)
	if err != nil {
		return err
	}
	var pair [2]string
	if demo {
		if *interval <= 0 {
			return fmt.Errorf("--interval %s: must be positive", *interval)
		}
		if *count < 0 {
			return fmt.Errorf("--count %d: must be 0 or more", *count)
		}
		if pair, err = demoPair(top, *from, *to); err != nil {
			return err
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	stopWithGoRun()
	// After the first signal, a second one kills the runner at once; the
	// kernel then sends every agent SIGTERM (see testbed's Pdeathsig).
	context.AfterFunc(ctx, stop)

	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opts := testbed.Options{
		StateDir:     *stateDir,
		Topology:     top,
		BasePort:     *basePort,
		KeyRate:      *keyRate,
		Controllers:  *controllers,
		Logger:       logger,
		ReadyTimeout: *readyTimeout,
	}
	if *verbose {
		opts.Verbose = stderr
	}
	n, err := testbed.Up(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "qkdnet: interrupted while starting; agents stopped")
			return nil
		}
		return reportFailure(stderr, name, err)
	}
	printWhere(stdout, n, *stateDir, *topo)

	var demoErr chan error
	if demo {
		demoErr = make(chan error, 1)
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() { demoErr <- runDemo(dctx, n, pair, *interval, *count, stdout, logger) }()
	}

	select {
	case <-ctx.Done():
		fmt.Fprintln(stderr, "qkdnet: stopping the agents (Ctrl-C again to force)")
	case <-n.Done():
		return reportFailure(stderr, name, n.Err())
	case err := <-demoErr:
		if err != nil {
			n.Stop()
			return err
		}
	}
	if err := n.Stop(); err != nil {
		// The agents are gone either way; say which did not stop cleanly.
		logger.Warn("not every agent stopped cleanly", "err", err)
	}
	fmt.Fprintln(stderr, "qkdnet: network stopped")
	return nil
}

// reportFailure prints which node failed, how, and the end of its log.
func reportFailure(stderr io.Writer, cmd string, err error) error {
	var ne *testbed.NodeError
	if !errors.As(err, &ne) {
		return err
	}
	fmt.Fprintf(stderr, "qkdnet %s: %v\n", cmd, ne)
	if len(ne.LogTail) > 0 {
		fmt.Fprintf(stderr, "last lines of %s:\n", ne.LogPath)
		for _, l := range ne.LogTail {
			fmt.Fprintf(stderr, "  | %s\n", l)
		}
	}
	return exitCode(1)
}

// demoPair picks the sending and receiving SAEs.
func demoPair(top *testbed.Topology, from, to string) ([2]string, error) {
	node := map[string]string{}
	for _, s := range top.SAEs {
		node[s.ID] = s.Node
	}
	// By default the first SAE sends to the last SAE on another node: on the
	// rooftops, SAE_A to SAE_C through the relay node B; on fig4, SAE_A to
	// SAE_B.
	if from == "" && len(top.SAEs) > 0 {
		from = top.SAEs[0].ID
	}
	if to == "" {
		for i := len(top.SAEs) - 1; i >= 0; i-- {
			if s := top.SAEs[i]; s.Node != node[from] {
				to = s.ID
				break
			}
		}
	}
	for _, c := range []struct{ flag, id string }{{"--from", from}, {"--to", to}} {
		if c.id == "" {
			return [2]string{}, fmt.Errorf("%s: the topology has no SAE to pick; name one", c.flag)
		}
		if _, ok := node[c.id]; !ok {
			return [2]string{}, fmt.Errorf("%s %s: no such SAE in the topology", c.flag, c.id)
		}
	}
	if from == to {
		return [2]string{}, fmt.Errorf("--from and --to are both %s", from)
	}
	return [2]string{from, to}, nil
}

// printWhere prints the table of what runs where, and a curl line to try.
func printWhere(w io.Writer, n *testbed.Network, userDir, topo string) {
	show := func(rel string) string { return filepath.Join(userDir, filepath.FromSlash(rel)) }
	e := n.Plan().Endpoints
	var b bytes.Buffer
	fmt.Fprintf(&b, "\nQKD network up: topology %s, state dir %s\n\n", topo, userDir)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tKME\tETSI 014 (HTTPS)\tgRPC\tMETRICS\tPID")
	for _, k := range e.KMMs {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\n", k.Node, k.KMEID, k.URL, k.GRPC, k.Metrics, n.PID(k.Node))
	}
	tw.Flush()
	fmt.Fprintln(&b)
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  SAE\tNODE\tCERTIFICATE\tKEY")
	for _, s := range e.SAEs {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", s.SAEID, s.KMM, show(s.Cert), show(s.Key))
	}
	tw.Flush()
	fmt.Fprintf(&b, "\n  endpoints: %s\n  CA:        %s\n  logs:      %s\n",
		show(testbed.EndpointsFile), show(e.CACert), filepath.Join(userDir, "nodes", "<node>", "agent.log"))
	if pair, err := demoPair(n.Plan().Topology, "", ""); err == nil {
		s, _ := e.SAE(pair[0])
		k, _ := e.KMM(s.KMM)
		fmt.Fprintf(&b, "\nTry (status of the key supply %s -> %s):\n  curl --cacert %s --cert %s --key %s %s/api/v1/keys/%s/status\n",
			pair[0], pair[1], show(e.CACert), show(s.Cert), show(s.Key), k.URL, pair[1])
	}
	fmt.Fprintln(&b, "\nCtrl-C stops the network.")
	w.Write(b.Bytes())
}

// runDemo has pair[0] send pair[1] one message per interval, in-process, and
// prints a line per message. It returns when ctx ends or count messages
// were sent.
func runDemo(ctx context.Context, n *testbed.Network, pair [2]string, interval time.Duration, count int, stdout io.Writer, logger *slog.Logger) error {
	state := n.StateDir()
	rc, _, err := saeapp.Connect(state, pair[1])
	if err != nil {
		return err
	}
	defer rc.Close()
	sc, _, err := saeapp.Connect(state, pair[0])
	if err != nil {
		return err
	}
	defer sc.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var mu sync.Mutex
	got := map[string]string{} // key_ID -> plaintext the receiver decrypted
	recv := &saeapp.Receiver{Client: rc, SAEID: pair[1], Logger: logger.With("sae", pair[1]), OnMessage: func(m saeapp.Received) {
		if m.Err == nil {
			mu.Lock()
			got[m.KeyID] = string(m.Plaintext)
			mu.Unlock()
		}
	}}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan struct{})
	go func() {
		defer close(served)
		recv.Serve(rctx, ln)
	}()
	defer func() { cancel(); <-served }()

	snd := &saeapp.Sender{Client: sc, SAEID: pair[0], Peer: pair[1], Addr: ln.Addr().String(), KeyWait: 60 * time.Second, Logger: logger.With("sae", pair[0])}
	defer snd.Close()
	fmt.Fprintf(stdout, "\n%s sends %s one AES-256-GCM message every %s, each under a fresh 256-bit QKD key (%s -> %s over TCP %s):\n",
		pair[0], pair[1], interval, pair[0], pair[1], ln.Addr())
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 1; count == 0 || i <= count; i++ {
		text := fmt.Sprintf("message #%d from %s at %s", i, pair[0], time.Now().Format(time.TimeOnly))
		start := time.Now()
		sent, err := snd.Send(ctx, []byte(text))
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			fmt.Fprintf(stdout, "#%-4d FAILED: %v\n", i, err)
		default:
			mu.Lock()
			pt, ok := got[sent.KeyID]
			delete(got, sent.KeyID)
			mu.Unlock()
			verdict := "decrypted OK"
			if !ok || pt != text {
				verdict = "MISMATCH"
			}
			fmt.Fprintf(stdout, "#%-4d key_ID=%s  ciphertext=%dB  %s -> %s  %s: %q  (%s)\n",
				i, sent.KeyID, sent.CiphertextLen, pair[0], pair[1], verdict, pt, time.Since(start).Round(time.Millisecond))
		}
		if count != 0 && i == count {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	return nil
}
