package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/api"
)

// fakeACL is an api.ACL over a map of secrets, for testing the API's
// authorization alone; the integration tests use real etcd.
type fakeACL struct {
	mu     sync.Mutex
	tokens map[string]acl.Token // secret -> token
	owner  tandem.ServerRef
}

func (f *fakeACL) Authenticate(_ context.Context, secret string) (acl.Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tokens[secret]
	if !ok {
		return acl.Token{}, acl.ErrNoToken
	}
	if t.Expired(time.Now()) {
		return t, fmt.Errorf("%s expired at %s: %w", t.Describe(), t.ExpiresAt.Format(time.RFC3339), acl.ErrExpired)
	}
	return t, nil
}
func (f *fakeACL) Tokens(context.Context) ([]acl.Token, error) { return nil, nil }
func (f *fakeACL) CreateToken(_ context.Context, req acl.CreateRequest, by string) (acl.NewToken, error) {
	if _, err := req.Validate(); err != nil {
		return acl.NewToken{}, err
	}
	return acl.NewToken{Token: acl.Token{Accessor: strings.Repeat("c", 32), Name: req.Name, Policy: req.Policy, CreatedBy: by}, Secret: "tdm_new-secret"}, nil
}
func (f *fakeACL) DeleteToken(_ context.Context, accessor string) (acl.Token, error) {
	return acl.Token{Accessor: accessor, Name: "gone"}, nil
}
func (f *fakeACL) Bootstrap(context.Context) (acl.NewToken, error) {
	return acl.NewToken{}, acl.ErrBootstrapped
}
func (f *fakeACL) ACLOwner() (tandem.ServerRef, bool) { return f.owner, f.owner.ID != "" }

var _ api.ACL = (*fakeACL)(nil)

// Secrets of the fake's tokens.
const (
	readSecret     = "tdm_read-secret-0123456789"
	submitSecret   = "tdm_submit-secret-0123456789"
	operatorSecret = "tdm_operator-secret-0123456789"
	mgmtSecret     = "tdm_mgmt-secret-0123456789"
	expiredSecret  = "tdm_expired-secret-0123456789"
)

func newFakeACL(owner tandem.ServerRef) *fakeACL {
	past := time.Now().Add(-time.Minute)
	tok := func(name string, p acl.Policy, acc byte) acl.Token {
		return acl.Token{Accessor: strings.Repeat(string(acc), 32), Name: name, Policy: p}
	}
	exp := tok("old", acl.PolicyManagement, 'e')
	exp.ExpiresAt = &past
	return &fakeACL{owner: owner, tokens: map[string]acl.Token{
		readSecret:     tok("alice", acl.PolicyRead, 'a'),
		submitSecret:   tok("ci", acl.PolicySubmit, 'b'),
		operatorSecret: tok("ops", acl.PolicyOperator, 'd'),
		mgmtSecret:     tok("admin", acl.PolicyManagement, 'f'),
		expiredSecret:  exp,
	}}
}

// syncBuffer is a bytes.Buffer safe for the audit log's writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func auditEntries(t *testing.T, s string) []acl.AuditEntry {
	t.Helper()
	var out []acl.AuditEntry
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var e acl.AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit line %q is not JSON: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

func bearer(secret string) map[string]string {
	if secret == "" {
		return nil
	}
	return map[string]string{"Authorization": "Bearer " + secret}
}

func secured(f *fake, a *fakeACL, audit *syncBuffer, protectMetrics bool) http.Handler {
	return api.New(f, slog.New(slog.DiscardHandler), api.WithSecurity(api.Security{
		ACL: a, Enforce: true, ProtectMetrics: protectMetrics, Audit: acl.NewAuditLog(audit),
	}))
}

// Every route in the capability map is served, and with ACLs on every one
// that needs a token refuses a request without one.
func TestCapabilityMapIsComplete(t *testing.T) {
	f := newFake("rm1", 1, tandem.StateActive)
	h := secured(f, newFakeACL(tandem.ServerRef{ID: "rm1"}), &syncBuffer{}, false)
	for pattern, ms := range api.Capabilities {
		for method, need := range ms {
			path := strings.NewReplacer("{id}", "j1", "{accessor}", strings.Repeat("a", 32)).Replace(pattern)
			got := call(t, h, method, path, nil, "")
			if code(got.body) == tandem.ENOTFOUND && strings.Contains(got.body, "no such endpoint") {
				t.Errorf("%s %s is in the capability map but not served", method, pattern)
			}
			switch need {
			case acl.CapOpen, acl.CapAgent:
				if got.status == http.StatusUnauthorized {
					t.Errorf("%s %s (%s): got 401 without a token, want it open", method, pattern, need)
				}
			default:
				if got.status != http.StatusUnauthorized || code(got.body) != tandem.EUNAUTHENTICATED {
					t.Errorf("%s %s (%s) without a token: got %d %s, want 401", method, pattern, need, got.status, got.body)
				}
			}
		}
	}
}

func TestAuthorization(t *testing.T) {
	rm2 := tandem.ServerRef{ID: "rm2", URL: "http://rm2:7070"}
	active := func() *fake { return newFake("rm1", 1, tandem.StateActive) }
	standby := func() *fake {
		f := newFake("rm1", 1, tandem.StateStandby)
		f.status.ActiveID, f.status.ActiveURL = rm2.ID, rm2.URL
		return f
	}
	job := `{"command":["true"]}`
	tests := []struct {
		name         string
		fake         func() *fake
		method, path string
		body         string
		secret       string
		header       string // a raw Authorization header, instead of secret
		wantStatus   int
		wantMsg      string // in the error message
		wantDeny     bool   // an audit line with decision deny
	}{
		{name: "no token", fake: active, method: "GET", path: "/v1/jobs", wantStatus: 401, wantMsg: "requires a token", wantDeny: true},
		{name: "not bearer", fake: active, method: "GET", path: "/v1/jobs", header: "Basic dTpw", wantStatus: 401, wantMsg: "Bearer", wantDeny: true},
		{name: "unknown token", fake: active, method: "GET", path: "/v1/jobs", secret: "tdm_nope", wantStatus: 401, wantMsg: "unknown or revoked", wantDeny: true},
		{name: "expired token", fake: active, method: "POST", path: "/v1/jobs", body: job, secret: expiredSecret, wantStatus: 401, wantMsg: "token old (management) expired at", wantDeny: true},
		{name: "read reads", fake: active, method: "GET", path: "/v1/jobs", secret: readSecret, wantStatus: 200},
		{name: "read submits", fake: active, method: "POST", path: "/v1/jobs", body: job, secret: readSecret, wantStatus: 403, wantMsg: "token alice (read) lacks submit", wantDeny: true},
		{name: "read kills", fake: active, method: "POST", path: "/v1/jobs/j1/kill", secret: readSecret, wantStatus: 403, wantMsg: "token alice (read) lacks submit", wantDeny: true},
		{name: "read fails over", fake: active, method: "POST", path: "/v1/ha/failover", body: `{"from":"rm1","to":"rm2"}`, secret: readSecret, wantStatus: 403, wantMsg: "token alice (read) lacks operator", wantDeny: true},
		{name: "submit drains", fake: active, method: "POST", path: "/v1/ha/drain", body: `{"drain":true}`, secret: submitSecret, wantStatus: 403, wantMsg: "token ci (submit) lacks operator", wantDeny: true},
		{name: "operator lists tokens", fake: active, method: "GET", path: "/v1/acl/tokens", secret: operatorSecret, wantStatus: 403, wantMsg: "token ops (operator) lacks management", wantDeny: true},
		{name: "submit submits", fake: active, method: "POST", path: "/v1/jobs", body: job, secret: submitSecret, wantStatus: 201},
		{name: "operator fails over", fake: active, method: "POST", path: "/v1/ha/failover", body: `{"from":"rm1","to":"rm2"}`, secret: operatorSecret, wantStatus: 200},
		{name: "management submits", fake: active, method: "POST", path: "/v1/jobs", body: job, secret: mgmtSecret, wantStatus: 201},
		{name: "submit names a user", fake: active, method: "POST", path: "/v1/jobs", body: `{"command":["true"],"user":"etl"}`, secret: submitSecret, wantStatus: 403, wantMsg: "token ci (submit) lacks operator: a job that names its user", wantDeny: true},
		{name: "operator names a user", fake: active, method: "POST", path: "/v1/jobs", body: `{"command":["true"],"user":"etl"}`, secret: operatorSecret, wantStatus: 201},
		{name: "standby refuses a read token's submission itself", fake: standby, method: "POST", path: "/v1/jobs", body: job, secret: readSecret, wantStatus: 403, wantMsg: "token alice (read) lacks submit", wantDeny: true},
		{name: "standby refuses a read token's kill itself", fake: standby, method: "POST", path: "/v1/jobs/j1/kill", secret: readSecret, wantStatus: 403, wantMsg: "lacks submit", wantDeny: true},
		{name: "standby redirects an allowed submission", fake: standby, method: "POST", path: "/v1/jobs", body: job, secret: submitSecret, wantStatus: 307},
		{name: "isActive is open", fake: standby, method: "GET", path: "/isActive", wantStatus: 405},
		{name: "healthz is open", fake: active, method: "GET", path: "/healthz", wantStatus: 200},
		{name: "metrics is open by default", fake: active, method: "GET", path: "/metrics", wantStatus: 200},
		{name: "agents sync without a token", fake: active, method: "POST", path: "/v1/agent/sync", body: `{"agent":{"id":"w1"}}`, wantStatus: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			audit := &syncBuffer{}
			h := secured(tt.fake(), newFakeACL(tandem.ServerRef{ID: "rm1"}), audit, false)
			hdr := bearer(tt.secret)
			if tt.header != "" {
				hdr = map[string]string{"Authorization": tt.header}
			}
			got := call(t, h, tt.method, tt.path, hdr, tt.body)
			var eb tandem.ErrorBody
			_ = json.Unmarshal([]byte(got.body), &eb)
			msg := ""
			if eb.Error != nil {
				msg = eb.Error.Message
			}
			if got.status != tt.wantStatus || !strings.Contains(msg, tt.wantMsg) {
				t.Fatalf("%s %s: got %d %q, want %d %q", tt.method, tt.path, got.status, msg, tt.wantStatus, tt.wantMsg)
			}
			if got.status == 401 && got.header.Get("WWW-Authenticate") == "" {
				t.Error("a 401 without WWW-Authenticate")
			}
			entries := auditEntries(t, audit.String())
			mut := tt.method != "GET" && tt.path != "/v1/agent/sync"
			switch {
			case tt.wantDeny:
				if len(entries) != 1 || entries[0].Decision != acl.Deny || entries[0].Status != tt.wantStatus ||
					entries[0].Method != tt.method || entries[0].Path != tt.path || !strings.Contains(entries[0].Reason, tt.wantMsg) {
					t.Fatalf("audit: got %+v, want one deny %d for %s %s", entries, tt.wantStatus, tt.method, tt.path)
				}
				if tt.secret == readSecret && (entries[0].Identity.TokenName != "alice" || entries[0].Identity.TokenPolicy != "read" || entries[0].Identity.TokenAccessor != strings.Repeat("a", 32)) {
					t.Fatalf("audit identity: got %+v, want alice (read)", entries[0].Identity)
				}
			case mut:
				if len(entries) != 1 || entries[0].Decision != acl.Allow || entries[0].Status != tt.wantStatus {
					t.Fatalf("audit: got %+v, want one allow %d", entries, tt.wantStatus)
				}
			default:
				if len(entries) != 0 {
					t.Fatalf("audit: got %+v for a read that was allowed, want nothing", entries)
				}
			}
			for _, s := range []string{readSecret, submitSecret, operatorSecret, mgmtSecret, expiredSecret, "dTpw"} {
				if strings.Contains(audit.String(), s) || strings.Contains(got.body, s) {
					t.Fatalf("a secret appears in the audit log or the answer: %s / %s", audit.String(), got.body)
				}
			}
		})
	}
}

func TestAuditLogOfWrites(t *testing.T) {
	audit := &syncBuffer{}
	f := newFake("rm1", 1, tandem.StateActive)
	f.status.Epoch = 42
	h := secured(f, newFakeACL(tandem.ServerRef{ID: "rm1"}), audit, false)
	if got := call(t, h, "POST", "/v1/jobs", bearer(submitSecret), `{"command":["true"]}`); got.status != 201 {
		t.Fatalf("submit: %d %s", got.status, got.body)
	}
	if got := call(t, h, "POST", "/v1/acl/tokens", bearer(mgmtSecret), `{"name":"bob","policy":"read"}`); got.status != 201 || !strings.Contains(got.body, "tdm_new-secret") {
		t.Fatalf("create token: %d %s", got.status, got.body)
	}
	if got := call(t, h, "POST", "/v1/acl/tokens", bearer(mgmtSecret), `{"name":"bob","policy":"root"}`); got.status != 400 || !strings.Contains(got.body, "unknown policy") {
		t.Fatalf("create token with a bad policy: %d %s, want 400 unknown policy", got.status, got.body)
	}
	if got := call(t, h, "POST", "/v1/acl/bootstrap", nil, ""); got.status != 409 || !strings.Contains(got.body, "already been done") {
		t.Fatalf("bootstrap again: %d %s, want 409", got.status, got.body)
	}
	e := auditEntries(t, audit.String())
	if len(e) != 4 {
		t.Fatalf("got %d audit lines, want 4: %s", len(e), audit.String())
	}
	if e[0].Target != "j1" || e[0].Route != "/v1/jobs" || e[0].Need != "submit" || e[0].Identity.TokenName != "ci" ||
		e[0].Server != "rm1" || e[0].HAState != "active" || e[0].Epoch != 42 || e[0].Decision != acl.Allow || e[0].Time.IsZero() {
		t.Errorf("submission's audit line: got %+v", e[0])
	}
	if !strings.Contains(e[1].Target, "bob") || e[1].Identity.TokenName != "admin" || e[1].Status != 201 {
		t.Errorf("token creation's audit line: got %+v", e[1])
	}
	if e[2].Status != 400 || e[3].Status != 409 || e[3].Identity.TokenName != "" {
		t.Errorf("refused writes' audit lines: got %+v, %+v", e[2], e[3])
	}
	// Certificate fields are present (empty until mTLS is wired).
	if !strings.Contains(audit.String(), `"cert_role":""`) || !strings.Contains(audit.String(), `"cert_id":""`) {
		t.Errorf("audit lines lack cert_role and cert_id: %s", audit.String())
	}
	if strings.Contains(audit.String(), "tdm_") {
		t.Fatalf("a secret appears in the audit log: %s", audit.String())
	}
}

func TestMetricsProtected(t *testing.T) {
	h := secured(newFake("rm1", 1, tandem.StateActive), newFakeACL(tandem.ServerRef{ID: "rm1"}), &syncBuffer{}, true)
	if got := call(t, h, "GET", "/metrics", nil, ""); got.status != 401 {
		t.Fatalf("/metrics without a token: %d, want 401", got.status)
	}
	if got := call(t, h, "GET", "/metrics", bearer(readSecret), ""); got.status != 200 {
		t.Fatalf("/metrics with a read token: %d, want 200", got.status)
	}
}

// Token writes go to the owner of shard 0; token routes answer 409 with
// ACLs off.
func TestTokenRoutes(t *testing.T) {
	rm2 := tandem.ServerRef{ID: "rm2", URL: "http://rm2:7070"}
	f := newFake("rm1", 8, tandem.StateActive)
	h := secured(f, newFakeACL(rm2), &syncBuffer{}, false)
	got := call(t, h, "POST", "/v1/acl/tokens", bearer(mgmtSecret), `{"name":"bob","policy":"read"}`)
	if got.status != 307 || got.header.Get("Location") != "http://rm2:7070/v1/acl/tokens" {
		t.Fatalf("create on a server not owning shard 0: %d %s, want 307 to rm2", got.status, got.header.Get("Location"))
	}
	got = call(t, h, "GET", "/v1/acl/token/self", bearer(readSecret), "")
	if got.status != 200 || !strings.Contains(got.body, `"name":"alice"`) || strings.Contains(got.body, readSecret) {
		t.Fatalf("self: %d %s", got.status, got.body)
	}
	off := api.New(newFake("rm1", 1, tandem.StateActive), slog.New(slog.DiscardHandler))
	if got := call(t, off, "POST", "/v1/acl/bootstrap", nil, ""); got.status != 409 || !strings.Contains(got.body, "--acl") {
		t.Fatalf("bootstrap with ACLs off: %d %s, want 409 naming --acl", got.status, got.body)
	}
	if got := call(t, off, "POST", "/v1/jobs", nil, `{"command":["true"]}`); got.status != 201 {
		t.Fatalf("submit with ACLs off and no token: %d %s, want 201", got.status, got.body)
	}
}
