package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const usageHead = `Usage: qkdctl [global flags] <command> [flags] [arguments]

Operates the QKD SDN controller cluster over mutual TLS with an operator
certificate. Requests go to the Raft leader, found among the replicas given
and followed when it moves; 'status' shows another replica's view when no
leader can be reached. Every change prints the config_version (Raft index)
it was committed at.

Cluster and network:
`

const usageTail = `
Global flags (before or after the command):
  --endpoints FILE      endpoints.json, or its folder (default %s if it exists)
  --controllers ADDRS   gRPC host:port of controller replicas, comma-separated
  --ca FILE             CA certificate (PEM)
  --cert FILE           operator certificate (PEM)
  --key FILE            operator private key (PEM)
  --timeout DURATION    how long to wait for a reachable controller, and for a
                        leader for changes (default 10s)
  -o, --output FORMAT   table (default) or json

Where the controller is: the endpoints file is JSON with, among other fields,
  {"controllers": [{"id": "c1", "grpc": "HOST:PORT", "raft": "HOST:PORT"}, ...],
   "ca_cert": "pki/ca.pem",
   "operator": {"cert": "pki/operator_ops.pem", "key": "pki/operator_ops-key.pem"}}
with paths relative to the file's folder. --controllers, --ca, --cert and
--key override what the file says (their paths are relative to the current
directory). The certificate must be an operator certificate,
qkd://operator/<name>.

Output: tables by default, in a stable order. With -o json, the proto3 JSON
mapping of the controller's messages (proto/qkd/v1/controller.proto) with the
proto's field names, every field present (empty lists [], unset messages
null) and 64-bit integers as strings, indented:
  status                StatusResponse
  nodes                 {"config_version": "N", "nodes": [NodeInfo, ...]}
  links                 {"config_version": "N", "links": [LinkInfo, ...]}
  saes                  {"config_version": "N", "saes": [SAEInfo, ...]}
  apps                  {"config_version": "N", "applications": [Application, ...]}
  config NODE           {"node": "NODE", "config_version": "N", "qkd_node": {ETSI 015 tree}}
  add-*, remove-*       WriteResponse: {"config_version": "N"}
config_version in the list documents is the Raft index of the state read.
Errors are one line on stderr, never JSON.

Exit status: 0 on success; 1 when the controller refuses a request or cannot
be reached within --timeout; 2 on bad usage (unknown command or flag, wrong
number of arguments, no controller or certificate given).

Run 'qkdctl <command> --help' for a command's flags.
`

// defaultEndpoints is where `qkdnet up` describes a running network.
const defaultEndpoints = ".qkdnet/endpoints.json"

// globals are the flags every command takes.
type globals struct {
	endpoints   string
	controllers string
	ca          string
	cert        string
	key         string
	timeout     time.Duration
	output      string
}

func defineGlobals(fs *flag.FlagSet, g *globals) {
	fs.StringVar(&g.endpoints, "endpoints", defaultEndpoints, "endpoints.json `file` (or its folder) naming the controllers, the CA and the operator certificate")
	fs.StringVar(&g.controllers, "controllers", "", "gRPC `addresses` (host:port,...) of controller replicas; overrides the endpoints file")
	fs.StringVar(&g.ca, "ca", "", "CA certificate `file` (PEM); overrides the endpoints file's ca_cert")
	fs.StringVar(&g.cert, "cert", "", "operator certificate `file` (PEM); overrides the endpoints file's operator.cert")
	fs.StringVar(&g.key, "key", "", "operator private key `file` (PEM); overrides the endpoints file's operator.key")
	fs.DurationVar(&g.timeout, "timeout", 10*time.Second, "how long to wait for a reachable controller (and a leader, for changes)")
	fs.StringVar(&g.output, "o", "table", "output `format`: table or json")
	fs.StringVar(&g.output, "output", "table", "output `format`: table or json (same as -o)")
}

// cli is one run of qkdctl.
type cli struct {
	stdout, stderr io.Writer
	g              globals
	gfs            *flag.FlagSet
}

// errUsage is a usage error already reported; exit status 2.
var errUsage = errors.New("usage")

// configError is a missing or contradictory setting (no controller, no
// certificate): bad usage, exit status 2, reported on one line.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func run(args []string, stdout, stderr io.Writer) int {
	c := &cli{stdout: stdout, stderr: stderr}
	c.gfs = flag.NewFlagSet("qkdctl", flag.ContinueOnError)
	c.gfs.SetOutput(io.Discard)
	defineGlobals(c.gfs, &c.g)
	if err := c.gfs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.usage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "qkdctl: %v\nRun 'qkdctl --help' for usage.\n", err)
		return 2
	}
	rest := c.gfs.Args()
	if len(rest) == 0 {
		c.usage(stderr)
		return 2
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		if len(rest) == 0 {
			c.usage(stdout)
			return 0
		}
		cmd := lookup(rest[0])
		if cmd == nil {
			fmt.Fprintf(stderr, "qkdctl: help: unknown command %q\nRun 'qkdctl --help' for the commands.\n", rest[0])
			return 2
		}
		fs := flag.NewFlagSet("qkdctl "+cmd.name, flag.ContinueOnError)
		cmd.setup(fs)
		c.commandHelp(cmd, fs, stdout)
		return 0
	}
	cmd := lookup(name)
	if cmd == nil {
		fmt.Fprintf(stderr, "qkdctl: unknown command %q\nRun 'qkdctl --help' for the commands.\n", name)
		return 2
	}
	return c.runCommand(cmd, rest)
}

func (c *cli) usage(w io.Writer) {
	fmt.Fprint(w, usageHead)
	inWrites := false
	for _, cmd := range commands() {
		if cmd.write && !inWrites {
			fmt.Fprint(w, "\nChanges (each prints the committed config_version):\n")
			inWrites = true
		}
		fmt.Fprintf(w, "  %-26s %s\n", cmd.short(), cmd.summary)
	}
	fmt.Fprintf(w, usageTail, defaultEndpoints)
}

// commandHelp prints a command's usage and flags.
func (c *cli) commandHelp(cmd *command, fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "Usage: qkdctl %s\n\n%s\n", cmd.synopsis(), cmd.about)
	if len(cmd.aliases) > 0 {
		fmt.Fprintf(w, "\nAlias: %s\n", strings.Join(cmd.aliases, ", "))
	}
	fmt.Fprintf(w, "\nWith -o json: %s\n", cmd.json)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprint(w, "\nFlags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	fmt.Fprint(w, "\nGlobal flags (before or after the command): --endpoints FILE, --controllers ADDRS,\n"+
		"--ca FILE, --cert FILE, --key FILE, --timeout DURATION, -o table|json.\n"+
		"Run 'qkdctl --help' for them and for the JSON output format.\n")
}

// usageError reports bad usage of a command on stderr: one line naming the
// problem, then the command's usage line.
func (c *cli) usageError(cmd *command, format string, a ...any) error {
	fmt.Fprintf(c.stderr, "qkdctl: %s: %s\nUsage: qkdctl %s\nRun 'qkdctl %s --help' for more.\n",
		cmd.name, fmt.Sprintf(format, a...), cmd.synopsis(), cmd.name)
	return errUsage
}

func (c *cli) runCommand(cmd *command, args []string) int {
	fs := flag.NewFlagSet("qkdctl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	act := cmd.setup(fs)
	// all holds the command's flags and the global ones, so that global
	// flags may follow the command too.
	all := flag.NewFlagSet("qkdctl "+cmd.name, flag.ContinueOnError)
	all.SetOutput(io.Discard)
	fs.VisitAll(func(f *flag.Flag) { all.Var(f.Value, f.Name, f.Usage) })
	defineGlobals(all, &globals{})
	pos, err := parseInterleaved(all, args)
	if errors.Is(err, flag.ErrHelp) {
		c.commandHelp(cmd, fs, c.stdout)
		return 0
	}
	if err != nil {
		c.usageError(cmd, "%v", err)
		return 2
	}
	var setErr error
	all.Visit(func(f *flag.Flag) {
		if c.gfs.Lookup(f.Name) != nil && setErr == nil {
			setErr = c.gfs.Set(f.Name, f.Value.String())
		}
	})
	if setErr != nil {
		c.usageError(cmd, "%v", setErr)
		return 2
	}
	switch {
	case c.g.output != "table" && c.g.output != "json":
		c.usageError(cmd, "-o %q: want table or json", c.g.output)
		return 2
	case c.g.timeout <= 0:
		c.usageError(cmd, "--timeout %v: must be positive", c.g.timeout)
		return 2
	case len(pos) != len(cmd.args):
		if len(cmd.args) == 0 {
			c.usageError(cmd, "unexpected argument %q", pos[0])
		} else {
			c.usageError(cmd, "want %d argument%s (%s), got %d", len(cmd.args), plural(len(cmd.args)), strings.Join(cmd.args, " "), len(pos))
		}
		return 2
	}
	for i, a := range pos {
		if strings.TrimSpace(a) == "" {
			c.usageError(cmd, "%s is empty", cmd.args[i])
			return 2
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	x, err := c.connect(ctx)
	if err == nil {
		defer x.close()
		err = act(x, pos)
	}
	var ce *configError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.As(err, &ce):
		fmt.Fprintf(c.stderr, "qkdctl: %s: %s\n", cmd.name, ce.msg)
		return 2
	default:
		fmt.Fprintf(c.stderr, "qkdctl: %s: %s\n", cmd.name, oneLine(describe(err)))
		return 1
	}
}

// parseInterleaved parses flags wherever they are among the positional
// arguments (flag stops at the first non-flag); "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// oneLine keeps an error message on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
