package testbed

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/qkdnet/qkdnet/agent"
	"github.com/qkdnet/qkdnet/pki"
)

// DefaultStateDir is where `qkdnet up` keeps its state unless told otherwise.
const DefaultStateDir = ".qkdnet"

// Options say which network Up starts and how.
type Options struct {
	// StateDir holds certificates, agent configs, key stores, logs and
	// endpoints.json; it survives restarts. Default ".qkdnet".
	StateDir string
	// Topology is the network; default DefaultTopology() (paper Fig. 4).
	Topology *Topology
	// BasePort moves every port (see PortPlan); 0 is the default plan.
	BasePort int
	// KeyRate, when positive, overrides every link's key rate (keys/s). It
	// also becomes the KMM's default stream rate unless the topology sets
	// kmm.default_key_rate, so a benchmark is not capped at 1 key/s.
	KeyRate float64
	// Executable is the program started for each node; default
	// os.Executable(), i.e. this very program, re-executed. Tests pass a
	// freshly built qkdnet (or qkd-agent) binary.
	Executable string
	// Args come before "--config <agent.json>"; nil means ["agent"], which
	// both qkdnet and qkd-agent accept.
	Args []string
	// Controllers is the number of controller replicas (1, 3 or 5) started
	// as processes beside the agents; the agents then take their links,
	// roles and key streams from the controller. 0 starts no controller and
	// gives each agent a static topology (the runner's own tests use it).
	Controllers int
	// ControllerArgs come before the controller's flags; nil means
	// ["controller"] (qkdnet's hidden command running one replica).
	ControllerArgs []string
	// Env is added to the environment of every agent.
	Env []string
	// Logger gets progress and failure reports; default discards them.
	Logger *slog.Logger
	// Verbose, when set, also gets every agent's output, each line prefixed
	// with "[node] ". Each agent's output always goes to its agent.log.
	Verbose io.Writer
	// ReadyTimeout bounds the wait for all agents to serve. Default 60 s.
	ReadyTimeout time.Duration
	// StopTimeout bounds the wait for an agent to exit after SIGTERM,
	// before it gets SIGKILL. Default 10 s.
	StopTimeout time.Duration
	// PeerAddrs, by node ID, replace the gRPC address a node's peer KMMs
	// dial (agent advertise_grpc_addr), so a proxy can sit between KMMs;
	// the proxy must forward to the node's own gRPC port (PortPlan).
	// Probes, SAEs and endpoints.json still use the node's own port.
	PeerAddrs map[string]string
}

func (o *Options) defaults() error {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	abs, err := filepath.Abs(o.StateDir)
	if err != nil {
		return fmt.Errorf("state dir %s: %w", o.StateDir, err)
	}
	o.StateDir = abs
	if o.Topology == nil {
		o.Topology = DefaultTopology()
	}
	if o.KeyRate < 0 || o.KeyRate > 1e6 || math.IsNaN(o.KeyRate) {
		return fmt.Errorf("key rate %v: must be in (0, 1000000] keys/s", o.KeyRate)
	}
	if o.Args == nil {
		o.Args = []string{"agent"}
	}
	if o.ControllerArgs == nil {
		o.ControllerArgs = []string{"controller"}
	}
	switch o.Controllers {
	case 0, 1, 3, 5:
	default:
		return fmt.Errorf("controllers %d: want 1, 3 or 5 replicas", o.Controllers)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 10 * time.Second
	}
	return nil
}

// Plan is a prepared network: everything on disk that its agents need.
type Plan struct {
	// StateDir is absolute.
	StateDir string
	Topology *Topology
	Nodes    []NodePlan
	// Controllers are the controller replicas (none without a controller).
	Controllers []ControllerPlan
	// Operator is the operator certificate the runner seeds the controller
	// with (and qkdctl uses).
	Operator pki.Files
	// Endpoints is what endpoints.json will hold once the network serves,
	// with paths relative to StateDir as in the file.
	Endpoints Endpoints
}

// NodePlan is one node's agent.
type NodePlan struct {
	ID    string
	Ports Ports
	// Dir is <state>/nodes/<id>; it holds agent.json, agent.log and data/.
	Dir        string
	ConfigPath string
	LogPath    string
	Config     agent.Config
}

// ControllerPlan is one controller replica.
type ControllerPlan struct {
	ID    string
	Ports ControllerPorts
	// Dir is <state>/controllers/<id>; it holds controller.log and raft/.
	Dir     string
	DataDir string
	LogPath string
	// Args are the replica's flags.
	Args []string
}

// Node returns the plan of node id.
func (p *Plan) Node(id string) (*NodePlan, bool) {
	for i := range p.Nodes {
		if p.Nodes[i].ID == id {
			return &p.Nodes[i], true
		}
	}
	return nil, false
}

// PKIDir is <state>/pki.
func PKIDir(stateDir string) string { return filepath.Join(stateDir, "pki") }

// Prepare makes the state dir ready for opts' network without starting
// anything: the PKI in <state>/pki (reused when valid), and for each node
// <state>/nodes/<id>/agent.json and its data dir. It is idempotent; configs
// are rewritten on each call, so a changed topology or base port takes effect.
func Prepare(opts Options) (*Plan, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	return prepare(&opts)
}

func prepare(opts *Options) (*Plan, error) {
	top := opts.Topology
	ports, err := PortPlan(opts.BasePort, len(top.Nodes))
	if err != nil {
		return nil, err
	}
	state := opts.StateDir
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}

	pkiDir := PKIDir(state)
	ca, err := pki.InitCA(pkiDir)
	if err != nil {
		return nil, err
	}
	nodeFiles := map[string]pki.Files{}
	for _, n := range top.Nodes {
		f, err := ca.IssueNode(n.ID)
		if err != nil {
			return nil, err
		}
		nodeFiles[n.ID] = f
	}
	rel := func(p string) string {
		r, err := filepath.Rel(state, p)
		if err != nil {
			return p
		}
		return filepath.ToSlash(r)
	}
	plan := &Plan{StateDir: state, Topology: top}
	plan.Endpoints.CACert = rel(ca.Files().Cert)
	for _, s := range top.SAEs {
		f, err := ca.IssueSAE(s.ID)
		if err != nil {
			return nil, err
		}
		plan.Endpoints.SAEs = append(plan.Endpoints.SAEs, SAEEntry{SAEID: s.ID, KMM: s.Node, Cert: rel(f.Cert), Key: rel(f.Key)})
	}

	var ctlAddrs []string
	if opts.Controllers > 0 {
		cports, err := ControllerPortPlan(opts.BasePort, opts.Controllers)
		if err != nil {
			return nil, err
		}
		of, err := ca.IssueOperator("admin")
		if err != nil {
			return nil, err
		}
		plan.Operator = of
		plan.Endpoints.Operator = &CertEntry{Cert: rel(of.Cert), Key: rel(of.Key)}
		for _, cp := range cports {
			ctlAddrs = append(ctlAddrs, loopback(cp.GRPC))
		}
		for i, cp := range cports {
			id := fmt.Sprintf("c%d", i+1)
			f, err := ca.IssueController(id)
			if err != nil {
				return nil, err
			}
			dir := filepath.Join(state, "controllers", id)
			c := ControllerPlan{ID: id, Ports: cp, Dir: dir, DataDir: filepath.Join(dir, "raft"), LogPath: filepath.Join(dir, "controller.log")}
			if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
				return nil, fmt.Errorf("controller %s: %w", id, err)
			}
			c.Args = []string{"--id", id, "--grpc", loopback(cp.GRPC), "--raft", loopback(cp.Raft), "--metrics", loopback(cp.Metrics),
				"--data-dir", c.DataDir, "--ca", ca.Files().Cert, "--cert", f.Cert, "--key", f.Key}
			if i == 0 {
				c.Args = append(c.Args, "--bootstrap")
			} else {
				// Join through every replica started before; the leader
				// answers (the others point at it).
				c.Args = append(c.Args, "--join", strings.Join(ctlAddrs[:i], ","))
			}
			plan.Controllers = append(plan.Controllers, c)
			if i == 0 {
				plan.Endpoints.Dashboard = "http://" + loopback(cp.Metrics) + "/dashboard/"
			}
			plan.Endpoints.Controllers = append(plan.Endpoints.Controllers, ControllerEntry{
				ID: id, GRPC: loopback(cp.GRPC), Raft: loopback(cp.Raft), GNMI: loopback(cp.GRPC), Metrics: "http://" + loopback(cp.Metrics) + "/metrics"})
		}
	}

	kmm := top.KMM.Settings()
	if opts.KeyRate > 0 && kmm.DefaultKeyRate == 0 {
		kmm.DefaultKeyRate = int(math.Ceil(opts.KeyRate))
	}
	var topoNodes []agent.Node
	for i, n := range top.Nodes {
		addr := loopback(ports[i].GRPC)
		if a, ok := opts.PeerAddrs[n.ID]; ok {
			addr = a
		}
		topoNodes = append(topoNodes, agent.Node{ID: n.ID, KMEID: n.KMEID, GRPCAddr: addr})
	}
	var saes []agent.SAE
	for _, s := range top.SAEs {
		saes = append(saes, agent.SAE{ID: s.ID, Node: s.Node})
	}

	for i, n := range top.Nodes {
		dir := filepath.Join(state, "nodes", n.ID)
		dataDir := filepath.Join(dir, "data")
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.ID, err)
		}
		var links []agent.Link
		for _, l := range top.Links {
			if l.A != n.ID && l.B != n.ID {
				continue
			}
			// With a controller the role comes from it; the link's master
			// in the topology is what the runner asks the controller for.
			al := agent.Link{ID: l.ID, Role: "slave", Driver: agent.DriverConfig{Kind: l.Driver}}
			if l.Master == n.ID {
				al.Role = "master"
				al.Peer = l.Slave()
			} else {
				al.Peer = l.Master
			}
			if l.Driver == DriverEmulator {
				al.Driver.End = "bob"
				if l.Master == n.ID {
					al.Driver.End = "alice"
				}
				al.Driver.KeyRate = l.KeyRate
				if opts.KeyRate > 0 {
					al.Driver.KeyRate = opts.KeyRate
				}
				al.Driver.KeyBytes = l.KeyBytes
			}
			links = append(links, al)
		}
		nf := nodeFiles[n.ID]
		cfg := agent.Config{
			Node:              n.ID,
			KMEID:             n.KMEID,
			DataDir:           dataDir,
			RESTAddr:          loopback(ports[i].REST),
			GRPCAddr:          loopback(ports[i].GRPC),
			MetricsAddr:       loopback(ports[i].Metrics),
			AdvertiseGRPCAddr: opts.PeerAddrs[n.ID],
			TLS:               agent.TLSFiles{CA: ca.Files().Cert, Cert: nf.Cert, Key: nf.Key},
			KMM:               kmm,
			Topology:          agent.Topology{Nodes: topoNodes, Links: links, SAEs: saes},
		}
		if opts.Controllers > 0 {
			// The controller owns the network: the agent keeps only its
			// QKD modules (drivers) and where the controller is.
			for i := range links {
				links[i].Role = ""
			}
			cfg.Controllers = ctlAddrs
			cfg.Topology = agent.Topology{Links: links}
		}
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("node %s: generated agent config: %w", n.ID, err)
		}
		np := NodePlan{
			ID:         n.ID,
			Ports:      ports[i],
			Dir:        dir,
			ConfigPath: filepath.Join(dir, "agent.json"),
			LogPath:    filepath.Join(dir, "agent.log"),
			Config:     cfg,
		}
		b, err := json.MarshalIndent(cfg, "", "  ")
		if err != nil {
			return nil, err
		}
		if err := writeFileAtomic(np.ConfigPath, append(b, '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.ID, err)
		}
		plan.Nodes = append(plan.Nodes, np)
		ke := KMMEntry{
			Node:    n.ID,
			KMEID:   n.KMEID,
			URL:     "https://" + loopback(ports[i].REST),
			GRPC:    loopback(ports[i].GRPC),
			Metrics: "http://" + loopback(ports[i].Metrics) + "/metrics",
		}
		if opts.Controllers > 0 {
			ke.GNMI = ke.GRPC
		}
		plan.Endpoints.KMMs = append(plan.Endpoints.KMMs, ke)
	}

	// The effective topology (defaults filled in, key rate overridden) is
	// kept beside the configs for people to read; nothing reads it back.
	eff := *top
	if opts.KeyRate > 0 {
		eff.Links = append([]TopoLink(nil), top.Links...)
		for i := range eff.Links {
			eff.Links[i].KeyRate = opts.KeyRate
		}
	}
	if b, err := yaml.Marshal(&eff); err == nil {
		hdr := "# The topology of the last `qkdnet up` in this state dir, defaults filled in. Not read back.\n"
		if err := writeFileAtomic(filepath.Join(state, "topology.yaml"), append([]byte(hdr), b...), 0o644); err != nil {
			return nil, err
		}
	}
	return plan, nil
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// writeFileAtomic writes b to path via a temporary file and a rename, so
// readers (scripts polling endpoints.json, an agent starting) never see a
// half-written file.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Chmod(mode)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
	}
	return werr
}

// WriteEndpoints writes e to <dir>/endpoints.json atomically.
func WriteEndpoints(dir string, e Endpoints) error {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, EndpointsFile), append(b, '\n'), 0o644)
}
