package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	gnmipb "github.com/openconfig/gnmi/proto/gnmi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// The history command reads a node's statistics history from its agent's
// gNMI (the history lists of its links and applications, kept in the
// node's Metric Store); the controller tells where the agent is.

// linkSample and appSample are the history list entries as JSON_IETF gives
// them (64-bit integers and decimal64 as strings).
type linkSample struct {
	Time         string  `json:"time"`
	Interval     uint32  `json:"interval"`
	KeysSupplied uint64  `json:"keys_supplied,string"`
	KeysConsumed uint64  `json:"keys_consumed,string"`
	PoolKeys     uint64  `json:"pool_keys,string"`
	KeyRate      float64 `json:"key_rate,string"`
}

type appSample struct {
	Time          string  `json:"time"`
	Interval      uint32  `json:"interval"`
	KeysDelivered uint64  `json:"keys_delivered,string"`
	DeliveredRate float64 `json:"delivered_rate,string"`
	RequestedRate float64 `json:"requested_rate,string"`
	KeysStored    uint64  `json:"keys_stored,string"`
	Requests      uint64  `json:"requests,string"`
	LatencyMean   float64 `json:"latency_mean,string"`
	LatencyMax    float64 `json:"latency_max,string"`
}

// nodeHistory is what the command prints with -o json.
type nodeHistory struct {
	Node  string                  `json:"node"`
	Links map[string][]linkSample `json:"links"`
	Apps  map[string][]appSample  `json:"applications"`
}

func historyCommand() *command {
	return &command{
		name:    "history",
		args:    []string{"NODE"},
		flags:   "[--link NAME] [--app APP_ID] [--since DURATION]",
		json:    `{"node": "NODE", "links": {"NAME": [sample, ...]}, "applications": {"APP_ID": [sample, ...]}}`,
		summary: "a node's statistics history per link and per key stream (its Metric Store)",
		about: "Prints the statistics history the node's KMM keeps in its Metric Store, one sample\n" +
			"per interval (10 s by default): for each QKD link, keys supplied and consumed, the\n" +
			"pool level and the key rate; for each application (key stream) at the node, keys\n" +
			"delivered and the delivered vs. requested rate, keys stored, requests served and\n" +
			"their mean and longest latency. It is read over gNMI from the node's agent, whose\n" +
			"address the controller gives, with the same certificate.",
		setup: func(fs *flag.FlagSet) action {
			link := fs.String("link", "", "only the link `NAME`")
			app := fs.String("app", "", "only the application `APP_ID`")
			since := fs.Duration("since", 0, "only the samples of the last `DURATION` (e.g. 5m); default all")
			return func(x *call, a []string) error {
				if *since < 0 {
					return fmt.Errorf("--since %v: must not be negative", *since)
				}
				h, err := x.history(a[0])
				if err != nil {
					return err
				}
				h.filter(*link, *app, *since)
				if *link != "" && len(h.Links) == 0 {
					return fmt.Errorf("node %s has no history of link %q", a[0], *link)
				}
				if *app != "" && len(h.Apps) == 0 {
					return fmt.Errorf("node %s has no history of application %q", a[0], *app)
				}
				if x.g.output == "json" {
					b, err := json.MarshalIndent(h, "", "  ")
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(x.stdout, "%s\n", b)
					return err
				}
				return printHistory(x, h, *link == "" && *app == "")
			}
		},
	}
}

// history reads node's history from its agent.
func (x *call) history(node string) (*nodeHistory, error) {
	n, err := x.network()
	if err != nil {
		return nil, err
	}
	var info *qkdv1.NodeInfo
	for _, ni := range n.GetNodes() {
		if ni.GetName() == node {
			info = ni
		}
	}
	switch {
	case info == nil:
		return nil, fmt.Errorf("no node %q", node)
	case info.GetAgentAddress() == "":
		return nil, fmt.Errorf("node %s has no agent address yet (its agent has not registered)", node)
	}
	cc, err := grpc.NewClient(info.GetAgentAddress(), grpc.WithTransportCredentials(credentials.NewTLS(x.tls)))
	if err != nil {
		return nil, fmt.Errorf("node %s agent at %s: %v", node, info.GetAgentAddress(), err)
	}
	defer cc.Close()
	elem := func(names ...string) *gnmipb.Path {
		p := &gnmipb.Path{}
		for _, n := range names {
			p.Elem = append(p.Elem, &gnmipb.PathElem{Name: n})
		}
		return p
	}
	resp, err := gnmipb.NewGNMIClient(cc).Get(x.ctx, &gnmipb.GetRequest{Prefix: &gnmipb.Path{Target: node}, Encoding: gnmipb.Encoding_JSON_IETF,
		Path: []*gnmipb.Path{elem("qkd_node", "qkd_links"), elem("qkd_node", "qkd_applications")}})
	if err != nil {
		return nil, fmt.Errorf("node %s agent at %s: %s", node, info.GetAgentAddress(), describe(err))
	}
	h := &nodeHistory{Node: node, Links: map[string][]linkSample{}, Apps: map[string][]appSample{}}
	for _, nt := range resp.GetNotification() {
		for _, u := range nt.GetUpdate() {
			var doc any
			if err := json.Unmarshal(u.GetVal().GetJsonIetfVal(), &doc); err != nil {
				return nil, fmt.Errorf("node %s sent a value that is not JSON: %v", node, err)
			}
			doc = unprefixed(doc)
			if err := h.add(doc); err != nil {
				return nil, fmt.Errorf("node %s: %v", node, err)
			}
		}
	}
	return h, nil
}

// add takes the history lists out of a qkd_links or qkd_applications value.
func (h *nodeHistory) add(doc any) error {
	m, _ := doc.(map[string]any)
	for _, l := range list(m["qkd_link"]) {
		name, _ := l["link_name"].(string)
		if err := samples(l, &h.Links, name); err != nil {
			return err
		}
	}
	for _, a := range list(m["qkd_app"]) {
		id, _ := a["app_id"].(string)
		if err := samples(a, &h.Apps, id); err != nil {
			return err
		}
	}
	return nil
}

func list(v any) []map[string]any {
	arr, _ := v.([]any)
	out := make([]map[string]any, 0, len(arr))
	for _, e := range arr {
		if m, ok := e.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// samples decodes entry's history/sample list into (*into)[name].
func samples[T any](entry map[string]any, into *map[string][]T, name string) error {
	hist, _ := entry["history"].(map[string]any)
	raw, ok := hist["sample"]
	if !ok || name == "" {
		return nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return err
	}
	var out []T
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("history of %s: %v", name, err)
	}
	(*into)[name] = out
	return nil
}

// unprefixed drops the module names RFC 7951 puts on member names.
func unprefixed(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			if _, name, ok := strings.Cut(k, ":"); ok {
				k = name
			}
			out[k] = unprefixed(e)
		}
		return out
	case []any:
		for i := range t {
			t[i] = unprefixed(t[i])
		}
	}
	return v
}

// filter keeps the link, application and time asked for.
func (h *nodeHistory) filter(link, app string, since time.Duration) {
	if app != "" {
		h.Links = map[string][]linkSample{}
	}
	if link != "" {
		h.Apps = map[string][]appSample{}
	}
	for name := range h.Links {
		if link != "" && name != link {
			delete(h.Links, name)
		}
	}
	for id := range h.Apps {
		if app != "" && id != app {
			delete(h.Apps, id)
		}
	}
	if since <= 0 {
		return
	}
	cut := time.Now().Add(-since)
	for name, ss := range h.Links {
		h.Links[name] = keepSince(ss, cut, func(s linkSample) string { return s.Time })
	}
	for id, ss := range h.Apps {
		h.Apps[id] = keepSince(ss, cut, func(s appSample) string { return s.Time })
	}
}

// keepSince keeps the samples taken at or after cut (and those whose time does
// not parse, rather than hide them).
func keepSince[T any](ss []T, cut time.Time, at func(T) string) []T {
	var keep []T
	for _, s := range ss {
		if t, err := time.Parse(time.RFC3339Nano, at(s)); err != nil || !t.Before(cut) {
			keep = append(keep, s)
		}
	}
	return keep
}

func printHistory(x *call, h *nodeHistory, both bool) error {
	if len(h.Links)+len(h.Apps) == 0 {
		_, err := fmt.Fprintf(x.stdout, "node %s has no statistics history yet (one sample per interval, 10 s by default)\n", h.Node)
		return err
	}
	short := func(ts string) string {
		if at, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			return at.Local().Format("15:04:05")
		}
		return ts
	}
	if len(h.Links) > 0 {
		t := newTable(x.stdout, "LINK", "TIME", "SUPPLIED", "CONSUMED", "POOL", "KEYS/S")
		for _, name := range sortedKeys(h.Links) {
			for _, s := range h.Links[name] {
				t.row(name, short(s.Time), fmt.Sprint(s.KeysSupplied), fmt.Sprint(s.KeysConsumed), fmt.Sprint(s.PoolKeys), fmt.Sprintf("%.1f", s.KeyRate))
			}
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if both && len(h.Links) > 0 && len(h.Apps) > 0 {
		fmt.Fprintln(x.stdout)
	}
	if len(h.Apps) > 0 {
		t := newTable(x.stdout, "APPLICATION", "TIME", "DELIVERED", "KEYS/S", "REQUESTED/S", "STORED", "REQUESTS", "MEAN MS", "MAX MS")
		for _, id := range sortedKeys(h.Apps) {
			for _, s := range h.Apps[id] {
				t.row(id, short(s.Time), fmt.Sprint(s.KeysDelivered), fmt.Sprintf("%.1f", s.DeliveredRate), fmt.Sprintf("%.1f", s.RequestedRate),
					fmt.Sprint(s.KeysStored), fmt.Sprint(s.Requests), fmt.Sprintf("%.3f", s.LatencyMean), fmt.Sprintf("%.3f", s.LatencyMax))
			}
		}
		return t.flush()
	}
	return nil
}

func sortedKeys[T any](m map[string]T) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
