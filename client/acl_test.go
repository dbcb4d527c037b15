package client

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
)

// serveOn starts h on host (a loopback address of its own), closed at
// cleanup; it skips the test where the address cannot be bound.
func serveOn(t *testing.T, host string, h http.Handler) *httptest.Server {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("cannot listen on %s: %v (CI is set, so this is a failure)", host, err)
		}
		t.Skipf("cannot listen on %s: %v", host, err)
	}
	s := httptest.NewUnstartedServer(h)
	s.Listener.Close()
	s.Listener = ln
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// Credentials survive a redirect between two configured servers on
// different host names (127.0.0.1 and 127.0.0.2: ports alone would hide a
// client that keys credentials on the host), and never go to a host outside
// the configured servers (127.0.0.3), wherever a redirect points.
func TestTokenAcrossHostsStaysWithConfiguredServers(t *testing.T) {
	const token = "tdm_s3cret"
	var mu sync.Mutex
	seen := map[string][]string{} // server -> Authorization of each request
	var active, outsider *httptest.Server
	record := func(name string, h http.HandlerFunc) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen[name] = append(seen[name], r.Header.Get("Authorization"))
			mu.Unlock()
			h(w, r)
		})
	}
	redirectTo := func(s **httptest.Server) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", (*s).URL+r.URL.RequestURI())
			w.WriteHeader(http.StatusTemporaryRedirect)
		}
	}
	answer := func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":{"code":"unauthenticated","message":"unknown or revoked token"}}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"name":"ci","policy":"submit","accessor":"` + strings.Repeat("a", 32) + `"}`))
	}
	active = serveOn(t, "127.0.0.1", record("active", answer))
	standby := serveOn(t, "127.0.0.2", record("standby", redirectTo(&active)))
	outsider = serveOn(t, "127.0.0.3", record("outsider", answer))
	rogue := serveOn(t, "127.0.0.2", record("rogue", redirectTo(&outsider)))

	c, err := New(Config{Servers: []string{standby.URL, active.URL}, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	self, err := c.TokenSelf(context.Background())
	if err != nil || self.Name != "ci" {
		t.Fatalf("through the standby's redirect from 127.0.0.2 to 127.0.0.1: got %+v, %v; want the active's answer", self, err)
	}
	// A configured server that redirects out of the list: the outsider
	// gets the request without the token, and says so.
	c2, err := New(Config{Servers: []string{rogue.URL, active.URL}, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.TokenSelf(context.Background()); err == nil || !strings.Contains(err.Error(), "unknown or revoked") {
		t.Fatalf("redirected to an unlisted host: got %v, want the outsider's 401 (it got no token)", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, name := range []string{"standby", "active", "rogue"} {
		if len(seen[name]) == 0 {
			t.Fatalf("%s got no request", name)
		}
		for _, got := range seen[name] {
			if got != "Bearer "+token {
				t.Errorf("configured server %s: got Authorization %q, want the token", name, got)
			}
		}
	}
	if len(seen["outsider"]) == 0 {
		t.Fatal("the outsider got no request: the test proves nothing")
	}
	for _, got := range seen["outsider"] {
		if got != "" {
			t.Errorf("the unlisted host 127.0.0.3 got Authorization %q, want none", got)
		}
	}
}
