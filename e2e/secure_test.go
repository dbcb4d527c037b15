package e2e

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/pki"
	"github.com/tandemhq/tandem/internal/transport"
)

// Secure mode (TANDEM_E2E_SECURE=1) runs the end-to-end tests with
// everything docs/SECURITY.md describes turned on: every cluster that
// startLocal starts is a local.Config.Secure one (TLS between processes,
// etcd locked down with client certificates and authentication, tokens
// enforced with a bootstrapped management token), the etcd of startEtcd
// is locked down for the cluster with the same CA, and newClient, runCLI,
// httpClient and etcdClient present the test's certificates and token.
// .ci/run runs the suite's HA, agent, shard and fault tests this way too.
// A test whose cluster cannot be secured (tandem lb, or one that turns
// parts of security on itself) is skipped, and under CI that skip fails:
// CI's secure run names only tests that can run secured.
const envSecure = "TANDEM_E2E_SECURE"

var secureMode = os.Getenv(envSecure) == "1"

// secureTLSValidity is how long a test cluster's certificates last.
const secureTLSValidity = 7 * 24 * time.Hour

// secured is a test's security material: the directory of its CA and
// certificates, and its cluster once started.
type secured struct {
	dir string
	c   *local.Cluster
}

var (
	securedMu sync.Mutex
	securedOf = map[string]*secured{} // by t.Name()
)

// secureOf returns t's security material, making its directory (and CA,
// for cluster "default") on first use; nil outside secure mode.
func secureOf(t *testing.T) *secured {
	t.Helper()
	if !secureMode {
		return nil
	}
	securedMu.Lock()
	defer securedMu.Unlock()
	if s := securedOf[t.Name()]; s != nil {
		return s
	}
	dir := filepath.Join(t.TempDir(), "tls")
	if _, err := pki.LoadCA(dir); errors.Is(err, fs.ErrNotExist) {
		if _, err := pki.CreateCA(dir, "default", secureTLSValidity); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	s := &secured{dir: dir}
	securedOf[t.Name()] = s
	t.Cleanup(func() {
		securedMu.Lock()
		delete(securedOf, t.Name())
		securedMu.Unlock()
	})
	return s
}

// secureCluster makes cfg a secured cluster in secure mode, or skips a test
// whose cluster cannot be (a failure under CI).
func secureCluster(t *testing.T, cfg *local.Config) {
	t.Helper()
	s := secureOf(t)
	if s == nil || cfg.Secure != "" {
		return
	}
	why := ""
	switch {
	case cfg.LB != "":
		why = "the tandem lb tests' own clients do not present the cluster's certificates and token yet"
	case cfg.EtcdTLS != "":
		why = "the test locks etcd down itself"
	case slices.Contains(cfg.ExtraArgs, "--acl"):
		why = "the test turns tokens on itself"
	case cfg.Cluster != "" && cfg.Cluster != "default":
		why = "secure mode's CA is cluster default's"
	}
	if why != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s=1 cannot run this test: %s (leave it out of CI's secure run)", envSecure, why)
		}
		t.Skipf("%s=1: %s", envSecure, why)
	}
	cfg.Secure = s.dir
}

// registerSecured notes the started cluster of t, whose token and
// certificates the test's clients use.
func registerSecured(t *testing.T, c *local.Cluster) {
	if s := secureOf(t); s != nil {
		securedMu.Lock()
		s.c = c
		securedMu.Unlock()
	}
}

// securedCluster returns t's secured cluster, or nil.
func securedCluster(t *testing.T) *local.Cluster {
	s := secureOf(t)
	if s == nil {
		return nil
	}
	securedMu.Lock()
	defer securedMu.Unlock()
	return s.c
}

// startEtcd starts an etcd for the test (etcdtest.Start); in secure mode it
// is locked down for cluster default with the test's CA, with
// authentication on, as `tandem etcd auth setup` leaves it.
func startEtcd(t *testing.T) *etcdtest.Etcd {
	t.Helper()
	s := secureOf(t)
	if s == nil {
		return etcdtest.Start(t)
	}
	ca, err := pki.LoadCA(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	member, err := pki.Issue(ca, pki.RoleServer, "etcd-test", nil, nil, secureTLSValidity)
	if err != nil {
		t.Fatal(err)
	}
	e := etcdtest.StartTLS(t, etcdtest.TLS{CACert: filepath.Join(s.dir, pki.CACertFile), Cert: member.CertFile, Key: member.KeyFile})
	cli := etcdClient(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := etcdauth.Setup(ctx, cli, "default", etcdauth.Options{}); err != nil {
		t.Fatalf("etcd auth setup: %v", err)
	}
	return e
}

// etcdClient returns a client of e, closed at cleanup: in secure mode with
// the test's certificate for cluster default's etcd user.
func etcdClient(t *testing.T, e *etcdtest.Etcd) *clientv3.Client {
	t.Helper()
	s := secureOf(t)
	if s == nil {
		return e.Client(t)
	}
	f, err := localEtcdFiles(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcdauth.NewClient([]string{e.Endpoint}, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// localEtcdFiles returns (making it if need be) the server certificate
// "local" of the CA in dir: the one local.Cluster.EtcdFiles names.
func localEtcdFiles(dir string) (etcdauth.Files, error) {
	f := etcdauth.Files{CACert: filepath.Join(dir, pki.CACertFile),
		Cert: filepath.Join(dir, "server-local.pem"), Key: filepath.Join(dir, "server-local-key.pem")}
	if _, err := os.Stat(f.Cert); err == nil {
		return f, nil
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		return f, err
	}
	_, err = pki.Issue(ca, pki.RoleServer, "local", nil, nil, secureTLSValidity)
	return f, err
}

// clusterEtcdClient returns a client of c's etcd straight to its members,
// closed at cleanup: with c's certificate for a secured cluster.
func clusterEtcdClient(t *testing.T, c *local.Cluster) *clientv3.Client {
	t.Helper()
	cli, err := etcdauth.NewClient(c.EtcdEndpoints(), c.EtcdFiles())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// secureEnv returns the CLI's environment for t's secured cluster.
func secureEnv(t *testing.T) []string {
	if c := securedCluster(t); c != nil {
		return c.SecureEnv()
	}
	return nil
}

// clientConfig adds t's secured cluster's TLS and token to cfg.
func clientConfig(t *testing.T, cfg client.Config) client.Config {
	t.Helper()
	c := securedCluster(t)
	if c == nil {
		return cfg
	}
	tc, err := client.TLSFiles{CACert: c.TLS.CACert, ClientCert: c.TLS.CLICert, ClientKey: c.TLS.CLIKey}.Config()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Token, cfg.TLS = c.Token, tc // (a caller's HTTPClient needs cfg.TLS in its transport)
	return cfg
}

// httpClient returns an HTTP client for raw requests to t's servers, and
// authorize adds the token to such a request: in secure mode with the
// test's CA and client certificate.
func httpClient(t *testing.T) *http.Client {
	t.Helper()
	cfg := clientConfig(t, client.Config{})
	return transport.NewHTTPClient(transport.HTTPOptions{Timeout: 10 * time.Second, NoProxy: true, TLS: cfg.TLS})
}

// securedToken returns t's secured cluster's token, or "".
func securedToken(t *testing.T) string {
	if c := securedCluster(t); c != nil {
		return c.Token
	}
	return ""
}

// authorize adds t's secured cluster's token to req.
func authorize(t *testing.T, req *http.Request) *http.Request {
	if c := securedCluster(t); c != nil && c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req
}
