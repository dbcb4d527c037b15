package pki

import (
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	ca, err := CreateCA(dir, "dev", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("got IsCA %v, max path %d, usage %v; want a CA signing leaves only", c.IsCA, c.MaxPathLen, c.KeyUsage)
	}
	if got, err := CACluster(c); got != "dev" || err != nil {
		t.Errorf("CACluster: got %q, %v; want dev", got, err)
	}
	if d := time.Until(c.NotAfter); d < 47*time.Hour || d > 48*time.Hour {
		t.Errorf("got NotAfter in %v, want 48h", d)
	}
	if c.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("got key %v, want ECDSA", c.PublicKeyAlgorithm)
	}
	for file, want := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got&^want != 0 {
			t.Errorf("%s: got mode %v, want at most %v", file, got, want)
		}
	}

	// A second CA in the same place would orphan every certificate.
	before, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if _, err := CreateCA(dir, "dev", time.Hour); !errors.Is(err, ErrExists) {
		t.Errorf("second CA: got %v, want ErrExists", err)
	}
	// Half a CA (the key alone) is refused too, and left alone.
	os.Remove(filepath.Join(dir, CACertFile))
	if _, err := CreateCA(dir, "dev", time.Hour); !errors.Is(err, ErrExists) {
		t.Errorf("key left: got %v, want ErrExists", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, CAKeyFile)); string(after) != string(before) {
		t.Error("the CA key was overwritten")
	}

	for _, bad := range []struct {
		cluster string
		days    time.Duration
	}{{"", time.Hour}, {"a/b", time.Hour}, {"dev", 0}, {"dev", -time.Hour}} {
		if _, err := CreateCA(t.TempDir(), bad.cluster, bad.days); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateCA(%q, %v): got %v, want ErrInvalid", bad.cluster, bad.days, err)
		}
	}
}

func TestLoadCA(t *testing.T) {
	ca := newCA(t, "dev")
	got, err := LoadCA(ca.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Cluster != "dev" || !got.Cert.Equal(ca.Cert) {
		t.Errorf("got cluster %q, want dev and the same certificate", got.Cluster)
	}
	// It can issue.
	if _, err := Issue(got, RoleServer, "rm1", nil, nil, time.Hour); err != nil {
		t.Fatal(err)
	}

	other := newCA(t, "dev")
	mixed := t.TempDir()
	copyFile(t, caFile(ca), filepath.Join(mixed, CACertFile))
	copyFile(t, filepath.Join(other.Dir, CAKeyFile), filepath.Join(mixed, CAKeyFile))
	if _, err := LoadCA(mixed); err == nil {
		t.Error("another CA's key: got no error")
	}
	if _, err := LoadCA(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("empty directory: got %v, want not exist", err)
	}
	corrupt := t.TempDir()
	copyFile(t, filepath.Join(ca.Dir, CAKeyFile), filepath.Join(corrupt, CAKeyFile))
	os.WriteFile(filepath.Join(corrupt, CACertFile), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644)
	if _, err := LoadCA(corrupt); err == nil {
		t.Error("corrupt certificate: got no error")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestIssue(t *testing.T) {
	ca := newCA(t, "dev")
	ip := net.ParseIP("10.0.0.7")
	srv, err := Issue(ca, RoleServer, "rm1", []string{"rm1.example.com", "LOCALHOST"}, []net.IP{ip, net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(ca.Dir, "server-rm1.pem"); srv.CertFile != want || srv.KeyFile != filepath.Join(ca.Dir, "server-rm1-key.pem") {
		t.Errorf("got files %s %s, want %s and its -key", srv.CertFile, srv.KeyFile, want)
	}
	c := srv.Cert
	if want := []string{"localhost", "rm1.example.com"}; !slices.Equal(c.DNSNames, want) {
		t.Errorf("got DNS names %v, want %v", c.DNSNames, want)
	}
	var ips []string
	for _, a := range c.IPAddresses {
		ips = append(ips, a.String())
	}
	if want := []string{"127.0.0.1", "::1", "10.0.0.7"}; !slices.Equal(ips, want) {
		t.Errorf("got IPs %v, want %v", ips, want)
	}
	if want := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; !slices.Equal(c.ExtKeyUsage, want) {
		t.Errorf("got usages %v, want %v", c.ExtKeyUsage, want)
	}
	if id, err := FromCert(c); err != nil || id != (Identity{"dev", RoleServer, "rm1"}) || srv.Identity != id {
		t.Errorf("got %+v, %v; want dev's server rm1", id, err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: "rm1.example.com"}); err != nil {
		t.Errorf("verify for rm1.example.com: %v", err)
	}
	if fi, err := os.Stat(srv.KeyFile); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("key file: got %v, %v; want mode 0600", fi.Mode(), err)
	}

	cli, err := Issue(ca, RoleCLI, "alice", nil, nil, time.Hour, WithOutput(t.TempDir(), "me"))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(cli.CertFile) != "me.pem" || filepath.Base(cli.KeyFile) != "me-key.pem" {
		t.Errorf("got %s %s, want me.pem me-key.pem", cli.CertFile, cli.KeyFile)
	}
	if c := cli.Cert; !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || len(c.DNSNames)+len(c.IPAddresses) != 0 {
		t.Errorf("cli certificate: got usages %v, names %v %v; want client only, no names", c.ExtKeyUsage, c.DNSNames, c.IPAddresses)
	}

	agent := issue(t, ca, RoleAgent, "w1")
	if !slices.Equal(agent.Cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) || !slices.Contains(agent.Cert.DNSNames, "localhost") {
		t.Errorf("agent certificate: got usages %v, names %v; want server and client, localhost", agent.Cert.ExtKeyUsage, agent.Cert.DNSNames)
	}

	past := time.Now().Add(-3 * time.Hour)
	old := issue(t, ca, RoleAgent, "old", WithNotBefore(past))
	if !old.Cert.NotBefore.Equal(past.Truncate(time.Second)) || !old.Cert.NotAfter.Equal(past.Add(time.Hour).Truncate(time.Second)) {
		t.Errorf("got validity %v to %v, want from %v for 1h", old.Cert.NotBefore, old.Cert.NotAfter, past)
	}

	long, err := Issue(ca, RoleServer, "long", nil, nil, 25*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !long.Cert.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("a certificate outliving its CA: got NotAfter %v, want the CA's %v", long.Cert.NotAfter, ca.Cert.NotAfter)
	}

	if _, err := Issue(ca, RoleServer, "rm1", nil, nil, time.Hour); !errors.Is(err, ErrExists) {
		t.Errorf("again: got %v, want ErrExists", err)
	}
	bad := []struct {
		name     string
		role     Role
		id       string
		dns      []string
		ips      []net.IP
		validity time.Duration
		opts     []IssueOption
	}{
		{"unknown role", "admin", "x", nil, nil, time.Hour, nil},
		{"empty ID", RoleServer, "", nil, nil, time.Hour, nil},
		{"slash in ID", RoleAgent, "w1/w2", nil, nil, time.Hour, nil},
		{"zero validity", RoleServer, "rm2", nil, nil, 0, nil},
		{"after the CA expired", RoleServer, "rm2", nil, nil, time.Hour, []IssueOption{WithNotBefore(ca.Cert.NotAfter.Add(time.Minute))}},
		{"bad DNS name", RoleServer, "rm2", []string{"a b"}, nil, time.Hour, nil},
		{"DNS name with a port", RoleServer, "rm2", []string{"rm2:7070"}, nil, time.Hour, nil},
		{"bad IP", RoleServer, "rm2", nil, []net.IP{{1, 2, 3}}, time.Hour, nil},
		{"cli with a host name", RoleCLI, "bob", []string{"bob.example.com"}, nil, time.Hour, nil},
		{"cli with an IP", RoleCLI, "bob", nil, []net.IP{ip}, time.Hour, nil},
		{"path in the name", RoleServer, "rm2", nil, nil, time.Hour, []IssueOption{WithOutput(t.TempDir(), "../x")}},
	}
	for _, tt := range bad {
		if _, err := Issue(ca, tt.role, tt.id, tt.dns, tt.ips, tt.validity, tt.opts...); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", tt.name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(ca.Dir, "server-rm2.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused request left a file: %v", err)
	}
}

func TestIssueFromExpiredCA(t *testing.T) {
	// Certificate times have whole seconds, so this CA has expired by the
	// time Issue looks at it.
	ca, err := CreateCA(t.TempDir(), "dev", time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Issue(ca, RoleServer, "rm1", nil, nil, time.Hour)
	if err == nil || errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "the CA expired") {
		t.Errorf("got %v, want the CA expired (not a bad request)", err)
	}
}

func TestReadCerts(t *testing.T) {
	ca := newCA(t, "dev")
	other := newCA(t, "dev")
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	one, _ := os.ReadFile(caFile(ca))
	two, _ := os.ReadFile(caFile(other))
	key, _ := os.ReadFile(filepath.Join(ca.Dir, CAKeyFile))
	if certs, err := ReadCerts(write("bundle.pem", string(one)+"\n"+string(two))); err != nil || len(certs) != 2 {
		t.Errorf("bundle: got %d certificates, %v; want 2", len(certs), err)
	}
	for name, content := range map[string]string{
		"empty":     "",
		"garbage":   "hello",
		"truncated": string(one[:len(one)/2]),
		"trailing":  string(one) + "junk",
		"key":       string(key),
		"with key":  string(one) + string(key),
	} {
		if _, err := ReadCerts(write("f.pem", content)); err == nil {
			t.Errorf("%s: got no error", name)
		}
	}
}
