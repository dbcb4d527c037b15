package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// newCA makes a CA for cluster in a directory of its own.
func newCA(t *testing.T, cluster string) *CA {
	t.Helper()
	ca, err := CreateCA(filepath.Join(t.TempDir(), "ca"), cluster, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue makes a certificate valid for an hour, written in the CA's
// directory under a fresh name.
func issue(t *testing.T, ca *CA, role Role, id string, opts ...IssueOption) *Issued {
	t.Helper()
	opts = append([]IssueOption{WithOutput(t.TempDir(), string(role)+"-"+id)}, opts...)
	is, err := Issue(ca, role, id, nil, nil, time.Hour, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

// expired and notYetValid are IssueOptions for certificates that are
// outside their validity now.
func expired() IssueOption     { return WithNotBefore(time.Now().Add(-3 * time.Hour)) }
func notYetValid() IssueOption { return WithNotBefore(time.Now().Add(time.Hour)) }

// caFile is the path of the CA's certificate.
func caFile(ca *CA) string { return filepath.Join(ca.Dir, CACertFile) }

// newStore loads is (nil: no certificate of its own) with the CA's
// certificate.
func newStore(t *testing.T, is *Issued, ca *CA) *Store {
	t.Helper()
	var cert, key string
	if is != nil {
		cert, key = is.CertFile, is.KeyFile
	}
	s, err := NewStore(cert, key, caFile(ca), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// keyPair loads an issued certificate as is, with no checks: the
// misbehaving peers of the tests present certificates a Store would refuse.
func keyPair(t *testing.T, is *Issued) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(is.CertFile, is.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pool is a pool of the CAs' certificates.
func pool(cas ...*CA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AddCert(ca.Cert)
	}
	return p
}

// rawServer is a plain server configuration presenting cert and asking for
// no client certificate.
func rawServer(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// rawClient is a plain client configuration trusting roots and presenting
// certs.
func rawClient(roots *x509.CertPool, certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: roots, Certificates: certs}
}

// craft signs a leaf certificate with the CA's key from a template that
// edit may change (a server certificate of the CA's cluster by default),
// for certificates Issue would never make.
func craft(t *testing.T, ca *CA, edit func(*x509.Certificate)) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "crafted"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usagesOf(RoleServer),
		URIs:                  []*url.URL{Identity{Cluster: ca.Cluster, Role: RoleServer, ID: "rm1"}.URI()},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// writeCrafted writes a crafted certificate and its key to files, as Issue
// would.
func writeCrafted(t *testing.T, c tls.Certificate) *Issued {
	t.Helper()
	dir := t.TempDir()
	keyPEM, err := encodeKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	is := &Issued{Cert: c.Leaf, CertFile: filepath.Join(dir, "crafted.pem"), KeyFile: filepath.Join(dir, "crafted-key.pem")}
	if err := os.WriteFile(is.CertFile, encodeCert(c.Certificate[0]), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(is.KeyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return is
}

// result is what each side of a handshake saw.
type result struct {
	serverErr, clientErr error
	server, client       tls.ConnectionState // when that side's handshake succeeded
	reply                string              // what the server wrote once its handshake succeeded
}

// handshake connects a client to a server over a real loopback socket and
// reports each side's handshake error. In TLS 1.3 the client's handshake
// ends before the server has checked the client's certificate, so the
// client then reads: a server that refused it sends an alert, which the
// read returns, and one that accepted it writes "ok". Deadlines only keep
// a broken test from hanging; no outcome depends on them.
func handshake(t *testing.T, srv, cli *tls.Config, serverName string) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type side struct {
		err error
		cs  tls.ConnectionState
	}
	done := make(chan side, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- side{err: err}
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(conn, srv)
		if err := tc.Handshake(); err != nil {
			done <- side{err: err}
			return
		}
		tc.Write([]byte("ok"))
		done <- side{cs: tc.ConnectionState()}
	}()

	var r result
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	cfg := cli.Clone()
	cfg.ServerName = serverName
	tc := tls.Client(conn, cfg)
	if r.clientErr = tc.Handshake(); r.clientErr == nil {
		r.client = tc.ConnectionState()
		buf := make([]byte, 2)
		n, err := tc.Read(buf)
		r.reply, r.clientErr = string(buf[:n]), err
	}
	conn.Close() // a server waiting for a client that gave up sees it at once
	s := <-done
	r.serverErr, r.server = s.err, s.cs
	return r
}
