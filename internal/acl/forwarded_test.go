package acl_test

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/pki"
)

// TestAuditForwardedFor: the audit line of a request another server of the
// cluster forwarded for its caller (the web UI's writes from any server)
// names the caller's address, from X-Forwarded-For, and the server that
// forwarded it; from anyone else the header is ignored.
func TestAuditForwardedFor(t *testing.T) {
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca"), "prod", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	server, cli := certOf(t, ca, pki.RoleServer, "rm2"), certOf(t, ca, pki.RoleCLI, "alice")
	var audit strings.Builder
	g := &acl.Guard{Name: "server rm1", Enforce: true, Cluster: "prod", Audit: acl.NewAuditLog(&audit),
		Tokens: tokens{"tdm_op": {Accessor: "bb", Name: "bob", Policy: acl.PolicyOperator}}}
	h := g.Handler("/kill", acl.CapSubmit, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for _, tc := range []struct {
		name        string
		cert        *tls.ConnectionState
		auth        string
		xff         []string
		remote, via string
	}{
		{"forwarded by a server", server, "Bearer tdm_op", []string{"192.0.2.7:50123"}, "192.0.2.7:50123", "server rm2 (10.0.0.2:41234)"},
		{"the last address is the server's", server, "Bearer tdm_op", []string{"203.0.113.1, 192.0.2.7:50123"}, "192.0.2.7:50123", "server rm2 (10.0.0.2:41234)"},
		{"a denial too", server, "", []string{"192.0.2.7:50123"}, "192.0.2.7:50123", "server rm2 (10.0.0.2:41234)"},
		{"from a cli certificate: ignored", cli, "Bearer tdm_op", []string{"192.0.2.7:50123"}, "10.0.0.2:41234", ""},
		{"without a certificate: ignored", nil, "Bearer tdm_op", []string{"192.0.2.7:50123"}, "10.0.0.2:41234", ""},
		{"a server that sends none", server, "Bearer tdm_op", nil, "10.0.0.2:41234", ""},
		{"control characters: ignored", server, "Bearer tdm_op", []string{"192.0.2.7\x1b[2J"}, "10.0.0.2:41234", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			audit.Reset()
			req := httptest.NewRequest(http.MethodPost, "/kill", nil)
			req.RemoteAddr, req.TLS = "10.0.0.2:41234", tc.cert
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			for _, v := range tc.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
			var e acl.AuditEntry
			if err := json.Unmarshal([]byte(audit.String()), &e); err != nil {
				t.Fatalf("audit line %q: %v", audit.String(), err)
			}
			if e.Remote != tc.remote || e.Via != tc.via {
				t.Errorf("remote %q via %q, want %q via %q", e.Remote, e.Via, tc.remote, tc.via)
			}
		})
	}
}
