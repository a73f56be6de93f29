package state

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Op names a write to the state.
type Op string

// The writes. Each is one Raft log entry.
const (
	OpAddNode      Op = "add_node"
	OpRegister     Op = "register"
	OpRemoveNode   Op = "remove_node"
	OpAddLink      Op = "add_link"
	OpRemoveLink   Op = "remove_link"
	OpEnableLink   Op = "enable_link" // Name, Link.Disabled
	OpPutTree      Op = "put_tree"    // Name, Tree: a node's whole qkd_node tree (gNMI Set)
	OpAddSAE       Op = "add_sae"
	OpRemoveSAE    Op = "remove_sae"
	OpOpenApp      Op = "open_app"
	OpRemoveApp    Op = "remove_app"
	OpJoinApp      Op = "join_app"    // an SAE connects to an application (ETSI 004 OPEN_CONNECT)
	OpLeaveApp     Op = "leave_app"   // an SAE closes it (ETSI 004 CLOSE); the last one removes it
	OpRerouteApp   Op = "reroute_app" // Name, App.Path: the application's new path (a new generation)
	OpSetMember    Op = "set_member"
	OpRemoveMember Op = "remove_member"
)

// Command is one write, as it travels through the Raft log (JSON). The
// leader fills in everything that needs a clock, randomness or a search
// (creation times, paths); Apply only checks and applies, so every replica
// reaches the same state from the same log.
type Command struct {
	Op     Op        `json:"op"`
	Node   *NodeSpec `json:"node,omitempty"`
	Link   *LinkSpec `json:"link,omitempty"`
	SAE    *SAESpec  `json:"sae,omitempty"`
	App    *AppSpec  `json:"app,omitempty"`
	Member *Member   `json:"member,omitempty"`
	// Tree is a node's whole etsi-qkd-sdn-node:qkd_node document
	// (JSON_IETF), for put_tree.
	Tree json.RawMessage `json:"tree,omitempty"`
	// Name names what a remove_* command removes (node, link, SAE, app ID
	// or member ID), or the application join_app and leave_app are about
	// (with the SAE in SAE.ID).
	Name string `json:"name,omitempty"`
}

// Interface is a QKD module of a node (ETSI 015 qkd_interface).
type Interface struct {
	ID         uint32 `json:"id"`
	Link       string `json:"link"`
	Model      string `json:"model,omitempty"`
	Technology string `json:"technology,omitempty"`
}

// Capabilities are ETSI 015 qkdn_capabilities.
type Capabilities struct {
	LinkStats bool `json:"link_stats,omitempty"`
	AppStats  bool `json:"app_stats,omitempty"`
	KeyRelay  bool `json:"key_relay,omitempty"`
}

// NodeSpec declares or registers a node.
type NodeSpec struct {
	Name         string       `json:"name"`
	KMEID        string       `json:"kme_id,omitempty"`
	Location     string       `json:"location,omitempty"`
	AgentAddress string       `json:"agent_address,omitempty"`
	Version      string       `json:"version,omitempty"`
	Interfaces   []Interface  `json:"interfaces,omitempty"`
	Capabilities Capabilities `json:"capabilities"`
}

// LinkSpec adds a PHYS QKD link.
type LinkSpec struct {
	Name string `json:"name"`
	A    string `json:"a"`
	B    string `json:"b"`
	// Master is the node whose KMM allocates the link's keys.
	Master     string `json:"master"`
	KeySize    uint32 `json:"key_size"`
	Technology string `json:"technology"`
	Disabled   bool   `json:"disabled,omitempty"`
}

// SAESpec attaches an SAE to a node.
type SAESpec struct {
	ID   string `json:"id"`
	Node string `json:"node"`
}

// QoS is ETSI 015 app_qos.
type QoS struct {
	MaxBandwidth uint32 `json:"max_bandwidth,omitempty"`
	MinBandwidth uint32 `json:"min_bandwidth,omitempty"`
	Jitter       uint32 `json:"jitter,omitempty"`
	TTL          uint32 `json:"ttl,omitempty"`
	SharedPath   bool   `json:"shared_path,omitempty"`
	SharedKeys   bool   `json:"shared_keys,omitempty"`
}

// AppSpec opens an application (key stream) from MasterSAE to SlaveSAE.
type AppSpec struct {
	ID        string `json:"id"`
	MasterSAE string `json:"master_sae"`
	SlaveSAE  string `json:"slave_sae"`
	// Path is the links from the master SAE's node to the slave SAE's node.
	Path     []string `json:"path"`
	QoS      QoS      `json:"qos"`
	Priority uint32   `json:"priority,omitempty"`
	// Created is the leader's clock at proposal, as YANG date-and-time.
	Created string `json:"created"`
	// ChunkSize is the ETSI 004 key chunk size in bytes (0: none given).
	ChunkSize uint32 `json:"chunk_size,omitempty"`
	// Connected are SAEs connected from the start (ETSI 004).
	Connected []string `json:"connected,omitempty"`
}

// Member is a controller replica.
type Member struct {
	ID   string `json:"id"`
	Raft string `json:"raft"`
	GRPC string `json:"grpc"`
}

// Encode returns the command as logged.
func (c Command) Encode() ([]byte, error) { return json.Marshal(c) }

// Decode reads a logged command.
func Decode(b []byte) (Command, error) {
	var c Command
	if err := json.Unmarshal(b, &c); err != nil {
		return Command{}, fmt.Errorf("state: undecodable command: %w", err)
	}
	return c, nil
}

// The kinds of error Apply returns; the API maps them to status codes.
var (
	ErrInvalid  = errors.New("invalid")
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInUse    = errors.New("in use")
)

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

func notFound(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrNotFound, fmt.Sprintf(format, a...))
}

func exists(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrExists, fmt.Sprintf(format, a...))
}

func inUse(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInUse, fmt.Sprintf(format, a...))
}
