package transport_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tandemhq/tandem/internal/transport"
)

// HTTPOptions.TLS and Config.TLS configure https: a transport trusting the
// server's certificate reaches it, one with the system's roots does not.
func TestTLSConfig(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(ts.Close)
	trusting := ts.Client().Transport.(*http.Transport).TLSClientConfig

	for _, tc := range []struct {
		name string
		cfg  transport.Config
		ok   bool
	}{
		{"Config.TLS", transport.Config{Servers: []string{ts.URL}, TLS: trusting}, true},
		{"HTTPOptions.TLS", transport.Config{Servers: []string{ts.URL}, HTTPClient: transport.NewHTTPClient(transport.HTTPOptions{TLS: trusting})}, true},
		{"no TLS configuration", transport.Config{Servers: []string{ts.URL}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := transport.New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var out struct{ OK bool }
			err = tr.Direct(context.Background(), ts.URL, &transport.Call{Op: "get", Method: http.MethodGet, Path: "/"}, &out)
			switch {
			case tc.ok && (err != nil || !out.OK):
				t.Fatalf("got %v, %+v; want ok", err, out)
			case !tc.ok && (err == nil || !strings.Contains(err.Error(), "certificate")):
				t.Fatalf("got %v; want a certificate error", err)
			}
		})
	}
}
