// Package agent is the node agent: it hosts the node's KMM and QKD drivers,
// serves SAEs (ETSI 014 over HTTPS and gRPC), peer KMMs and drivers (gRPC),
// and Prometheus metrics, all from one Config.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	gnmipb "github.com/openconfig/gnmi/proto/gnmi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/qkdnet/qkdnet/agent/gateway"
	"github.com/qkdnet/qkdnet/agent/ratelimit"
	"github.com/qkdnet/qkdnet/controller/ctlclient"
	"github.com/qkdnet/qkdnet/controller/gnmiserver"
	"github.com/qkdnet/qkdnet/driver/emulator"
	"github.com/qkdnet/qkdnet/driver/remote"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/internal/grpcmetrics"
	"github.com/qkdnet/qkdnet/kmm"
	"github.com/qkdnet/qkdnet/kmm/keystore"
	"github.com/qkdnet/qkdnet/kmm/keysync"
	"github.com/qkdnet/qkdnet/kmm/stats"
	"github.com/qkdnet/qkdnet/pki"
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
	return &Agent{cfg: cfg, logger: logger.With("node", cfg.Node)}, nil
}

// Run serves until ctx is done, then shuts down gracefully: it stops taking
// requests, lets those in flight finish (bounded), stops the drivers and
// closes the key store.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.cfg
	grpcTLS, err := pki.ServerTLS(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key, tls.RequireAndVerifyClientCert)
	if err != nil {
		return err
	}
	// The REST port asks for a client certificate but lets the handshake
	// finish without one, so that the SAE gets ETSI 014's 401 error object
	// rather than a bare TLS alert. Nothing is served without a verified SAE
	// certificate.
	restTLS, err := pki.ServerTLS(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key, tls.VerifyClientCertIfGiven)
	if err != nil {
		return err
	}
	clientTLS, err := pki.ClientTLS(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return err
	}

	store, err := keystore.Open(cfg.DataDir, keystore.Options{Logger: a.logger.With("part", "keystore")})
	if err != nil {
		return err
	}
	defer store.Close()

	// The KMM's view of the network: pushed by the controller, or (without
	// one) read from the configuration.
	var (
		topo  kmm.Topology
		ctl   *controlled
		addrs func(node string) (string, bool)
		opts  []kmm.Option
	)
	if len(cfg.Controllers) > 0 {
		ctl = newControlled(cfg.Node)
		topo, addrs = ctl, ctl.addr
		opts = append(opts, kmm.WithApps(ctl), kmm.WithKeyStreams(ctl))
	} else {
		st := newStaticTopology(cfg)
		topo, addrs = st, st.addr
	}
	peers := newPeerConns(addrs, clientTLS)
	defer peers.Close()

	st := stats.New(cfg.Node, store, func() []string {
		var ids []string
		if ctl != nil {
			for id := range ctl.view().links {
				ids = append(ids, id)
			}
			return ids
		}
		for _, l := range cfg.Topology.Links {
			ids = append(ids, l.ID)
		}
		return ids
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(st, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	k, err := kmm.New(kmmSettings(cfg), store, topo, peers, st, a.logger.With("part", "kmm"), opts...)
	if err != nil {
		return err
	}
	every, keep := cfg.KMM.history()
	rec, err := stats.NewRecorder(st, store, every, keep, a.logger.With("part", "stats"))
	if err != nil {
		return err
	}

	grpcMetrics := grpcmetrics.New()
	reg.MustRegister(grpcMetrics)
	limiter := saeLimiter(cfg.SAELimit)
	gs := grpc.NewServer(append(grpcMetrics.ServerOptions(),
		grpc.Creds(credentials.NewTLS(grpcTLS)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(maxGRPCMessage),
		grpc.ChainUnaryInterceptor(saeLimits(limiter)),
		grpc.ForceServerCodecV2(newZeroingCodec()),
	)...)
	qkdv1.RegisterKeyServiceServer(gs, k)
	qkdv1.RegisterKeyStreamServiceServer(gs, k)
	// Operators read the node's own tree, with its live state, over gNMI.
	live := &liveNode{node: cfg.Node}
	if ctl != nil {
		gnmipb.RegisterGNMIServer(gs, gnmiserver.New(&nodeTrees{node: cfg.Node, ctl: ctl}, nil).WithLive(live).WithHistory(&nodeHistory{rec: rec}))
	}
	keysync.Register(gs, k)

	emu := emulator.NewServer(a.logger.With("part", "emulator"))
	emu.Register(gs)
	remoteSvc := remote.NewService(a.logger.With("part", "driver-service"), remote.WithNode(cfg.Node))
	remoteSvc.Register(gs)
	grpcMetrics.Init(gs)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	drivers := newDriverSet(ctx, cfg, k, emu, remoteSvc, peers, a.logger)
	defer drivers.closeAll()

	gw, err := gateway.New(k, a.logger.With("part", "gateway"), gateway.WithLimiter(limiter))
	if err != nil {
		return err
	}
	// Headers of an ETSI 014 request are a few hundred bytes (a GET
	// dec_keys names one key_ID); 64 KiB instead of net/http's 1 MiB.
	restSrv := &http.Server{Handler: gw, TLSConfig: restTLS, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 64 << 10, ErrorLog: slog.NewLogLogger(a.logger.Handler(), slog.LevelDebug)}
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// Profiles help operators find where a node spends its time; they
	// carry no key material, and the metrics port is for operators only.
	metricsMux.HandleFunc("/debug/pprof/", pprof.Index)
	metricsMux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	metricsMux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	ready := readiness{store: store}
	if ctl != nil {
		ready.session = func() bool { sb := live.sb.Load(); return sb != nil && sb.up.Load() }
	}
	metricsMux.Handle("/readyz", ready)
	metricsSrv := &http.Server{Handler: metricsMux, ReadHeaderTimeout: 10 * time.Second}

	grpcLn, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("gRPC listener: %w", err)
	}
	restLn, err := net.Listen("tcp", cfg.RESTAddr)
	if err != nil {
		grpcLn.Close()
		return fmt.Errorf("REST listener: %w", err)
	}
	var metricsLn net.Listener
	if cfg.MetricsAddr != "" {
		if metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			grpcLn.Close()
			restLn.Close()
			return fmt.Errorf("metrics listener: %w", err)
		}
	}

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	serve := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	serve("gRPC server", func() error { return gs.Serve(grpcLn) })
	serve("ETSI 014 server", func() error { return restSrv.ServeTLS(restLn, "", "") })
	if metricsLn != nil {
		serve("metrics server", func() error { return metricsSrv.Serve(metricsLn) })
	}
	kmmDone := make(chan struct{})
	go func() {
		defer close(kmmDone)
		k.Run(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		rec.Run(ctx)
	}()
	if ctl != nil {
		cl, err := ctlclient.New(cfg.Controllers, clientTLS)
		if err != nil {
			return err
		}
		defer cl.Close()
		sb := &southbound{cfg: cfg, client: cl, ctl: ctl, kmm: k, store: store, drivers: drivers, logger: a.logger.With("part", "southbound"),
			notes: make(chan *qkdv1.Notification, 64)}
		drivers.onDown = func(link, why string) {
			sb.notify(&qkdv1.Notification{Kind: "sdqkdn_link_down", Link: link, Status: "OFF", Severity: "MAJOR", Message: why})
		}
		ctl.open, ctl.connect = sb.openApp, sb.connectApp
		live.sb.Store(sb)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sb.run(ctx)
		}()
	} else {
		for _, l := range cfg.Topology.Links {
			if err := drivers.start(l); err != nil {
				cancel()
				return err
			}
		}
	}
	a.logger.InfoContext(ctx, "agent ready", "kme_id", cfg.KMEID, "sae_rate_limit", limiter.Rate(), "sae_burst", limiter.Burst(), "rest", "https://"+cfg.RESTAddr, "grpc", cfg.GRPCAddr, "metrics", cfg.MetricsAddr, "links", len(cfg.Topology.Links), "controllers", cfg.Controllers)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		a.logger.ErrorContext(ctx, "agent stopping on error", "err", runErr)
	}
	a.logger.Info("agent shutting down")
	cancel()
	drivers.closeAll()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	restSrv.Shutdown(sctx)
	metricsSrv.Shutdown(sctx)
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-sctx.Done():
		gs.Stop()
	}
	wg.Wait()
	<-kmmDone
	a.logger.Info("agent stopped")
	return runErr
}

// saeLimiter is the per-SAE request limit of the configuration.
func saeLimiter(c *RateLimit) *ratelimit.Limiter {
	rate, burst := float64(ratelimit.DefaultRate), ratelimit.DefaultBurst
	if c != nil {
		if c.RequestsPerSecond != 0 {
			rate = c.RequestsPerSecond
		}
		if c.Burst > 0 {
			burst = c.Burst
		}
	}
	return ratelimit.New(rate, burst)
}

func kmmSettings(cfg Config) kmm.Settings {
	s := cfg.KMM
	return kmm.Settings{
		Node:              cfg.Node,
		KMEID:             cfg.KMEID,
		KeySize:           s.KeySize,
		MinKeySize:        s.MinKeySize,
		MaxKeySize:        s.MaxKeySize,
		MaxKeysPerRequest: s.MaxKeysPerRequest,
		PoolMax:           s.PoolMax,
		KeyLifetime:       time.Duration(s.KeyLifetime),
		AllocPeriod:       time.Duration(s.AllocPeriod),
		DefaultQoS:        keystore.QoS{KeyRate: uint32(s.DefaultKeyRate), MaxBuffer: uint32(s.DefaultMaxBuffer)},
		ConfigWait:        configWait(cfg),
	}
}

// configWait is kmm.Settings.ConfigWait: with a controller, a peer's
// message about a stream this node has not been pushed yet waits for the
// push (they are sent to the nodes of a path together).
func configWait(cfg Config) time.Duration {
	if len(cfg.Controllers) == 0 {
		return 0
	}
	return 250 * time.Millisecond
}

// staticTopology serves kmm.Topology from the agent's configuration. It is
// the seam the controller will replace: it pushes the same facts.
type staticTopology struct {
	node   string
	saes   map[string]string
	kmes   map[string]string
	byPeer map[string]kmm.Link
	byID   map[string]kmm.Link
	addrs  map[string]string
}

func newStaticTopology(cfg Config) *staticTopology {
	t := &staticTopology{node: cfg.Node, saes: map[string]string{}, kmes: map[string]string{}, byPeer: map[string]kmm.Link{}, byID: map[string]kmm.Link{}, addrs: map[string]string{}}
	for _, s := range cfg.Topology.SAEs {
		t.saes[s.ID] = s.Node
	}
	for _, n := range cfg.Topology.Nodes {
		t.kmes[n.ID] = n.KMEID
		t.addrs[n.ID] = n.GRPCAddr
	}
	for _, l := range cfg.Topology.Links {
		kb := l.Driver.KeyBytes
		if kb == 0 {
			kb = 32
		}
		kl := kmm.Link{ID: l.ID, Peer: l.Peer, Master: l.Role == "master", KeyBytes: kb}
		t.byID[l.ID] = kl
		if _, dup := t.byPeer[l.Peer]; !dup {
			t.byPeer[l.Peer] = kl
		}
	}
	return t
}

func (t *staticTopology) SAENode(id string) (string, bool) { n, ok := t.saes[id]; return n, ok }
func (t *staticTopology) LinkTo(node string) (kmm.Link, bool) {
	l, ok := t.byPeer[node]
	return l, ok
}
func (t *staticTopology) LinkByID(id string) (kmm.Link, bool) { l, ok := t.byID[id]; return l, ok }
func (t *staticTopology) KMEID(node string) (string, bool)    { k, ok := t.kmes[node]; return k, ok }
func (t *staticTopology) addr(node string) (string, bool)     { a, ok := t.addrs[node]; return a, ok }

// peerConns dials the gRPC port of other nodes with this node's certificate
// and checks that the server's certificate names the node it should.
type peerConns struct {
	addrs func(node string) (string, bool)
	tls   *tls.Config

	mu    sync.Mutex // guards conns
	conns map[string]*grpc.ClientConn
}

func newPeerConns(addrs func(node string) (string, bool), base *tls.Config) *peerConns {
	return &peerConns{addrs: addrs, tls: base, conns: map[string]*grpc.ClientConn{}}
}

func (p *peerConns) conn(node string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[node]; ok {
		return c, nil
	}
	addr, ok := p.addrs(node)
	if !ok || addr == "" {
		return nil, fmt.Errorf("no gRPC address for node %q", node)
	}
	tc := p.tls.Clone()
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		id, err := pki.PeerIdentity(cs)
		if err != nil {
			return err
		}
		if id.Kind != pki.KindNode || id.ID != node {
			return fmt.Errorf("server at %s is %s, want node %s", addr, id, node)
		}
		return nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}))
	if err != nil {
		return nil, err
	}
	p.conns[node] = c
	return c, nil
}

// KeySync implements kmm.Peers.
func (p *peerConns) KeySync(node string) (qkdv1.KeySyncServiceClient, error) {
	c, err := p.conn(node)
	if err != nil {
		return nil, err
	}
	return qkdv1.NewKeySyncServiceClient(c), nil
}

func (p *peerConns) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}
