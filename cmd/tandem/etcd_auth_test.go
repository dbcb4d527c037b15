package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/pki"
)

// TestEtcdAuthSetup runs tandem etcd auth setup against a real etcd that
// requires client certificates: the first run turns authentication on,
// the second changes nothing, --check tells a set-up cluster from another,
// and once authentication is on a non-root certificate cannot set up
// another cluster.
func TestEtcdAuthSetup(t *testing.T) {
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca"), "dev", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pki.Issue(ca, pki.RoleServer, "rm1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(ca.Dir, pki.CACertFile)
	e := etcdtest.StartTLS(t, etcdtest.TLS{CACert: caFile, Cert: srv.CertFile, Key: srv.KeyFile})
	args := func(cluster string, more ...string) []string {
		return append([]string{"etcd", "auth", "setup", "--etcd-endpoints", e.Endpoint, "--cluster", cluster,
			"--cacert", caFile, "--cert", srv.CertFile, "--key", srv.KeyFile}, more...)
	}

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"first run", args("dev"), 0, "turned authentication on"},
		{"second run", args("dev"), 0, "nothing changed"},
		{"check", args("dev", "--check"), 0, "is set up for cluster dev"},
		{"check another cluster", args("prod", "--check"), 1, ""},
		{"another cluster, not as root", args("prod"), 1, ""},
		{"password without user", args("dev", "--password", "x"), 2, ""},
		{"TLS files to an http endpoint", []string{"etcd", "auth", "setup", "--etcd-endpoints", "http://127.0.0.1:1", "--cacert", caFile, "--cert", srv.CertFile, "--key", srv.KeyFile}, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(out, tt.wantOut) {
				t.Fatalf("got exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, errOut, tt.wantCode, tt.wantOut)
			}
			if code == 1 && !strings.Contains(errOut, "etcd is not set up") {
				t.Fatalf("got stderr %q, want it to say the cluster is not set up", errOut)
			}
		})
	}
}

// TestEtcdAuthSetupRootPassword: root set up with a password on the first
// run adds a second cluster to the same etcd later.
func TestEtcdAuthSetupRootPassword(t *testing.T) {
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca"), "dev", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pki.Issue(ca, pki.RoleServer, "rm1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(ca.Dir, pki.CACertFile)
	e := etcdtest.StartTLS(t, etcdtest.TLS{CACert: caFile, Cert: srv.CertFile, Key: srv.KeyFile})
	t.Setenv("TANDEM_ETCD_PASSWORD", "s3cret")
	for _, cluster := range []string{"dev", "prod", "prod"} {
		out, errOut, code := runCLI(t, "etcd", "auth", "setup", "--etcd-endpoints", e.Endpoint, "--cluster", cluster,
			"--cacert", caFile, "--cert", srv.CertFile, "--key", srv.KeyFile, "--user", "root")
		if code != 0 || !strings.Contains(out, "cluster "+cluster) {
			t.Fatalf("setup %s: got exit %d, stdout %q, stderr %q; want success", cluster, code, out, errOut)
		}
	}
}

// TestEtcdMemberTLSFlags: a standalone member given certificates wants
// https URLs, and all three files.
func TestEtcdMemberTLSFlags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"http URLs", []string{"--cacert", "ca.pem", "--cert", "c.pem", "--key", "k.pem"}, "use an https:// URL"},
		{"no key", []string{"--cacert", "ca.pem", "--cert", "c.pem", "--client-url", "https://127.0.0.1:1", "--peer-url", "https://127.0.0.1:2"}, "give a CA, a certificate and its key together"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := runCLI(t, append([]string{"etcd", "--name", "e1", "--data-dir", dir}, tt.args...)...)
			if code != 2 || !strings.Contains(errOut, tt.want) {
				t.Fatalf("got exit %d, stderr %q; want exit 2 and %q", code, errOut, tt.want)
			}
		})
	}
}
