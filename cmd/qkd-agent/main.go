// Command qkd-agent runs one trusted node's agent: its KMM, QKD drivers,
// ETSI 014 over HTTPS and gRPC, KMM peer gRPC and Prometheus metrics, from a
// JSON config (as `qkdnet up` writes to <state-dir>/nodes/<node>/agent.json).
//
//	qkd-agent --config agent.json [--log-level info] [--log-format text|json] [--sae-rate 5000] [--sae-burst 1000]
//
// It stops gracefully on SIGINT or SIGTERM. `qkdnet up` runs the same code as
// `qkdnet agent --config ...`; this binary is for deployments (a Pod per node).
package main

import (
	"os"

	"github.com/qkdnet/qkdnet/testbed"
)

func main() {
	args := os.Args[1:]
	// Accept the runner's form too ("agent --config ..."), so a qkd-agent
	// binary can stand in for qkdnet as testbed.Options.Executable.
	if len(args) > 0 && args[0] == "agent" {
		args = args[1:]
	}
	os.Exit(testbed.AgentMain("qkd-agent", args, os.Stderr))
}
