package kmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/pki"
)

// The App Request Handler's ETSI GS QKD 004 side. A 004 key stream is the
// same object as a 014 master/slave pair (a key stream in the App Store, an
// ETSI 015 qkd_app): the party that opens it is the master, the one that
// joins with its Key_stream_ID the slave. Both KMMs hold the stream's keys
// at the same sequence numbers, so chunk i is cut from the same keys at
// both ends, whoever asks first; each end erases what it hands out.

// The ETSI 004 status codes.
const (
	Status004Success          = 0
	Status004PeerNotYet       = 1 // OPEN_CONNECT: the peer application is not connected yet
	Status004NoKey            = 2 // GET_KEY: not enough key available
	Status004PeerNotConn      = 3 // GET_KEY: the peer application is not connected
	Status004NoConnection     = 4 // no QKD connection available
	Status004InUse            = 5 // OPEN_CONNECT: the Key_stream_ID is in use
	Status004Timeout          = 6 // the call did not complete within the QoS timeout
	Status004QoSNotMet        = 7 // OPEN_CONNECT: the QoS cannot be met
	Status004MetadataTooSmall = 8 // GET_KEY: the metadata buffer is too small
)

// AppRequest is what an application asks of a new key stream (ETSI 004
// OPEN_CONNECT mapped onto ETSI 015 app_qos).
type AppRequest struct {
	// Connect, if set, is the SAE to connect as the application is created.
	Connect                     string
	Master, Slave               string
	MinBPS, MaxBPS, Jitter, TTL uint32
	Priority, ChunkSize         uint32
}

// AppView is an application as this node's configuration holds it.
type AppView struct {
	ID            string
	Master, Slave string // SAE_IDs
	ChunkSize     uint32
	Connected     []string
}

// KeyStreams is what the ETSI 004 handler needs of the controller: the
// application behind a key stream, opening one with QoS, and recording which
// SAEs are connected to it.
type KeyStreams interface {
	// OpenQoS returns the ID of the application from master to slave once
	// this node's configuration holds it, asking the controller to create it
	// with the QoS if needed. It fails with ErrUnknownSAE, ErrNoPath or a
	// *QoSError.
	OpenQoS(ctx context.Context, req AppRequest) (string, error)
	// Connect records that sae connected to (or closed) application id.
	Connect(ctx context.Context, id, sae string, connect bool) error
	// App returns an application in this node's configuration, and a channel
	// closed when the configuration next changes.
	App(id string) (AppView, bool, <-chan struct{})
}

// ErrNoPath means no path of QKD links joins the two SAEs' nodes.
var ErrNoPath = errors.New("no QKD path")

// QoSError means no path can carry the requested minimum rate.
type QoSError struct {
	AvailableBPS uint64
	Msg          string
}

func (e *QoSError) Error() string { return e.Msg }

// WithKeyStreams makes the KMM serve ETSI 004 through ks.
func WithKeyStreams(ks KeyStreams) Option { return func(k *KMM) { k.streams = ks } }

// conn004 is one SAE's connection to a key stream at this KMM.
type conn004 struct {
	timeout   time.Duration
	next      uint32          // the index GET_KEY without an index serves
	delivered map[uint32]bool // indexes handed to this SAE
}

type conns004 struct {
	mu sync.Mutex
	m  map[[2]string]*conn004 // (stream ID, SAE) -> connection
}

const defaultChunk = 32

func saeOfURI(field, uri string) (string, error) {
	id, ok := strings.CutPrefix(uri, "qkd://sae/")
	if !ok || pki.ValidID(id) != nil {
		return "", status.Errorf(codes.InvalidArgument, "%s %q: want qkd://sae/<SAE_ID>", field, uri)
	}
	return id, nil
}

// caller004 is the prologue of every ETSI 004 call: the calling SAE, which
// must be attached here, on a KMM that has a controller to ask.
func (k *KMM) caller004(ctx context.Context) (string, error) {
	caller, err := k.caller(ctx)
	if err != nil {
		return "", k.toStatus(ctx, err)
	}
	if k.streams == nil {
		return "", status.Error(codes.Unimplemented, "ETSI 004 needs a controller")
	}
	return caller, nil
}

// OpenConnect implements ETSI 004 OPEN_CONNECT.
func (k *KMM) OpenConnect(ctx context.Context, req *qkdv1.OpenConnectRequest) (*qkdv1.OpenConnectResponse, error) {
	caller, err := k.caller004(ctx)
	if err != nil {
		return nil, err
	}
	src, err := saeOfURI("source", req.GetSource())
	if err != nil {
		return nil, err
	}
	dst, err := saeOfURI("destination", req.GetDestination())
	if err != nil {
		return nil, err
	}
	if src != caller {
		return nil, status.Errorf(codes.PermissionDenied, "source %s is not the caller %s", src, caller)
	}
	if dst == caller {
		return nil, status.Error(codes.InvalidArgument, "destination is the caller itself")
	}
	q := req.GetQos()
	chunk := q.GetKeyChunkSize()
	if chunk == 0 {
		chunk = defaultChunk
	}
	if int(chunk)*8 > k.set.MaxKeySize {
		return nil, status.Errorf(codes.InvalidArgument, "key_chunk_size %d bytes exceeds %d bits", chunk, k.set.MaxKeySize)
	}
	if q.GetMaxBps() > 0 && q.GetMinBps() > q.GetMaxBps() {
		return nil, status.Errorf(codes.InvalidArgument, "min_bps %d exceeds max_bps %d", q.GetMinBps(), q.GetMaxBps())
	}
	id := req.GetKeyStreamId()
	out := &qkdv1.OpenConnectResponse{}
	if id == "" {
		id, err = k.streams.OpenQoS(ctx, AppRequest{Connect: caller, Master: caller, Slave: dst, MinBPS: q.GetMinBps(), MaxBPS: q.GetMaxBps(),
			Jitter: q.GetJitter(), TTL: q.GetTtl(), Priority: q.GetPriority(), ChunkSize: chunk})
		var qe *QoSError
		switch {
		case errors.Is(err, ErrUnknownSAE), errors.Is(err, ErrNoPath):
			return &qkdv1.OpenConnectResponse{Status: Status004NoConnection, Message: err.Error()}, nil
		case errors.As(err, &qe):
			counter := cloneQoS(q)
			counter.MinBps = uint32(min(qe.AvailableBPS, uint64(^uint32(0))))
			return &qkdv1.OpenConnectResponse{Status: Status004QoSNotMet, Qos: counter, Message: qe.Msg}, nil
		case err != nil:
			return nil, k.toStatus(ctx, unavailable(err.Error()))
		}
	}
	// The peer's OPEN_CONNECT may arrive before the controller's push of
	// the stream has reached this node: give it a moment.
	app, ok := k.waitApp(ctx, id, 2*time.Second)
	if !ok {
		return &qkdv1.OpenConnectResponse{Status: Status004NoConnection, KeyStreamId: id,
			Message: fmt.Sprintf("no key stream %s reaches this node", id)}, nil
	}
	if (caller != app.Master && caller != app.Slave) || (dst != app.Master && dst != app.Slave) {
		return &qkdv1.OpenConnectResponse{Status: Status004InUse, KeyStreamId: id,
			Message: fmt.Sprintf("key stream %s joins %s and %s", id, app.Master, app.Slave)}, nil
	}
	created := req.GetKeyStreamId() == "" && slices.Contains(app.Connected, caller) && !k.connectedHere(id, caller)
	if slices.Contains(app.Connected, caller) && !created {
		return &qkdv1.OpenConnectResponse{Status: Status004InUse, KeyStreamId: id, Message: fmt.Sprintf("%s is already connected to key stream %s", caller, id)}, nil
	}
	if created {
		// The controller connected the caller as it created the stream.
	} else if err := k.streams.Connect(ctx, id, caller, true); err != nil {
		if status.Code(err) == codes.AlreadyExists {
			return &qkdv1.OpenConnectResponse{Status: Status004InUse, KeyStreamId: id, Message: err.Error()}, nil
		}
		return nil, k.toStatus(ctx, unavailable(err.Error()))
	}
	k.c004.mu.Lock()
	if k.c004.m == nil {
		k.c004.m = map[[2]string]*conn004{}
	}
	k.c004.m[[2]string{id, caller}] = &conn004{timeout: time.Duration(q.GetTimeout()) * time.Millisecond, delivered: map[uint32]bool{}}
	k.c004.mu.Unlock()

	app, _, _ = k.streams.App(id)
	qos := cloneQoS(q)
	qos.KeyChunkSize = app.ChunkSize
	if qos.KeyChunkSize == 0 {
		qos.KeyChunkSize = chunk
	}
	qos.MetadataMimetype = "application/json"
	out.KeyStreamId, out.Qos, out.Status = id, qos, Status004PeerNotYet
	if slices.Contains(app.Connected, peerOf(app, caller)) {
		out.Status = Status004Success
	}
	k.logger.InfoContext(ctx, "ETSI 004 stream opened", "key_stream_id", id, "sae", caller, "peer", dst, "status", out.Status)
	return out, nil
}

// waitApp returns application id once this node's configuration holds it,
// waiting up to d.
func (k *KMM) waitApp(ctx context.Context, id string, d time.Duration) (AppView, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		app, ok, changed := k.streams.App(id)
		if ok {
			return app, true
		}
		select {
		case <-changed:
		case <-t.C:
			return AppView{}, false
		case <-ctx.Done():
			return AppView{}, false
		}
	}
}

func cloneQoS(q *qkdv1.KeyStreamQoS) *qkdv1.KeyStreamQoS {
	if q == nil {
		return &qkdv1.KeyStreamQoS{}
	}
	return &qkdv1.KeyStreamQoS{KeyChunkSize: q.GetKeyChunkSize(), MaxBps: q.GetMaxBps(), MinBps: q.GetMinBps(), Jitter: q.GetJitter(),
		Priority: q.GetPriority(), Timeout: q.GetTimeout(), Ttl: q.GetTtl(), MetadataMimetype: q.GetMetadataMimetype()}
}

// connectedHere reports whether sae has an open connection to stream id at
// this KMM.
func (k *KMM) connectedHere(id, sae string) bool {
	k.c004.mu.Lock()
	defer k.c004.mu.Unlock()
	return k.c004.m[[2]string{id, sae}] != nil
}

func peerOf(a AppView, sae string) string {
	if sae == a.Master {
		return a.Slave
	}
	return a.Master
}

// chunkGenShift splits a chunk index: its top 8 bits are the path
// generation of the key stream (see GenStreamID), the rest the chunk's
// place in that generation. A stream that is never rerouted has 2^24
// chunks; each reroute starts another 2^24.
const chunkGenShift = 24

// GetStreamKey implements ETSI 004 GET_KEY.
func (k *KMM) GetStreamKey(ctx context.Context, req *qkdv1.GetStreamKeyRequest) (*qkdv1.GetStreamKeyResponse, error) {
	start := time.Now()
	caller, err := k.caller004(ctx)
	if err != nil {
		return nil, err
	}
	id := req.GetKeyStreamId()
	app, ok, _ := k.streams.App(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no key stream %q at this node", id)
	}
	k.c004.mu.Lock()
	c := k.c004.m[[2]string{id, caller}]
	k.c004.mu.Unlock()
	if c == nil || !slices.Contains(app.Connected, caller) {
		return nil, status.Errorf(codes.PermissionDenied, "%s has not opened key stream %s here (OPEN_CONNECT first)", caller, id)
	}
	// A blocking GET_KEY waits, within its timeout, for the peer to join
	// (its OPEN_CONNECT may be on its way through the controller).
	for wait := time.NewTimer(c.timeout); !slices.Contains(app.Connected, peerOf(app, caller)); {
		_, _, changed := k.streams.App(id)
		select {
		case <-changed:
		case <-wait.C:
			return &qkdv1.GetStreamKeyResponse{Status: Status004PeerNotConn, Message: fmt.Sprintf("%s has not joined key stream %s", peerOf(app, caller), id)}, nil
		case <-ctx.Done():
			return nil, k.toStatus(ctx, ctx.Err())
		}
		if app, ok, _ = k.streams.App(id); !ok {
			return nil, status.Errorf(codes.NotFound, "key stream %q is gone from this node", id)
		}
	}
	base := StreamID(app.Master, app.Slave)
	curGen, _ := k.currentGen(base)
	k.c004.mu.Lock()
	index := c.next
	if req.Index != nil {
		index = req.GetIndex()
	} else if index>>chunkGenShift < curGen {
		// The stream was rerouted: without an index, both parties move on
		// to the new path's first chunk (the keys of the old one may be
		// held up behind the link that failed). Earlier chunks can still
		// be asked for by index.
		index = curGen << chunkGenShift
	}
	delivered := c.delivered[index]
	k.c004.mu.Unlock()
	if delivered {
		return nil, status.Errorf(codes.InvalidArgument, "chunk %d of key stream %s was already delivered to %s", index, id, caller)
	}
	meta, _ := json.Marshal(map[string]any{"key_stream_id": id, "index": index})
	if int(req.GetMetadataSize()) < len(meta) {
		return &qkdv1.GetStreamKeyResponse{Status: Status004MetadataTooSmall, Index: index, MetadataSize: uint32(len(meta)),
			Message: fmt.Sprintf("metadata needs %d bytes, the caller has room for %d", len(meta), req.GetMetadataSize())}, nil
	}
	gen := index >> chunkGenShift
	st, ok := k.store.Stream(GenStreamID(base, gen))
	if !ok {
		return nil, k.toStatus(ctx, unavailable(fmt.Sprintf("key stream %s is not configured at this node yet", id)))
	}
	// A stream that arrives by relay lives on no link here; its keys have
	// the size of the link it arrives over.
	relayed := k.relayed(st.ID)
	link, ok := k.topo.LinkByID(strings.TrimPrefix(st.Link, "relay:"))
	if !ok {
		return nil, k.toStatus(ctx, unavailable(fmt.Sprintf("link %s of key stream %s does not end here", st.Link, id)))
	}
	chunk := int(app.ChunkSize)
	if chunk == 0 {
		chunk = defaultChunk
	}
	per := partsPerKey(chunk*8, link.KeyBytes)
	first := GenFirstSeq(gen)
	local := func(index uint32) uint64 { return uint64(index & (1<<chunkGenShift - 1)) }
	seq := first + local(index)*uint64(per)
	what := "delivered_enc"
	if caller == app.Slave {
		what = "delivered_dec"
	}
	deadline := time.Now().Add(c.timeout)
	var asking atomic.Bool
	for {
		changed := k.store.Changed()
		key, err := k.store.TakeAt(st.ID, seq, chunk*8, what)
		if err == nil {
			k.c004.mu.Lock()
			c.delivered[index] = true
			if index >= c.next {
				c.next = index + 1
			}
			k.c004.mu.Unlock()
			k.observeStream(st.ID, start)
			return &qkdv1.GetStreamKeyResponse{Status: Status004Success, KeyBuffer: key.Key, Index: index, Metadata: meta, MetadataSize: uint32(len(meta))}, nil
		}
		if !errors.Is(err, keystore.ErrNotEnoughKeys) {
			return nil, k.toStatus(ctx, err)
		}
		// Without an index, skip chunks whose keys are gone (their TTL or
		// lifetime ended) to the first one the stream still holds.
		if req.Index == nil {
			if next, err := k.store.ReadSeqs(st.ID, seq, 1); err == nil && len(next) == 1 {
				clear(next[0].Key)
				if l := (next[0].Seq - first + uint64(per) - 1) / uint64(per); next[0].Seq >= first && l > local(index) && l < 1<<chunkGenShift {
					index, seq = gen<<chunkGenShift|uint32(l), first+l*uint64(per)
					continue
				}
			}
		}
		// Ask for the keys up to this chunk (in the background, one request
		// at a time: the link may be busy with a large batch while the keys
		// arrive by other means), then wait for them until the caller's
		// timeout.
		if have := k.store.StreamCount(st.ID); have < per && !relayed && asking.CompareAndSwap(false, true) {
			go func() {
				defer asking.Store(false)
				fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Until(deadline)+time.Millisecond)
				defer cancel()
				k.fill(fctx, st, link, per-have)
			}()
		}
		if time.Now().After(deadline) {
			code := uint32(Status004NoKey)
			if c.timeout > 0 {
				code = Status004Timeout
			}
			return &qkdv1.GetStreamKeyResponse{Status: code, Index: index, Message: fmt.Sprintf("no key for chunk %d of key stream %s yet", index, id)}, nil
		}
		select {
		case <-changed:
		case <-time.After(time.Until(deadline)):
		case <-ctx.Done():
			return nil, k.toStatus(ctx, ctx.Err())
		}
	}
}

// CloseStream implements ETSI 004 CLOSE.
func (k *KMM) CloseStream(ctx context.Context, req *qkdv1.CloseStreamRequest) (*qkdv1.CloseStreamResponse, error) {
	caller, err := k.caller004(ctx)
	if err != nil {
		return nil, err
	}
	id := req.GetKeyStreamId()
	app, ok, _ := k.streams.App(id)
	if !ok || !slices.Contains(app.Connected, caller) {
		return nil, status.Errorf(codes.NotFound, "%s has no open key stream %q here", caller, id)
	}
	if err := k.streams.Connect(ctx, id, caller, false); err != nil {
		return nil, k.toStatus(ctx, unavailable(err.Error()))
	}
	k.c004.mu.Lock()
	delete(k.c004.m, [2]string{id, caller})
	k.c004.mu.Unlock()
	k.logger.InfoContext(ctx, "ETSI 004 stream closed", "key_stream_id", id, "sae", caller)
	return &qkdv1.CloseStreamResponse{Status: Status004Success}, nil
}
