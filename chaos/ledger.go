// Package chaos runs a whole local QKD network (testbed) under ETSI 014 load
// while it injects faults (SIGKILL and restart of agents and controller
// replicas, SIGSTOP/SIGCONT, a full key store disk, cut inter-KMM
// connections), then checks the invariants of DESIGN.md over every key
// delivered. The same runner, without faults, is the soak test: memory and
// goroutines at start and end, keys/s and latency per minute.
package chaos

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"sync"

	"github.com/qkdnet/qkdnet/etsi014client"
)

// Pair is a master SAE getting keys with enc_keys and its slave SAE getting
// the same keys with dec_keys.
type Pair struct {
	Master, Slave string
	// Relayed: the two SAEs' nodes share no link.
	Relayed bool
}

func (p Pair) String() string { return p.Master + "->" + p.Slave }

// digest stands for a key's bits in the ledger: the ledger must compare the
// two ends without keeping key material in memory longer than a request.
type digest [sha256.Size]byte

// entry is what the ledger knows about one key_ID.
type entry struct {
	pair     Pair
	enc, dec digest
	gotEnc   bool
	gotDec   bool
	// inflight: a dec_keys for this key got no answer (the connection
	// broke, e.g. the slave's agent was killed mid-request). The KME may
	// have delivered and erased the key with its answer lost; delivery is
	// at most once, so the key may then be gone for good.
	inflight bool
}

// Violation is one broken invariant, with the key_ID it concerns (never its
// bits).
type Violation struct {
	Invariant string `json:"invariant"`
	KeyID     string `json:"key_id"`
	Pair      string `json:"pair"`
	Detail    string `json:"detail"`
}

func (v Violation) String() string {
	return fmt.Sprintf("%s: key %s (%s): %s", v.Invariant, v.KeyID, v.Pair, v.Detail)
}

// Invariant names, as in DESIGN.md.
const (
	InvOnce     = "delivered at most once"       // invariant 1
	InvOnlyThem = "delivered only to its SAEs"   // invariant 1
	InvAgree    = "both ends agree on the bits"  // invariant 2
	InvNotLost  = "nothing acknowledged is lost" // invariant 4
	InvAnswer   = "answer names the keys asked"  // dec_keys must return what was asked
)

// Ledger records every key delivered to every SAE during a run.
type Ledger struct {
	mu         sync.Mutex
	keys       map[string]*entry
	violations []Violation
	encKeys    int // keys delivered to master SAEs
	decKeys    int // keys delivered to slave SAEs
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{keys: map[string]*entry{}} }

// Enc records the keys enc_keys returned to p.Master. A key_ID seen before
// (for any pair) is a violation: the KME served it twice.
func (l *Ledger) Enc(p Pair, kc *etsi014client.KeyContainer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range kc.Keys {
		d := sha256.Sum256(k.Bytes)
		e, ok := l.keys[k.KeyID]
		if ok && e.gotEnc {
			l.violate(InvOnce, k.KeyID, p, "enc_keys returned it again to "+p.Master)
			continue
		}
		if ok && e.gotDec {
			// Its dec_keys came first: the slave had it before the master
			// was ever told. Only possible if it was served to a wrong pair.
			l.violate(InvOnlyThem, k.KeyID, p, "dec_keys served it before enc_keys did")
			continue
		}
		l.keys[k.KeyID] = &entry{pair: p, enc: d, gotEnc: true}
		l.encKeys++
	}
}

// Dec records what dec_keys returned to p.Slave for the key_IDs asked.
func (l *Ledger) Dec(p Pair, asked []string, kc *etsi014client.KeyContainer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	want := map[string]bool{}
	for _, id := range asked {
		want[id] = true
	}
	if len(kc.Keys) != len(asked) {
		l.violate(InvAnswer, firstOr(asked), p, fmt.Sprintf("asked %d keys, got %d", len(asked), len(kc.Keys)))
	}
	for _, k := range kc.Keys {
		if !want[k.KeyID] {
			l.violate(InvAnswer, k.KeyID, p, "dec_keys returned a key_ID that was not asked for")
			continue
		}
		delete(want, k.KeyID)
		e, ok := l.keys[k.KeyID]
		switch {
		case !ok:
			l.violate(InvOnlyThem, k.KeyID, p, "dec_keys served a key enc_keys never returned")
			continue
		case e.pair != p:
			l.violate(InvOnlyThem, k.KeyID, p, "key of "+e.pair.String()+" served to "+p.Slave)
			continue
		case e.gotDec:
			l.violate(InvOnce, k.KeyID, p, "dec_keys returned it again to "+p.Slave)
			continue
		}
		e.dec, e.gotDec = sha256.Sum256(k.Bytes), true
		l.decKeys++
		if e.dec != e.enc {
			l.violate(InvAgree, k.KeyID, p, "the bits at "+p.Slave+" differ from those at "+p.Master)
		}
	}
}

// Inflight marks keys whose dec_keys got no answer.
func (l *Ledger) Inflight(ids []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		if e, ok := l.keys[id]; ok {
			e.inflight = true
		}
	}
}

// Intruder records that sae, which is neither end of the key's pair, got
// keys with dec_keys.
func (l *Ledger) Intruder(sae string, p Pair, kc *etsi014client.KeyContainer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range kc.Keys {
		l.violate(InvOnlyThem, k.KeyID, p, "served to "+sae+", which is not an SAE of this key")
	}
}

// Undelivered lists, by pair, the keys served to the master SAE and not
// (yet) to the slave.
func (l *Ledger) Undelivered() map[Pair][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[Pair][]string{}
	for id, e := range l.keys {
		if e.gotEnc && !e.gotDec {
			out[e.pair] = append(out[e.pair], id)
		}
	}
	for _, ids := range out {
		sort.Strings(ids)
	}
	return out
}

// Gone settles a key the slave's KME no longer has (why: its answer). It is
// a violation unless an earlier dec_keys of it got no answer.
func (l *Ledger) Gone(id, why string) (lostInFlight bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.keys[id]
	if !ok || e.gotDec {
		return false
	}
	if e.inflight {
		return true
	}
	l.violate(InvNotLost, id, e.pair, "served to "+e.pair.Master+" but not obtainable by "+e.pair.Slave+": "+why)
	return false
}

func (l *Ledger) violate(inv, id string, p Pair, detail string) {
	l.violations = append(l.violations, Violation{Invariant: inv, KeyID: id, Pair: p.String(), Detail: detail})
}

// Counts returns the keys delivered to master and to slave SAEs.
func (l *Ledger) Counts() (enc, dec int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.encKeys, l.decKeys
}

// Violations returns every violation recorded so far.
func (l *Ledger) Violations() []Violation {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Violation(nil), l.violations...)
}

func firstOr(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	return ids[0]
}
