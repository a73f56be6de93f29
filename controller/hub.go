package controller

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/qkdnet/qkdnet/controller/state"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// hub holds the agents' sessions with this replica (only while it leads)
// and what they last reported.
type hub struct {
	mu        sync.Mutex
	accepting bool
	sessions  map[string]*session // by node
	live      map[string]*nodeLive
	attached  chan struct{} // closed and replaced when a session attaches
}

// session is one agent's Session stream.
type session struct {
	node string
	// mailbox holds the newest configuration to send; older ones are
	// dropped, since each push is the full desired state.
	mailbox chan *qkdv1.SessionResponse
	closed  chan struct{}
	once    sync.Once
	// sent is true once the session got a configuration; at is the
	// ChangedAt of the node when it was rendered, so unchanged nodes get no
	// push.
	sent bool
	at   uint64
}

func (s *session) close() { s.once.Do(func() { close(s.closed) }) }

// offer queues a push, replacing one not yet sent.
func (s *session) offer(p *qkdv1.SessionResponse) {
	for {
		select {
		case s.mailbox <- p:
			return
		default:
		}
		select {
		case <-s.mailbox:
		default:
		}
	}
}

// nodeLive is the live state of a node, as its agent reported it.
type nodeLive struct {
	status    *qkdv1.NodeStatus
	applied   uint64
	lastError string
	seen      time.Time
	connected bool
}

func newHub() *hub {
	return &hub{sessions: map[string]*session{}, live: map[string]*nodeLive{}, attached: make(chan struct{})}
}

// open lets sessions attach (this replica now leads).
func (h *hub) open() {
	h.mu.Lock()
	h.accepting = true
	h.mu.Unlock()
}

// attach registers a session for node, closing the node's previous one.
func (h *hub) attach(node string) (*session, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.accepting {
		return nil, false
	}
	if old := h.sessions[node]; old != nil {
		old.close()
	}
	s := &session{node: node, mailbox: make(chan *qkdv1.SessionResponse, 1), closed: make(chan struct{})}
	h.sessions[node] = s
	l := h.liveOf(node)
	l.connected = true
	l.seen = time.Now()
	close(h.attached)
	h.attached = make(chan struct{})
	return s, true
}

func (h *hub) detach(s *session) {
	s.close()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sessions[s.node] == s {
		delete(h.sessions, s.node)
		h.liveOf(s.node).connected = false
	}
}

// closeAll ends every session and refuses new ones (leadership is gone).
func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.accepting = false
	for n, s := range h.sessions {
		s.close()
		delete(h.sessions, n)
	}
	h.live = map[string]*nodeLive{}
}

func (h *hub) liveOf(node string) *nodeLive {
	l := h.live[node]
	if l == nil {
		l = &nodeLive{}
		h.live[node] = l
	}
	return l
}

func (h *hub) report(node string, f func(*nodeLive)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.liveOf(node)
	l.seen = time.Now()
	f(l)
}

// snapshotLive copies the live state.
func (h *hub) snapshotLive() map[string]nodeLive {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]nodeLive, len(h.live))
	for n, l := range h.live {
		out[n] = *l
	}
	return out
}

func (h *hub) agents() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Sorted(maps.Keys(h.sessions))
}

func (h *hub) snapshotSessions() ([]*session, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Collect(maps.Values(h.sessions)), h.attached
}

// pushLoop renders every attached node's configuration after each change to
// the state (and when a session attaches) and queues it where it differs
// from what that session was last given.
func (c *Controller) pushLoop(ctx context.Context) {
	for {
		changed := c.fsm.Changed()
		sessions, attached := c.hub.snapshotSessions()
		c.pushTo(sessions)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-attached:
		}
	}
}

func (c *Controller) pushTo(sessions []*session) {
	c.fsm.Read(func(s *state.State) {
		for _, sess := range sessions {
			at := s.ChangedAt(sess.node)
			if sess.sent && at <= sess.at {
				continue
			}
			p := &qkdv1.SessionResponse{ConfigVersion: s.Index()}
			if _, ok := s.Node(sess.node); ok {
				var err error
				if p.QkdNode, err = s.Render(sess.node, s.Index()); err != nil {
					c.logger.Error("render configuration", "node", sess.node, "err", err)
					continue
				}
			}
			// A node not (or no longer) in the state gets an empty
			// configuration: nothing to run.
			sess.sent, sess.at = true, at
			sess.offer(p)
		}
	})
}
