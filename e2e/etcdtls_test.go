package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/pki"
)

// TestEtcdLockedDown runs a whole local cluster with its embedded etcd
// locked down (TLS with client certificates on both ports, etcd
// authentication on, each process presenting its server certificate):
// three servers elect an active, a job runs on an agent, a supervised
// service runs, tandem lb routes to the active, kill -9 of the active
// fails over, and the killed server restarts into the locked-down etcd.
// The cluster's etcd user reaches its prefix only, and a certificate of
// another cluster is refused by the member.
func TestEtcdLockedDown(t *testing.T) {
	cfg := local.Config{Binary: binary, Servers: 3, Agents: 1, Supervisors: 1, BasePort: freeBasePort(t, 3),
		DataDir: t.TempDir(), LogLevel: "debug", EtcdTLS: filepath.Join(t.TempDir(), "tls")}
	if _, err := exec.LookPath("haproxy"); err == nil {
		cfg.LB = "haproxy"
	} else if os.Getenv("CI") != "" {
		t.Fatalf("needs haproxy: %v (CI is set, so this is not skipped)", err)
	} else {
		t.Logf("no haproxy (%v): tandem lb is left out", err)
	}
	c := startLocal(t, cfg)
	first := waitActive(t, c)
	if n := countActive(t, c); n != 1 {
		t.Fatalf("active servers: got %d, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// etcd is locked down, and the servers did it.
	for _, ep := range c.EtcdEndpoints() {
		if !strings.HasPrefix(ep, "https://") {
			t.Fatalf("etcd endpoint %s: want https", ep)
		}
	}
	own, err := etcdauth.NewClient(c.EtcdEndpoints(), c.EtcdFiles())
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if err := etcdauth.Verify(ctx, own, "default"); err != nil {
		t.Fatalf("etcd after the servers started: %v", err)
	}
	resp, err := own.Get(ctx, "/tandem/default/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count == 0 {
		t.Fatalf("the cluster's own keys: %v, %v; want some", resp, err)
	}
	if _, err := own.Get(ctx, "/tandem/other/", clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("another cluster's prefix as the cluster's user: got %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	checkOtherClusterRefused(t, c)

	// A job runs, the supervised service runs, tandem lb routes to the active.
	cl := newClient(t, c.URLs())
	runJob(t, ctx, cl, "before")
	eventually(t, "the supervised demo service answers", 30*time.Second, func() error { return httpOK(ctx, c.DemoURL) })
	if c.LB != nil {
		waitApplied(t, c, "tandem lb routes to the active", onlyUp(c.Servers[first].ID))
	}

	// kill -9 of the active: another takes over, and jobs run again.
	if err := c.Kill(first); err != nil {
		t.Fatal(err)
	}
	next := waitActive(t, c, first)
	if n := countActive(t, c); n != 1 {
		t.Fatalf("active servers after failover: got %d, want 1", n)
	}
	runJob(t, ctx, cl, "after")
	if c.LB != nil {
		waitApplied(t, c, "tandem lb routes to the new active", onlyUp(c.Servers[next].ID))
	}
	t.Logf("%s took over from %s", c.Servers[next].ID, c.Servers[first].ID)

	// The killed server comes back: authentication is on, it is not root,
	// and its start-up only checks that etcd is set up.
	if err := c.StartServer(first); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx, first); err != nil {
		t.Fatal(err)
	}
	if n := countActive(t, c); n != 1 {
		t.Fatalf("active servers after the restart: got %d, want 1", n)
	}
	if err := etcdauth.Verify(ctx, own, "default"); err != nil {
		t.Fatalf("etcd after the restart: %v", err)
	}
}

// runJob submits a job and waits for it to succeed on an agent.
func runJob(t *testing.T, ctx context.Context, cl *client.Client, name string) {
	t.Helper()
	j, err := cl.SubmitJob(ctx, tandem.JobSpec{Name: name, Command: []string{"true"}}, client.SubmitOptions{})
	if err != nil {
		t.Fatalf("submit %s: %v", name, err)
	}
	if final := waitJobState(t, cl, j.ID, 60*time.Second, terminal); final.State != tandem.JobSucceeded {
		t.Fatalf("job %s: got %s, want %s", name, final.State, tandem.JobSucceeded)
	}
}

func httpOK(ctx context.Context, u string) error {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d", u, resp.StatusCode)
	}
	return nil
}

// checkOtherClusterRefused presents a server certificate of cluster
// "other" (its own CA) to every member of c: the handshake is refused
// with the alert saying why, and an etcd client holding it reads nothing
// of /tandem/default/.
func checkOtherClusterRefused(t *testing.T, c *local.Cluster) {
	t.Helper()
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "other"), "other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	is, err := pki.Issue(ca, pki.RoleServer, "rm1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Verify the member with c's CA, so only the member can refuse.
	files := etcdauth.Files{CACert: c.EtcdFiles().CACert, Cert: is.CertFile, Key: is.KeyFile}
	roots, err := pki.ReadCerts(files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	pair, err := tls.LoadX509KeyPair(is.CertFile, is.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range c.EtcdEndpoints() {
		u, err := url.Parse(ep)
		if err != nil {
			t.Fatal(err)
		}
		if alert := etcdHandshake(t, u.Host, pool, pair); alert != "tls: unknown certificate authority" {
			t.Fatalf("%s with cluster other's certificate: got alert %q, want %q", ep, alert, "tls: unknown certificate authority")
		}
	}
	other, err := etcdauth.NewClient(c.EtcdEndpoints(), files)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// The deadline bounds a client that cannot connect; the alerts above
	// are the refusal itself.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if resp, err := other.Get(ctx, "/tandem/default/", clientv3.WithPrefix()); err == nil {
		t.Fatalf("cluster other's certificate read %d keys of cluster default", len(resp.Kvs))
	}
}

// etcdHandshake makes a TLS connection to a member's client port
// presenting cert, and returns the alert the member sent, or "" if it
// served the connection. In TLS 1.3 the client's side of the handshake
// completes before the server has checked the client's certificate; a
// refusal arrives as an alert on the first read. The deadline only keeps a
// broken test from hanging.
func etcdHandshake(t *testing.T, addr string, roots *x509.CertPool, cert tls.Certificate) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	// GetClientCertificate sends cert whatever CAs the member names as
	// acceptable, as a client bent on getting in would.
	tc := tls.Client(conn, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }})
	err = tc.Handshake()
	if err == nil {
		_, err = io.ReadFull(tc, make([]byte, 1))
	}
	if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Op == "remote error" {
		return oe.Err.Error()
	}
	if err != nil {
		t.Fatalf("%s: %v, want a TLS alert or an answer", addr, err)
	}
	return ""
}
