// Package dashboard serves the controller's live network page: the network
// drawn as a graph (nodes, QKD links coloured by state, pool levels),
// per-link key rate and pool level over time, the key streams with their
// requested and delivered rates, and the Raft cluster with its leader. The
// page polls /dashboard/api/network once a second; it is self-contained (no
// script or style from elsewhere), so it works on an isolated network.
package dashboard

import (
	_ "embed"
	"net/http"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
)

// Source is what the page shows (controller.Controller).
type Source interface {
	Network() *qkdv1.GetNetworkResponse
	Status() (*qkdv1.StatusResponse, error)
}

//go:embed index.html
var page []byte

// Handler serves the page at / and its data at /api/network, relative to
// where it is mounted (strip the prefix before it).
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		w.Write(page)
	})
	mux.HandleFunc("GET /api/network", func(w http.ResponseWriter, _ *http.Request) {
		st, err := src.Status()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		// One document: {"network": GetNetworkResponse, "cluster": StatusResponse}.
		m := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}
		net, err := m.Marshal(src.Network())
		if err == nil {
			var cl []byte
			if cl, err = m.Marshal(proto.Message(st)); err == nil {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Cache-Control", "no-store")
				w.Write([]byte(`{"network":`))
				w.Write(net)
				w.Write([]byte(`,"cluster":`))
				w.Write(cl)
				w.Write([]byte("}"))
				return
			}
		}
		http.Error(w, err.Error(), http.StatusInternalServerError)
	})
	return mux
}
