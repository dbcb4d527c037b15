package client

import (
	"crypto/tls"
	"os"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/pki"
)

// Environment variables TLSFilesFromEnv reads, as `tandem dev` prints them.
const (
	EnvCACert     = "TANDEM_CACERT"      // the cluster's CA certificate (PEM)
	EnvClientCert = "TANDEM_CLIENT_CERT" // a client certificate (tandem tls cert create --cli)
	EnvClientKey  = "TANDEM_CLIENT_KEY"  // its key
)

// TLSFiles names the PEM files of the client's side of TLS with https
// servers: the CA that the servers' certificates must chain to, and
// optionally a client certificate and its key to present.
type TLSFiles struct {
	CACert     string
	ClientCert string
	ClientKey  string
}

// TLSFilesFromEnv returns the files named by $TANDEM_CACERT,
// $TANDEM_CLIENT_CERT and $TANDEM_CLIENT_KEY.
func TLSFilesFromEnv() TLSFiles {
	return TLSFiles{CACert: os.Getenv(EnvCACert), ClientCert: os.Getenv(EnvClientCert), ClientKey: os.Getenv(EnvClientKey)}
}

// IsZero reports whether no file is named.
func (f TLSFiles) IsZero() bool { return f == TLSFiles{} }

// Config loads the files into a TLS configuration for Config.TLS: TLS 1.3,
// servers verified against CACert and required to carry a server
// certificate of its cluster, and the client certificate presented when
// given. With no files it returns nil (the system's roots, no client
// certificate). A client certificate needs CACert and its key; a problem
// with the files is an invalid_argument *tandem.Error.
func (f TLSFiles) Config() (*tls.Config, error) {
	if f.IsZero() {
		return nil, nil
	}
	if f.CACert == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "a client certificate needs the cluster's CA certificate too ($%s, --cacert)", EnvCACert)
	}
	if (f.ClientCert == "") != (f.ClientKey == "") {
		return nil, tandem.Errorf(tandem.EINVALID, "a client certificate and its key go together ($%s and $%s, --client-cert and --client-key)", EnvClientCert, EnvClientKey)
	}
	s, err := pki.NewStore(f.ClientCert, f.ClientKey, f.CACert, nil)
	if err != nil {
		return nil, tandem.Errorf(tandem.EINVALID, "%v", err)
	}
	return pki.ClientConfig(s, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer}}), nil
}
