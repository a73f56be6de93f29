package main

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear, like HdrHistogram: every power-of-two range
// of nanoseconds is cut into subBuckets equal buckets, so any recorded value
// is known to within 1/subBuckets (under 0.8%) of itself, whatever its size,
// and memory is a fixed nBuckets counters however long the run.
const (
	subBits    = 7
	subBuckets = 1 << subBits // 128
	// Values below 2*subBuckets ns get one bucket each (exact); above, the
	// exponent e = bits.Len64(v)-subBits-1 runs from 1 to 64-subBits-1.
	nBuckets = (64-subBits)*subBuckets + subBuckets
)

// histogram records latencies. The zero value is empty and ready; it is not
// safe for concurrent use (each worker keeps its own and they are merged).
type histogram struct {
	counts   []uint64 // allocated on first record
	n        uint64
	min, max time.Duration
}

func bucketOf(v uint64) int {
	if v < 2*subBuckets {
		return int(v)
	}
	e := bits.Len64(v) - subBits - 1
	return e*subBuckets + int(v>>uint(e))
}

// bucketHigh is the largest value that falls into bucket i.
func bucketHigh(i int) uint64 {
	if i < 2*subBuckets {
		return uint64(i)
	}
	e := i/subBuckets - 1
	top := uint64(i - e*subBuckets)
	return (top+1)<<uint(e) - 1
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	if h.counts == nil {
		h.counts = make([]uint64, nBuckets)
	}
	h.counts[bucketOf(uint64(d))]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.n++
}

func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = make([]uint64, nBuckets)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
}

func (h *histogram) count() uint64 { return h.n }

// quantile returns the latency that q of the samples do not exceed (q in
// [0, 1]): the smallest sample rank ceil(q*n), reported as the top of its
// bucket, which overstates by under 0.8% and never understates; it is
// clamped to the observed [min, max] so p100 is the true max. 0 when empty.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	// The epsilon keeps float error in q*n (0.99*100 is 98.99999...) from
	// moving the rank by one.
	rank := uint64(math.Ceil(q*float64(h.n) - 1e-9))
	if rank < 1 {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := time.Duration(bucketHigh(i))
			return max(h.min, min(v, h.max))
		}
	}
	return h.max
}
