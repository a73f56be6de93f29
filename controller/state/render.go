package state

import (
	"github.com/openconfig/ygot/ygot"

	"github.com/qkdnet/qkdnet/qkd015"
)

// Render returns the configuration the controller pushes to a node: its
// tree, stamped with version, with each link's remote end filled in (the
// remote node's name, KME_ID and agent address, which live in the remote
// node's own tree), encoded as JSON_IETF.
func (s *State) Render(name string, version uint64) ([]byte, error) {
	t, ok := s.nodes[name]
	if !ok {
		return nil, notFound("node %q", name)
	}
	return qkd015.EncodeEdited(t, func(out *qkd015.Node) {
		out.ConfigVersion = ygot.Uint64(version)
		for _, ql := range qkd015.Links(out) {
			remote, ok := s.byID[ql.GetQkdlRemote().GetQkdnId()]
			if !ok {
				continue
			}
			rt := s.nodes[remote]
			ql.RemoteNodeName = ygot.String(remote)
			ql.RemoteKmeId = rt.KmeId
			ql.RemoteAgentAddress = rt.AgentAddress
		}
		for _, qa := range qkd015.Apps(out) {
			if remote, ok := s.byID[qa.GetRemoteQkdnId()]; ok {
				qa.RemoteNodeName = ygot.String(remote)
				qa.RemoteKmeId = s.nodes[remote].KmeId
			}
		}
	})
}
