// Command qkd-controller runs one replica of the Raft-replicated QKD SDN
// controller: it holds the network as ETSI GS QKD 015 data and pushes each
// node agent its configuration.
//
//	qkd-controller --id c1 --data-dir DIR --ca ca.pem --cert c1.pem --key c1-key.pem --bootstrap
//	qkd-controller --id c2 --data-dir DIR ... --join 127.0.0.1:7443
//
// It stops gracefully on SIGINT or SIGTERM. `qkdnet up` runs the same code
// as `qkdnet controller ...`; this binary is for deployments (a Pod per
// replica).
package main

import (
	"os"

	"github.com/qkdnet/qkdnet/controller/daemon"
)

func main() {
	args := os.Args[1:]
	// Accept the runner's form too ("controller --id ..."), so this binary
	// can stand in for qkdnet.
	if len(args) > 0 && args[0] == "controller" {
		args = args[1:]
	}
	os.Exit(daemon.Main("qkd-controller", args, os.Stderr))
}
