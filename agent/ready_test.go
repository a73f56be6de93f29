package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/qkdnet/qkdnet/kmm/keystore"
)

func TestReadyz(t *testing.T) {
	store, err := keystore.Open(t.TempDir(), keystore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	get := func(h http.Handler) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		b, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(b)
	}
	up := false
	for _, tc := range []struct {
		name    string
		h       readiness
		session bool
		code    int
		want    string
	}{
		// fig4: no controller, so the open store is enough.
		{"no controller", readiness{store: store}, false, 200, "ok\n"},
		{"controller, no session", readiness{store: store, session: func() bool { return up }}, false, 503, "no controller session"},
		{"controller, session up", readiness{store: store, session: func() bool { return up }}, true, 200, "ok\n"},
	} {
		up = tc.session
		code, body := get(tc.h)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %q, want %d %q", tc.name, code, body, tc.code, tc.want)
		}
		if strings.Count(strings.TrimSuffix(body, "\n"), "\n") != 0 {
			t.Errorf("%s: reason %q is not one line", tc.name, body)
		}
	}

	// A closed store is not ready, whatever the session says.
	store.Close()
	up = true
	code, body := get(readiness{store: store, session: func() bool { return up }})
	if code != 503 || !strings.Contains(body, "key store closed") {
		t.Errorf("closed store: %d %q, want 503 naming the key store", code, body)
	}
}
