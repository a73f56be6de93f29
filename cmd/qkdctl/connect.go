package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/qkdnet/qkdnet/controller/ctlclient"
	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// endpointsFile is what qkdctl reads of endpoints.json (the file has more:
// KMMs, SAEs). Paths are relative to the file's folder.
type endpointsFile struct {
	CACert      string `json:"ca_cert"`
	Controllers []struct {
		ID   string `json:"id"`
		GRPC string `json:"grpc"`
		Raft string `json:"raft"`
	} `json:"controllers"`
	Operator *struct {
		Cert string `json:"cert"`
		Key  string `json:"key"`
	} `json:"operator"`
}

// target is where the controller is and how to prove who we are.
type target struct {
	addrs          []string
	ca, cert, key  string
	endpointsFound string // the endpoints file read, if any
}

// isSet reports whether a global flag was given.
func (c *cli) isSet(name string) bool {
	set := false
	c.gfs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// target works out the controllers and the certificate from the endpoints
// file and the flags, the flags winning.
func (c *cli) target() (target, error) {
	var t target
	path := c.g.endpoints
	explicit := c.isSet("endpoints")
	if path != "" {
		if st, err := os.Stat(path); err == nil && st.IsDir() {
			path = filepath.Join(path, "endpoints.json")
		}
		e, err := readEndpoints(path)
		switch {
		case err == nil:
			t.endpointsFound = path
			for _, ctl := range e.Controllers {
				if ctl.GRPC != "" {
					t.addrs = append(t.addrs, ctl.GRPC)
				}
			}
			dir := filepath.Dir(path)
			t.ca = relTo(dir, e.CACert)
			if e.Operator != nil {
				t.cert, t.key = relTo(dir, e.Operator.Cert), relTo(dir, e.Operator.Key)
			}
		case errors.Is(err, fs.ErrNotExist) && !explicit:
			// No default file: the flags must say everything.
		case errors.Is(err, fs.ErrNotExist):
			return t, &configError{fmt.Sprintf("--endpoints %s: no such file", path)}
		default:
			return t, err
		}
	}
	if c.g.controllers != "" {
		t.addrs = nil
		for _, a := range strings.Split(c.g.controllers, ",") {
			if a = strings.TrimSpace(a); a != "" {
				t.addrs = append(t.addrs, a)
			}
		}
	}
	for _, f := range []struct {
		val string
		to  *string
	}{{c.g.ca, &t.ca}, {c.g.cert, &t.cert}, {c.g.key, &t.key}} {
		if f.val != "" {
			*f.to = f.val
		}
	}
	for _, a := range t.addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return t, &configError{fmt.Sprintf("controller address %q: want HOST:PORT", a)}
		}
	}
	where := "no " + defaultEndpoints + " here"
	if t.endpointsFound != "" {
		where = t.endpointsFound + " has none"
	}
	switch {
	case len(t.addrs) == 0:
		return t, &configError{fmt.Sprintf("no controller to ask: give --controllers HOST:PORT,... or --endpoints FILE (%s)", where)}
	case t.cert == "" && t.key == "":
		return t, &configError{fmt.Sprintf("no operator certificate: give --cert FILE --key FILE or --endpoints FILE with \"operator\" (%s)", where)}
	case t.cert == "":
		return t, &configError{"--key without --cert: give both"}
	case t.key == "":
		return t, &configError{"--cert without --key: give both"}
	case t.ca == "":
		return t, &configError{fmt.Sprintf("no CA certificate: give --ca FILE or --endpoints FILE with \"ca_cert\" (%s)", where)}
	}
	return t, nil
}

func readEndpoints(path string) (endpointsFile, error) {
	var e endpointsFile
	b, err := os.ReadFile(path)
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("%s: %w", path, err)
	}
	return e, nil
}

func relTo(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, filepath.FromSlash(p))
}

// call is a command's connection to the controller cluster.
type call struct {
	*cli
	ctx   context.Context
	stop  context.CancelFunc
	cl    *ctlclient.Client
	addrs []string
	tls   *tls.Config // for reaching node agents too (history)
}

func (c *cli) connect(ctx context.Context) (*call, error) {
	t, err := c.target()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := pki.ClientTLS(t.ca, t.cert, t.key)
	if err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "pki: "))
	}
	cl, err := ctlclient.New(t.addrs, tlsCfg)
	if err != nil {
		return nil, err
	}
	x := &call{cli: c, cl: cl, addrs: t.addrs, tls: tlsCfg}
	x.ctx, x.stop = context.WithTimeout(ctx, c.g.timeout)
	return x, nil
}

func (x *call) close() {
	x.stop()
	x.cl.Close()
}

// read calls fn on the leader if it can be reached, else on any replica:
// reads are answered by every replica, but only the leader knows the live
// state of the agents (sessions, applied versions, link status).
func (x *call) read(fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	seek := newLeaderSeek()
	return x.do(func(ctx context.Context, cc *grpc.ClientConn) error {
		if !seek.found {
			st, err := ctlclient.Cluster(cc).Status(ctx, &qkdv1.StatusRequest{})
			switch status.Code(err) {
			case codes.OK:
				if err := seek.check(st, cc.Target()); err != nil {
					return err
				}
			case codes.Unavailable, codes.DeadlineExceeded:
				return err
			}
			// Another refusal (a certificate of the wrong kind) is the
			// read's to report.
		}
		return fn(ctx, cc)
	})
}

// leaderSeek looks for the leader among the replicas ctlclient tries: it
// sends ctlclient to the leader a follower names, or on to the next replica
// when the follower knows no leader's address, and settles for a replica it
// has already asked once every one has been tried.
type leaderSeek struct {
	asked map[string]bool
	found bool
}

func newLeaderSeek() *leaderSeek { return &leaderSeek{asked: map[string]bool{}} }

// check returns nil to use the replica at addr that answered st, or a
// retryable error that makes ctlclient try elsewhere.
func (s *leaderSeek) check(st *qkdv1.StatusResponse, addr string) error {
	if st.GetState() == "Leader" || s.asked[addr] {
		s.found = true
		return nil
	}
	s.asked[addr] = true
	if hint := leaderHint(st, addr); hint != nil {
		return hint
	}
	return status.Errorf(codes.Unavailable, "controller %s is %s and knows no leader's address", st.GetId(), st.GetState())
}

// leaderHint is the NOT_LEADER error that sends ctlclient to the leader a
// follower's status names, or nil when there is none to go to.
func leaderHint(st *qkdv1.StatusResponse, here string) error {
	if st.GetState() == "Leader" || st.GetLeaderGrpc() == "" || st.GetLeaderGrpc() == here {
		return nil
	}
	s := status.Newf(codes.Unavailable, "controller %s is not the leader; the leader is %s at %s", st.GetId(), st.GetLeaderId(), st.GetLeaderGrpc())
	if d, err := s.WithDetails(&errdetails.ErrorInfo{
		Reason:   ctlclient.ReasonNotLeader,
		Domain:   "qkdnet",
		Metadata: map[string]string{"leader_id": st.GetLeaderId(), "leader_grpc": st.GetLeaderGrpc()},
	}); err == nil {
		s = d
	}
	return s.Err()
}

// do calls fn through the leader-following client within --timeout and
// turns running out of time into a reachError naming the controllers.
func (x *call) do(fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	var last, notLeader error
	err := x.cl.Do(x.ctx, func(ctx context.Context, cc *grpc.ClientConn) error {
		err := fn(ctx, cc)
		switch {
		case err == nil:
		case isNotLeader(err):
			notLeader = err
		case last == nil || (status.Code(err) != codes.DeadlineExceeded && status.Code(err) != codes.Canceled):
			last = err
		}
		return err
	})
	if err == nil {
		return nil
	}
	if x.ctx.Err() != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		if errors.Is(x.ctx.Err(), context.Canceled) {
			return errors.New("interrupted")
		}
		return &reachError{addrs: x.addrs, wait: x.g.timeout, last: last, notLeader: notLeader}
	}
	return err
}

func isNotLeader(err error) bool {
	_, _, ok := ctlclient.LeaderHint(err)
	return ok
}

// reachError is the cluster not answering (or having no leader) in time.
type reachError struct {
	addrs     []string
	wait      time.Duration
	last      error // the last failure other than a replica saying it does not lead
	notLeader error // the last answer of a replica that does not lead
}

func (e *reachError) Error() string {
	at := strings.Join(e.addrs, ", ")
	switch {
	case e.notLeader != nil:
		return fmt.Sprintf("no leader among the controllers at %s within %v (last: %s)", at, e.wait, status.Convert(e.notLeader).Message())
	case e.last == nil:
		return fmt.Sprintf("no controller reachable at %s within %v", at, e.wait)
	}
	return fmt.Sprintf("no controller reachable at %s within %v (last error: %s)", at, e.wait, transportText(e.last))
}

// transportText is a connection error without gRPC's wrapping.
func transportText(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	if st.Code() != codes.Unavailable {
		return statusText(st)
	}
	m := st.Message()
	for _, p := range []string{"connection error: desc = ", "\"", "transport: ", "Error while dialing: ", "authentication handshake failed: "} {
		m = strings.TrimPrefix(m, p)
	}
	return strings.TrimSuffix(m, "\"")
}

// codeMeaning says what a gRPC code means to an operator; it prefixes the
// controller's message unless the message says it already.
var codeMeaning = map[codes.Code]string{
	codes.InvalidArgument:    "invalid",
	codes.NotFound:           "not found",
	codes.AlreadyExists:      "already exists",
	codes.PermissionDenied:   "permission denied",
	codes.Unauthenticated:    "not authenticated",
	codes.FailedPrecondition: "refused",
	codes.Unavailable:        "unavailable",
	codes.DeadlineExceeded:   "timed out",
	codes.ResourceExhausted:  "resource exhausted",
	codes.Aborted:            "aborted",
	codes.Unimplemented:      "not supported by this controller",
	codes.Internal:           "controller error",
	codes.Unknown:            "error",
	codes.DataLoss:           "data loss",
	codes.OutOfRange:         "out of range",
	codes.Canceled:           "canceled",
}

// stateKinds are the prefixes of the controller state's own errors.
var stateKinds = []string{"invalid:", "not found:", "already exists:", "in use:"}

// statusText is a gRPC status as one operator-readable line.
func statusText(st *status.Status) string {
	msg := st.Message()
	known := false
	for _, p := range stateKinds {
		if strings.HasPrefix(msg, p) {
			known = true
		}
	}
	if m := codeMeaning[st.Code()]; m != "" && !known && !strings.HasPrefix(msg, m) {
		msg = m + ": " + msg
	}
	if st.Code() == codes.PermissionDenied && strings.Contains(msg, "may not call this") {
		msg += " (qkdctl needs an operator certificate, qkd://operator/<name>)"
	}
	return msg
}

// describe is an error as qkdctl reports it.
func describe(err error) string {
	var re *reachError
	if errors.As(err, &re) {
		return re.Error()
	}
	if st, ok := status.FromError(err); ok {
		return statusText(st)
	}
	return err.Error()
}
