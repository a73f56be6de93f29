// Package keystore is the KMM's Key Store, App Store and Metric Store: keys,
// key streams and counters in one embedded transactional store on disk
// (bbolt), every key sealed with AES-256-GCM under the node key-encryption key.
//
// A key's life is a sequence of transactions, each one durable before it is
// acknowledged to anyone:
//
//	AddToPool        driver → unallocated pool of its link
//	Reserve/Commit   (Master KMM) pool → pending batch → stream, around the
//	                 Synchronizer's call to the Slave KMM
//	Apply            (Slave KMM) pool → stream, idempotent per batch
//	TakeNext/TakeIDs stream → served to the SAE, erased in the same transaction
//	Expire           pool or stream → destroyed when its lifetime ends
//
// Writes go through one goroutine that commits every write waiting at that
// moment in one bbolt transaction (group commit), so concurrent SAE requests
// share an fsync instead of queueing for one each.
package keystore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/qkdnet/qkdnet/driver"
)

// Errors a caller can act on.
var (
	ErrNotEnoughKeys = errors.New("not enough keys")
	ErrUnknownKey    = errors.New("unknown key_ID")
	ErrUnknownStream = errors.New("unknown key stream")
	ErrCorrupt       = errors.New("key store record corrupt")
	ErrClosed        = errors.New("key store closed")
	// ErrInvalid marks a request the store refuses because of what it
	// asks (a peer KMM's batch or relay that cannot be right), not
	// because of the store's state; nothing was written.
	ErrInvalid = errors.New("invalid request")
)

// Top-level buckets. Per-link and per-stream data sit in sub-buckets named by
// the link or stream ID.
var (
	bucketPool    = []byte("pool")    // link → poolSeq → record
	bucketKeys    = []byte("keys")    // stream → seq → record
	bucketStreams = []byte("streams") // stream ID → JSON Stream
	bucketPending = []byte("pending") // batch ID → JSON pendingBatch (Master KMM)
	bucketApplied = []byte("applied") // batch ID → JSON appliedBatch (Slave KMM)
	bucketStats   = []byte("stats")   // counter name → uint64
	bucketLast    = []byte("last")    // link → key_IDs of the last batch the driver delivered
	bucketRelayed = []byte("relayed") // stream 0x00 seq → when a relayed key arrived (receiving end)
	bucketHistory = []byte("history") // unix nanoseconds → one statistics sample (Metric Store)
)

// QoS is what a key stream asks of the key allocation element.
type QoS struct {
	KeyRate   uint32 `json:"key_rate"`
	MaxBuffer uint32 `json:"max_buffer"`
	Priority  uint32 `json:"priority"`
	// TTL, if set, is how long (seconds) a key stays in the stream before
	// it is destroyed, when that is shorter than the store's key lifetime
	// (ETSI 015 app_qos ttl, ETSI 004 TTL).
	TTL uint32 `json:"ttl,omitempty"`
}

// Stream is a key delivery service (KDS): keys from MasterSAE to SlaveSAE over
// Link. The App Store holds one per SAE pair and direction.
type Stream struct {
	ID        string `json:"id"`
	MasterSAE string `json:"master_sae"`
	SlaveSAE  string `json:"slave_sae"`
	Link      string `json:"link"`
	QoS       QoS    `json:"qos"`
	// NextSeq is the sequence number the Master KMM gives the next key it
	// allocates to the stream.
	NextSeq uint64 `json:"next_seq"`
	// FirstSeq is where a new stream's sequence numbers start: 0, or
	// generation<<40 for a stream of a rerouted path, so that no two
	// generations of a key stream share a sequence number.
	FirstSeq uint64 `json:"first_seq,omitempty"`
	// Draining marks a stream of an earlier path of a rerouted key stream:
	// it is never allocated keys by the cycle, only on demand (the pads a
	// relay of its remaining keys needs).
	Draining bool `json:"draining,omitempty"`
}

// Options tune a Store.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger gets structured logs; nil discards them.
	Logger *slog.Logger
	// NoSync skips fsync. Only for benchmarks of something else; a node
	// running with it loses acknowledged keys on power loss.
	NoSync bool
}

// Store is the node's key store.
type Store struct {
	db     *bolt.DB
	seal   *sealer
	now    func() time.Time
	logger *slog.Logger

	ops       chan *op
	closing   chan struct{}
	stopped   chan struct{} // closed when the writer has exited
	writerWG  sync.WaitGroup
	closeOnce sync.Once

	mu       sync.Mutex // guards the fields below, the in-memory mirror of committed state
	pool     map[string]int
	inStream map[string]int
	streams  map[string]Stream
	counters map[string]uint64
	changed  chan struct{} // closed and replaced whenever pool or stream sizes change

	// txCounters are the counter deltas of the transaction being built;
	// only the writer goroutine touches them.
	txCounters map[string]uint64
	txAfter    []func()

	// The serve log (servelog.go): serving writes there, not to bbolt.
	log          *serveLog
	serveOps     chan *serveOp
	serveStopped chan struct{}
	// tombs are the stream keys served (or being served) and not yet
	// deleted from bbolt by a checkpoint: every read skips them.
	tombMu sync.RWMutex
	tombs  map[string]map[uint64]struct{}
	// heads are where TakeNext starts to scan a stream: every key below
	// is tombstoned or gone. Guarded by tombMu; headGen counts lowerings.
	heads   map[string]uint64
	headGen map[string]uint64

	// commits and committedOps count group commits and the ops they held.
	commits, committedOps, commitNanos atomic.Uint64
	// serveGroups, servedOps and serveNanos do the same for the serve log.
	serveGroups, servedOps, serveNanos atomic.Uint64
}

// Open opens (creating if needed) the store in dir: dir/kek holds the node
// key-encryption key and dir/keys.db the keys, both mode 0600.
func Open(dir string, opts Options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	kek, err := loadKEK(filepath.Join(dir, "kek"), filepath.Join(dir, "keys.db"))
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(filepath.Join(dir, "keys.db"), 0o600, &bolt.Options{
		Timeout: 5 * time.Second,
		NoSync:  opts.NoSync,
		// The freelist is rebuilt by scanning the file when it is opened
		// instead of being written with every commit, as etcd, containerd
		// and Vault run bbolt: a commit writes fewer pages and the keys are
		// as durable as before (the data and meta pages are still synced).
		// A map freelist stays fast as the file grows.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("open key store: %w", err)
	}
	s := &Store{
		db:       db,
		seal:     newSealer(kek),
		now:      opts.Now,
		logger:   opts.Logger,
		ops:      make(chan *op, 1024),
		closing:  make(chan struct{}),
		stopped:  make(chan struct{}),
		pool:     map[string]int{},
		inStream: map[string]int{},
		streams:  map[string]Stream{},
		counters: map[string]uint64{},
		changed:  make(chan struct{}),

		serveOps:     make(chan *serveOp, 1024),
		serveStopped: make(chan struct{}),
		tombs:        map[string]map[uint64]struct{}{},
		heads:        map[string]uint64{},
		headGen:      map[string]uint64{},
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if err := s.openServeLog(dir); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.load(); err != nil {
		s.log.close()
		db.Close()
		return nil, err
	}
	s.writerWG.Add(2)
	go s.writer()
	go s.serveWriter()
	return s, nil
}

// load creates the buckets and mirrors sizes, streams and counters in memory.
func (s *Store) load() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPool, bucketKeys, bucketStreams, bucketPending, bucketApplied, bucketStats, bucketLast, bucketRelayed, bucketHistory, bucketRevoked} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketPool).ForEachBucket(func(k []byte) error {
			s.pool[string(k)] = tx.Bucket(bucketPool).Bucket(k).Stats().KeyN
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bucketKeys).ForEachBucket(func(k []byte) error {
			s.inStream[string(k)] = tx.Bucket(bucketKeys).Bucket(k).Stats().KeyN
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bucketStreams).ForEach(func(k, v []byte) error {
			var st Stream
			if err := json.Unmarshal(v, &st); err != nil {
				return fmt.Errorf("stream %q: %w", k, ErrCorrupt)
			}
			s.streams[st.ID] = st
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketStats).ForEach(func(k, v []byte) error {
			if len(v) == 8 {
				s.counters[string(k)] = binary.BigEndian.Uint64(v)
			}
			return nil
		})
	})
}

// Close stops the writer and closes the database.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closing)
		s.writerWG.Wait()
		s.log.close()
		err = s.db.Close()
		s.seal.wipe()
	})
	return err
}

// Path is the database file, for tests that inspect what is on disk.
func (s *Store) Path() string { return s.db.Path() }

// ---- group commit ----

type op struct {
	fn   func(*bolt.Tx) error
	done chan error
}

// rejected marks an error returned by an op before it wrote anything, so the
// other ops of the same transaction can still commit.
type rejected struct{ err error }

func (r rejected) Error() string {
	if r.err == nil {
		return "rejected"
	}
	return r.err.Error()
}
func (r rejected) Unwrap() error { return r.err }

func reject(err error) error { return rejected{err} }

// update runs fn in a write transaction shared with whatever other writes are
// waiting, and returns once that transaction is durable (or fn's error).
// fn may run more than once; it must return reject(err) if it fails before
// writing anything, and any other error aborts the shared transaction (then
// every op is rerun alone).
func (s *Store) update(fn func(*bolt.Tx) error) error {
	o := &op{fn: fn, done: make(chan error, 1)}
	select {
	case s.ops <- o:
	case <-s.closing:
		return ErrClosed
	}
	var err error
	select {
	case err = <-o.done:
	case <-s.stopped:
		// The writer exited; it answered every op it dequeued, so an op
		// with no answer now was queued too late and never ran.
		select {
		case err = <-o.done:
		default:
			return ErrClosed
		}
	}
	var r rejected
	if errors.As(err, &r) {
		return r.err
	}
	return err
}

// maxGroup bounds the writes in one transaction so one commit stays short.
const maxGroup = 256

// nextGroup waits for the first op queued on ops and takes the ones queued
// behind it, up to maxGroup, into batch[:0]: one group commit. Once closing
// is closed it refuses whatever is still queued and reports false.
func nextGroup[T any](ops <-chan T, closing <-chan struct{}, batch []T, refuse func(T)) ([]T, bool) {
	var first T
	select {
	case first = <-ops:
	case <-closing:
		for {
			select {
			case o := <-ops:
				refuse(o)
			default:
				return batch[:0], false
			}
		}
	}
	batch = append(batch[:0], first)
	for len(batch) < maxGroup {
		select {
		case o := <-ops:
			batch = append(batch, o)
		default:
			return batch, true
		}
	}
	return batch, true
}

func (s *Store) writer() {
	defer s.writerWG.Done()
	defer close(s.stopped)
	batch := make([]*op, 0, maxGroup)
	for {
		var ok bool
		if batch, ok = nextGroup(s.ops, s.closing, batch, func(o *op) { o.done <- ErrClosed }); !ok {
			return
		}
		s.commit(batch)
	}
}

func (s *Store) commit(batch []*op) {
	t0 := time.Now()
	defer func() { s.commitNanos.Add(uint64(time.Since(t0))) }()
	results := make([]error, len(batch))
	err := s.db.Update(func(tx *bolt.Tx) error {
		s.beginTx()
		for i, o := range batch {
			err := o.fn(tx)
			var r rejected
			if err != nil && !errors.As(err, &r) {
				return err
			}
			results[i] = err
		}
		return s.finishTx(tx)
	})
	if err == nil {
		s.commits.Add(1)
		s.committedOps.Add(uint64(len(batch)))
		for i, o := range batch {
			o.done <- results[i]
		}
		return
	}
	if len(batch) == 1 {
		batch[0].done <- err
		return
	}
	// One op failed after writing: the shared transaction rolled back, so run
	// each alone and give each its own answer.
	for _, o := range batch {
		o.done <- s.db.Update(func(tx *bolt.Tx) error {
			s.beginTx()
			if err := o.fn(tx); err != nil {
				return err
			}
			return s.finishTx(tx)
		})
	}
}

// ---- in-memory mirror, updated only after a commit ----

// afterCommit runs f under s.mu once the transaction the calling op runs in
// has committed, and then signals Changed. Only ops call it.
func (s *Store) afterCommit(_ *bolt.Tx, f func()) {
	s.txAfter = append(s.txAfter, f)
}

// lowerHead makes TakeNext scan stream from seq on, if it did not already:
// keys were added there.
func (s *Store) lowerHead(stream string, seq uint64) {
	s.tombMu.Lock()
	if h, ok := s.heads[stream]; ok && seq < h {
		s.heads[stream] = seq
		s.headGen[stream]++
	}
	s.tombMu.Unlock()
}

// WriteStats counts the store's group commits, for metrics.
type WriteStats struct {
	// Commits are bbolt transactions, Ops the writes they held, CommitTime
	// the time spent running and committing them.
	Commits, Ops uint64
	CommitTime   time.Duration
	// ServeGroups are serve log writes (each one fdatasync), Serves the
	// requests they held, ServeTime the time spent on them.
	ServeGroups, Serves uint64
	ServeTime           time.Duration
}

// WriteStats returns the counts since Open.
func (s *Store) WriteStats() WriteStats {
	return WriteStats{
		Commits: s.commits.Load(), Ops: s.committedOps.Load(), CommitTime: time.Duration(s.commitNanos.Load()),
		ServeGroups: s.serveGroups.Load(), Serves: s.servedOps.Load(), ServeTime: time.Duration(s.serveNanos.Load()),
	}
}

// Changed returns a channel that is closed the next time pool or stream sizes
// change; callers waiting for room or for keys select on it.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// PoolCount is the number of unallocated keys of a link.
func (s *Store) PoolCount(link string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool[link]
}

// StreamCount is the number of allocated, not yet served keys of a stream.
func (s *Store) StreamCount(streamID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inStream[streamID]
}

// Counters returns a copy of every counter of the Metric Store.
func (s *Store) Counters() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(s.counters))
	for k, v := range s.counters {
		out[k] = v
	}
	return out
}

// Counter names. Each step of a key's life adds to one of these, in the same
// transaction as the step.
func linkCounter(link, what string) string     { return "link/" + link + "/" + what }
func streamCounter(stream, what string) string { return "stream/" + stream + "/" + what }

// LinkCounter is the name of a link's counter in Counters ("supplied",
// "allocated", "discarded", "expired").
func LinkCounter(link, what string) string { return linkCounter(link, what) }

// StreamCounter is the name of a stream's counter in Counters ("allocated",
// "delivered_enc", "delivered_dec", "expired", ...).
func StreamCounter(stream, what string) string { return streamCounter(stream, what) }

// ParseCounter splits a counter name into scope ("link" or "stream"), the
// link or stream ID, and what is counted.
func ParseCounter(name string) (scope, id, what string, ok bool) {
	for i := 0; i < len(name); i++ {
		if name[i] == '/' {
			scope = name[:i]
			rest := name[i+1:]
			for j := len(rest) - 1; j >= 0; j-- {
				if rest[j] == '/' {
					return scope, rest[:j], rest[j+1:], true
				}
			}
			return "", "", "", false
		}
	}
	return "", "", "", false
}

// add counts deltas in the transaction the calling op runs in. Only ops
// (which run on the writer goroutine) call it; the counters of all the ops of
// one transaction are written once, when the transaction ends.
func (s *Store) add(_ *bolt.Tx, deltas map[string]uint64) error {
	for name, d := range deltas {
		s.count(name, d)
	}
	return nil
}

// count adds d to counter name in the current transaction.
func (s *Store) count(name string, d uint64) {
	if d != 0 {
		s.txCounters[name] += d
	}
}

func (s *Store) beginTx() {
	if s.txCounters == nil {
		s.txCounters = map[string]uint64{}
	}
	clear(s.txCounters)
	clear(s.txAfter)
	s.txAfter = s.txAfter[:0]
}

// finishTx writes the transaction's counters and, once it commits, mirrors
// them and the ops' changes (afterCommit) in memory and signals Changed.
func (s *Store) finishTx(tx *bolt.Tx) error {
	if len(s.txCounters) == 0 && len(s.txAfter) == 0 {
		return nil
	}
	b := tx.Bucket(bucketStats)
	deltas := make(map[string]uint64, len(s.txCounters))
	for name, d := range s.txCounters {
		deltas[name] = d
		var cur uint64
		if v := b.Get([]byte(name)); len(v) == 8 {
			cur = binary.BigEndian.Uint64(v)
		}
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], cur+d)
		if err := b.Put([]byte(name), buf[:]); err != nil {
			return err
		}
	}
	after := append([]func(){}, s.txAfter...)
	tx.OnCommit(func() {
		s.mu.Lock()
		for name, d := range deltas {
			s.counters[name] += d
		}
		for _, f := range after {
			f()
		}
		var ch chan struct{}
		if len(after) > 0 {
			ch = s.changed
			s.changed = make(chan struct{})
		}
		s.mu.Unlock()
		if ch != nil {
			close(ch)
		}
	})
	return nil
}

// ---- records ----

// record is a stored key: when it was supplied, how often the peer KMM did not
// know it, its QKD key_ID and the sealed bytes.
type record struct {
	created int64 // unix nanoseconds
	rejects uint8
	keyID   string
	sealed  []byte
}

func (r record) encode() []byte {
	b := make([]byte, 0, 8+1+binary.MaxVarintLen64+len(r.keyID)+len(r.sealed))
	b = binary.BigEndian.AppendUint64(b, uint64(r.created))
	b = append(b, r.rejects)
	b = binary.AppendUvarint(b, uint64(len(r.keyID)))
	b = append(b, r.keyID...)
	return append(b, r.sealed...)
}

// decodeRecord copies out of v, which bbolt owns only for the transaction.
func decodeRecord(v []byte) (record, error) {
	if len(v) < 10 {
		return record{}, ErrCorrupt
	}
	r := record{created: int64(binary.BigEndian.Uint64(v)), rejects: v[8]}
	n, w := binary.Uvarint(v[9:])
	if w <= 0 || uint64(len(v)-9-w) < n {
		return record{}, ErrCorrupt
	}
	off := 9 + w
	r.keyID = string(v[off : off+int(n)])
	r.sealed = append([]byte(nil), v[off+int(n):]...)
	return r, nil
}

func u64(n uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	return b[:]
}

// ---- pool ----

// AddToPool seals keys and appends them, in order, to the link's pool. A
// driver may re-deliver its last batch after a crash (the emulator does when
// an acknowledgement was lost): keys of the previous batch are skipped, so a
// key that already left the pool never comes back. The caller keeps
// ownership of the key bytes.
//
// The pool is keyed by a local sequence number, not by key_ID: appends touch
// one B+tree page, where random UUID keys would rewrite a page per key.
func (s *Store) AddToPool(link string, keys []driver.Key) error {
	if len(keys) == 0 {
		return nil
	}
	now := s.now().UnixNano()
	// Every record is sealed into one buffer, sized up front so that no
	// record moves (bbolt keeps the slices until the commit writes them).
	size := 0
	for i, k := range keys {
		if k.ID == "" || len(k.Bytes) == 0 {
			return fmt.Errorf("driver key %d of link %s has an empty ID or no bytes", i, link)
		}
		size += 8 + 1 + binary.MaxVarintLen64 + len(k.ID) + sealOverhead + len(k.Bytes)
	}
	buf := make([]byte, 0, size)
	records := make([][]byte, len(keys))
	for i, k := range keys {
		start := len(buf)
		buf = binary.BigEndian.AppendUint64(buf, uint64(now))
		buf = append(buf, 0)
		buf = appendString(buf, k.ID)
		var err error
		buf, err = s.seal.sealTo(buf, k.ID, k.Bytes)
		if err != nil {
			return err
		}
		records[i] = buf[start:len(buf):len(buf)]
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	lastBatch := encodeIDs(ids)
	// A key_ID repeated within the batch is stored once.
	index := make(map[string]int, len(keys))
	dup := make([]bool, len(keys))
	for i, k := range keys {
		if _, ok := index[k.ID]; ok {
			dup[i] = true
			continue
		}
		index[k.ID] = i
	}
	skip := make([]bool, len(keys))
	return s.update(func(tx *bolt.Tx) error {
		pool, err := tx.Bucket(bucketPool).CreateBucketIfNotExists([]byte(link))
		if err != nil {
			return err
		}
		pool.FillPercent = appendFill
		copy(skip, dup)
		if v := tx.Bucket(bucketLast).Get([]byte(link)); v != nil {
			// An unreadable last batch only loses the skip of a re-delivery.
			_ = eachID(v, func(id []byte) {
				if i, ok := index[string(id)]; ok {
					skip[i] = true
				}
			})
		}
		added := 0
		for i := range keys {
			if skip[i] {
				continue
			}
			seq, err := pool.NextSequence()
			if err != nil {
				return err
			}
			if err := pool.Put(u64(seq), records[i]); err != nil {
				return err
			}
			added++
		}
		if err := tx.Bucket(bucketLast).Put([]byte(link), lastBatch); err != nil {
			return err
		}
		s.afterCommit(tx, func() { s.pool[link] += added })
		s.count(linkCounter(link, "supplied"), uint64(added))
		return nil
	})
}

// appendFill is the fill percent of buckets keyed by increasing sequence
// numbers (pools and streams): they grow at the end, so their pages are
// packed full instead of split in half.
const appendFill = 1.0

// ---- streams (App Store) ----

// PutStream creates a stream or updates its QoS and Draining; an existing
// stream keeps its link and sequence counter.
func (s *Store) PutStream(st Stream) (Stream, error) {
	out, err := s.PutStreams([]Stream{st})
	if err != nil {
		return Stream{}, err
	}
	return out[0], nil
}

// PutStreams is PutStream for several streams in one transaction (one
// fsync for a whole pushed configuration); it returns them as stored.
func (s *Store) PutStreams(sts []Stream) ([]Stream, error) {
	var out []Stream
	err := s.update(func(tx *bolt.Tx) error {
		out = out[:0]
		for _, st := range sts {
			got, err := s.putStream(tx, st)
			if err != nil {
				return err
			}
			out = append(out, got)
		}
		return nil
	})
	return out, err
}

func (s *Store) putStream(tx *bolt.Tx, st Stream) (Stream, error) {
	if st.ID == "" || st.Link == "" {
		return Stream{}, reject(errors.New("stream needs an ID and a link"))
	}
	b := tx.Bucket(bucketStreams)
	if v := b.Get([]byte(st.ID)); v != nil {
		var old Stream
		if err := json.Unmarshal(v, &old); err != nil {
			return Stream{}, ErrCorrupt
		}
		if old.QoS == st.QoS && old.Draining == st.Draining {
			return old, nil
		}
		old.QoS, old.Draining = st.QoS, st.Draining
		st = old
	} else {
		st.NextSeq = st.FirstSeq
	}
	return st, s.writeStream(tx, st)
}

func (s *Store) writeStream(tx *bolt.Tx, st Stream) error {
	v, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketStreams).Put([]byte(st.ID), v); err != nil {
		return err
	}
	s.afterCommit(tx, func() { s.streams[st.ID] = st })
	return nil
}

// Stream returns a stream of the App Store.
func (s *Store) Stream(id string) (Stream, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[id]
	return st, ok
}

// Streams returns every stream of the App Store.
func (s *Store) Streams() []Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Stream, 0, len(s.streams))
	for _, st := range s.streams {
		out = append(out, st)
	}
	return out
}

// ---- allocation, Master KMM side ----

// Pending is a batch of keys the Master KMM took from a pool for a stream and
// has not yet heard the Slave KMM acknowledge.
type Pending struct {
	BatchID  string
	Link     string
	Stream   Stream
	FirstSeq uint64
	KeyIDs   []string
}

type pendingEntry struct {
	PoolSeq uint64 `json:"pool_seq"`
	Record  []byte `json:"record"`
}

type pendingBatch struct {
	BatchID  string         `json:"batch_id"`
	Link     string         `json:"link"`
	StreamID string         `json:"stream_id"`
	FirstSeq uint64         `json:"first_seq"`
	Entries  []pendingEntry `json:"entries"`
}

// Reserve moves up to n of the oldest keys of the stream's link pool into a
// pending batch and numbers them in the stream. Nothing is servable until
// Commit. It fails with ErrNotEnoughKeys if the pool is empty.
func (s *Store) Reserve(streamID, batchID string, n int) (Pending, error) {
	var p Pending
	err := s.update(func(tx *bolt.Tx) error {
		p = Pending{}
		st, err := getStream(tx, streamID)
		if err != nil {
			return reject(err)
		}
		pool := tx.Bucket(bucketPool).Bucket([]byte(st.Link))
		if pool == nil || n <= 0 {
			return reject(ErrNotEnoughKeys)
		}
		if st.NextSeq+uint64(n) > maxSeq {
			return reject(fmt.Errorf("stream %s has used every sequence number; open a new stream", streamID))
		}
		if tx.Bucket(bucketPending).Get([]byte(batchID)) != nil {
			return reject(fmt.Errorf("batch %s is already pending", batchID))
		}
		pb := pendingBatch{BatchID: batchID, Link: st.Link, StreamID: streamID, FirstSeq: st.NextSeq}
		want := min(n, s.pool[st.Link]+1, 1<<16)
		pb.Entries = make([]pendingEntry, 0, want)
		p.KeyIDs = make([]string, 0, want)
		// Copy the oldest records out first (bbolt's values live only until
		// the page they sit on changes), then delete them in one sweep.
		c := pool.Cursor()
		var keys [][]byte
		for k, v := c.First(); k != nil && len(pb.Entries) < n; k, v = c.Next() {
			id, err := recordKeyID(v)
			if err != nil {
				return err
			}
			pb.Entries = append(pb.Entries, pendingEntry{PoolSeq: binary.BigEndian.Uint64(k), Record: v})
			p.KeyIDs = append(p.KeyIDs, string(id))
			keys = append(keys, k)
		}
		if len(pb.Entries) == 0 {
			return reject(ErrNotEnoughKeys)
		}
		v := encodePending(&pb)
		for _, k := range keys {
			if err := pool.Delete(k); err != nil {
				return err
			}
		}
		st.NextSeq += uint64(len(pb.Entries))
		if err := s.writeStream(tx, st); err != nil {
			return err
		}
		if err := tx.Bucket(bucketPending).Put([]byte(batchID), v); err != nil {
			return err
		}
		taken := len(pb.Entries)
		s.afterCommit(tx, func() { s.pool[st.Link] -= taken })
		p.BatchID, p.Link, p.Stream, p.FirstSeq = batchID, st.Link, st, pb.FirstSeq
		return nil
	})
	return p, err
}

// PendingBatches lists the batches awaiting the Slave KMM's answer, so they
// can be sent again after a failure or a restart.
func (s *Store) PendingBatches() ([]Pending, error) {
	var out []Pending
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPending).ForEach(func(k, v []byte) error {
			pb, err := decodePending(v)
			if err != nil {
				return err
			}
			st, err := getStream(tx, pb.StreamID)
			if err != nil {
				return err
			}
			p := Pending{BatchID: pb.BatchID, Link: pb.Link, Stream: st, FirstSeq: pb.FirstSeq}
			for _, e := range pb.Entries {
				id, err := recordKeyID(e.Record)
				if err != nil {
					return err
				}
				p.KeyIDs = append(p.KeyIDs, string(id))
			}
			out = append(out, p)
			return nil
		})
	})
	return out, err
}

// Commit settles a pending batch after the Slave KMM answered: keys it holds
// become servable in the stream; keys it does not know go back to their place
// in the pool (the peer's driver may be a moment behind) until they have been
// refused maxRejects times, and are then destroyed. It returns how many keys
// became servable.
func (s *Store) Commit(batchID string, unknown []string, maxRejects int) (int, error) {
	var allocated int
	err := s.update(func(tx *bolt.Tx) error {
		allocated = 0
		v := tx.Bucket(bucketPending).Get([]byte(batchID))
		if v == nil {
			return reject(fmt.Errorf("batch %s is not pending", batchID))
		}
		pb, err := decodePending(v)
		if err != nil {
			return err
		}
		unk := make(map[string]bool, len(unknown))
		for _, id := range unknown {
			unk[id] = true
		}
		keys, err := tx.Bucket(bucketKeys).CreateBucketIfNotExists([]byte(pb.StreamID))
		if err != nil {
			return err
		}
		keys.FillPercent = appendFill
		pool, err := tx.Bucket(bucketPool).CreateBucketIfNotExists([]byte(pb.Link))
		if err != nil {
			return err
		}
		pool.FillPercent = appendFill
		back, discarded := 0, 0
		for i, e := range pb.Entries {
			id, err := recordKeyID(e.Record)
			if err != nil {
				return err
			}
			if len(unk) == 0 || !unk[string(id)] {
				// e.Record points into the pending value: like
				// every value bbolt returns, it stays valid for the
				// whole transaction, also after the Delete below.
				if err := keys.Put(u64(pb.FirstSeq+uint64(i)), e.Record); err != nil {
					return err
				}
				allocated++
				continue
			}
			r, err := decodeRecord(e.Record)
			if err != nil {
				return err
			}
			if r.rejects < 255 {
				r.rejects++
			}
			if int(r.rejects) >= min(maxRejects, 255) {
				discarded++
				continue
			}
			if err := pool.Put(u64(e.PoolSeq), r.encode()); err != nil {
				return err
			}
			back++
		}
		if err := tx.Bucket(bucketPending).Delete([]byte(batchID)); err != nil {
			return err
		}
		n := allocated
		s.afterCommit(tx, func() {
			s.pool[pb.Link] += back
			s.inStream[pb.StreamID] += n
			s.lowerHead(pb.StreamID, pb.FirstSeq)
		})
		return s.add(tx, map[string]uint64{
			linkCounter(pb.Link, "allocated"):       uint64(n),
			linkCounter(pb.Link, "discarded"):       uint64(discarded),
			streamCounter(pb.StreamID, "allocated"): uint64(n),
		})
	})
	return allocated, err
}

// ---- allocation, Slave KMM side ----

// applyScanSlack is how far past the named keys Apply looks into the pool
// for keys that arrived out of step with the Master's pool.
const applyScanSlack = 8192

type appliedBatch struct {
	At      int64    `json:"at"`
	Unknown []string `json:"unknown"`
}

// Apply mirrors the Master KMM's allocation: each named key moves from the
// link pool into the stream at firstSeq+i. It returns the key IDs the pool
// does not hold. A batch ID seen before gets the first answer again, so the
// Master may resend after losing the reply.
func (s *Store) Apply(batchID string, st Stream, firstSeq uint64, keyIDs []string) ([]string, error) {
	var unknown []string
	pos := make(map[string]int, len(keyIDs))
	for i, id := range keyIDs {
		pos[id] = i
	}
	err := s.update(func(tx *bolt.Tx) error {
		unknown = nil
		applied := tx.Bucket(bucketApplied)
		if v := applied.Get([]byte(batchID)); v != nil {
			ab, err := decodeApplied(v)
			if err != nil {
				return err
			}
			unknown = ab.Unknown
			return reject(nil)
		}
		if firstSeq > maxSeq || uint64(len(keyIDs)) > maxSeq-firstSeq {
			return reject(fmt.Errorf("%w: sequence numbers out of range", ErrInvalid))
		}
		have, err := getStream(tx, st.ID)
		switch {
		case errors.Is(err, ErrUnknownStream):
			if _, err := s.putStream(tx, st); err != nil {
				return err
			}
		case err != nil:
			return err
		case have.Link != st.Link:
			return reject(fmt.Errorf("%w: stream %s runs over link %s, not %s", ErrInvalid, st.ID, have.Link, st.Link))
		}
		keys, err := tx.Bucket(bucketKeys).CreateBucketIfNotExists([]byte(st.ID))
		if err != nil {
			return err
		}
		keys.FillPercent = appendFill
		// Both ends of a link get keys in the same order and the Master
		// allocates from the head of its pool, so the named keys sit at the
		// head of this pool too. Scan from the head; keys the Master does not
		// have (a batch it lost in a crash) are stepped over and expire.
		found := make([]bool, len(keyIDs))
		moved := 0
		if pool := tx.Bucket(bucketPool).Bucket([]byte(st.Link)); pool != nil {
			pool.FillPercent = appendFill
			budget := 2*len(keyIDs) + applyScanSlack
			var take [][]byte
			c := pool.Cursor()
			for k, v := c.First(); k != nil && budget > 0 && moved+len(take) < len(keyIDs); k, v = c.Next() {
				budget--
				id, err := recordKeyID(v)
				if err != nil {
					return err
				}
				i, ok := pos[string(id)]
				if !ok || found[i] {
					continue
				}
				found[i] = true
				seq := u64(firstSeq + uint64(i))
				if keys.Get(seq) != nil {
					return fmt.Errorf("stream %s already holds sequence %d: %w", st.ID, firstSeq+uint64(i), ErrCorrupt)
				}
				if err := keys.Put(seq, v); err != nil {
					return err
				}
				take = append(take, k)
			}
			for _, k := range take {
				if err := pool.Delete(k); err != nil {
					return err
				}
			}
			moved = len(take)
		}
		for i, id := range keyIDs {
			if !found[i] {
				unknown = append(unknown, id)
			}
		}
		if err := applied.Put([]byte(batchID), encodeApplied(appliedBatch{At: s.now().UnixNano(), Unknown: unknown})); err != nil {
			return err
		}
		s.afterCommit(tx, func() {
			s.pool[st.Link] -= moved
			s.inStream[st.ID] += moved
			s.lowerHead(st.ID, firstSeq)
		})
		return s.add(tx, map[string]uint64{
			linkCounter(st.Link, "allocated"): uint64(moved),
			streamCounter(st.ID, "allocated"): uint64(moved),
		})
	})
	return unknown, err
}

func getStream(tx *bolt.Tx, id string) (Stream, error) {
	v := tx.Bucket(bucketStreams).Get([]byte(id))
	if v == nil {
		return Stream{}, fmt.Errorf("%w %q", ErrUnknownStream, id)
	}
	var st Stream
	if err := json.Unmarshal(v, &st); err != nil {
		return Stream{}, ErrCorrupt
	}
	return st, nil
}

// ---- serving ----

// Served is a key handed to an SAE. The caller zeroes Key when done.
type Served struct {
	KeyID string
	Key   []byte
}

type part struct {
	seq uint64
	rec record
}

// TakeNext serves the master SAE: it assembles n keys of sizeBits each from
// the oldest keys of the stream, erases what it used, and returns the keys
// with their served key_IDs. Either all n keys are served or none
// (ErrNotEnoughKeys).
func (s *Store) TakeNext(streamID string, n, sizeBits int) ([]Served, error) {
	if n <= 0 || sizeBits <= 0 || sizeBits%8 != 0 || sizeBits > MaxKeyBits {
		return nil, fmt.Errorf("bad request: %d keys of %d bits", n, sizeBits)
	}
	size := sizeBits / 8
	counter := streamCounter(streamID, "delivered_enc")
	var groups [][]part
	fromStart := false
	take := func(tx *bolt.Tx) (serveRecord, error) {
		groups = groups[:0]
		b := tx.Bucket(bucketKeys).Bucket([]byte(streamID))
		if b == nil {
			return serveRecord{}, ErrNotEnoughKeys
		}
		s.tombMu.RLock()
		gone := s.goneFunc(streamID)
		head, gen := s.heads[streamID], s.headGen[streamID]
		if fromStart {
			// Not enough keys from the head: look again from the first
			// key, in case keys were put below the head.
			head = 0
		}
		c := b.Cursor()
		var cur []part
		have := 0
		var next uint64
		// firstLeft is the first key seen that this request leaves: the
		// next scan starts there.
		firstLeft, left := uint64(0), false
		var start [8]byte
		binary.BigEndian.PutUint64(start[:], head)
		for k, v := c.Seek(start[:]); k != nil && len(groups) < n; k, v = c.Next() {
			seq := binary.BigEndian.Uint64(k)
			if gone(seq) {
				continue
			}
			if len(cur) > 0 && seq != next {
				// A gap (a key the peer did not know, one that expired,
				// or one already served) breaks the run: start the key
				// again after it.
				if !left {
					firstLeft, left = cur[0].seq, true
				}
				cur, have = nil, 0
			}
			r, err := decodeRecord(v)
			if err != nil {
				s.tombMu.RUnlock()
				return serveRecord{}, err
			}
			cur = append(cur, part{seq: seq, rec: r})
			have += len(r.sealed) - sealOverhead
			next = seq + 1
			if have >= size {
				groups = append(groups, cur)
				cur, have = nil, 0
			}
		}
		s.tombMu.RUnlock()
		if len(groups) < n {
			return serveRecord{}, ErrNotEnoughKeys
		}
		rec := serveRecord{stream: streamID, counter: counter, count: uint64(n)}
		for _, g := range groups {
			for _, p := range g {
				rec.seqs = append(rec.seqs, p.seq)
			}
		}
		newHead := rec.seqs[len(rec.seqs)-1] + 1
		if left {
			newHead = firstLeft
		}
		s.tombMu.Lock()
		if s.headGen[streamID] == gen && !fromStart {
			s.heads[streamID] = max(s.heads[streamID], newHead)
		}
		s.tombMu.Unlock()
		return rec, nil
	}
	err := s.serve(func(tx *bolt.Tx) (serveRecord, error) {
		fromStart = false
		rec, err := take(tx)
		if errors.Is(err, ErrNotEnoughKeys) {
			fromStart = true
			rec, err = take(tx)
		}
		return rec, err
	})
	if err != nil {
		return nil, err
	}
	return s.assemble(streamID, groups, size, nil)
}

// assemble unseals and concatenates each group's parts into a key of size
// bytes. ids, if given, are the served key IDs; else they are computed.
func (s *Store) assemble(streamID string, groups [][]part, size int, ids []string) ([]Served, error) {
	out := make([]Served, 0, len(groups))
	for i, g := range groups {
		total := 0
		for _, p := range g {
			total += len(p.rec.sealed) - dekIDSize - 12 - 16
		}
		// Sized up front: a growing append would leave plaintext behind in
		// the buffer it outgrew.
		key := make([]byte, 0, max(total, size))
		for _, p := range g {
			pt, err := s.seal.open(p.rec.keyID, p.rec.sealed)
			if err != nil {
				for _, sv := range out {
					clear(sv.Key)
				}
				clear(key)
				return nil, err
			}
			key = append(key, pt...)
			clear(pt)
		}
		clear(key[size:cap(key)])
		var id string
		if ids != nil {
			id = ids[i]
		} else {
			id = encodeKeyID(streamID, g[0].rec.keyID, g[0].seq, size*8)
		}
		out = append(out, Served{KeyID: id, Key: key[:size]})
	}
	return out, nil
}

// KeyError says which requested key_ID is wrong and why.
type KeyError struct {
	KeyID string
	Err   error
}

func (e *KeyError) Error() string { return fmt.Sprintf("key_ID %s: %v", e.KeyID, e.Err) }
func (e *KeyError) Unwrap() error { return e.Err }

// TakeIDs serves the slave SAE: it finds each key_ID in the stream, erases
// its parts and returns the keys. Either all are served or none; the error is
// a *KeyError naming the first key_ID that is malformed, unknown to this
// stream (never issued, already delivered, or expired) or repeated.
func (s *Store) TakeIDs(streamID string, keyIDs []string) ([]Served, error) {
	if len(keyIDs) == 0 {
		return nil, errors.New("no key_ID requested")
	}
	parsed := make([]parsedKeyID, len(keyIDs))
	seen := make(map[string]bool, len(keyIDs))
	for i, id := range keyIDs {
		p, err := parseKeyID(id)
		if err != nil {
			return nil, &KeyError{KeyID: id, Err: err}
		}
		if seen[id] {
			return nil, &KeyError{KeyID: id, Err: errors.New("requested twice")}
		}
		seen[id] = true
		parsed[i] = p
	}
	counter := streamCounter(streamID, "delivered_dec")
	var groups [][]part
	err := s.serve(func(tx *bolt.Tx) (serveRecord, error) {
		groups = groups[:0]
		b := tx.Bucket(bucketKeys).Bucket([]byte(streamID))
		if b == nil {
			return serveRecord{}, &KeyError{KeyID: keyIDs[0], Err: ErrUnknownKey}
		}
		s.tombMu.RLock()
		defer s.tombMu.RUnlock()
		gone := s.goneFunc(streamID)
		claimed := make(map[uint64]bool, len(parsed))
		rec := serveRecord{stream: streamID, counter: counter, count: uint64(len(keyIDs))}
		sc := newSeqCursor(b)
		for i, p := range parsed {
			g, err := findParts(sc, p, streamID, gone)
			if err != nil {
				return serveRecord{}, &KeyError{KeyID: keyIDs[i], Err: err}
			}
			for _, pt := range g {
				if claimed[pt.seq] {
					return serveRecord{}, &KeyError{KeyID: keyIDs[i], Err: errors.New("overlaps another requested key")}
				}
				claimed[pt.seq] = true
				rec.seqs = append(rec.seqs, pt.seq)
			}
			groups = append(groups, g)
		}
		return rec, nil
	})
	if err != nil {
		return nil, err
	}
	// Sizes differ per key_ID; assemble one at a time.
	out := make([]Served, 0, len(groups))
	for i, g := range groups {
		sv, err := s.assemble(streamID, [][]part{g}, parsed[i].sizeBits/8, []string{keyIDs[i]})
		if err != nil {
			for _, o := range out {
				clear(o.Key)
			}
			return nil, err
		}
		out = append(out, sv[0])
	}
	return out, nil
}

// seqCursor reads a stream's keys by sequence number; reading the key after
// the last one read costs one step instead of a search from the root (the
// keys of one request usually follow each other).
type seqCursor struct {
	c   *bolt.Cursor
	at  uint64 // seq of the key the cursor is on, if on
	on  bool
	buf [8]byte
}

func newSeqCursor(b *bolt.Bucket) *seqCursor { return &seqCursor{c: b.Cursor()} }

// get returns the value of seq, or nil if the bucket does not hold it.
func (sc *seqCursor) get(seq uint64) []byte {
	if sc.on && seq == sc.at+1 {
		k, v := sc.c.Next()
		sc.on = k != nil && len(k) == 8 && binary.BigEndian.Uint64(k) == seq
		if sc.on {
			sc.at = seq
			return v
		}
		if k == nil || (len(k) == 8 && binary.BigEndian.Uint64(k) > seq) {
			return nil
		}
	}
	binary.BigEndian.PutUint64(sc.buf[:], seq)
	k, v := sc.c.Seek(sc.buf[:])
	sc.on = k != nil && len(k) == 8 && binary.BigEndian.Uint64(k) == seq && v != nil
	if !sc.on {
		return nil
	}
	sc.at = seq
	return v
}

// findParts reads the consecutive parts a served key ID names.
func findParts(sc *seqCursor, p parsedKeyID, streamID string, gone func(uint64) bool) ([]part, error) {
	size := p.sizeBits / 8
	var g []part
	have := 0
	for seq := p.seq; have < size; seq++ {
		if gone(seq) {
			return nil, ErrUnknownKey
		}
		v := sc.get(seq)
		if v == nil {
			return nil, ErrUnknownKey
		}
		r, err := decodeRecord(v)
		if err != nil {
			return nil, err
		}
		if len(g) == 0 && !p.matches(streamID, r.keyID) {
			return nil, ErrUnknownKey
		}
		g = append(g, part{seq: seq, rec: r})
		have += len(r.sealed) - dekIDSize - 12 - 16
	}
	return g, nil
}

// Holds reports whether a stream holds the key a served key_ID names, without
// serving it. The KMM uses it to tell an SAE asking for another SAE's key
// (401) from one asking for a key that does not exist (400).
func (s *Store) Holds(streamID, keyID string) bool {
	p, err := parseKeyID(keyID)
	if err != nil {
		return false
	}
	found := false
	for stale := true; stale; {
		stale = false
		s.db.View(func(tx *bolt.Tx) error {
			s.tombMu.RLock()
			defer s.tombMu.RUnlock()
			// A snapshot older than a checkpoint whose tombstones are
			// gone would show served keys: read a newer one.
			if stale = tx.ID() < s.log.dropped; stale {
				return nil
			}
			b := tx.Bucket(bucketKeys).Bucket([]byte(streamID))
			if b == nil {
				return nil
			}
			_, err := findParts(newSeqCursor(b), p, streamID, s.goneFunc(streamID))
			found = err == nil
			return nil
		})
	}
	return found
}

// IsPending reports whether a served key_ID names a key of a batch this
// (Master) KMM reserved for the stream and has not committed yet.
func (s *Store) IsPending(streamID, keyID string) bool {
	p, err := parseKeyID(keyID)
	if err != nil {
		return false
	}
	found := false
	s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPending).ForEach(func(_, v []byte) error {
			sid, first, n, err := pendingHeader(v)
			if err == nil && string(sid) == streamID && p.seq >= first && p.seq < first+uint64(n) {
				found = true
			}
			return nil
		})
	})
	return found
}

// ---- destruction ----

var errStop = errors.New("stop")

// Expire destroys every pool and stream key supplied more than lifetime ago,
// and forgets Apply answers older than that. Keys sit in supply order, so
// each scan stops at the first key still alive. It returns how many keys it
// destroyed.
func (s *Store) Expire(lifetime time.Duration) (int, error) {
	cutoff := s.now().Add(-lifetime).UnixNano()
	var destroyed int
	err := s.update(func(tx *bolt.Tx) error {
		destroyed = 0
		deltas := map[string]uint64{}
		poolGone := map[string]int{}
		streamGone := map[string]int{}
		// A pool is in supply order (keys refused by the peer go back to
		// their old place), so its scan stops at the first live key. A
		// stream is not: a refused key may be allocated after younger ones,
		// so every stream key is checked; streams are bounded by MaxBuffer.
		expire := func(b *bolt.Bucket, cutoff int64, ordered bool, gone func(uint64) bool, onKey func(keyID string)) error {
			var dead [][]byte
			err := b.ForEach(func(k, v []byte) error {
				if len(v) < 8 {
					return ErrCorrupt
				}
				if gone != nil && len(k) == 8 && gone(binary.BigEndian.Uint64(k)) {
					// Served: the serve log's checkpoint deletes it.
					return nil
				}
				if int64(binary.BigEndian.Uint64(v)) > cutoff {
					if ordered {
						return errStop
					}
					return nil
				}
				r, err := decodeRecord(v)
				if err != nil {
					return err
				}
				dead = append(dead, append([]byte(nil), k...))
				onKey(r.keyID)
				return nil
			})
			if err != nil && !errors.Is(err, errStop) {
				return err
			}
			for _, k := range dead {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}
		pools := tx.Bucket(bucketPool)
		if err := pools.ForEachBucket(func(link []byte) error {
			l := string(link)
			return expire(pools.Bucket(link), cutoff, true, nil, func(string) {
				poolGone[l]++
				deltas[linkCounter(l, "expired")]++
			})
		}); err != nil {
			return err
		}
		keys := tx.Bucket(bucketKeys)
		s.tombMu.RLock()
		defer s.tombMu.RUnlock()
		if err := keys.ForEachBucket(func(stream []byte) error {
			st := string(stream)
			// A stream with a TTL shorter than the lifetime expires sooner.
			c := cutoff
			if v := tx.Bucket(bucketStreams).Get(stream); v != nil {
				var rec Stream
				if json.Unmarshal(v, &rec) == nil && rec.QoS.TTL > 0 {
					c = max(c, s.now().Add(-time.Duration(rec.QoS.TTL)*time.Second).UnixNano())
				}
			}
			return expire(keys.Bucket(stream), c, false, s.goneFunc(st), func(string) {
				streamGone[st]++
				deltas[streamCounter(st, "expired")]++
			})
		}); err != nil {
			return err
		}
		// Forget the marks of relayed keys once the keys themselves would
		// have expired: a resend comes long before that.
		var oldMarks [][]byte
		if err := tx.Bucket(bucketRelayed).ForEach(func(k, v []byte) error {
			if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) < cutoff {
				oldMarks = append(oldMarks, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range oldMarks {
			if err := tx.Bucket(bucketRelayed).Delete(k); err != nil {
				return err
			}
		}
		if err := pruneRevoked(tx, cutoff); err != nil {
			return err
		}
		// Forget old idempotency answers: the Master resends a batch only
		// until it gets an answer, which is long before a key lifetime.
		var old [][]byte
		if err := tx.Bucket(bucketApplied).ForEach(func(k, v []byte) error {
			if at, err := appliedAt(v); err == nil && at < cutoff {
				old = append(old, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range old {
			if err := tx.Bucket(bucketApplied).Delete(k); err != nil {
				return err
			}
		}
		for _, n := range poolGone {
			destroyed += n
		}
		for _, n := range streamGone {
			destroyed += n
		}
		s.afterCommit(tx, func() {
			for l, n := range poolGone {
				s.pool[l] -= n
			}
			for st, n := range streamGone {
				s.inStream[st] -= n
			}
		})
		return s.add(tx, deltas)
	})
	return destroyed, err
}
