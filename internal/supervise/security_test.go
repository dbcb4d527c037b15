package supervise

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/pki"
)

// testCA is a cluster's CA for the security tests, and the stores of the
// certificates it issued.
type testCA struct {
	t  *testing.T
	ca *pki.CA
}

func newTestCA(t *testing.T, cluster string) *testCA {
	t.Helper()
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca-"+cluster), cluster, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{t: t, ca: ca}
}

// store issues a certificate of role and id and returns its store.
func (c *testCA) store(role pki.Role, id string) *pki.Store {
	c.t.Helper()
	is, err := pki.Issue(c.ca, role, id, nil, nil, time.Hour)
	if err != nil {
		c.t.Fatal(err)
	}
	s, err := pki.NewStore(is.CertFile, is.KeyFile, filepath.Join(c.ca.Dir, pki.CACertFile), nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

// client returns an https client that trusts this CA and presents the
// certificate of s (of any CA), if not nil.
func (c *testCA) client(s *pki.Store) *http.Client {
	c.t.Helper()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: c.anchor().Pool()}
	if s != nil {
		cfg.GetClientCertificate = s.GetClientCertificate
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true, Proxy: nil}
	c.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: long}
}

// anchor returns a store of the CA alone (for its pool).
func (c *testCA) anchor() *pki.Store {
	c.t.Helper()
	s, err := pki.NewStore("", "", filepath.Join(c.ca.Dir, pki.CACertFile), nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

// secure returns cfg serving TLS with a server certificate of node, probing
// the others over TLS, with tokens enforced and the audit log in audit.
func (c *testCA) secure(cfg Config, audit io.Writer, now func() time.Time) Config {
	c.t.Helper()
	s := c.store(pki.RoleServer, cfg.Node)
	srv, err := pki.ServerConfig(s, pki.ServerOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	cfg.URL = "https://" + cfg.Listen
	cfg.Security = Security{TLS: srv, PeerTLS: pki.ClientConfig(s, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer}}),
		Enforce: true, Audit: acl.NewAuditLog(audit), Now: now}
	return cfg
}

// token makes a token of the cluster with policy p, living ttl (0: for
// ever), as the owner of shard 0 would, and returns its secret.
func (c *cluster) token(name string, p acl.Policy, ttl string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	if _, err := c.cli.Put(ctx, c.keys.Leader(), `{"id":"rm1"}`); err != nil {
		c.t.Fatal(err)
	}
	resp, err := c.cli.Get(ctx, c.keys.Leader())
	if err != nil {
		c.t.Fatal(err)
	}
	fence := election.Fence{Key: c.keys.Leader(), Rev: resp.Kvs[0].CreateRevision}
	nt, err := acl.NewStore(c.cli, c.keys).Create(ctx, fence, acl.CreateRequest{Name: name, Policy: p, TTL: ttl}, "", time.Now())
	if err != nil {
		c.t.Fatal(err)
	}
	return nt.Secret
}

type answer struct {
	status int
	header http.Header
	body   string
	err    error // of the request: a refused handshake
}

// do makes a request with an Authorization header (none if "").
func do(t *testing.T, cl *http.Client, method, u, auth, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := cl.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// auditEntries returns the audit log's lines.
func auditEntries(t *testing.T, log *lockedBuffer) []acl.AuditEntry {
	t.Helper()
	var out []acl.AuditEntry
	sc := bufio.NewScanner(strings.NewReader(log.String()))
	for sc.Scan() {
		var e acl.AuditEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// TestSuperviseAPISecurity: a supervisor with TLS and tokens (tandem supervise
// --tls-cert ... --acl --audit-log) refuses a client certificate of another
// CA in the handshake, an agent certificate on every route but the open
// ones, a request without a valid token (401), and a token whose policy is
// too weak (403 naming what it lacks, audited); an operator token moves a
// service, audited; /healthz and /metrics stay open; no secret reaches the
// audit log.
func TestSuperviseAPISecurity(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	ca := newTestCA(t, c.name)
	var skew atomic.Int64 // the supervisors' clock runs this far ahead
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	auditA, auditB := &lockedBuffer{}, &lockedBuffer{}
	a := c.start(ca.secure(c.config("a", c.service("web", "run")), auditA, now))
	c.waitHealthy("web", "a")
	b := c.start(ca.secure(c.config("b", c.service("web", "run")), auditB, now))
	waitFor(t, "b registered", long, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), long)
		defer cancel()
		nodes, err := c.admin.Nodes(ctx)
		return err == nil && len(nodes) == 2
	})
	api := a.cfg.URL
	if !strings.HasPrefix(api, "https://") {
		t.Fatalf("got URL %s, want https", api)
	}
	// b probes a, the owner of web, over TLS (Security.PeerTLS).
	waitFor(t, "b's probe of a answered", long, func() bool { _, ok := b.sup.probe.lastSeen("a"); return ok })

	readSecret, opSecret, soonSecret := c.token("alice", acl.PolicyRead, ""), c.token("bob", acl.PolicyOperator, ""), c.token("carol", acl.PolicyOperator, "1h")
	read, op, soon := "Bearer "+readSecret, "Bearer "+opSecret, "Bearer "+soonSecret
	alice := ca.client(ca.store(pki.RoleCLI, "alice"))
	agent := ca.client(ca.store(pki.RoleAgent, "w1"))
	bare := ca.client(nil)
	other := newTestCA(t, c.name) // same cluster name, another CA
	stranger := ca.client(other.store(pki.RoleCLI, "alice"))

	t.Run("handshake with a certificate of another CA", func(t *testing.T) {
		// "remote error": the supervisor refused it, not the client.
		if got := do(t, stranger, "GET", api+"/healthz", "", ""); got.err == nil || !strings.Contains(got.err.Error(), "remote error: tls") {
			t.Errorf("got %d %v, want the handshake refused by the supervisor", got.status, got.err)
		}
		if got := do(t, alice, "GET", api+"/healthz", "", ""); got.err != nil || got.status != http.StatusOK {
			t.Errorf("the cluster's own cli certificate: got %d %v, want 200", got.status, got.err)
		}
		// The refusal is a denial of the audit log (the server logs it once
		// the connection is done with, hence the wait).
		waitFor(t, "the refused handshake audited", long, func() bool {
			for _, e := range auditEntries(t, auditA) {
				if e.Route == acl.HandshakeRoute && e.Decision == acl.Deny && e.Server == "a" &&
					strings.HasPrefix(e.Remote, "127.0.0.1:") && strings.Contains(e.Reason, "certificate") {
					return true
				}
			}
			return false
		})
	})
	t.Run("plain http", func(t *testing.T) {
		u, _ := url.Parse(api)
		u.Scheme = "http"
		if got := do(t, http.DefaultClient, "GET", u.String()+"/healthz", "", ""); got.err == nil && got.status == http.StatusOK {
			t.Errorf("plain http: got %d, want no answer but TLS", got.status)
		}
	})

	for _, tt := range []struct {
		name         string
		client       *http.Client
		method, path string
		auth, body   string
		status       int
		code, msg    string // of the error envelope ("" for a success)
	}{
		{"healthz without anything", bare, "GET", "/healthz", "", "", 200, "", ""},
		{"healthz with an agent certificate", agent, "GET", "/healthz", "", "", 200, "", ""},
		{"metrics without a token", bare, "GET", "/metrics", "", "", 200, "", ""},
		{"services without a token", alice, "GET", "/v1/supervise/services", "", "", 401, tandem.EUNAUTHENTICATED,
			`supervisor a requires a token: send "Authorization: Bearer <token>"`},
		{"move without a token", bare, "POST", "/v1/supervise/services/web/move", "", `{"to":"b"}`, 401, tandem.EUNAUTHENTICATED,
			"supervisor a requires a token"},
		{"not a bearer token", alice, "GET", "/v1/supervise/nodes", "Basic YWxpY2U6cHc=", "", 401, tandem.EUNAUTHENTICATED,
			`the Authorization header must be "Bearer <token>"`},
		{"unknown token", alice, "GET", "/v1/supervise/services", "Bearer tdm_nope", "", 401, tandem.EUNAUTHENTICATED, "unknown or revoked token"},
		{"agent certificate with an operator token", agent, "GET", "/v1/supervise/services", op, "", 403, tandem.EFORBIDDEN,
			"agent certificates (w1) may only sync; GET /v1/supervise/services is not an agent route"},
		{"agent certificate moving", agent, "POST", "/v1/supervise/services/web/move", op, `{"to":"b"}`, 403, tandem.EFORBIDDEN,
			"agent certificates (w1) may only sync"},
		{"read token reads", alice, "GET", "/v1/supervise/history?service=web", read, "", 200, "", ""},
		{"read token moves", alice, "POST", "/v1/supervise/services/web/move", read, `{"to":"b"}`, 403, tandem.EFORBIDDEN,
			"token alice (read) lacks operator: POST /v1/supervise/services/web/move needs a token whose policy is operator or stronger"},
		{"read token bans", bare, "POST", "/v1/supervise/services/web/ban", read, `{"node":"a","for":"1h"}`, 403, tandem.EFORBIDDEN,
			"token alice (read) lacks operator"},
		{"read token clears", bare, "POST", "/v1/supervise/services/web/clear", read, "", 403, tandem.EFORBIDDEN,
			"token alice (read) lacks operator"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := do(t, tt.client, tt.method, api+tt.path, tt.auth, tt.body)
			if got.err != nil {
				t.Fatalf("got %v, want %d", got.err, tt.status)
			}
			if got.status != tt.status {
				t.Fatalf("got %d %s, want %d", got.status, got.body, tt.status)
			}
			if tt.code == "" {
				return
			}
			var env tandem.ErrorBody
			if err := json.Unmarshal([]byte(got.body), &env); err != nil || env.Error == nil {
				t.Fatalf("got %q, want the error envelope", got.body)
			}
			if env.Error.Code != tt.code || !strings.Contains(env.Error.Message, tt.msg) {
				t.Errorf("got %s: %s, want %s containing %q", env.Error.Code, env.Error.Message, tt.code, tt.msg)
			}
			if want := tt.status == 401; (got.header.Get("WWW-Authenticate") != "") != want {
				t.Errorf("got WWW-Authenticate %q, want one: %v", got.header.Get("WWW-Authenticate"), want)
			}
		})
	}

	// The refused move is in the audit log, naming the token (not its
	// secret), the certificate and what it lacked.
	var denied *acl.AuditEntry
	for _, e := range auditEntries(t, auditA) {
		if e.Route == "/v1/supervise/services/{svc}/move" && e.Identity.TokenName == "alice" {
			denied = &e
		}
	}
	if denied != nil && !strings.HasPrefix(denied.Remote, "127.0.0.1:") {
		t.Errorf("alice's move: got remote %q, want the client's address", denied.Remote)
	}
	switch {
	case denied == nil:
		t.Errorf("no audit line for alice's move; got:\n%s", auditA.String())
	case denied.Decision != acl.Deny || denied.Status != 403 || denied.Need != "operator" || denied.Identity.TokenPolicy != "read" ||
		denied.Identity.CertRole != "cli" || denied.Identity.CertID != "alice" || denied.Server != "a" ||
		denied.Method != "POST" || denied.Path != "/v1/supervise/services/web/move" || denied.Target != "service web" ||
		!strings.Contains(denied.Reason, "token alice (read) lacks operator"):
		t.Errorf("alice's move: got audit line %+v, want a 403 denial of read alice with cert cli alice, lacking operator", *denied)
	}
	if c.status("web").MoveTo != "" {
		t.Errorf("a refused move was recorded: %+v", c.status("web"))
	}

	// An expired token is refused, and named in the audit log.
	skew.Store(int64(2 * time.Hour))
	got := do(t, alice, "POST", api+"/v1/supervise/services/web/clear", soon, "")
	skew.Store(0)
	if got.err != nil || got.status != 401 || !strings.Contains(got.body, "token carol (operator) expired at") {
		t.Errorf("an expired token: got %d %s %v, want 401 naming it", got.status, got.body, got.err)
	}

	// An operator token moves web to b; the move is audited.
	st := c.status("web")
	if got := do(t, alice, "POST", api+"/v1/supervise/services/web/move", op, `{"to":"b"}`); got.err != nil || got.status != 200 ||
		got.body != `{"service":"web","to":"b"}`+"\n" {
		t.Fatalf("operator move: got %d %s %v, want 200", got.status, got.body, got.err)
	}
	moved := c.waitHealthy("web", "b")
	if moved.Epoch <= st.Epoch {
		t.Errorf("web on b at epoch %d, want after %d", moved.Epoch, st.Epoch)
	}
	var allowed, expired *acl.AuditEntry
	for _, e := range auditEntries(t, auditA) {
		switch e.Identity.TokenName {
		case "bob":
			if e.Route == "/v1/supervise/services/{svc}/move" && e.Decision == acl.Allow {
				allowed = &e
			}
		case "carol":
			expired = &e
		}
	}
	switch {
	case allowed == nil:
		t.Errorf("no audit line for bob's move; got:\n%s", auditA.String())
	case allowed.Status != 200 || allowed.Need != "operator" || allowed.Identity.TokenPolicy != "operator" || allowed.Identity.TokenAccessor == "" ||
		allowed.Target != "service web to b" || allowed.Reason != "":
		t.Errorf("bob's move: got audit line %+v, want an allowed 200 of operator bob on web to b", *allowed)
	}
	if expired == nil || expired.Decision != acl.Deny || expired.Status != 401 {
		t.Errorf("carol's expired token: got audit line %+v, want a 401 denial naming carol", expired)
	}
	// Reads that were allowed are not audited; secrets never are.
	for _, e := range auditEntries(t, auditA) {
		if e.Method == "GET" && e.Decision == acl.Allow {
			t.Errorf("an allowed read was audited: %+v", e)
		}
	}
	for _, secret := range []string{readSecret, opSecret, soonSecret, "tdm_nope"} {
		if strings.Contains(auditA.String(), secret) {
			t.Errorf("a secret is in the audit log:\n%s", auditA.String())
		}
	}
}

// TestSuperviseSecurityConfig: --acl-metrics without --acl, and TLS with an http
// advertise URL, are refused; --acl-metrics makes /metrics need read.
func TestSuperviseSecurityConfig(t *testing.T) {
	t.Parallel()
	base := Config{Node: "a", Cluster: "test", URL: "http://127.0.0.1:7480", LeaseTTL: ttl, Services: []Service{{Name: "web", Command: []string{"/bin/true"}, Fencing: FencingSelf}}}
	for _, tt := range []struct {
		name string
		sec  Security
		url  string
		want string
	}{
		{"metrics protected without tokens", Security{ProtectMetrics: true}, "", "needs tokens enforced (--acl)"},
		{"TLS on an http URL", Security{TLS: &tls.Config{}}, "", "with TLS the API serves https only"},
		{"TLS on https", Security{TLS: &tls.Config{}, Enforce: true, ProtectMetrics: true}, "https://127.0.0.1:7480", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.Security = tt.sec
			if tt.url != "" {
				cfg.URL = tt.url
			}
			err := cfg.withDefaults().Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want it valid", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	for _, tt := range []struct {
		protect bool
		want    acl.Capability
	}{{false, acl.CapOpen}, {true, acl.CapRead}} {
		s := &Supervisor{cfg: Config{Security: Security{Enforce: true, ProtectMetrics: tt.protect}}}
		if got := s.need("/metrics", http.MethodGet); got != tt.want {
			t.Errorf("ProtectMetrics %v: /metrics needs %s, want %s", tt.protect, got, tt.want)
		}
	}
}
