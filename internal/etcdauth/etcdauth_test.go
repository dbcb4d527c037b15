package etcdauth_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/pki"
)

const rootPassword = "root-secret"

// cluster is one tandem cluster's CA and certificates.
type cluster struct {
	name          string
	ca            *pki.CA
	server, agent *pki.Issued
}

func newCluster(t *testing.T, name string) *cluster {
	t.Helper()
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca"), name, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{name: name, ca: ca}
	if c.server, err = pki.Issue(ca, pki.RoleServer, "rm1", nil, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	if c.agent, err = pki.Issue(ca, pki.RoleAgent, "w1", nil, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cluster) caFile() string { return filepath.Join(c.ca.Dir, pki.CACertFile) }

// sharedEtcd starts one etcd that the clusters share: it trusts each
// cluster's CA and accepts each cluster's server certificates, root, and
// the first cluster's agent certificate (which names no etcd user, to show
// that passing the handshake grants nothing). Its own certificate is the
// first cluster's.
func sharedEtcd(t *testing.T, clusters ...*cluster) (*etcdtest.Etcd, string) {
	t.Helper()
	caFile := filepath.Join(t.TempDir(), "cas.pem")
	var pem []byte
	cns := []string{etcdauth.RootUser, clusters[0].agent.Cert.Subject.CommonName}
	for _, c := range clusters {
		b, err := os.ReadFile(c.caFile())
		if err != nil {
			t.Fatal(err)
		}
		pem = append(pem, b...)
		cns = append(cns, etcdauth.User(c.name))
	}
	if err := os.WriteFile(caFile, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	first := clusters[0]
	e := etcdtest.StartTLS(t, etcdtest.TLS{CACert: caFile, Cert: first.server.CertFile, Key: first.server.KeyFile, ClientCommonNames: cns})
	return e, caFile
}

// client connects to e as the holder of is, or as root (is nil) with a
// password over a TLS connection made with the first cluster's server
// certificate: the password's token, not the certificate, makes it root.
func client(t *testing.T, e *etcdtest.Etcd, caFile string, is *pki.Issued, fallback *pki.Issued) *clientv3.Client {
	t.Helper()
	files := etcdauth.Files{CACert: caFile}
	if is != nil {
		files.Cert, files.Key = is.CertFile, is.KeyFile
	} else {
		files.Cert, files.Key = fallback.CertFile, fallback.KeyFile
	}
	cfg, err := etcdauth.ClientConfig([]string{e.Endpoint}, files)
	if err != nil {
		t.Fatal(err)
	}
	if is == nil {
		cfg.Username, cfg.Password = etcdauth.RootUser, rootPassword
	}
	// New dials, and with a password authenticates (bcrypt on the server),
	// within DialTimeout: 5 s is not always enough while CI runs many
	// packages at once on two cores.
	cfg.DialTimeout = 20 * time.Second
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func setup(t *testing.T, cli *clientv3.Client, cluster string) []string {
	t.Helper()
	changes, err := etcdauth.Setup(ctx(t), cli, cluster, etcdauth.Options{RootPassword: rootPassword})
	if err != nil {
		t.Fatalf("setup %s: %v (after %q)", cluster, err, changes)
	}
	return changes
}

// access tries every kind of access to the keys under prefix and returns
// the error of each (nil: allowed).
func access(t *testing.T, cli *clientv3.Client, prefix string) map[string]error {
	t.Helper()
	c := ctx(t)
	got := map[string]error{}
	_, got["put"] = cli.Put(c, prefix+"k", "v")
	_, got["get"] = cli.Get(c, prefix+"k")
	_, got["list"] = cli.Get(c, prefix, clientv3.WithPrefix())
	_, got["txn"] = cli.Txn(c).If(clientv3.Compare(clientv3.CreateRevision(prefix+"k"), ">", 0)).Then(clientv3.OpPut(prefix+"k", "w")).Commit()
	_, got["delete"] = cli.Delete(c, prefix+"k")
	got["watch"] = watch(t, cli, prefix)
	return got
}

// watch watches prefix and returns the watch's error, or nil once it has
// seen a put made after it started (by the watcher itself: only a
// permitted watch of a permitted prefix gets that far).
func watch(t *testing.T, cli *clientv3.Client, prefix string) error {
	t.Helper()
	c, cancel := context.WithCancel(ctx(t))
	defer cancel()
	wch := cli.Watch(c, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	first, ok := <-wch
	if !ok {
		return errors.New("watch channel closed")
	}
	// etcd ends a denied watch with a gRPC PermissionDenied status, which
	// the client library flattens into a plain error carrying its text
	// (errors.New in clientv3's watcher): that text is all there is.
	if err := first.Err(); err != nil && first.Canceled && err.Error() == rpctypes.ErrGRPCPermissionDenied.Error() {
		return rpctypes.ErrPermissionDenied
	}
	if err := first.Err(); err != nil {
		return err
	}
	if _, err := cli.Put(c, prefix+"watched", "v"); err != nil {
		return err
	}
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return err
		}
		if len(resp.Events) > 0 {
			return nil
		}
	}
	return c.Err()
}

func wantAccess(t *testing.T, who string, got map[string]error, allowed bool) {
	t.Helper()
	for op, err := range got {
		switch {
		case allowed && err != nil:
			t.Errorf("%s: %s: got %v, want allowed", who, op, err)
		case !allowed && !errors.Is(err, rpctypes.ErrPermissionDenied):
			t.Errorf("%s: %s: got %v, want %v", who, op, err, rpctypes.ErrPermissionDenied)
		}
	}
}

// TestClustersConfined: two clusters share one etcd; the user of each
// reads, writes and watches its own prefix and nothing else: not the other
// cluster's, not a cluster whose name extends its own, not the whole of
// /tandem/.
func TestClustersConfined(t *testing.T) {
	dev, prod := newCluster(t, "dev"), newCluster(t, "prod")
	e, caFile := sharedEtcd(t, dev, prod)
	devCli := client(t, e, caFile, dev.server, nil)
	prodCli := client(t, e, caFile, prod.server, nil)

	// Authentication is off: dev's own server sets it up and turns it on.
	setup(t, devCli, "dev")
	rootCli := client(t, e, caFile, nil, dev.server)
	// Now only root may add prod's role and user.
	if changes, err := etcdauth.Setup(ctx(t), prodCli, "prod", etcdauth.Options{}); !errors.Is(err, etcdauth.ErrNotSetUp) {
		t.Fatalf("prod's server set up prod: got %q, %v; want %v", changes, err, etcdauth.ErrNotSetUp)
	}
	setup(t, rootCli, "prod")

	for _, c := range []struct {
		who        string
		cli        *clientv3.Client
		own, other string
	}{{"dev", devCli, "dev", "prod"}, {"prod", prodCli, "prod", "dev"}} {
		wantAccess(t, c.who+" under its own prefix", access(t, c.cli, "/tandem/"+c.own+"/"), true)
		wantAccess(t, c.who+" under /tandem/"+c.other+"/", access(t, c.cli, "/tandem/"+c.other+"/"), false)
		wantAccess(t, c.who+" under /tandem/"+c.own+"2/", access(t, c.cli, "/tandem/"+c.own+"2/"), false)
		wantAccess(t, c.who+" under /tandem/", access(t, c.cli, "/tandem/"), false)
		wantAccess(t, c.who+" under /", access(t, c.cli, "/"), false)
	}
	// An agent's certificate passes this etcd's handshake, yet names no
	// etcd user: it may do nothing, even in its own cluster.
	agentCli := client(t, e, caFile, dev.agent, nil)
	if _, err := agentCli.Get(ctx(t), "/tandem/dev/k"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("agent get: got %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
}

// TestSetupIdempotent: once set up, Setup again (as root, or as the
// cluster's own server) changes nothing, not even etcd's auth revision;
// and it puts right a role someone widened.
func TestSetupIdempotent(t *testing.T) {
	dev := newCluster(t, "dev")
	e, caFile := sharedEtcd(t, dev)
	devCli := client(t, e, caFile, dev.server, nil)
	if changes := setup(t, devCli, "dev"); len(changes) == 0 {
		t.Fatal("first setup changed nothing")
	}
	// A client authenticates when it connects: root's, once auth is on.
	rootCli := client(t, e, caFile, nil, dev.server)
	authRev := func() uint64 {
		t.Helper()
		st, err := rootCli.AuthStatus(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if !st.Enabled {
			t.Fatal("authentication is off")
		}
		return st.AuthRevision
	}
	before := authRev()
	for _, c := range []struct {
		who string
		cli *clientv3.Client
	}{{"root", rootCli}, {"dev's server", devCli}} {
		if changes := setup(t, c.cli, "dev"); len(changes) != 0 {
			t.Errorf("setup again as %s: got changes %q, want none", c.who, changes)
		}
		if after := authRev(); after != before {
			t.Errorf("setup again as %s: auth revision %d, want %d", c.who, after, before)
		}
	}
	if err := etcdauth.Verify(ctx(t), devCli, "dev"); err != nil {
		t.Fatalf("verify: %v", err)
	}

	// Someone widens dev's role to all of /tandem/: Verify notices, and
	// Setup as root narrows it again.
	if _, err := rootCli.RoleGrantPermission(ctx(t), etcdauth.Role("dev"), "/tandem/", clientv3.GetPrefixRangeEnd("/tandem/"), clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		t.Fatal(err)
	}
	if err := etcdauth.Verify(ctx(t), devCli, "dev"); !errors.Is(err, etcdauth.ErrNotSetUp) {
		t.Fatalf("verify a widened role: got %v, want %v", err, etcdauth.ErrNotSetUp)
	}
	if changes := setup(t, rootCli, "dev"); len(changes) != 1 {
		t.Errorf("setup of a widened role: got changes %q, want the one revocation", changes)
	}
	if err := etcdauth.Verify(ctx(t), devCli, "dev"); err != nil {
		t.Fatalf("verify after setup: %v", err)
	}
	wantAccess(t, "dev under /tandem/other/", access(t, devCli, "/tandem/other/"), false)
}

// TestConcurrentSetup: the members of an embedded etcd start together and
// each runs Setup with its own certificate: all succeed, and the result is
// the same as one run's.
func TestConcurrentSetup(t *testing.T) {
	dev := newCluster(t, "dev")
	e, caFile := sharedEtcd(t, dev)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		cli := client(t, e, caFile, dev.server, nil)
		wg.Go(func() { _, errs[i] = etcdauth.Setup(ctx(t), cli, "dev", etcdauth.Options{}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("setup %d: %v", i, err)
		}
	}
	cli := client(t, e, caFile, dev.server, nil)
	if err := etcdauth.Verify(ctx(t), cli, "dev"); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

// TestLeaseConfined: a server's lease carries keys inside its cluster's
// prefix only; attaching a key elsewhere to it is a put like any other,
// and denied.
func TestLeaseConfined(t *testing.T) {
	dev, prod := newCluster(t, "dev"), newCluster(t, "prod")
	e, caFile := sharedEtcd(t, dev, prod)
	devCli := client(t, e, caFile, dev.server, nil)
	prodCli := client(t, e, caFile, prod.server, nil)
	setup(t, devCli, "dev")
	setup(t, client(t, e, caFile, nil, dev.server), "prod")

	lease, err := devCli.Grant(ctx(t), 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devCli.Put(ctx(t), "/tandem/dev/leader", "rm1", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatalf("put in its own prefix with its lease: %v", err)
	}
	for _, key := range []string{"/tandem/prod/leader", "/tandem/leader", "/elsewhere"} {
		if _, err := devCli.Put(ctx(t), key, "rm1", clientv3.WithLease(lease.ID)); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("put %s with dev's lease: got %v, want %v", key, err, rpctypes.ErrPermissionDenied)
		}
	}
	ttl, err := devCli.TimeToLive(ctx(t), lease.ID, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	if len(ttl.Keys) != 1 || string(ttl.Keys[0]) != "/tandem/dev/leader" {
		t.Errorf("dev's lease carries %q, want only /tandem/dev/leader", ttl.Keys)
	}
	if _, err := devCli.Revoke(ctx(t), lease.ID); err != nil {
		t.Errorf("revoke dev's own lease: %v", err)
	}

	// Lease IDs are global in etcd, but a lease that carries prod's keys
	// (its leader key: prod's fence) can be neither revoked nor kept alive
	// by dev: etcd requires write permission on every key it carries.
	prodLease, err := prodCli.Grant(ctx(t), 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prodCli.Put(ctx(t), "/tandem/prod/leader", "rm1", clientv3.WithLease(prodLease.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := devCli.Revoke(ctx(t), prodLease.ID); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("dev revokes prod's leader lease: got %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	if _, err := devCli.KeepAliveOnce(ctx(t), prodLease.ID); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("dev keeps prod's leader lease alive: got %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	if resp, err := prodCli.Get(ctx(t), "/tandem/prod/leader"); err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease != int64(prodLease.ID) {
		t.Errorf("prod's leader key: got %v, %v; want it on its lease", resp, err)
	}
}

// TestClientConfig checks the refusals of the client helper.
func TestClientConfig(t *testing.T) {
	dev := newCluster(t, "dev")
	files := etcdauth.Files{CACert: dev.caFile(), Cert: dev.server.CertFile, Key: dev.server.KeyFile}
	tests := []struct {
		name      string
		endpoints []string
		files     etcdauth.Files
		ok        bool
	}{
		{"plain", []string{"http://127.0.0.1:2379"}, etcdauth.Files{}, true},
		{"tls", []string{"https://127.0.0.1:2379"}, files, true},
		{"tls to http", []string{"https://127.0.0.1:2379", "http://127.0.0.1:2381"}, files, false},
		{"no key", []string{"https://127.0.0.1:2379"}, etcdauth.Files{CACert: files.CACert, Cert: files.Cert}, false},
		{"key of another certificate", []string{"https://127.0.0.1:2379"}, etcdauth.Files{CACert: files.CACert, Cert: files.Cert, Key: dev.agent.KeyFile}, false},
		{"not a URL", []string{"127.0.0.1:2379"}, etcdauth.Files{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := etcdauth.ClientConfig(tt.endpoints, tt.files)
			if (err == nil) != tt.ok {
				t.Fatalf("got %v, want ok=%v", err, tt.ok)
			}
			if err == nil && (cfg.TLS != nil) != !tt.files.IsZero() {
				t.Fatalf("got TLS %v for files %+v", cfg.TLS != nil, tt.files)
			}
		})
	}
}

// TestFilesCluster: the cluster a certificate is the etcd user of.
func TestFilesCluster(t *testing.T) {
	dev := newCluster(t, "dev")
	got, err := etcdauth.Files{CACert: dev.caFile(), Cert: dev.server.CertFile, Key: dev.server.KeyFile}.Cluster()
	if err != nil || got != "dev" {
		t.Errorf("server certificate: got %q, %v; want dev", got, err)
	}
	if got, err := (etcdauth.Files{CACert: dev.caFile(), Cert: dev.agent.CertFile, Key: dev.agent.KeyFile}).Cluster(); err == nil {
		t.Errorf("agent certificate: got %q, want an error", got)
	}
}
