// Package daemon is the command line and process of one controller replica
// (qkd-controller, and the hidden `qkdnet controller` that `qkdnet up`
// starts): Raft with durable stores, the gRPC API over mutual TLS, and a
// metrics endpoint, until SIGINT or SIGTERM.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/qkdnet/qkdnet/controller"
	"github.com/qkdnet/qkdnet/controller/cluster"
	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/controller/dashboard"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/internal/grpcmetrics"
	"github.com/qkdnet/qkdnet/internal/logflags"
	"github.com/qkdnet/qkdnet/pki"
)

// Options are a replica's settings, as the flags give them.
type Options struct {
	ID          string
	GRPCAddr    string
	RaftAddr    string
	MetricsAddr string
	DataDir     string
	Bootstrap   bool
	Join        []string
	CA          string
	Cert        string
	Key         string
	// SnapshotThreshold is the log entries between snapshots (0: raft's).
	SnapshotThreshold uint64
}

// Main is the replica's command line. args exclude the program name; it
// returns the exit code: 0 after a clean stop, 1 on failure, 2 on bad usage.
func Main(name string, args []string, stderr io.Writer) int {
	o, logger, code := parseFlags(name, args, stderr)
	if logger == nil {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, o, logger); err != nil {
		logger.Error("controller failed", "id", o.ID, "err", err)
		return 1
	}
	return 0
}

// parseFlags reads the command line; without a logger, the command ends
// with code.
func parseFlags(name string, args []string, stderr io.Writer) (Options, *slog.Logger, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o Options
	var join, level, format, bootstrapID string
	fs.StringVar(&o.ID, "id", "", "replica `ID` (Raft server ID), e.g. c1")
	fs.StringVar(&o.GRPCAddr, "grpc", "127.0.0.1:7443", "`host:port` of the gRPC API (agents, operators, other replicas)")
	fs.StringVar(&o.RaftAddr, "raft", "127.0.0.1:7543", "`host:port` of the Raft transport")
	fs.StringVar(&o.MetricsAddr, "metrics", "", "`host:port` of Prometheus metrics, /healthz, /readyz and the /dashboard/ page (off if empty)")
	fs.StringVar(&o.DataDir, "data-dir", "", "`dir` of the Raft log, stable store and snapshots")
	fs.BoolVar(&o.Bootstrap, "bootstrap", false, "start a new cluster with this replica as its first voter (ignored if the data dir has Raft state)")
	fs.StringVar(&bootstrapID, "bootstrap-id", "", "bootstrap as --bootstrap if --id is this `ID`, else join: lets the replicas of a Kubernetes StatefulSet share one command line")
	fs.StringVar(&join, "join", "", "comma-separated gRPC `addresses` of replicas to join through (the leader adds this one)")
	fs.StringVar(&o.CA, "ca", "", "CA certificate `file` (PEM)")
	fs.StringVar(&o.Cert, "cert", "", "this replica's controller certificate `file` (qkd://controller/<id>)")
	fs.StringVar(&o.Key, "key", "", "its private key `file`")
	fs.Uint64Var(&o.SnapshotThreshold, "snapshot-threshold", 0, "log `entries` between snapshots (0: raft's default, 8192)")
	fs.StringVar(&level, "log-level", "info", "log `level`: debug, info, warn, error")
	fs.StringVar(&format, "log-format", "text", "log `format`: text or json")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s --id ID --data-dir DIR --ca F --cert F --key F [--bootstrap | --join ADDRS | --bootstrap-id ID --join ADDRS] [flags]\n\n", name)
		fmt.Fprintf(stderr, "Runs one replica of the Raft-replicated QKD SDN controller until SIGINT or SIGTERM.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, nil, 0
		}
		return o, nil, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", name, fs.Arg(0))
		return o, nil, 2
	}
	if join != "" {
		o.Join = strings.Split(join, ",")
	}
	for _, req := range []struct{ flag, v string }{{"id", o.ID}, {"data-dir", o.DataDir}, {"ca", o.CA}, {"cert", o.Cert}, {"key", o.Key}} {
		if req.v == "" {
			fmt.Fprintf(stderr, "%s: --%s is required\n", name, req.flag)
			return o, nil, 2
		}
	}
	if err := pki.ValidID(o.ID); err != nil {
		fmt.Fprintf(stderr, "%s: --id: %v\n", name, err)
		return o, nil, 2
	}
	if bootstrapID == o.ID {
		// The first replica makes the cluster; its --join (the same list
		// every replica gets) would only find itself already a member.
		o.Bootstrap, o.Join = true, nil
	}
	logger, err := logflags.New(stderr, level, format)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return o, nil, 2
	}
	return o, logger, 0
}

// Run runs a replica until ctx is done.
func Run(ctx context.Context, o Options, logger *slog.Logger) error {
	serverTLS, err := pki.ServerTLS(o.CA, o.Cert, o.Key, tls.RequireAndVerifyClientCert)
	if err != nil {
		return err
	}
	clientTLS, err := pki.ClientTLS(o.CA, o.Cert, o.Key)
	if err != nil {
		return err
	}
	grpcLn, err := net.Listen("tcp", o.GRPCAddr)
	if err != nil {
		return fmt.Errorf("grpc listen: %w", err)
	}
	defer grpcLn.Close()

	fsm := controller.NewFSM()
	rep, err := cluster.Open(cluster.Config{
		ID: o.ID, RaftAddr: o.RaftAddr, DataDir: o.DataDir, ServerTLS: serverTLS, ClientTLS: clientTLS,
		Bootstrap: o.Bootstrap, SnapshotThreshold: o.SnapshotThreshold,
	}, fsm)
	if err != nil {
		return err
	}
	defer rep.Close()

	ctl := controller.New(controller.Config{ID: o.ID, GRPCAddr: o.GRPCAddr, RaftAddr: o.RaftAddr}, rep.Raft, fsm, logger)
	grpcMetrics := grpcmetrics.New()
	srv := grpc.NewServer(append(grpcMetrics.ServerOptions(), grpc.Creds(credentials.NewTLS(serverTLS)))...)
	ctl.Register(srv)
	grpcMetrics.Init(srv)

	errc := make(chan error, 3)
	go func() { errc <- srv.Serve(grpcLn) }()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { errc <- ctl.Run(runCtx) }()

	var metricsSrv *http.Server
	if o.MetricsAddr != "" {
		ln, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listen: %w", err)
		}
		metricsSrv = &http.Server{Handler: metricsHandler(ctl, rep.Raft, grpcMetrics), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := metricsSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	logger.Info("controller replica started", "id", o.ID, "grpc", o.GRPCAddr, "raft", o.RaftAddr, "metrics", o.MetricsAddr, "data_dir", o.DataDir)

	if len(o.Join) > 0 {
		go joinCluster(runCtx, o, rep.Raft, clientTLS, logger)
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil {
			return err
		}
	}
	logger.Info("controller replica stopping", "id", o.ID)
	cancel()
	if metricsSrv != nil {
		sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		metricsSrv.Shutdown(sctx)
		c()
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		srv.Stop() // sessions are long-lived streams; don't wait for them
	}
	return nil
}

// joinCluster asks the leader, through the replicas named by --join, to add
// this replica, unless the Raft configuration already holds it (a restart).
func joinCluster(ctx context.Context, o Options, r *raft.Raft, tlsCfg *tls.Config, logger *slog.Logger) {
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == o.ID {
				logger.Info("already a member of the cluster", "id", o.ID)
				return
			}
		}
	}
	cl, err := ctlclient.New(o.Join, tlsCfg)
	if err != nil {
		logger.Error("join", "err", err)
		return
	}
	defer cl.Close()
	err = cl.Do(ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := ctlclient.Cluster(cc).Join(ctx, &qkdv1.JoinRequest{Id: o.ID, RaftAddress: o.RaftAddr, GrpcAddress: o.GRPCAddr})
		return err
	})
	if err != nil {
		logger.Error("could not join the cluster", "via", o.Join, "err", err)
		return
	}
	logger.Info("joined the cluster", "via", cl.Leader())
}

// metricsHandler serves Prometheus metrics of the replica (and more, its
// gRPC server's), /healthz and /readyz.
func metricsHandler(ctl *controller.Controller, r *raft.Raft, more ...prometheus.Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(controller.NewCollector(ctl))
	reg.MustRegister(more...)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// The live network page; it carries no key material, like the metrics.
	mux.Handle("/dashboard/", http.StripPrefix("/dashboard", dashboard.Handler(ctl)))
	healthz, readyz := probes(r)
	mux.HandleFunc("/healthz", healthz)
	mux.HandleFunc("/readyz", readyz)
	return mux
}

// raftState is what the probes read of the replica's Raft (*raft.Raft).
type raftState interface {
	State() raft.RaftState
	LeaderWithID() (raft.ServerAddress, raft.ServerID)
}

// probes are the replica's liveness (/healthz: 200 unless its Raft has shut
// down) and readiness (/readyz: 200 once it knows a leader) checks, each
// answering 503 with a one-line reason. Liveness must not depend on the
// other replicas: with "leader known" as liveness, losing a quorum would
// make Kubernetes restart every replica, and a replica still joining would
// be killed before it joined. Readiness keeps a replica that knows no
// leader (it could only answer UNAVAILABLE) out of the client Service.
func probes(r raftState) (healthz, readyz http.HandlerFunc) {
	healthz = func(w http.ResponseWriter, _ *http.Request) {
		if r.State() == raft.Shutdown {
			http.Error(w, "raft has shut down", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	}
	readyz = func(w http.ResponseWriter, _ *http.Request) {
		if addr, _ := r.LeaderWithID(); addr == "" {
			http.Error(w, "no Raft leader known", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	}
	return healthz, readyz
}
