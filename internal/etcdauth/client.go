package etcdauth

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem/internal/pki"
)

// Files are the PEM files a process presents to etcd: the CA that signed
// etcd's certificate (several CAs allowed), and the process's own
// certificate and key, whose common name is its etcd user. The zero value
// means plain http and no client certificate.
type Files struct {
	CACert, Cert, Key string
}

// IsZero reports whether no file is given.
func (f Files) IsZero() bool { return f == Files{} }

// TLSConfig returns the client TLS configuration for f: TLS 1.3, etcd's
// certificate verified against CACert for the host name or address
// dialled, and Cert presented. It returns nil for the zero Files. The
// certificate and key are read again at every handshake, so a renewed
// certificate applies to the next connection; the CA is read once.
func (f Files) TLSConfig() (*tls.Config, error) {
	if f.IsZero() {
		return nil, nil
	}
	if f.CACert == "" || f.Cert == "" || f.Key == "" {
		return nil, errors.New("etcd TLS: give a CA, a certificate and its key together (--etcd-cacert, --etcd-cert, --etcd-key)")
	}
	// Fail now, not at the first handshake, on unreadable or mismatched
	// files, and on a CA file that holds no certificate (etcd's transport
	// would take it and then trust nobody).
	if _, err := tls.LoadX509KeyPair(f.Cert, f.Key); err != nil {
		return nil, fmt.Errorf("etcd TLS: %s and %s: %w", f.Cert, f.Key, err)
	}
	if _, err := pki.ReadCerts(f.CACert); err != nil {
		return nil, fmt.Errorf("etcd TLS: CA file: %w", err)
	}
	info := transport.TLSInfo{CertFile: f.Cert, KeyFile: f.Key, TrustedCAFile: f.CACert, MinVersion: tls.VersionTLS13}
	cfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS: %w", err)
	}
	return cfg, nil
}

// Cluster returns the cluster whose etcd user Cert is: the cluster of its
// tandem identity, which must be a server certificate carrying that
// cluster's common name. A process checks it against its --cluster: with a
// certificate of another cluster it would be another cluster's etcd user.
func (f Files) Cluster() (string, error) {
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return "", fmt.Errorf("etcd TLS: %s and %s: %w", f.Cert, f.Key, err)
	}
	id, err := pki.FromCert(pair.Leaf)
	if err != nil {
		return "", fmt.Errorf("etcd TLS: %s: %w", f.Cert, err)
	}
	if id.Role != pki.RoleServer || pair.Leaf.Subject.CommonName != User(id.Cluster) {
		return "", fmt.Errorf("etcd TLS: %s: %s with common name %q is no etcd user of cluster %s: use a server certificate (tandem tls cert create --server)",
			f.Cert, id, pair.Leaf.Subject.CommonName, id.Cluster)
	}
	return id.Cluster, nil
}

// ClientConfig returns the configuration of a tandem process's etcd
// client for endpoints: the timeouts and keepalives tandem uses everywhere
// (a dead connection is noticed within seconds, so requests move to another
// endpoint) and, unless f is zero, TLS as [Files.TLSConfig], for which
// every endpoint must be an https URL.
func ClientConfig(endpoints []string, f Files) (clientv3.Config, error) {
	tlsCfg, err := f.TLSConfig()
	if err != nil {
		return clientv3.Config{}, err
	}
	for _, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" || u.Scheme != "http" && u.Scheme != "https" {
			return clientv3.Config{}, fmt.Errorf("etcd endpoint %q is not a URL like http://127.0.0.1:2379", ep)
		}
		if tlsCfg != nil && u.Scheme != "https" {
			return clientv3.Config{}, fmt.Errorf("etcd endpoint %q: with certificates, use an https:// URL", ep)
		}
	}
	return clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  tlsCfg,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
	}, nil
}

// NewClient returns a client of endpoints configured by ClientConfig.
func NewClient(endpoints []string, f Files) (*clientv3.Client, error) {
	cfg, err := ClientConfig(endpoints, f)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return cli, nil
}
