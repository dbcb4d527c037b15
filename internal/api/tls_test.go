package api_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/api"
	"github.com/tandemhq/tandem/internal/pki"
)

// tlsWorld is a CA of cluster "dev" and a helper to make stores of it.
type tlsWorld struct {
	t  *testing.T
	ca *pki.CA
}

func newTLSWorld(t *testing.T) *tlsWorld {
	t.Helper()
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca"), "dev", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tlsWorld{t: t, ca: ca}
}

// store issues a certificate of role and id (role "" for none) and loads it.
func (w *tlsWorld) store(role pki.Role, id string) *pki.Store {
	w.t.Helper()
	var cert, key string
	if role != "" {
		is, err := pki.Issue(w.ca, role, id, nil, nil, time.Hour, pki.WithOutput(w.t.TempDir(), string(role)+"-"+id))
		if err != nil {
			w.t.Fatal(err)
		}
		cert, key = is.CertFile, is.KeyFile
	}
	s, err := pki.NewStore(cert, key, filepath.Join(w.ca.Dir, pki.CACertFile), nil)
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

// serve starts h on a real TLS listener with the server certificate rm1,
// client certificates verified if given, as tandem server --tls-cert does.
func (w *tlsWorld) serve(h http.Handler) *httptest.Server {
	w.t.Helper()
	return w.serveLog(h, log.New(io.Discard, "", 0))
}

// serveLog is serve with the http.Server's error log.
func (w *tlsWorld) serveLog(h http.Handler, errorLog *log.Logger) *httptest.Server {
	w.t.Helper()
	cfg, err := pki.ServerConfig(w.store(pki.RoleServer, "rm1"), pki.ServerOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(h)
	ts.TLS = cfg
	ts.Config.ErrorLog = errorLog
	ts.StartTLS()
	w.t.Cleanup(ts.Close)
	return ts
}

// client calls servers of the world presenting s's certificate, if any.
func (w *tlsWorld) client(s *pki.Store) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientConfig(s, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer}})}}
}

func do(t *testing.T, c *http.Client, method, url, body string, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The role rules of api.TLS over real TLS connections: an agent syncs only
// as itself, no other role syncs, an agent certificate gets nothing but its
// sync, and other certificates leave the rest to tokens.
func TestTLSRoles(t *testing.T) {
	w := newTLSWorld(t)
	f := newFake("rm1", 1, tandem.StateActive)
	audit := &syncBuffer{}
	h := api.New(f, slog.New(slog.DiscardHandler),
		api.WithSecurity(api.Security{Audit: acl.NewAuditLog(audit)}),
		api.WithTLS(api.TLS{Cluster: "dev"}))
	ts := w.serve(h)

	w1 := w.client(w.store(pki.RoleAgent, "w1"))
	cli := w.client(w.store(pki.RoleCLI, "ana"))
	srv := w.client(w.store(pki.RoleServer, "rm2"))
	none := w.client(w.store("", ""))
	syncAs := func(id string) string { return `{"agent":{"id":"` + id + `"}}` }

	cases := []struct {
		name         string
		c            *http.Client
		method, path string
		body         string
		want         int
	}{
		{"w1 syncs as w1", w1, "POST", "/v1/agent/sync", syncAs("w1"), 200},
		{"w1 syncs as w2", w1, "POST", "/v1/agent/sync", syncAs("w2"), 403},
		{"cli certificate syncs", cli, "POST", "/v1/agent/sync", syncAs("ana"), 403},
		{"server certificate syncs", srv, "POST", "/v1/agent/sync", syncAs("rm2"), 403},
		{"no certificate syncs", none, "POST", "/v1/agent/sync", syncAs("w1"), 401},
		{"agent certificate on a transition", w1, "POST", "/v1/ha/transition", `{"to":"standby"}`, 403},
		{"agent certificate on a failover", w1, "POST", "/v1/ha/failover", `{"from":"rm1","to":"rm2"}`, 403},
		{"agent certificate reads jobs", w1, "GET", "/v1/jobs", "", 403},
		{"agent certificate on /isActive", w1, "GET", "/isActive", "", 200},
		{"cli certificate reads state", cli, "GET", "/v1/ha/state", "", 200},
		{"server certificate reads state", srv, "GET", "/v1/ha/state", "", 200},
		{"no certificate reads state", none, "GET", "/v1/ha/state", "", 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, body := do(t, tc.c, tc.method, ts.URL+tc.path, tc.body, map[string]string{"Content-Type": "application/json"})
			if got != tc.want {
				t.Fatalf("got %d (%s), want %d", got, body, tc.want)
			}
		})
	}

	// Each denial is in the audit log with the certificate's role and ID.
	wantDenied := map[string]bool{"agent/w1 /v1/agent/sync": false, "cli/ana /v1/agent/sync": false,
		"server/rm2 /v1/agent/sync": false, "agent/w1 /v1/ha/transition": false, "/ /v1/agent/sync": false}
	for _, e := range auditEntries(t, audit.String()) {
		if e.Decision != acl.Deny {
			continue
		}
		k := e.Identity.CertRole + "/" + e.Identity.CertID + " " + e.Route
		if _, ok := wantDenied[k]; ok {
			wantDenied[k] = true
		}
	}
	for k, seen := range wantDenied {
		if !seen {
			t.Errorf("no audit denial for %s in:\n%s", k, audit.String())
		}
	}
}

// With tokens enforced, a certificate does not replace a token: a cli
// certificate without one is 401, with a read token it reads, and the audit
// line of a write names both.
func TestTLSCertificateStillNeedsToken(t *testing.T) {
	w := newTLSWorld(t)
	f := newFake("rm1", 1, tandem.StateActive)
	audit := &syncBuffer{}
	h := api.New(f, slog.New(slog.DiscardHandler),
		api.WithSecurity(api.Security{ACL: newFakeACL(tandem.ServerRef{ID: "rm1"}), Enforce: true, Audit: acl.NewAuditLog(audit)}),
		api.WithTLS(api.TLS{Cluster: "dev"}))
	ts := w.serve(h)
	cli := w.client(w.store(pki.RoleCLI, "ana"))
	if got, body := do(t, cli, "GET", ts.URL+"/v1/ha/state", "", nil); got != 401 {
		t.Fatalf("cli certificate without a token: got %d (%s), want 401", got, body)
	}
	if got, body := do(t, cli, "GET", ts.URL+"/v1/ha/state", "", bearer(readSecret)); got != 200 {
		t.Fatalf("cli certificate with a read token: got %d (%s), want 200", got, body)
	}
	if got, body := do(t, cli, "POST", ts.URL+"/v1/jobs", `{"command":["true"]}`, bearer(submitSecret)); got/100 != 2 {
		t.Fatalf("cli certificate with a submit token: got %d (%s), want 2xx", got, body)
	}
	var found bool
	for _, e := range auditEntries(t, audit.String()) {
		if e.Route == "/v1/jobs" && e.Decision == acl.Allow {
			found = true
			if e.Identity.CertRole != "cli" || e.Identity.CertID != "ana" || e.Identity.TokenName != "ci" {
				t.Errorf("audit identity: got %+v, want cli ana with token ci", e.Identity)
			}
		}
	}
	if !found {
		t.Errorf("no audit line for the submission in:\n%s", audit.String())
	}
	// An agent's sync needs no token, only its certificate.
	w1 := w.client(w.store(pki.RoleAgent, "w1"))
	if got, body := do(t, w1, "POST", ts.URL+"/v1/agent/sync", `{"agent":{"id":"w1"}}`, nil); got != 200 {
		t.Fatalf("agent sync without a token: got %d (%s), want 200", got, body)
	}
}

// A certificate of another cluster's CA, an expired one and, on a listener
// requiring one, none at all are refused in the handshake itself.
func TestTLSHandshakeRefused(t *testing.T) {
	w := newTLSWorld(t)
	f := newFake("rm1", 1, tandem.StateActive)
	audit := &syncBuffer{}
	a := api.New(f, slog.New(slog.DiscardHandler), api.WithTLS(api.TLS{Cluster: "dev"}),
		api.WithSecurity(api.Security{Audit: acl.NewAuditLog(audit)}))
	ts := w.serveLog(a, a.HandshakeLog(slog.New(slog.DiscardHandler)))

	other := newTLSWorld(t) // another CA, same cluster name
	is, err := pki.Issue(w.ca, pki.RoleCLI, "old", nil, nil, time.Hour,
		pki.WithOutput(t.TempDir(), "old"), pki.WithNotBefore(time.Now().Add(-3*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	expiredCert, err := tls.LoadX509KeyPair(is.CertFile, is.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	isNew, err := pki.Issue(w.ca, pki.RoleCLI, "new", nil, nil, time.Hour,
		pki.WithOutput(t.TempDir(), "new"), pki.WithNotBefore(time.Now().Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	notYet, err := tls.LoadX509KeyPair(isNew.CertFile, isNew.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	good := w.store("", "")
	wrongCA := other.store(pki.RoleCLI, "ana")

	// The server's certificate does not chain to the other CA: the client
	// refuses it.
	_, err = tls.Dial("tcp", ts.Listener.Addr().String(), pki.ClientConfig(wrongCA, pki.ClientOptions{}))
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("dial with another CA: got %v, want an unknown authority error", err)
	}
	// A client certificate of the other CA, or an expired one: the server
	// refuses it (TLS 1.3 reports it on the first read).
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		want string // the alert the server sends
	}{
		{"wrong CA", mustPair(t, other, pki.RoleCLI, "bob"), "tls: unknown certificate authority"},
		{"expired", expiredCert, "tls: expired certificate"},
		{"not yet valid", notYet, "tls: expired certificate"}, // Go's alert for both
	} {
		name, cert := tc.name, tc.cert
		cfg := pki.ClientConfig(good, pki.ClientOptions{})
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		conn, err := tls.Dial("tcp", ts.Listener.Addr().String(), cfg)
		if err == nil {
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s client certificate: got %v, want the handshake refused with %q", name, err, tc.want)
		}
	}
	// A client that connects and hangs up is no denial.
	if conn, err := net.Dial("tcp", ts.Listener.Addr().String()); err == nil {
		conn.Close()
	}

	// Each refusal is a deny line of the audit log, with the client's
	// address and why: the client's refusal of the server's certificate,
	// the server's of the three client certificates; the hang-up is not.
	// net/http logs a handshake error after the client has seen it, so
	// wait for the lines.
	want := []string{"bad certificate", "certificate signed by unknown authority", "certificate has expired or is not yet valid", "certificate has expired or is not yet valid"}
	var entries []acl.AuditEntry
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries = nil
		for _, line := range strings.Split(strings.TrimSpace(audit.String()), "\n") {
			var e acl.AuditEntry
			if line != "" && json.Unmarshal([]byte(line), &e) == nil {
				entries = append(entries, e)
			}
		}
		if len(entries) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(entries) != len(want) {
		t.Fatalf("audit log has %d handshake lines, want %d:\n%s", len(entries), len(want), audit.String())
	}
	got := map[string]int{}
	for _, e := range entries {
		if e.Route != "tls-handshake" || e.Decision != "deny" || e.Server != "rm1" || !strings.HasPrefix(e.Remote, "127.0.0.1:") {
			t.Errorf("audit line %+v: want a tls-handshake deny of rm1 naming the client's address", e)
		}
		for _, w := range want {
			if strings.Contains(e.Reason, w) {
				got[w]++
				break
			}
		}
	}
	for _, w := range want {
		if got[w] == 0 {
			t.Errorf("no audit line gives the reason %q:\n%s", w, audit.String())
		}
	}
}

func mustPair(t *testing.T, w *tlsWorld, role pki.Role, id string) tls.Certificate {
	t.Helper()
	is, err := pki.Issue(w.ca, role, id, nil, nil, time.Hour, pki.WithOutput(t.TempDir(), id))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.LoadX509KeyPair(is.CertFile, is.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
