// Command qkdctl is the operator's command line for the QKD SDN controller:
// it reads the cluster and the network from any replica and sends changes
// to the Raft leader, over mutual TLS with an operator certificate
// (qkd://operator/<name>).
//
//	qkdctl [global flags] <command> [flags] [arguments]
//
// Run `qkdctl --help` for the commands, the global flags and the JSON output
// format, and `qkdctl <command> --help` for one command.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
