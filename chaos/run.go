package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/qkdnet/qkdnet/etsi014client"
	"github.com/qkdnet/qkdnet/testbed"
)

// Modes.
const (
	ModeChaos = "chaos"
	ModeSoak  = "soak"
)

// Config says what to run.
type Config struct {
	Mode     string        // ModeChaos or ModeSoak
	Duration time.Duration // of the load (and faults)
	Seed     uint64        // of the fault schedule
	// StateDir of the network; "" makes a temporary one, removed at the
	// end unless Keep.
	StateDir string
	Keep     bool
	Topology *testbed.Topology // default testbed.DefaultTopology() (rooftops A-B-C)
	// KeyRate overrides every link's key rate (keys/s) and the default
	// stream rate.
	KeyRate float64
	// Workers per SAE pair, and keys per enc_keys.
	Workers, Number int
	// Faults are the enabled kinds (chaos mode); default all.
	Faults []string
	// DiskNode is the node whose key store gets a tmpfs for disk-full
	// (default: the first node with two links, the relay); DiskMB its size.
	DiskNode string
	DiskMB   int
	// Window is the width of a latency/throughput row (default 1 min).
	Window time.Duration
	// Warmup precedes the soak's first memory sample (default
	// min(30 s, Duration/10)).
	Warmup time.Duration
	// Executable, Args and ControllerArgs start agents and replicas (see
	// testbed.Options).
	Executable     string
	Args           []string
	ControllerArgs []string
	Logger         *slog.Logger
}

// Report is the outcome of a run.
type Report struct {
	Mode     string        `json:"mode"`
	Seed     uint64        `json:"seed"`
	Duration time.Duration `json:"duration"`
	StateDir string        `json:"state_dir,omitempty"`
	// Faults injected, by kind; Skipped says why a kind was not.
	Faults  map[string]int    `json:"faults"`
	Skipped map[string]string `json:"skipped,omitempty"`
	// Keys delivered to master SAEs (enc_keys) and to slave SAEs (dec_keys).
	KeysEnc int `json:"keys_enc"`
	KeysDec int `json:"keys_dec"`
	// LostInFlight: keys whose dec_keys got no answer (the KME may have
	// delivered them) and that the slave's KME no longer had afterwards.
	LostInFlight int          `json:"lost_in_flight"`
	Violations   []Violation  `json:"violations"`
	Windows      []Window     `json:"windows"`
	MemStart     []ProcSample `json:"mem_start,omitempty"`
	MemEnd       []ProcSample `json:"mem_end,omitempty"`
	Growth       []string     `json:"growth,omitempty"`
	// Errors are the failed ETSI 014 requests of the load, by what they
	// said (503s while keys run short are normal under load).
	Errors []ErrorCount `json:"errors,omitempty"`
	// Error is why the run could not finish (the network failed, a process
	// would not restart); the invariants are then checked over what was
	// delivered until then.
	Error string `json:"error,omitempty"`
}

// Failed reports whether the run must exit non-zero.
func (r *Report) Failed() bool { return len(r.Violations) > 0 || r.Error != "" }

func (c *Config) defaults() error {
	switch c.Mode {
	case ModeChaos, ModeSoak:
	default:
		return fmt.Errorf("mode %q: want chaos or soak", c.Mode)
	}
	if c.Duration <= 0 {
		return fmt.Errorf("duration %s: must be positive", c.Duration)
	}
	if c.Topology == nil {
		c.Topology = testbed.DefaultTopology()
	}
	if c.KeyRate == 0 {
		c.KeyRate = 200
	}
	if c.Workers <= 0 {
		c.Workers = 2
	}
	if c.Number <= 0 {
		c.Number = 4
	}
	if c.Faults == nil {
		c.Faults = FaultKinds
	}
	for _, f := range c.Faults {
		if !slices.Contains(FaultKinds, f) {
			return fmt.Errorf("fault %q: want one of %v", f, FaultKinds)
		}
	}
	if c.DiskMB <= 0 {
		c.DiskMB = 128
	}
	if c.DiskNode == "" {
		c.DiskNode = relayNode(c.Topology)
	}
	if c.Window <= 0 {
		c.Window = time.Minute
	}
	if c.Warmup <= 0 {
		c.Warmup = min(30*time.Second, c.Duration/10)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// relayNode is the first node with two or more links (B in rooftops), or
// the first node.
func relayNode(t *testbed.Topology) string {
	deg := map[string]int{}
	for _, l := range t.Links {
		deg[l.A]++
		deg[l.B]++
	}
	for _, n := range t.Nodes {
		if deg[n.ID] >= 2 {
			return n.ID
		}
	}
	return t.Nodes[0].ID
}

// pairs are the SAE pairs under load: for each link, its master node's SAE
// to its slave node's (one hop), and for each two SAEs whose nodes share no
// link, both directions (relayed). At most 6 pairs, so a 2-core machine is
// not swamped.
func pairs(t *testbed.Topology) []Pair {
	sae := map[string]string{} // node -> first SAE
	for _, s := range t.SAEs {
		if _, ok := sae[s.Node]; !ok {
			sae[s.Node] = s.ID
		}
	}
	linked := map[[2]string]bool{}
	var out []Pair
	for _, l := range t.Links {
		linked[[2]string{l.A, l.B}], linked[[2]string{l.B, l.A}] = true, true
		m, s := sae[l.Master], sae[l.Slave()]
		if m != "" && s != "" {
			out = append(out, Pair{Master: m, Slave: s})
		}
	}
	for i, a := range t.Nodes {
		for _, b := range t.Nodes[i+1:] {
			if linked[[2]string{a.ID, b.ID}] || sae[a.ID] == "" || sae[b.ID] == "" {
				continue
			}
			out = append(out, Pair{Master: sae[a.ID], Slave: sae[b.ID], Relayed: true}, Pair{Master: sae[b.ID], Slave: sae[a.ID], Relayed: true})
		}
	}
	return out[:min(len(out), 6)]
}

// Run starts the network, runs the load (and, in chaos mode, the faults)
// for c.Duration, settles, checks the invariants and stops the network.
// The error is for a run that could not start; a run that started returns
// a Report (see Report.Error).
func Run(ctx context.Context, c Config) (*Report, error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	log := c.Logger
	rep := &Report{Mode: c.Mode, Seed: c.Seed, Duration: c.Duration, Faults: map[string]int{}, Skipped: map[string]string{}}

	state := c.StateDir
	if state == "" {
		d, err := os.MkdirTemp("", "qkdchaos-")
		if err != nil {
			return nil, err
		}
		state = d
		if !c.Keep {
			defer os.RemoveAll(d)
		}
	}
	rep.StateDir = state
	base, err := testbed.FreeBasePort(len(c.Topology.Nodes))
	if err != nil {
		return nil, err
	}
	ports, err := testbed.PortPlan(base, len(c.Topology.Nodes))
	if err != nil {
		return nil, err
	}

	kinds := []string{}
	proxies := map[string]*Proxy{}
	peerAddrs := map[string]string{}
	var disk *tmpfsDisk
	if c.Mode == ModeChaos {
		kinds = slices.Clone(c.Faults)
		if slices.Contains(kinds, CutKMM) {
			for i, nd := range c.Topology.Nodes {
				p, err := NewProxy(fmt.Sprintf("127.0.0.1:%d", ports[i].GRPC))
				if err != nil {
					return nil, err
				}
				defer p.Close()
				proxies[nd.ID], peerAddrs[nd.ID] = p, p.Addr()
			}
		}
		if slices.Contains(kinds, DiskFull) {
			disk, err = mountTmpfs(c.DiskNode, filepath.Join(state, "nodes", c.DiskNode, "data"), c.DiskMB)
			if err != nil {
				rep.Skipped[DiskFull] = err.Error()
				kinds = slices.DeleteFunc(kinds, func(k string) bool { return k == DiskFull })
				log.Warn("fault kind skipped", "kind", DiskFull, "why", err.Error())
			} else {
				log.Info("key store on a tmpfs", "node", c.DiskNode, "dir", disk.dir, "size_mb", c.DiskMB)
			}
		}
	}

	log.Info("starting the network", "state_dir", state, "base_port", base, "key_rate", c.KeyRate)
	upCtx, upCancel := context.WithTimeout(ctx, 3*time.Minute)
	n, err := testbed.Up(upCtx, testbed.Options{
		StateDir: state, Topology: c.Topology, BasePort: base, KeyRate: c.KeyRate, Controllers: 3,
		Executable: c.Executable, Args: c.Args, ControllerArgs: c.ControllerArgs, Logger: log.With("part", "testbed"),
		PeerAddrs: peerAddrs,
	})
	upCancel()
	if err != nil {
		if disk != nil {
			disk.unmount()
		}
		return nil, fmt.Errorf("network: %w", err)
	}
	defer func() {
		if err := n.Stop(); err != nil {
			log.Warn("network stop", "err", err)
		}
		if disk != nil {
			if err := disk.unmount(); err != nil {
				log.Warn("unmount tmpfs", "dir", disk.dir, "err", err)
			}
		}
	}()

	ep := n.Endpoints()
	clients := map[string]*etsi014client.Client{}
	for _, s := range ep.SAEs {
		k, _ := ep.KMM(s.KMM)
		cl, err := etsi014client.NewFromFiles(k.URL, ep.CACert, s.Cert, s.Key, etsi014client.Options{Timeout: reqTimeout})
		if err != nil {
			return nil, err
		}
		defer cl.Close()
		clients[s.SAEID] = cl
	}

	ledger := NewLedger()
	meter := newMeter(c.Window)
	stopLoad := make(chan struct{})
	var loadWG sync.WaitGroup
	ps := pairs(c.Topology)
	for _, p := range ps {
		var intr *etsi014client.Client
		var intrSAE string
		if p.Relayed {
			// An SAE of a node on the path must not get the relayed keys.
			if s := otherSAE(c.Topology, p); s != "" {
				intr, intrSAE = clients[s], s
			}
		}
		for range c.Workers {
			w := &worker{pair: p, master: clients[p.Master], slave: clients[p.Slave], intruder: intr, intrSAE: intrSAE,
				number: c.Number, ledger: ledger, meter: meter}
			loadWG.Go(func() { w.run(stopLoad) })
		}
	}
	log.Info("load started", "pairs", fmt.Sprint(ps), "workers_per_pair", c.Workers, "keys_per_request", c.Number)

	runCtx, runCancel := context.WithTimeout(ctx, c.Duration)
	defer runCancel()
	// The network fails (Done closes) if a process exits unasked: a crash
	// that no fault caused. That ends the run.
	go func() {
		select {
		case <-n.Done():
			runCancel()
		case <-runCtx.Done():
		}
	}()

	var faultErr error
	var faultWG sync.WaitGroup
	var inj *injector
	if c.Mode == ModeChaos {
		inj = &injector{n: n, rng: rand.New(rand.NewPCG(c.Seed, c.Seed^0x9e3779b97f4a7c15)), proxies: proxies, disk: disk,
			log: func(msg string, args ...any) { log.Info(msg, args...) }, counts: map[string]int{},
			scale: min(1, c.Duration.Seconds()/60)}
		faultWG.Go(func() { faultErr = inj.run(runCtx, kinds) })
	}

	started := time.Now()
	if c.Mode == ModeSoak {
		select {
		case <-runCtx.Done():
		case <-time.After(c.Warmup):
		}
		rep.MemStart = sample(ctx, n)
		log.Info("memory at start", "after", c.Warmup, "processes", summary(rep.MemStart))
	}
	progress := time.NewTicker(5 * time.Second)
	if c.Mode == ModeSoak {
		progress.Reset(30 * time.Second)
	}
loop:
	for {
		select {
		case <-runCtx.Done():
			break loop
		case <-progress.C:
			enc, dec := ledger.Counts()
			log.Info("progress", "elapsed", time.Since(started).Round(time.Second), "keys_enc", enc, "keys_dec", dec,
				"violations", len(ledger.Violations()))
		}
	}
	progress.Stop()
	faultWG.Wait()
	if c.Mode == ModeSoak {
		rep.MemEnd = sample(ctx, n)
		rep.Growth = growth(rep.MemStart, rep.MemEnd)
	}
	close(stopLoad)
	loadWG.Wait()
	end := time.Now()
	if inj != nil {
		rep.Faults = inj.Counts()
	}
	if faultErr != nil {
		rep.Error = "healing a fault failed: " + faultErr.Error()
	}
	if err := n.Err(); err != nil {
		rep.Error = "network failed: " + err.Error()
		var ne *testbed.NodeError
		if errors.As(err, &ne) {
			for _, l := range ne.LogTail {
				log.Error("log tail", "node", ne.Node, "line", l)
			}
		}
	}

	if rep.Error == "" {
		rep.LostInFlight = settle(ledger, clients, log)
	}
	rep.KeysEnc, rep.KeysDec = ledger.Counts()
	rep.Violations = ledger.Violations()
	rep.Windows = meter.windows(end)
	rep.Errors = meter.errors()
	return rep, nil
}

// otherSAE is an SAE on a node of the path between p's SAEs other than
// theirs (the relay node's own SAE), or "".
func otherSAE(t *testbed.Topology, p Pair) string {
	ends := map[string]bool{}
	for _, s := range t.SAEs {
		if s.ID == p.Master || s.ID == p.Slave {
			ends[s.Node] = true
		}
	}
	for _, s := range t.SAEs {
		if !ends[s.Node] {
			return s.ID
		}
	}
	return ""
}

// settle asks each slave SAE's KME for every key its master got and it did
// not: each must come (invariant 4), unless a dec_keys of it got no answer
// (then it may have been delivered already). 503s (a relay still catching
// up after a restart) are retried for up to a minute.
func settle(l *Ledger, clients map[string]*etsi014client.Client, log *slog.Logger) (lostInFlight int) {
	und := l.Undelivered()
	total := 0
	for _, ids := range und {
		total += len(ids)
	}
	log.Info("settling: fetching keys the load did not get at the slave", "keys", total)
	deadline := time.Now().Add(time.Minute)
	for p, ids := range und {
		c := clients[p.Slave]
		for _, id := range ids {
			for {
				patience := max(0, time.Until(deadline))
				dc, _, err := decKeys(c, p.Master, []string{id}, patience)
				if err == nil {
					l.Dec(p, []string{id}, dc)
					dc.Zero()
					break
				}
				code := etsi014client.StatusCode(err)
				if code == 0 {
					l.Inflight([]string{id})
					if time.Now().Before(deadline) {
						time.Sleep(200 * time.Millisecond)
						continue
					}
				}
				if code == http.StatusServiceUnavailable || code == 0 {
					err = fmt.Errorf("still unavailable after the settle minute: %w", err)
				}
				if l.Gone(id, err.Error()) {
					lostInFlight++
				}
				break
			}
		}
	}
	return lostInFlight
}

// sample takes every process's memory and goroutines.
func sample(ctx context.Context, n *testbed.Network) []ProcSample {
	var out []ProcSample
	ep := n.Endpoints()
	for _, k := range ep.KMMs {
		pid := n.PID(k.Node)
		g := scrape(ctx, k.Metrics, "go_goroutines", "go_memstats_heap_inuse_bytes")
		out = append(out, ProcSample{Name: "agent " + k.Node, PID: pid, RSSBytes: rssBytes(pid), HeapBytes: g["go_memstats_heap_inuse_bytes"], Goroutines: g["go_goroutines"]})
	}
	for _, c := range ep.Controllers {
		pid := n.ControllerPID(c.ID)
		g := scrape(ctx, c.Metrics, "go_goroutines", "go_memstats_heap_inuse_bytes")
		out = append(out, ProcSample{Name: "controller " + c.ID, PID: pid, RSSBytes: rssBytes(pid), HeapBytes: g["go_memstats_heap_inuse_bytes"], Goroutines: g["go_goroutines"]})
	}
	return out
}

func summary(s []ProcSample) string {
	var rss, g int64
	for _, p := range s {
		rss += max(0, p.RSSBytes)
		g += max(0, p.Goroutines)
	}
	return fmt.Sprintf("%d processes, RSS %.1f MiB, %d goroutines", len(s), float64(rss)/(1<<20), g)
}

// growth flags processes whose goroutines or memory grew beyond what a
// steady state explains: goroutines by more than 50% and 20, RSS or heap
// by more than 50% and 16 MiB. The slack keeps GC timing and connection
// churn from raising false alarms; a leak over a 10-minute soak clears it.
func growth(start, end []ProcSample) []string {
	var out []string
	for i := range min(len(start), len(end)) {
		s, e := start[i], end[i]
		if s.PID != e.PID {
			out = append(out, fmt.Sprintf("%s restarted during the soak (pid %d -> %d); not compared", s.Name, s.PID, e.PID))
			continue
		}
		if s.Goroutines > 0 && e.Goroutines > s.Goroutines*3/2 && e.Goroutines-s.Goroutines > 20 {
			out = append(out, fmt.Sprintf("%s: goroutines %d -> %d", s.Name, s.Goroutines, e.Goroutines))
		}
		const slack = 16 << 20
		if s.RSSBytes > 0 && e.RSSBytes > s.RSSBytes*3/2 && e.RSSBytes-s.RSSBytes > slack {
			out = append(out, fmt.Sprintf("%s: RSS %.1f -> %.1f MiB", s.Name, mib(s.RSSBytes), mib(e.RSSBytes)))
		}
		if s.HeapBytes > 0 && e.HeapBytes > s.HeapBytes*3/2 && e.HeapBytes-s.HeapBytes > slack {
			out = append(out, fmt.Sprintf("%s: heap in use %.1f -> %.1f MiB", s.Name, mib(s.HeapBytes), mib(e.HeapBytes)))
		}
	}
	return out
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
