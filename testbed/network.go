package testbed

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qkdnet/qkdnet/pki"
)

// NodeError says what went wrong with one node's agent: it exited when it
// should not have, or did not come up in time. LogTail holds the last lines
// of its agent.log since it last started.
type NodeError struct {
	Node    string
	Reason  string
	LogPath string
	LogTail []string
}

func (e *NodeError) Error() string {
	return fmt.Sprintf("node %s: %s (log: %s)", e.Node, e.Reason, e.LogPath)
}

// Network is a running testbed: one agent process per node.
type Network struct {
	opts Options
	plan *Plan
	lock *os.File
	// verbose serialises the agents' prefixed output to opts.Verbose.
	verbose *syncWriter

	mu       sync.Mutex
	procs    map[string]*proc
	stopping bool
	err      error // why the network failed, if it did

	done     chan struct{}
	stopOnce sync.Once
	stopErr  error
}

type proc struct {
	label    string // "node A" or "controller c1"
	logPath  string
	node     *NodePlan // nil for a controller
	cmd      *exec.Cmd
	log      *os.File
	exited   chan struct{} // closed when the process has been waited for
	waitErr  error
	expected bool // the exit was asked for (Kill, Restart, Stop)
}

// id is the node ID, or "controller <id>".
func (p *proc) id() string {
	if p.node != nil {
		return p.node.ID
	}
	return p.label
}

func (p *proc) kind() string {
	if p.node != nil {
		return "agent"
	}
	return "controller"
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Up prepares the state dir (Prepare), starts the controller replicas (if
// opts.Controllers > 0) and writes the topology into the controller, starts
// one agent process per node,
// waits until every agent serves (REST: TLS handshake with a client
// certificate; gRPC: TLS handshake), then writes <state>/endpoints.json. It
// returns an error, with every started agent stopped, if an agent exits or
// does not serve within opts.ReadyTimeout, or ctx ends first.
//
// Once up, an agent that exits without Kill, Restart or Stop having asked
// for it brings the whole network down: Done is closed and Err says which
// node failed and how (a *NodeError).
func Up(ctx context.Context, opts Options) (*Network, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if opts.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding this program to start agents: %w", err)
		}
		opts.Executable = exe
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	lock, err := lockStateDir(opts.StateDir)
	if err != nil {
		return nil, err
	}
	plan, err := prepare(&opts)
	if err != nil {
		unlockStateDir(lock)
		return nil, err
	}
	n := &Network{opts: opts, plan: plan, lock: lock, procs: map[string]*proc{}, done: make(chan struct{}), verbose: &syncWriter{w: opts.Verbose}}
	// A stale endpoints.json (from a runner that was killed) would tell
	// scripts that a network serves before it does.
	os.Remove(filepath.Join(plan.StateDir, EndpointsFile))

	ids := make([]string, len(plan.Nodes))
	ps := make([]Ports, len(plan.Nodes))
	for i, np := range plan.Nodes {
		ids[i], ps[i] = np.ID, np.Ports
	}
	if err := portsInUse(ids, ps); err != nil {
		n.Stop()
		return nil, err
	}
	if len(plan.Controllers) > 0 {
		cids := make([]string, len(plan.Controllers))
		cps := make([]ControllerPorts, len(plan.Controllers))
		for i, c := range plan.Controllers {
			cids[i], cps[i] = c.ID, c.Ports
		}
		if err := controllerPortsInUse(cids, cps); err != nil {
			n.Stop()
			return nil, err
		}
		if err := n.bringUpControllers(ctx); err != nil {
			n.Stop()
			return nil, err
		}
	}

	for i := range plan.Nodes {
		if err := n.start(&plan.Nodes[i]); err != nil {
			n.Stop()
			return nil, err
		}
	}
	if err := n.waitReady(ctx, ids); err != nil {
		n.Stop()
		return nil, err
	}
	if len(plan.Controllers) > 0 {
		if err := n.waitConverged(ctx); err != nil {
			n.Stop()
			return nil, err
		}
	}
	if err := WriteEndpoints(plan.StateDir, plan.Endpoints); err != nil {
		n.Stop()
		return nil, fmt.Errorf("writing %s: %w", EndpointsFile, err)
	}
	opts.Logger.Info("network up", "state_dir", plan.StateDir, "nodes", len(plan.Nodes), "endpoints", filepath.Join(plan.StateDir, EndpointsFile))
	return n, nil
}

// Plan is what the network was started from.
func (n *Network) Plan() *Plan { return n.plan }

// StateDir is the network's state dir, absolute.
func (n *Network) StateDir() string { return n.plan.StateDir }

// Endpoints is the content of endpoints.json with absolute paths (as
// ReadEndpoints returns it).
func (n *Network) Endpoints() Endpoints {
	e := n.plan.Endpoints
	abs := func(p string) string { return filepath.Join(n.plan.StateDir, filepath.FromSlash(p)) }
	e.CACert = abs(e.CACert)
	e.KMMs = slices.Clone(e.KMMs)
	e.SAEs = slices.Clone(e.SAEs)
	for i := range e.SAEs {
		e.SAEs[i].Cert = abs(e.SAEs[i].Cert)
		e.SAEs[i].Key = abs(e.SAEs[i].Key)
	}
	e.Controllers = slices.Clone(e.Controllers)
	if e.Operator != nil {
		e.Operator = &CertEntry{Cert: abs(e.Operator.Cert), Key: abs(e.Operator.Key)}
	}
	return e
}

// Done is closed once the network has stopped, by Stop or by a failure.
func (n *Network) Done() <-chan struct{} { return n.done }

// Err is why the network failed (a *NodeError), or nil.
func (n *Network) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// PID is the process ID of node's agent, or 0 if it is not running.
func (n *Network) PID(node string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p, ok := n.procs[nodeKey(node)]; ok && p.running() {
		return p.cmd.Process.Pid
	}
	return 0
}

// Kill sends SIGKILL to node's agent, as a crash would, and waits until it is
// gone. The network stays up; Restart brings the node back.
func (n *Network) Kill(node string) error {
	if _, ok := n.plan.Node(node); !ok {
		return fmt.Errorf("no node %q in this network", node)
	}
	return n.kill(nodeKey(node))
}

func (n *Network) kill(key string) error {
	p, err := n.runningProc(key)
	if err != nil {
		return err
	}
	n.mu.Lock()
	p.expected = true
	n.mu.Unlock()
	p.cmd.Process.Kill()
	select {
	case <-p.exited:
		return nil
	case <-time.After(n.opts.StopTimeout):
		return fmt.Errorf("%s: did not exit after SIGKILL", p.label)
	}
}

// Restart stops node's agent if it runs (SIGTERM, then SIGKILL after
// StopTimeout), starts it again with the same configuration and state, and
// waits until it serves.
func (n *Network) Restart(ctx context.Context, node string) error {
	np, ok := n.plan.Node(node)
	if !ok {
		return fmt.Errorf("no node %q in this network", node)
	}
	n.mu.Lock()
	if n.stopping {
		n.mu.Unlock()
		return errors.New("network is stopped")
	}
	p := n.procs[nodeKey(node)]
	n.mu.Unlock()
	if p != nil && p.running() {
		n.mu.Lock()
		p.expected = true
		n.mu.Unlock()
		n.terminate(p)
	}
	if err := n.start(np); err != nil {
		return err
	}
	return n.waitReady(ctx, []string{node})
}

// Stop sends SIGTERM to every agent, waits for each up to StopTimeout, kills
// those still running, removes endpoints.json and releases the state dir.
// It reports agents that did not exit cleanly. It is safe to call more than
// once and after a failure.
func (n *Network) Stop() error {
	n.stopOnce.Do(func() { n.stopErr = n.shutdown() })
	return n.stopErr
}

func (n *Network) shutdown() error {
	n.mu.Lock()
	n.stopping = true
	var ps []*proc
	for _, p := range n.procs {
		p.expected = true
		ps = append(ps, p)
	}
	n.mu.Unlock()

	var wg sync.WaitGroup
	errs := make([]error, len(ps))
	for i, p := range ps {
		wg.Go(func() { errs[i] = n.terminate(p) })
	}
	wg.Wait()
	os.Remove(filepath.Join(n.plan.StateDir, EndpointsFile))
	unlockStateDir(n.lock)
	close(n.done)
	return errors.Join(errs...)
}

// terminate asks p to exit and waits, bounded; it returns an error if p had
// to be killed or exited with a failure.
func (n *Network) terminate(p *proc) error {
	if p.running() {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.exited:
	case <-time.After(n.opts.StopTimeout):
		p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s: ignored SIGTERM for %s and was killed", p.label, n.opts.StopTimeout)
	}
	if p.waitErr != nil && !isKilled(p.waitErr) {
		return fmt.Errorf("%s: exited: %v", p.label, p.waitErr)
	}
	return nil
}

func isKilled(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	return false
}

func (n *Network) runningProc(key string) (*proc, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopping {
		return nil, errors.New("network is stopped")
	}
	p := n.procs[key]
	if p == nil || !p.running() {
		return nil, fmt.Errorf("%s is not running", strings.Replace(key, ":", " ", 1))
	}
	return p, nil
}

// startMarker begins each run of an agent in its log, so the log tail of a
// failure shows only the last run.
const startMarker = "--- qkdnet: starting agent "

func (n *Network) start(np *NodePlan) error {
	args := append(slices.Clone(n.opts.Args), "--config", np.ConfigPath)
	return n.startProc(nodeKey(np.ID), "node "+np.ID, np.LogPath, args, np)
}

func (n *Network) startController(cp *ControllerPlan) error {
	args := append(slices.Clone(n.opts.ControllerArgs), cp.Args...)
	return n.startProc(controllerKey(cp.ID), "controller "+cp.ID, cp.LogPath, args, nil)
}

func nodeKey(id string) string       { return "node:" + id }
func controllerKey(id string) string { return "controller:" + id }

func (n *Network) startProc(key, label, logPath string, args []string, np *NodePlan) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopping {
		return errors.New("network is stopped")
	}
	if p := n.procs[key]; p != nil && p.running() {
		return fmt.Errorf("%s: already running", label)
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	fmt.Fprintf(logf, "%s%s: %s %s\n", startMarker, time.Now().Format(time.RFC3339), n.opts.Executable, strings.Join(args, " "))

	cmd := exec.Command(n.opts.Executable, args...)
	cmd.Env = append(os.Environ(), n.opts.Env...)
	cmd.SysProcAttr = childSysProcAttr()
	var out io.Writer = logf
	if n.opts.Verbose != nil {
		tag := label
		if np != nil {
			tag = np.ID
		}
		out = io.MultiWriter(logf, &prefixWriter{prefix: "[" + tag + "] ", w: n.verbose})
	}
	cmd.Stdout, cmd.Stderr = out, out
	// A child's own children could hold the output pipe open; do not let
	// that block Wait forever.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: starting %s: %w", label, n.opts.Executable, err)
	}
	p := &proc{label: label, logPath: logPath, node: np, cmd: cmd, log: logf, exited: make(chan struct{})}
	n.procs[key] = p
	n.opts.Logger.Info("process started", "what", label, "pid", cmd.Process.Pid, "log", logPath)
	go n.watch(p)
	return nil
}

// watch waits for p to exit and fails the network if nobody asked for it.
func (n *Network) watch(p *proc) {
	err := p.cmd.Wait()
	p.log.Close()
	n.mu.Lock()
	p.waitErr = err
	close(p.exited)
	unexpected := !p.expected && !n.stopping
	n.mu.Unlock()
	if !unexpected {
		n.opts.Logger.Debug("process exited", "what", p.label, "status", exitStatus(err))
		return
	}
	ne := &NodeError{Node: p.id(), Reason: p.kind() + " exited unexpectedly: " + exitStatus(err), LogPath: p.logPath, LogTail: logTail(p.logPath, 15)}
	n.opts.Logger.Error("process exited unexpectedly; stopping the network", "what", p.label, "status", exitStatus(err), "log", p.logPath)
	n.mu.Lock()
	if n.err == nil {
		n.err = ne
	}
	n.mu.Unlock()
	go n.Stop()
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// waitReady polls the given nodes until each serves, reporting progress
// every few seconds. It gives up when the network fails, ctx ends or
// ReadyTimeout passes.
func (n *Network) waitReady(ctx context.Context, nodes []string) error {
	ctx, cancel := context.WithTimeout(ctx, n.opts.ReadyTimeout)
	defer cancel()
	probeCfg, err := pki.ClientTLS(filepath.Join(n.plan.StateDir, filepath.FromSlash(n.plan.Endpoints.CACert)),
		n.plan.Nodes[0].Config.TLS.Cert, n.plan.Nodes[0].Config.TLS.Key)
	if err != nil {
		return err
	}
	pending := slices.Clone(nodes)
	why := map[string]string{}
	lastReport := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var still []string
		for _, id := range pending {
			np, _ := n.plan.Node(id)
			if err := probe(ctx, probeCfg, np); err != nil {
				why[id] = err.Error()
				still = append(still, id)
			} else {
				n.opts.Logger.Info("agent serves", "node", id, "rest", "https://"+loopback(np.Ports.REST), "grpc", loopback(np.Ports.GRPC))
			}
		}
		pending = still
		if len(pending) == 0 {
			return nil
		}
		if time.Since(lastReport) >= 3*time.Second {
			lastReport = time.Now()
			for _, id := range pending {
				n.opts.Logger.Info("waiting for agent", "node", id, "last", why[id])
			}
		}
		select {
		case <-n.done:
			if err := n.Err(); err != nil {
				return err
			}
			return errors.New("network stopped while starting")
		case <-ctx.Done():
			id := pending[0]
			np, _ := n.plan.Node(id)
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return &NodeError{Node: id, Reason: fmt.Sprintf("agent not serving after %s: %s", n.opts.ReadyTimeout, why[id]),
					LogPath: np.LogPath, LogTail: logTail(np.LogPath, 15)}
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// probe checks that np's agent completes a TLS handshake on its REST port
// (with a client certificate) and on its gRPC port (offering h2, which gRPC
// requires), and that it is the node it should be.
func probe(ctx context.Context, base *tls.Config, np *NodePlan) error {
	for _, c := range []struct {
		name  string
		port  int
		proto []string
	}{{"REST", np.Ports.REST, []string{"h2", "http/1.1"}}, {"gRPC", np.Ports.GRPC, []string{"h2"}}} {
		cfg := base.Clone()
		cfg.NextProtos = c.proto
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: time.Second}, Config: cfg}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := d.DialContext(pctx, "tcp", loopback(c.port))
		cancel()
		if err != nil {
			return fmt.Errorf("%s %s: %v", c.name, loopback(c.port), err)
		}
		id, err := pki.PeerIdentity(conn.(*tls.Conn).ConnectionState())
		conn.Close()
		if err != nil {
			return fmt.Errorf("%s %s: %v", c.name, loopback(c.port), err)
		}
		if id != (pki.Identity{Kind: pki.KindNode, ID: np.ID}) {
			return fmt.Errorf("%s %s: served by %s, not node %s", c.name, loopback(c.port), id, np.ID)
		}
	}
	return nil
}

// logTail returns up to n last lines of the log since the last start marker.
func logTail(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	const window = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > window {
		f.Seek(st.Size()-window, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	if i := bytes.LastIndex(b, []byte(startMarker)); i >= 0 {
		if j := bytes.IndexByte(b[i:], '\n'); j >= 0 {
			b = b[i+j+1:]
		}
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), window)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// prefixWriter writes each line with a prefix; partial lines wait for their
// end, so lines of different agents do not interleave mid-line.
type prefixWriter struct {
	prefix string
	w      io.Writer
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		line := make([]byte, 0, len(p.prefix)+i+1)
		line = append(append(line, p.prefix...), p.buf[:i+1]...)
		p.w.Write(line)
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
