// Package lbtest holds what the tests of the proxy drivers share for TLS: a
// cluster's certificates, made with internal/pki as `tandem tls` makes
// them, and backend servers that serve TLS the way tandem's servers do
// (TLS 1.3, a client certificate verified if given, /isActive). Tests only.
package lbtest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/pki"
)

// PKI is a cluster's CA and a second CA that claims the same cluster (a
// stranger's certificates: right names, wrong CA).
type PKI struct {
	Cluster string
	CAFile  string // the cluster's ca.pem
	// OtherCAFile is the stranger's ca.pem.
	OtherCAFile string
	ca, other   *pki.CA
}

// NewPKI makes both CAs for cluster in a temporary directory of t.
func NewPKI(t *testing.T, cluster string) *PKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.CreateCA(filepath.Join(dir, "ca"), cluster, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.CreateCA(filepath.Join(dir, "other"), cluster, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{Cluster: cluster, CAFile: filepath.Join(ca.Dir, pki.CACertFile), OtherCAFile: filepath.Join(other.Dir, pki.CACertFile),
		ca: ca, other: other}
}

// Issue makes a certificate of the cluster's CA for role and id and
// returns its files; name, if given, names them (several of one
// identity).
func (p *PKI) Issue(t *testing.T, role pki.Role, id string, name ...string) (cert, key string) {
	t.Helper()
	return issue(t, p.ca, role, id, name...)
}

// IssueOther makes a certificate of the stranger's CA.
func (p *PKI) IssueOther(t *testing.T, role pki.Role, id string) (cert, key string) {
	t.Helper()
	return issue(t, p.other, role, id)
}

func issue(t *testing.T, ca *pki.CA, role pki.Role, id string, name ...string) (string, string) {
	t.Helper()
	n := string(role) + "-" + id
	if len(name) > 0 {
		n = name[0]
	}
	is, err := pki.Issue(ca, role, id, nil, nil, time.Hour, pki.WithOutput(ca.Dir, n))
	if err != nil {
		t.Fatal(err)
	}
	return is.CertFile, is.KeyFile
}

// Client returns an HTTP client that trusts the cluster's CA, speaks TLS
// 1.3 only, opens a connection per request and follows no redirect.
func (p *PKI) Client(t *testing.T) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil,
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}},
		Timeout:       5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Server is a backend that serves TLS as a tandem server does: TLS 1.3
// only, a client certificate of the CA verified if one is given, none
// required. /isActive answers 200 while Active, else 405; other paths
// answer the server's name while Active, and a standby with Redirect set
// answers 307 to https://Redirect()/same-URI, as tandem's standbys do.
type Server struct {
	Name     string
	Addr     string
	Active   atomic.Bool
	Redirect func() string
	// Requests counts every HTTP request that got through the TLS
	// handshake, health checks included.
	Requests atomic.Int64

	mu     sync.Mutex
	client string // identity URI of the last client certificate, "" for none
	srv    *http.Server
}

// StartServer starts a Server with the certificate in certFile and
// keyFile, verifying client certificates against caFile; it is closed at
// the end of the test.
func StartServer(t *testing.T, name, certFile, keyFile, caFile string, active bool) *Server {
	t.Helper()
	store, err := pki.NewStore(certFile, keyFile, caFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pki.ServerConfig(store, pki.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return start(t, name, cfg, active)
}

// StartStranger starts a Server with the certificate in certFile and
// keyFile that asks for no client certificate, so that whether a proxy
// talks to it depends on the proxy's checks alone (a Server of another CA
// would refuse the proxy's client certificate itself).
func StartStranger(t *testing.T, name, certFile, keyFile string, active bool) *Server {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return start(t, name, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}, active)
}

func start(t *testing.T, name string, cfg *tls.Config, active bool) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Name: name, Addr: ln.Addr().String()}
	s.Active.Store(active)
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 5 * time.Second, ErrorLog: quiet}
	go func() { _ = s.srv.Serve(tls.NewListener(ln, cfg)) }()
	t.Cleanup(s.Close)
	return s
}

// quiet drops net/http's log of refused handshakes, which the tests
// provoke on purpose.
var quiet = log.New(io.Discard, "", 0)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.Requests.Add(1)
	client := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		if id, err := pki.FromCert(r.TLS.PeerCertificates[0]); err == nil {
			client = id.String()
		}
	}
	s.mu.Lock()
	s.client = client
	s.mu.Unlock()
	_, _ = io.Copy(io.Discard, r.Body)
	active := s.Active.Load()
	switch {
	case r.URL.Path == "/isActive" && active:
		fmt.Fprintln(w, "active")
	case r.URL.Path == "/isActive":
		w.WriteHeader(http.StatusMethodNotAllowed)
	case !active && s.Redirect != nil:
		w.Header().Set("Location", "https://"+s.Redirect()+r.URL.RequestURI())
		w.WriteHeader(http.StatusTemporaryRedirect)
	case !active:
		w.WriteHeader(http.StatusServiceUnavailable)
	default:
		io.WriteString(w, s.Name)
	}
}

// Client returns the identity of the last client certificate the server
// saw ("" for none).
func (s *Server) Client() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client
}

// Close stops the server: its address refuses connections from then on.
func (s *Server) Close() { _ = s.srv.Close() }
