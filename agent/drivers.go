package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/qkdnet/qkdnet/driver"
	"github.com/qkdnet/qkdnet/driver/emulator"
	"github.com/qkdnet/qkdnet/driver/remote"
	"github.com/qkdnet/qkdnet/kmm"
)

// driverSet runs the QKD drivers of this node's links: all of them from the
// start without a controller, or those the controller's configuration
// enables, started and stopped as it changes.
type driverSet struct {
	ctx    context.Context // the agent's; drivers outlive controller sessions
	kmm    *kmm.KMM
	emu    *emulator.Server
	remote *remote.Service
	peers  *peerConns
	local  map[string]Link // this node's QKD modules, by link ID
	logger *slog.Logger
	// onDown, if set, hears of a link whose driver failed or was stopped.
	onDown func(link, why string)

	mu  sync.Mutex
	run map[string]*runningDriver
	wg  sync.WaitGroup
}

type runningDriver struct {
	d      driver.Driver
	peer   string
	alice  *emulator.Alice
	cancel context.CancelFunc
	done   chan struct{}
}

func newDriverSet(ctx context.Context, cfg Config, k *kmm.KMM, emu *emulator.Server, rs *remote.Service, peers *peerConns, logger *slog.Logger) *driverSet {
	ds := &driverSet{ctx: ctx, kmm: k, emu: emu, remote: rs, peers: peers, local: map[string]Link{}, logger: logger, run: map[string]*runningDriver{}}
	for _, l := range cfg.Topology.Links {
		ds.local[l.ID] = l
	}
	return ds
}

// start runs the driver of link l (whose Peer is set) until stopped.
func (ds *driverSet) start(l Link) error {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if _, ok := ds.run[l.ID]; ok {
		return nil
	}
	rd := &runningDriver{peer: l.Peer, done: make(chan struct{})}
	switch l.Driver.Kind {
	case "emulator":
		ecfg := emulator.Config{KeyRate: l.Driver.KeyRate, KeyBytes: l.Driver.KeyBytes}
		if l.Driver.End == "alice" {
			// Only the node at the other end may take the link's keys.
			al := emulator.NewAlice(l.ID, ecfg, ds.logger, emulator.WithPeer(l.Peer))
			if err := ds.emu.Add(al); err != nil {
				return err
			}
			rd.d, rd.alice = al, al
		} else {
			conn, err := ds.peers.conn(l.Peer)
			if err != nil {
				return err
			}
			rd.d = emulator.NewBob(l.ID, conn, ds.logger)
		}
	case "remote":
		// A driver process on this node pushes the link's keys over
		// DriverService with a node certificate.
		rd.d = ds.remote.Link(l.ID)
	default:
		return fmt.Errorf("link %s: unknown driver kind %q", l.ID, l.Driver.Kind)
	}
	ctx, cancel := context.WithCancel(ds.ctx)
	rd.cancel = cancel
	ds.run[l.ID] = rd
	ds.wg.Add(1)
	go func() {
		defer ds.wg.Done()
		defer close(rd.done)
		ds.keepRunning(ctx, l.ID, rd.d, ds.kmm.Sink(l.ID))
	}()
	ds.logger.Info("QKD driver started", "link", l.ID, "peer", l.Peer, "kind", l.Driver.Kind, "end", l.Driver.End)
	return nil
}

// keepRunning restarts a link's driver with backoff after a failure, until
// ctx is done.
func (ds *driverSet) keepRunning(ctx context.Context, link string, d driver.Driver, sink driver.Sink) {
	backoff := 100 * time.Millisecond
	for {
		err := d.Run(ctx, sink)
		if ctx.Err() != nil || errors.Is(err, driver.ErrClosed) {
			return
		}
		ds.logger.WarnContext(ctx, "QKD driver stopped; restarting", "link", link, "err", err, "in", backoff)
		if ds.onDown != nil {
			ds.onDown(link, fmt.Sprintf("QKD driver failed: %v", err))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (ds *driverSet) stop(id string) {
	ds.mu.Lock()
	rd, ok := ds.run[id]
	delete(ds.run, id)
	ds.mu.Unlock()
	if !ok {
		return
	}
	rd.cancel()
	rd.d.Close()
	<-rd.done
	if rd.alice != nil {
		ds.emu.Remove(rd.alice)
	}
	ds.logger.Info("QKD driver stopped", "link", id)
	if ds.onDown != nil {
		ds.onDown(id, "link disabled or removed by the controller")
	}
}

// reconcile runs exactly the local drivers whose links the view enables.
func (ds *driverSet) reconcile(_ context.Context, v *view) {
	for id, l := range ds.local {
		kl, inView := v.links[id]
		want := inView && v.enabled[id]
		ds.mu.Lock()
		rd, running := ds.run[id]
		ds.mu.Unlock()
		if running && (!want || rd.peer != kl.Peer) {
			ds.stop(id)
			running = false
		}
		if want && !running {
			l.Peer = kl.Peer
			if err := ds.start(l); err != nil {
				ds.logger.Error("could not start QKD driver", "link", id, "err", err)
			}
		}
	}
}

// running reports which links have a driver running.
func (ds *driverSet) running() map[string]bool {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	out := make(map[string]bool, len(ds.run))
	for id := range ds.run {
		out[id] = true
	}
	return out
}

// closeAll stops every driver and waits for them.
func (ds *driverSet) closeAll() {
	ds.mu.Lock()
	ids := make([]string, 0, len(ds.run))
	for id := range ds.run {
		ids = append(ids, id)
	}
	ds.mu.Unlock()
	for _, id := range ids {
		ds.stop(id)
	}
	ds.wg.Wait()
}
