package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// protoJSON is the JSON of -o json: the proto's field names, every field.
var protoJSON = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// writeJSON writes a JSON document indented; indenting also drops the
// random spacing protojson adds, so the output is stable.
func writeJSON(w io.Writer, raw []byte) error {
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return fmt.Errorf("format JSON: %w", err)
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}

func (x *call) printProto(m proto.Message) error {
	raw, err := protoJSON.Marshal(m)
	if err != nil {
		return err
	}
	return writeJSON(x.stdout, raw)
}

// printFields prints the named fields of m, in that order, as one object.
func (x *call) printFields(m proto.Message, names ...string) error {
	raw, err := protoJSON.Marshal(m)
	if err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(raw, &all); err != nil {
		return err
	}
	pairs := make([]kv, 0, len(names))
	for _, n := range names {
		pairs = append(pairs, kv{n, all[n]})
	}
	return writeJSON(x.stdout, object(pairs...))
}

type kv struct {
	key string
	raw json.RawMessage
}

// object is a JSON object with its members in the given order.
func object(pairs ...kv) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(p.key)
		b.Write(k)
		b.WriteByte(':')
		if p.raw == nil {
			b.WriteString("null")
		} else {
			b.Write(p.raw)
		}
	}
	b.WriteByte('}')
	return b.Bytes()
}

func (x *call) printConfig(node string, r *qkdv1.GetNodeConfigResponse) error {
	tree := r.GetQkdNode()
	if !json.Valid(tree) {
		return fmt.Errorf("the controller sent node %s a configuration that is not JSON", node)
	}
	if x.g.output != "json" {
		return writeJSON(x.stdout, tree)
	}
	name, _ := json.Marshal(node)
	version, _ := json.Marshal(strconv.FormatUint(r.GetConfigVersion(), 10))
	return writeJSON(x.stdout, object(kv{"node", name}, kv{"config_version", version}, kv{"qkd_node", tree}))
}

// table writes aligned columns; empty cells show as "-".
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		// A tab or newline would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cells[i])
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// num shows a counter, "" (so "-") when known is false.
func num(v uint64, known bool) string {
	if !known {
		return ""
	}
	return strconv.FormatUint(v, 10)
}

func printStatus(w io.Writer, s *qkdv1.StatusResponse) error {
	leader := "none known"
	if s.GetLeaderId() != "" {
		leader = s.GetLeaderId()
		if s.GetLeaderGrpc() != "" {
			leader += " at " + s.GetLeaderGrpc()
		}
	}
	agents := "none connected"
	if len(s.GetAgents()) > 0 {
		agents = strings.Join(slices.Sorted(slices.Values(s.GetAgents())), ", ")
	} else if s.GetState() != "Leader" {
		agents = "unknown (only the leader knows)"
	}
	fmt.Fprintf(w, "Leader:       %s\n", leader)
	fmt.Fprintf(w, "Term:         %d\n", s.GetTerm())
	fmt.Fprintf(w, "Answered by:  %s (%s)\n", s.GetId(), s.GetState())
	fmt.Fprintf(w, "Raft index:   last %d, commit %d, applied %d\n", s.GetLastIndex(), s.GetCommitIndex(), s.GetAppliedIndex())
	fmt.Fprintf(w, "Agents:       %s\n\n", agents)
	members := slices.Clone(s.GetMembers())
	slices.SortFunc(members, func(a, b *qkdv1.Member) int { return strings.Compare(a.GetId(), b.GetId()) })
	t := newTable(w, "ID", "RAFT ADDRESS", "GRPC ADDRESS", "SUFFRAGE", "LEADER")
	for _, m := range members {
		mark := ""
		if m.GetLeader() {
			mark = "*"
		}
		t.row(m.GetId(), m.GetRaftAddress(), m.GetGrpcAddress(), m.GetSuffrage(), mark)
	}
	return t.flush()
}

func printNodes(w io.Writer, nodes []*qkdv1.NodeInfo) error {
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b *qkdv1.NodeInfo) int { return strings.Compare(a.GetName(), b.GetName()) })
	t := newTable(w, "NAME", "QKDN_ID", "KME_ID", "STATUS", "AGENT", "CONNECTED", "APPLIED", "SAES", "INTERFACES")
	for _, n := range nodes {
		var ifs []string
		in := slices.Clone(n.GetInterfaces())
		slices.SortFunc(in, func(a, b *qkdv1.Interface) int { return int(a.GetQkdiId()) - int(b.GetQkdiId()) })
		for _, i := range in {
			s := fmt.Sprintf("%d:%s", i.GetQkdiId(), i.GetLink())
			if i.GetLink() == "" {
				s += "-"
			}
			var about []string
			for _, a := range []string{i.GetTechnology(), i.GetModel()} {
				if a != "" {
					about = append(about, a)
				}
			}
			if len(about) > 0 {
				s += "(" + strings.Join(about, ",") + ")"
			}
			ifs = append(ifs, s)
		}
		t.row(n.GetName(), n.GetQkdnId(), n.GetKmeId(), n.GetStatus(), n.GetAgentAddress(), yesNo(n.GetConnected()),
			num(n.GetAppliedVersion(), n.GetAppliedVersion() != 0), strings.Join(sortedCopy(n.GetSaes()), ","), strings.Join(ifs, " "))
	}
	return t.flush()
}

func printLinks(w io.Writer, links []*qkdv1.LinkInfo) error {
	links = slices.Clone(links)
	slices.SortFunc(links, func(a, b *qkdv1.LinkInfo) int { return strings.Compare(a.GetName(), b.GetName()) })
	t := newTable(w, "NAME", "ENDS", "MASTER", "TYPE", "ENABLED", "KEY_SIZE", "TECHNOLOGY", "STATUS", "SKR", "POOL_KEYS", "APPLICATIONS")
	for _, l := range links {
		live := l.GetStatus() != ""
		t.row(l.GetName(), l.GetNodeA()+"<->"+l.GetNodeB(), l.GetMasterNode(), l.GetType(), yesNo(l.GetEnable()),
			strconv.FormatUint(uint64(l.GetKeySize()), 10), l.GetTechnology(), l.GetStatus(),
			num(l.GetSkr(), live), num(l.GetPoolKeys(), live), strings.Join(sortedCopy(l.GetApplications()), ","))
	}
	return t.flush()
}

func printSAEs(w io.Writer, saes []*qkdv1.SAEInfo) error {
	saes = slices.Clone(saes)
	slices.SortFunc(saes, func(a, b *qkdv1.SAEInfo) int { return strings.Compare(a.GetSaeId(), b.GetSaeId()) })
	t := newTable(w, "SAE_ID", "NODE")
	for _, s := range saes {
		t.row(s.GetSaeId(), s.GetNode())
	}
	return t.flush()
}

func printApps(w io.Writer, apps []*qkdv1.Application) error {
	apps = slices.Clone(apps)
	slices.SortFunc(apps, func(a, b *qkdv1.Application) int { return strings.Compare(a.GetAppId(), b.GetAppId()) })
	t := newTable(w, "APP_ID", "MASTER", "SLAVE", "HOPS", "QOS", "PRIORITY", "STATUS", "KEYS_DELIVERED", "PATH_GEN", "DRAINING")
	for _, a := range apps {
		var hops []string
		for _, h := range a.GetHops() {
			hops = append(hops, fmt.Sprintf("%s(master %s)", h.GetLink(), h.GetMasterNode()))
		}
		q := a.GetQos()
		qos := fmt.Sprintf("max=%d min=%d jitter=%d ttl=%d", q.GetMaxBandwidth(), q.GetMinBandwidth(), q.GetJitter(), q.GetTtl())
		var st []string
		for _, node := range sortedCopy(mapKeys(a.GetStatuses())) {
			st = append(st, node+":"+a.GetStatuses()[node])
		}
		// Earlier paths of a rerouted stream, still delivering their keys.
		draining := []string{}
		for _, d := range a.GetDraining() {
			draining = append(draining, fmt.Sprintf("%d:%s", d.GetPathGeneration(), strings.Join(d.GetLinks(), ">")))
		}
		if len(draining) == 0 {
			draining = append(draining, "-")
		}
		t.row(a.GetAppId(), a.GetMasterSaeId()+"@"+a.GetMasterNode(), a.GetSlaveSaeId()+"@"+a.GetSlaveNode(),
			strings.Join(hops, ","), qos, strconv.FormatUint(uint64(a.GetPriority()), 10), strings.Join(st, ","),
			strconv.FormatUint(a.GetKeysDelivered(), 10), strconv.FormatUint(uint64(a.GetPathGeneration()), 10), strings.Join(draining, ","))
	}
	return t.flush()
}

func sortedCopy(s []string) []string {
	return slices.Sorted(slices.Values(s))
}

func mapKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
