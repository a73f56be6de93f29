package kmm

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestAwaitConfig: a peer's message about a stream this node has not been
// pushed yet is held until the push is applied (SetRelays), not refused;
// without a push in ConfigWait, or with ConfigWait zero, the check's own
// error comes back.
func TestAwaitConfig(t *testing.T) {
	k := &KMM{set: Settings{ConfigWait: time.Minute}, relay: relays{wake: make(chan struct{}, 1)}}
	errUnknown := errors.New("unknown stream")
	known := func() error {
		k.relay.mu.Lock()
		defer k.relay.mu.Unlock()
		if _, ok := k.relay.plans["S"]; !ok {
			return errUnknown
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- k.awaitConfig(context.Background(), known) }()
	// An unrelated push first: the message keeps waiting.
	k.SetRelays(nil)
	select {
	case err := <-done:
		t.Fatalf("returned %v before the stream was configured", err)
	default:
	}
	k.SetRelays([]RelayPlan{{Stream: "S"}})
	if err := <-done; err != nil {
		t.Fatalf("after the push: %v", err)
	}

	k.SetRelays(nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := k.awaitConfig(ctx, known); !errors.Is(err, errUnknown) {
		t.Fatalf("with the caller gone: %v", err)
	}
	k.set.ConfigWait = 10 * time.Millisecond
	if err := k.awaitConfig(context.Background(), known); !errors.Is(err, errUnknown) {
		t.Fatalf("with no push in ConfigWait: %v", err)
	}
	k.set.ConfigWait = 0
	if err := k.awaitConfig(context.Background(), known); !errors.Is(err, errUnknown) {
		t.Fatalf("without ConfigWait: %v", err)
	}
}
