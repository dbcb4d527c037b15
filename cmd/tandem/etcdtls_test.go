package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/embedetcd"
	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/pki"
)

// etcdCerts is a cluster's CA and certificates for the etcd TLS tests.
type etcdCerts struct {
	ca     *pki.CA
	caFile string
}

func newEtcdCerts(t *testing.T, cluster string) *etcdCerts {
	t.Helper()
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca-"+cluster), cluster, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &etcdCerts{ca: ca, caFile: filepath.Join(ca.Dir, pki.CACertFile)}
}

func (c *etcdCerts) issue(t *testing.T, role pki.Role, id string) *pki.Issued {
	t.Helper()
	is, err := pki.Issue(c.ca, role, id, nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

// files returns the files a process of the CA's cluster presents as id.
func (c *etcdCerts) files(t *testing.T, id string) etcdauth.Files {
	t.Helper()
	is := c.issue(t, pki.RoleServer, id)
	return etcdauth.Files{CACert: c.caFile, Cert: is.CertFile, Key: is.KeyFile}
}

// TestEtcdTLSValidate checks the flags' validation: every mistake is a
// usage error (exit status 2) that names what is wrong, and with
// certificates default http URLs become https while given ones must be.
func TestEtcdTLSValidate(t *testing.T) {
	dev := newEtcdCerts(t, "dev")
	other := newEtcdCerts(t, "other")
	good := dev.files(t, "rm1")
	agent := dev.issue(t, pki.RoleAgent, "w1")
	otherServer := other.files(t, "rm1")
	missing := filepath.Join(t.TempDir(), "missing.pem")
	corrupt := filepath.Join(t.TempDir(), "corrupt.pem")
	if err := os.WriteFile(corrupt, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string // "" means valid
		wantURL string // --etcd-endpoints after validation
	}{
		{"none", nil, "", "http://127.0.0.1:2379"},
		{"all three", []string{"--etcd-cacert", good.CACert, "--etcd-cert", good.Cert, "--etcd-key", good.Key}, "", "https://127.0.0.1:2379"},
		{"given https endpoint", []string{"--etcd-cacert", good.CACert, "--etcd-cert", good.Cert, "--etcd-key", good.Key,
			"--etcd-endpoints", "https://10.0.0.1:2379,https://10.0.0.2:2379"}, "", "https://10.0.0.1:2379,https://10.0.0.2:2379"},
		{"CA alone", []string{"--etcd-cacert", good.CACert}, "--etcd-cert and --etcd-key missing", ""},
		{"no key", []string{"--etcd-cacert", good.CACert, "--etcd-cert", good.Cert}, "--etcd-key missing", ""},
		{"unreadable certificate", []string{"--etcd-cacert", good.CACert, "--etcd-cert", missing, "--etcd-key", good.Key}, "missing.pem", ""},
		{"unreadable CA", []string{"--etcd-cacert", missing, "--etcd-cert", good.Cert, "--etcd-key", good.Key}, "missing.pem", ""},
		{"corrupt CA", []string{"--etcd-cacert", corrupt, "--etcd-cert", good.Cert, "--etcd-key", good.Key}, "etcd TLS", ""},
		{"key of another certificate", []string{"--etcd-cacert", good.CACert, "--etcd-cert", good.Cert, "--etcd-key", otherServer.Key}, "private key does not match", ""},
		{"agent certificate", []string{"--etcd-cacert", good.CACert, "--etcd-cert", agent.CertFile, "--etcd-key", agent.KeyFile}, "use a server certificate", ""},
		{"another cluster's certificate", []string{"--etcd-cacert", good.CACert, "--etcd-cert", otherServer.Cert, "--etcd-key", otherServer.Key},
			`is a certificate of cluster "other", not of --cluster "dev"`, ""},
		{"given http endpoint", []string{"--etcd-cacert", good.CACert, "--etcd-cert", good.Cert, "--etcd-key", good.Key,
			"--etcd-endpoints", "https://10.0.0.1:2379,http://10.0.0.2:2379"}, `--etcd-endpoints "http://10.0.0.2:2379": with --etcd-cacert`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tl etcdTLS
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			tl.register(fs)
			endpoints := fs.String("etcd-endpoints", "http://127.0.0.1:2379", "")
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := tl.validate("dev", map[string]*string{"etcd-endpoints": endpoints})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want no error", err)
				}
				if *endpoints != tt.wantURL {
					t.Fatalf("got endpoints %q, want %q", *endpoints, tt.wantURL)
				}
				return
			}
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want a usage error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestEtcdTLSFlags runs the commands that take the flags, with mistakes
// in them and in the environment variables that give their defaults:
// each exits with status 2 and says what is wrong, before reaching etcd.
func TestEtcdTLSFlags(t *testing.T) {
	dev := newEtcdCerts(t, "dev")
	other := newEtcdCerts(t, "other")
	good := dev.files(t, "rm1")
	otherServer := other.files(t, "rm1")
	flags := func(f etcdauth.Files) []string {
		return []string{"--etcd-cacert", f.CACert, "--etcd-cert", f.Cert, "--etcd-key", f.Key}
	}
	tests := []struct {
		name    string
		env     etcdauth.Files
		args    []string
		wantErr string
	}{
		{"supervise status, one flag", etcdauth.Files{}, []string{"supervise", "status", "--cluster", "dev", "--etcd-cert", good.Cert},
			"--etcd-cacert and --etcd-key missing"},
		{"supervise status, another cluster", etcdauth.Files{}, append([]string{"supervise", "status", "--cluster", "dev"}, flags(otherServer)...),
			`cluster "other", not of --cluster "dev"`},
		{"supervise status, http endpoint", etcdauth.Files{}, append([]string{"supervise", "status", "--cluster", "dev", "--etcd-endpoints", "http://127.0.0.1:1"}, flags(good)...),
			"use an https:// URL"},
		{"supervise, another cluster from the environment", otherServer, []string{"supervise", "--cluster", "dev", "--node", "n1", "--listen", "127.0.0.1:0",
			"--service", "s", "--fencing", "self", "--cgroup-parent", "none", "--", "true"}, `cluster "other"`},
		{"lb, another cluster", etcdauth.Files{}, append([]string{"lb", "--cluster", "dev", "--http", "127.0.0.1:0", "--dir", t.TempDir()}, flags(otherServer)...),
			`cluster "other", not of --cluster "dev"`},
		{"lb, key missing from the environment", etcdauth.Files{CACert: good.CACert, Cert: good.Cert}, []string{"lb", "--cluster", "dev", "--http", "127.0.0.1:0", "--dir", t.TempDir()},
			"--etcd-key missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TANDEM_ETCD_CACERT", tt.env.CACert)
			t.Setenv("TANDEM_ETCD_CERT", tt.env.Cert)
			t.Setenv("TANDEM_ETCD_KEY", tt.env.Key)
			_, errOut, code := runCLI(t, tt.args...)
			if code != 2 || !strings.Contains(errOut, tt.wantErr) {
				t.Fatalf("got exit %d, stderr %q; want exit 2 and %q", code, errOut, tt.wantErr)
			}
		})
	}
}

// startTLSMembers starts n locked-down embedded etcd members of cluster
// at once, as n servers with --embed-etcd do, and returns each member's
// client of its own member, made with that server's certificate.
func startTLSMembers(t *testing.T, c *etcdCerts, n int) []*clientv3.Client {
	t.Helper()
	cfgs := make([]embedetcd.Config, n)
	files := make([]etcdauth.Files, n)
	var initial []string
	for i := range cfgs {
		name := "rm" + string(rune('1'+i))
		files[i] = c.files(t, name)
		cfgs[i] = embedetcd.Config{
			Name: name, Dir: t.TempDir(),
			ClientURL: "https://" + etcdtest.FreeAddr(t), PeerURL: "https://" + etcdtest.FreeAddr(t),
			ClusterToken: "etcdtls-test", StartTimeout: 30 * time.Second, LogLevel: "fatal",
			HeartbeatMs: 50, ElectionMs: 500, UnsafeNoFsync: true,
			CACert: files[i].CACert, Cert: files[i].Cert, Key: files[i].Key,
		}
		initial = append(initial, name+"="+cfgs[i].PeerURL)
	}
	members := make([]*embedetcd.Member, n)
	errs := make(chan error, n)
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(initial, ",")
		go func() {
			m, err := embedetcd.Start(cfgs[i])
			members[i] = m
			errs <- err
		}()
	}
	var startErr error
	for range n {
		if err := <-errs; err != nil && startErr == nil {
			startErr = err
		}
	}
	for _, m := range members {
		if m != nil {
			t.Cleanup(m.Close)
		}
	}
	if startErr != nil {
		t.Fatal(startErr)
	}
	clis := make([]*clientv3.Client, n)
	for i, m := range members {
		cli, err := etcdauth.NewClient([]string{m.ClientURL()}, files[i])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		clis[i] = cli
	}
	return clis
}

// syncBuffer is a log destination several goroutines write to.
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

// TestLockDownEtcdEmbedded starts three locked-down members at once and
// runs each server's start-up step concurrently, as three servers with
// --embed-etcd do: none of them is root, authentication goes on, and none
// fails. A server started later (authentication already on) passes
// too. Afterwards the cluster's user is confined to its prefix.
func TestLockDownEtcdEmbedded(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd takes seconds to start and stop")
	}
	c := newEtcdCerts(t, "dev")
	clis := startTLSMembers(t, c, 3)
	// lockDownEtcd only asks whether certificates were given: the clients
	// hold each server's own.
	on := &etcdTLS{files: c.files(t, "rm9")}
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	errs := make(chan error, len(clis))
	for _, cli := range clis {
		go func() { errs <- lockDownEtcd(ctx, on, cli, "dev", true, log) }()
	}
	for range clis {
		if err := <-errs; err != nil {
			t.Fatalf("a server's etcd setup failed: %v\nlogs:\n%s", err, logs.String())
		}
	}
	// Two enables racing may both be accepted by etcd (the second is a
	// no-op); what matters is that one happened and no server failed.
	if !strings.Contains(logs.String(), "change=\"turned authentication on\"") {
		t.Fatalf("no server turned authentication on; logs:\n%s", logs.String())
	}
	for i, cli := range clis {
		if err := etcdauth.Verify(ctx, cli, "dev"); err != nil {
			t.Fatalf("member %d: %v", i+1, err)
		}
	}
	// A server that starts once authentication is on only checks.
	rev := authRevision(t, ctx, clis[0])
	if err := lockDownEtcd(ctx, on, clis[1], "dev", true, log); err != nil {
		t.Fatalf("a later server: got %v, want no error", err)
	}
	if got := authRevision(t, ctx, clis[0]); got != rev {
		t.Fatalf("auth revision moved from %d to %d: a later server's start changed etcd's auth", rev, got)
	}
	// The cluster's user reaches its own keys and nothing else.
	if _, err := clis[2].Put(ctx, "/tandem/dev/k", "v"); err != nil {
		t.Fatalf("put under the cluster's prefix: %v", err)
	}
	if _, err := clis[2].Get(ctx, "/tandem/other/k"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("get under another cluster's prefix: got %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
}

func authRevision(t *testing.T, ctx context.Context, cli *clientv3.Client) uint64 {
	t.Helper()
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.AuthRevision
}

// TestLockDownEtcdExternal: with an external etcd a server never sets
// etcd's authentication up itself; it checks, and warns when the etcd is
// not locked down for its cluster, and starts all the same. Without
// certificates it does nothing at all.
func TestLockDownEtcdExternal(t *testing.T) {
	c := newEtcdCerts(t, "dev")
	srv := c.issue(t, pki.RoleServer, "e1")
	e := etcdtest.StartTLS(t, etcdtest.TLS{CACert: c.caFile, Cert: srv.CertFile, Key: srv.KeyFile})
	files := c.files(t, "rm1")
	cli, err := etcdauth.NewClient([]string{e.Endpoint}, files)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	if err := lockDownEtcd(ctx, &etcdTLS{}, cli, "dev", false, log); err != nil || logs.String() != "" {
		t.Fatalf("without certificates: got %v, logs %q; want nothing", err, logs.String())
	}
	on := &etcdTLS{files: files}
	if err := lockDownEtcd(ctx, on, cli, "dev", false, log); err != nil {
		t.Fatalf("not set up: got %v, want a warning only", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "tandem etcd auth setup") {
		t.Fatalf("not set up: logs %q, want a warning naming tandem etcd auth setup", logs.String())
	}
	st, err := cli.AuthStatus(ctx)
	if err != nil || st.Enabled {
		t.Fatalf("auth status %+v, %v: a server turned an external etcd's authentication on", st, err)
	}
	// Set up (as its operator would), it is only checked.
	if _, err := etcdauth.Setup(ctx, cli, "dev", etcdauth.Options{}); err != nil {
		t.Fatal(err)
	}
	var after syncBuffer
	if err := lockDownEtcd(ctx, on, cli, "dev", false, slog.New(slog.NewTextHandler(&after, nil))); err != nil || strings.Contains(after.String(), "level=WARN") {
		t.Fatalf("set up: got %v, logs %q; want no error and no warning", err, after.String())
	}
}
