package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/qkdnet/qkdnet/kmm"
	"github.com/qkdnet/qkdnet/qkd015"
)

// view is what the agent runs, read from the ETSI 015 configuration the
// controller pushed: the node's links with their KMM roles and remote ends,
// the SAEs it knows the nodes of, and the applications (key streams).
type view struct {
	version uint64
	doc     []byte // the pushed qkd_node document (JSON_IETF), for gNMI
	node    string
	kmeID   string
	links   map[string]kmm.Link // by link name (the KMM's link ID)
	byPeer  map[string]kmm.Link
	enabled map[string]bool
	saes    map[string]string // SAE_ID -> node
	kmes    map[string]string // node -> KME_ID
	addrs   map[string]string // node -> agent gRPC address
	apps    map[appKey]appView
	byApp   map[string]appKey // app_id -> its key in apps
}

// appKey is the (master SAE, slave SAE) pair of an application.
type appKey struct{ master, slave string }

// appView is one application that ends at this node.
type appView struct {
	id          string
	master      string // master SAE
	slave       string // slave SAE
	link        string // the hop at this node (single-hop streams)
	priority    uint32
	minBitsPerS uint32
	chunkSize   uint32
	ttl         uint32
	connected   []string
	// hopLinks maps the path index of each hop at this node to its link.
	hopLinks map[uint32]string
	// gen is the generation of the current path; drains maps each earlier
	// path generation with hops at this node to them (index -> link).
	gen    uint32
	drains map[uint32]map[uint32]string
}

func emptyView(node string) *view {
	return &view{node: node, links: map[string]kmm.Link{}, byPeer: map[string]kmm.Link{}, enabled: map[string]bool{},
		saes: map[string]string{}, kmes: map[string]string{}, addrs: map[string]string{}, apps: map[appKey]appView{}, byApp: map[string]appKey{}}
}

// pushedNode mirrors the parts of a pushed qkd_node (JSON_IETF, as the
// controller's qkd015 encoder writes it) that the agent runs. The document
// is checked against the schema first (qkd015.Check); decoding only these
// fields with encoding/json costs a tenth of building the ygot tree, and
// every push carries the node's whole tree.
type pushedNode struct {
	Node struct {
		QkdnID       string `json:"qkdn_id"`
		NodeName     string `json:"qkdnet-sdn-ext:node_name"`
		KmeID        string `json:"qkdnet-sdn-ext:kme_id"`
		AgentAddress string `json:"qkdnet-sdn-ext:agent_address"`
		SAEs         struct {
			SAE []struct {
				ID string `json:"sae_id"`
			} `json:"sae"`
		} `json:"qkdnet-sdn-ext:saes"`
		Links struct {
			Link []pushedLink `json:"qkd_link"`
		} `json:"qkd_links"`
		Apps struct {
			App []pushedApp `json:"qkd_app"`
		} `json:"qkd_applications"`
	} `json:"etsi-qkd-sdn-node:qkd_node"`
}

type pushedLink struct {
	ID     string `json:"qkdl_id"`
	Enable *bool  `json:"qkdl_enable"`
	Remote struct {
		QkdnID string `json:"qkdn_id"`
	} `json:"qkdl_remote"`
	Name               string `json:"qkdnet-sdn-ext:link_name"`
	Role               string `json:"qkdnet-sdn-ext:kmm_role"`
	KeySize            uint32 `json:"qkdnet-sdn-ext:key_size"`
	RemoteNodeName     string `json:"qkdnet-sdn-ext:remote_node_name"`
	RemoteKmeID        string `json:"qkdnet-sdn-ext:remote_kme_id"`
	RemoteAgentAddress string `json:"qkdnet-sdn-ext:remote_agent_address"`
}

type pushedApp struct {
	ID       string   `json:"app_id"`
	Server   string   `json:"server_app_id"`
	Clients  []string `json:"client_app_id"`
	Priority uint32   `json:"app_priority"`
	QoS      struct {
		MinBandwidth uint32 `json:"min_bandwidth"`
		TTL          uint32 `json:"ttl"`
	} `json:"app_qos"`
	RemoteQkdnID string `json:"remote_qkdn_id"`
	Hops         struct {
		Hop []struct {
			ID    string `json:"qkdl_id"`
			Index uint32 `json:"index"`
		} `json:"hop"`
	} `json:"qkdnet-sdn-ext:hops"`
	RemoteNodeName string   `json:"qkdnet-sdn-ext:remote_node_name"`
	RemoteKmeID    string   `json:"qkdnet-sdn-ext:remote_kme_id"`
	ChunkSize      uint32   `json:"qkdnet-sdn-ext:key_chunk_size"`
	Connected      []string `json:"qkdnet-sdn-ext:connected_sae"`
	Gen            uint32   `json:"qkdnet-sdn-ext:path_generation"`
	DrainHops      struct {
		Hop []struct {
			Gen   uint32 `json:"generation"`
			ID    string `json:"qkdl_id"`
			Index uint32 `json:"index"`
		} `json:"drain_hop"`
	} `json:"qkdnet-sdn-ext:drain_hops"`
}

// viewOf reads a pushed configuration. It refuses one meant for another node.
func viewOf(node string, version uint64, doc []byte) (*view, error) {
	v := emptyView(node)
	v.version = version
	v.doc = doc
	if len(doc) == 0 {
		return v, nil // the controller has nothing for this node (yet)
	}
	if err := qkd015.Check(doc); err != nil {
		return nil, err
	}
	var p pushedNode
	if err := json.Unmarshal(doc, &p); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	t := p.Node
	if t.NodeName != node || t.QkdnID != qkd015.NodeID(node) {
		return nil, fmt.Errorf("configuration is for node %q (%s), not %s", t.NodeName, t.QkdnID, node)
	}
	v.kmeID = t.KmeID
	v.kmes[node] = v.kmeID
	v.addrs[node] = t.AgentAddress
	for _, sae := range t.SAEs.SAE {
		v.saes[sae.ID] = node
	}
	byLinkID := map[string]string{}
	byNodeID := map[string]string{qkd015.NodeID(node): node}
	for _, ql := range t.Links.Link {
		name, peer := ql.Name, ql.RemoteNodeName
		if name == "" || peer == "" {
			return nil, fmt.Errorf("qkd_link %s has no link_name or remote_node_name", ql.ID)
		}
		kb := int(ql.KeySize / 8)
		if kb == 0 {
			kb = 32
		}
		l := kmm.Link{ID: name, Peer: peer, Master: ql.Role == "MASTER", KeyBytes: kb}
		v.links[name] = l
		if old, dup := v.byPeer[peer]; !dup || old.ID > name {
			v.byPeer[peer] = l
		}
		v.enabled[name] = ql.Enable == nil || *ql.Enable
		v.kmes[peer] = ql.RemoteKmeID
		v.addrs[peer] = ql.RemoteAgentAddress
		byLinkID[ql.ID] = name
		byNodeID[ql.Remote.QkdnID] = peer
	}
	for _, qa := range t.Apps.App {
		master, ok1 := qkd015.SAEFromURI(qa.Server)
		var slave string
		ok2 := len(qa.Clients) > 0
		if ok2 {
			slave, ok2 = qkd015.SAEFromURI(qa.Clients[0])
		}
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("qkd_app %s: server_app_id or client_app_id is not an SAE URI", qa.ID)
		}
		a := appView{id: qa.ID, master: master, slave: slave, priority: qa.Priority, minBitsPerS: qa.QoS.MinBandwidth,
			chunkSize: qa.ChunkSize, ttl: qa.QoS.TTL, connected: qa.Connected, hopLinks: map[uint32]string{}}
		for _, h := range qa.Hops.Hop {
			a.link = byLinkID[h.ID]
			a.hopLinks[h.Index] = byLinkID[h.ID]
		}
		a.gen = qa.Gen
		for _, h := range qa.DrainHops.Hop {
			if a.drains == nil {
				a.drains = map[uint32]map[uint32]string{}
			}
			if a.drains[h.Gen] == nil {
				a.drains[h.Gen] = map[uint32]string{}
			}
			a.drains[h.Gen][h.Index] = byLinkID[h.ID]
		}
		// The SAE at the other end sits at remote_qkdn_id, which the
		// controller names (it may be several hops away).
		remote := qa.RemoteNodeName
		if remote == "" {
			remote = byNodeID[qa.RemoteQkdnID]
		}
		if remote != "" && qa.RemoteKmeID != "" {
			v.kmes[remote] = qa.RemoteKmeID
		}
		for _, sae := range []string{master, slave} {
			if _, local := v.saes[sae]; !local && remote != "" {
				v.saes[sae] = remote
			}
		}
		v.apps[appKey{master, slave}] = a
		v.byApp[qa.ID] = appKey{master, slave}
	}
	return v, nil
}

// controlled serves the KMM's Topology and Apps from the newest view, and
// tells waiters when a new one arrives.
type controlled struct {
	node string
	// open asks the controller for an application (OpenApplication) and
	// returns its ID.
	open func(ctx context.Context, req kmm.AppRequest) (string, error)
	// connect records an SAE's ETSI 004 connection (ConnectApplication).
	connect func(ctx context.Context, id, sae string, on bool) error

	mu      sync.Mutex
	v       *view
	changed chan struct{}
}

func newControlled(node string) *controlled {
	return &controlled{node: node, v: emptyView(node), changed: make(chan struct{})}
}

func (c *controlled) view() *view {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.v
}

func (c *controlled) set(v *view) {
	c.mu.Lock()
	c.v = v
	ch := c.changed
	c.changed = make(chan struct{})
	c.mu.Unlock()
	close(ch)
}

func (c *controlled) watch() (*view, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.v, c.changed
}

// Configured implements kmm.Configured: a pushed configuration (Raft
// index >= 1) has been applied since the agent started.
func (c *controlled) Configured() bool { return c.view().version > 0 }

// SAENode implements kmm.Topology.
func (c *controlled) SAENode(id string) (string, bool) { n, ok := c.view().saes[id]; return n, ok }

// LinkTo implements kmm.Topology.
func (c *controlled) LinkTo(node string) (kmm.Link, bool) {
	l, ok := c.view().byPeer[node]
	return l, ok
}

// LinkByID implements kmm.Topology.
func (c *controlled) LinkByID(id string) (kmm.Link, bool) { l, ok := c.view().links[id]; return l, ok }

// KMEID implements kmm.Topology.
func (c *controlled) KMEID(node string) (string, bool) {
	k, ok := c.view().kmes[node]
	return k, ok && k != ""
}

// addr returns a node's agent address, for peer connections.
func (c *controlled) addr(node string) (string, bool) {
	a, ok := c.view().addrs[node]
	return a, ok && a != ""
}

// errNoController is returned when the agent runs without a controller
// and the configuration does not hold a stream.
var errNoController = errors.New("no controller configured")

// Open implements kmm.Apps: the application is in the configuration, or the
// controller is asked for it and the push that carries it is awaited.
func (c *controlled) Open(ctx context.Context, master, slave string) error {
	_, err := c.OpenQoS(ctx, kmm.AppRequest{Master: master, Slave: slave})
	return err
}

// OpenQoS implements kmm.KeyStreams.
func (c *controlled) OpenQoS(ctx context.Context, req kmm.AppRequest) (string, error) {
	key := appKey{req.Master, req.Slave}
	v, changed := c.watch()
	if a, ok := v.apps[key]; ok {
		return a.id, nil
	}
	if c.open == nil {
		return "", errNoController
	}
	if _, err := c.open(ctx, req); err != nil {
		return "", err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		select {
		case <-changed:
		case <-wctx.Done():
			return "", fmt.Errorf("the controller opened the application but its configuration did not reach this node: %w", wctx.Err())
		}
		v, changed = c.watch()
		if a, ok := v.apps[key]; ok {
			return a.id, nil
		}
	}
}

// Connect implements kmm.KeyStreams: the controller records the connection
// and pushes it; Connect returns once this node's configuration shows it.
func (c *controlled) Connect(ctx context.Context, id, sae string, on bool) error {
	if c.connect == nil {
		return errNoController
	}
	if err := c.connect(ctx, id, sae, on); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		a, ok, changed := c.App(id)
		if (on && ok && slices.Contains(a.Connected, sae)) || (!on && (!ok || !slices.Contains(a.Connected, sae))) {
			return nil
		}
		select {
		case <-changed:
		case <-wctx.Done():
			return fmt.Errorf("the controller recorded the connection but this node's configuration does not show it yet: %w", wctx.Err())
		}
	}
}

// App implements kmm.KeyStreams.
func (c *controlled) App(id string) (kmm.AppView, bool, <-chan struct{}) {
	v, changed := c.watch()
	key, ok := v.byApp[id]
	if !ok {
		return kmm.AppView{}, false, changed
	}
	a := v.apps[key]
	return kmm.AppView{ID: a.id, Master: a.master, Slave: a.slave, ChunkSize: a.chunkSize, Connected: slices.Clone(a.connected)}, true, changed
}
