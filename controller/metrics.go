package controller

import (
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkdnet/qkdnet/controller/state"
)

// collector exports the replica's Raft and session state to Prometheus.
type collector struct {
	c                             *Controller
	leader, term, last, commit    *prometheus.Desc
	applied, agents, nodes, links *prometheus.Desc
	apps                          *prometheus.Desc
}

// NewCollector returns a Prometheus collector of the replica's state.
func NewCollector(c *Controller) prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("qkd_controller_"+name, help, nil, prometheus.Labels{"replica": c.cfg.ID})
	}
	return &collector{
		c:       c,
		leader:  d("is_leader", "1 while this replica is the Raft leader."),
		term:    d("raft_term", "Current Raft term."),
		last:    d("raft_last_index", "Index of the last Raft log entry."),
		commit:  d("raft_commit_index", "Raft commit index."),
		applied: d("raft_applied_index", "Index of the last entry applied to the state."),
		agents:  d("agent_sessions", "Agents holding a session with this replica (leader only)."),
		nodes:   d("nodes", "Nodes in the state."),
		links:   d("links", "QKD links in the state."),
		apps:    d("applications", "Applications (key streams) in the state."),
	}
}

func (m *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.leader, m.term, m.last, m.commit, m.applied, m.agents, m.nodes, m.links, m.apps} {
		ch <- d
	}
}

func (m *collector) Collect(ch chan<- prometheus.Metric) {
	st, err := m.c.Status()
	if err != nil {
		return
	}
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	leader := 0.0
	if m.c.raft.State() == raft.Leader {
		leader = 1
	}
	g(m.leader, leader)
	g(m.term, float64(st.GetTerm()))
	g(m.last, float64(st.GetLastIndex()))
	g(m.commit, float64(st.GetCommitIndex()))
	g(m.applied, float64(st.GetAppliedIndex()))
	g(m.agents, float64(len(st.GetAgents())))
	var nodes, links, apps int
	m.c.fsm.Read(func(s *state.State) { nodes, links, apps = s.Counts() })
	g(m.nodes, float64(nodes))
	g(m.links, float64(links))
	g(m.apps, float64(apps))
}
