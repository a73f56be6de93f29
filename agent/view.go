package agent

import (
	"context"
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
}

func emptyView(node string) *view {
	return &view{node: node, links: map[string]kmm.Link{}, byPeer: map[string]kmm.Link{}, enabled: map[string]bool{},
		saes: map[string]string{}, kmes: map[string]string{}, addrs: map[string]string{}, apps: map[appKey]appView{}, byApp: map[string]appKey{}}
}

// viewOf reads a pushed configuration. It refuses one meant for another node.
func viewOf(node string, version uint64, doc []byte) (*view, error) {
	v := emptyView(node)
	v.version = version
	if len(doc) == 0 {
		return v, nil // the controller has nothing for this node (yet)
	}
	t, err := qkd015.Parse(doc)
	if err != nil {
		return nil, err
	}
	if t.GetNodeName() != node || t.GetQkdnId() != qkd015.NodeID(node) {
		return nil, fmt.Errorf("configuration is for node %q (%s), not %s", t.GetNodeName(), t.GetQkdnId(), node)
	}
	v.kmeID = t.GetKmeId()
	v.kmes[node] = v.kmeID
	v.addrs[node] = t.GetAgentAddress()
	for sae := range qkd015.SAEs(t) {
		v.saes[sae] = node
	}
	byLinkID := map[string]string{}
	byNodeID := map[string]string{qkd015.NodeID(node): node}
	for id, ql := range qkd015.Links(t) {
		name, peer := ql.GetLinkName(), ql.GetRemoteNodeName()
		if name == "" || peer == "" {
			return nil, fmt.Errorf("qkd_link %s has no link_name or remote_node_name", id)
		}
		kb := int(ql.GetKeySize() / 8)
		if kb == 0 {
			kb = 32
		}
		l := kmm.Link{ID: name, Peer: peer, Master: ql.KmmRole == qkd015.RoleMaster, KeyBytes: kb}
		v.links[name] = l
		if old, dup := v.byPeer[peer]; !dup || old.ID > name {
			v.byPeer[peer] = l
		}
		v.enabled[name] = ql.QkdlEnable == nil || ql.GetQkdlEnable()
		v.kmes[peer] = ql.GetRemoteKmeId()
		v.addrs[peer] = ql.GetRemoteAgentAddress()
		byLinkID[id] = name
		byNodeID[ql.GetQkdlRemote().GetQkdnId()] = peer
	}
	for id, qa := range qkd015.Apps(t) {
		master, ok1 := qkd015.SAEFromURI(qa.GetServerAppId())
		var slave string
		ok2 := len(qa.ClientAppId) > 0
		if ok2 {
			slave, ok2 = qkd015.SAEFromURI(qa.ClientAppId[0])
		}
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("qkd_app %s: server_app_id or client_app_id is not an SAE URI", id)
		}
		a := appView{id: id, master: master, slave: slave, priority: qa.GetAppPriority(), minBitsPerS: qa.GetAppQos().GetMinBandwidth(),
			chunkSize: qa.GetKeyChunkSize(), ttl: qa.GetAppQos().GetTtl(), connected: slices.Clone(qa.ConnectedSae)}
		a.hopLinks = map[uint32]string{}
		for lid, h := range qkd015.Hops(qa) {
			a.link = byLinkID[lid]
			a.hopLinks[h.GetIndex()] = byLinkID[lid]
		}
		// The SAE at the other end sits at remote_qkdn_id, which the
		// controller names (it may be several hops away).
		remote := qa.GetRemoteNodeName()
		if remote == "" {
			remote = byNodeID[qa.GetRemoteQkdnId()]
		}
		if remote != "" && qa.GetRemoteKmeId() != "" {
			v.kmes[remote] = qa.GetRemoteKmeId()
		}
		for _, sae := range []string{master, slave} {
			if _, local := v.saes[sae]; !local && remote != "" {
				v.saes[sae] = remote
			}
		}
		v.apps[appKey{master, slave}] = a
		v.byApp[id] = appKey{master, slave}
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
