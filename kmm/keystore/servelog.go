package keystore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The serve log.
//
// Serving a key (TakeNext, TakeIDs) must erase it durably before the SAE gets
// it. A bbolt commit costs two fdatasyncs and a write of every page on the
// path to each changed leaf; under load that commit was most of an ETSI 014
// request's time. So serving does not write bbolt: it appends "these stream
// sequence numbers are gone" to a small log and makes that durable with one
// write and one fdatasync, shared by every serve waiting at that moment
// (group commit, as for bbolt writes). The keys are then tombstoned in
// memory: no read of the store sees them again. A checkpoint later deletes
// them from bbolt in one transaction, with their counters, and records which
// log segment it covered; Open replays every segment not yet checkpointed
// before anything else reads the store. A served key is therefore erased
// from the moment its log record is durable, crash or not, exactly as when
// it was deleted in the serving transaction; and a crash before that point
// loses, at worst, keys no SAE ever received.
//
// The log is two preallocated files used in turn, one segment at a time.
// Each file starts with a header naming its segment; each record carries a
// CRC over the segment number and its payload, so a record left in a file
// by an older segment, or torn by a crash, ends the replay of that file. A
// file is reused only once its previous segment is checkpointed.

const (
	logMagic      = "qkdnet served v1"
	logHeaderSize = len(logMagic) + 8
	// logFileSize is preallocated (written with zeros once) so that
	// appending does not change the file's size, which would cost every
	// fdatasync a journal commit.
	logFileSize = 4 << 20
	// checkpointBytes and checkpointEvery trigger a checkpoint: they bound
	// the tombstones kept in memory and skipped by TakeNext.
	checkpointBytes = 256 << 10
	checkpointEvery = 100 * time.Millisecond
)

var (
	crcTable      = crc32.MakeTable(crc32.Castagnoli)
	bucketServed  = []byte("served")     // "checkpoint" → last checkpointed log segment
	keyCheckpoint = []byte("checkpoint") // in bucketServed
)

func logPath(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("served-%d.log", i)) }

// serveRecord is what one serve erased and counted.
type serveRecord struct {
	stream  string
	counter string // counter name, e.g. stream/S/delivered_enc
	count   uint64
	seqs    []uint64
}

func (r *serveRecord) appendTo(dst []byte, seg uint64) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0) // length, CRC
	dst = appendString(dst, r.stream)
	dst = appendString(dst, r.counter)
	dst = binary.AppendUvarint(dst, r.count)
	dst = binary.AppendUvarint(dst, uint64(len(r.seqs)))
	for _, q := range r.seqs {
		dst = binary.AppendUvarint(dst, q)
	}
	payload := dst[start+8:]
	binary.BigEndian.PutUint32(dst[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(dst[start+4:], recordCRC(seg, payload))
	return dst
}

func recordCRC(seg uint64, payload []byte) uint32 {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seg)
	return crc32.Update(crc32.Checksum(b[:], crcTable), crcTable, payload)
}

// readLog returns the segment of a log file and its valid records.
func readLog(b []byte) (seg uint64, recs []serveRecord, ok bool) {
	if len(b) < logHeaderSize || string(b[:len(logMagic)]) != logMagic {
		return 0, nil, false
	}
	seg = binary.BigEndian.Uint64(b[len(logMagic):])
	for off := logHeaderSize; off+8 <= len(b); {
		n := int(binary.BigEndian.Uint32(b[off:]))
		if n == 0 || n > len(b)-off-8 {
			break
		}
		payload := b[off+8 : off+8+n]
		if binary.BigEndian.Uint32(b[off+4:]) != recordCRC(seg, payload) {
			break
		}
		r := reader{b: payload}
		rec := serveRecord{stream: string(r.bytes()), counter: string(r.bytes()), count: r.uvarint()}
		k := r.count(1)
		for i := 0; i < k && !r.bad; i++ {
			rec.seqs = append(rec.seqs, r.uvarint())
		}
		if r.bad || len(r.b) != 0 {
			break
		}
		recs = append(recs, rec)
		off += 8 + n
	}
	return seg, recs, true
}

// serveLog is the log's state; only the serve writer goroutine touches it,
// except where noted.
type serveLog struct {
	dir   string
	files [2]*os.File
	seg   uint64 // current segment, in files[seg%2]
	off   int64  // where its next record goes
	since time.Time
	buf   []byte

	// segments whose records are all durable and not yet checkpointed,
	// oldest first, with what they erased; guarded by Store.tombMu.
	done []*logSegment
	cur  *logSegment
	// checkpointing is set while a checkpoint runs; guarded by tombMu.
	checkpointing bool
	ckptDone      chan struct{}
	// checkpointed are segments deleted from bbolt whose tombstones are
	// still kept for reads of older snapshots, and dropped the newest
	// checkpoint whose tombstones are gone; guarded by tombMu.
	checkpointed []checkpointed
	dropped      int
}

// checkpointed is a checkpoint's segments and the bbolt transaction that
// deleted their keys: a read transaction older than it still sees the keys,
// so their tombstones stay until the serve writer reads a newer snapshot.
type checkpointed struct {
	txid int
	segs []*logSegment
}

type logSegment struct {
	seg      uint64
	recs     []serveRecord
	counters map[string]uint64
}

// openServeLog replays the segments a crash or close left unchekpointed into
// bbolt and starts a new segment. It runs in Open before the in-memory
// mirror is loaded.
func (s *Store) openServeLog(dir string) error {
	l := &serveLog{dir: dir, ckptDone: make(chan struct{})}
	close(l.ckptDone)
	var checkpoint uint64
	if err := s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketKeys, bucketStats} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		b, err := tx.CreateBucketIfNotExists(bucketServed)
		if err != nil {
			return err
		}
		if v := b.Get(keyCheckpoint); len(v) == 8 {
			checkpoint = binary.BigEndian.Uint64(v)
		}
		return nil
	}); err != nil {
		return err
	}
	type found struct {
		seg  uint64
		recs []serveRecord
	}
	var replay []found
	last := checkpoint
	for i := range l.files {
		b, err := os.ReadFile(logPath(dir, i))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read serve log: %w", err)
		}
		seg, recs, ok := readLog(b)
		clear(b)
		if !ok {
			continue
		}
		last = max(last, seg)
		if seg > checkpoint {
			replay = append(replay, found{seg, recs})
		}
	}
	sort.Slice(replay, func(i, j int) bool { return replay[i].seg < replay[j].seg })
	if len(replay) > 0 {
		segs := make([]*logSegment, len(replay))
		for i, f := range replay {
			segs[i] = &logSegment{seg: f.seg, recs: f.recs, counters: map[string]uint64{}}
			for _, r := range f.recs {
				segs[i].counters[r.counter] += r.count
			}
		}
		if err := s.db.Update(func(tx *bolt.Tx) error { return applySegments(tx, segs) }); err != nil {
			return fmt.Errorf("replay serve log: %w", err)
		}
		s.logger.Info("replayed the serve log", "segments", len(segs))
	}
	for i := range l.files {
		f, err := openLogFile(logPath(dir, i))
		if err != nil {
			for _, g := range l.files[:i] {
				g.Close()
			}
			return err
		}
		l.files[i] = f
	}
	if err := l.start(last + 1); err != nil {
		l.close()
		return err
	}
	s.log = l
	return nil
}

// openLogFile opens (creating and preallocating if needed) a log file.
func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open serve log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() < logFileSize {
		zeros := make([]byte, 64<<10)
		for off := st.Size(); off < logFileSize; off += int64(len(zeros)) {
			if _, err := f.WriteAt(zeros[:min(int64(len(zeros)), logFileSize-off)], off); err != nil {
				f.Close()
				return nil, fmt.Errorf("preallocate serve log: %w", err)
			}
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		if d, err := os.Open(filepath.Dir(path)); err == nil {
			d.Sync()
			d.Close()
		}
	}
	return f, nil
}

// start makes seg the current segment: its file's header names it (durably)
// before any record of it is written.
func (l *serveLog) start(seg uint64) error {
	f := l.files[seg%2]
	hdr := make([]byte, logHeaderSize, logHeaderSize+8)
	copy(hdr, logMagic)
	binary.BigEndian.PutUint64(hdr[len(logMagic):], seg)
	// A zero length after the header ends the replay of what the file held
	// before, even if an old record's CRC happened to match.
	hdr = append(hdr, 0, 0, 0, 0, 0, 0, 0, 0)
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return fmt.Errorf("serve log: %w", err)
	}
	if err := fdatasync(f); err != nil {
		return fmt.Errorf("serve log: %w", err)
	}
	l.seg, l.off, l.since = seg, int64(logHeaderSize), time.Now()
	l.cur = &logSegment{seg: seg, counters: map[string]uint64{}}
	return nil
}

func (l *serveLog) close() {
	for _, f := range l.files {
		if f != nil {
			f.Close()
		}
	}
}

// append writes recs to the current segment and makes them durable.
func (l *serveLog) append(recs []serveRecord) error {
	l.buf = l.buf[:0]
	for i := range recs {
		l.buf = recs[i].appendTo(l.buf, l.seg)
	}
	// A zero length after the last record: what the file held beyond it
	// is not read as this segment's.
	l.buf = append(l.buf, 0, 0, 0, 0)
	f := l.files[l.seg%2]
	if _, err := f.WriteAt(l.buf, l.off); err != nil {
		return fmt.Errorf("serve log: %w", err)
	}
	if err := fdatasync(f); err != nil {
		return fmt.Errorf("serve log: %w", err)
	}
	l.off += int64(len(l.buf) - 4)
	l.cur.recs = append(l.cur.recs, recs...)
	for _, r := range recs {
		l.cur.counters[r.counter] += r.count
	}
	return nil
}

// applySegments deletes what the segments' records erased (keys already
// gone are skipped) and adds their counters, and records the last segment as
// checkpointed, all in tx.
func applySegments(tx *bolt.Tx, segs []*logSegment) error {
	keys := tx.Bucket(bucketKeys)
	for _, sg := range segs {
		for _, r := range sg.recs {
			b := keys.Bucket([]byte(r.stream))
			if b == nil {
				continue
			}
			c := b.Cursor()
			var kb [8]byte
			for _, q := range r.seqs {
				binary.BigEndian.PutUint64(kb[:], q)
				if k, _ := c.Seek(kb[:]); k != nil && binary.BigEndian.Uint64(k) == q {
					if err := c.Delete(); err != nil {
						return err
					}
				}
			}
		}
	}
	stats := tx.Bucket(bucketStats)
	for _, sg := range segs {
		for name, d := range sg.counters {
			var cur uint64
			if v := stats.Get([]byte(name)); len(v) == 8 {
				cur = binary.BigEndian.Uint64(v)
			}
			if err := stats.Put([]byte(name), u64(cur+d)); err != nil {
				return err
			}
		}
	}
	return tx.Bucket(bucketServed).Put(keyCheckpoint, u64(segs[len(segs)-1].seg))
}

// ---- serve writer ----

type serveOp struct {
	// run finds what to serve in tx, skipping tombstoned keys. It returns
	// a record of what it erases, or an error if it serves nothing.
	run  func(tx *bolt.Tx) (serveRecord, error)
	done chan error
}

// serve runs fn in the serve writer and returns once what it erased is
// durable (or fn's error).
func (s *Store) serve(fn func(tx *bolt.Tx) (serveRecord, error)) error {
	o := &serveOp{run: fn, done: make(chan error, 1)}
	select {
	case s.serveOps <- o:
	case <-s.closing:
		return ErrClosed
	}
	select {
	case err := <-o.done:
		return err
	case <-s.serveStopped:
		select {
		case err := <-o.done:
			return err
		default:
			return ErrClosed
		}
	}
}

func (s *Store) serveWriter() {
	defer s.writerWG.Done()
	defer close(s.serveStopped)
	batch := make([]*serveOp, 0, maxGroup)
	errs := make([]error, 0, maxGroup)
	var recs []serveRecord
	for {
		var ok bool
		if batch, ok = nextGroup(s.serveOps, s.closing, batch, func(o *serveOp) { o.done <- ErrClosed }); !ok {
			return
		}
		t0 := time.Now()
		errs = errs[:len(batch)]
		recs = recs[:0]
		var served []int // index in batch of each record
		tx, err := s.db.Begin(false)
		if err == nil {
			s.dropTombstones(tx)
		}
		for i, o := range batch {
			errs[i] = err
			if err != nil {
				continue
			}
			rec, err := o.run(tx)
			errs[i] = err
			if err != nil || len(rec.seqs) == 0 {
				continue
			}
			s.tombstone(rec.stream, rec.seqs)
			recs = append(recs, rec)
			served = append(served, i)
		}
		if tx != nil {
			tx.Rollback()
		}
		if len(recs) > 0 {
			// On failure the keys stay tombstoned: lost, never served twice.
			if err := s.log.append(recs); err != nil {
				s.logger.Error("serve log write failed; the keys of the requests it held are lost", "err", err)
				for _, i := range served {
					errs[i] = err
				}
			} else {
				s.published(recs)
			}
		}
		for i, o := range batch {
			o.done <- errs[i]
		}
		s.serveGroups.Add(1)
		s.servedOps.Add(uint64(len(batch)))
		s.serveNanos.Add(uint64(time.Since(t0)))
		s.maybeCheckpoint()
	}
}

// tombstone hides seqs of stream from every read of the store.
func (s *Store) tombstone(stream string, seqs []uint64) {
	s.tombMu.Lock()
	m := s.tombs[stream]
	if m == nil {
		m = make(map[uint64]struct{}, 4096)
		s.tombs[stream] = m
	}
	for _, q := range seqs {
		m[q] = struct{}{}
	}
	s.tombMu.Unlock()
}

// goneFunc returns a check of whether a seq of stream is tombstoned; call it
// with tombMu held (read).
func (s *Store) goneFunc(stream string) func(seq uint64) bool {
	m := s.tombs[stream]
	return func(seq uint64) bool {
		_, ok := m[seq]
		return ok
	}
}

// published mirrors durable serves in memory.
func (s *Store) published(recs []serveRecord) {
	s.mu.Lock()
	for _, r := range recs {
		s.inStream[r.stream] -= len(r.seqs)
		s.counters[r.counter] += r.count
	}
	ch := s.changed
	s.changed = make(chan struct{})
	s.mu.Unlock()
	close(ch)
}

// maybeCheckpoint starts a new segment and has the bbolt writer checkpoint
// the finished ones when the current segment is large or old enough.
func (s *Store) maybeCheckpoint() {
	l := s.log
	if len(l.cur.recs) == 0 {
		return
	}
	full := l.off >= logFileSize/2
	if !full && l.off < checkpointBytes && time.Since(l.since) < checkpointEvery {
		return
	}
	s.tombMu.Lock()
	busy, waiting, ckpt := l.checkpointing, len(l.done) > 0, l.ckptDone
	s.tombMu.Unlock()
	if busy && full {
		// The other file may still hold the segment being checkpointed.
		<-ckpt
		s.tombMu.Lock()
		busy, waiting = l.checkpointing, len(l.done) > 0
		s.tombMu.Unlock()
	}
	switch {
	case busy:
		return
	case waiting:
		// A checkpoint failed: its segment's file is the next one, so
		// retry before reusing it.
		s.startCheckpoint()
		return
	}
	finished := l.cur
	if err := l.start(l.seg + 1); err != nil {
		s.logger.Error("serve log: cannot start a new segment", "err", err)
		return
	}
	s.tombMu.Lock()
	l.done = append(l.done, finished)
	s.tombMu.Unlock()
	s.startCheckpoint()
}

// startCheckpoint has the bbolt writer apply every finished segment.
func (s *Store) startCheckpoint() {
	l := s.log
	s.tombMu.Lock()
	if l.checkpointing || len(l.done) == 0 {
		s.tombMu.Unlock()
		return
	}
	segs := append([]*logSegment(nil), l.done...)
	l.checkpointing = true
	done := make(chan struct{})
	l.ckptDone = done
	s.tombMu.Unlock()
	go func() {
		defer close(done)
		var txid int
		err := s.update(func(tx *bolt.Tx) error {
			txid = tx.ID()
			return applySegments(tx, segs)
		})
		s.tombMu.Lock()
		defer s.tombMu.Unlock()
		l.checkpointing = false
		if err != nil {
			if !errors.Is(err, ErrClosed) {
				s.logger.Error("serve log checkpoint failed; retried with the next one", "err", err)
			}
			return
		}
		l.done = l.done[len(segs):]
		l.checkpointed = append(l.checkpointed, checkpointed{txid: txid, segs: segs})
	}()
}

// dropTombstones forgets the tombstones of checkpoints that the read
// transaction tx sees (its snapshot no longer holds their keys). Only the
// serve writer calls it, right after beginning tx; another reader whose
// snapshot is older than log.dropped must begin a newer one (Holds).
func (s *Store) dropTombstones(tx *bolt.Tx) {
	l := s.log
	s.tombMu.Lock()
	defer s.tombMu.Unlock()
	n := 0
	for _, c := range l.checkpointed {
		if c.txid > tx.ID() {
			break
		}
		for _, sg := range c.segs {
			for _, r := range sg.recs {
				m := s.tombs[r.stream]
				for _, q := range r.seqs {
					delete(m, q)
				}
			}
		}
		l.dropped = c.txid
		n++
	}
	l.checkpointed = l.checkpointed[n:]
}
