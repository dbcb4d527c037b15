package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/pki"
)

// TestSuperviseSecurityFlags: the API's security flags of `tandem
// supervise` (--tls-cert/--tls-key/--tls-ca, --acl, --acl-metrics,
// --audit-log) refuse bad input with exit status 2 and a message naming
// the flag, before anything starts (the etcd endpoint is dead).
func TestSuperviseSecurityFlags(t *testing.T) {
	certs := newEtcdCerts(t, "default")
	caFile := certs.caFile
	n1 := certs.issue(t, pki.RoleServer, "n1")
	n2 := certs.issue(t, pki.RoleServer, "n2")
	agent := certs.issue(t, pki.RoleAgent, "n1")
	prod := newEtcdCerts(t, "prod").issue(t, pki.RoleServer, "n1")
	dead := deadURL(t)
	run := func(args ...string) []string {
		return argv(argv([]string{"supervise", "--node", "n1", "--etcd-endpoints", dead, "--listen", "127.0.0.1:0",
			"--service", "web", "--fencing", "self"}, args...), "--", "/bin/sleep", "1000")
	}
	tlsOf := func(cert, key string) []string {
		return []string{"--tls-cert", cert, "--tls-key", key, "--tls-ca", caFile}
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"acl-metrics without acl", run("--acl-metrics"), "--acl-metrics protects /metrics with a token: it needs --acl"},
		{"certificate without key and CA", run("--tls-cert", n1.CertFile), "--tls-ca and --tls-key missing"},
		{"certificate file missing", run(tlsOf(filepath.Join(t.TempDir(), "nope.pem"), n1.KeyFile)...), "--tls-cert: pki:"},
		{"key of another certificate", run(tlsOf(n1.CertFile, n2.KeyFile)...), "--tls-cert: pki: " + n1.CertFile + " and " + n2.KeyFile},
		{"CA file missing", run("--tls-cert", n1.CertFile, "--tls-key", n1.KeyFile, "--tls-ca", filepath.Join(t.TempDir(), "ca.pem")), "--tls-cert: pki: CA"},
		{"agent certificate", run(tlsOf(agent.CertFile, agent.KeyFile)...), "of role agent"},
		{"certificate of another node", run(tlsOf(n2.CertFile, n2.KeyFile)...), "is n2's certificate, not node n1's (--node)"},
		{"certificate of another cluster", run("--tls-cert", prod.CertFile, "--tls-key", prod.KeyFile, "--tls-ca", filepath.Join(filepath.Dir(prod.CertFile), pki.CACertFile)),
			`not of --cluster "default"`},
		{"http advertise URL with TLS", run(append(tlsOf(n1.CertFile, n1.KeyFile), "--advertise", "http://127.0.0.1:7480")...),
			`--advertise "http://127.0.0.1:7480": with --tls-cert the supervisor serves https only`},
		{"audit log in a missing directory", run("--acl", "--audit-log", filepath.Join(t.TempDir(), "no", "audit.log")), "--audit-log: open"},
		{"security flags on a subcommand", []string{"supervise", "status", "--etcd-endpoints", dead, "--acl"}, "unknown flag: --acl"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			out, errOut, code := runCLI(t, tt.args...)
			if code != 2 {
				t.Errorf("got exit %d (%s), want 2 (usage)", code, errOut)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("got stderr %q, want it to contain %q", errOut, tt.want)
			}
			if out != "" {
				t.Errorf("got stdout %q, want nothing", out)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v: it should have been refused before anything started", d)
			}
		})
	}
}

// TestSuperviseSecureAPI runs `tandem supervise --tls-cert ... --acl
// --audit-log` against a real etcd: its API serves https only, /healthz is
// open, the services need a token of the cluster, a clear with a read token
// is refused and audited, with an operator token done and audited.
func TestSuperviseSecureAPI(t *testing.T) {
	base := testCgroups(t)
	e := etcdtest.Start(t)
	cli := e.Client(t)
	certs := newEtcdCerts(t, "c1")
	n1 := certs.issue(t, pki.RoleServer, "n1")
	audit := filepath.Join(t.TempDir(), "audit.log")

	// Tokens of cluster c1, made as the owner of shard 0 would.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	l := keys.New("c1")
	if _, err := cli.Put(ctx, l.Leader(), `{"id":"rm1"}`); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, l.Leader())
	if err != nil {
		t.Fatal(err)
	}
	fence := election.Fence{Key: l.Leader(), Rev: resp.Kvs[0].CreateRevision}
	var secrets []string
	for _, p := range []acl.Policy{acl.PolicyRead, acl.PolicyOperator} {
		nt, err := acl.NewStore(cli, l).Create(ctx, fence, acl.CreateRequest{Name: string(p) + "-tok", Policy: p}, "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, nt.Secret)
	}
	read, op := secrets[0], secrets[1]

	addr := loopbackAddr(t)
	sup := startCLI(t, "supervise", "--node", "n1", "--cluster", "c1", "--etcd-endpoints", e.Endpoint, "--listen", addr,
		"--cgroup-parent", filepath.Join(base, "n1"), "--lease-ttl", "2s", "--log-level", "error",
		"--tls-cert", n1.CertFile, "--tls-key", n1.KeyFile, "--tls-ca", certs.caFile, "--acl", "--audit-log", audit,
		"--advertise", "https://"+addr, "--service", "web", "--fencing", "self", "--stop-timeout", "2s", "--", "/bin/sleep", "1000")
	admin := []string{"supervise", "--cluster", "c1", "--etcd-endpoints", e.Endpoint}
	waitCLIStatus(t, admin, "web", "n1")
	if !sup.running() {
		t.Fatalf("the supervisor exited %d: %s", sup.code, sup.errOut)
	}

	ca, err := pki.NewStore("", "", certs.caFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool()}, Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	call := func(method, path, token string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, "https://"+addr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tt := range []struct {
		method, path, token string
		status              int
		want                string
	}{
		{"GET", "/healthz", "", 200, "ok"},
		{"GET", "/metrics", "", 200, "tandem_tls_cert_expiry_seconds"},
		{"GET", "/v1/supervise/services", "", 401, "supervisor n1 requires a token"},
		{"GET", "/v1/supervise/services", read, 200, `"service":"web"`},
		{"POST", "/v1/supervise/services/web/clear", read, 403, "token read-tok (read) lacks operator"},
		{"POST", "/v1/supervise/services/web/clear", op, 200, `{"bans_cleared":0}`},
	} {
		if status, body := call(tt.method, tt.path, tt.token); status != tt.status || !strings.Contains(body, tt.want) {
			t.Errorf("%s %s: got %d %q, want %d containing %q", tt.method, tt.path, status, body, tt.status, tt.want)
		}
	}
	sup.stop(t)
	b, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e acl.AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		got = append(got, e.Decision+" "+e.Method+" "+e.Route+" "+e.Identity.TokenName+" "+e.Target)
	}
	want := []string{
		"deny GET /v1/supervise/services  ",
		"deny POST /v1/supervise/services/{svc}/clear read-tok service web",
		"allow POST /v1/supervise/services/{svc}/clear operator-tok service web",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got audit log\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(string(b), read) || strings.Contains(string(b), op) {
		t.Errorf("a secret is in the audit log:\n%s", b)
	}
}
