package chaos

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/etsi014client"
	"github.com/qkdnet/qkdnet/testbed"
)

func kc(kv ...string) *etsi014client.KeyContainer {
	c := &etsi014client.KeyContainer{}
	for i := 0; i < len(kv); i += 2 {
		c.Keys = append(c.Keys, etsi014client.Key{KeyID: kv[i], Bytes: []byte(kv[i+1])})
	}
	return c
}

func invariants(vs []Violation) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.Invariant+" "+v.KeyID)
	}
	return out
}

func TestLedgerClean(t *testing.T) {
	l := NewLedger()
	ac := Pair{Master: "SAE_A", Slave: "SAE_C", Relayed: true}
	l.Enc(ac, kc("k1", "aaaa", "k2", "bbbb"))
	l.Dec(ac, []string{"k1", "k2"}, kc("k1", "aaaa", "k2", "bbbb"))
	if v := l.Violations(); len(v) != 0 {
		t.Fatalf("violations on a clean run: %v", v)
	}
	if enc, dec := l.Counts(); enc != 2 || dec != 2 {
		t.Fatalf("counts %d %d, want 2 2", enc, dec)
	}
	if u := l.Undelivered(); len(u) != 0 {
		t.Fatalf("undelivered %v", u)
	}
}

func TestLedgerViolations(t *testing.T) {
	ab := Pair{Master: "SAE_A", Slave: "SAE_B"}
	ac := Pair{Master: "SAE_A", Slave: "SAE_C", Relayed: true}
	for _, tc := range []struct {
		name string
		do   func(l *Ledger)
		want []string
	}{
		{"served twice to the master", func(l *Ledger) {
			l.Enc(ab, kc("k1", "aaaa"))
			l.Enc(ac, kc("k1", "aaaa"))
		}, []string{InvOnce + " k1"}},
		{"served twice to the slave", func(l *Ledger) {
			l.Enc(ab, kc("k1", "aaaa"))
			l.Dec(ab, []string{"k1"}, kc("k1", "aaaa"))
			l.Dec(ab, []string{"k1"}, kc("k1", "aaaa"))
		}, []string{InvOnce + " k1"}},
		{"the ends disagree", func(l *Ledger) {
			l.Enc(ab, kc("k1", "aaaa"))
			l.Dec(ab, []string{"k1"}, kc("k1", "aaab"))
		}, []string{InvAgree + " k1"}},
		{"served to another pair's slave", func(l *Ledger) {
			l.Enc(ab, kc("k1", "aaaa"))
			l.Dec(ac, []string{"k1"}, kc("k1", "aaaa"))
		}, []string{InvOnlyThem + " k1"}},
		{"an intruder got it", func(l *Ledger) {
			l.Enc(ac, kc("k1", "aaaa"))
			l.Intruder("SAE_B", ac, kc("k1", "aaaa"))
		}, []string{InvOnlyThem + " k1"}},
		{"answer lacks a key asked", func(l *Ledger) {
			l.Enc(ab, kc("k1", "aaaa", "k2", "bbbb"))
			l.Dec(ab, []string{"k1", "k2"}, kc("k1", "aaaa"))
		}, []string{InvAnswer + " k1"}},
		{"lost although answered", func(l *Ledger) {
			l.Enc(ab, kc("k1", "aaaa"))
			if l.Gone("k1", "HTTP 400") {
				t.Error("Gone reported an in-flight loss for a key with no dec_keys in flight")
			}
		}, []string{InvNotLost + " k1"}},
		{"lost in flight is allowed", func(l *Ledger) {
			l.Enc(ab, kc("k1", "aaaa"))
			l.Inflight([]string{"k1"})
			if !l.Gone("k1", "HTTP 400") {
				t.Error("Gone did not report the in-flight loss")
			}
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := NewLedger()
			tc.do(l)
			if got := invariants(l.Violations()); !slices.Equal(got, tc.want) {
				t.Fatalf("violations %q, want %q", got, tc.want)
			}
		})
	}
}

// echo serves one line-echo server and returns its address.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func TestProxyCutRestore(t *testing.T) {
	p, err := NewProxy(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "hello"); err != nil || got != "hello\n" {
		t.Fatalf("through the proxy: %q %v", got, err)
	}
	if n := p.Cut(); n != 2 {
		t.Errorf("Cut broke %d connections, want 2 (client side and target side)", n)
	}
	if _, err := roundTrip(c, "again"); err == nil {
		t.Fatal("a cut connection still carries data")
	}
	// New connections are accepted by the kernel but reset at once.
	if c2, err := net.Dial("tcp", p.Addr()); err == nil {
		if _, err := roundTrip(c2, "x"); err == nil {
			t.Fatal("a connection made while cut carries data")
		}
		c2.Close()
	}
	p.Restore()
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if got, err := roundTrip(c3, "back"); err != nil || got != "back\n" {
		t.Fatalf("after Restore: %q %v", got, err)
	}
}

func TestParseVmRSS(t *testing.T) {
	in := "Name:\tqkdnet\nVmPeak:\t  999 kB\nVmRSS:\t   20480 kB\nThreads: 9\n"
	if got := parseVmRSS(strings.NewReader(in)); got != 20480*1024 {
		t.Fatalf("got %d", got)
	}
	if got := parseVmRSS(strings.NewReader("Name: x\n")); got != -1 {
		t.Fatalf("no VmRSS: got %d, want -1", got)
	}
}

func TestParseGauges(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
go_memstats_heap_inuse_bytes 1.2345e+07
go_gc_duration_seconds{quantile="0"} 1e-05
`
	out := map[string]int64{"go_goroutines": -1, "go_memstats_heap_inuse_bytes": -1, "missing": -1}
	parseGauges(strings.NewReader(in), out)
	if out["go_goroutines"] != 42 || out["go_memstats_heap_inuse_bytes"] != 12345000 || out["missing"] != -1 {
		t.Fatalf("got %v", out)
	}
}

func TestPairsRooftops(t *testing.T) {
	top := testbed.DefaultTopology()
	var got []string
	for _, p := range pairs(top) {
		got = append(got, fmt.Sprintf("%s relayed=%v", p, p.Relayed))
	}
	want := []string{"SAE_A->SAE_B relayed=false", "SAE_B->SAE_C relayed=false", "SAE_A->SAE_C relayed=true", "SAE_C->SAE_A relayed=true"}
	if !slices.Equal(got, want) {
		t.Fatalf("pairs %v, want %v", got, want)
	}
	if r := relayNode(top); r != "B" {
		t.Fatalf("relay node %s, want B", r)
	}
	if s := otherSAE(top, Pair{Master: "SAE_A", Slave: "SAE_C"}); s != "SAE_B" {
		t.Fatalf("intruder %s, want SAE_B", s)
	}
}

func TestGrowth(t *testing.T) {
	start := []ProcSample{{Name: "agent A", PID: 1, RSSBytes: 40 << 20, HeapBytes: 10 << 20, Goroutines: 50}, {Name: "agent B", PID: 2, Goroutines: 50}}
	steady := []ProcSample{{Name: "agent A", PID: 1, RSSBytes: 48 << 20, HeapBytes: 12 << 20, Goroutines: 60}, {Name: "agent B", PID: 2, Goroutines: 55}}
	if g := growth(start, steady); len(g) != 0 {
		t.Fatalf("steady state flagged: %v", g)
	}
	leak := []ProcSample{{Name: "agent A", PID: 1, RSSBytes: 200 << 20, HeapBytes: 12 << 20, Goroutines: 500}, {Name: "agent B", PID: 3, Goroutines: 50}}
	g := growth(start, leak)
	if len(g) != 3 || !strings.Contains(g[0], "goroutines 50 -> 500") || !strings.Contains(g[1], "RSS") || !strings.Contains(g[2], "restarted") {
		t.Fatalf("growth %q", g)
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	p := percentiles(d)
	if p.N != 100 || p.P50 != 51*time.Millisecond || p.P99 != 100*time.Millisecond || p.Max != 100*time.Millisecond {
		t.Fatalf("%+v", p)
	}
	if (percentiles(nil) != Percentiles{}) {
		t.Fatal("empty")
	}
}
