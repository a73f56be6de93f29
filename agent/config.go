package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// Config is everything one node agent needs to start. qkdnet writes one per
// node (JSON, <state-dir>/nodes/<node>/agent.json); the controller will push
// the topology part (roles, SAE-to-node map, QoS) later, so that part is kept
// apart in Topology.
type Config struct {
	// Node is this trusted node's ID, e.g. "A".
	Node string `json:"node"`
	// KMEID is the KME_ID this node's KMM answers ETSI 014 with, e.g. "KME_A".
	KMEID string `json:"kme_id"`
	// DataDir holds the key store and the key-encryption key (created if missing).
	DataDir string `json:"data_dir"`
	// RESTAddr serves ETSI GS QKD 014 over HTTPS with mutual TLS.
	RESTAddr string `json:"rest_addr"`
	// GRPCAddr serves gRPC with mutual TLS: KMM peers, drivers, 014 over gRPC.
	GRPCAddr string `json:"grpc_addr"`
	// AdvertiseGRPCAddr is the address this node registers with the
	// controller, i.e. where its peer KMMs (key sync, relay, the emulated
	// QKD channel) dial it. Default GRPCAddr. It differs when something sits
	// between the KMMs, e.g. the TCP proxy through which `qkdchaos` cuts
	// inter-KMM connections.
	AdvertiseGRPCAddr string `json:"advertise_grpc_addr,omitempty"`
	// MetricsAddr serves Prometheus metrics over plain HTTP (no key material).
	MetricsAddr string `json:"metrics_addr"`
	// Controllers are the gRPC addresses of the controller replicas. With
	// them, the agent registers with the controller and runs what it pushes
	// (links, roles, SAEs, key streams); topology.links then only declare
	// this node's QKD modules (drivers) by link ID, and roles are ignored.
	Controllers []string `json:"controllers,omitempty"`
	// SAELimit bounds each SAE's requests on the SAE API (ETSI 014 REST and
	// gRPC, ETSI 004); unset: ratelimit.DefaultRate and DefaultBurst.
	SAELimit *RateLimit  `json:"sae_rate_limit,omitempty"`
	TLS      TLSFiles    `json:"tls"`
	KMM      KMMSettings `json:"kmm"`
	Topology Topology    `json:"topology"`
}

// RateLimit is a token bucket per SAE: RequestsPerSecond (negative: no
// limit; 0: the default) with bursts of Burst requests (0: the default).
type RateLimit struct {
	RequestsPerSecond float64 `json:"requests_per_second,omitempty"`
	Burst             int     `json:"burst,omitempty"`
}

// TLSFiles are PEM files: the CA that signs every node and SAE, and this node's
// certificate and key (URI SAN qkd://node/<Node>).
type TLSFiles struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// KMMSettings tune the key management module.
type KMMSettings struct {
	// KeySize is the default key size in bits (ETSI 014 key_size). Default 256.
	KeySize int `json:"key_size,omitempty"`
	// MinKeySize and MaxKeySize bound the sizes an SAE may ask for, in bits.
	MinKeySize int `json:"min_key_size,omitempty"`
	MaxKeySize int `json:"max_key_size,omitempty"`
	// MaxKeysPerRequest bounds ETSI 014 "number". Default 1024.
	MaxKeysPerRequest int `json:"max_keys_per_request,omitempty"`
	// PoolMax is the most unallocated keys kept per link. Default 1,000,000.
	PoolMax int `json:"pool_max,omitempty"`
	// KeyLifetime is how long a key may live before it is destroyed. Default 1h.
	KeyLifetime Duration `json:"key_lifetime,omitempty"`
	// AllocPeriod is the key allocation cycle. Default 0.5 s, as in the paper.
	AllocPeriod Duration `json:"alloc_period,omitempty"`
	// DefaultKeyRate and DefaultMaxBuffer are the QoS of a stream opened by a
	// plain ETSI 014 request. Defaults 1 key/s and 4096 keys.
	DefaultKeyRate   int `json:"default_key_rate,omitempty"`
	DefaultMaxBuffer int `json:"default_max_buffer,omitempty"`
	// HistoryInterval is how often the Statistics Manager adds a sample to
	// the Metric Store's history, and HistoryRetention how long samples
	// are kept. Defaults 10 s and 1 h.
	HistoryInterval  Duration `json:"history_interval,omitempty"`
	HistoryRetention Duration `json:"history_retention,omitempty"`
}

// history returns the statistics history interval and retention, with
// their defaults.
func (s KMMSettings) history() (interval, retention time.Duration) {
	interval, retention = time.Duration(s.HistoryInterval), time.Duration(s.HistoryRetention)
	if interval == 0 {
		interval = 10 * time.Second
	}
	if retention == 0 {
		retention = time.Hour
	}
	return interval, retention
}

// Topology is the part of the configuration that the controller will own:
// who the other nodes are, which links end here and with which role, and which
// SAE is attached to which node.
type Topology struct {
	Nodes []Node `json:"nodes"`
	Links []Link `json:"links"`
	SAEs  []SAE  `json:"saes"`
}

// Node is a trusted node of the network.
type Node struct {
	ID       string `json:"id"`
	KMEID    string `json:"kme_id"`
	GRPCAddr string `json:"grpc_addr"`
}

// Link is a QKD link between two nodes, as seen from this node.
type Link struct {
	ID string `json:"id"`
	// Peer is the node at the other end.
	Peer string `json:"peer"`
	// Role is this node's KMM role on the link: "master" allocates keys to
	// streams and tells the peer, "slave" mirrors and acknowledges.
	Role   string       `json:"role,omitempty"`
	Driver DriverConfig `json:"driver"`
}

// DriverConfig says how this node's end of a link gets its keys.
type DriverConfig struct {
	// Kind is "emulator" (software QKD module pair) or "remote" (an
	// out-of-process driver pushes keys over DriverService).
	Kind string `json:"kind"`
	// End is "alice" (draws the keys and serves the emulated classical channel
	// on this agent's gRPC port) or "bob" (dials the peer's gRPC port).
	End string `json:"end,omitempty"`
	// KeyRate is the emulator's keys per second. Default 1, as in the paper.
	KeyRate float64 `json:"key_rate,omitempty"`
	// KeyBytes is the emulator's key size in bytes. Default 32, as in the paper.
	KeyBytes int `json:"key_bytes,omitempty"`
}

// SAE attaches an application entity to a node.
type SAE struct {
	ID   string `json:"id"`
	Node string `json:"node"`
}

// Duration is a time.Duration that reads and writes as "500ms", "1h".
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"500ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// LoadConfig reads a Config from a JSON file and checks it.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// PeerAddr is the gRPC address this node's peers dial: AdvertiseGRPCAddr,
// or GRPCAddr without it.
func (c *Config) PeerAddr() string {
	if c.AdvertiseGRPCAddr != "" {
		return c.AdvertiseGRPCAddr
	}
	return c.GRPCAddr
}

// Validate reports the first thing wrong with c, naming the field.
func (c *Config) Validate() error {
	switch {
	case c.Node == "":
		return errors.New("node is required")
	case c.KMEID == "":
		return errors.New("kme_id is required")
	case c.DataDir == "":
		return errors.New("data_dir is required")
	case c.RESTAddr == "" || c.GRPCAddr == "":
		return errors.New("rest_addr and grpc_addr are required")
	case c.TLS.CA == "" || c.TLS.Cert == "" || c.TLS.Key == "":
		return errors.New("tls.ca, tls.cert and tls.key are required")
	}
	if iv, ret := c.KMM.history(); iv < 0 || ret < iv {
		return fmt.Errorf("kmm.history_interval %v must be positive and at most kmm.history_retention %v", iv, ret)
	}
	if len(c.Controllers) > 0 {
		return c.validateDrivers()
	}
	nodes := map[string]bool{}
	for _, n := range c.Topology.Nodes {
		nodes[n.ID] = true
	}
	if !nodes[c.Node] {
		return fmt.Errorf("topology.nodes does not list this node %q", c.Node)
	}
	for _, l := range c.Topology.Links {
		if !nodes[l.Peer] {
			return fmt.Errorf("link %q: peer %q is not in topology.nodes", l.ID, l.Peer)
		}
		if l.Role != "master" && l.Role != "slave" {
			return fmt.Errorf("link %q: role %q must be master or slave", l.ID, l.Role)
		}
	}
	for _, s := range c.Topology.SAEs {
		if !nodes[s.Node] {
			return fmt.Errorf("sae %q: node %q is not in topology.nodes", s.ID, s.Node)
		}
	}
	return c.validateDrivers()
}

func (c *Config) validateDrivers() error {
	seen := map[string]bool{}
	for _, l := range c.Topology.Links {
		if l.ID == "" {
			return errors.New("a link in topology.links has no id")
		}
		if seen[l.ID] {
			return fmt.Errorf("link %q is listed twice", l.ID)
		}
		seen[l.ID] = true
		switch l.Driver.Kind {
		case "emulator":
			if l.Driver.End != "alice" && l.Driver.End != "bob" {
				return fmt.Errorf("link %q: driver.end %q must be alice or bob", l.ID, l.Driver.End)
			}
		case "remote":
		default:
			return fmt.Errorf("link %q: driver.kind %q must be emulator or remote", l.ID, l.Driver.Kind)
		}
	}
	return nil
}
