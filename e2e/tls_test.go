package e2e

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/pki"
)

// TestTLSCluster runs three servers and an agent with TLS between every
// process (docs/SECURITY.md, "TLS between processes"): the CLI, given the
// CA and a cli certificate in $TANDEM_CACERT, $TANDEM_CLIENT_CERT and
// $TANDEM_CLIENT_KEY, submits a job and reads its log, which the active
// fetches from the agent over mutual TLS; after a kill -9 of the active
// another takes over and a second job runs and shows its log the same way.
func TestTLSCluster(t *testing.T) {
	e := etcdtest.Start(t)
	c, err := local.New(local.Config{Binary: binary, Servers: 3, Agents: 1, BasePort: freeBasePort(t, 3),
		DataDir: t.TempDir(), EtcdEndpoints: e.Endpoint, LogLevel: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	files, err := c.EnableTLS(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range append(c.URLs(), c.Agents[0].URL) {
		if !strings.HasPrefix(u, "https://") {
			t.Fatalf("URL %s with TLS on: want https", u)
		}
	}
	startTLSLocal(t, c)
	a := waitActive(t, c)

	env := append(files.Env(), "TANDEM_SERVERS="+strings.Join(c.URLs(), ","), "XDG_CONFIG_HOME="+t.TempDir())
	runJob := func(word string) string {
		t.Helper()
		out, errOut, code := runCLI(t, env, "job", "submit", "--", "sh", "-c", "echo "+word)
		if code != 0 {
			t.Fatalf("job submit over TLS: exit %d\n%s%s", code, out, errOut)
		}
		id := strings.TrimSpace(out)
		if _, errOut, code := runCLI(t, env, "job", "wait", id); code != 0 {
			t.Fatalf("job wait %s: exit %d: %s", id, code, errOut)
		}
		got, errOut, code := runCLI(t, env, "job", "logs", id)
		if code != 0 || got != word+"\n" {
			t.Fatalf("job logs %s over TLS: exit %d, %q, stderr %s; want %q", id, code, got, errOut, word+"\n")
		}
		return id
	}
	runJob("before")

	// Roles, on the real processes: an agent syncs only as itself, a cli
	// certificate cannot sync, an agent certificate cannot fail over; the
	// agent's log server refuses a caller without a server certificate in
	// the handshake.
	asAgent1 := pkiClient(t, files, "agent-agent1")
	asCLI := pkiClient(t, files, "cli-local")
	for _, tc := range []struct {
		name       string
		hc         *http.Client
		path, body string
		want       int
	}{
		{"agent1 syncs as agent2", asAgent1, "/v1/agent/sync", `{"agent":{"id":"agent2"}}`, http.StatusForbidden},
		{"cli certificate syncs", asCLI, "/v1/agent/sync", `{"agent":{"id":"local"}}`, http.StatusForbidden},
		{"agent certificate fails over", asAgent1, "/v1/ha/failover", `{"from":"rm1","to":"rm2"}`, http.StatusForbidden},
	} {
		resp, err := tc.hc.Post(c.Servers[a].URL+tc.path, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Fatalf("%s: got %d %s, want %d", tc.name, resp.StatusCode, b, tc.want)
		}
	}
	if _, err := asCLI.Get(c.Agents[0].URL + "/healthz"); err == nil || !strings.Contains(err.Error(), "tls: bad certificate") {
		t.Fatalf("cli certificate on the agent's listener: got %v, want the handshake refused (bad certificate)", err)
	}

	// Without the CA the CLI cannot verify the servers.
	plain := []string{"TANDEM_SERVERS=" + strings.Join(c.URLs(), ","), "XDG_CONFIG_HOME=" + t.TempDir()}
	if _, errOut, code := runCLI(t, plain, "--retry-attempts", "1", "job", "list"); code == 0 || !strings.Contains(errOut, "certificate") {
		t.Fatalf("CLI without the CA: exit %d, stderr %q; want a certificate error", code, errOut)
	}

	// The Go client with the same files, then a crash failover.
	tlsCfg, err := client.TLSFiles{CACert: files.CACert, ClientCert: files.CLICert, ClientKey: files.CLIKey}.Config()
	if err != nil {
		t.Fatal(err)
	}
	cl := newTLSClient(t, c.URLs(), tlsCfg)
	if err := c.Kill(a); err != nil {
		t.Fatal(err)
	}
	next := waitActive(t, c, a)
	if next == a {
		t.Fatalf("server %d still active after its kill", a)
	}
	id := runJob("after")
	j := waitJobState(t, cl, id, 30*time.Second, terminal)
	if j.State != tandem.JobSucceeded {
		t.Fatalf("job after the failover: %s", j.State)
	}
	// The agent, which syncs with every server over TLS, ran both.
	if j.Attempts[0].Agent != local.AgentID(0) {
		t.Fatalf("attempt ran on %q, want %s", j.Attempts[0].Agent, local.AgentID(0))
	}

	// The certificate's expiry is a metric of the server.
	resp, err := asCLI.Get(c.Servers[next].URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `tandem_tls_cert_expiry_seconds{file=`) || !strings.Contains(string(metrics), `id="`+c.Servers[next].ID+`"`) {
		t.Fatalf("no tandem_tls_cert_expiry_seconds for %s in /metrics", c.Servers[next].ID)
	}

	// Rotation: new files and SIGHUP; new connections get the new
	// certificate, and the cluster goes on.
	ca, err := pki.LoadCA(files.Dir)
	if err != nil {
		t.Fatal(err)
	}
	id0 := c.Servers[next].ID
	is, err := pki.Issue(ca, pki.RoleServer, id0, nil, nil, time.Hour, pki.WithOutput(t.TempDir(), "new"))
	if err != nil {
		t.Fatal(err)
	}
	for from, to := range map[string]string{is.CertFile: "server-" + id0 + ".pem", is.KeyFile: "server-" + id0 + "-key.pem"} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(files.Dir, to+".tmp"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(files.Dir, to+".tmp"), filepath.Join(files.Dir, to)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Signal(next, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(c.Servers[next].URL, "https://")
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := tls.Dial("tcp", host, tlsCfg)
		if err == nil {
			serial := conn.ConnectionState().PeerCertificates[0].SerialNumber
			conn.Close()
			if serial.Cmp(is.Cert.SerialNumber) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not present its new certificate after SIGHUP (last error %v)", id0, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	runJob("rotated")
}

// startTLSLocal starts c (made by local.New, with EnableTLS) as startLocal does.
func startTLSLocal(t *testing.T, c *local.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t.Cleanup(func() {
		c.Stop(10 * time.Second)
		if t.Failed() {
			for _, p := range append(append([]*local.Proc(nil), c.Servers...), c.Agents...) {
				b, _ := os.ReadFile(p.LogPath)
				t.Logf("---- %s log ----\n%s", p.ID, tail(string(b), 50))
			}
		}
	})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

func newTLSClient(t *testing.T, urls []string, cfg *tls.Config) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Servers: urls, TLS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// pkiClient is an HTTP client presenting the certificate name (as
// EnableTLS named it in files.Dir) and trusting the cluster's CA.
func pkiClient(t *testing.T, files *local.TLSFiles, name string) *http.Client {
	t.Helper()
	s, err := pki.NewStore(filepath.Join(files.Dir, name+".pem"), filepath.Join(files.Dir, name+"-key.pem"), files.CACert, nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientConfig(s, pki.ClientOptions{})}}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}
