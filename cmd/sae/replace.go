package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/qkdnet/qkdnet/cmd/sae/saeapp"
	"github.com/qkdnet/qkdnet/etsi014client"
	"github.com/qkdnet/qkdnet/testbed"
)

func replaceKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("replace", "--sae SAE_A --to SAE_B KEY_ID...",
		"Has the KMM replace keys this (master) SAE got with enc_keys for the peer SAE\nand no longer trusts (replace_keys, a qkdnet extension of ETSI 014): each is\ndestroyed at the peer's KMM, which then refuses it to the peer SAE, and a fresh\nkey of the same size is issued in its place. Prints one line per key:\nold key_ID, new key_ID. Send the new key_IDs to the peer SAE as usual.", stderr)
	endpoints := fs.String("endpoints", testbed.DefaultStateDir, "state `dir` of `qkdnet up` (or its endpoints.json)")
	sae := fs.String("sae", "", "this SAE's `ID` (the master), e.g. SAE_A")
	to := fs.String("to", "", "the peer SAE's `ID` (the slave), e.g. SAE_B")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to retry while the KMM answers 503")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	for _, r := range []string{"sae", "to"} {
		if fs.Lookup(r).Value.String() == "" {
			fmt.Fprintf(stderr, "%s: --%s is required\n", fs.Name(), r)
			return errUsage
		}
	}
	ids := fs.Args()
	if len(ids) == 0 {
		fmt.Fprintf(stderr, "%s: name at least one key_ID\n", fs.Name())
		return errUsage
	}
	client, _, err := saeapp.Connect(*endpoints, *sae)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var kc *etsi014client.KeyContainer
	for wait := 200 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		kc, err = client.ReplaceKeys(ctx, *to, ids...)
		var e *etsi014client.Error
		if err == nil || !errors.As(err, &e) || !e.Temporary() {
			break
		}
		select {
		case <-ctx.Done():
			return oneLine(err)
		case <-time.After(wait):
		}
	}
	if err != nil {
		return oneLine(err)
	}
	defer kc.Zero()
	for i, k := range kc.Keys {
		old := ids[i]
		if r, ok := k.KeyIDExtension["replaces"].(string); ok {
			old = r
		}
		fmt.Fprintf(stdout, "%s replaced by %s (%d bits)\n", old, k.KeyID, 8*len(k.Bytes))
	}
	return nil
}

// oneLine is the KME's answer without the request's URL.
func oneLine(err error) error {
	var e *etsi014client.Error
	if errors.As(err, &e) {
		return fmt.Errorf("HTTP %d: %s", e.StatusCode, strings.TrimPrefix(e.Message, "bad request: "))
	}
	return err
}
