// Package agent is the node agent: it hosts the node's KMM and QKD drivers,
// serves SAEs (ETSI 014 over HTTPS and gRPC), peer KMMs and drivers (gRPC),
// and Prometheus metrics, all from one Config.
package agent

import (
	"context"
	"errors"
	"log/slog"
)

// Agent is one running node agent.
type Agent struct {
	cfg    Config
	logger *slog.Logger
}

// New checks cfg and prepares an agent; Run starts it.
func New(cfg Config, logger *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, logger: logger}, nil
}

// Run serves until ctx is done, then shuts down gracefully.
func (a *Agent) Run(ctx context.Context) error {
	return errors.New("agent: not wired yet")
}
