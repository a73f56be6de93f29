package controller

import (
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/qkdnet/qkdnet/controller/state"
)

// Result is what applying one log entry gave.
type Result struct {
	Index uint64
	Value any
	Err   error
}

// FSM is the Raft state machine: it applies logged commands to the state.
// Apply does no I/O and reads no clock; readers take a read lock, and
// Changed wakes whoever pushes configuration after every applied entry.
type FSM struct {
	mu      sync.RWMutex
	st      *state.State
	changed chan struct{}
}

// NewFSM returns an FSM over an empty state.
func NewFSM() *FSM {
	return &FSM{st: state.New(), changed: make(chan struct{})}
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	c, err := state.Decode(l.Data)
	if err != nil {
		return Result{Index: l.Index, Err: err}
	}
	f.mu.Lock()
	v, err := f.st.Apply(l.Index, c)
	ch := f.changed
	f.changed = make(chan struct{})
	f.mu.Unlock()
	close(ch)
	return Result{Index: l.Index, Value: v, Err: err}
}

// Read runs fn with the state under a read lock; fn must not keep it.
func (f *FSM) Read(fn func(*state.State)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.st)
}

// Changed returns a channel closed at the next applied entry.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// Snapshot implements raft.FSM. The state is encoded here, under the read
// lock, so Persist can run while later entries are applied.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	b, err := f.st.Snapshot()
	f.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return fsmSnapshot(b), nil
}

// Restore implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	st, err := state.Restore(b)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.st = st
	ch := f.changed
	f.changed = make(chan struct{})
	f.mu.Unlock()
	close(ch)
	return nil
}

type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s fsmSnapshot) Release() {}
