// Package pki is tandem's public key infrastructure: one certificate
// authority per cluster, certificates that carry who their holder is,
// reloadable TLS configurations for servers, agents and clients, and a
// metric of when each certificate expires.
//
// # Identity
//
// Every certificate the CA issues names exactly one identity: a cluster, a
// role (server, agent or cli) and an ID (the server's or agent's --id, or a
// user's name). It is written as a single URI subject alternative name,
//
//	spiffe://tandem/<cluster>/<role>/<id>
//
// and nothing else in the certificate counts: the subject's common name is
// only there for people reading the certificate. We chose a URI SAN over
// the common name, organisational units or a private extension because:
//
//   - the three parts sit in one value, in a fixed order, so they cannot be
//     mixed up or taken from different attributes (a CN of "rm1" next to an
//     OU of "agent" is a question; one URI is an answer);
//   - SANs are what X.509 verification is built on: the standard library
//     parses them into [x509.Certificate.URIs], name constraints can apply
//     to them, and the CN is ignored for host names since Go 1.15;
//   - the form is SPIFFE's (trust domain "tandem", the cluster as the
//     first path segment, since cluster names may hold capitals, which a
//     SPIFFE trust domain may not), so Envoy, SPIRE and service meshes
//     understand it, and `openssl x509 -text` shows it plainly;
//   - it parses strictly: a tandem URI (scheme spiffe, host tandem) must
//     have exactly three path segments, a known role and names that pass
//     [keys.ValidateName], with no query, fragment, user, port or escapes,
//     and a certificate may carry only one. Other URIs are ignored.
//
// The role must also agree with the certificate's extended key usages:
// server and agent certificates are for server and client authentication
// (servers call each other and etcd, agents serve logs and syncs), a cli
// certificate for client authentication only, so it can never pass as a
// server in a handshake. The CA certificate carries spiffe://tandem/<cluster>,
// from which tools learn the cluster it issues for.
//
// # TLS
//
// [ServerConfig] and [ClientConfig] default to TLS 1.3 and take their
// certificates from a [Store], which [Store.Reload] (or [WatchSIGHUP])
// re-reads from disk: new connections use the new certificates, existing
// ones and listeners are left alone, and bad new files keep the old ones.
// A handshake is refused when the peer's certificate does not chain to the
// cluster's CA, is expired or not yet valid, is missing where required, is
// of another cluster, or has a role the listener does not accept.
package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/tandemhq/tandem/internal/keys"
)

// Role is what a certificate's holder is in the cluster.
type Role string

// The roles a certificate can carry.
const (
	RoleServer Role = "server"
	RoleAgent  Role = "agent"
	RoleCLI    Role = "cli"
)

// Roles lists every role, in a stable order.
var Roles = []Role{RoleServer, RoleAgent, RoleCLI}

// ParseRole returns the role named s, or an error wrapping ErrInvalid.
func ParseRole(s string) (Role, error) {
	if r := Role(s); slices.Contains(Roles, r) {
		return r, nil
	}
	return "", fmt.Errorf("%w: unknown role %q: want server, agent or cli", ErrInvalid, s)
}

// Errors of this package; callers test them with errors.Is.
var (
	// ErrNoIdentity: the certificate carries no tandem URI.
	ErrNoIdentity = errors.New("pki: certificate carries no tandem identity")
	// ErrMalformedIdentity: the certificate carries a tandem URI that does
	// not parse, several of them, or a role its key usages contradict.
	ErrMalformedIdentity = errors.New("pki: malformed tandem identity")
	// ErrWrongCluster: the certificate belongs to another cluster.
	ErrWrongCluster = errors.New("pki: certificate of another cluster")
	// ErrRoleNotAllowed: the certificate's role is not accepted here.
	ErrRoleNotAllowed = errors.New("pki: role not allowed")
	// ErrUnverified: a peer presented a certificate that the handshake did
	// not verify, so it proves nothing.
	ErrUnverified = errors.New("pki: peer certificate not verified")
	// ErrInvalid: a request to create a CA or certificate is invalid (bad
	// name, role, validity, host name or address).
	ErrInvalid = errors.New("pki: invalid request")
	// ErrExists: a file to be written already exists; nothing is overwritten.
	ErrExists = errors.New("pki: file already exists")
	// ErrNoCertificate: the store holds only a CA, no certificate of its own.
	ErrNoCertificate = errors.New("pki: no certificate of our own")
	// ErrIdentityChanged: a reload would change who this process is.
	ErrIdentityChanged = errors.New("pki: new certificate has another identity")
)

// Identity is who a certificate's holder is: its cluster, role and ID.
type Identity struct {
	Cluster string `json:"cluster"`
	Role    Role   `json:"role"`
	ID      string `json:"id"`
}

const (
	uriScheme = "spiffe"
	uriHost   = "tandem"
)

// Validate checks that the cluster and ID are valid names
// ([keys.ValidateName]) and the role is known; errors wrap ErrInvalid.
func (i Identity) Validate() error {
	if err := i.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

func (i Identity) validate() error {
	if err := keys.ValidateName("cluster", i.Cluster); err != nil {
		return err
	}
	if !slices.Contains(Roles, i.Role) {
		return fmt.Errorf("unknown role %q: want server, agent or cli", i.Role)
	}
	kind := string(i.Role)
	if i.Role == RoleCLI {
		kind = "user"
	}
	return keys.ValidateName(kind, i.ID)
}

// URI returns the identity's URI, spiffe://tandem/<cluster>/<role>/<id>.
// Valid names need no escaping.
func (i Identity) URI() *url.URL {
	return &url.URL{Scheme: uriScheme, Host: uriHost, Path: "/" + i.Cluster + "/" + string(i.Role) + "/" + i.ID}
}

// String returns the identity's URI.
func (i Identity) String() string { return i.URI().String() }

// caURI is the URI the CA certificate of cluster carries.
func caURI(cluster string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: uriHost, Path: "/" + cluster}
}

// isTandemURI reports whether u claims to be a tandem identity, well formed
// or not. Case is folded so that SPIFFE://TANDEM/... cannot slip past as
// "someone else's URI".
func isTandemURI(u *url.URL) bool {
	return strings.EqualFold(u.Scheme, uriScheme) && strings.EqualFold(u.Hostname(), uriHost)
}

// tandemPath returns the path segments of a tandem URI, refusing anything
// but the plain form spiffe://tandem/a/b/c.
func tandemPath(u *url.URL) ([]string, error) {
	if u.Scheme != uriScheme || u.Host != uriHost || u.User != nil || u.Opaque != "" ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "" || u.RawPath != "" ||
		!strings.HasPrefix(u.Path, "/") {
		return nil, fmt.Errorf("%w: %q is not of the form spiffe://tandem/<cluster>/<role>/<id>", ErrMalformedIdentity, u.String())
	}
	return strings.Split(u.Path[1:], "/"), nil
}

// ParseURI parses a tandem identity URI strictly; errors wrap
// ErrMalformedIdentity.
func ParseURI(u *url.URL) (Identity, error) {
	parts, err := tandemPath(u)
	if err != nil {
		return Identity{}, err
	}
	if len(parts) != 3 {
		return Identity{}, fmt.Errorf("%w: %q is not of the form spiffe://tandem/<cluster>/<role>/<id>", ErrMalformedIdentity, u.String())
	}
	id := Identity{Cluster: parts[0], Role: Role(parts[1]), ID: parts[2]}
	if err := id.validate(); err != nil {
		return Identity{}, fmt.Errorf("%w: %q: %v", ErrMalformedIdentity, u.String(), err)
	}
	return id, nil
}

// FromCert returns the identity a leaf certificate carries. It does not
// verify the certificate (the TLS handshake or [x509.Certificate.Verify]
// does) nor check its cluster. It refuses a CA certificate, a certificate
// with no tandem URI (ErrNoIdentity), and one whose tandem URIs are
// malformed or several, or whose key usages contradict its role
// (ErrMalformedIdentity).
func FromCert(c *x509.Certificate) (Identity, error) {
	if c == nil {
		return Identity{}, ErrNoIdentity
	}
	if c.IsCA {
		return Identity{}, fmt.Errorf("%w: a CA certificate is not an identity", ErrMalformedIdentity)
	}
	var found []*url.URL
	for _, u := range c.URIs {
		if isTandemURI(u) {
			found = append(found, u)
		}
	}
	switch len(found) {
	case 0:
		return Identity{}, ErrNoIdentity
	case 1:
	default:
		return Identity{}, fmt.Errorf("%w: %d tandem URIs in one certificate", ErrMalformedIdentity, len(found))
	}
	id, err := ParseURI(found[0])
	if err != nil {
		return Identity{}, err
	}
	if err := checkUsage(c, id.Role); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// checkUsage makes a certificate's extended key usages agree with its role:
// a cli certificate must not be able to act as a TLS server, and server and
// agent certificates must be able to act as both.
func checkUsage(c *x509.Certificate, role Role) error {
	has := func(u x509.ExtKeyUsage) bool { return slices.Contains(c.ExtKeyUsage, u) }
	switch {
	case has(x509.ExtKeyUsageAny):
		return fmt.Errorf("%w: %s certificate allows any key usage", ErrMalformedIdentity, role)
	case !has(x509.ExtKeyUsageClientAuth):
		return fmt.Errorf("%w: %s certificate lacks client authentication usage", ErrMalformedIdentity, role)
	case role == RoleCLI && has(x509.ExtKeyUsageServerAuth):
		return fmt.Errorf("%w: cli certificate allows server authentication", ErrMalformedIdentity)
	case role != RoleCLI && !has(x509.ExtKeyUsageServerAuth):
		return fmt.Errorf("%w: %s certificate lacks server authentication usage", ErrMalformedIdentity, role)
	}
	return nil
}

// usagesOf returns the extended key usages a certificate of role gets.
func usagesOf(role Role) []x509.ExtKeyUsage {
	if role == RoleCLI {
		return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
}

// CACluster returns the cluster a tandem CA certificate issues for, from its
// spiffe://tandem/<cluster> URI.
func CACluster(c *x509.Certificate) (string, error) {
	if !c.IsCA {
		return "", fmt.Errorf("%w: not a CA certificate", ErrNoIdentity)
	}
	var cluster string
	for _, u := range c.URIs {
		if !isTandemURI(u) {
			continue
		}
		parts, err := tandemPath(u)
		if err != nil || len(parts) != 1 || keys.ValidateName("cluster", parts[0]) != nil {
			return "", fmt.Errorf("%w: CA URI %q is not of the form spiffe://tandem/<cluster>", ErrMalformedIdentity, u.String())
		}
		if cluster != "" {
			return "", fmt.Errorf("%w: several tandem URIs in a CA certificate", ErrMalformedIdentity)
		}
		cluster = parts[0]
	}
	if cluster == "" {
		return "", ErrNoIdentity
	}
	return cluster, nil
}

// check refuses an identity of another cluster, or whose role is not among
// roles (any role when roles is empty).
func (i Identity) check(cluster string, roles []Role) error {
	if i.Cluster != cluster {
		return fmt.Errorf("%w: %s is of cluster %q, this is cluster %q", ErrWrongCluster, i, i.Cluster, cluster)
	}
	if len(roles) > 0 && !slices.Contains(roles, i.Role) {
		return fmt.Errorf("%w: %s is a %s certificate; accepted here: %s", ErrRoleNotAllowed, i, i.Role, joinRoles(roles))
	}
	return nil
}

func joinRoles(roles []Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

// FromConnectionState returns the identity of the peer of a TLS connection,
// taken from the chain the handshake verified, and checks it belongs to
// cluster. It returns nil and no error when the peer sent no certificate
// (the API's callers with a token only), and ErrUnverified when it sent one
// that the handshake did not verify.
func FromConnectionState(cs *tls.ConnectionState, cluster string) (*Identity, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return nil, nil
	}
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil, ErrUnverified
	}
	id, err := FromCert(cs.VerifiedChains[0][0])
	if err != nil {
		return nil, err
	}
	if err := id.check(cluster, nil); err != nil {
		return nil, err
	}
	return &id, nil
}

// FromRequest is FromConnectionState for an HTTP request: nil and no error
// for a request without TLS or without a client certificate.
func FromRequest(r *http.Request, cluster string) (*Identity, error) {
	return FromConnectionState(r.TLS, cluster)
}
