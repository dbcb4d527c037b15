package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Store holds a process's certificate, key and CA as last loaded from
// their files. The TLS configurations of this package read it at every
// handshake, so after a successful Reload new connections use the new
// files, while listeners and established connections carry on.
type Store struct {
	certFile, keyFile, caFile string
	log                       *slog.Logger

	mu  sync.Mutex // serialises Reload
	cur atomic.Pointer[material]
}

// material is one consistent load of the files; it is never modified, so
// a handshake that took it sees certificate, CA and cluster from one load.
type material struct {
	cert    *tls.Certificate // nil: a CA only (a client without a certificate)
	id      *Identity        // of cert
	cas     []*x509.Certificate
	pool    *x509.CertPool
	cluster string
}

// NewStore loads the certificate and key in certFile and keyFile (both
// empty: none, for a client that only checks servers) and the CA
// certificates in caFile (several, while a CA is being replaced). It fails
// if any file is unreadable or corrupt, if the key is not the
// certificate's, if the certificate carries no valid tandem identity, is of
// another cluster than the CA, or does not verify against the CA now
// (expired, not yet valid, another CA). The store's cluster is its
// certificate's, or else the CA's. log receives WatchSIGHUP's reports; nil
// discards them.
func NewStore(certFile, keyFile, caFile string, log *slog.Logger) (*Store, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("pki: give both a certificate and its key, or neither")
	}
	if caFile == "" {
		return nil, errors.New("pki: a CA file is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{certFile: certFile, keyFile: keyFile, caFile: caFile, log: log}
	m, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	return s, nil
}

// Reload re-reads the files. If they load as NewStore requires, and name
// the same identity (a reload rotates certificates; it does not turn a
// server into an agent or move it to another cluster), they replace the
// current ones; otherwise the current ones stay and the error says why
// (ErrIdentityChanged for the latter). It does not log: the caller does.
// It is safe to call concurrently with handshakes and with itself.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.load()
	if err != nil {
		return err
	}
	old := s.cur.Load()
	switch {
	case old.cluster != m.cluster:
		return fmt.Errorf("%w: cluster %q, was %q", ErrIdentityChanged, m.cluster, old.cluster)
	case (old.id == nil) != (m.id == nil) || old.id != nil && *old.id != *m.id:
		return fmt.Errorf("%w: %s, was %s", ErrIdentityChanged, describe(m.id), describe(old.id))
	}
	s.cur.Store(m)
	return nil
}

func describe(id *Identity) string {
	if id == nil {
		return "no certificate"
	}
	return id.String()
}

func (s *Store) load() (*material, error) {
	cas, err := ReadCerts(s.caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: CA: %w", err)
	}
	m := &material{cas: cas, pool: x509.NewCertPool()}
	for _, ca := range cas {
		if !ca.IsCA {
			return nil, fmt.Errorf("pki: CA: %s holds a certificate that is not a CA's (%s)", s.caFile, ca.Subject)
		}
		m.pool.AddCert(ca)
		cluster, err := CACluster(ca)
		switch {
		case errors.Is(err, ErrNoIdentity):
			continue // not made by tandem: it names no cluster
		case err != nil:
			return nil, fmt.Errorf("pki: CA: %s: %w", s.caFile, err)
		case m.cluster != "" && cluster != m.cluster:
			return nil, fmt.Errorf("pki: CA: %s holds CAs of clusters %q and %q", s.caFile, m.cluster, cluster)
		}
		m.cluster = cluster
	}
	if s.certFile != "" {
		if err := m.loadCert(s.certFile, s.keyFile); err != nil {
			return nil, err
		}
	}
	if m.cluster == "" {
		return nil, fmt.Errorf("pki: %s names no tandem cluster and there is no certificate to tell it", s.caFile)
	}
	return m, nil
}

func (m *material) loadCert(certFile, keyFile string) error {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("pki: %s and %s: %w", certFile, keyFile, err)
	}
	leaf := cert.Leaf // X509KeyPair parses it
	id, err := FromCert(leaf)
	if err != nil {
		return fmt.Errorf("pki: %s: %w", certFile, err)
	}
	if m.cluster != "" && id.Cluster != m.cluster {
		return fmt.Errorf("pki: %s: %w: %s, and the CA is of cluster %q", certFile, ErrWrongCluster, id, m.cluster)
	}
	opts := x509.VerifyOptions{Roots: m.pool, Intermediates: x509.NewCertPool()}
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("pki: %s: %w", certFile, err)
		}
		opts.Intermediates.AddCert(c)
	}
	// Check every usage the role has, so a server certificate we could not
	// present to clients, or use as a client of other servers, is caught here.
	for _, u := range usagesOf(id.Role) {
		opts.KeyUsages = []x509.ExtKeyUsage{u}
		if _, err := leaf.Verify(opts); err != nil {
			return fmt.Errorf("pki: %s does not verify against the CA: %w", certFile, err)
		}
	}
	m.cert, m.id, m.cluster = &cert, &id, id.Cluster
	return nil
}

// Cluster returns the cluster the store's certificates are for; peers of
// other clusters are refused.
func (s *Store) Cluster() string { return s.cur.Load().cluster }

// Identity returns the identity of the store's own certificate, or nil if
// it has none.
func (s *Store) Identity() *Identity {
	if id := s.cur.Load().id; id != nil {
		c := *id
		return &c
	}
	return nil
}

// Pool returns the current CA certificates as a pool.
func (s *Store) Pool() *x509.CertPool { return s.cur.Load().pool }

// Leaf returns the current certificate, or nil if there is none.
func (s *Store) Leaf() *x509.Certificate {
	if c := s.cur.Load().cert; c != nil {
		return c.Leaf
	}
	return nil
}

// GetCertificate returns the current certificate, for
// tls.Config.GetCertificate; ErrNoCertificate if there is none.
func (s *Store) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.cur.Load().cert; c != nil {
		return c, nil
	}
	return nil, ErrNoCertificate
}

// GetClientCertificate returns the current certificate, for
// tls.Config.GetClientCertificate; with none, it sends none.
func (s *Store) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if c := s.cur.Load().cert; c != nil {
		return c, nil
	}
	return &tls.Certificate{}, nil
}

// VerifyPeer returns the identity of a connection's peer from the chain the
// handshake verified, refusing it (ErrWrongCluster, ErrRoleNotAllowed) if
// it is of another cluster than the store's or, when roles are given, has
// none of them. It returns nil and no error for a peer without a
// certificate, ErrUnverified for one whose certificate was not verified.
func (s *Store) VerifyPeer(cs *tls.ConnectionState, roles ...Role) (*Identity, error) {
	return s.cur.Load().verifyPeer(cs, roles)
}

func (m *material) verifyPeer(cs *tls.ConnectionState, roles []Role) (*Identity, error) {
	id, err := FromConnectionState(cs, m.cluster)
	if err != nil || id == nil {
		return nil, err
	}
	if err := id.check(m.cluster, roles); err != nil {
		return nil, err
	}
	return id, nil
}

// Expiry is when one loaded certificate expires.
type Expiry struct {
	File     string    // the file it was loaded from
	Role     string    // server, agent, cli, or ca
	ID       string    // the identity's ID; for a CA, its serial number in hex
	NotAfter time.Time // the end of its validity
}

// Expiries lists the current certificate and each CA certificate with when
// they expire.
func (s *Store) Expiries() []Expiry {
	m := s.cur.Load()
	var out []Expiry
	if m.cert != nil {
		out = append(out, Expiry{File: s.certFile, Role: string(m.id.Role), ID: m.id.ID, NotAfter: m.cert.Leaf.NotAfter})
	}
	for _, ca := range m.cas {
		out = append(out, Expiry{File: s.caFile, Role: "ca", ID: ca.SerialNumber.Text(16), NotAfter: ca.NotAfter})
	}
	return out
}
