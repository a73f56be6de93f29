package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestBucketPerSAE(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := New(10, 5).WithClock(c.now)
	// A full bucket: the burst passes, the next request does not.
	for i := range 5 {
		if ok, _ := l.Allow("SAE_A"); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := l.Allow("SAE_A")
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("past the burst: allowed %v, retry in %v; want refused, 100ms", ok, wait)
	}
	// Another SAE has its own bucket.
	if ok, _ := l.Allow("SAE_B"); !ok {
		t.Fatal("SAE_B refused because of SAE_A")
	}
	// Tokens come back at the rate, never above the burst.
	c.t = c.t.Add(250 * time.Millisecond)
	for i := range 2 {
		if ok, _ := l.Allow("SAE_A"); !ok {
			t.Fatalf("token %d after 250ms refused", i)
		}
	}
	if ok, _ := l.Allow("SAE_A"); ok {
		t.Fatal("a third token after 250ms at 10/s")
	}
	c.t = c.t.Add(time.Hour)
	n := 0
	for {
		if ok, _ := l.Allow("SAE_A"); !ok {
			break
		}
		n++
	}
	if n != 5 {
		t.Fatalf("after an hour idle, %d requests pass; want the burst, 5", n)
	}
}

func TestNoLimit(t *testing.T) {
	var l *Limiter = New(0, 10)
	if l != nil {
		t.Fatal("rate 0 gave a limiter")
	}
	for range 100000 {
		if ok, _ := l.Allow("SAE_A"); !ok {
			t.Fatal("a nil limiter refused")
		}
	}
}

// TestIdleBucketsDropped: memory stays bounded with many SAEs, and a
// dropped (full) bucket comes back full, so dropping it changes nothing.
func TestIdleBucketsDropped(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := New(1, 1).WithClock(c.now)
	for i := range 3 * maxIdle {
		l.Allow(fmt.Sprint("SAE_", i))
		c.t = c.t.Add(time.Second)
	}
	if n := len(l.buckets); n > maxIdle {
		t.Fatalf("%d buckets kept, want at most %d", n, maxIdle)
	}
	// The last SAE's bucket is empty and must still be: not swept.
	last := fmt.Sprint("SAE_", 3*maxIdle-1)
	c.t = c.t.Add(-time.Second)
	if ok, _ := l.Allow(last); ok {
		t.Fatal("an empty bucket was refilled by the sweep")
	}
}

// BenchmarkAllow: the cost the limit adds to each SAE request, with 32 SAEs
// (the benchmark's 16 pairs) from parallel goroutines.
func BenchmarkAllow(b *testing.B) {
	l := New(1e12, 1e9)
	ids := make([]string, 32)
	for i := range ids {
		ids[i] = fmt.Sprint("SAE_", i)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.Allow(ids[i%len(ids)])
			i++
		}
	})
}
