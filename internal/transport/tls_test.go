package transport_test

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/pki"
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

// With Config.TLSProvesServers, the token follows a standby's redirect to
// an https server the caller did not list once the handshake has proved it
// holds a server certificate of the cluster; a host with an agent's
// certificate or one of another CA never gets a request, and without the
// option the unlisted server gets no token.
func TestTLSProvesServersCarriesTheToken(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.CreateCA(dir, "dev", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	otherCA, err := pki.CreateCA(otherDir, "dev", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		mu   sync.Mutex
		auth []string
	}
	caDir := map[*pki.CA]string{ca: dir, otherCA: otherDir}
	serveAs := func(t *testing.T, ca *pki.CA, role pki.Role, id string, h http.Handler) *httptest.Server {
		is, err := pki.Issue(ca, role, id, nil, nil, time.Hour, pki.WithOutput(t.TempDir(), id))
		if err != nil {
			t.Fatal(err)
		}
		st, err := pki.NewStore(is.CertFile, is.KeyFile, filepath.Join(caDir[ca], pki.CACertFile), nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := pki.ServerConfig(st, pki.ServerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewUnstartedServer(h)
		ts.TLS = cfg
		ts.Config.ErrorLog = log.New(io.Discard, "", 0)
		ts.StartTLS()
		t.Cleanup(ts.Close)
		return ts
	}
	record := func(s *seen) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			s.auth = append(s.auth, r.Header.Get("Authorization"))
			s.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"ok":true}`))
		})
	}
	clientStore, err := pki.NewStore("", "", filepath.Join(dir, pki.CACertFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	clientTLS := pki.ClientConfig(clientStore, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer}})

	for _, tc := range []struct {
		name     string
		ca       *pki.CA
		role     pki.Role
		proves   bool
		wantAuth string // "" and reached: no token; "-": never reached
	}{
		{"a server of the cluster", ca, pki.RoleServer, true, "Bearer " + tokenForTLS},
		{"without the option", ca, pki.RoleServer, false, ""},
		{"an agent's certificate", ca, pki.RoleAgent, true, "-"},
		{"a server of another CA", otherCA, pki.RoleServer, true, "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var target seen
			active := serveAs(t, tc.ca, tc.role, "active", record(&target))
			standby := serveAs(t, ca, pki.RoleServer, "standby", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, active.URL+r.URL.Path, http.StatusTemporaryRedirect)
			}))
			tr, err := transport.New(transport.Config{Servers: []string{standby.URL}, TLS: clientTLS, Token: tokenForTLS,
				TLSProvesServers: tc.proves, Backoff: transport.Backoff{Base: time.Millisecond, Max: time.Millisecond, Attempts: 1}})
			if err != nil {
				t.Fatal(err)
			}
			var out struct{ OK bool }
			err = tr.Do(context.Background(), &transport.Call{Op: "get", Method: http.MethodGet, Path: "/x"}, &out)
			target.mu.Lock()
			defer target.mu.Unlock()
			if tc.wantAuth == "-" {
				if err == nil || len(target.auth) != 0 {
					t.Fatalf("got %v and requests %q; want the handshake refused and no request", err, target.auth)
				}
				return
			}
			if err != nil || len(target.auth) != 1 || target.auth[0] != tc.wantAuth {
				t.Fatalf("got %v and Authorization %q; want one request with %q", err, target.auth, tc.wantAuth)
			}
		})
	}
}

const tokenForTLS = "tdm_secret"
