package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/qkdnet/qkdnet/testbed"
)

// Fault kinds.
const (
	KillAgent      = "kill-agent"      // SIGKILL a node's agent, restart it after a while
	KillController = "kill-controller" // SIGKILL a controller replica (often the leader), restart it
	Pause          = "pause"           // SIGSTOP an agent or a replica, SIGCONT after a while
	DiskFull       = "disk-full"       // fill the tmpfs under one node's key store, then free it
	CutKMM         = "cut-kmm"         // reset and refuse every inter-KMM connection into one node, then restore
	LinkDown       = "link-down"       // disable a QKD link through the controller (its drivers stop), then enable it
)

// FaultKinds are every kind, in report order.
var FaultKinds = []string{KillAgent, KillController, Pause, DiskFull, CutKMM, LinkDown}

// injector applies one fault at a time. Faults do not overlap: each is
// healed before the next, so the network always has a controller quorum
// and every fault's effect is attributable in the logs.
type injector struct {
	n       *testbed.Network
	rng     *rand.Rand
	proxies map[string]*Proxy // node -> proxy in front of its gRPC port, for peers
	disk    *tmpfsDisk        // nil when disk-full is skipped
	log     func(msg string, args ...any)

	// scale shrinks the hold times of runs shorter than a minute, so that
	// a short run (the e2e test) still fits one fault of every kind.
	scale float64

	mu     sync.Mutex
	counts map[string]int
}

// hold waits d, or less if ctx ends: the fault is healed either way.
func hold(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// between is a random duration in [lo, hi), scaled.
func (in *injector) between(lo, hi time.Duration) time.Duration {
	d := lo + time.Duration(in.rng.Int64N(int64(hi-lo)))
	if in.scale > 0 && in.scale < 1 {
		d = time.Duration(float64(d) * in.scale)
	}
	return d
}

func (in *injector) nodes() []string {
	var ids []string
	for _, np := range in.n.Plan().Nodes {
		ids = append(ids, np.ID)
	}
	return ids
}

func (in *injector) controllers() []string {
	var ids []string
	for _, c := range in.n.Plan().Controllers {
		ids = append(ids, c.ID)
	}
	return ids
}

func (in *injector) pick(ids []string) string { return ids[in.rng.IntN(len(ids))] }

// run injects faults until ctx ends: first each enabled kind once in a
// random order (so a short run still sees every kind), then kinds at
// random, with random gaps. An error means the network could not be
// healed (a process would not restart), which ends the run.
func (in *injector) run(ctx context.Context, kinds []string) error {
	order := append([]string(nil), kinds...)
	in.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for i := 0; ; i++ {
		hold(ctx, in.between(300*time.Millisecond, 1500*time.Millisecond))
		if ctx.Err() != nil {
			return nil
		}
		kind := in.pick(kinds)
		if i < len(order) {
			kind = order[i]
		}
		if err := in.inject(ctx, kind); err != nil {
			return fmt.Errorf("%s: %w", kind, err)
		}
	}
}

func (in *injector) inject(ctx context.Context, kind string) error {
	// Healing must finish even when the run's time is up.
	heal, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	switch kind {
	case KillAgent:
		node := in.pick(in.nodes())
		down := in.between(200*time.Millisecond, 2*time.Second)
		in.log("fault", "kind", kind, "target", "agent "+node, "down", down.Round(time.Millisecond))
		if err := in.n.Kill(node); err != nil {
			return err
		}
		in.count(kind)
		hold(ctx, down)
		if err := in.n.Restart(heal, node); err != nil {
			return err
		}
		in.log("healed", "kind", kind, "target", "agent "+node)
	case KillController:
		id := in.pick(in.controllers())
		if in.rng.IntN(2) == 0 {
			// Half the time the leader, whose loss matters most.
			lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
			if l, err := in.n.Leader(lctx); err == nil {
				id = l
			}
			lcancel()
		}
		down := in.between(200*time.Millisecond, 3*time.Second)
		in.log("fault", "kind", kind, "target", "controller "+id, "down", down.Round(time.Millisecond))
		if err := in.n.KillController(id); err != nil {
			return err
		}
		in.count(kind)
		hold(ctx, down)
		if err := in.n.RestartController(heal, id); err != nil {
			return err
		}
		in.log("healed", "kind", kind, "target", "controller "+id)
	case Pause:
		var what string
		var pid int
		if in.rng.IntN(3) == 0 {
			id := in.pick(in.controllers())
			what, pid = "controller "+id, in.n.ControllerPID(id)
		} else {
			node := in.pick(in.nodes())
			what, pid = "agent "+node, in.n.PID(node)
		}
		if pid == 0 {
			return errors.New(what + " is not running")
		}
		d := in.between(500*time.Millisecond, 4*time.Second)
		in.log("fault", "kind", kind, "target", what, "pid", pid, "stopped", d.Round(time.Millisecond))
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return fmt.Errorf("SIGSTOP %s: %w", what, err)
		}
		in.count(kind)
		hold(ctx, d)
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			return fmt.Errorf("SIGCONT %s: %w", what, err)
		}
		in.log("healed", "kind", kind, "target", what)
	case DiskFull:
		d := in.between(2*time.Second, 6*time.Second)
		filled, err := in.disk.fill()
		if err != nil {
			in.disk.free()
			return err
		}
		in.log("fault", "kind", kind, "target", "key store of node "+in.disk.node, "filled_bytes", filled, "for", d.Round(time.Millisecond))
		in.count(kind)
		hold(ctx, d)
		if err := in.disk.free(); err != nil {
			return err
		}
		in.log("healed", "kind", kind, "target", "key store of node "+in.disk.node)
	case CutKMM:
		node := in.pick(in.nodes())
		d := in.between(time.Second, 5*time.Second)
		p := in.proxies[node]
		broke := p.Cut()
		in.log("fault", "kind", kind, "target", "inter-KMM connections into node "+node, "connections_reset", broke, "for", d.Round(time.Millisecond))
		in.count(kind)
		hold(ctx, d)
		p.Restore()
		in.log("healed", "kind", kind, "target", "inter-KMM connections into node "+node)
	case LinkDown:
		links := in.n.Plan().Topology.Links
		if len(links) == 0 {
			return errors.New("the topology has no link")
		}
		link := links[in.rng.IntN(len(links))].ID
		d := in.between(time.Second, 5*time.Second)
		in.log("fault", "kind", kind, "target", "QKD link "+link, "for", d.Round(time.Millisecond))
		if err := in.n.EnableLink(heal, link, false); err != nil {
			return err
		}
		in.count(kind)
		hold(ctx, d)
		if err := in.n.EnableLink(heal, link, true); err != nil {
			return err
		}
		in.log("healed", "kind", kind, "target", "QKD link "+link)
	default:
		return fmt.Errorf("unknown fault kind %q", kind)
	}
	return nil
}

func (in *injector) count(kind string) {
	in.mu.Lock()
	in.counts[kind]++
	in.mu.Unlock()
}

func (in *injector) Counts() map[string]int {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := map[string]int{}
	for k, v := range in.counts {
		out[k] = v
	}
	return out
}

// tmpfsDisk is a small tmpfs mounted on one node's data dir (its key store
// and KEK), which fill makes full.
type tmpfsDisk struct {
	node string
	dir  string
	fill func() (int64, error)
}

// fillFile is the file that takes the free space.
const fillFile = ".qkdchaos-fill"

// mountTmpfs mounts a tmpfs of sizeMB on dir (created if missing). It needs
// root (CAP_SYS_ADMIN); the error says why it could not.
func mountTmpfs(node, dir string, sizeMB int) (*tmpfsDisk, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root to mount a tmpfs")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%dm,mode=0700", sizeMB)); err != nil {
		return nil, fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	d := &tmpfsDisk{node: node, dir: dir}
	d.fill = d.fillUp
	return d, nil
}

// fillUp writes zeros until the file system is full: first in 1 MiB
// chunks, then 4 KiB, so at most a few bytes stay free.
func (d *tmpfsDisk) fillUp() (int64, error) {
	f, err := os.OpenFile(filepath.Join(d.dir, fillFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	for _, chunk := range []int{1 << 20, 4 << 10, 1} {
		buf := make([]byte, chunk)
		for {
			k, err := f.Write(buf)
			n += int64(k)
			if err != nil {
				if errors.Is(err, syscall.ENOSPC) {
					break
				}
				return n, err
			}
		}
	}
	return n, nil
}

func (d *tmpfsDisk) free() error {
	err := os.Remove(filepath.Join(d.dir, fillFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// unmount detaches the tmpfs (lazily: a process may still hold a file).
func (d *tmpfsDisk) unmount() error {
	return syscall.Unmount(d.dir, syscall.MNT_DETACH)
}
