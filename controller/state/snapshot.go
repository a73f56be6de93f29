package state

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/qkdnet/qkdnet/gen/go/etsi015"
	"github.com/qkdnet/qkdnet/qkd015"
)

// snapshot is the state as a Raft snapshot holds it: every node's tree as
// an ETSI 015 JSON_IETF document, and the replicas. The indexes are not
// stored; Restore rebuilds them from the trees.
type snapshot struct {
	Index   uint64                     `json:"index"`
	Members map[string]Member          `json:"members"`
	Nodes   map[string]json.RawMessage `json:"nodes"`
}

// Snapshot encodes the state.
func (s *State) Snapshot() ([]byte, error) {
	snap := snapshot{Index: s.index, Members: s.members, Nodes: map[string]json.RawMessage{}}
	for name, t := range s.nodes {
		b, err := qkd015.Encode(t)
		if err != nil {
			return nil, fmt.Errorf("state: snapshot node %s: %w", name, err)
		}
		snap.Nodes[name] = b
	}
	return json.Marshal(snap)
}

// Restore decodes a snapshot into a new state.
func Restore(b []byte) (*State, error) {
	var snap snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return nil, fmt.Errorf("state: undecodable snapshot: %w", err)
	}
	s := New()
	s.index = snap.Index
	if snap.Members != nil {
		s.members = snap.Members
	}
	for _, name := range slices.Sorted(maps.Keys(snap.Nodes)) {
		t, err := qkd015.Parse(snap.Nodes[name])
		if err != nil {
			return nil, fmt.Errorf("state: snapshot node %s: %w", name, err)
		}
		s.nodes[name] = t
		s.byID[t.GetQkdnId()] = name
		s.touched[name] = s.index
	}
	s.reindex()
	return s, nil
}

// reindex rebuilds the link, SAE and application indexes from the trees.
func (s *State) reindex() {
	s.links = map[string]*LinkInfo{}
	s.saes = map[string]string{}
	s.apps = map[string]*AppInfo{}
	type hop struct {
		index uint32
		link  string
	}
	hops := map[string][]hop{}
	drains := map[string]map[uint32][]hop{} // app -> generation -> hops
	for _, name := range s.NodeNames() {
		t := s.nodes[name]
		for sae := range qkd015.SAEs(t) {
			s.saes[sae] = name
		}
		for _, ql := range qkd015.Links(t) {
			ln := ql.GetLinkName()
			l, ok := s.links[ln]
			if !ok {
				l = &LinkInfo{Name: ln, ID: ql.GetQkdlId(), KeySize: ql.GetKeySize(), Enabled: ql.GetQkdlEnable()}
				s.links[ln] = l
			}
			if ql.KmmRole == etsi015.QkdnetSdnExt_KmmRole_MASTER {
				l.Master = name
				l.A = name
				l.B = s.byID[ql.GetQkdlRemote().GetQkdnId()]
			}
		}
		for id, qa := range qkd015.Apps(t) {
			a, ok := s.apps[id]
			if !ok {
				ms, _ := qkd015.SAEFromURI(qa.GetServerAppId())
				var ss string
				if len(qa.ClientAppId) > 0 {
					ss, _ = qkd015.SAEFromURI(qa.ClientAppId[0])
				}
				q := qa.GetAppQos()
				a = &AppInfo{ID: id, MasterSAE: ms, SlaveSAE: ss, Priority: qa.GetAppPriority(), Created: qa.GetCreationTime(), ChunkSize: qa.GetKeyChunkSize(),
					QoS: QoS{MaxBandwidth: q.GetMaxBandwidth(), MinBandwidth: q.GetMinBandwidth(), Jitter: q.GetJitter(), TTL: q.GetTtl(),
						SharedPath: q.GetClientsSharedPathEnable(), SharedKeys: q.GetClientsSharedKeysRequired()}}
				s.apps[id] = a
			}
			if len(qa.ConnectedSae) > 0 {
				a.Connected = slices.Sorted(slices.Values(qa.ConnectedSae))
			}
			for lid, h := range qkd015.Hops(qa) {
				hops[id] = append(hops[id], hop{h.GetIndex(), lid})
				a.Gen = qa.GetPathGeneration()
			}
			for k, h := range qkd015.DrainHops(qa) {
				if drains[id] == nil {
					drains[id] = map[uint32][]hop{}
				}
				drains[id][k.Generation] = append(drains[id][k.Generation], hop{h.GetIndex(), k.QkdlId})
			}
		}
	}
	byLinkID := map[string]*LinkInfo{}
	for _, l := range s.links {
		byLinkID[l.ID] = l
	}
	for _, id := range slices.Sorted(maps.Keys(s.apps)) {
		a := s.apps[id]
		a.MasterNode, a.SlaveNode = s.saes[a.MasterSAE], s.saes[a.SlaveSAE]
		route := func(hs []hop) (path, masters, nodes []string) {
			sort.Slice(hs, func(i, j int) bool { return hs[i].index < hs[j].index })
			for i, h := range hs {
				if i > 0 && hs[i-1].index == h.index {
					continue // each hop is listed at both of its ends
				}
				l := byLinkID[h.link]
				path = append(path, l.Name)
				masters = append(masters, l.Master)
				if !slices.Contains(l.Apps, id) {
					l.Apps = append(l.Apps, id)
				}
			}
			nodes, _ = s.walk(a.MasterNode, a.SlaveNode, path, false)
			return path, masters, nodes
		}
		a.Path, a.Masters, a.Nodes = route(hops[id])
		for _, g := range slices.Sorted(maps.Keys(drains[id])) {
			r := Route{Gen: g}
			r.Path, r.Masters, r.Nodes = route(drains[id][g])
			a.Drains = append(a.Drains, r)
		}
	}
	for _, l := range s.links {
		sort.Strings(l.Apps)
	}
}
