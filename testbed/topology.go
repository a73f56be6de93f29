package testbed

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/qkdnet/qkdnet/agent"
	"github.com/qkdnet/qkdnet/pki"
)

// Embedded topologies: copies of deploy/topologies/*.yaml (a test keeps them
// identical), so a binary built from any checkout has them.
//
//go:embed topologies/*.yaml
var embedded embed.FS

// DefaultTopologyName is the topology `qkdnet up` starts without --topology:
// the paper's three rooftops A-B-C (its Fig. 1), whose SAEs at A and C get
// keys relayed through B. "fig4" is the paper's two-node testbed.
const DefaultTopologyName = "rooftops"

// Topology is a testbed network: trusted nodes, QKD links between them and
// the SAEs attached to them. The YAML format is documented at the top of
// deploy/topologies/fig4.yaml. ParseTopology fills in defaults, so a parsed
// Topology has every field set.
type Topology struct {
	Nodes []TopoNode   `yaml:"nodes"`
	Links []TopoLink   `yaml:"links"`
	SAEs  []TopoSAE    `yaml:"saes"`
	KMM   KMMOverrides `yaml:"kmm"`
}

// TopoNode is a trusted node; it runs one agent.
type TopoNode struct {
	ID    string `yaml:"id"`
	KMEID string `yaml:"kme_id"`
}

// TopoLink is a QKD link between nodes A and B.
type TopoLink struct {
	ID string `yaml:"id"`
	A  string `yaml:"a"`
	B  string `yaml:"b"`
	// Master is the end whose KMM is master and whose emulator is alice.
	Master   string  `yaml:"master"`
	Kind     string  `yaml:"kind"`
	Driver   string  `yaml:"driver"`
	KeyRate  float64 `yaml:"key_rate"`
	KeyBytes int     `yaml:"key_bytes"`
}

// Slave is the end of l that is not its master.
func (l TopoLink) Slave() string {
	if l.Master == l.A {
		return l.B
	}
	return l.A
}

// TopoSAE attaches an SAE to a node.
type TopoSAE struct {
	ID   string `yaml:"id"`
	Node string `yaml:"node"`
}

// KMMOverrides are the agent.KMMSettings a topology may set; zero means the
// agent's default.
type KMMOverrides struct {
	KeySize           int      `yaml:"key_size"`
	MinKeySize        int      `yaml:"min_key_size"`
	MaxKeySize        int      `yaml:"max_key_size"`
	MaxKeysPerRequest int      `yaml:"max_keys_per_request"`
	PoolMax           int      `yaml:"pool_max"`
	KeyLifetime       Duration `yaml:"key_lifetime"`
	AllocPeriod       Duration `yaml:"alloc_period"`
	DefaultKeyRate    int      `yaml:"default_key_rate"`
	DefaultMaxBuffer  int      `yaml:"default_max_buffer"`
	HistoryInterval   Duration `yaml:"history_interval"`
	HistoryRetention  Duration `yaml:"history_retention"`
}

// Settings converts the overrides to the agent's type.
func (k KMMOverrides) Settings() agent.KMMSettings {
	return agent.KMMSettings{
		KeySize:           k.KeySize,
		MinKeySize:        k.MinKeySize,
		MaxKeySize:        k.MaxKeySize,
		MaxKeysPerRequest: k.MaxKeysPerRequest,
		PoolMax:           k.PoolMax,
		KeyLifetime:       agent.Duration(k.KeyLifetime),
		AllocPeriod:       agent.Duration(k.AllocPeriod),
		DefaultKeyRate:    k.DefaultKeyRate,
		DefaultMaxBuffer:  k.DefaultMaxBuffer,
		HistoryInterval:   agent.Duration(k.HistoryInterval),
		HistoryRetention:  agent.Duration(k.HistoryRetention),
	}
}

// Duration reads a YAML duration string such as "500ms".
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 500ms", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: want a duration such as 500ms, got %q", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes a Go duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Link driver kinds.
const (
	DriverEmulator = "emulator"
	DriverRemote   = "remote"
)

// EmbeddedTopologies lists the names LoadTopology accepts besides paths.
func EmbeddedTopologies() []string {
	ents, _ := embedded.ReadDir("topologies")
	var names []string
	for _, e := range ents {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(names)
	return names
}

// DefaultTopology is the paper's Fig. 4: nodes A and B, one FSO-QKD link at
// one 32-byte key per second, SAE_A on A and SAE_B on B.
func DefaultTopology() *Topology {
	t, err := LoadTopology(DefaultTopologyName)
	if err != nil {
		panic("testbed: embedded default topology is invalid: " + err.Error())
	}
	return t
}

// LoadTopology reads a topology from a YAML file, or, when nameOrPath is not
// an existing file, from the embedded topology of that name ("fig4", "bench").
func LoadTopology(nameOrPath string) (*Topology, error) {
	b, err := os.ReadFile(nameOrPath)
	src := nameOrPath
	if errors.Is(err, os.ErrNotExist) && !strings.ContainsAny(nameOrPath, `/\`) {
		name := strings.TrimSuffix(nameOrPath, ".yaml")
		if eb, eerr := embedded.ReadFile(path.Join("topologies", name+".yaml")); eerr == nil {
			b, err, src = eb, nil, "embedded topology "+name
		} else {
			return nil, fmt.Errorf("topology %s: no such file, nor an embedded topology (%s)", nameOrPath, strings.Join(EmbeddedTopologies(), ", "))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	t, err := ParseTopology(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	return t, nil
}

// ParseTopology parses and validates a YAML topology and fills in defaults.
// Errors name the offending field, e.g. `links[0].b: node "C" is not in nodes`.
func ParseTopology(b []byte) (*Topology, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true) // a misspelt field is an error, not a silent default
	var t Topology
	if err := dec.Decode(&t); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("topology is empty")
		}
		return nil, oneLine(err)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// oneLine turns yaml.v3's multi-line "unmarshal errors" into one line.
func oneLine(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return errors.New(strings.Join(te.Errors, "; "))
	}
	return errors.New(strings.ReplaceAll(err.Error(), "\n", " "))
}

// Validate fills in defaults and reports the first problem, naming the field.
func (t *Topology) Validate() error {
	if len(t.Nodes) == 0 {
		return errors.New("nodes: at least one node is required")
	}
	nodes := map[string]int{}
	lower := map[string]string{}
	kmes := map[string]string{}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		f := fmt.Sprintf("nodes[%d]", i)
		if err := pki.ValidID(n.ID); err != nil {
			return fmt.Errorf("%s.id: %w", f, err)
		}
		if prev, dup := lower[strings.ToLower(n.ID)]; dup {
			return fmt.Errorf("%s.id: %q repeats node %q (IDs must differ ignoring case)", f, n.ID, prev)
		}
		lower[strings.ToLower(n.ID)] = n.ID
		nodes[n.ID] = i
		if n.KMEID == "" {
			n.KMEID = "KME_" + n.ID
		}
		if prev, dup := kmes[n.KMEID]; dup {
			return fmt.Errorf("%s.kme_id: %q is also the kme_id of node %q", f, n.KMEID, prev)
		}
		kmes[n.KMEID] = n.ID
	}

	links := map[string]bool{}
	for i := range t.Links {
		l := &t.Links[i]
		f := fmt.Sprintf("links[%d]", i)
		if err := pki.ValidID(l.ID); err != nil {
			return fmt.Errorf("%s.id: %w", f, err)
		}
		if links[l.ID] {
			return fmt.Errorf("%s.id: link %q is listed twice", f, l.ID)
		}
		links[l.ID] = true
		for _, end := range []struct{ name, v string }{{"a", l.A}, {"b", l.B}} {
			if end.v == "" {
				return fmt.Errorf("%s.%s: required", f, end.name)
			}
			if _, ok := nodes[end.v]; !ok {
				return fmt.Errorf("%s.%s: node %q is not in nodes", f, end.name, end.v)
			}
		}
		if l.A == l.B {
			return fmt.Errorf("%s.b: a link needs two different nodes, both ends are %q", f, l.A)
		}
		switch l.Master {
		case "":
			l.Master = l.A
		case l.A, l.B:
		default:
			return fmt.Errorf("%s.master: %q must be one of the link's ends %q or %q", f, l.Master, l.A, l.B)
		}
		if l.Kind == "" {
			l.Kind = "QKD"
		}
		switch l.Driver {
		case "":
			l.Driver = DriverEmulator
		case DriverEmulator, DriverRemote:
		default:
			return fmt.Errorf("%s.driver: %q must be %s or %s", f, l.Driver, DriverEmulator, DriverRemote)
		}
		switch {
		case l.KeyRate == 0:
			l.KeyRate = 1
		case l.KeyRate < 0 || l.KeyRate > 1e6:
			return fmt.Errorf("%s.key_rate: %v must be in (0, 1000000] keys/s", f, l.KeyRate)
		}
		switch {
		case l.KeyBytes == 0:
			l.KeyBytes = 32
		case l.KeyBytes < 0 || l.KeyBytes > 8192:
			return fmt.Errorf("%s.key_bytes: %d must be in [1, 8192]", f, l.KeyBytes)
		}
	}

	saes := map[string]string{}
	for i := range t.SAEs {
		s := &t.SAEs[i]
		f := fmt.Sprintf("saes[%d]", i)
		if err := pki.ValidID(s.ID); err != nil {
			return fmt.Errorf("%s.id: %w", f, err)
		}
		// Certificate files are named after the lower-case ID, so IDs that
		// differ only in case would share a certificate.
		file := pki.SAEFiles("", s.ID).Cert
		if prev, dup := saes[file]; dup {
			return fmt.Errorf("%s.id: %q clashes with SAE %q (IDs must differ ignoring case and a sae_ prefix)", f, s.ID, prev)
		}
		saes[file] = s.ID
		if s.Node == "" {
			return fmt.Errorf("%s.node: required", f)
		}
		if _, ok := nodes[s.Node]; !ok {
			return fmt.Errorf("%s.node: node %q is not in nodes", f, s.Node)
		}
	}

	k := t.KMM
	for _, c := range []struct {
		name string
		v    int
	}{
		{"key_size", k.KeySize}, {"min_key_size", k.MinKeySize}, {"max_key_size", k.MaxKeySize},
		{"max_keys_per_request", k.MaxKeysPerRequest}, {"pool_max", k.PoolMax},
		{"default_key_rate", k.DefaultKeyRate}, {"default_max_buffer", k.DefaultMaxBuffer},
	} {
		if c.v < 0 {
			return fmt.Errorf("kmm.%s: %d must not be negative", c.name, c.v)
		}
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"key_size", k.KeySize}, {"min_key_size", k.MinKeySize}, {"max_key_size", k.MaxKeySize}} {
		if c.v%8 != 0 {
			return fmt.Errorf("kmm.%s: %d bits is not a multiple of 8", c.name, c.v)
		}
	}
	if k.MinKeySize > 0 && k.MaxKeySize > 0 && k.MinKeySize > k.MaxKeySize {
		return fmt.Errorf("kmm.min_key_size: %d is above max_key_size %d", k.MinKeySize, k.MaxKeySize)
	}
	if k.KeyLifetime < 0 || k.AllocPeriod < 0 || k.HistoryInterval < 0 || k.HistoryRetention < 0 {
		return errors.New("kmm.key_lifetime, kmm.alloc_period and kmm.history_* must not be negative")
	}
	if k.HistoryInterval > 0 && k.HistoryRetention > 0 && k.HistoryRetention < k.HistoryInterval {
		return fmt.Errorf("kmm.history_retention %v is shorter than kmm.history_interval %v", time.Duration(k.HistoryRetention), time.Duration(k.HistoryInterval))
	}
	return nil
}

// NodeIndex returns the position of node id in t.Nodes, or -1.
func (t *Topology) NodeIndex(id string) int {
	for i, n := range t.Nodes {
		if n.ID == id {
			return i
		}
	}
	return -1
}
