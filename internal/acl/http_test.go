package acl_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/pki"
)

// tokens is an in-memory acl.Authenticator: the guard's rules are tested
// here alone; acl.Store's own tests, and the supervisors', use real etcd.
type tokens map[string]acl.Token

func (m tokens) Authenticate(_ context.Context, secret string) (acl.Token, error) {
	switch secret {
	case "tdm_down":
		return acl.Token{}, errors.New("context deadline exceeded")
	case "tdm_old":
		t := acl.Token{Accessor: "0123", Name: "old", Policy: acl.PolicyOperator}
		return t, fmt.Errorf("%s expired at 2026-01-01T00:00:00Z: %w", t.Describe(), acl.ErrExpired)
	}
	if t, ok := m[secret]; ok {
		return t, nil
	}
	return acl.Token{}, acl.ErrNoToken
}

// certOf returns the connection state of a client that presented a
// certificate of role and id, as the handshake verified it.
func certOf(t *testing.T, ca *pki.CA, role pki.Role, id string) *tls.ConnectionState {
	t.Helper()
	is, err := pki.Issue(ca, role, id, nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{is.Cert}, VerifiedChains: [][]*x509.Certificate{{is.Cert, ca.Cert}}}
}

// TestGuard: the guard's answers and audit lines, route by route, with
// tokens enforced and certificates checked, in the servers' message format.
func TestGuard(t *testing.T) {
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca"), "prod", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agent, cli, server := certOf(t, ca, pki.RoleAgent, "w1"), certOf(t, ca, pki.RoleCLI, "alice"), certOf(t, ca, pki.RoleServer, "rm2")
	var audit strings.Builder
	g := &acl.Guard{
		Name: "supervisor n1", TokenHint: " (hint)", Enforce: true, Cluster: "prod",
		Tokens: tokens{"tdm_read": {Accessor: "aa", Name: "alice", Policy: acl.PolicyRead}, "tdm_op": {Accessor: "bb", Name: "bob", Policy: acl.PolicyOperator}},
		Audit:  acl.NewAuditLog(&audit),
		Now:    func() time.Time { return time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC) },
		Stamp:  func(e *acl.AuditEntry) { e.Server = "n1" },
		Target: func(r *http.Request) string { return r.PathValue("svc") },
	}
	mux := http.NewServeMux()
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("refuse") != "" {
			acl.CallerOf(r).Denied = "the handler refused"
			w.WriteHeader(http.StatusForbidden)
			return
		}
		fmt.Fprintf(w, "ok %s", acl.CallerOf(r).Target)
	})
	mux.Handle("GET /open", g.Handler("/open", acl.CapOpen, ok))
	mux.Handle("GET /read", g.Handler("/read", acl.CapRead, ok))
	mux.Handle("POST /move/{svc}", g.Handler("/move/{svc}", acl.CapOperator, ok))
	mux.Handle("POST /sync", g.Handler("/sync", acl.CapAgent, ok))
	mux.Handle("POST /run", g.Handler("/run", acl.CapRead, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := g.Require(r, acl.CapOperator, "running as root"); err != nil {
			w.WriteHeader(tandem.HTTPStatus(tandem.ErrorCode(err)))
			_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: &tandem.Error{Code: tandem.ErrorCode(err), Message: tandem.ErrorMessage(err)}})
			return
		}
		fmt.Fprint(w, "ok")
	})))

	for _, tt := range []struct {
		name, method, path, auth string
		cert                     *tls.ConnectionState
		status                   int
		msg                      string // contained in the error's message, or the body
		wwwAuth                  bool
		audit                    string // the audit line's decision, status, token and cert, "" for none
	}{
		{"open without anything", "GET", "/open", "", nil, 200, "ok", false, ""},
		{"open with an agent certificate", "GET", "/open", "", agent, 200, "ok", false, ""},
		{"no token", "GET", "/read", "", nil, 401, `supervisor n1 requires a token: send "Authorization: Bearer <token>" (hint)`, true, "deny 401 - -"},
		{"cli certificate, no token", "GET", "/read", "", cli, 401, "supervisor n1 requires a token", true, "deny 401 - cli/alice"},
		{"not bearer", "GET", "/read", "Basic eA==", nil, 401, `the Authorization header must be "Bearer <token>"`, true, "deny 401 - -"},
		{"unknown token", "GET", "/read", "Bearer tdm_nope", nil, 401, "unknown or revoked token", true, "deny 401 - -"},
		{"expired token", "GET", "/read", "Bearer tdm_old", nil, 401, "token old (operator) expired at 2026-01-01T00:00:00Z", true, "deny 401 old -"},
		{"etcd down", "GET", "/read", "Bearer tdm_down", nil, 503, "supervisor n1 cannot check the token right now (etcd: context deadline exceeded); retry", false, "deny 503 - -"},
		{"read reads", "GET", "/read", "Bearer tdm_read", cli, 200, "ok", false, ""},
		{"read moves", "POST", "/move/web", "Bearer tdm_read", cli, 403,
			"token alice (read) lacks operator: POST /move/web needs a token whose policy is operator or stronger", false, "deny 403 alice cli/alice"},
		{"operator moves", "POST", "/move/web", "Bearer tdm_op", nil, 200, "ok web", false, "allow 200 bob -"},
		{"the handler refuses", "POST", "/move/web?refuse=1", "Bearer tdm_op", nil, 403, "", false, "deny 403 bob -"},
		{"the handler refuses a read", "GET", "/read?refuse=1", "Bearer tdm_read", nil, 403, "", false, "deny 403 alice -"},
		{"read requires operator", "POST", "/run", "Bearer tdm_read", cli, 403,
			"token alice (read) lacks operator: running as root needs a token whose policy is operator or stronger", false, "deny 403 alice cli/alice"},
		{"operator requires operator", "POST", "/run", "Bearer tdm_op", nil, 200, "ok", false, "allow 200 bob -"},
		{"agent certificate with an operator token", "POST", "/move/web", "Bearer tdm_op", agent, 403,
			"agent certificates (w1) may only sync; POST /move/web is not an agent route", false, "deny 403 - agent/w1"},
		{"sync without a certificate", "POST", "/sync", "", nil, 401, "POST /sync needs an agent certificate of cluster prod", false, "deny 401 - -"},
		{"sync with a server certificate", "POST", "/sync", "", server, 403, "needs an agent certificate, not a server certificate (rm2)", false, "deny 403 - server/rm2"},
		{"sync with an agent certificate", "POST", "/sync", "", agent, 200, "ok", false, ""},
		{"the handler refuses a sync", "POST", "/sync?refuse=1", "", agent, 403, "", false, "deny 403 - agent/w1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			audit.Reset()
			req := httptest.NewRequest(tt.method, tt.path, nil)
			req.TLS = tt.cert
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("got %d %s, want %d", rec.Code, rec.Body, tt.status)
			}
			if tt.status != 200 && tt.msg != "" {
				var env tandem.ErrorBody
				if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil || env.Error == nil || !strings.Contains(env.Error.Message, tt.msg) {
					t.Errorf("got %s, want an error containing %q", rec.Body, tt.msg)
				}
			} else if !strings.Contains(rec.Body.String(), tt.msg) {
				t.Errorf("got %q, want %q", rec.Body, tt.msg)
			}
			if got := rec.Header().Get("WWW-Authenticate") != ""; got != tt.wwwAuth {
				t.Errorf("got WWW-Authenticate %q, want one: %v", rec.Header().Get("WWW-Authenticate"), tt.wwwAuth)
			}
			var lines []string
			sc := bufio.NewScanner(strings.NewReader(audit.String()))
			for sc.Scan() {
				var e acl.AuditEntry
				if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
					t.Fatal(err)
				}
				if e.Server != "n1" || e.Method != tt.method || e.Path != req.URL.Path || e.Time.IsZero() {
					t.Errorf("got audit line %+v, want server n1, %s %s and a time", e, tt.method, req.URL.Path)
				}
				tok, cert := "-", "-"
				if e.Identity.TokenName != "" {
					tok = e.Identity.TokenName
				}
				if e.Identity.CertRole != "" {
					cert = e.Identity.CertRole + "/" + e.Identity.CertID
				}
				lines = append(lines, fmt.Sprintf("%s %d %s %s", e.Decision, e.Status, tok, cert))
			}
			if got := strings.Join(lines, "\n"); got != tt.audit {
				t.Errorf("got audit %q, want %q", got, tt.audit)
			}
			if secret, ok := strings.CutPrefix(tt.auth, "Bearer "); ok && strings.Contains(audit.String(), secret) {
				t.Errorf("the audit log holds the secret %q: %s", secret, audit.String())
			}
		})
	}
}

// TestGuardOff: without Enforce and Cluster every route is open, Require
// allows everything, and the audit log still gets the mutating requests;
// with Enforce but no Authenticator a token cannot be checked (503).
func TestGuardOff(t *testing.T) {
	var audit strings.Builder
	g := &acl.Guard{Name: "supervisor n1", Audit: acl.NewAuditLog(&audit)}
	var required error
	h := g.Handler("/move", acl.CapOperator, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		required = g.Require(r, acl.CapManagement, "moving")
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/move", nil))
	if rec.Code != 200 || !strings.Contains(audit.String(), `"decision":"allow"`) {
		t.Errorf("got %d and audit %q, want 200 and an allow line", rec.Code, audit.String())
	}
	if required != nil {
		t.Errorf("got Require %v without Enforce, want nil", required)
	}
	g = &acl.Guard{Name: "supervisor n1", Enforce: true}
	rec = httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/move", nil)
	req.Header.Set("Authorization", "Bearer tdm_x")
	g.Handler("/move", acl.CapOperator, http.NotFoundHandler()).ServeHTTP(rec, req)
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "supervisor n1 cannot check tokens") {
		t.Errorf("got %d %s, want 503: cannot check tokens", rec.Code, rec.Body)
	}
}

// TestGuardHandshakeLog: a refused TLS handshake, as net/http reports it,
// is a denial of the audit log; a client that hung up is not; every line
// goes on to the log.
func TestGuardHandshakeLog(t *testing.T) {
	var audit, logged strings.Builder
	g := &acl.Guard{Audit: acl.NewAuditLog(&audit), Stamp: func(e *acl.AuditEntry) { e.Server = "n1" }}
	l := g.HandshakeLog(slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug})))
	l.Print("http: TLS handshake error from 10.0.0.9:5555: remote error: tls: unknown certificate authority")
	l.Print("http: TLS handshake error from 10.0.0.8:4444: EOF")
	l.Print("http: superfluous response.WriteHeader call")
	var e acl.AuditEntry
	if lines := strings.Split(strings.TrimSpace(audit.String()), "\n"); len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &e) != nil {
		t.Fatalf("got audit %q, want one line", audit.String())
	}
	if e.Route != acl.HandshakeRoute || e.Decision != acl.Deny || e.Remote != "10.0.0.9:5555" || e.Server != "n1" ||
		e.Reason != "remote error: tls: unknown certificate authority" || e.Time.IsZero() {
		t.Errorf("got %+v, want a denial of 10.0.0.9:5555 for the unknown authority", e)
	}
	if n := strings.Count(logged.String(), "\n"); n != 3 {
		t.Errorf("got %d log lines, want 3:\n%s", n, logged.String())
	}
}
