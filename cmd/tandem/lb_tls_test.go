package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/pki"
)

// TestLBTLSFlags: every mistake in tandem lb's TLS flags or files is a
// usage error (exit status 2) naming what is wrong, found before etcd is
// asked or a proxy started.
func TestLBTLSFlags(t *testing.T) {
	dev := newEtcdCerts(t, "dev")
	other := newEtcdCerts(t, "other")
	stranger := newEtcdCerts(t, "dev") // another CA of a cluster named dev
	server := dev.issue(t, pki.RoleServer, "lb")
	cli := dev.issue(t, pki.RoleCLI, "alice")
	agent := dev.issue(t, pki.RoleAgent, "w1")
	strangers := stranger.issue(t, pki.RoleServer, "lb")
	expired, err := pki.Issue(dev.ca, pki.RoleServer, "old", nil, nil, time.Hour, pki.WithNotBefore(time.Now().Add(-48*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"client certificate without key", []string{"--backend-ca", dev.caFile, "--backend-cert", server.CertFile}, "--backend-cert and --backend-key go together"},
		{"client certificate without CA", []string{"--backend-cert", server.CertFile, "--backend-key", server.KeyFile}, "--backend-cert needs --backend-ca"},
		{"--backend-tls without CA", []string{"--backend-tls"}, "--backend-tls needs --backend-ca"},
		{"server name without CA", []string{"--backend-server-name", "x"}, "--backend-server-name needs --backend-ca"},
		{"bad server name", []string{"--backend-ca", dev.caFile, "--backend-server-name", "a b"}, "--backend-server-name"},
		{"CA file missing", []string{"--backend-ca", missing}, "missing.pem"},
		{"CA file not PEM", []string{"--backend-ca", garbage}, "garbage.pem"},
		{"CA file is a leaf", []string{"--backend-ca", server.CertFile}, "not a CA"},
		{"CA of another cluster", []string{"--backend-ca", other.caFile}, `CA of cluster "other", not of --cluster "dev"`},
		{"client certificate of another CA", []string{"--backend-ca", dev.caFile, "--backend-cert", strangers.CertFile, "--backend-key", strangers.KeyFile}, "--backend-cert"},
		{"client certificate and another key", []string{"--backend-ca", dev.caFile, "--backend-cert", server.CertFile, "--backend-key", cli.KeyFile}, "--backend-cert"},
		{"agent client certificate", []string{"--backend-ca", dev.caFile, "--backend-cert", agent.CertFile, "--backend-key", agent.KeyFile}, "server or cli certificate"},
		{"certificate without key", []string{"--tls-cert", server.CertFile}, "--tls-cert and --tls-key go together"},
		{"certificate without listener", []string{"--listen", "", "--service", "web=127.0.0.1:1,port=2", "--tls-cert", server.CertFile, "--tls-key", server.KeyFile}, "--listen, which is empty"},
		{"certificate missing", []string{"--tls-cert", missing, "--tls-key", server.KeyFile}, "missing.pem"},
		{"certificate and another key", []string{"--tls-cert", server.CertFile, "--tls-key", cli.KeyFile}, "--tls-cert"},
		{"certificate expired", []string{"--tls-cert", expired.CertFile, "--tls-key", expired.KeyFile}, "not now"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lbDir := filepath.Join(t.TempDir(), "lb")
			args := append([]string{"lb", "--cluster", "dev", "--http", "127.0.0.1:0", "--dir", lbDir,
				"--etcd-endpoints", "http://127.0.0.1:1"}, tt.args...)
			_, errOut, code := runCLI(t, args...)
			if code != 2 || !strings.Contains(errOut, tt.wantErr) {
				t.Fatalf("got exit %d, stderr %q; want exit 2 and %q", code, errOut, tt.wantErr)
			}
			if _, err := os.Stat(lbDir); err == nil {
				t.Errorf("%s was made: something started", lbDir)
			}
		})
	}
	// The good ones pass the same checks: a cli certificate will do, and
	// the files are made absolute for the proxy.
	f := &lbFlags{proxy: "nginx", cluster: "dev", listen: ":1", backendCA: dev.caFile, backendCert: cli.CertFile, backendKey: cli.KeyFile,
		tlsCert: server.CertFile, tlsKey: server.KeyFile}
	got, err := f.loadTLS()
	if err != nil {
		t.Fatalf("good files: %v", err)
	}
	if got.ServerName != "" || !filepath.IsAbs(got.BackendCA) || got.Cert != server.CertFile {
		t.Errorf("NGINX: got %+v, want no server name (the driver's default) and absolute paths", got)
	}
	f.proxy = "haproxy"
	if got, _ := f.loadTLS(); got.ServerName != "tandem-dev" {
		t.Errorf("HAProxy: server name %q, want tandem-dev (the common name of the cluster's server certificates)", got.ServerName)
	}
}

// TestLBTLSServersNeedCA: servers that advertise https:// URLs and no
// --backend-ca is a usage error found once etcd is read, before the proxy
// starts.
func TestLBTLSServersNeedCA(t *testing.T) {
	if _, err := exec.LookPath("haproxy"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("haproxy not found and CI is set: %v", err)
		}
		t.Skipf("needs haproxy: %v", err)
	}
	e := etcdtest.Start(t)
	cli := e.Client(t)
	b, _ := json.Marshal(tandem.ServerInfo{ID: "rm1", URL: "https://127.0.0.1:7443"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, keys.New("dev").Server("rm1"), string(b)); err != nil {
		t.Fatal(err)
	}
	lbDir := t.TempDir()
	_, errOut, code := runCLI(t, "lb", "--cluster", "dev", "--http", "127.0.0.1:0", "--dir", lbDir,
		"--etcd-endpoints", e.Endpoint, "--listen", "127.0.0.1:1")
	if want := "servers rm1 advertise https:// URLs: give --backend-ca"; code != 2 || !strings.Contains(errOut, want) {
		t.Fatalf("got exit %d, stderr %q; want exit 2 and %q", code, errOut, want)
	}
	if _, err := os.Stat(filepath.Join(lbDir, "haproxy.cfg")); err == nil {
		t.Errorf("haproxy.cfg written: the proxy was started")
	}
}
