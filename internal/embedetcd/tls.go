package embedetcd

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"go.etcd.io/etcd/client/pkg/v3/tlsutil"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/tandemhq/tandem/internal/pki"
)

// rootUser is etcd's administrator (etcdauth.RootUser): a certificate with
// this common name administers a locked-down etcd.
const rootUser = "root"

// lockDown turns on TLS and client-certificate authentication on both of
// the member's ports, after checking the files: the certificate must be a
// tandem server certificate that verifies against the CA, so a mistake
// fails at start rather than at the first handshake.
func lockDown(ec *embed.Config, cfg *Config) error {
	cluster, err := checkFiles(cfg.CACert, cfg.Cert, cfg.Key)
	if err != nil {
		return fmt.Errorf("embedded etcd: %w", err)
	}
	serverCN := pki.ServerCommonName(cluster)
	clientCNs := cfg.ClientCommonNames
	if len(clientCNs) == 0 {
		clientCNs = []string{serverCN, rootUser}
	}
	ec.ClientTLSInfo = transport.TLSInfo{
		CertFile: cfg.Cert, KeyFile: cfg.Key, TrustedCAFile: cfg.CACert,
		ClientCertAuth: true,
		AllowedCNs:     clientCNs,
	}
	// The peer port carries raft: whoever speaks it can rewrite every key
	// of every cluster, so only this cluster's servers may.
	ec.PeerTLSInfo = transport.TLSInfo{
		CertFile: cfg.Cert, KeyFile: cfg.Key, TrustedCAFile: cfg.CACert,
		ClientCertAuth: true,
		AllowedCNs:     []string{serverCN},
	}
	ec.ClientAutoTLS, ec.PeerAutoTLS = false, false
	ec.TlsMinVersion = string(tlsutil.TLSVersion13)
	return nil
}

// checkFiles loads the certificate and key, requires a server certificate
// of a tandem cluster that verifies against one of the CAs for both server
// and client authentication (a member is both to its peers), and returns
// its cluster.
func checkFiles(caFile, certFile, keyFile string) (string, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return "", fmt.Errorf("%s and %s: %w", certFile, keyFile, err)
	}
	id, err := pki.FromCert(pair.Leaf)
	if err != nil {
		return "", fmt.Errorf("%s: %w", certFile, err)
	}
	if id.Role != pki.RoleServer {
		return "", fmt.Errorf("%s: %s is a %s certificate: an etcd member needs a server certificate", certFile, id, id.Role)
	}
	if cn := pair.Leaf.Subject.CommonName; cn != pki.ServerCommonName(id.Cluster) {
		return "", fmt.Errorf("%s: common name %q, want %q (reissue it with tandem tls cert create --server)", certFile, cn, pki.ServerCommonName(id.Cluster))
	}
	cas, err := pki.ReadCerts(caFile)
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return "", fmt.Errorf("%s does not verify against %s: %w", certFile, caFile, err)
		}
	}
	return id.Cluster, nil
}
