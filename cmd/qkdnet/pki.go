package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/qkdnet/qkdnet/pki"
	"github.com/qkdnet/qkdnet/testbed"
)

const pkiUsage = `Usage: qkdnet pki <command> [flags]

Local PKI: one ECDSA P-256 CA signs node certificates (URI SAN qkd://node/<id>,
TLS server and client) and SAE certificates (URI SAN qkd://sae/<id>, TLS
client). Keys are written 0600 in a 0700 directory. Every command is
idempotent: valid existing files are kept.

Commands:
  init    create the CA (ca.pem, ca-key.pem)
  node    issue a node certificate (node_<id>.pem, node_<id>-key.pem)
  sae     issue an SAE certificate (sae_<id>.pem, sae_<id>-key.pem)
  controller  issue a controller replica certificate (controller_<id>.pem, ...)
  operator    issue an operator certificate for qkdctl (operator_<id>.pem, ...)
  show    print the identity, issuer, names and validity of a certificate file

Run 'qkdnet pki <command> --help' for its flags.
`

// ipList is a repeatable, comma-separable --ip flag.
type ipList []net.IP

func (l *ipList) String() string {
	var s []string
	for _, ip := range *l {
		s = append(s, ip.String())
	}
	return strings.Join(s, ",")
}

func (l *ipList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		ip := net.ParseIP(strings.TrimSpace(part))
		if ip == nil {
			return fmt.Errorf("%q is not an IP address", part)
		}
		*l = append(*l, ip)
	}
	return nil
}

func cmdPKI(args []string, stdout, stderr io.Writer) error {
	err := pkiCommand(args, stdout, stderr)
	// The CLI already says "qkdnet pki:"; drop the library's own prefix.
	if err != nil && strings.HasPrefix(err.Error(), "pki: ") {
		return errors.New(strings.TrimPrefix(err.Error(), "pki: "))
	}
	return err
}

func pkiCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, pkiUsage)
		return errUsage
	}
	defaultDir := testbed.PKIDir(testbed.DefaultStateDir)
	sub, args := args[0], args[1:]
	switch sub {
	case "init":
		fs := newFlags("pki init", "[--dir DIR]", "Creates the CA in DIR, or checks and keeps the one there.", stderr)
		dir := fs.String("dir", defaultDir, "PKI `directory`")
		if err := parse(fs, args); err != nil {
			return err
		}
		ca, err := pki.InitCA(*dir)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "CA: %s (key %s), valid until %s\n", ca.Files().Cert, ca.Files().Key, ca.Cert.NotAfter.Format(time.DateOnly))
		return nil
	case "node", "sae", "controller", "operator":
		about := "Issues the certificate of node ID (URI SAN qkd://node/ID, DNS localhost,\nIPs 127.0.0.1, ::1 and --ip), signed by the CA in DIR."
		synopsis := "--id ID [--ip IP,...] [--dir DIR]"
		switch sub {
		case "sae":
			about = "Issues the certificate of SAE ID (URI SAN qkd://sae/ID, TLS client), signed\nby the CA in DIR."
			synopsis = "--id SAE_ID [--dir DIR]"
		case "controller":
			about = "Issues the certificate of controller replica ID (URI SAN qkd://controller/ID,\nTLS server and client, DNS localhost, IPs 127.0.0.1, ::1 and --ip)."
		case "operator":
			about = "Issues the certificate of operator ID (URI SAN qkd://operator/ID, TLS client):\nit may manage the network through the controller, never fetch keys."
			synopsis = "--id ID [--dir DIR]"
		}
		fs := newFlags("pki "+sub, synopsis, about, stderr)
		dir := fs.String("dir", defaultDir, "PKI `directory` holding the CA")
		id := fs.String("id", "", "node ID or SAE_ID")
		var ips ipList
		if sub == "node" || sub == "controller" {
			fs.Var(&ips, "ip", "extra IP `address`es for the certificate (repeatable, or comma-separated)")
		}
		if err := parse(fs, args); err != nil {
			return err
		}
		if *id == "" {
			fmt.Fprintf(stderr, "qkdnet pki %s: --id is required\n", sub)
			return errUsage
		}
		ca, err := pki.LoadCA(*dir)
		if err != nil {
			return err
		}
		var f pki.Files
		switch sub {
		case "node":
			f, err = ca.IssueNode(*id, ips...)
		case "controller":
			f, err = ca.IssueController(*id, ips...)
		case "operator":
			f, err = ca.IssueOperator(*id)
		default:
			f, err = ca.IssueSAE(*id)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s: %s (key %s)\n", sub, *id, f.Cert, f.Key)
		return nil
	case "show":
		fs := newFlags("pki show", "FILE...", "Prints what certificate files say: identity, issuer, names, validity.", stderr)
		if err := fs.Parse(args); err != nil {
			return errUsage
		}
		if fs.NArg() == 0 {
			fmt.Fprintln(stderr, "qkdnet pki show: name at least one certificate file")
			return errUsage
		}
		for _, p := range fs.Args() {
			c, err := pki.ReadCertificate(p)
			if err != nil {
				return err
			}
			id := "none"
			if i, err := pki.Identify(c); err == nil {
				id = i.URI().String()
			} else if c.IsCA {
				id = "CA"
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			fmt.Fprintf(stdout, "%s: identity %s, subject %q, issuer %q, DNS %v, IP %v, valid %s to %s\n",
				filepath.Clean(p), id, c.Subject.CommonName, c.Issuer.CommonName, c.DNSNames, ips,
				c.NotBefore.Format(time.DateOnly), c.NotAfter.Format(time.DateOnly))
		}
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, pkiUsage)
		return nil
	default:
		fmt.Fprintf(stderr, "qkdnet pki: unknown command %q (want init, node, sae, controller, operator or show)\n", sub)
		return errUsage
	}
}
