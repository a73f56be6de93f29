package kmm

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
)

// The Key Relay Element (paper Fig. 2; ITU-T Y.3803). On the path
// N0 -L0- N1 -L1- ... -L(n-1)- Nn of a key stream S from a master SAE at N0
// to a slave SAE at Nn:
//
//   - every node holds S, the keys X the two SAEs share, at the same
//     sequence numbers: N0 and N1 get them by the usual allocation on L0;
//   - hop i >= 1 has a stream S#i on Li between Ni and N(i+1), allocated
//     as usual, whose keys are one-time pads;
//   - Ni (1 <= i < n) sends N(i+1), for each X_k, Z_k = X_k xor S#i[k]; once
//     N(i+1) holds X_k it erases X_k and the pad;
//   - N(i+1) recovers X_k = Z_k xor S#i[k], checks it, stores it in S and
//     erases the pad, in one transaction.
//
// So the SAE at Nn gets X_k under the same key_ID as the SAE at N0, every
// pad is used once and erased at both ends, and a relay node keeps nothing
// once the next node holds the key.

// RelayHop is one hop of a multi-hop stream at this node.
type RelayHop struct {
	// Stream is the hop's stream: S on the path's first hop, S#i on hop i.
	Stream string
	Link   string
	Peer   string
}

// RelayPlan is this node's part in one path generation of a key stream.
type RelayPlan struct {
	// Stream is the end-to-end stream S of this path generation
	// (GenStreamID of Base and Gen).
	Stream string
	// Base is the key stream's ID (StreamID of its SAEs, the stream of
	// generation 0); empty means Stream. Gen is the path generation.
	// Draining marks an earlier path of a rerouted key stream: its keys
	// are still relayed to the slave's node, but the master's node serves
	// only from the current generation.
	Base     string
	Gen      uint32
	Draining bool
	// In is the hop towards the master SAE's node, Out the hop towards the
	// slave SAE's; nil at the end nodes.
	In, Out *RelayHop
}

// HopStreamID names the stream of hop i (>= 1) of stream s.
func HopStreamID(s string, hop int) string { return fmt.Sprintf("%s#%d", s, hop) }

// Path generations. When the controller reroutes a key stream, the new
// path's keys form a stream of their own, GenStreamID(S, g), whose sequence
// numbers start at GenFirstSeq(g). A served key_ID holds the sequence
// number of its first part (48 bits), so the slave's node finds the
// generation of any key_ID from the ID alone; the path a key took never
// has to be asked.
const genShift = 40

// GenStreamID names generation gen of key stream s (s itself for 0).
func GenStreamID(s string, gen uint32) string {
	if gen == 0 {
		return s
	}
	return fmt.Sprintf("%s@%d", s, gen)
}

// BaseStreamID is the key stream a generation's end-to-end stream belongs
// to (s itself for generation 0 and for any other stream). SAE IDs hold no
// '@', so the suffix is unambiguous.
func BaseStreamID(s string) string {
	i := strings.LastIndexByte(s, '@')
	if i < 0 || i == len(s)-1 {
		return s
	}
	for _, c := range s[i+1:] {
		if c < '0' || c > '9' {
			return s
		}
	}
	return s[:i]
}

// GenFirstSeq is the first sequence number of generation gen.
func GenFirstSeq(gen uint32) uint64 { return uint64(gen) << genShift }

func genOfSeq(seq uint64) uint32 { return uint32(seq >> genShift) }

// currentGen returns the path generation the key stream base is served
// from at this node, and its stream: the plan that is not draining (none:
// generation 0, base itself).
func (k *KMM) currentGen(base string) (uint32, string) {
	k.relay.mu.Lock()
	defer k.relay.mu.Unlock()
	if p, ok := k.relay.current[base]; ok {
		return p.Gen, p.Stream
	}
	return 0, base
}

// planned fills in what this node's plans say of a stream a peer KMM named:
// where its sequence numbers start and whether it drains.
func (k *KMM) planned(st keystore.Stream) keystore.Stream {
	if p, _, ok := k.hopNamed(st.ID); ok {
		st.FirstSeq, st.Draining = GenFirstSeq(p.Gen), p.Draining
	}
	return st
}

// relays holds the node's plans.
type relays struct {
	mu    sync.Mutex
	plans map[string]RelayPlan // by end-to-end stream
	// The same plans by key stream (the current generation's only) and by
	// hop stream, for the lookups of every SAE request and peer message.
	current map[string]RelayPlan
	byHop   map[string]RelayPlan
	wake    chan struct{}
	// applied is closed (and replaced) by every SetRelays: a configuration
	// from the controller has been applied.
	applied chan struct{}
	// filling marks the hop streams with a pad allocation under way.
	filling map[string]bool
}

// SetRelays replaces the node's multi-hop plans (from the configuration the
// controller pushed). The agent calls it last when it applies a pushed
// configuration, so it also tells messages waiting for one (awaitConfig).
func (k *KMM) SetRelays(plans []RelayPlan) {
	m, current, byHop := map[string]RelayPlan{}, map[string]RelayPlan{}, map[string]RelayPlan{}
	for _, p := range plans {
		if p.Base == "" {
			p.Base = p.Stream
		}
		m[p.Stream] = p
		if !p.Draining {
			current[p.Base] = p
		}
		for _, h := range []*RelayHop{p.In, p.Out} {
			if h != nil {
				byHop[h.Stream] = p
			}
		}
	}
	k.relay.mu.Lock()
	k.relay.plans, k.relay.current, k.relay.byHop = m, current, byHop
	if k.relay.applied != nil {
		close(k.relay.applied)
	}
	k.relay.applied = make(chan struct{})
	k.relay.mu.Unlock()
	k.wakeRelay()
}

// configApplied is closed when the next configuration has been applied.
func (k *KMM) configApplied() <-chan struct{} {
	k.relay.mu.Lock()
	defer k.relay.mu.Unlock()
	if k.relay.applied == nil {
		k.relay.applied = make(chan struct{})
	}
	return k.relay.applied
}

// awaitConfig runs check until it passes, checking again after each
// configuration applied within Settings.ConfigWait; it returns check's last
// error.
func (k *KMM) awaitConfig(ctx context.Context, check func() error) error {
	if k.set.ConfigWait <= 0 {
		return check()
	}
	t := time.NewTimer(k.set.ConfigWait)
	defer t.Stop()
	for {
		next := k.configApplied()
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-next:
		case <-t.C:
			return err
		case <-ctx.Done():
			return err
		}
	}
}

func (k *KMM) wakeRelay() {
	select {
	case k.relay.wake <- struct{}{}:
	default:
	}
}

func (k *KMM) relayPlans() []RelayPlan {
	k.relay.mu.Lock()
	defer k.relay.mu.Unlock()
	out := make([]RelayPlan, 0, len(k.relay.plans))
	for _, p := range k.relay.plans {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b RelayPlan) int { return strings.Compare(a.Stream, b.Stream) })
	return out
}

// relayed reports whether stream s arrives here by relay (this node is
// neither of the path's first two), so a key not here yet may still come.
func (k *KMM) relayed(s string) bool {
	k.relay.mu.Lock()
	defer k.relay.mu.Unlock()
	p, ok := k.relay.plans[s]
	return ok && p.In != nil && p.In.Stream != s
}

// hopOf finds the plan hop that a peer's keysync message about stream id
// on link is for.
func (k *KMM) hopOf(id, link, peer string) bool {
	_, h, ok := k.hopNamed(id)
	return ok && h.Link == link && h.Peer == peer
}

// hopNamed finds the plan hop whose stream is id, and its plan. A hop
// stream belongs to one hop of one plan at a node (its ID names the key
// stream, the generation and the hop).
func (k *KMM) hopNamed(id string) (RelayPlan, RelayHop, bool) {
	k.relay.mu.Lock()
	defer k.relay.mu.Unlock()
	p, ok := k.relay.byHop[id]
	if !ok {
		return RelayPlan{}, RelayHop{}, false
	}
	if p.In != nil && p.In.Stream == id {
		return p, *p.In, true
	}
	return p, *p.Out, true
}

// relayWarnEvery is the least time between two warnings of failed relays
// of one stream.
const relayWarnEvery = 5 * time.Second

// relayBatch bounds the keys of one Relay message.
const relayBatch = 512

// relayLoop relays keys on every plan where this node sends, when keys
// arrive and at least every 100 ms, until ctx is done.
func (k *KMM) relayLoop(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	// A peer that is down makes every pass fail: warn once per stream every
	// relayWarnEvery, with how many failures were not logged.
	type warned struct {
		at         time.Time
		suppressed int
	}
	warns := map[string]*warned{}
	for {
		changed := k.store.Changed()
		busy := false
		for _, p := range k.relayPlans() {
			if p.In == nil || p.Out == nil {
				continue
			}
			n, err := k.relayOnce(ctx, p)
			if err != nil && ctx.Err() == nil {
				w := warns[p.Stream]
				if w == nil {
					w = &warned{}
					warns[p.Stream] = w
				}
				if time.Since(w.at) < relayWarnEvery {
					w.suppressed++
				} else {
					k.logger.WarnContext(ctx, "key relay failed; retrying", "stream", p.Stream, "to", p.Out.Peer, "err", err, "failures_not_logged", w.suppressed)
					w.at, w.suppressed = time.Now(), 0
				}
			} else if err == nil && warns[p.Stream] != nil {
				delete(warns, p.Stream)
			}
			busy = busy || n == relayBatch
		}
		if busy {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-k.relay.wake:
		case <-t.C:
		}
	}
}

// relayCheck is the integrity check of a relayed key.
func relayCheck(stream string, seq uint64, key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("qkdnet relay check\x00"))
	m.Write([]byte(stream))
	var b [9]byte
	binary.BigEndian.PutUint64(b[1:], seq)
	m.Write(b[:])
	return m.Sum(nil)[:16]
}

// relayOnce sends the next keys of p's stream that have a pad on the out
// hop, and erases what the next node confirms it holds. It asks for pads
// where keys have none yet. It returns how many keys it relayed.
func (k *KMM) relayOnce(ctx context.Context, p RelayPlan) (int, error) {
	xs, err := k.store.ReadSeqs(p.Stream, 0, relayBatch)
	if err != nil || len(xs) == 0 {
		return 0, err
	}
	defer func() {
		for _, x := range xs {
			clear(x.Key)
		}
	}()
	pads, err := k.store.ReadSeqs(p.Out.Stream, xs[0].Seq, relayBatch)
	if err != nil {
		return 0, err
	}
	defer func() {
		for _, x := range pads {
			clear(x.Key)
		}
	}()
	bySeq := make(map[uint64][]byte, len(pads))
	for _, x := range pads {
		bySeq[x.Seq] = x.Key
	}
	req := &qkdv1.RelayRequest{StreamId: p.Stream, HopStreamId: p.Out.Stream}
	for _, x := range xs {
		pad, ok := bySeq[x.Seq]
		if !ok || len(pad) != len(x.Key) {
			continue
		}
		z := make([]byte, len(pad))
		for i := range z {
			z[i] = x.Key[i] ^ pad[i]
		}
		req.Keys = append(req.Keys, &qkdv1.RelayedKey{Seq: x.Seq, KeyId: x.KeyID, Z: z, Check: relayCheck(p.Stream, x.Seq, x.Key)})
	}
	// Keys without a pad yet: have the out hop allocate up to the last one,
	// in the background, so that the keys that have pads go now (the
	// allocation may wait for the link behind a large batch).
	if last := xs[len(xs)-1].Seq; len(pads) == 0 || pads[len(pads)-1].Seq < last {
		have := uint64(0)
		if len(pads) > 0 {
			have = pads[len(pads)-1].Seq + 1
		} else {
			have = xs[0].Seq
		}
		if want := int(last + 1 - have); want > 0 {
			k.fillHopAsync(ctx, p, want)
		}
	}
	if len(req.Keys) == 0 {
		return 0, nil
	}
	cl, err := k.peers.KeySync(p.Out.Peer)
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cl.Relay(cctx, req)
	if err != nil {
		return 0, err
	}
	held := resp.GetHeld()
	if len(held) == 0 {
		return 0, nil
	}
	if err := k.store.EraseSeqs(map[string][]uint64{p.Stream: held, p.Out.Stream: held}, "relayed_out"); err != nil {
		return 0, err
	}
	return len(held), nil
}

// fillHopAsync runs fillHop in the background, one at a time per hop
// stream. Pads that arrive change the store, which wakes the relay loop.
func (k *KMM) fillHopAsync(ctx context.Context, p RelayPlan, want int) {
	k.relay.mu.Lock()
	if k.relay.filling == nil {
		k.relay.filling = map[string]bool{}
	}
	busy := k.relay.filling[p.Out.Stream]
	k.relay.filling[p.Out.Stream] = true
	k.relay.mu.Unlock()
	if busy {
		return
	}
	go func() {
		if err := k.fillHop(ctx, p, want); err != nil && ctx.Err() == nil {
			k.logger.DebugContext(ctx, "pads for relay not allocated yet", "stream", p.Out.Stream, "err", err)
		}
		k.relay.mu.Lock()
		delete(k.relay.filling, p.Out.Stream)
		k.relay.mu.Unlock()
	}()
}

// fillHop has the out hop's stream allocate want more pads.
func (k *KMM) fillHop(ctx context.Context, p RelayPlan, want int) error {
	st, ok := k.store.Stream(p.Out.Stream)
	if !ok {
		return fmt.Errorf("hop stream %s is not configured here", p.Out.Stream)
	}
	link, ok := k.topo.LinkByID(p.Out.Link)
	if !ok {
		return fmt.Errorf("link %s does not end here", p.Out.Link)
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return k.fill(fctx, st, link, min(want, maxOnDemand))
}

// notRelayHop means a Relay message came from a node that is not the
// stream's previous hop (keysync answers PERMISSION_DENIED).
type notRelayHop struct{ msg string }

func (e notRelayHop) Error() string     { return e.msg }
func (e notRelayHop) NotRelayHop() bool { return true }

// Relay implements keysync.Handler: the previous node of a multi-hop
// stream sends keys padded with the hop's keys.
func (k *KMM) Relay(ctx context.Context, peer string, req *qkdv1.RelayRequest) ([]uint64, error) {
	var p RelayPlan
	if err := k.awaitConfig(ctx, func() error {
		k.relay.mu.Lock()
		plan, ok := k.relay.plans[req.GetStreamId()]
		k.relay.mu.Unlock()
		if !ok || plan.In == nil || plan.In.Peer != peer || plan.In.Stream != req.GetHopStreamId() || plan.In.Stream == plan.Stream {
			return notRelayHop{fmt.Sprintf("node %s is not the previous hop of stream %s over %s", peer, req.GetStreamId(), req.GetHopStreamId())}
		}
		p = plan
		return nil
	}); err != nil {
		return nil, err
	}
	items := make([]keystore.RelayItem, 0, len(req.GetKeys()))
	checks := make(map[uint64][]byte, len(req.GetKeys()))
	for _, rk := range req.GetKeys() {
		items = append(items, keystore.RelayItem{Seq: rk.GetSeq(), KeyID: rk.GetKeyId(), Z: rk.GetZ()})
		checks[rk.GetSeq()] = rk.GetCheck()
	}
	held, err := k.store.PutRelayed(p.Stream, p.In.Stream, items, func(seq uint64, key []byte) bool {
		return hmac.Equal(relayCheck(p.Stream, seq, key), checks[seq])
	})
	if errors.Is(err, keystore.ErrRelayCheck) {
		k.logger.ErrorContext(ctx, "relayed keys failed their integrity check; not stored", "stream", p.Stream, "from", peer, "err", err)
		err = nil
	}
	if err != nil {
		return nil, err
	}
	if len(held) > 0 {
		k.wakeRelay()
	}
	return held, nil
}
