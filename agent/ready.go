package agent

import (
	"net/http"
)

// readiness is the agent's /readyz: 200 "ok" while the node can serve SAEs
// and peers, 503 with a one-line reason otherwise. Kubernetes takes a Pod
// that is not ready out of its Services, so an SAE is not sent to a KMM
// that cannot hand out keys. /healthz stays the liveness check: a node
// cut off from the controller must not be restarted for it, since a
// restart does not bring the controller back.
type readiness struct {
	// store is the key store; it must be open and readable.
	store interface{ Check() error }
	// session reports whether a Session with the controller leader is up
	// (it has delivered its first push). Nil when the agent runs without a
	// controller (the fig4 testbed): then no session is required.
	session func() bool
}

func (r readiness) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	if err := r.store.Check(); err != nil {
		http.Error(w, "key store: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	if r.session != nil && !r.session() {
		http.Error(w, "no controller session", http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}
