package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestNewStoreRefuses(t *testing.T) {
	ca := newCA(t, "dev")
	other := newCA(t, "dev")
	prodCA := newCA(t, "prod")
	good := issue(t, ca, RoleServer, "rm1")
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a certificate"), 0o600)
	// A CA file without tandem's cluster URI, as an operator's own CA might be.
	foreign := craft(t, ca, func(c *x509.Certificate) {
		c.IsCA, c.URIs, c.ExtKeyUsage, c.KeyUsage = true, nil, nil, x509.KeyUsageCertSign
	})
	foreignFile := writeCrafted(t, foreign).CertFile

	tests := []struct {
		name              string
		cert, key, caFile string
		wantErr           error // nil: any error
	}{
		{"key without certificate", "", good.KeyFile, caFile(ca), nil},
		{"no CA", good.CertFile, good.KeyFile, "", nil},
		{"missing CA file", good.CertFile, good.KeyFile, filepath.Join(dir, "none.pem"), os.ErrNotExist},
		{"corrupt CA file", good.CertFile, good.KeyFile, garbage, nil},
		{"leaf as CA", good.CertFile, good.KeyFile, good.CertFile, nil},
		{"missing certificate", filepath.Join(dir, "none.pem"), good.KeyFile, caFile(ca), os.ErrNotExist},
		{"corrupt certificate", garbage, good.KeyFile, caFile(ca), nil},
		{"another certificate's key", good.CertFile, issue(t, ca, RoleServer, "rm2").KeyFile, caFile(ca), nil},
		{"another CA", good.CertFile, good.KeyFile, caFile(other), nil},
		{"certificate of a CA of another cluster", issue(t, prodCA, RoleServer, "rm1").CertFile, "", caFile(ca), ErrWrongCluster},
		{"certificate of another cluster from our CA", writeCrafted(t, craft(t, ca, func(c *x509.Certificate) {
			c.URIs[0] = Identity{Cluster: "prod", Role: RoleServer, ID: "rm1"}.URI()
		})).CertFile, "", caFile(ca), ErrWrongCluster},
		{"expired", issue(t, ca, RoleServer, "old", expired()).CertFile, "", caFile(ca), nil},
		{"not yet valid", issue(t, ca, RoleServer, "new", notYetValid()).CertFile, "", caFile(ca), nil},
		{"no identity", writeCrafted(t, craft(t, ca, func(c *x509.Certificate) { c.URIs = nil })).CertFile, "", caFile(ca), ErrNoIdentity},
		{"foreign CA and no certificate", "", "", foreignFile, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key
			if key == "" && tt.cert != "" {
				key = tt.cert[:len(tt.cert)-len(".pem")] + "-key.pem"
			}
			s, err := NewStore(tt.cert, key, tt.caFile, nil)
			if err == nil {
				t.Fatalf("got a store of %v, want an error", s.Identity())
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("got %v, want %v", err, tt.wantErr)
			}
		})
	}

	// A CA file without a cluster is fine when the certificate names it.
	is := writeCrafted(t, craft(t, ca, nil))
	bundle := filepath.Join(dir, "bundle.pem")
	b1, _ := os.ReadFile(foreignFile)
	b2, _ := os.ReadFile(caFile(ca))
	os.WriteFile(bundle, append(b1, b2...), 0o644)
	if s, err := NewStore(is.CertFile, is.KeyFile, bundle, nil); err != nil || s.Cluster() != "dev" {
		t.Errorf("foreign CA in a bundle: got %v", err)
	}
}

// server serves TLS with cfg on a loopback socket, one handshake per
// connection, until the test ends, and reports what it saw of each client.
type server struct {
	addr  string
	peers chan tls.ConnectionState
}

func serve(t *testing.T, cfg *tls.Config) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String(), peers: make(chan tls.ConnectionState, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			tc := tls.Server(conn, cfg)
			if tc.Handshake() == nil {
				tc.Write([]byte("ok"))
				s.peers <- tc.ConnectionState()
			}
			tc.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return s
}

// dial connects to s and returns the server's certificate once the server
// has accepted the client, and what the server saw of the client.
func (s *server) dial(t *testing.T, cfg *tls.Config) (*x509.Certificate, tls.ConnectionState) {
	t.Helper()
	cfg = cfg.Clone()
	cfg.ServerName = "127.0.0.1"
	conn, err := tls.Dial("tcp", s.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2)
	if _, err := conn.Read(buf); err != nil {
		t.Fatalf("server refused: %v", err)
	}
	// A resumed session would carry the certificates of the one it resumes.
	if conn.ConnectionState().DidResume {
		t.Error("the session was resumed, want a full handshake")
	}
	return conn.ConnectionState().PeerCertificates[0], <-s.peers
}

// install copies an issued certificate and key over the files of another,
// as an operator rotating certificates does.
func install(t *testing.T, from, to *Issued) {
	t.Helper()
	copyFile(t, from.CertFile, to.CertFile)
	copyFile(t, from.KeyFile, to.KeyFile)
}

func serial(c *x509.Certificate) *big.Int { return c.SerialNumber }

func TestReloadServerCertificate(t *testing.T) {
	ca := newCA(t, "dev")
	first := issue(t, ca, RoleServer, "rm1")
	s := newStore(t, first, ca)
	cfg, err := ServerConfig(s, ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, cfg) // one listener for the whole test
	client := ClientConfig(newStore(t, nil, ca), ClientOptions{ServerRoles: []Role{RoleServer}})
	client.ClientSessionCache = tls.NewLRUClientSessionCache(8) // a client that would resume if let

	if got, _ := srv.dial(t, client); serial(got).Cmp(serial(first.Cert)) != 0 {
		t.Fatalf("got serial %x, want the first certificate's %x", serial(got), serial(first.Cert))
	}

	second := issue(t, ca, RoleServer, "rm1")
	install(t, second, first)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, _ := srv.dial(t, client); serial(got).Cmp(serial(second.Cert)) != 0 {
		t.Fatalf("after Reload: got serial %x, want the second certificate's %x", serial(got), serial(second.Cert))
	}

	// Bad new files: Reload fails, and new connections still get the second.
	bad := []struct {
		name    string
		prepare func()
		wantErr error // nil: any error
	}{
		{"corrupt certificate", func() { os.WriteFile(first.CertFile, []byte("-----BEGIN CERTIFICATE-----\ngarbage\n"), 0o644) }, nil},
		{"empty key", func() { copyFile(t, second.CertFile, first.CertFile); os.WriteFile(first.KeyFile, nil, 0o600) }, nil},
		{"certificate and key that do not match", func() {
			copyFile(t, issue(t, ca, RoleServer, "rm1").CertFile, first.CertFile)
			copyFile(t, second.KeyFile, first.KeyFile)
		}, nil},
		{"expired certificate", func() { install(t, issue(t, ca, RoleServer, "rm1", expired()), first) }, nil},
		{"certificate of another CA", func() { install(t, issue(t, newCA(t, "dev"), RoleServer, "rm1"), first) }, nil},
		{"another identity", func() { install(t, issue(t, ca, RoleAgent, "rm1"), first) }, ErrIdentityChanged},
		{"another ID", func() { install(t, issue(t, ca, RoleServer, "rm2"), first) }, ErrIdentityChanged},
		{"corrupt CA", func() { install(t, second, first); os.WriteFile(caFile(ca), []byte("junk"), 0o644) }, nil},
	}
	caPEM, _ := os.ReadFile(caFile(ca))
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			tt.prepare()
			t.Cleanup(func() { os.WriteFile(caFile(ca), caPEM, 0o644) })
			err := s.Reload()
			if err == nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Reload: got %v, want an error (%v)", err, tt.wantErr)
			}
			if got, _ := srv.dial(t, client); serial(got).Cmp(serial(second.Cert)) != 0 {
				t.Errorf("after a failed Reload: got serial %x, want the second certificate's %x", serial(got), serial(second.Cert))
			}
			if got := s.Leaf(); serial(got).Cmp(serial(second.Cert)) != 0 {
				t.Errorf("Leaf: got serial %x, want %x", serial(got), serial(second.Cert))
			}
		})
	}
}

func TestReloadClientCertificate(t *testing.T) {
	ca := newCA(t, "dev")
	srvCfg, err := ServerConfig(newStore(t, issue(t, ca, RoleServer, "rm1"), ca), ServerOptions{RequireClientCert: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, srvCfg)
	first := issue(t, ca, RoleAgent, "w1")
	s := newStore(t, first, ca)
	client := ClientConfig(s, ClientOptions{}) // built once, like an http.Transport's

	if _, peer := srv.dial(t, client); serial(peer.PeerCertificates[0]).Cmp(serial(first.Cert)) != 0 {
		t.Fatalf("server saw serial %x, want %x", serial(peer.PeerCertificates[0]), serial(first.Cert))
	}
	second := issue(t, ca, RoleAgent, "w1")
	install(t, second, first)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, peer := srv.dial(t, client); serial(peer.PeerCertificates[0]).Cmp(serial(second.Cert)) != 0 {
		t.Fatalf("after Reload: server saw serial %x, want %x", serial(peer.PeerCertificates[0]), serial(second.Cert))
	}
}

// TestReloadCA replaces a cluster's CA on a running server: clients of the
// new CA are refused until the server reloads a bundle of both CAs, then
// accepted, while clients of the old one still are.
func TestReloadCA(t *testing.T) {
	oldCA := newCA(t, "dev")
	newCA := newCA(t, "dev")
	srvIssued := issue(t, oldCA, RoleServer, "rm1")
	s := newStore(t, srvIssued, oldCA)
	cfg, err := ServerConfig(s, ServerOptions{RequireClientCert: true})
	if err != nil {
		t.Fatal(err)
	}
	clientOf := func(ca *CA) *tls.Config {
		return rawClient(pool(oldCA), keyPair(t, issue(t, ca, RoleCLI, "alice")))
	}

	r := handshake(t, cfg, clientOf(newCA), "127.0.0.1")
	if _, ok := errors.AsType[x509.UnknownAuthorityError](r.serverErr); !ok {
		t.Fatalf("before the reload: got %v, want x509.UnknownAuthorityError", r.serverErr)
	}
	oldPEM, _ := os.ReadFile(caFile(oldCA))
	newPEM, _ := os.ReadFile(caFile(newCA))
	os.WriteFile(caFile(oldCA), append(oldPEM, newPEM...), 0o644)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	for name, cli := range map[string]*tls.Config{"new CA": clientOf(newCA), "old CA": clientOf(oldCA)} {
		if r := handshake(t, cfg, cli, "127.0.0.1"); r.serverErr != nil || r.reply != "ok" {
			t.Errorf("%s after the reload: got %v, %v; want accepted", name, r.serverErr, r.clientErr)
		}
	}
}

// logRecords is a slog handler that sends each record to a channel.
type logRecords chan slog.Record

func (h logRecords) Enabled(context.Context, slog.Level) bool      { return true }
func (h logRecords) Handle(_ context.Context, r slog.Record) error { h <- r; return nil }
func (h logRecords) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h logRecords) WithGroup(string) slog.Handler                 { return h }

func TestWatchSIGHUP(t *testing.T) {
	ca := newCA(t, "dev")
	first := issue(t, ca, RoleServer, "rm1")
	logs := make(logRecords, 4)
	s, err := NewStore(first.CertFile, first.KeyFile, caFile(ca), slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	stop := WatchSIGHUP(t.Context(), s)
	defer stop()

	next := func(t *testing.T) slog.Record {
		t.Helper()
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-logs:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no log line 10s after SIGHUP")
			return slog.Record{}
		}
	}

	second := issue(t, ca, RoleServer, "rm1")
	install(t, second, first)
	if r := next(t); r.Level != slog.LevelInfo || r.Message != "TLS certificates reloaded" {
		t.Errorf("got %v %q, want INFO TLS certificates reloaded", r.Level, r.Message)
	}
	if serial(s.Leaf()).Cmp(serial(second.Cert)) != 0 {
		t.Errorf("got serial %x, want the new certificate's %x", serial(s.Leaf()), serial(second.Cert))
	}

	os.WriteFile(first.KeyFile, []byte("junk"), 0o600)
	r := next(t)
	if r.Level != slog.LevelError || r.Message != "TLS reload failed, keeping the current certificates" {
		t.Errorf("got %v %q, want ERROR TLS reload failed", r.Level, r.Message)
	}
	var sawErr bool
	r.Attrs(func(a slog.Attr) bool { sawErr = sawErr || a.Key == "err"; return true })
	if !sawErr {
		t.Error("the failure's log line has no err attribute")
	}
	if serial(s.Leaf()).Cmp(serial(second.Cert)) != 0 {
		t.Errorf("after a failed reload: got serial %x, want %x", serial(s.Leaf()), serial(second.Cert))
	}
}
