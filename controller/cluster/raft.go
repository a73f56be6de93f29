// Package cluster runs the controller's Raft replica: hashicorp/raft with a
// durable log and stable store (raft-boltdb), file snapshots, and a mutual-TLS
// transport between replicas, with timeouts tuned for a LAN.
package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Timeouts are the Raft timers. hashicorp/raft's defaults (1 s heartbeat and
// election timeouts) are for WANs; a controller cluster on one LAN detects a
// dead leader within a few hundred milliseconds with these.
type Timeouts struct {
	Heartbeat   time.Duration
	Election    time.Duration
	LeaderLease time.Duration
	Commit      time.Duration
}

// LAN are the timeouts for replicas on one LAN (or loopback).
var LAN = Timeouts{
	Heartbeat:   300 * time.Millisecond,
	Election:    300 * time.Millisecond,
	LeaderLease: 250 * time.Millisecond,
	Commit:      20 * time.Millisecond,
}

// Config describes one replica.
type Config struct {
	// ID is the replica's Raft server ID (e.g. c1).
	ID string
	// RaftAddr is the host:port the replica's Raft transport listens on and
	// other replicas dial.
	RaftAddr string
	// DataDir holds raft.db (log and stable store) and snapshots/.
	DataDir string
	// ServerTLS and ClientTLS secure the Raft transport (mutual TLS with
	// controller certificates).
	ServerTLS, ClientTLS *tls.Config
	// Bootstrap makes a new cluster with this replica as its only voter when
	// the data dir holds no Raft state yet. Others join it.
	Bootstrap bool
	// Voters, when set with Bootstrap, is the whole first configuration
	// (every replica bootstrapped with the same list); else the replica
	// bootstraps alone and the others join.
	Voters   []raft.Server
	Timeouts Timeouts
	// SnapshotThreshold is how many log entries trigger a snapshot.
	SnapshotThreshold uint64
	// LogOutput gets Raft's own log lines (JSON); default stderr.
	LogOutput io.Writer
}

// Parts are the pluggable pieces of a replica; tests use raft's in-memory
// ones, Open uses durable ones.
type Parts struct {
	Log       raft.LogStore
	Stable    raft.StableStore
	Snapshots raft.SnapshotStore
	Transport raft.Transport
}

// Replica is a running Raft replica.
type Replica struct {
	*raft.Raft
	closers []io.Closer
}

// Open starts a replica with durable stores in cfg.DataDir and a mutual-TLS
// transport on cfg.RaftAddr.
func Open(cfg Config, fsm raft.FSM) (*Replica, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("cluster: data dir is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	logger := hclogger(cfg)
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("cluster: open raft.db: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 3, logger.Named("snapshots"))
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("cluster: snapshots: %w", err)
	}
	stream, err := newTLSStream(cfg.RaftAddr, cfg.ServerTLS, cfg.ClientTLS)
	if err != nil {
		store.Close()
		return nil, err
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: 5 * time.Second,
		Logger:  logger.Named("transport"),
	})
	r, err := Start(cfg, fsm, Parts{Log: store, Stable: store, Snapshots: snaps, Transport: trans})
	if err != nil {
		trans.Close()
		store.Close()
		return nil, err
	}
	r.closers = append(r.closers, trans, store)
	return r, nil
}

// Start starts a replica on the given parts, bootstrapping if asked and the
// stores are empty.
func Start(cfg Config, fsm raft.FSM, p Parts) (*Replica, error) {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	t := cfg.Timeouts
	if t == (Timeouts{}) {
		t = LAN
	}
	rc.HeartbeatTimeout = t.Heartbeat
	rc.ElectionTimeout = t.Election
	rc.LeaderLeaseTimeout = t.LeaderLease
	rc.CommitTimeout = t.Commit
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
		rc.TrailingLogs = cfg.SnapshotThreshold
	}
	rc.Logger = hclogger(cfg)
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(p.Log, p.Stable, p.Snapshots)
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		if !has {
			boot := raft.Configuration{Servers: cfg.Voters}
			if len(boot.Servers) == 0 {
				boot.Servers = []raft.Server{{ID: rc.LocalID, Address: p.Transport.LocalAddr()}}
			}
			if err := raft.BootstrapCluster(rc, p.Log, p.Stable, p.Snapshots, p.Transport, boot); err != nil {
				return nil, fmt.Errorf("cluster: bootstrap: %w", err)
			}
		}
	}
	r, err := raft.NewRaft(rc, fsm, p.Log, p.Stable, p.Snapshots, p.Transport)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return &Replica{Raft: r}, nil
}

// Close shuts the replica down and closes its stores.
func (r *Replica) Close() error {
	err := r.Shutdown().Error()
	for _, c := range r.closers {
		if cerr := c.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// hclogger routes Raft's logs, which use hclog, to JSON lines on stderr at
// Info, the same shape as the rest of the controller's slog output.
func hclogger(cfg Config) hclog.Logger {
	out := cfg.LogOutput
	if out == nil {
		out = os.Stderr
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "raft",
		Level:      hclog.Info,
		JSONFormat: true,
		Output:     out,
	}).With("replica", cfg.ID)
}
