package kmm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/pki"
)

// The App Request Handler: ETSI GS QKD 014 V1.1.1 on top of the key store.
// A key served here is erased in the same transaction that hands it out, so
// a crash can lose a key an SAE never saw but can never serve one twice.

// caller returns the SAE making the request; it must be attached to this node.
func (k *KMM) caller(ctx context.Context) (string, error) {
	id, err := pki.Caller(ctx)
	if err != nil {
		return "", unauthorized("the request carries no verified SAE client certificate")
	}
	if id.Kind != pki.KindSAE {
		return "", unauthorized(fmt.Sprintf("certificate identifies %s, not an SAE", id))
	}
	node, ok := k.topo.SAENode(id.ID)
	if c, can := k.topo.(Configured); !ok && can && !c.Configured() {
		return "", unavailable(fmt.Sprintf("%s has not received its configuration from the controller yet; retry", k.set.KMEID))
	}
	if !ok || node != k.set.Node {
		return "", unauthorized(fmt.Sprintf("SAE %q is not attached to %s", id.ID, k.set.KMEID))
	}
	return id.ID, nil
}

// partsPerKey is how many link keys make one key of sizeBits.
func partsPerKey(sizeBits, keyBytes int) int {
	if keyBytes <= 0 {
		keyBytes = 32
	}
	return (sizeBits/8 + keyBytes - 1) / keyBytes
}

func (k *KMM) observe(method string, start time.Time, err error) {
	if k.stats != nil {
		k.stats.ObserveRequest(method, httpCode(err), time.Since(start))
	}
}

// observeStream records a key request served on a stream, for the
// stream's statistics history.
func (k *KMM) observeStream(stream string, start time.Time) {
	if k.stats != nil {
		k.stats.ObserveStream(stream, time.Since(start))
	}
}

// masterStream opens the stream from the (authenticated) master SAE to
// slave, the step status and enc_keys share.
func (k *KMM) masterStream(ctx context.Context, master, slave string) (keystore.Stream, Link, error) {
	if slave == master {
		return keystore.Stream{}, Link{}, badRequest("slave_SAE_ID", "names the caller itself")
	}
	return k.openStream(ctx, master, slave)
}

// GetStatus implements ETSI 014 "Get status".
func (k *KMM) GetStatus(ctx context.Context, req *qkdv1.GetStatusRequest) (_ *qkdv1.Status, err error) {
	start := time.Now()
	defer func() { err = k.toStatus(ctx, err); k.observe("status", start, err) }()
	master, err := k.caller(ctx)
	if err != nil {
		return nil, err
	}
	slave := req.GetSlaveSaeId()
	st, link, err := k.masterStream(ctx, master, slave)
	if err != nil {
		return nil, err
	}
	node, _ := k.topo.SAENode(slave)
	target, _ := k.topo.KMEID(node)
	per := partsPerKey(k.set.KeySize, link.KeyBytes)
	ext, err := k.statusExtension(link, st)
	if err != nil {
		return nil, err
	}
	return &qkdv1.Status{
		SourceKmeId:      k.set.KMEID,
		TargetKmeId:      target,
		MasterSaeId:      master,
		SlaveSaeId:       slave,
		KeySize:          int32(k.set.KeySize),
		StoredKeyCount:   int32(k.store.StreamCount(st.ID) / per),
		MaxKeyCount:      int32(int(st.QoS.MaxBuffer) / per),
		MaxKeyPerRequest: int32(k.set.MaxKeysPerRequest),
		MaxKeySize:       int32(k.set.MaxKeySize),
		MinKeySize:       int32(k.set.MinKeySize),
		MaxSaeIdCount:    0,
		StatusExtension:  ext,
	}, nil
}

// statusExtension reports the Statistics Manager's figures for the stream.
func (k *KMM) statusExtension(link Link, st keystore.Stream) (*structpb.Struct, error) {
	if k.stats == nil {
		return nil, nil
	}
	snap := k.stats.For(link.ID, st.ID)
	toMap := func(m map[string]uint64) map[string]any {
		out := make(map[string]any, len(m))
		for k, v := range m {
			out[k] = float64(v)
		}
		return out
	}
	return structpb.NewStruct(map[string]any{
		"stream_id": st.ID,
		"link_id":   link.ID,
		"kmm_role":  map[bool]string{true: "master", false: "slave"}[link.Master],
		"qos": map[string]any{
			"key_rate":   float64(st.QoS.KeyRate),
			"max_buffer": float64(st.QoS.MaxBuffer),
			"priority":   float64(st.QoS.Priority),
		},
		"pool_keys":    float64(snap.Pool),
		"stream_keys":  float64(snap.Stored),
		"link_stats":   toMap(snap.Link),
		"stream_stats": toMap(snap.Stream),
	})
}

// GetKey implements ETSI 014 "Get key" (enc_keys).
func (k *KMM) GetKey(ctx context.Context, req *qkdv1.GetKeyRequest) (_ *qkdv1.KeyContainer, err error) {
	start := time.Now()
	defer func() { err = k.toStatus(ctx, err); k.observe("enc_keys", start, err) }()
	master, err := k.caller(ctx)
	if err != nil {
		return nil, err
	}
	number := int(req.GetNumber())
	switch {
	case number == 0:
		number = 1
	case number < 0:
		return nil, badRequest("number", "must be at least 1")
	case number > k.set.MaxKeysPerRequest:
		return nil, badRequest("number", fmt.Sprintf("exceeds max_key_per_request %d", k.set.MaxKeysPerRequest))
	}
	size := int(req.GetSize())
	switch {
	case size == 0:
		size = k.set.KeySize
	case size%8 != 0:
		return nil, badRequest("size", "not a multiple of 8")
	case size < k.set.MinKeySize || size > k.set.MaxKeySize:
		return nil, badRequest("size", fmt.Sprintf("outside [min_key_size %d, max_key_size %d]", k.set.MinKeySize, k.set.MaxKeySize))
	}
	if len(req.GetAdditionalSlaveSaeIds()) > 0 {
		return nil, badRequest("additional_slave_SAE_IDs", "multicast is not supported (max_SAE_ID_count is 0)")
	}
	if ext := req.GetExtensionMandatory(); len(ext) > 0 {
		var names []string
		for _, e := range ext {
			for name := range e.GetFields() {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		return nil, badRequest("extension_mandatory", "unsupported extension: "+strings.Join(names, ", "))
	}
	st, link, err := k.masterStream(ctx, master, req.GetSlaveSaeId())
	if err != nil {
		return nil, err
	}
	keys, err := k.takeKeys(ctx, st, link, number, size)
	if err != nil {
		return nil, err
	}
	k.observeStream(st.ID, start)
	return container(keys), nil
}

// takeKeys serves the master SAE number keys of size bits from stream st,
// allocating on demand (enc_keys, replace_keys).
func (k *KMM) takeKeys(ctx context.Context, st keystore.Stream, link Link, number, size int) ([]keystore.Served, error) {
	keys, err := k.store.TakeNext(st.ID, number, size)
	// On demand: allocate what this request needs and try again; a few
	// rounds, since concurrent requests may take what one round allocated.
	for round := 0; round < 3 && errors.Is(err, keystore.ErrNotEnoughKeys); round++ {
		want := number * partsPerKey(size, link.KeyBytes)
		if ferr := k.fill(ctx, st, link, want); ferr != nil {
			k.logger.WarnContext(ctx, "on-demand allocation failed", "stream", st.ID, "err", ferr)
			break
		}
		keys, err = k.store.TakeNext(st.ID, number, size)
	}
	if errors.Is(err, keystore.ErrNotEnoughKeys) {
		return nil, unavailable(fmt.Sprintf("not enough key material for %s right now (%d keys of %d bits asked); retry later", st.ID, number, size))
	}
	if err != nil {
		return nil, err
	}
	if link.Master && k.store.StreamCount(st.ID) < int(st.QoS.MaxBuffer)/2 {
		k.alloc.Wake()
	}
	return keys, nil
}

// GetKeyWithKeyIDs implements ETSI 014 "Get key with key IDs" (dec_keys).
func (k *KMM) GetKeyWithKeyIDs(ctx context.Context, req *qkdv1.GetKeyWithKeyIDsRequest) (_ *qkdv1.KeyContainer, err error) {
	start := time.Now()
	defer func() { err = k.toStatus(ctx, err); k.observe("dec_keys", start, err) }()
	slave, err := k.caller(ctx)
	if err != nil {
		return nil, err
	}
	master := req.GetMasterSaeId()
	if _, ok := k.topo.SAENode(master); !ok {
		return nil, badRequest("master_SAE_ID", fmt.Sprintf("unknown SAE %q", master))
	}
	var ids []string
	if id := req.GetKeyId(); id != "" {
		ids = append(ids, id)
	}
	for i, kid := range req.GetKeyIds() {
		if kid.GetKeyId() == "" {
			return nil, badRequest(fmt.Sprintf("key_IDs[%d].key_ID", i), "is required")
		}
		ids = append(ids, kid.GetKeyId())
	}
	switch {
	case len(ids) == 0:
		return nil, badRequest("key_IDs", "at least one key_ID is required")
	case len(ids) > k.set.MaxKeysPerRequest:
		return nil, badRequest("key_IDs", fmt.Sprintf("more than max_key_per_request %d", k.set.MaxKeysPerRequest))
	}
	streamID, err := k.decStream(master, slave, ids)
	if err != nil {
		return nil, err
	}
	keys, err := k.store.TakeIDs(streamID, ids)
	// The Slave KMM may serve a key to its SAE the moment it applied the
	// batch, before this (Master) KMM has the answer and commits. Such a key
	// is in a pending batch here: wait for the commit rather than say 400.
	var ke *keystore.KeyError
	unknown := func() bool { return errors.As(err, &ke) && errors.Is(err, keystore.ErrUnknownKey) }
	if unknown() && k.store.Revoked(streamID, ke.KeyID) {
		return nil, replacedKey(ke.KeyID, master)
	}
	for deadline := time.Now().Add(2 * time.Second); unknown() && time.Now().Before(deadline); {
		// Read "pending" before retrying: a commit landing in between is
		// then seen by the retry.
		pending := k.store.IsPending(streamID, ke.KeyID)
		keys, err = k.store.TakeIDs(streamID, ids)
		if !pending || !unknown() {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	if errors.As(err, &ke) && errors.Is(err, keystore.ErrUnknownKey) && k.store.IsPending(streamID, ke.KeyID) {
		return nil, unavailable(fmt.Sprintf("key_ID %s is still being synchronised with the peer KME; retry", ke.KeyID))
	}
	// On a multi-hop stream the key may still be on its way through the
	// trusted nodes: wait for it as for a pending batch.
	if unknown() && k.relayed(streamID) {
		for deadline := time.Now().Add(2 * time.Second); unknown() && time.Now().Before(deadline); {
			changed := k.store.Changed()
			if keys, err = k.store.TakeIDs(streamID, ids); !unknown() {
				break
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-changed:
			case <-time.After(50 * time.Millisecond):
			}
		}
		if unknown() {
			return nil, unavailable(fmt.Sprintf("key_ID %s has not been relayed to this KME yet; retry", ke.KeyID))
		}
	}
	if errors.As(err, &ke) {
		if errors.Is(err, keystore.ErrUnknownKey) && k.store.Revoked(streamID, ke.KeyID) {
			return nil, replacedKey(ke.KeyID, master)
		}
		if errors.Is(err, keystore.ErrUnknownKey) {
			for _, other := range k.store.Streams() {
				if other.MasterSAE == master && other.ID != streamID && k.store.Holds(other.ID, ke.KeyID) {
					return nil, unauthorized(fmt.Sprintf("key_ID %s was not issued for SAE %s", ke.KeyID, slave))
				}
			}
			return nil, badRequest("key_ID", fmt.Sprintf("%s: unknown, already delivered or expired", ke.KeyID))
		}
		return nil, badRequest("key_ID", ke.Error())
	}
	if err != nil {
		return nil, err
	}
	k.observeStream(streamID, start)
	return container(keys), nil
}

// decStream is the stream of the key stream master -> slave that holds the
// keys ids name: that of the path generation their key_IDs say
// (streamOfKey). Keys of two generations (a reroute came between the
// enc_keys calls that got them) are refused rather than served in part.
func (k *KMM) decStream(master, slave string, ids []string) (string, error) {
	var stream, first string
	for _, id := range ids {
		if _, ok := keystore.KeyIDSeq(id); !ok {
			continue // TakeIDs names it
		}
		s := k.streamOfKey(master, slave, id)
		if first != "" && s != stream {
			return "", badRequest("key_IDs", fmt.Sprintf("key_IDs %s and %s come from two paths of the key stream (it was rerouted between them); ask for each path's keys in a request of its own", first, id))
		}
		stream, first = s, id
	}
	if first == "" {
		return StreamID(master, slave), nil
	}
	return stream, nil
}

func container(keys []keystore.Served) *qkdv1.KeyContainer {
	out := &qkdv1.KeyContainer{Keys: make([]*qkdv1.Key, len(keys))}
	for i, key := range keys {
		out.Keys[i] = &qkdv1.Key{KeyId: key.KeyID, Key: key.Key}
	}
	return out
}

// httpCode is the HTTP status the REST gateway answers for err, from the
// gateway's own table, so the request metrics count what SAEs see.
func httpCode(err error) int {
	if err == nil {
		return http.StatusOK
	}
	return runtime.HTTPStatusFromCode(status.Code(err))
}
