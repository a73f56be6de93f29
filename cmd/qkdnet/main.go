// Command qkdnet runs a local QKD network on loopback and manages its PKI.
//
//	qkdnet up    [--state-dir .qkdnet] [--topology fig4|FILE] [--key-rate N] [--base-port P] [--verbose]
//	qkdnet demo  [the flags of up] [--from SAE_A --to SAE_B] [--interval 1s] [--count N]
//	qkdnet pki   init|node|sae|show ...
//
// `up` starts one agent process per node of a topology (default: the paper's
// Fig. 4, nodes A and B with one emulated FSO-QKD link and SAE_A, SAE_B),
// waits until each serves over mutual TLS, writes <state-dir>/endpoints.json
// and runs until SIGINT or SIGTERM. `demo` does the same and then has SAE_A
// send SAE_B one AES-256-GCM message per second, each under a fresh 32-byte
// QKD key. The hidden `qkdnet agent --config FILE` is what `up` runs for each
// node (the same program, re-executed).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `Usage: qkdnet <command> [flags]

Runs a local QKD network (ETSI GS QKD 014 key delivery, mutual TLS) on loopback.

Commands:
  up      start one agent process per node of a topology; stop with Ctrl-C
  demo    start the network and have SAE_A send SAE_B an encrypted message per second
  pki     make a local CA, node certificates and SAE certificates

Run 'qkdnet <command> --help' for its flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks errors already reported together with usage help; they
// exit with status 2.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "up":
		err = cmdUp(args[1:], stdout, stderr, false)
	case "demo":
		err = cmdUp(args[1:], stdout, stderr, true)
	case "pki":
		err = cmdPKI(args[1:], stdout, stderr)
	case "agent":
		// The child mode started by `up`; not listed in the usage.
		return agentMain(args[1:], stderr)
	case "controller":
		// One controller replica, as started by `up`; not listed in the usage.
		return controllerMain(args[1:], stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "qkdnet: unknown command %q (want up, demo or pki)\n", args[0])
		return 2
	}
	var code exitCode
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.As(err, &code):
		return int(code)
	default:
		fmt.Fprintf(stderr, "qkdnet %s: %v\n", args[0], err)
		return 1
	}
}

// exitCode is an error that was reported already and only sets the status.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func newFlags(name, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("qkdnet "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: qkdnet %s %s\n\n%s\n\nFlags:\n", name, synopsis, about)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags; a parse error was printed by the flag package, so it
// becomes errUsage. Positional arguments are refused.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}
