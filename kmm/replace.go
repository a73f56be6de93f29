package kmm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
)

// Key replacement on request (the paper's KMM function vi), an extension of
// ETSI GS QKD 014: POST /api/v1/keys/{slave_SAE_ID}/replace_keys, sent by the
// master SAE with the key_IDs of keys it got with enc_keys and no longer
// trusts.
//
// On the path N0 .. Nn of the stream S from the master SAE's node N0, every
// node may still hold a key the master SAE got (the slave SAE's node until
// its SAE fetches it; a relay node until the next one holds it). N0 sends
// Revoke to N1, each node looks for the keys and passes the request on, and
// the last node decides: if every key is held somewhere on the path, or was
// revoked before, each node from Nn back to N1 erases its copies and its
// relay pads at the keys' sequence numbers and marks them revoked (so a key
// still on its way is dropped where it arrives); else nothing is written
// anywhere and the SAE gets 400. Only once N1 has answered does N0 take the
// new keys, as enc_keys does, and mark the old key_IDs as replaced. So a key
// is never served to one SAE and missing at the other, a refused request
// destroys nothing, and a request that failed (503) can be sent again: the
// nodes that revoked already answer "revoked before".

// streamOfKey is the stream of the master SAE's keys for the slave SAE that
// holds keyID: the path generation its sequence number says (see
// GenStreamID). It is the one place that says so.
func (k *KMM) streamOfKey(master, slave, keyID string) string {
	base := StreamID(master, slave)
	if seq, ok := keystore.KeyIDSeq(keyID); ok {
		return GenStreamID(base, genOfSeq(seq))
	}
	return base
}

// keyedLock serialises work per key (here, replacements per stream at the
// master SAE's node, so two requests cannot replace a key twice).
type keyedLock struct {
	mu   sync.Mutex
	held map[string]chan struct{}
}

func (l *keyedLock) lock(ctx context.Context, key string) (func(), error) {
	for {
		l.mu.Lock()
		if l.held == nil {
			l.held = map[string]chan struct{}{}
		}
		ch, busy := l.held[key]
		if !busy {
			ch = make(chan struct{})
			l.held[key] = ch
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.held, key)
				l.mu.Unlock()
				close(ch)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// revokeTimeout bounds a Revoke round trip along the whole path.
const revokeTimeout = 5 * time.Second

// ReplaceKeys implements the ETSI 014 extension replace_keys.
func (k *KMM) ReplaceKeys(ctx context.Context, req *qkdv1.ReplaceKeysRequest) (_ *qkdv1.KeyContainer, err error) {
	start := time.Now()
	defer func() { err = k.toStatus(ctx, err); k.observe("replace_keys", start, err) }()
	master, err := k.caller(ctx)
	if err != nil {
		return nil, err
	}
	slave := req.GetSlaveSaeId()
	if slave == master {
		return nil, badRequest("slave_SAE_ID", "names the caller itself")
	}
	if _, ok := k.topo.SAENode(slave); !ok {
		return nil, badRequest("slave_SAE_ID", fmt.Sprintf("unknown SAE %q", slave))
	}
	switch n := len(req.GetKeyIds()); {
	case n == 0:
		return nil, badRequest("key_IDs", "at least one key_ID is required")
	case n > k.set.MaxKeysPerRequest:
		return nil, badRequest("key_IDs", fmt.Sprintf("more than max_key_per_request %d", k.set.MaxKeysPerRequest))
	}
	ids := make([]string, 0, len(req.GetKeyIds()))
	sizes := make([]int, 0, len(req.GetKeyIds()))
	seen := map[string]bool{}
	for i, kid := range req.GetKeyIds() {
		id := kid.GetKeyId()
		field := fmt.Sprintf("key_IDs[%d].key_ID", i)
		if id == "" {
			return nil, badRequest(field, "is required")
		}
		if seen[id] {
			return nil, badRequest(field, fmt.Sprintf("%s is named twice", id))
		}
		seen[id] = true
		size, err := keystore.KeyIDSize(id)
		if err != nil {
			return nil, badRequest(field, fmt.Sprintf("%s is not a key_ID issued by this network", id))
		}
		ids, sizes = append(ids, id), append(sizes, size)
	}
	for _, size := range sizes {
		if size < k.set.MinKeySize || size > k.set.MaxKeySize {
			return nil, badRequest("key_IDs", fmt.Sprintf("a key of %d bits is outside [min_key_size %d, max_key_size %d]", size, k.set.MinKeySize, k.set.MaxKeySize))
		}
	}
	// Keys by stream; all of one stream are replaced together.
	byStream := map[string][]int{}
	for i, id := range ids {
		s := k.streamOfKey(master, slave, id)
		byStream[s] = append(byStream[s], i)
	}
	for _, s := range slices.Sorted(maps.Keys(byStream)) {
		if _, ok := k.store.Stream(s); !ok {
			i := byStream[s][0]
			return nil, badRequest("key_ID", fmt.Sprintf("%s: unknown (no key of %s for %s was issued here)", ids[i], master, slave))
		}
	}
	// The stream the new keys come from (and its link, to allocate on
	// demand).
	st, link, err := k.masterStream(ctx, master, slave)
	if err != nil {
		return nil, err
	}
	out := make([]*qkdv1.Key, len(ids))
	defer func() {
		if err != nil {
			for _, key := range out {
				if key != nil {
					clear(key.Key)
				}
			}
		}
	}()
	for _, s := range slices.Sorted(maps.Keys(byStream)) {
		if err := k.replaceInStream(ctx, s, st, link, master, slave, byStream[s], ids, sizes, out); err != nil {
			return nil, err
		}
	}
	k.logger.InfoContext(ctx, "replaced keys at the master SAE's request", "master", master, "slave", slave, "keys", len(ids), "key_ids", strings.Join(ids, ","))
	k.observeStream(st.ID, start)
	return &qkdv1.KeyContainer{Keys: out}, nil
}

// replaceInStream revokes the keys idx (of ids) of stream s on its path and
// fills out[idx] with new keys from stream st.
func (k *KMM) replaceInStream(ctx context.Context, s string, st keystore.Stream, link Link, master, slave string, idx []int, ids []string, sizes []int, out []*qkdv1.Key) error {
	unlock, err := k.replacing.lock(ctx, s)
	if err != nil {
		return err
	}
	defer unlock()
	keys := make([]keystore.RevokeKey, len(idx))
	for j, i := range idx {
		keys[j] = keystore.RevokeKey{KeyID: ids[i]}
	}
	here, _, err := k.store.Revoke(s, keys, nil, false)
	if err != nil {
		return err
	}
	for _, f := range here {
		switch f.State {
		case keystore.RevokeMarked:
			return badRequest("key_ID", fmt.Sprintf("%s was replaced already, at the master SAE's request", f.KeyID))
		case keystore.RevokeHeld:
			return badRequest("key_ID", fmt.Sprintf("%s has not been delivered to SAE %s", f.KeyID, master))
		}
	}
	next, ok := k.nextHop(s)
	if !ok {
		return unavailable(fmt.Sprintf("no next node known for key stream %s; cannot reach the KME of SAE %s", s, slave))
	}
	cl, err := k.peers.KeySync(next)
	if err != nil {
		return unavailable(fmt.Sprintf("the KME of SAE %s is unreachable (node %s: %v); nothing was replaced; retry", slave, next, err))
	}
	rctx, cancel := context.WithTimeout(ctx, revokeTimeout)
	defer cancel()
	rreq := &qkdv1.RevokeRequest{StreamId: s}
	for _, key := range keys {
		rreq.Keys = append(rreq.Keys, &qkdv1.RevokedKey{KeyId: key.KeyID})
	}
	resp, err := cl.Revoke(rctx, rreq)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return unavailable(fmt.Sprintf("the KME of SAE %s did not confirm the revocation (%s); no new key was issued; retry", slave, status.Convert(err).Message()))
	}
	if !resp.GetRevoked() {
		if other := resp.GetOtherStreamKeyIds(); len(other) > 0 {
			return unauthorized(fmt.Sprintf("key_ID %s was not issued for SAE %s; nothing was replaced", other[0], slave))
		}
		unknown := resp.GetUnknownKeyIds()
		if len(unknown) == 0 {
			return unavailable("the peer KME refused the revocation without saying why; nothing was replaced")
		}
		return badRequest("key_ID", fmt.Sprintf("%s: unknown at the KME of SAE %s (never issued to %s for it, already delivered to it, or expired); nothing was replaced", unknown[0], slave, master))
	}
	parts := map[string]int{}
	for _, rk := range resp.GetKeys() {
		parts[rk.GetKeyId()] = int(rk.GetParts())
	}
	for j := range keys {
		keys[j].Parts = parts[keys[j].KeyID]
		if keys[j].Parts <= 0 {
			return unavailable(fmt.Sprintf("the peer KME confirmed the revocation of %s without its size; retry", keys[j].KeyID))
		}
	}
	// Revoked on the rest of the path: now the new keys, then the mark
	// that they were handed out. A failure in between leaves no mark here,
	// so the retry gets new keys.
	bySize := map[int][]int{}
	for _, i := range idx {
		bySize[sizes[i]] = append(bySize[sizes[i]], i)
	}
	for _, size := range slices.Sorted(maps.Keys(bySize)) {
		want := bySize[size]
		fresh, err := k.takeKeys(ctx, st, link, len(want), size)
		if err != nil {
			return err
		}
		for j, i := range want {
			ext, _ := structpb.NewStruct(map[string]any{"replaces": ids[i]})
			out[i] = &qkdv1.Key{KeyId: fresh[j].KeyID, Key: fresh[j].Key, KeyIdExtension: ext}
		}
	}
	if _, done, err := k.store.Revoke(s, keys, nil, true); err != nil || !done {
		if err == nil {
			err = fmt.Errorf("revocation of %d keys of %s not recorded", len(keys), s)
		}
		return err
	}
	return nil
}

// nextHop is the node after this one on stream s's path, if any.
func (k *KMM) nextHop(s string) (string, bool) {
	k.relay.mu.Lock()
	p, planned := k.relay.plans[s]
	k.relay.mu.Unlock()
	if planned {
		if p.Out == nil {
			return "", false
		}
		return p.Out.Peer, true
	}
	// A single-hop stream without a controller: from the master SAE's
	// node to the other end of the stream's link.
	st, ok := k.store.Stream(s)
	if !ok {
		return "", false
	}
	if n, ok := k.topo.SAENode(st.MasterSAE); !ok || n != k.set.Node {
		return "", false
	}
	l, ok := k.topo.LinkByID(st.Link)
	return l.Peer, ok
}

// revokePads are the relay pad streams this node holds for stream s.
func (k *KMM) revokePads(s string) []string {
	k.relay.mu.Lock()
	defer k.relay.mu.Unlock()
	p, ok := k.relay.plans[s]
	if !ok {
		return nil
	}
	var out []string
	for _, h := range []*RelayHop{p.In, p.Out} {
		if h != nil && h.Stream != s {
			out = append(out, h.Stream)
		}
	}
	return out
}

// revokeFrom checks that peer is the node before this one on stream s's
// path.
func (k *KMM) revokeFrom(peer, s string) error {
	k.relay.mu.Lock()
	p, planned := k.relay.plans[s]
	k.relay.mu.Unlock()
	if planned {
		if p.In != nil && p.In.Peer == peer {
			return nil
		}
		return notRelayHop{fmt.Sprintf("node %s is not the node before %s on the path of stream %s", peer, k.set.Node, s)}
	}
	st, ok := k.store.Stream(s)
	if !ok {
		return fmt.Errorf("%w %q", keystore.ErrUnknownStream, s)
	}
	l, lok := k.topo.LinkByID(st.Link)
	mn, mok := k.topo.SAENode(st.MasterSAE)
	sn, sok := k.topo.SAENode(st.SlaveSAE)
	if !lok || l.Peer != peer || !mok || mn != peer || !sok || sn != k.set.Node {
		return notRelayHop{fmt.Sprintf("node %s is not the master SAE's node of stream %s", peer, s)}
	}
	return nil
}

// Revoke implements keysync.RevokeHandler: the node before this one on the
// path of a stream asks to revoke served keys of it.
func (k *KMM) Revoke(ctx context.Context, peer string, req *qkdv1.RevokeRequest) (*qkdv1.RevokeResponse, error) {
	s := req.GetStreamId()
	if err := k.awaitConfig(ctx, func() error { return k.revokeFrom(peer, s) }); err != nil {
		return nil, err
	}
	keys := make([]keystore.RevokeKey, len(req.GetKeys()))
	for i, rk := range req.GetKeys() {
		keys[i] = keystore.RevokeKey{KeyID: rk.GetKeyId(), Parts: int(rk.GetParts())}
	}
	pads := k.revokePads(s)
	next, more := k.nextHop(s)
	if !more {
		// The path's last node decides, in one step with serving.
		found, done, err := k.store.Revoke(s, keys, pads, true)
		if err != nil {
			return nil, err
		}
		resp := &qkdv1.RevokeResponse{Revoked: done}
		for _, f := range found {
			switch {
			case done:
				resp.Keys = append(resp.Keys, &qkdv1.RevokedKey{KeyId: f.KeyID, Parts: uint32(f.Parts)})
			case f.Parts == 0:
				resp.UnknownKeyIds = append(resp.UnknownKeyIds, f.KeyID)
				if k.heldElsewhere(s, f.KeyID) {
					resp.OtherStreamKeyIds = append(resp.OtherStreamKeyIds, f.KeyID)
				}
			}
		}
		if done {
			k.logger.InfoContext(ctx, "revoked keys at the master SAE's request", "stream", s, "from", peer, "keys", len(keys))
		}
		return resp, nil
	}
	// A node inside the path: say what it found, pass the request on, and
	// revoke here once the rest of the path has.
	found, _, err := k.store.Revoke(s, keys, pads, false)
	if err != nil {
		return nil, err
	}
	fwd := &qkdv1.RevokeRequest{StreamId: s}
	for _, f := range found {
		fwd.Keys = append(fwd.Keys, &qkdv1.RevokedKey{KeyId: f.KeyID, Parts: uint32(f.Parts)})
	}
	cl, err := k.peers.KeySync(next)
	if err != nil {
		return nil, err
	}
	resp, err := cl.Revoke(ctx, fwd)
	if err != nil {
		return nil, err
	}
	if !resp.GetRevoked() {
		return resp, nil
	}
	parts := map[string]int{}
	for _, rk := range resp.GetKeys() {
		parts[rk.GetKeyId()] = int(rk.GetParts())
	}
	for i := range keys {
		keys[i].Parts = parts[keys[i].KeyID]
	}
	if _, done, err := k.store.Revoke(s, keys, pads, true); err != nil || !done {
		if err == nil {
			err = fmt.Errorf("node %s revoked keys of %s that node %s cannot place", next, s, k.set.Node)
		}
		return nil, err
	}
	k.wakeRelay()
	return resp, nil
}

// heldElsewhere reports whether this node holds keyID in another stream of
// stream s's master SAE.
func (k *KMM) heldElsewhere(s, keyID string) bool {
	st, ok := k.store.Stream(s)
	if !ok {
		return false
	}
	for _, o := range k.store.Streams() {
		if o.MasterSAE == st.MasterSAE && o.ID != s && k.store.Holds(o.ID, keyID) {
			return true
		}
	}
	return false
}

// replacedKey is dec_keys' answer for a key the master SAE had replaced.
func replacedKey(keyID, master string) error {
	return badRequest("key_ID", fmt.Sprintf("%s was replaced at the master SAE's request (%s); ask it for the key_ID of the new key", keyID, master))
}
