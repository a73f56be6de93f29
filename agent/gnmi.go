package agent

import (
	"sync"
	"sync/atomic"

	"github.com/qkdnet/qkdnet/controller/gnmiserver"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/qkd015"
)

// nodeTrees serves the agent's own qkd_node tree, as the controller last
// pushed it, to gNMI (gnmiserver.Reader and View); live leaves come from
// the agent's own status (liveNode). The tree is configured through the
// controller, so gNMI Set is refused here.
type nodeTrees struct {
	node string
	ctl  *controlled

	mu      sync.Mutex
	version uint64
	tree    *qkd015.Node
}

// Read implements gnmiserver.Reader.
func (n *nodeTrees) Read(fn func(gnmiserver.View)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	v := n.ctl.view()
	if v.version != n.version || (n.tree == nil && len(v.doc) > 0) {
		n.tree, n.version = nil, v.version
		if len(v.doc) > 0 {
			// The push was checked when it arrived; a parse error here
			// would leave the node without a tree to serve.
			if t, err := qkd015.Parse(v.doc); err == nil {
				n.tree = t
			}
		}
	}
	fn(n)
}

// Changed implements gnmiserver.Reader: a new push.
func (n *nodeTrees) Changed() <-chan struct{} {
	_, ch := n.ctl.watch()
	return ch
}

// NodeNames implements gnmiserver.View.
func (n *nodeTrees) NodeNames() []string {
	if n.tree == nil {
		return nil
	}
	return []string{n.node}
}

// Node implements gnmiserver.View.
func (n *nodeTrees) Node(name string) (*qkd015.Node, bool) {
	if name != n.node || n.tree == nil {
		return nil, false
	}
	return n.tree, true
}

// ChangedAt implements gnmiserver.View: the configuration version.
func (n *nodeTrees) ChangedAt(string) uint64 { return n.version }

// liveNode is the agent's live status for gnmiserver.LiveSource, once the
// controller session exists.
type liveNode struct {
	node string
	sb   atomic.Pointer[southbound]
}

func (l *liveNode) LiveStatus() map[string]*qkdv1.NodeStatus {
	sb := l.sb.Load()
	if sb == nil {
		return nil
	}
	return map[string]*qkdv1.NodeStatus{l.node: sb.status()}
}
