package main

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	// Every value lands in a bucket whose top is at least the value and at
	// most 1/128 above it, and buckets are ordered like values.
	rng := rand.New(rand.NewPCG(1, 2))
	values := []uint64{0, 1, 255, 256, 257, 511, 512, 1<<20 - 1, 1 << 20, 1<<63 - 1, 1<<64 - 1}
	for range 10000 {
		values = append(values, rng.Uint64()>>rng.IntN(64))
	}
	for _, v := range values {
		b := bucketOf(v)
		if b < 0 || b >= nBuckets {
			t.Fatalf("bucketOf(%d) = %d, outside [0, %d)", v, b, nBuckets)
		}
		hi := bucketHigh(b)
		if hi < v {
			t.Errorf("bucketHigh(bucketOf(%d)) = %d, below the value", v, hi)
		}
		if hi-v > v/subBuckets {
			t.Errorf("bucketHigh(bucketOf(%d)) = %d, more than 1/%d above", v, hi, subBuckets)
		}
		if v > 0 && bucketOf(v-1) > b {
			t.Errorf("bucketOf(%d) = %d > bucketOf(%d) = %d", v-1, bucketOf(v-1), v, b)
		}
	}
}

func TestQuantile(t *testing.T) {
	uniform := func(n int, unit time.Duration) []time.Duration {
		var s []time.Duration
		for i := 1; i <= n; i++ {
			s = append(s, time.Duration(i)*unit)
		}
		return s
	}
	tests := []struct {
		desc    string
		samples []time.Duration
		q       float64
		want    time.Duration
		tol     float64 // relative; 0 means exact
	}{
		{desc: "empty", q: 0.5, want: 0},
		{desc: "one sample, p50", samples: []time.Duration{3 * time.Millisecond}, q: 0.5, want: 3 * time.Millisecond},
		{desc: "one sample, p99", samples: []time.Duration{3 * time.Millisecond}, q: 0.99, want: 3 * time.Millisecond},
		// Below 256 ns every value has its own bucket: exact.
		{desc: "small values p50", samples: uniform(100, 1), q: 0.5, want: 50},
		{desc: "small values p90", samples: uniform(100, 1), q: 0.9, want: 90},
		{desc: "small values p99", samples: uniform(100, 1), q: 0.99, want: 99},
		{desc: "small values max", samples: uniform(100, 1), q: 1, want: 100},
		{desc: "1..10000µs p50", samples: uniform(10000, time.Microsecond), q: 0.5, want: 5000 * time.Microsecond, tol: 1.0 / subBuckets},
		{desc: "1..10000µs p90", samples: uniform(10000, time.Microsecond), q: 0.9, want: 9000 * time.Microsecond, tol: 1.0 / subBuckets},
		{desc: "1..10000µs p99", samples: uniform(10000, time.Microsecond), q: 0.99, want: 9900 * time.Microsecond, tol: 1.0 / subBuckets},
		{desc: "1..10000µs max is exact", samples: uniform(10000, time.Microsecond), q: 1, want: 10 * time.Millisecond},
		{
			// One slow outlier in 1000 shows in p99.9 and max but not p99.
			desc:    "outlier above p99",
			samples: append(append([]time.Duration{}, repeat(time.Millisecond, 999)...), 2*time.Second),
			q:       0.99, want: time.Millisecond, tol: 1.0 / subBuckets,
		},
		{
			desc:    "outlier is the max",
			samples: append(append([]time.Duration{}, repeat(time.Millisecond, 999)...), 2*time.Second),
			q:       1, want: 2 * time.Second,
		},
		{desc: "negative durations count as zero", samples: []time.Duration{-5}, q: 1, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var h histogram
			// Shuffled, so order of recording cannot matter.
			s := append([]time.Duration(nil), tt.samples...)
			rand.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
			for _, d := range s {
				h.record(d)
			}
			got := h.quantile(tt.q)
			if tt.tol == 0 {
				if got != tt.want {
					t.Errorf("quantile(%v) = %v, want %v", tt.q, got, tt.want)
				}
				return
			}
			// Never below the true value, at most tol above it.
			if got < tt.want || float64(got-tt.want) > tt.tol*float64(tt.want) {
				t.Errorf("quantile(%v) = %v, want %v (+%.2f%%)", tt.q, got, tt.want, 100*tt.tol)
			}
		})
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = d
	}
	return s
}

func TestMerge(t *testing.T) {
	var a, b, all histogram
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 5000 {
		d := time.Duration(rng.Int64N(int64(50 * time.Millisecond)))
		all.record(d)
		if i%3 == 0 {
			a.record(d)
		} else {
			b.record(d)
		}
	}
	var merged, empty histogram
	merged.merge(&empty) // merging nothing leaves it empty
	if merged.count() != 0 {
		t.Fatalf("count after merging an empty histogram = %d", merged.count())
	}
	merged.merge(&a)
	merged.merge(&b)
	if merged.count() != all.count() {
		t.Fatalf("count %d, want %d", merged.count(), all.count())
	}
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
		if g, w := merged.quantile(q), all.quantile(q); g != w {
			t.Errorf("quantile(%v) merged %v, recorded together %v", q, g, w)
		}
	}
}
