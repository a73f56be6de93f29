package chaos

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// Print writes the report as tables for people.
func (r *Report) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\n%s run: duration %s, seed %d\n", r.Mode, r.Duration, r.Seed)
	if r.Mode == ModeChaos {
		fmt.Fprintln(tw, "\nfault\tinjected\t")
		total := 0
		for _, k := range FaultKinds {
			if why, ok := r.Skipped[k]; ok {
				fmt.Fprintf(tw, "%s\tskipped\t(%s)\n", k, why)
				continue
			}
			fmt.Fprintf(tw, "%s\t%d\t\n", k, r.Faults[k])
			total += r.Faults[k]
		}
		fmt.Fprintf(tw, "total\t%d\t\n", total)
	}
	fmt.Fprintln(tw, "\nwindow\tkeys\tkeys/s\tenc p50\tenc p90\tenc p99\tenc max\tdec p50\tdec p90\tdec p99\tdec max\tenc err\tdec err\t")
	for _, win := range r.Windows {
		fmt.Fprintf(tw, "%s-%s\t%d\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t\n",
			win.Start.Round(time.Second), (win.Start + win.Length).Round(time.Second), win.Keys, win.KeysPerSec,
			ms(win.Enc.P50), ms(win.Enc.P90), ms(win.Enc.P99), ms(win.Enc.Max),
			ms(win.Dec.P50), ms(win.Dec.P90), ms(win.Dec.P99), ms(win.Dec.Max), win.EncErrors, win.DecErrors)
	}
	if len(r.MemStart) > 0 {
		fmt.Fprintln(tw, "\nprocess\tRSS start\tRSS end\theap start\theap end\tgoroutines start\tgoroutines end\t")
		for i, s := range r.MemStart {
			var e ProcSample
			if i < len(r.MemEnd) {
				e = r.MemEnd[i]
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Name, mibs(s.RSSBytes), mibs(e.RSSBytes), mibs(s.HeapBytes), mibs(e.HeapBytes), num(s.Goroutines), num(e.Goroutines))
		}
		if len(r.Growth) == 0 {
			fmt.Fprintln(tw, "growth\tnone flagged\t")
		}
		for _, g := range r.Growth {
			fmt.Fprintf(tw, "GROWTH\t%s\t\n", g)
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(tw, "\nfailed requests\tcount\t")
		for i, e := range r.Errors {
			if i == 10 {
				fmt.Fprintf(tw, "... %d more kinds\t\t\n", len(r.Errors)-10)
				break
			}
			fmt.Fprintf(tw, "%s\t%d\t\n", e.Error, e.Count)
		}
	}
	fmt.Fprintln(tw, "\ninvariants\t\t")
	fmt.Fprintf(tw, "keys delivered to master SAEs (enc_keys)\t%d\t\n", r.KeysEnc)
	fmt.Fprintf(tw, "keys delivered to slave SAEs (dec_keys)\t%d\t\n", r.KeysDec)
	fmt.Fprintf(tw, "lost with a dec_keys answer cut off (allowed)\t%d\t\n", r.LostInFlight)
	fmt.Fprintf(tw, "violations\t%d\t\n", len(r.Violations))
	tw.Flush()
	for i, v := range r.Violations {
		if i == 20 {
			fmt.Fprintf(w, "  ... and %d more\n", len(r.Violations)-20)
			break
		}
		fmt.Fprintf(w, "  VIOLATION %s\n", v)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "RUN FAILED: %s\n", r.Error)
	}
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

func mibs(b int64) string {
	if b < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", mib(b))
}

func num(v int64) string {
	if v < 0 {
		return "?"
	}
	return fmt.Sprint(v)
}
