package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// action runs a command once its flags and arguments are parsed.
type action func(x *call, args []string) error

// command is one qkdctl command.
type command struct {
	name    string
	aliases []string
	args    []string // positional arguments, all required
	flags   string   // the command's own flags, for the synopsis
	summary string
	about   string
	write   bool
	json    string // what -o json prints
	// setup defines the command's flags on fs and returns what it does.
	setup func(fs *flag.FlagSet) action
}

func (c *command) synopsis() string {
	s := c.name
	if len(c.args) > 0 {
		s += " " + strings.Join(c.args, " ")
	}
	if c.flags != "" {
		s += " " + c.flags
	}
	return s
}

// short is the synopsis in the list of commands.
func (c *command) short() string {
	s := c.name
	if len(c.args) > 0 {
		s += " " + strings.Join(c.args, " ")
	}
	if c.flags != "" {
		s += " [flags]"
	}
	return s
}

func lookup(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
		for _, a := range c.aliases {
			if a == name {
				return c
			}
		}
	}
	return nil
}

func commands() []*command { return commandList }

var commandList = append(baseCommands, historyCommand())

var baseCommands = []*command{
	{
		name:    "status",
		json:    `StatusResponse`,
		summary: "controller replicas, leader, term, Raft indexes, connected agents",
		about: "Prints the controller cluster as the leader sees it (as another replica sees\n" +
			"it when the leader cannot be reached): the replicas with their Raft and gRPC\n" +
			"addresses and suffrage, the leader, the term, the last, commit and applied\n" +
			"Raft indexes, and the nodes whose agents hold a session with the leader.",
		setup: func(*flag.FlagSet) action { return cmdStatus },
	},
	{
		name:    "nodes",
		json:    `{"config_version": "N", "nodes": [NodeInfo, ...]}`,
		summary: "trusted nodes: IDs, status, agent, applied config version, SAEs, interfaces",
		about: "Lists the trusted nodes: name, qkdn_id, KME_ID, ETSI 015 status (NEW until the\n" +
			"agent registers, OPERATING, DOWN while it has no session), the agent's address,\n" +
			"whether it is connected, the configuration version it applied, its SAEs and its\n" +
			"QKD interfaces (qkdi_id:link(technology)).",
		setup: func(*flag.FlagSet) action { return cmdNodes },
	},
	{
		name:    "links",
		json:    `{"config_version": "N", "links": [LinkInfo, ...]}`,
		summary: "QKD links: ends, master node, key size, technology, live status",
		about: "Lists the QKD links: name, the two nodes it joins, the master node (whose KMM\n" +
			"allocates its keys), type, whether it is enabled, key size in bits, technology,\n" +
			"and as the master node last reported: status, secret key rate (bit/s), keys in\n" +
			"the pool; and the applications it carries.",
		setup: func(*flag.FlagSet) action { return cmdLinks },
	},
	{
		name:    "saes",
		json:    `{"config_version": "N", "saes": [SAEInfo, ...]}`,
		summary: "SAEs and the node each is attached to",
		about:   "Lists the SAEs and the node each is attached to.",
		setup:   func(*flag.FlagSet) action { return cmdSAEs },
	},
	{
		name:    "apps",
		json:    `{"config_version": "N", "applications": [Application, ...]}`,
		aliases: []string{"applications"},
		summary: "applications (key streams): SAEs, path, QoS, status; alias applications",
		about: "Lists the applications (ETSI 015 key streams): app_id, master SAE@node ->\n" +
			"slave SAE@node, the hops of the path with the master node of each, the QoS\n" +
			"(bandwidth max/min in bit/s, jitter, ttl), the priority, the app_status each\n" +
			"node reports and the keys delivered.",
		setup: func(*flag.FlagSet) action { return cmdApps },
	},
	{
		name:    "config",
		json:    `{"node": "NODE", "config_version": "N", "qkd_node": {the tree}}`,
		args:    []string{"NODE"},
		summary: "a node's ETSI 015 configuration, as JSON_IETF",
		about: "Prints the node's whole etsi-qkd-sdn-node:qkd_node tree as the controller\n" +
			"would push it to the node's agent: JSON_IETF (RFC 7951), indented.",
		setup: func(*flag.FlagSet) action { return cmdConfig },
	},
	{
		name:    "add-node",
		json:    `WriteResponse: {"config_version": "N"}`,
		args:    []string{"NAME"},
		flags:   "[--kme-id K] [--location L]",
		summary: "declare a trusted node",
		about: "Declares a trusted node before (or after) its agent registers. Its KME_ID\n" +
			"defaults to KME_<NAME>.",
		write: true,
		setup: func(fs *flag.FlagSet) action {
			kme := fs.String("kme-id", "", "the node's KME_ID (ETSI 014); default KME_<NAME>")
			loc := fs.String("location", "", "the node's location ID (qkdn_location_id)")
			return func(x *call, a []string) error {
				return x.write("node "+a[0]+" added", func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.AddNode(ctx, &qkdv1.AddNodeRequest{Name: a[0], KmeId: *kme, Location: *loc})
				})
			}
		},
	},
	{
		name:    "remove-node",
		json:    `WriteResponse: {"config_version": "N"}`,
		args:    []string{"NAME"},
		summary: "remove a node no link, SAE or application uses",
		about:   "Removes a node. The controller refuses while a link ends there or an SAE is attached to it.",
		write:   true,
		setup: func(*flag.FlagSet) action {
			return func(x *call, a []string) error {
				return x.write("node "+a[0]+" removed", func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.RemoveNode(ctx, &qkdv1.RemoveNodeRequest{Name: a[0]})
				})
			}
		},
	},
	{
		name:    "add-link",
		json:    `WriteResponse: {"config_version": "N"}`,
		args:    []string{"NAME", "A", "B"},
		flags:   "[--master N] [--key-size BITS] [--technology T] [--disabled]",
		summary: "add a QKD link between nodes A and B",
		about:   "Adds a (PHYS) QKD link named NAME between the declared nodes A and B.",
		write:   true,
		setup: func(fs *flag.FlagSet) action {
			master := fs.String("master", "", "the `node` whose KMM allocates the link's keys: A or B; default A")
			var keySize uint32Flag
			fs.Var(&keySize, "key-size", "key size in `bits`, a multiple of 8; default 256")
			tech := fs.String("technology", "", "`technology`: DV-QKD, CV-QKD, DV-QKD-COW or DV-QKD-2Ws; default DV-QKD")
			disabled := fs.Bool("disabled", false, "add the link disabled (qkdl_enable false): no path uses it")
			return func(x *call, a []string) error {
				return x.write(fmt.Sprintf("link %s (%s-%s) added", a[0], a[1], a[2]), func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.AddLink(ctx, &qkdv1.AddLinkRequest{Name: a[0], NodeA: a[1], NodeB: a[2], MasterNode: *master,
						KeySize: uint32(keySize), Technology: *tech, Disabled: *disabled})
				})
			}
		},
	},
	{
		name:    "remove-link",
		json:    `WriteResponse: {"config_version": "N"}`,
		args:    []string{"NAME"},
		summary: "remove a link no application uses",
		about:   "Removes a QKD link. The controller refuses while an application's path uses it.",
		write:   true,
		setup: func(*flag.FlagSet) action {
			return func(x *call, a []string) error {
				return x.write("link "+a[0]+" removed", func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.RemoveLink(ctx, &qkdv1.RemoveLinkRequest{Name: a[0]})
				})
			}
		},
	},
	{
		name:    "enable-link",
		json:    `WriteResponse: {"config_version": "N"}`,
		args:    []string{"NAME"},
		summary: "enable a link (its drivers run, paths may use it)",
		about:   "Sets the link's qkdl_enable: the QKD drivers at both ends start and new paths may use it.",
		write:   true,
		setup: func(*flag.FlagSet) action {
			return func(x *call, a []string) error {
				return x.write("link "+a[0]+" enabled", func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.EnableLink(ctx, &qkdv1.EnableLinkRequest{Name: a[0], Enable: true})
				})
			}
		},
	},
	{
		name:    "disable-link",
		json:    `WriteResponse: {"config_version": "N"}`,
		args:    []string{"NAME"},
		summary: "disable a link (its drivers stop: the link goes down)",
		about: "Clears the link's qkdl_enable: the QKD drivers at both ends stop, so the link makes no key,\n" +
			"and no new path uses it. Streams on it are served from the keys they hold, then answer\n" +
			"that key is short until the link is enabled again.",
		write: true,
		setup: func(*flag.FlagSet) action {
			return func(x *call, a []string) error {
				return x.write("link "+a[0]+" disabled", func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.EnableLink(ctx, &qkdv1.EnableLinkRequest{Name: a[0]})
				})
			}
		},
	},
	{
		name:    "add-sae",
		json:    `WriteResponse: {"config_version": "N"}`,
		args:    []string{"SAE_ID", "NODE"},
		summary: "attach an SAE to a node",
		about:   "Attaches the SAE SAE_ID to the node NODE.",
		write:   true,
		setup: func(*flag.FlagSet) action {
			return func(x *call, a []string) error {
				return x.write("SAE "+a[0]+" attached to node "+a[1], func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.AddSAE(ctx, &qkdv1.AddSAERequest{SaeId: a[0], Node: a[1]})
				})
			}
		},
	},
	{
		name:    "remove-sae",
		json:    `WriteResponse: {"config_version": "N"}`,
		args:    []string{"SAE_ID"},
		summary: "detach an SAE no application uses",
		about:   "Detaches an SAE from its node. The controller refuses while the SAE is an end of an application.",
		write:   true,
		setup: func(*flag.FlagSet) action {
			return func(x *call, a []string) error {
				return x.write("SAE "+a[0]+" removed", func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.RemoveSAE(ctx, &qkdv1.RemoveSAERequest{SaeId: a[0]})
				})
			}
		},
	},
	{
		name:    "remove-app",
		json:    `WriteResponse: {"config_version": "N"}`,
		args:    []string{"APP_ID"},
		summary: "remove an application from every node of its path",
		about:   "Removes an application (key stream) from every node of its path. 'qkdctl apps' lists the app_ids.",
		write:   true,
		setup: func(*flag.FlagSet) action {
			return func(x *call, a []string) error {
				return x.write("application "+a[0]+" removed", func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error) {
					return n.RemoveApplication(ctx, &qkdv1.RemoveApplicationRequest{AppId: a[0]})
				})
			}
		},
	},
}

// uint32Flag is a flag holding a uint32.
type uint32Flag uint32

func (u *uint32Flag) String() string { return strconv.FormatUint(uint64(*u), 10) }

func (u *uint32Flag) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return errors.New("want a number from 0 to 4294967295")
	}
	*u = uint32Flag(v)
	return nil
}

// write sends a change to the leader and prints the version it was
// committed at.
func (x *call) write(done string, fn func(ctx context.Context, n qkdv1.NetworkServiceClient) (*qkdv1.WriteResponse, error)) error {
	var resp *qkdv1.WriteResponse
	err := x.do(func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := fn(ctx, ctlclient.Network(cc))
		if err == nil {
			resp = r
		}
		return err
	})
	if err != nil {
		return err
	}
	if x.g.output == "json" {
		return x.printProto(resp)
	}
	_, err = fmt.Fprintf(x.stdout, "%s; config_version %d\n", done, resp.GetConfigVersion())
	return err
}

// network reads the whole network.
func (x *call) network() (*qkdv1.GetNetworkResponse, error) {
	var resp *qkdv1.GetNetworkResponse
	err := x.read(func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := ctlclient.Network(cc).GetNetwork(ctx, &qkdv1.GetNetworkRequest{})
		if err == nil {
			resp = r
		}
		return err
	})
	return resp, err
}

func cmdStatus(x *call, _ []string) error {
	var resp *qkdv1.StatusResponse
	seek := newLeaderSeek()
	err := x.do(func(ctx context.Context, cc *grpc.ClientConn) error {
		st, err := ctlclient.Cluster(cc).Status(ctx, &qkdv1.StatusRequest{})
		if err != nil {
			return err
		}
		if err := seek.check(st, cc.Target()); err != nil {
			return err
		}
		resp = st
		return nil
	})
	if err != nil {
		return err
	}
	if x.g.output == "json" {
		return x.printProto(resp)
	}
	return printStatus(x.stdout, resp)
}

func cmdNodes(x *call, _ []string) error {
	n, err := x.network()
	if err != nil {
		return err
	}
	if x.g.output == "json" {
		return x.printFields(n, "config_version", "nodes")
	}
	return printNodes(x.stdout, n.GetNodes())
}

func cmdLinks(x *call, _ []string) error {
	n, err := x.network()
	if err != nil {
		return err
	}
	if x.g.output == "json" {
		return x.printFields(n, "config_version", "links")
	}
	return printLinks(x.stdout, n.GetLinks())
}

func cmdSAEs(x *call, _ []string) error {
	n, err := x.network()
	if err != nil {
		return err
	}
	if x.g.output == "json" {
		return x.printFields(n, "config_version", "saes")
	}
	return printSAEs(x.stdout, n.GetSaes())
}

func cmdApps(x *call, _ []string) error {
	n, err := x.network()
	if err != nil {
		return err
	}
	if x.g.output == "json" {
		return x.printFields(n, "config_version", "applications")
	}
	return printApps(x.stdout, n.GetApplications())
}

func cmdConfig(x *call, a []string) error {
	var resp *qkdv1.GetNodeConfigResponse
	err := x.read(func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := ctlclient.Network(cc).GetNodeConfig(ctx, &qkdv1.GetNodeConfigRequest{Node: a[0]})
		if err == nil {
			resp = r
		}
		return err
	})
	if err != nil {
		return err
	}
	return x.printConfig(a[0], resp)
}
