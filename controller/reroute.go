package controller

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/qkdnet/qkdnet/controller/state"
)

// rerouteLoop runs on the leader. It moves every application whose path
// crosses a link that is down (disabled, or reported OFF by its Master
// node) to another path of links that are up, when one exists: a new path
// generation, the old path kept draining (state.OpRerouteApp). An
// application without another path stays where it is: its SAEs see
// "insufficient key" until the link returns.
func (c *Controller) rerouteLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.RerouteInterval)
	defer t.Stop()
	last := map[string]time.Time{} // app -> its last reroute, against flapping
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, mv := range c.reroutes() {
			if time.Since(last[mv.id]) < c.cfg.RerouteHoldoff {
				continue
			}
			r, err := c.propose(ctx, state.Command{Op: state.OpRerouteApp, Name: mv.id, App: &state.AppSpec{Path: mv.path}})
			if err != nil {
				if ctx.Err() == nil {
					c.logger.Warn("could not reroute an application", "app_id", mv.id, "path", mv.path, "err", err)
				}
				continue
			}
			last[mv.id] = time.Now()
			gen := uint32(0)
			if a, ok := r.Value.(*state.AppInfo); ok {
				gen = a.Gen
			}
			c.logger.Info("application rerouted around a link that is down", "app_id", mv.id, "from", mv.from, "path", mv.path, "generation", gen, "index", r.Index)
		}
		for id := range last {
			if time.Since(last[id]) > c.cfg.RerouteHoldoff {
				delete(last, id)
			}
		}
	}
}

type move struct {
	id         string
	from, path []string
}

// reroutes lists the applications to move now, and where.
func (c *Controller) reroutes() []move {
	live := c.hub.snapshotLive()
	var out []move
	c.fsm.Read(func(st *state.State) { out = reroutes(st, live) })
	return out
}

// reroutes is the decision itself: an application moves when a link of its
// path is disabled or reported OFF and choosePath finds another path.
func reroutes(st *state.State, live map[string]nodeLive) []move {
	ld := loads(st, live)
	if !slices.ContainsFunc(slices.Collect(maps.Values(ld)), func(l linkLoad) bool { return l.down }) {
		return nil // the usual case, every tick: nothing to look at
	}
	var out []move
	for _, a := range st.Apps() {
		broken := slices.ContainsFunc(a.Path, func(name string) bool { return ld[name].down })
		if !broken || a.Gen >= state.MaxGen {
			continue
		}
		path, err := choosePathAmong(st, ld, a.MasterNode, a.SlaveNode, a.QoS.MinBandwidth)
		if err != nil || slices.Equal(path, a.Path) {
			continue
		}
		out = append(out, move{id: a.ID, from: a.Path, path: path})
	}
	return out
}
