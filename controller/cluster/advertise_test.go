package cluster

import (
	"net"
	"testing"
)

func TestAdvertised(t *testing.T) {
	bound := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 7543}
	for _, tc := range []struct{ addr, want string }{
		// A StatefulSet Pod's name: kept, so a rescheduled Pod (new IP) is
		// still found under the name in the Raft configuration.
		{"qkdnet-controller-0.qkdnet-controller.qkd.svc.cluster.local:7543", "qkdnet-controller-0.qkdnet-controller.qkd.svc.cluster.local:7543"},
		{"localhost:7543", "localhost:7543"},
		// IP literals, wildcard and port 0: what the listener got.
		{"10.0.0.7:7543", "10.0.0.7:7543"},
		{":7543", "10.0.0.7:7543"},
		{"c1.example:0", "10.0.0.7:7543"},
		{"bad", "10.0.0.7:7543"},
	} {
		if got := advertised(tc.addr, bound).String(); got != tc.want {
			t.Errorf("advertised(%q) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
