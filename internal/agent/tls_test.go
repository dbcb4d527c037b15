package agent

import (
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/pki"
)

// testPKI is a CA of cluster "dev" that issues stores for the tests.
type testPKI struct {
	t  *testing.T
	ca *pki.CA
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca"), "dev", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, ca: ca}
}

func (p *testPKI) store(role pki.Role, id string, opts ...pki.IssueOption) *pki.Store {
	p.t.Helper()
	opts = append([]pki.IssueOption{pki.WithOutput(p.t.TempDir(), id)}, opts...)
	is, err := pki.Issue(p.ca, role, id, nil, nil, time.Hour, opts...)
	if err != nil {
		p.t.Fatal(err)
	}
	s, err := pki.NewStore(is.CertFile, is.KeyFile, filepath.Join(p.ca.Dir, pki.CACertFile), nil)
	if err != nil {
		p.t.Fatal(err)
	}
	return s
}

// pair loads a certificate without checking it, for presenting expired ones.
func (p *testPKI) pair(role pki.Role, id string, opts ...pki.IssueOption) tls.Certificate {
	p.t.Helper()
	opts = append([]pki.IssueOption{pki.WithOutput(p.t.TempDir(), id)}, opts...)
	is, err := pki.Issue(p.ca, role, id, nil, nil, time.Hour, opts...)
	if err != nil {
		p.t.Fatal(err)
	}
	c, err := tls.LoadX509KeyPair(is.CertFile, is.KeyFile)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

// newTLSFakeServer is newFakeServer on TLS with cfg.
func newTLSFakeServer(t *testing.T, id string, cfg *tls.Config, terms ...tandem.ShardTerm) *fakeServer {
	t.Helper()
	f := newFakeServer(t, id, terms...)
	f.ts.Close()
	ts := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	ts.TLS = cfg
	ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	ts.StartTLS()
	f.ts = ts
	return f
}

// An agent on TLS syncs with a TLS server presenting its certificate, and
// serves attempt logs to servers only: a server certificate reads them; no
// certificate, a cli certificate, an expired server certificate and one of
// another CA are refused in the handshake.
func TestTLSSyncAndLogServer(t *testing.T) {
	p := newTestPKI(t)
	srvCerts := p.store(pki.RoleServer, "rm1")
	srvTLS, err := pki.ServerConfig(srvCerts, pki.ServerOptions{RequireClientCert: true, ClientRoles: []pki.Role{pki.RoleAgent}})
	if err != nil {
		t.Fatal(err)
	}
	srv := newTLSFakeServer(t, "rm1", srvTLS, term(0, 7))
	if !strings.HasPrefix(srv.URL(), "https://") {
		t.Fatalf("fake server URL %s, want https", srv.URL())
	}

	agentCerts := p.store(pki.RoleAgent, "agent1")
	cfg := testConfig(t, t.TempDir(), srv.URL())
	cfg.ClientTLS = pki.ClientConfig(agentCerts, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer}})
	if cfg.ServerTLS, err = pki.ServerConfig(agentCerts, pki.ServerOptions{RequireClientCert: true, ClientRoles: []pki.Role{pki.RoleServer}}); err != nil {
		t.Fatal(err)
	}
	a, _ := startAgent(t, cfg)
	if !strings.HasPrefix(a.URL(), "https://") {
		t.Fatalf("agent URL %s, want https", a.URL())
	}

	srv.addAssignment(shell("att-1", "echo hello", nil))
	srv.waitDone(t, "att-1")

	get := func(c *tls.Config) (int, string, error) {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: c}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Get(a.URL() + "/v1/attempts/att-1/logs")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	asServer := pki.ClientConfig(srvCerts, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleAgent}})
	if code, body, err := get(asServer); err != nil || code != http.StatusOK || body != "hello\n" {
		t.Fatalf("log with a server certificate: got %d %q %v, want 200 %q", code, body, err, "hello\n")
	}

	other := newTestPKI(t)
	withCert := func(c tls.Certificate) *tls.Config {
		cc := asServer.Clone()
		cc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		return cc
	}
	noCert := asServer.Clone()
	noCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		want string // the alert the agent answers with
	}{
		{"no certificate", noCert, "tls: certificate required"},
		{"cli certificate", withCert(p.pair(pki.RoleCLI, "ana")), "tls: bad certificate"},
		{"agent certificate", withCert(p.pair(pki.RoleAgent, "agent2")), "tls: bad certificate"},
		{"expired server certificate", withCert(p.pair(pki.RoleServer, "rm2", pki.WithNotBefore(time.Now().Add(-3*time.Hour)))), "tls: expired certificate"},
		{"server certificate not yet valid", withCert(p.pair(pki.RoleServer, "rm3", pki.WithNotBefore(time.Now().Add(time.Hour)))), "tls: expired certificate"},
		{"server certificate of another CA", withCert(other.pair(pki.RoleServer, "rm1")), "tls: unknown certificate authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, err := get(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %d, %v; want the handshake refused with %q", code, err, tc.want)
			}
		})
	}

	// The agent refuses a server whose certificate is of another CA.
	if _, err := tls.Dial("tcp", strings.TrimPrefix(a.URL(), "https://"), pki.ClientConfig(other.store(pki.RoleServer, "rm9"), pki.ClientOptions{})); err == nil ||
		!strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("dial the agent trusting another CA: got %v, want an unknown authority error", err)
	}
}
