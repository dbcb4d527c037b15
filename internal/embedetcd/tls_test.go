package embedetcd_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/embedetcd"
	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/pki"
)

// certs are a cluster's CA and certificates, good and bad, as files.
type certs struct {
	ca                          *pki.CA
	caFile                      string
	server, agent, cli, expired *pki.Issued
	notYetValid                 *pki.Issued
	otherCA                     *pki.Issued // a server certificate of another CA of the same cluster name
}

func newCerts(t *testing.T, cluster string) *certs {
	t.Helper()
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca"), cluster, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.CreateCA(filepath.Join(t.TempDir(), "other"), cluster, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *pki.CA, role pki.Role, id string, opts ...pki.IssueOption) *pki.Issued {
		t.Helper()
		is, err := pki.Issue(ca, role, id, nil, nil, time.Hour, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return is
	}
	return &certs{
		ca: ca, caFile: filepath.Join(ca.Dir, pki.CACertFile),
		server:      issue(ca, pki.RoleServer, "rm1"),
		agent:       issue(ca, pki.RoleAgent, "w1"),
		cli:         issue(ca, pki.RoleCLI, "alice"),
		expired:     issue(ca, pki.RoleServer, "old", pki.WithNotBefore(time.Now().Add(-3*time.Hour))),
		otherCA:     issue(other, pki.RoleServer, "rm1"),
		notYetValid: issue(ca, pki.RoleServer, "new", pki.WithNotBefore(time.Now().Add(time.Hour))),
	}
}

func keyPair(t *testing.T, is *pki.Issued) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(is.CertFile, is.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// request makes a TLS connection to addr presenting certs (none if
// empty), trusting only the cluster's CA, and asks for /version. It
// returns the start of the answer, or the error of the handshake or of the
// first read. In TLS 1.3 a client's handshake completes before the server
// has checked the client's certificate; a server that refuses it sends an
// alert, which that read returns. The deadline only keeps a broken test
// from hanging: no outcome depends on it.
func request(t *testing.T, addr string, roots *x509.CertPool, certs ...tls.Certificate) (string, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(conn, &tls.Config{RootCAs: roots, Certificates: certs, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		return "", err
	}
	if _, err := io.WriteString(tc, "GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	buf := make([]byte, 12)
	n, err := io.ReadFull(tc, buf)
	return string(buf[:n]), err
}

// remoteAlert returns the TLS alert the server sent, as crypto/tls words
// it ("tls: certificate required"), or "" if err is not a received alert.
func remoteAlert(err error) string {
	if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Op == "remote error" {
		return oe.Err.Error()
	}
	return ""
}

// TestTLSRefusals makes real handshakes with the member's client and peer
// ports: a client without a certificate, with one of another CA, with an
// expired one, or with one whose role may not use the port is refused in
// the handshake, with the alert saying why; the member's own kind of
// certificate is served, which shows the refusals come from the checks
// and not from a broken listener.
func TestTLSRefusals(t *testing.T) {
	c := newCerts(t, "dev")
	e := etcdtest.StartTLS(t, etcdtest.TLS{CACert: c.caFile, Cert: c.server.CertFile, Key: c.server.KeyFile})
	roots := x509.NewCertPool()
	roots.AddCert(c.ca.Cert)

	host := func(u string) string {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		return pu.Host
	}
	ports := []struct{ name, addr string }{{"client", host(e.Endpoint)}, {"peer", host(e.PeerURL)}}
	tests := []struct {
		name  string
		certs []tls.Certificate
		// alert is the refusal on each port; "" means served.
		client, peer string
	}{
		{"server certificate", []tls.Certificate{keyPair(t, c.server)}, "", ""},
		{"no certificate", nil, "tls: certificate required", "tls: certificate required"},
		{"another CA", []tls.Certificate{keyPair(t, c.otherCA)}, "tls: unknown certificate authority", "tls: unknown certificate authority"},
		{"expired", []tls.Certificate{keyPair(t, c.expired)}, "tls: expired certificate", "tls: expired certificate"},
		// crypto/tls words "before its validity" as it does "after".
		{"not yet valid", []tls.Certificate{keyPair(t, c.notYetValid)}, "tls: expired certificate", "tls: expired certificate"},
		// Agents and people have no business with etcd, and only a
		// cluster's servers may speak raft.
		{"agent certificate", []tls.Certificate{keyPair(t, c.agent)}, "tls: bad certificate", "tls: bad certificate"},
		{"cli certificate", []tls.Certificate{keyPair(t, c.cli)}, "tls: bad certificate", "tls: bad certificate"},
	}
	for _, port := range ports {
		// TLS 1.3 only: a TLS 1.2 client is refused however good its certificate.
		t.Run(port.name+"/TLS 1.2", func(t *testing.T) {
			conn, err := tls.Dial("tcp", port.addr, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{keyPair(t, c.server)},
				ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12})
			if err == nil {
				conn.Close()
			}
			if alert := remoteAlert(err); alert != "tls: protocol version not supported" {
				t.Fatalf("got %v (alert %q), want the alert %q", err, alert, "tls: protocol version not supported")
			}
		})
		for _, tt := range tests {
			t.Run(port.name+"/"+tt.name, func(t *testing.T) {
				want := tt.client
				if port.name == "peer" {
					want = tt.peer
				}
				got, err := request(t, port.addr, roots, tt.certs...)
				if want == "" {
					if err != nil || !strings.HasPrefix(got, "HTTP/1.1 200") {
						t.Fatalf("got %q, %v; want HTTP/1.1 200", got, err)
					}
					return
				}
				if alert := remoteAlert(err); alert != want {
					t.Fatalf("got %q, %v (alert %q); want the alert %q", got, err, alert, want)
				}
			})
		}
	}
}

// TestTLSConfigRefused checks that a member refuses to start with
// certificates it could not serve with.
func TestTLSConfigRefused(t *testing.T) {
	c := newCerts(t, "dev")
	base := func() embedetcd.Config {
		return embedetcd.Config{Name: "m", Dir: t.TempDir(), ClientURL: "https://127.0.0.1:1", PeerURL: "https://127.0.0.1:2",
			CACert: c.caFile, Cert: c.server.CertFile, Key: c.server.KeyFile, StartTimeout: time.Second, LogLevel: "fatal"}
	}
	tests := []struct {
		name string
		edit func(*embedetcd.Config)
		want string
	}{
		{"http client URL", func(cfg *embedetcd.Config) { cfg.ClientURL = "http://127.0.0.1:1" }, "use an https:// URL"},
		{"http peer URL", func(cfg *embedetcd.Config) { cfg.PeerURL = "http://127.0.0.1:2" }, "use an https:// URL"},
		{"no key", func(cfg *embedetcd.Config) { cfg.Key = "" }, "give a CA, a certificate and its key together"},
		{"agent certificate", func(cfg *embedetcd.Config) { cfg.Cert, cfg.Key = c.agent.CertFile, c.agent.KeyFile }, "needs a server certificate"},
		{"another CA", func(cfg *embedetcd.Config) { cfg.Cert, cfg.Key = c.otherCA.CertFile, c.otherCA.KeyFile }, "does not verify against"},
		{"expired", func(cfg *embedetcd.Config) { cfg.Cert, cfg.Key = c.expired.CertFile, c.expired.KeyFile }, "does not verify against"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.edit(&cfg)
			m, err := embedetcd.Start(cfg)
			if err == nil {
				m.Close()
				t.Fatalf("started; want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestTLSCluster starts three locked-down members, each with its own
// server certificate, and checks that they form one cluster over their TLS
// peer ports: a write through one member's client port is read through
// another's. (Members dial each other as clients presenting their own
// certificate, so this also checks the peer port's client side.)
func TestTLSCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd takes seconds to start and stop")
	}
	c := newCerts(t, "dev")
	names := []string{"m1", "m2", "m3"}
	cfgs := make([]embedetcd.Config, len(names))
	var initial []string
	for i, name := range names {
		is, err := pki.Issue(c.ca, pki.RoleServer, name, nil, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cfgs[i] = embedetcd.Config{
			Name: name, Dir: t.TempDir(),
			ClientURL: "https://" + etcdtest.FreeAddr(t), PeerURL: "https://" + etcdtest.FreeAddr(t),
			ClusterToken: "tls-test", StartTimeout: 30 * time.Second, LogLevel: "fatal",
			HeartbeatMs: 50, ElectionMs: 500, UnsafeNoFsync: true,
			CACert: c.caFile, Cert: is.CertFile, Key: is.KeyFile,
		}
		initial = append(initial, name+"="+cfgs[i].PeerURL)
	}
	members := make([]*embedetcd.Member, len(names))
	errs := make(chan error, len(names))
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(initial, ",")
		go func() {
			m, err := embedetcd.Start(cfgs[i])
			members[i] = m
			errs <- err
		}()
	}
	var startErr error
	for range names {
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
	cli := func(m *embedetcd.Member) *clientv3.Client {
		t.Helper()
		cl, err := etcdauth.NewClient([]string{m.ClientURL()}, etcdauth.Files{CACert: c.caFile, Cert: c.server.CertFile, Key: c.server.KeyFile})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cli(members[0]).Put(ctx, "/tandem/dev/k", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli(members[2]).Get(ctx, "/tandem/dev/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("got %v, %v; want the value written through another member", resp, err)
	}
}
