// Package driver is the contract between a QKD module driver and the Key
// Management Module of its node, like database/sql/driver is for databases.
//
// A driver serves one end of one QKD link. It hands the KMM keys as
// (key_ID, key bytes) in the order the module produced them; the driver at the
// other end of the link hands its KMM the same key_IDs with the same bits in the
// same order. Real devices plug in behind Driver; driver/emulator is a software
// QKD module pair and driver/remote carries any Driver over gRPC so that it can
// run in its own process.
package driver

import (
	"context"
	"errors"
)

// Key is one symmetric key from a QKD module.
type Key struct {
	// ID identifies the key; both link ends use the same ID for the same bits.
	ID string
	// Bytes is the key material. The sink owns it once Sink returns, whatever
	// Sink returned, and zeroes it when done; a driver must not reuse the slice.
	// A driver that must hand the same key again after a failed Sink call (see
	// Run) therefore hands the sink a copy each time.
	Bytes []byte
}

// Sink receives keys from a driver. It returns nil only once the keys are
// durably stored, so a driver may acknowledge them to its peer. It may block
// (back-pressure, e.g. a full key pool) until ctx is done.
type Sink func(ctx context.Context, keys []Key) error

// Driver is one end of a QKD link.
type Driver interface {
	// Run hands keys to sink, in order, until ctx is done, Close is called, the
	// sink fails or the link fails. It returns ctx.Err() when ctx ends, ErrClosed
	// after Close, and the sink's error (wrapped) when the sink fails. A Driver
	// is Run by one goroutine at a time; Run may be called again after it
	// returned, and then resumes after the last key the sink accepted.
	Run(ctx context.Context, sink Sink) error
	// Status reports the link end's state for statistics and operators.
	Status() Status
	// Close stops Run and releases resources. It is safe to call more than once.
	Close() error
}

// Status describes a link end.
type Status struct {
	LinkID string
	// Connected is true while the classical channel to the other end is up.
	Connected bool
	// KeysDelivered counts keys the sink accepted since the driver started.
	KeysDelivered uint64
}

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("driver: closed")

// Zero overwrites b with zeroes; use it on key buffers that are no longer needed.
func Zero(b []byte) {
	clear(b)
}

// ZeroKeys zeroes the bytes of every key in keys.
func ZeroKeys(keys []Key) {
	for _, k := range keys {
		Zero(k.Bytes)
	}
}
