// Command sae is the example secure application of the paper's testbed.
//
//	sae send    --endpoints DIR --sae SAE_A --to SAE_B --peer 127.0.0.1:7000 [--message TEXT] [--count N] [--interval 1s]
//	sae receive --endpoints DIR --sae SAE_B --listen 127.0.0.1:7000 [--count N]
//	sae status  --endpoints DIR --sae SAE_A --to SAE_B
//	sae replace --endpoints DIR --sae SAE_A --to SAE_B KEY_ID...
//
// The sender gets a fresh key from its KMM with ETSI 014 enc_keys for each
// message, encrypts the message with AES-256-GCM and sends key_ID, nonce and
// ciphertext over plain TCP; the receiver gets the same key with dec_keys and
// decrypts. DIR is the state dir of `qkdnet up` (it reads DIR/endpoints.json).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/qkdnet/qkdnet/cmd/sae/saeapp"
	"github.com/qkdnet/qkdnet/testbed"
)

const usage = `Usage: sae <command> [flags]

Example SAE: encrypts messages with keys from its QKD KMM (ETSI GS QKD 014).

Commands:
  send      get a key with enc_keys, encrypt a message, send it to a receiver
  receive   accept messages, get their keys with dec_keys, decrypt and print
  status    print the ETSI 014 status of the key supply to a peer SAE
  replace   have keys this SAE got replaced by fresh ones (replace_keys)

Run 'sae <command> --help' for its flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks errors whose message was already printed with the usage.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var err error
	switch args[0] {
	case "send":
		err = send(ctx, args[1:], stdout, stderr, logger)
	case "receive", "recv":
		err = receive(ctx, args[1:], stdout, stderr, logger)
	case "status":
		err = status(ctx, args[1:], stdout, stderr)
	case "replace":
		err = replaceKeys(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "sae: unknown command %q (want send, receive, status or replace)\n", args[0])
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "sae %s: %v\n", args[0], err)
		return 1
	}
}

func newFlags(name, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sae "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: sae %s %s\n\n%s\n\nFlags:\n", name, synopsis, about)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags and checks that the required ones are set.
func parse(fs *flag.FlagSet, args []string, required ...string) error {
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
	for _, r := range required {
		if fs.Lookup(r).Value.String() == "" {
			fmt.Fprintf(fs.Output(), "%s: --%s is required\n", fs.Name(), r)
			return errUsage
		}
	}
	return nil
}

func send(ctx context.Context, args []string, stdout, stderr io.Writer, logger *slog.Logger) error {
	fs := newFlags("send", "--sae SAE_A --to SAE_B --peer HOST:PORT [flags]",
		"Gets a fresh key from this SAE's KMM (enc_keys) for each message, encrypts the\nmessage with AES-256-GCM and sends it with its key_ID to `sae receive`.", stderr)
	endpoints := fs.String("endpoints", testbed.DefaultStateDir, "state `dir` of `qkdnet up` (or its endpoints.json)")
	sae := fs.String("sae", "", "this SAE's `ID` (the master), e.g. SAE_A")
	to := fs.String("to", "", "the receiving SAE's `ID` (the slave), e.g. SAE_B")
	peer := fs.String("peer", "", "the receiver's TCP `address`, e.g. 127.0.0.1:7000")
	message := fs.String("message", "", "message `text`; default \"hello from <sae> #<n>\"")
	count := fs.Int("count", 1, "messages to send; 0 sends until interrupted")
	interval := fs.Duration("interval", time.Second, "time between messages")
	keyWait := fs.Duration("key-wait", 60*time.Second, "how long to wait for key material when the KMM has none yet (503)")
	if err := parse(fs, args, "sae", "to", "peer"); err != nil {
		return err
	}
	if *count < 0 {
		return fmt.Errorf("--count %d: must be 0 or more", *count)
	}
	if *interval <= 0 {
		return fmt.Errorf("--interval %s: must be positive", *interval)
	}
	if _, _, err := net.SplitHostPort(*peer); err != nil {
		return fmt.Errorf("--peer %q: want host:port", *peer)
	}
	client, _, err := saeapp.Connect(*endpoints, *sae)
	if err != nil {
		return err
	}
	defer client.Close()
	s := &saeapp.Sender{Client: client, SAEID: *sae, Peer: *to, Addr: *peer, KeyWait: *keyWait, Logger: logger}
	defer s.Close()

	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for i := 1; *count == 0 || i <= *count; i++ {
		text := *message
		if text == "" {
			text = fmt.Sprintf("hello from %s #%d", *sae, i)
		}
		sent, err := s.Send(ctx, []byte(text))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("message %d: %w", i, err)
		}
		fmt.Fprintf(stdout, "sent #%d to %s: key_ID=%s ciphertext=%dB, receiver decrypted OK\n", i, *to, sent.KeyID, sent.CiphertextLen)
		if *count != 0 && i == *count {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	return nil
}

func receive(ctx context.Context, args []string, stdout, stderr io.Writer, logger *slog.Logger) error {
	fs := newFlags("receive", "--sae SAE_B [--listen HOST:PORT] [flags]",
		"Accepts messages from `sae send`, gets each key from this SAE's KMM (dec_keys),\ndecrypts and prints the message.", stderr)
	endpoints := fs.String("endpoints", testbed.DefaultStateDir, "state `dir` of `qkdnet up` (or its endpoints.json)")
	sae := fs.String("sae", "", "this SAE's `ID` (the slave), e.g. SAE_B")
	listen := fs.String("listen", "127.0.0.1:7000", "TCP `address` to accept senders on")
	count := fs.Int("count", 0, "exit after this many messages; 0 runs until interrupted")
	keyWait := fs.Duration("key-wait", 60*time.Second, "how long to retry dec_keys while the KMM answers 503")
	if err := parse(fs, args, "sae", "listen"); err != nil {
		return err
	}
	if *count < 0 {
		return fmt.Errorf("--count %d: must be 0 or more", *count)
	}
	client, _, err := saeapp.Connect(*endpoints, *sae)
	if err != nil {
		return err
	}
	defer client.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	logger.Info("receiving", "sae", *sae, "listen", ln.Addr().String())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex // senders are served concurrently; keep lines whole and the count exact
	n := 0
	r := &saeapp.Receiver{Client: client, SAEID: *sae, KeyWait: *keyWait, Logger: logger, OnMessage: func(m saeapp.Received) {
		mu.Lock()
		defer mu.Unlock()
		if m.Err != nil {
			fmt.Fprintf(stdout, "rejected message from %q key_ID=%s: %v\n", m.From, m.KeyID, m.Err)
			return
		}
		fmt.Fprintf(stdout, "received from %s: key_ID=%s ciphertext=%dB decrypted: %q\n", m.From, m.KeyID, m.CiphertextLen, m.Plaintext)
		n++
		if *count > 0 && n >= *count {
			cancel()
		}
	}}
	return r.Serve(ctx, ln)
}

func status(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", "--sae SAE_A --to SAE_B",
		"Prints the ETSI 014 status of the key supply from this SAE to a peer SAE, as JSON.", stderr)
	endpoints := fs.String("endpoints", testbed.DefaultStateDir, "state `dir` of `qkdnet up` (or its endpoints.json)")
	sae := fs.String("sae", "", "this SAE's `ID` (the master)")
	to := fs.String("to", "", "the peer SAE's `ID` (the slave)")
	if err := parse(fs, args, "sae", "to"); err != nil {
		return err
	}
	client, _, err := saeapp.Connect(*endpoints, *sae)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := client.Status(ctx, *to)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // keep "SAE_A->SAE_B" readable
	return enc.Encode(st)
}
