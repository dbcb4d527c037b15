package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/tandemhq/tandem/internal/keys"
)

// The files of a CA in its directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

// clockSkew is how far back a new certificate's validity starts, so that a
// machine whose clock is a little behind the issuer's accepts it at once.
const clockSkew = 5 * time.Minute

// CA is a cluster's certificate authority: its certificate and the key that
// signs the cluster's certificates.
type CA struct {
	Cert    *x509.Certificate
	Cluster string // from the certificate's spiffe://tandem/<cluster> URI
	Dir     string // where ca.pem and ca-key.pem are
	key     crypto.Signer
}

// CreateCA makes a new CA for cluster, valid for validity from now, and
// writes it to dir/ca.pem and dir/ca-key.pem (mode 0600), creating dir
// (0700) if needed. It refuses, with an error wrapping ErrExists, to
// overwrite either file: a new CA would orphan every certificate of the
// old one. Bad arguments give an error wrapping ErrInvalid.
func CreateCA(dir, cluster string, validity time.Duration) (*CA, error) {
	if err := keys.ValidateName("cluster", cluster); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("%w: validity %v: must be positive", ErrInvalid, validity)
	}
	certFile, keyFile := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if err := refuseExisting(certFile, keyFile); err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "tandem CA " + cluster, Organization: []string{"tandem"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// Leaves only: the CA signs every certificate itself.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:           []*url.URL{caURI(cluster)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	if err := writeNew([]newFile{{keyFile, keyPEM, 0o600}, {certFile, encodeCert(der), 0o644}}); err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	return &CA{Cert: cert, Cluster: cluster, Dir: dir, key: key}, nil
}

// LoadCA reads the CA in dir (ca.pem and ca-key.pem) for issuing. The
// certificate must be a tandem CA (it names its cluster) and the key must
// be its key.
func LoadCA(dir string) (*CA, error) {
	certs, err := ReadCerts(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("load CA: %s holds %d certificates: want the CA's alone", filepath.Join(dir, CACertFile), len(certs))
	}
	cert := certs[0]
	cluster, err := CACluster(cert)
	if err != nil {
		return nil, fmt.Errorf("load CA: %s is not a tandem CA: %w", filepath.Join(dir, CACertFile), err)
	}
	key, err := readKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load CA: %s is not the key of %s", filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile))
	}
	return &CA{Cert: cert, Cluster: cluster, Dir: dir, key: key}, nil
}

// Issued is a certificate Issue made, and the files it wrote.
type Issued struct {
	Identity Identity
	Cert     *x509.Certificate
	CertFile string
	KeyFile  string
}

// IssueOption changes how Issue makes or writes a certificate.
type IssueOption func(*issueOptions)

type issueOptions struct {
	dir, name string
	notBefore time.Time
}

// WithOutput writes the certificate to dir/name.pem and its key to
// dir/name-key.pem. By default they go to the CA's directory, named
// <role>-<id>.
func WithOutput(dir, name string) IssueOption {
	return func(o *issueOptions) { o.dir, o.name = dir, name }
}

// WithNotBefore starts the certificate's validity at t instead of a few
// minutes before now; it then ends at t plus the validity. Tests use it to
// make expired and not-yet-valid certificates.
func WithNotBefore(t time.Time) IssueOption {
	return func(o *issueOptions) { o.notBefore = t }
}

// DefaultHosts are the names every server and agent certificate is valid
// for, besides those given, so that local clients can verify it.
var DefaultHosts = []string{"localhost", "127.0.0.1", "::1"}

var dnsName = regexp.MustCompile(`^(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)

var fileName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`)

// Issue makes a certificate for role and id in the CA's cluster, valid for
// validity, and writes it and its key (mode 0600), refusing (ErrExists) to
// overwrite either. Server and agent certificates are for server and client
// authentication and valid for DefaultHosts plus dnsNames and ips; a cli
// certificate is for client authentication only and takes no host names.
// A certificate never outlives its CA: a validity that would is cut to the
// CA's expiry (the returned certificate's NotAfter then equals the CA's).
// Bad arguments give an error wrapping ErrInvalid.
func Issue(ca *CA, role Role, id string, dnsNames []string, ips []net.IP, validity time.Duration, opts ...IssueOption) (*Issued, error) {
	o := issueOptions{dir: ca.Dir, name: string(role) + "-" + id}
	for _, opt := range opts {
		opt(&o)
	}
	ident := Identity{Cluster: ca.Cluster, Role: role, ID: id}
	if err := ident.Validate(); err != nil {
		return nil, err
	}
	if validity <= 0 {
		return nil, fmt.Errorf("%w: validity %v: must be positive", ErrInvalid, validity)
	}
	if !fileName.MatchString(o.name) {
		return nil, fmt.Errorf("%w: output name %q: use letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, o.name)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName(ca.Cluster, role, id), Organization: []string{"tandem " + ca.Cluster}},
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usagesOf(role),
		URIs:                  []*url.URL{ident.URI()},
	}
	if role == RoleCLI {
		if len(dnsNames) > 0 || len(ips) > 0 {
			return nil, fmt.Errorf("%w: a cli certificate is for clients only and takes no host names or addresses", ErrInvalid)
		}
	} else {
		var err error
		if tmpl.DNSNames, tmpl.IPAddresses, err = hosts(dnsNames, ips); err != nil {
			return nil, err
		}
	}
	now := time.Now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-clockSkew), now.Add(validity)
	if !o.notBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = o.notBefore, o.notBefore.Add(validity)
	}
	// A certificate is worth nothing once its CA has expired.
	caEnd := ca.Cert.NotAfter.UTC().Format(time.RFC3339)
	if !ca.Cert.NotAfter.After(now) {
		return nil, fmt.Errorf("issue %s: the CA expired %s: make a new CA", ident, caEnd)
	}
	tmpl.NotAfter = minTime(tmpl.NotAfter, ca.Cert.NotAfter)
	if !tmpl.NotAfter.After(tmpl.NotBefore) {
		return nil, fmt.Errorf("%w: the certificate would start after its CA expires (%s)", ErrInvalid, caEnd)
	}
	certFile := filepath.Join(o.dir, o.name+".pem")
	keyFile := filepath.Join(o.dir, o.name+"-key.pem")
	if err := refuseExisting(certFile, keyFile); err != nil {
		return nil, fmt.Errorf("issue %s: %w", ident, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", ident, err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, fmt.Errorf("issue %s: %w", ident, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", ident, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", ident, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", ident, err)
	}
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return nil, fmt.Errorf("issue %s: %w", ident, err)
	}
	if err := writeNew([]newFile{{keyFile, keyPEM, 0o600}, {certFile, encodeCert(der), 0o644}}); err != nil {
		return nil, fmt.Errorf("issue %s: %w", ident, err)
	}
	return &Issued{Identity: ident, Cert: cert, CertFile: certFile, KeyFile: keyFile}, nil
}

// ServerCommonName returns the subject common name of every server
// certificate of cluster: "tandem-<cluster>".
//
// The identity URI is what tandem reads; the common name is for etcd. An
// etcd with client-certificate authentication (--client-cert-auth) takes a
// client certificate's common name as the etcd user, so every server
// certificate of a cluster (tandem servers, supervisors and tandem lb, the
// processes that talk to etcd, all use server certificates) is the one etcd
// user of that cluster, whose role reaches /tandem/<cluster>/ only (see
// internal/etcdauth). Agent and cli certificates keep a common name of
// "<role> <id>": the space keeps it from ever naming an etcd user tandem
// makes, or root, so they are worth nothing to etcd.
func ServerCommonName(cluster string) string { return "tandem-" + cluster }

// commonName is the subject common name of a certificate of role and id in
// cluster; see ServerCommonName.
func commonName(cluster string, role Role, id string) string {
	if role == RoleServer {
		return ServerCommonName(cluster)
	}
	return string(role) + " " + id
}

// hosts returns DefaultHosts plus the given names and addresses, each once.
func hosts(dnsNames []string, ips []net.IP) ([]string, []net.IP, error) {
	var names []string
	var addrs []net.IP
	addIP := func(ip net.IP) {
		if !slices.ContainsFunc(addrs, ip.Equal) {
			addrs = append(addrs, ip)
		}
	}
	for _, h := range DefaultHosts {
		if ip := net.ParseIP(h); ip != nil {
			addIP(ip)
		} else {
			names = append(names, h)
		}
	}
	for _, n := range dnsNames {
		n = strings.ToLower(n)
		if len(n) > 253 || !dnsName.MatchString(n) {
			return nil, nil, fmt.Errorf("%w: %q is not a DNS name", ErrInvalid, n)
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, nil, fmt.Errorf("%w: %v is not an IP address", ErrInvalid, ip)
		}
		addIP(ip)
	}
	return names, addrs, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ReadCerts reads every certificate of a PEM file. A file with no
// certificate, another kind of PEM block, or anything else that is not
// white space is an error.
func ReadCerts(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, fmt.Errorf("%s: not PEM certificates (corrupt or truncated?)", file)
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: holds a %q PEM block: want certificates only", file, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no certificate in the file", file)
	}
	return certs, nil
}

// readKey reads a PEM private key (PKCS #8 or SEC 1) that can sign.
func readKey(file string) (crypto.Signer, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM private key in the file", file)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s: holds a %q PEM block: want a private key", file, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: a %T cannot sign", file, key)
	}
	return signer, nil
}

type newFile struct {
	path string
	data []byte
	mode fs.FileMode
}

// refuseExisting returns an error wrapping ErrExists if any of files exists.
func refuseExisting(files ...string) error {
	for _, f := range files {
		if _, err := os.Lstat(f); err == nil {
			return fmt.Errorf("%w: %s: refusing to overwrite it", ErrExists, f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writeNew creates each file, which must not exist yet (O_EXCL, so a file
// that appears meanwhile is not overwritten either), with its mode from the
// start. If one fails, the files it created are removed.
func writeNew(files []newFile) (err error) {
	var created []string
	defer func() {
		if err != nil {
			for _, p := range created {
				os.Remove(p)
			}
		}
	}()
	for _, f := range files {
		fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s: refusing to overwrite it", ErrExists, f.path)
		}
		if err != nil {
			return err
		}
		created = append(created, f.path)
		_, err = fh.Write(f.data)
		if err == nil {
			err = fh.Sync()
		}
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	return nil
}
