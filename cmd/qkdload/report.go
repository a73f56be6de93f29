package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"
)

// latencyJSON is one latency line of the JSON report, in milliseconds.
type latencyJSON struct {
	N   uint64  `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func latency(h *histogram) latencyJSON {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return latencyJSON{N: h.count(), P50: ms(h.quantile(0.50)), P90: ms(h.quantile(0.90)), P99: ms(h.quantile(0.99)), Max: ms(h.quantile(1))}
}

// reportJSON is the --json output: one object, stable field names.
type reportJSON struct {
	OK              bool                   `json:"ok"`
	Interrupted     bool                   `json:"interrupted,omitempty"`
	Protocol        string                 `json:"protocol"`
	Pairs           int                    `json:"pairs"`
	Clients         int                    `json:"clients"`
	Number          int                    `json:"number"`
	SizeBits        int                    `json:"size_bits"`
	WarmupSeconds   float64                `json:"warmup_s"`
	MeasuredSeconds float64                `json:"measured_s"`
	KeysPerSecond   float64                `json:"keys_per_s"`
	RequestsPerSec  float64                `json:"requests_per_s"`
	KeysMatched     int64                  `json:"keys_matched"`
	Cycles          int64                  `json:"cycles"`
	EncRequests     int64                  `json:"enc_keys_ok"`
	DecRequests     int64                  `json:"dec_keys_ok"`
	Latency         map[string]latencyJSON `json:"latency"`
	SingleSeconds   float64                `json:"single_s"`
	NotEnoughKeys   int64                  `json:"not_enough_keys"`
	Errors          map[string]int64       `json:"errors"`
	Mismatches      int64                  `json:"mismatches"`
}

func writeJSON(w io.Writer, r *results) error {
	out := reportJSON{
		OK: r.OK(), Interrupted: r.Interrupted, Protocol: r.Protocol,
		Pairs: r.Pairs, Clients: r.Workers, Number: r.Number, SizeBits: r.Size,
		WarmupSeconds: r.Warmup.Seconds(), MeasuredSeconds: r.Measured.Seconds(),
		KeysPerSecond: r.KeysPerSecond(), RequestsPerSec: r.RequestsPerSecond(),
		KeysMatched: r.Keys, Cycles: r.Cycles, EncRequests: r.EncOK, DecRequests: r.DecOK,
		Latency: map[string]latencyJSON{
			"enc_keys": latency(&r.Enc),
			"dec_keys": latency(&r.Dec),
		},
		SingleSeconds: r.SingleFor.Seconds(),
		NotEnoughKeys: r.NotEnough, Errors: r.Errors, Mismatches: r.Mismatches,
	}
	if r.SingleFor > 0 {
		out.Latency["enc_keys_single"] = latency(&r.EncSingle)
		out.Latency["dec_keys_single"] = latency(&r.DecSingle)
	}
	enc := json.NewEncoder(w)
	return enc.Encode(out)
}

func writeTable(w io.Writer, r *results) error {
	var werr error // the first write error; later writes are skipped
	p := func(format string, a ...any) {
		if werr == nil {
			_, werr = fmt.Fprintf(w, format, a...)
		}
	}
	proto := r.Protocol
	if proto == "" {
		proto = "no answer"
	}
	p("qkdload: %d clients on %d SAE pairs, number=%d size=%d bits, %s\n", r.Workers, r.Pairs, r.Number, r.Size, proto)
	p("measured %.2fs after %s warmup", r.Measured.Seconds(), r.Warmup)
	if r.Interrupted {
		p(" (interrupted)")
	}
	p("\n\n")
	p("end to end %12.0f keys/s      %d keys matched in %d enc_keys/dec_keys cycles\n", r.KeysPerSecond(), r.Keys, r.Cycles)
	p("requests   %12.0f requests/s  %d enc_keys + %d dec_keys answered 200\n\n", r.RequestsPerSecond(), r.EncOK, r.DecOK)

	p("%-32s %8s %8s %8s %8s %8s\n", "latency", "n", "p50", "p90", "p99", "max")
	line := func(name string, h *histogram) {
		p("%-32s %8d %8s %8s %8s %8s\n", name, h.count(),
			fmtDur(h.quantile(0.5)), fmtDur(h.quantile(0.9)), fmtDur(h.quantile(0.99)), fmtDur(h.quantile(1)))
	}
	line(fmt.Sprintf("enc_keys (number=%d)", r.Number), &r.Enc)
	ids := "key_IDs"
	if r.Number == 1 {
		ids = "key_ID"
	}
	line(fmt.Sprintf("dec_keys (%d %s)", r.Number, ids), &r.Dec)
	if r.SingleFor > 0 {
		line("enc_keys (number=1, 1 client)", &r.EncSingle)
		line("dec_keys (1 key_ID, 1 client)", &r.DecSingle)
	}
	p("\nnot enough keys (HTTP 503, retried): %d\n", r.NotEnough)
	if len(r.Errors) == 0 {
		p("errors: none\n")
	} else {
		p("errors:\n")
		for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
			p("  %-24s %d\n", k, r.Errors[k])
		}
	}
	p("mismatches: %d\n", r.Mismatches)
	return werr
}

// fmtDur prints a latency with three significant digits in a unit that suits it.
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}
