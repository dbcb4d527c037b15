package main

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/pki"
)

// tlsCLI runs a tls command that must succeed and returns its output.
func tlsCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runCLI(t, args...)
	if code != 0 {
		t.Fatalf("tandem %s: exit %d, stderr %q; want success", strings.Join(args, " "), code, errOut)
	}
	return out
}

// certInfoJSON runs tls cert info -o json and decodes its answer.
func certInfoJSON(t *testing.T, args ...string) (certFileInfo, int) {
	t.Helper()
	out, errOut, code := runCLI(t, append([]string{"tls", "cert", "info", "-o", "json"}, args...)...)
	var info certFileInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("got %q (stderr %q), want JSON: %v", out, errOut, err)
	}
	return info, code
}

func TestTLSCreateAndInfo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	out := tlsCLI(t, "tls", "ca", "create", "--dir", dir, "--cluster", "dev", "--days", "30")
	if !strings.Contains(out, "CA of cluster dev") || !strings.Contains(out, filepath.Join(dir, "ca-key.pem")) {
		t.Errorf("ca create: got %q, want the cluster and the files", out)
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca-key.pem")); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("ca-key.pem: got %v, %v; want mode 0600", fi, err)
	}
	caFile := filepath.Join(dir, "ca.pem")

	out = tlsCLI(t, "tls", "cert", "create", "--server", "--id", "rm1", "--dns", "rm1.example.com,rm1", "--ip", "10.0.0.7,fd00::7", "--dir", dir, "--days", "7")
	if !strings.Contains(out, "spiffe://tandem/dev/server/rm1") || !strings.Contains(out, filepath.Join(dir, "server-rm1-key.pem")) {
		t.Errorf("cert create: got %q, want the identity and the files", out)
	}
	// 365 days by default, cut to the CA's 30, with a note.
	out, errOut, code := runCLI(t, "tls", "cert", "create", "--agent", "--id", "w1", "--dir", dir)
	if code != 0 || !strings.Contains(out, "spiffe://tandem/dev/agent/w1") || !strings.Contains(errOut, "note: --days 365 would outlive the CA") {
		t.Errorf("agent cert create: got exit %d, stdout %q, stderr %q; want success and a note", code, out, errOut)
	}
	tlsCLI(t, "tls", "cert", "create", "--cli", "--id", "alice", "--dir", dir, "--out", "alice", "--days", "30")

	info, code := certInfoJSON(t, filepath.Join(dir, "server-rm1.pem"), "--ca", caFile)
	if _, errOut, _ := runCLI(t, "tls", "cert", "info", filepath.Join(dir, "server-rm1.pem")); errOut != "" {
		t.Errorf("info: got stderr %q, want nothing", errOut)
	}
	if code != 0 || len(info.Certificates) != 1 {
		t.Fatalf("info: exit %d, %d certificates; want 0, 1", code, len(info.Certificates))
	}
	c := info.Certificates[0]
	if c.Cluster != "dev" || c.Role != "server" || c.ID != "rm1" || c.Identity != "spiffe://tandem/dev/server/rm1" {
		t.Errorf("got identity %q (%s %s %s), want dev's server rm1", c.Identity, c.Cluster, c.Role, c.ID)
	}
	if got, want := strings.Join(c.DNSNames, ","), "localhost,rm1.example.com,rm1"; got != want {
		t.Errorf("got DNS names %s, want %s", got, want)
	}
	if got, want := strings.Join(c.IPAddresses, ","), "127.0.0.1,::1,10.0.0.7,fd00::7"; got != want {
		t.Errorf("got IPs %s, want %s", got, want)
	}
	if got, want := strings.Join(c.Usages, ","), "server auth,client auth"; got != want {
		t.Errorf("got usages %s, want %s", got, want)
	}
	if d := time.Until(c.NotAfter); c.Status != "valid" || d < 6*24*time.Hour || d > 7*24*time.Hour {
		t.Errorf("got status %s, expiry in %v; want valid, 7 days", c.Status, d)
	}
	if c.Verified == nil || !*c.Verified {
		t.Errorf("got verified %v (%s), want true", c.Verified, c.VerifyError)
	}

	info, _ = certInfoJSON(t, filepath.Join(dir, "alice.pem"))
	if c := info.Certificates[0]; c.Role != "cli" || c.ID != "alice" || strings.Join(c.Usages, ",") != "client auth" || len(c.DNSNames)+len(c.IPAddresses) != 0 || c.Verified != nil {
		t.Errorf("cli certificate: got %+v, want role cli, client auth only, no names, not verified", c)
	}
	info, _ = certInfoJSON(t, caFile)
	if c := info.Certificates[0]; !c.CA || c.Role != "ca" || c.Cluster != "dev" {
		t.Errorf("CA: got %+v, want the CA of dev", c)
	}

	out = tlsCLI(t, "tls", "cert", "info", filepath.Join(dir, "agent-w1.pem"), "--ca", caFile)
	for _, want := range []string{"role:", "agent", "id:", "w1", "cluster:", "dev", "spiffe://tandem/dev/agent/w1",
		"dns names:", "localhost", "not after:", "status:", "valid, expires in 29 days", "verified:", "yes, against " + caFile} {
		if !strings.Contains(out, want) {
			t.Errorf("info: got\n%s\nwant it to contain %q", out, want)
		}
	}

	// The files are usable as made: mutual TLS between the server and the
	// CLI user over a real socket, each seeing the other's identity.
	checkMutualTLS(t, dir)
}

func checkMutualTLS(t *testing.T, dir string) {
	t.Helper()
	ca := filepath.Join(dir, "ca.pem")
	srvStore, err := pki.NewStore(filepath.Join(dir, "server-rm1.pem"), filepath.Join(dir, "server-rm1-key.pem"), ca, nil)
	if err != nil {
		t.Fatal(err)
	}
	cliStore, err := pki.NewStore(filepath.Join(dir, "alice.pem"), filepath.Join(dir, "alice-key.pem"), ca, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pki.ServerConfig(srvStore, pki.ServerOptions{RequireClientCert: true})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{TLSConfig: cfg, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := pki.FromRequest(r, "dev")
		if err != nil || id == nil {
			http.Error(w, "no identity", http.StatusForbidden)
			return
		}
		io.WriteString(w, id.String())
	})}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: %v", err)
		}
	}()
	tr := &http.Transport{TLSClientConfig: pki.ClientConfig(cliStore, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer}})}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "spiffe://tandem/dev/cli/alice" {
		t.Errorf("got %d %q, want 200 spiffe://tandem/dev/cli/alice", resp.StatusCode, body)
	}
	if id, err := cliStore.VerifyPeer(resp.TLS); err != nil || id.String() != "spiffe://tandem/dev/server/rm1" {
		t.Errorf("client sees %v, %v; want the server rm1", id, err)
	}
}

// TestTLSInfoRefusesBadCertificates checks that info tells an expired, a
// not-yet-valid and another CA's certificate, and that --ca fails on them.
func TestTLSInfoRefusesBadCertificates(t *testing.T) {
	dir := t.TempDir()
	tlsCLI(t, "tls", "ca", "create", "--dir", dir, "--cluster", "dev")
	otherDir := t.TempDir()
	tlsCLI(t, "tls", "ca", "create", "--dir", otherDir, "--cluster", "dev")
	tlsCLI(t, "tls", "cert", "create", "--agent", "--id", "w1", "--dir", otherDir)
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	old, err := pki.Issue(ca, pki.RoleAgent, "old", nil, nil, time.Hour, pki.WithNotBefore(time.Now().Add(-50*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	soon, err := pki.Issue(ca, pki.RoleAgent, "soon", nil, nil, time.Hour, pki.WithNotBefore(time.Now().Add(3*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")

	tests := []struct {
		name, file, status, human, verifyErr string
	}{
		{"expired", old.CertFile, "expired", "EXPIRED 2 days ago", "expired"},
		{"not yet valid", soon.CertFile, "not yet valid", "NOT YET VALID: starts in 2 hours", "not yet valid"},
		{"another CA", filepath.Join(otherDir, "agent-w1.pem"), "valid", "valid, expires in 364 days", "unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Without --ca, info only informs.
			out := tlsCLI(t, "tls", "cert", "info", tt.file)
			if !strings.Contains(out, tt.human) {
				t.Errorf("got\n%s\nwant it to contain %q", out, tt.human)
			}
			info, code := certInfoJSON(t, tt.file, "--ca", caFile)
			c := info.Certificates[0]
			if code != 1 {
				t.Errorf("with --ca: got exit %d, want 1", code)
			}
			if c.Status != tt.status || c.Verified == nil || *c.Verified || !strings.Contains(c.VerifyError, tt.verifyErr) {
				t.Errorf("got status %q, verified %v, error %q; want %q, false, %q", c.Status, c.Verified, c.VerifyError, tt.status, tt.verifyErr)
			}
			out, errOut, code := runCLI(t, "tls", "cert", "info", tt.file, "--ca", caFile)
			if code != 1 || !strings.Contains(out, "verified:") || !strings.Contains(out, "NO, against") || !strings.Contains(errOut, "do not verify against") {
				t.Errorf("got exit %d, stdout\n%s\nstderr %q; want 1 and NO", code, out, errOut)
			}
		})
	}
}

func TestTLSBadInput(t *testing.T) {
	dir := t.TempDir()
	tlsCLI(t, "tls", "ca", "create", "--dir", dir, "--cluster", "dev", "--days", "365")
	tlsCLI(t, "tls", "cert", "create", "--server", "--id", "rm1", "--dir", dir, "--days", "30")
	caKey, _ := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	os.WriteFile(garbage, []byte("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"), 0o644)
	empty := t.TempDir()

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"CA already there", []string{"tls", "ca", "create", "--dir", dir, "--cluster", "dev"}, 1, "refusing to overwrite"},
		{"zero days", []string{"tls", "ca", "create", "--dir", empty, "--days", "0"}, 2, "--days 0: must be from 1 to 36500"},
		{"negative days", []string{"tls", "ca", "create", "--dir", empty, "--days", "-3"}, 2, "--days -3"},
		{"days not a number", []string{"tls", "ca", "create", "--dir", empty, "--days", "ten"}, 2, `invalid argument "ten"`},
		{"too many days", []string{"tls", "cert", "create", "--server", "--id", "rm2", "--dir", dir, "--days", "99999"}, 2, "--days 99999"},
		{"bad cluster", []string{"tls", "ca", "create", "--dir", empty, "--cluster", "a/b"}, 2, `invalid cluster name "a/b"`},
		{"no role", []string{"tls", "cert", "create", "--id", "x", "--dir", dir}, 2, "give one of --server, --agent or --cli"},
		{"two roles", []string{"tls", "cert", "create", "--server", "--cli", "--id", "x", "--dir", dir}, 2, "give only one of --server, --agent or --cli"},
		{"three roles", []string{"tls", "cert", "create", "--server", "--agent", "--cli", "--id", "x", "--dir", dir}, 2, "give only one"},
		{"no ID", []string{"tls", "cert", "create", "--agent", "--dir", dir}, 2, "--id is required"},
		{"bad ID", []string{"tls", "cert", "create", "--agent", "--id", "w1/../w2", "--dir", dir}, 2, `invalid agent name "w1/../w2"`},
		{"bad IP", []string{"tls", "cert", "create", "--server", "--id", "rm2", "--ip", "10.0.0.300", "--dir", dir}, 2, `--ip "10.0.0.300" is not an IP address`},
		{"bad DNS name", []string{"tls", "cert", "create", "--server", "--id", "rm2", "--dns", "rm 2", "--dir", dir}, 2, `"rm 2" is not a DNS name`},
		{"host names for cli", []string{"tls", "cert", "create", "--cli", "--id", "bob", "--dns", "bob.example.com", "--dir", dir}, 2, "--dns and --ip are for --server and --agent"},
		{"bad output name", []string{"tls", "cert", "create", "--agent", "--id", "w2", "--out", "../w2", "--dir", dir}, 2, `output name "../w2"`},
		{"certificate already there", []string{"tls", "cert", "create", "--server", "--id", "rm1", "--dir", dir, "--days", "30"}, 1, "refusing to overwrite"},
		{"no CA", []string{"tls", "cert", "create", "--agent", "--id", "w2", "--dir", empty}, 1, "tandem tls ca create --dir " + empty},
		{"info without a file", []string{"tls", "cert", "info"}, 2, "accepts 1 arg"},
		{"info of two files", []string{"tls", "cert", "info", "a", "b"}, 2, "accepts 1 arg"},
		{"info of a missing file", []string{"tls", "cert", "info", filepath.Join(empty, "none.pem")}, 1, "no such file"},
		{"info of a corrupt file", []string{"tls", "cert", "info", garbage}, 1, "not PEM certificates"},
		{"info of a key", []string{"tls", "cert", "info", filepath.Join(dir, "ca-key.pem")}, 1, `"PRIVATE KEY" PEM block`},
		{"info with a missing CA", []string{"tls", "cert", "info", filepath.Join(dir, "server-rm1.pem"), "--ca", filepath.Join(empty, "ca.pem")}, 1, "no such file"},
		{"info with a leaf as CA", []string{"tls", "cert", "info", filepath.Join(dir, "server-rm1.pem"), "--ca", filepath.Join(dir, "server-rm1.pem")}, 1, "is not a CA certificate"},
		{"info as yaml", []string{"tls", "cert", "info", "-o", "yaml", filepath.Join(dir, "ca.pem")}, 2, `unknown output format "yaml"`},
		{"unknown subcommand", []string{"tls", "frobnicate"}, 2, `unknown command "frobnicate"`},
		{"unknown flag", []string{"tls", "cert", "create", "--admin", "--id", "x"}, 2, "unknown flag: --admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, tt.args...)
			if code != tt.code {
				t.Errorf("got exit %d, want %d (stderr %q)", code, tt.code, errOut)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("got stderr %q, want it to contain %q", errOut, tt.want)
			}
			if out != "" {
				t.Errorf("got stdout %q, want nothing", out)
			}
		})
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ca-key.pem")); string(after) != string(caKey) {
		t.Error("the CA key changed")
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Errorf("refused commands wrote %d files, want none", len(entries))
	}
	if _, err := os.Stat(filepath.Join(dir, "agent-w2.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused certificate was written: %v", err)
	}
}
