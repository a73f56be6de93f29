package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/qkdnet/qkdnet/testbed"
)

// pair is one master SAE and the slave SAE it shares keys with, with the
// KMMs each of them talks to.
type pair struct {
	Master, Slave       testbed.SAEEntry
	MasterKMM, SlaveKMM testbed.KMMEntry
}

func (p pair) String() string { return p.Master.SAEID + "->" + p.Slave.SAEID }

// findPairs pairs the SAEs of a testbed. SAEs are grouped by KMM, in the
// order endpoints.json lists the KMMs, and sorted within a group in natural
// order (SAE_A2 before SAE_A10); the i-th SAE of the first KMM is the master
// of the i-th of the SAEs on all other KMMs. With the bench topology that is
// SAE_A1->SAE_B1 ... SAE_A16->SAE_B16; with the default one, SAE_A->SAE_B.
func findPairs(e testbed.Endpoints) ([]pair, error) {
	groups := make([][]testbed.SAEEntry, len(e.KMMs))
	for _, s := range e.SAEs {
		i := kmmIndex(e, s.KMM)
		if i < 0 {
			return nil, fmt.Errorf("SAE %s is attached to KMM %q, which endpoints.json does not list", s.SAEID, s.KMM)
		}
		groups[i] = append(groups[i], s)
	}
	var masters, slaves []testbed.SAEEntry
	for _, g := range groups {
		if len(g) == 0 {
			continue
		}
		slices.SortFunc(g, func(a, b testbed.SAEEntry) int { return naturalCompare(a.SAEID, b.SAEID) })
		if masters == nil {
			masters = g
		} else {
			slaves = append(slaves, g...)
		}
	}
	n := min(len(masters), len(slaves))
	if n == 0 {
		return nil, fmt.Errorf("no SAE pair: endpoints.json needs SAEs on at least two KMMs (has %d SAEs on %d KMMs)", len(e.SAEs), countNonEmpty(groups))
	}
	pairs := make([]pair, n)
	for i := range pairs {
		p, err := makePair(e, masters[i], slaves[i])
		if err != nil {
			return nil, err
		}
		pairs[i] = p
	}
	return pairs, nil
}

// parsePairs reads an explicit "MASTER:SLAVE,MASTER:SLAVE" list.
func parsePairs(e testbed.Endpoints, spec string) ([]pair, error) {
	var pairs []pair
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		m, s, ok := strings.Cut(item, ":")
		if !ok || m == "" || s == "" {
			return nil, fmt.Errorf("--pairs: %q is not MASTER:SLAVE", item)
		}
		master, ok := e.SAE(m)
		if !ok {
			return nil, fmt.Errorf("--pairs: endpoints.json has no SAE %q", m)
		}
		slave, ok := e.SAE(s)
		if !ok {
			return nil, fmt.Errorf("--pairs: endpoints.json has no SAE %q", s)
		}
		p, err := makePair(e, master, slave)
		if err != nil {
			return nil, err
		}
		pairs = append(pairs, p)
	}
	if len(pairs) == 0 {
		return nil, fmt.Errorf("--pairs: no pair in %q", spec)
	}
	return pairs, nil
}

func makePair(e testbed.Endpoints, master, slave testbed.SAEEntry) (pair, error) {
	p := pair{Master: master, Slave: slave}
	for _, x := range []struct {
		sae testbed.SAEEntry
		dst *testbed.KMMEntry
	}{{master, &p.MasterKMM}, {slave, &p.SlaveKMM}} {
		i := kmmIndex(e, x.sae.KMM)
		if i < 0 {
			return pair{}, fmt.Errorf("SAE %s is attached to KMM %q, which endpoints.json does not list", x.sae.SAEID, x.sae.KMM)
		}
		*x.dst = e.KMMs[i]
	}
	return p, nil
}

// kmmIndex finds an SAE's KMM by node ID (what qkdnet writes) or, failing
// that, by KME_ID.
func kmmIndex(e testbed.Endpoints, ref string) int {
	if i := slices.IndexFunc(e.KMMs, func(k testbed.KMMEntry) bool { return k.Node == ref }); i >= 0 {
		return i
	}
	return slices.IndexFunc(e.KMMs, func(k testbed.KMMEntry) bool { return k.KMEID == ref })
}

func countNonEmpty(groups [][]testbed.SAEEntry) int {
	n := 0
	for _, g := range groups {
		if len(g) > 0 {
			n++
		}
	}
	return n
}

// pairOf is the pair worker i drives: workers share pairs round robin when
// there are more workers than pairs.
func pairOf(worker, pairs int) int { return worker % pairs }

// naturalCompare orders strings with their digit runs compared as numbers,
// so SAE_A2 < SAE_A10.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		ca, cb := a[0], b[0]
		if isDigit(ca) && isDigit(cb) {
			da, ra := digitRun(a)
			db, rb := digitRun(b)
			// Compare the numbers without parsing them (no overflow):
			// strip leading zeros, then longer is larger, then lexical.
			ta, tb := strings.TrimLeft(da, "0"), strings.TrimLeft(db, "0")
			if c := len(ta) - len(tb); c != 0 {
				return sign(c)
			}
			if c := strings.Compare(ta, tb); c != 0 {
				return c
			}
			if c := len(da) - len(db); c != 0 { // "01" after "1", for a total order
				return sign(c)
			}
			a, b = ra, rb
			continue
		}
		if ca != cb {
			return sign(int(ca) - int(cb))
		}
		a, b = a[1:], b[1:]
	}
	return sign(len(a) - len(b))
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func digitRun(s string) (run, rest string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

func sign(x int) int {
	switch {
	case x < 0:
		return -1
	case x > 0:
		return 1
	}
	return 0
}
