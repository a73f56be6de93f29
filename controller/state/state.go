// Package state is the controller's replicated state: the QKD network as
// ETSI GS QKD 015 YANG data, one etsi-qkd-sdn-node:qkd_node tree per trusted
// node (with the qkdnet-sdn-ext augmentations), plus the controller replicas.
//
// State is deterministic: Apply changes it only as the command says, with no
// clock, randomness or I/O, so every replica that applies the same Raft log
// holds the same trees. A command that fails changes nothing. Key material
// never enters it: the trees name links, SAEs and key streams, never keys.
//
// State is not safe for concurrent use; the FSM that owns it serialises
// Apply against readers.
package state

import (
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/openconfig/ygot/ygot"

	"github.com/qkdnet/qkdnet/gen/go/etsi015"
	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/qkd015"
)

type iface = etsi015.EtsiQkdSdnNode_QkdNode_QkdInterfaces_QkdInterface

// LinkInfo is a link as the index holds it.
type LinkInfo struct {
	Name, ID string
	A, B     string
	Master   string
	KeySize  uint32
	Enabled  bool
	Apps     []string
}

// Other returns the end of the link that is not node.
func (l LinkInfo) Other(node string) string {
	if l.A == node {
		return l.B
	}
	return l.A
}

// AppInfo is an application as the index holds it.
type AppInfo struct {
	ID                    string
	MasterSAE, SlaveSAE   string
	MasterNode, SlaveNode string
	// Path is the link names from MasterNode to SlaveNode; Nodes the nodes
	// along it, MasterNode first.
	Path  []string
	Nodes []string
	// Masters is the node whose KMM is Master on each hop (the link's).
	Masters  []string
	QoS      QoS
	Priority uint32
	Created  string
	// Connected are the SAEs connected through ETSI 004, sorted.
	Connected []string
	// ChunkSize is the ETSI 004 key chunk size in bytes, 0 if none.
	ChunkSize uint32
	// Gen is the generation of Path: 0 when opened, one more at each
	// reroute. Drains are the earlier paths, oldest first, kept so that
	// keys already on them still reach the slave SAE's node.
	Gen    uint32
	Drains []Route
}

// Route is an earlier path of an application (a drain).
type Route struct {
	Gen     uint32
	Path    []string
	Nodes   []string
	Masters []string
}

// MaxDrains bounds the earlier paths an application keeps; a reroute past
// it drops the oldest. MaxGen bounds the generations (a key_ID holds the
// generation in 8 bits of its sequence number).
const (
	MaxDrains = 4
	MaxGen    = 255
)

// allNodes is every node of the application's current and earlier paths,
// current path first.
func (a *AppInfo) allNodes() []string {
	return a.withDrains(a.Nodes, func(r Route) []string { return r.Nodes })
}

// allLinks is every link of the application's current and earlier paths.
func (a *AppInfo) allLinks() []string {
	return a.withDrains(a.Path, func(r Route) []string { return r.Path })
}

// withDrains is cur followed by what of returns for each drain, once each.
func (a *AppInfo) withDrains(cur []string, of func(Route) []string) []string {
	out := slices.Clone(cur)
	for _, d := range a.Drains {
		for _, x := range of(d) {
			if !slices.Contains(out, x) {
				out = append(out, x)
			}
		}
	}
	return out
}

// clone is a deep copy of a. Readers get shallow copies (App, Apps): the
// state replaces an AppInfo's slices, never changes them in place.
func (a *AppInfo) clone() *AppInfo {
	cp := *a
	cp.Path, cp.Nodes, cp.Masters = slices.Clone(a.Path), slices.Clone(a.Nodes), slices.Clone(a.Masters)
	cp.Connected = slices.Clone(a.Connected)
	cp.Drains = nil
	for _, d := range a.Drains {
		cp.Drains = append(cp.Drains, Route{Gen: d.Gen, Path: slices.Clone(d.Path), Nodes: slices.Clone(d.Nodes), Masters: slices.Clone(d.Masters)})
	}
	return &cp
}

// State is the replicated state.
type State struct {
	index   uint64
	nodes   map[string]*qkd015.Node // by node name
	byID    map[string]string       // qkdn_id -> node name
	links   map[string]*LinkInfo    // by link name
	saes    map[string]string       // SAE_ID -> node name
	apps    map[string]*AppInfo     // by app_id
	members map[string]Member
	// touched is the index of the last command that changed what Render
	// gives for a node, so the pusher renders only those.
	touched map[string]uint64
}

// New returns an empty state.
func New() *State {
	return &State{
		nodes:   map[string]*qkd015.Node{},
		byID:    map[string]string{},
		links:   map[string]*LinkInfo{},
		saes:    map[string]string{},
		apps:    map[string]*AppInfo{},
		members: map[string]Member{},
		touched: map[string]uint64{},
	}
}

// touch records that the command being applied changes the rendered
// configuration of the nodes.
func (s *State) touch(nodes ...string) {
	for _, n := range nodes {
		s.touched[n] = s.index
	}
}

// ChangedAt is the index of the last command that changed the node's
// rendered configuration: 0 if none since the state was created; a restore
// touches every node. It is bookkeeping for the pusher, not replicated state.
func (s *State) ChangedAt(node string) uint64 { return s.touched[node] }

// Index is the Raft index of the last command applied.
func (s *State) Index() uint64 { return s.index }

// Apply applies the command logged at index. It returns what the command
// made (for open_app: the *AppInfo and whether it was created) or an error,
// in which case the state is unchanged but for the index.
func (s *State) Apply(index uint64, c Command) (any, error) {
	if index > s.index {
		s.index = index
	}
	switch c.Op {
	case OpAddNode, OpRegister:
		if c.Node == nil {
			return nil, invalid("%s without node", c.Op)
		}
		return nil, s.putNode(*c.Node, c.Op == OpRegister)
	case OpRemoveNode:
		return nil, s.removeNode(c.Name)
	case OpAddLink:
		if c.Link == nil {
			return nil, invalid("add_link without link")
		}
		return nil, s.addLink(*c.Link)
	case OpRemoveLink:
		return nil, s.removeLink(c.Name)
	case OpPutTree:
		return nil, s.putTree(c.Name, c.Tree)
	case OpEnableLink:
		if c.Link == nil {
			return nil, invalid("enable_link without link")
		}
		return nil, s.enableLink(c.Name, !c.Link.Disabled)
	case OpAddSAE:
		if c.SAE == nil {
			return nil, invalid("add_sae without SAE")
		}
		return nil, s.addSAE(*c.SAE)
	case OpRemoveSAE:
		return nil, s.removeSAE(c.Name)
	case OpOpenApp:
		if c.App == nil {
			return nil, invalid("open_app without app")
		}
		return s.openApp(*c.App)
	case OpRemoveApp:
		return nil, s.removeApp(c.Name)
	case OpRerouteApp:
		if c.App == nil {
			return nil, invalid("reroute_app without app")
		}
		return s.rerouteApp(c.Name, c.App.Path)
	case OpJoinApp, OpLeaveApp:
		if c.SAE == nil {
			return nil, invalid("%s without SAE", c.Op)
		}
		return s.connect(c.Name, c.SAE.ID, c.Op == OpJoinApp)
	case OpSetMember:
		if c.Member == nil || c.Member.ID == "" {
			return nil, invalid("set_member without member")
		}
		s.members[c.Member.ID] = *c.Member
		return nil, nil
	case OpRemoveMember:
		delete(s.members, c.Name)
		return nil, nil
	}
	return nil, invalid("unknown operation %q", c.Op)
}

func validName(kind, name string) error {
	if err := pki.ValidID(name); err != nil {
		return invalid("%s %v", kind, err)
	}
	return nil
}

func (s *State) putNode(n NodeSpec, register bool) error {
	if err := validName("node", n.Name); err != nil {
		return err
	}
	if n.KMEID != "" {
		if err := validName("KME_ID", n.KMEID); err != nil {
			return err
		}
	}
	// Work on a copy (or a new tree) and keep it only if it validates: a
	// refused registration leaves no half-made node behind.
	have, ok := s.nodes[n.Name]
	if ok && !register {
		return exists("node %s", n.Name)
	}
	var t *qkd015.Node
	if ok {
		cp, err := ygot.DeepCopy(have)
		if err != nil {
			return fmt.Errorf("state: copy node %s: %w", n.Name, err)
		}
		t = cp.(*qkd015.Node)
	} else {
		t = &qkd015.Node{QkdnId: ygot.String(qkd015.NodeID(n.Name)), NodeName: ygot.String(n.Name), QkdnStatus: qkd015.NodeNew}
	}
	if n.KMEID != "" {
		t.KmeId = ygot.String(n.KMEID)
	} else if t.KmeId == nil {
		t.KmeId = ygot.String("KME_" + n.Name)
	}
	if n.Location != "" {
		t.QkdnLocationId = ygot.String(n.Location)
	}
	if register {
		t.QkdnStatus = qkd015.NodeOperating
		if n.AgentAddress != "" {
			t.AgentAddress = ygot.String(n.AgentAddress)
		}
		if n.Version != "" {
			t.QkdnVersion = ygot.String(n.Version)
		}
		c := t.GetOrCreateQkdnCapabilities()
		c.LinkStatsSupport = ygot.Bool(n.Capabilities.LinkStats)
		c.ApplicationStatsSupport = ygot.Bool(n.Capabilities.AppStats)
		c.KeyRelayModeEnable = ygot.Bool(n.Capabilities.KeyRelay)
		for _, in := range n.Interfaces {
			it, err := interfaceEntry(t, in)
			if err != nil {
				return err
			}
			t.GetOrCreateQkdInterfaces().GetOrCreateQkdInterfaceMap()[it.GetQkdiId()] = it
		}
	}
	if err := qkd015.Validate(t); err != nil {
		return invalid("node %s: %v", n.Name, err)
	}
	s.nodes[n.Name] = t
	s.byID[t.GetQkdnId()] = n.Name
	// The node's name, KME_ID and address appear in its peers' links.
	s.touch(n.Name)
	for _, l := range s.links {
		if l.A == n.Name || l.B == n.Name {
			s.touch(l.Other(n.Name))
		}
	}
	return nil
}

// interfaceEntry returns the node's qkd_interface entry for a QKD module as
// it should be, detached from the tree: a copy of the existing one (matched
// by the link's name, its attachment point device, or by ID) updated, or a
// new one with the lowest free ID.
func interfaceEntry(t *qkd015.Node, in Interface) (*iface, error) {
	ifs := qkd015.Interfaces(t)
	var have *iface
	if in.Link != "" {
		for _, id := range slices.Sorted(maps.Keys(ifs)) {
			if x := ifs[id]; x.GetQkdiAttPoint().GetDevice() == in.Link {
				have = x
				break
			}
		}
	}
	if have == nil && in.ID != 0 {
		have = ifs[in.ID]
	}
	var it *iface
	if have != nil {
		cp, err := ygot.DeepCopy(have)
		if err != nil {
			return nil, fmt.Errorf("state: copy interface: %w", err)
		}
		it = cp.(*iface)
	} else {
		id := in.ID
		if id == 0 || ifs[id] != nil {
			id = freeInterfaceID(ifs)
		}
		it = &iface{QkdiId: ygot.Uint32(id)}
	}
	if in.Link != "" {
		it.GetOrCreateQkdiAttPoint().Device = ygot.String(in.Link)
	}
	if in.Model != "" {
		it.QkdiModel = ygot.String(in.Model)
	}
	if in.Technology != "" {
		tech, err := technology(in.Technology)
		if err != nil {
			return nil, invalid("interface of link %s: %v", in.Link, err)
		}
		it.QkdiType = tech
	}
	if err := it.Validate(); err != nil {
		return nil, invalid("interface of link %s: %v", in.Link, err)
	}
	return it, nil
}

func freeInterfaceID(m map[uint32]*iface) uint32 {
	id := uint32(1)
	for m[id] != nil {
		id++
	}
	return id
}

func (s *State) removeNode(name string) error {
	if _, ok := s.nodes[name]; !ok {
		return notFound("node %q", name)
	}
	for _, l := range s.sortedLinks() {
		if l.A == name || l.B == name {
			return inUse("node %s: link %s ends there; remove it first", name, l.Name)
		}
	}
	for sae, n := range s.saes {
		if n == name {
			return inUse("node %s: SAE %s is attached to it; remove it first", name, sae)
		}
	}
	id := s.nodes[name].GetQkdnId()
	delete(s.nodes, name)
	delete(s.byID, id)
	s.touch(name)
	return nil
}

func (s *State) addLink(l LinkSpec) error {
	if err := validName("link", l.Name); err != nil {
		return err
	}
	if _, ok := s.links[l.Name]; ok {
		return exists("link %s", l.Name)
	}
	if l.A == l.B {
		return invalid("link %s: both ends are node %q", l.Name, l.A)
	}
	for _, n := range []string{l.A, l.B} {
		if _, ok := s.nodes[n]; !ok {
			return notFound("link %s: node %q", l.Name, n)
		}
	}
	for _, o := range s.links {
		if (o.A == l.A && o.B == l.B) || (o.A == l.B && o.B == l.A) {
			return exists("link %s: nodes %s and %s are already joined by link %s", l.Name, l.A, l.B, o.Name)
		}
	}
	if l.Master == "" {
		l.Master = l.A
	}
	if l.Master != l.A && l.Master != l.B {
		return invalid("link %s: master %q is not one of its ends %s, %s", l.Name, l.Master, l.A, l.B)
	}
	if l.KeySize == 0 {
		l.KeySize = 256
	}
	if l.KeySize%8 != 0 {
		return invalid("link %s: key_size %d is not a multiple of 8 bits", l.Name, l.KeySize)
	}
	if l.Technology == "" {
		l.Technology = "DV-QKD"
	}
	if _, err := technology(l.Technology); err != nil {
		return invalid("link %s: %v", l.Name, err)
	}
	id := qkd015.LinkID(l.Name)
	// Build and check both ends' entries first; attach them only when all
	// are valid, so a refused link changes nothing.
	type end struct {
		node  string
		iface *iface
		link  *qkd015.Link
	}
	var ends []end
	for _, node := range []string{l.A, l.B} {
		t := s.nodes[node]
		if qkd015.Links(t)[id] != nil {
			return exists("link %s at node %s", l.Name, node)
		}
		it, err := interfaceEntry(t, Interface{Link: l.Name, Technology: l.Technology})
		if err != nil {
			return err
		}
		ends = append(ends, end{node: node, iface: it})
	}
	for i, e := range ends {
		other := ends[1-i]
		ql := &qkd015.Link{QkdlId: ygot.String(id), LinkName: ygot.String(l.Name), QkdlType: qkd015.LinkPhys,
			QkdlEnable: ygot.Bool(!l.Disabled), KeySize: ygot.Uint32(l.KeySize), KmmRole: qkd015.RoleSlave}
		if e.node == l.Master {
			ql.KmmRole = qkd015.RoleMaster
		}
		ql.GetOrCreateQkdlLocal().QkdnId = s.nodes[e.node].QkdnId
		ql.GetOrCreateQkdlLocal().QkdiId = e.iface.QkdiId
		ql.GetOrCreateQkdlRemote().QkdnId = ygot.String(qkd015.NodeID(other.node))
		ql.GetOrCreateQkdlRemote().QkdiId = other.iface.QkdiId
		if err := ql.Validate(); err != nil {
			return invalid("link %s: %v", l.Name, err)
		}
		ends[i].link = ql
	}
	for _, e := range ends {
		t := s.nodes[e.node]
		t.GetOrCreateQkdInterfaces().GetOrCreateQkdInterfaceMap()[e.iface.GetQkdiId()] = e.iface
		t.GetOrCreateQkdLinks().GetOrCreateQkdLinkMap()[id] = e.link
	}
	s.touch(l.A, l.B)
	// A is the Master end, as Restore reads it back from the trees.
	other := l.B
	if l.Master == l.B {
		other = l.A
	}
	s.links[l.Name] = &LinkInfo{Name: l.Name, ID: id, A: l.Master, B: other, Master: l.Master, KeySize: l.KeySize, Enabled: !l.Disabled}
	return nil
}

func interfaceOf(t *qkd015.Node, linkName string) uint32 {
	for id, it := range qkd015.Interfaces(t) {
		if it.GetQkdiAttPoint().GetDevice() == linkName {
			return id
		}
	}
	return 0
}

func (s *State) removeLink(name string) error {
	l, ok := s.links[name]
	if !ok {
		return notFound("link %q", name)
	}
	if len(l.Apps) > 0 {
		return inUse("link %s carries application %s; remove it first", name, l.Apps[0])
	}
	for _, n := range []string{l.A, l.B} {
		t := s.nodes[n]
		t.GetQkdLinks().DeleteQkdLink(l.ID)
		if id := interfaceOf(t, name); id != 0 {
			t.GetQkdInterfaces().DeleteQkdInterface(id)
		}
	}
	delete(s.links, name)
	s.touch(l.A, l.B)
	return nil
}

// putTree replaces a node's whole tree (an operator's gNMI Set). The
// document must validate and keep the node's name and qkdn_id; the indexes
// are rebuilt from the trees, so what the trees say is what the controller
// runs. Keeping the two ends of a link consistent is the operator's part, as
// it is with ETSI 015's per-node configuration.
func (s *State) putTree(name string, doc []byte) error {
	old, ok := s.nodes[name]
	if !ok {
		return notFound("node %q", name)
	}
	t, err := qkd015.Parse(doc)
	if err != nil {
		return invalid("node %s: %v", name, err)
	}
	if t.GetNodeName() != name || t.GetQkdnId() != old.GetQkdnId() {
		return invalid("node %s: node_name and qkdn_id cannot change (got %q, %s)", name, t.GetNodeName(), t.GetQkdnId())
	}
	s.nodes[name] = t
	s.reindex()
	s.touch(s.NodeNames()...)
	return nil
}

// enableLink sets qkdl_enable of a link at both ends.
func (s *State) enableLink(name string, on bool) error {
	l, ok := s.links[name]
	if !ok {
		return notFound("link %q", name)
	}
	for _, n := range []string{l.A, l.B} {
		if ql := qkd015.Links(s.nodes[n])[l.ID]; ql != nil {
			ql.QkdlEnable = ygot.Bool(on)
		}
	}
	l.Enabled = on
	s.touch(l.A, l.B)
	return nil
}

func (s *State) addSAE(a SAESpec) error {
	if err := validName("SAE", a.ID); err != nil {
		return err
	}
	if n, ok := s.saes[a.ID]; ok {
		if n == a.Node {
			return exists("SAE %s is already attached to node %s", a.ID, n)
		}
		return exists("SAE %s is attached to node %s", a.ID, n)
	}
	t, ok := s.nodes[a.Node]
	if !ok {
		return notFound("node %q", a.Node)
	}
	e := &qkd015.SAE{SaeId: ygot.String(a.ID)}
	if err := e.Validate(); err != nil {
		return invalid("SAE %s: %v", a.ID, err)
	}
	t.GetOrCreateSaes().GetOrCreateSaeMap()[a.ID] = e
	s.saes[a.ID] = a.Node
	s.touch(a.Node)
	return nil
}

func (s *State) removeSAE(id string) error {
	node, ok := s.saes[id]
	if !ok {
		return notFound("SAE %q", id)
	}
	for _, a := range s.sortedApps() {
		if a.MasterSAE == id || a.SlaveSAE == id {
			return inUse("SAE %s is an end of application %s; remove it first", id, a.ID)
		}
	}
	// Deleting list entries cannot make a tree invalid (the model has no
	// min-elements or leafrefs to them).
	s.nodes[node].GetSaes().DeleteSae(id)
	delete(s.saes, id)
	s.touch(node)
	return nil
}

// CheckPath returns the nodes along path from the master SAE's node to the
// slave SAE's node, or why the path does not join them.
func (s *State) CheckPath(from, to string, path []string) ([]string, error) {
	return s.walk(from, to, path, true)
}

func (s *State) walk(from, to string, path []string, enabled bool) ([]string, error) {
	if len(path) == 0 {
		return nil, invalid("empty path from %s to %s", from, to)
	}
	nodes := []string{from}
	at := from
	seen := map[string]bool{from: true}
	for _, name := range path {
		l, ok := s.links[name]
		if !ok {
			return nil, notFound("path link %q", name)
		}
		if l.A != at && l.B != at {
			return nil, invalid("path link %s does not start at node %s", name, at)
		}
		if enabled && !l.Enabled {
			return nil, invalid("path link %s is disabled", name)
		}
		at = l.Other(at)
		if seen[at] {
			return nil, invalid("path visits node %s twice", at)
		}
		seen[at] = true
		nodes = append(nodes, at)
	}
	if at != to {
		return nil, invalid("path ends at node %s, not %s", at, to)
	}
	return nodes, nil
}

func (s *State) openApp(a AppSpec) (*AppInfo, error) {
	if a.ID != qkd015.AppID(a.MasterSAE, a.SlaveSAE) {
		return nil, invalid("app_id %s is not the ID of the SAE pair %s -> %s", a.ID, a.MasterSAE, a.SlaveSAE)
	}
	if have, ok := s.apps[a.ID]; ok {
		return have.clone(), ErrAppExists
	}
	mn, ok := s.saes[a.MasterSAE]
	if !ok {
		return nil, notFound("SAE %q", a.MasterSAE)
	}
	sn, ok := s.saes[a.SlaveSAE]
	if !ok {
		return nil, notFound("SAE %q", a.SlaveSAE)
	}
	if mn == sn {
		return nil, invalid("SAEs %s and %s are both attached to node %s", a.MasterSAE, a.SlaveSAE, mn)
	}
	nodes, err := s.CheckPath(mn, sn, a.Path)
	if err != nil {
		return nil, err
	}
	info := &AppInfo{ID: a.ID, MasterSAE: a.MasterSAE, SlaveSAE: a.SlaveSAE, MasterNode: mn, SlaveNode: sn,
		Path: slices.Clone(a.Path), Nodes: nodes, QoS: a.QoS, Priority: a.Priority, Created: a.Created, ChunkSize: a.ChunkSize}
	for _, sae := range a.Connected {
		if sae != a.MasterSAE && sae != a.SlaveSAE {
			return nil, invalid("SAE %s is not a party of application %s", sae, a.ID)
		}
	}
	if len(a.Connected) > 0 {
		info.Connected = slices.Sorted(slices.Values(a.Connected))
		info.Connected = slices.Compact(info.Connected)
	}
	for _, name := range a.Path {
		info.Masters = append(info.Masters, s.links[name].Master)
	}
	for _, n := range nodes {
		if qkd015.Apps(s.nodes[n])[a.ID] != nil {
			return nil, exists("application %s at node %s", a.ID, n)
		}
	}
	if err := s.place(info, nil); err != nil {
		return nil, err
	}
	return info.clone(), nil
}

// place writes an application's qkd_app entry at every node of its current
// and earlier paths, and removes it from the nodes in was (its nodes before
// the change) that are on none of them. Every entry is built and checked
// first and attached only when all are valid, so a refused change changes
// nothing.
func (s *State) place(info *AppInfo, was []string) error {
	nodes := info.allNodes()
	entries := make([]*qkd015.App, len(nodes))
	for i, n := range nodes {
		qa, err := s.appEntry(info, n)
		if err != nil {
			return err
		}
		entries[i] = qa
	}
	links := info.allLinks()
	for _, n := range was {
		if !slices.Contains(nodes, n) {
			s.unplace(info.ID, n)
		}
	}
	for i, n := range nodes {
		t := s.nodes[n]
		t.GetOrCreateQkdApplications().GetOrCreateQkdAppMap()[info.ID] = entries[i]
		for id, ql := range qkd015.Links(t) {
			on := slices.Contains(entries[i].BackingQkdlId, id)
			has := slices.Contains(ql.QkdlApplications, info.ID)
			switch {
			case on && !has:
				ql.QkdlApplications = append(ql.QkdlApplications, info.ID)
			case !on && has:
				ql.QkdlApplications = withoutApp(ql.QkdlApplications, info.ID)
			}
		}
	}
	s.apps[info.ID] = info
	s.touch(nodes...)
	s.touch(was...)
	for _, l := range s.links {
		on := slices.Contains(links, l.Name)
		has := slices.Contains(l.Apps, info.ID)
		switch {
		case on && !has:
			l.Apps = append(l.Apps, info.ID)
			slices.Sort(l.Apps) // as Restore rebuilds it
		case !on && has:
			l.Apps = slices.DeleteFunc(l.Apps, func(x string) bool { return x == info.ID })
		}
	}
	return nil
}

// unplace removes an application's entry from a node's tree.
func (s *State) unplace(id, node string) {
	t := s.nodes[node]
	t.GetQkdApplications().DeleteQkdApp(id)
	for _, ql := range qkd015.Links(t) {
		ql.QkdlApplications = withoutApp(ql.QkdlApplications, id)
	}
}

// withoutApp is a link's qkdl_applications without id: nil when none is
// left, so the leaf-list is absent rather than empty.
func withoutApp(apps []string, id string) []string {
	apps = slices.DeleteFunc(apps, func(x string) bool { return x == id })
	if len(apps) == 0 {
		return nil
	}
	return apps
}

// appEntry builds an application's qkd_app entry for node n: its hops on
// the current path and its drain hops on the earlier ones.
func (s *State) appEntry(a *AppInfo, n string) (*qkd015.App, error) {
	t := s.nodes[n]
	qa := &qkd015.App{AppId: ygot.String(a.ID), AppType: qkd015.AppClient,
		ServerAppId: ygot.String(qkd015.SAEURI(a.MasterSAE)), ClientAppId: []string{qkd015.SAEURI(a.SlaveSAE)},
		AppPriority: ygot.Uint32(a.Priority), LocalQkdnId: t.QkdnId}
	if a.Created != "" {
		qa.CreationTime = ygot.String(a.Created)
	}
	if a.ChunkSize > 0 {
		qa.KeyChunkSize = ygot.Uint32(a.ChunkSize)
	}
	if a.Gen > 0 {
		qa.PathGeneration = ygot.Uint32(a.Gen)
	}
	qa.ConnectedSae = slices.Clone(a.Connected)
	qa.AppQos = &qkd015.AppQoS{MaxBandwidth: ygot.Uint32(a.QoS.MaxBandwidth), MinBandwidth: ygot.Uint32(a.QoS.MinBandwidth),
		Jitter: ygot.Uint32(a.QoS.Jitter), Ttl: ygot.Uint32(a.QoS.TTL),
		ClientsSharedPathEnable: ygot.Bool(a.QoS.SharedPath), ClientsSharedKeysRequired: ygot.Bool(a.QoS.SharedKeys)}
	remote := a.SlaveNode
	if n == a.SlaveNode {
		remote = a.MasterNode
	}
	qa.RemoteQkdnId = ygot.String(qkd015.NodeID(remote))
	// This node's hops on a path: the link before it and the link after it.
	hopsOn := func(path, nodes []string, add func(l *LinkInfo, index uint32, role qkd015.KMMRole)) error {
		i := slices.Index(nodes, n)
		if i < 0 {
			return nil
		}
		for _, h := range []int{i - 1, i} {
			if h < 0 || h >= len(path) {
				continue
			}
			l := s.links[path[h]]
			if qkd015.Links(t)[l.ID] == nil {
				return notFound("link %s at node %s", l.Name, n)
			}
			if !slices.Contains(qa.BackingQkdlId, l.ID) {
				qa.BackingQkdlId = append(qa.BackingQkdlId, l.ID)
			}
			role := qkd015.RoleSlave
			if l.Master == n {
				role = qkd015.RoleMaster
			}
			add(l, uint32(h), role)
		}
		return nil
	}
	if err := hopsOn(a.Path, a.Nodes, func(l *LinkInfo, index uint32, role qkd015.KMMRole) {
		hop := qa.GetOrCreateHops().GetOrCreateHop(l.ID)
		hop.Index, hop.Role = ygot.Uint32(index), role
	}); err != nil {
		return nil, err
	}
	for _, d := range a.Drains {
		if err := hopsOn(d.Path, d.Nodes, func(l *LinkInfo, index uint32, role qkd015.KMMRole) {
			hop := qa.GetOrCreateDrainHops().GetOrCreateDrainHop(d.Gen, l.ID)
			hop.Index, hop.Role = ygot.Uint32(index), role
		}); err != nil {
			return nil, err
		}
	}
	if err := qa.Validate(); err != nil {
		return nil, invalid("application %s at node %s: %v", a.ID, n, err)
	}
	return qa, nil
}

// rerouteApp moves an application to a new path of enabled links, as a new
// generation; its current path becomes the newest drain (the oldest is
// dropped past MaxDrains).
func (s *State) rerouteApp(id string, path []string) (*AppInfo, error) {
	a, ok := s.apps[id]
	if !ok {
		return nil, notFound("application %q", id)
	}
	if slices.Equal(path, a.Path) {
		return nil, invalid("application %s already runs on path %v", id, path)
	}
	if a.Gen >= MaxGen {
		return nil, invalid("application %s has been rerouted %d times, the most a stream can be", id, a.Gen)
	}
	nodes, err := s.CheckPath(a.MasterNode, a.SlaveNode, path)
	if err != nil {
		return nil, err
	}
	next := a.clone()
	next.Drains = append(next.Drains, Route{Gen: a.Gen, Path: next.Path, Nodes: next.Nodes, Masters: next.Masters})
	if len(next.Drains) > MaxDrains {
		next.Drains = next.Drains[len(next.Drains)-MaxDrains:]
	}
	next.Gen = a.Gen + 1
	next.Path, next.Nodes, next.Masters = slices.Clone(path), nodes, nil
	for _, name := range path {
		next.Masters = append(next.Masters, s.links[name].Master)
	}
	if err := s.place(next, a.allNodes()); err != nil {
		return nil, err
	}
	return next.clone(), nil
}

// ErrAppExists is returned with the existing application when open_app
// names one that exists: opening is idempotent.
var ErrAppExists = exists("application")

func (s *State) removeApp(id string) error {
	a, ok := s.apps[id]
	if !ok {
		return notFound("application %q", id)
	}
	nodes := a.allNodes()
	for _, n := range nodes {
		s.unplace(id, n)
	}
	delete(s.apps, id)
	s.touch(nodes...)
	for _, name := range a.allLinks() {
		l := s.links[name]
		l.Apps = slices.DeleteFunc(l.Apps, func(x string) bool { return x == id })
	}
	return nil
}

// connect adds an SAE to (join) or removes it from (leave) the connected
// SAEs of an application at every node of its path. When the last one
// leaves, the application is removed. It returns the application after the
// change (nil if removed).
func (s *State) connect(appID, sae string, join bool) (*AppInfo, error) {
	a, ok := s.apps[appID]
	if !ok {
		return nil, notFound("application %q", appID)
	}
	if sae != a.MasterSAE && sae != a.SlaveSAE {
		return nil, invalid("SAE %s is not a party of application %s (%s -> %s)", sae, appID, a.MasterSAE, a.SlaveSAE)
	}
	has := slices.Contains(a.Connected, sae)
	switch {
	case join && has:
		return nil, exists("SAE %s is already connected to application %s", sae, appID)
	case !join && !has:
		return nil, notFound("SAE %s is not connected to application %s", sae, appID)
	}
	next := slices.DeleteFunc(slices.Clone(a.Connected), func(x string) bool { return x == sae })
	if join {
		next = append(next, sae)
		slices.Sort(next)
	}
	if len(next) == 0 {
		return nil, s.removeApp(appID)
	}
	for _, n := range a.allNodes() {
		s.nodes[n].GetQkdApplications().GetQkdApp(appID).ConnectedSae = slices.Clone(next)
	}
	a.Connected = next
	s.touch(a.allNodes()...)
	return a.clone(), nil
}

// ---- reads ----

// Node returns a node's tree. The caller must not change it.
func (s *State) Node(name string) (*qkd015.Node, bool) {
	t, ok := s.nodes[name]
	return t, ok
}

// NodeNames lists the nodes, sorted.
func (s *State) NodeNames() []string { return slices.Sorted(maps.Keys(s.nodes)) }

// Link returns a link by name.
func (s *State) Link(name string) (LinkInfo, bool) {
	l, ok := s.links[name]
	if !ok {
		return LinkInfo{}, false
	}
	return *l, true
}

func (s *State) sortedLinks() []*LinkInfo {
	out := slices.Collect(maps.Values(s.links))
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Links lists the links, sorted by name.
func (s *State) Links() []LinkInfo {
	var out []LinkInfo
	for _, l := range s.sortedLinks() {
		c := *l
		c.Apps = slices.Clone(l.Apps)
		out = append(out, c)
	}
	return out
}

// SAENode returns the node an SAE is attached to.
func (s *State) SAENode(id string) (string, bool) {
	n, ok := s.saes[id]
	return n, ok
}

// SAEs maps every SAE to its node.
func (s *State) SAEs() map[string]string { return maps.Clone(s.saes) }

// App returns an application by ID.
func (s *State) App(id string) (AppInfo, bool) {
	a, ok := s.apps[id]
	if !ok {
		return AppInfo{}, false
	}
	return *a, true
}

func (s *State) sortedApps() []*AppInfo {
	out := slices.Collect(maps.Values(s.apps))
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Apps lists the applications, sorted by ID.
func (s *State) Apps() []AppInfo {
	var out []AppInfo
	for _, a := range s.sortedApps() {
		out = append(out, *a)
	}
	return out
}

// Members lists the controller replicas recorded in the state.
func (s *State) Members() map[string]Member { return maps.Clone(s.members) }

// NodeName returns the name of the node with a qkdn_id.
func (s *State) NodeName(qkdnID string) (string, bool) {
	n, ok := s.byID[qkdnID]
	return n, ok
}

// Counts returns how many nodes, links and applications the state holds.
func (s *State) Counts() (nodes, links, apps int) { return len(s.nodes), len(s.links), len(s.apps) }

// technology reads an ETSI 015 qkd-technology-types identity name.
func technology(name string) (qkd015.Technology, error) {
	var t qkd015.Technology
	if !qkd015.ParseEnum(name, &t) {
		return 0, fmt.Errorf("technology %q: want CV-QKD, DV-QKD, DV-QKD-COW or DV-QKD-2Ws", name)
	}
	return t, nil
}
