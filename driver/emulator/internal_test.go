package emulator

import (
	"regexp"
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	type step struct {
		at       time.Duration // clock time since the bucket started
		wantN    int
		wantWait time.Duration
	}
	tests := []struct {
		desc  string
		rate  float64
		batch int
		steps []step
	}{
		{
			desc: "one key per second waits for each key", rate: 1, batch: 1024,
			steps: []step{
				{at: 0, wantWait: time.Second},
				{at: 999 * time.Millisecond, wantWait: time.Millisecond},
				{at: time.Second, wantN: 1},
				{at: time.Second, wantWait: time.Second},
				{at: 3 * time.Second, wantN: 2},
			},
		},
		{
			desc: "partial batches come at most every 50ms", rate: 1000, batch: 1024,
			steps: []step{
				{at: 10 * time.Millisecond, wantN: 10},
				{at: 20 * time.Millisecond, wantWait: 40 * time.Millisecond},
				{at: 60 * time.Millisecond, wantN: 50},
			},
		},
		{
			desc: "a full batch goes at once", rate: 100000, batch: 100,
			steps: []step{
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantN: 100},
				{at: 10 * time.Millisecond, wantWait: time.Millisecond},
				{at: 11 * time.Millisecond, wantN: 100},
			},
		},
		{
			// While held up, credit stops at one batch plus 50ms' worth.
			desc: "credit is capped after a stall", rate: 100, batch: 5,
			steps: []step{
				{at: time.Hour, wantN: 5},
				{at: time.Hour, wantN: 5},
				{at: time.Hour, wantWait: 50 * time.Millisecond},
			},
		},
		{
			desc: "fractions add up", rate: 10, batch: 1024,
			steps: []step{
				{at: 250 * time.Millisecond, wantN: 2},
				{at: 300 * time.Millisecond, wantN: 1},
				{at: 300 * time.Millisecond, wantWait: 100 * time.Millisecond},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			t0 := time.Unix(1e9, 0)
			b := newBucket(tt.rate, tt.batch, t0)
			for i, s := range tt.steps {
				n, wait := b.take(t0.Add(s.at))
				if n != s.wantN || wait != s.wantWait {
					t.Fatalf("step %d at %v: take() = %d, %v; want %d, %v", i, s.at, n, wait, s.wantN, s.wantWait)
				}
			}
		})
	}
}

func TestBucketTinyRateWaitsBounded(t *testing.T) {
	b := newBucket(1e-15, 1, time.Unix(0, 0))
	if n, wait := b.take(time.Unix(0, 0)); n != 0 || wait != maxWait {
		t.Fatalf("take() = %d, %v; want 0, %v", n, wait, maxWait)
	}
}

func TestConfigDefaults(t *testing.T) {
	tests := []struct {
		desc string
		in   Config
		want Config
	}{
		{"zero", Config{}, Config{KeyRate: 1, KeyBytes: 32, MaxBatch: 1024}},
		{"negative", Config{KeyRate: -1, KeyBytes: -1, MaxBatch: -1}, Config{KeyRate: 1, KeyBytes: 32, MaxBatch: 1024}},
		{"kept", Config{KeyRate: 5, KeyBytes: 16, MaxBatch: 7}, Config{KeyRate: 5, KeyBytes: 16, MaxBatch: 7}},
		{"large keys shrink batches to 1 MiB", Config{KeyRate: 5, KeyBytes: 65536 - 64, MaxBatch: 1024}, Config{KeyRate: 5, KeyBytes: 65536 - 64, MaxBatch: 16}},
		{"huge keys still one per batch", Config{KeyBytes: 4 << 20}, Config{KeyRate: 1, KeyBytes: 4 << 20, MaxBatch: 1}},
	}
	for _, tt := range tests {
		if got := tt.in.withDefaults(); got != tt.want {
			t.Errorf("%s: %+v.withDefaults() = %+v, want %+v", tt.desc, tt.in, got, tt.want)
		}
	}
}

func TestNewKeys(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	keys := newKeys(100, 32)
	ids := map[string]bool{}
	for _, k := range keys {
		if !re.MatchString(k.ID) {
			t.Errorf("key_ID %q is not a UUIDv4", k.ID)
		}
		if ids[k.ID] {
			t.Errorf("key_ID %q twice", k.ID)
		}
		ids[k.ID] = true
		if len(k.Bytes) != 32 || cap(k.Bytes) != 32 {
			t.Errorf("key has len %d cap %d, want 32 and 32", len(k.Bytes), cap(k.Bytes))
		}
	}
}
