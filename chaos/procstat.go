package chaos

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProcSample is one process's memory and goroutines at one moment. A field
// the process could not give is -1.
type ProcSample struct {
	Name       string `json:"name"` // "agent A", "controller c1"
	PID        int    `json:"pid"`
	RSSBytes   int64  `json:"rss_bytes"`
	HeapBytes  int64  `json:"heap_bytes"` // go_memstats_heap_inuse_bytes
	Goroutines int64  `json:"goroutines"` // go_goroutines
}

// rssBytes reads VmRSS from /proc/<pid>/status (Linux only; -1 elsewhere
// or when the process is gone).
func rssBytes(pid int) int64 {
	if pid <= 0 {
		return -1
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	return parseVmRSS(f)
}

func parseVmRSS(r io.Reader) int64 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "VmRSS:") {
			continue
		}
		f := strings.Fields(line[len("VmRSS:"):])
		if len(f) != 2 || f[1] != "kB" {
			return -1
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1
		}
		return kb * 1024
	}
	return -1
}

// scrape reads the named gauges from a Prometheus text exposition; a gauge
// not found is -1.
func scrape(ctx context.Context, url string, names ...string) map[string]int64 {
	out := map[string]int64{}
	for _, n := range names {
		out[n] = -1
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return out
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return out
	}
	parseGauges(resp.Body, out)
	return out
}

// parseGauges fills out[name] for each unlabelled sample "name value" in r.
func parseGauges(r io.Reader, out map[string]int64) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if _, want := out[name]; !want {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(val)[0], 64)
		if err != nil {
			continue
		}
		out[name] = int64(v)
	}
}
