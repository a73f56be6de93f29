package kmm

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
)

type noPeers struct{}

func (noPeers) KeySync(node string) (qkdv1.KeySyncServiceClient, error) {
	return nil, fmt.Errorf("no peer %s", node)
}

// TestSettings: New applies the defaults and refuses settings that cannot
// work; a KMM it accepts runs.
//
// The rows with a non-positive key lifetime (or one under 4 ns) fail today:
// Validate accepts them, and Run panics in expireLoop (time.NewTicker with
// min(KeyLifetime/4, 10s) <= 0: "non-positive interval for NewTicker"),
// which in the agent takes the whole node down.
func TestSettings(t *testing.T) {
	tests := []struct {
		desc    string
		input   Settings
		wantErr bool
		check   func(t *testing.T, s Settings)
	}{
		{desc: "defaults", input: Settings{Node: "A", KMEID: "KME_A"}, check: func(t *testing.T, s Settings) {
			want := Settings{Node: "A", KMEID: "KME_A", KeySize: 256, MinKeySize: 8, MaxKeySize: 8192, MaxKeysPerRequest: 1024,
				PoolMax: 1_000_000, KeyLifetime: time.Hour, AllocPeriod: 500 * time.Millisecond,
				DefaultQoS: keystore.QoS{KeyRate: 1, MaxBuffer: 4096}}
			if s != want {
				t.Errorf("settings = %+v, want %+v", s, want)
			}
		}},
		{desc: "no node", input: Settings{KMEID: "KME_A"}, wantErr: true},
		{desc: "no KME ID", input: Settings{Node: "A"}, wantErr: true},
		{desc: "key size not a multiple of 8", input: Settings{Node: "A", KMEID: "K", KeySize: 100}, wantErr: true},
		{desc: "min size not a multiple of 8", input: Settings{Node: "A", KMEID: "K", MinKeySize: 12}, wantErr: true},
		{desc: "key size below min", input: Settings{Node: "A", KMEID: "K", KeySize: 64, MinKeySize: 128}, wantErr: true},
		{desc: "key size above max", input: Settings{Node: "A", KMEID: "K", KeySize: 512, MaxKeySize: 256}, wantErr: true},
		{desc: "max size above what a key_ID holds", input: Settings{Node: "A", KMEID: "K", MaxKeySize: keystore.MaxKeyBits + 8}, wantErr: true},
		{desc: "max size what a key_ID holds", input: Settings{Node: "A", KMEID: "K", MaxKeySize: keystore.MaxKeyBits}},
		{desc: "negative max keys per request", input: Settings{Node: "A", KMEID: "K", MaxKeysPerRequest: -1}, wantErr: true},
		{desc: "negative pool max", input: Settings{Node: "A", KMEID: "K", PoolMax: -1}, wantErr: true},
		{desc: "negative key lifetime", input: Settings{Node: "A", KMEID: "K", KeyLifetime: -time.Minute}, wantErr: true},
		{desc: "key lifetime of 1ns", input: Settings{Node: "A", KMEID: "K", KeyLifetime: time.Nanosecond}, wantErr: true},
		{desc: "short key lifetime", input: Settings{Node: "A", KMEID: "K", KeyLifetime: time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			store, err := keystore.Open(t.TempDir(), keystore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			k, err := New(tc.input, store, newTopo("A", "B", true), noPeers{}, nil, slog.New(slog.DiscardHandler))
			if (err != nil) != tc.wantErr {
				t.Errorf("New err = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if tc.check != nil {
				tc.check(t, k.Settings())
			}
			// A KMM New accepted must run: Run returns once ctx is done.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("Run panicked with settings New accepted: %v", r)
					}
				}()
				k.Run(ctx)
			}()
		})
	}
}
