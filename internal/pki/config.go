package pki

import (
	"crypto/tls"
	"fmt"
)

// ServerOptions tunes ServerConfig.
type ServerOptions struct {
	// RequireClientCert refuses a handshake without a client certificate
	// (tls.RequireAndVerifyClientCert), for listeners that only servers or
	// agents call. Otherwise a certificate is verified if given
	// (tls.VerifyClientCertIfGiven), so that the public API also takes
	// browsers and tools that bring a token instead.
	RequireClientCert bool
	// ClientRoles, if not empty, are the only roles a client certificate
	// may carry; others are refused in the handshake.
	ClientRoles []Role
	// MinVersion is the oldest TLS version accepted; 0 means TLS 1.3.
	MinVersion uint16
	// NextProtos are the ALPN protocols offered; nil means http/1.1 only.
	// (The configuration used for each handshake is built afresh, so
	// net/http's adding "h2" to the returned Config has no effect: offer it
	// here if the server serves HTTP/2.)
	NextProtos []string
}

// ServerConfig returns a TLS configuration for a server or agent that
// presents the store's current certificate and verifies client
// certificates against the store's current CA, refusing in the handshake
// those of another cluster or of a role not in o.ClientRoles. The
// configuration for each handshake is made from the store when the client
// says hello, so a Reload applies to the next connection. Session tickets
// are off: every connection does a full handshake and is verified against
// the current certificates. It fails if the store has no certificate
// (ErrNoCertificate) or a cli one (ErrRoleNotAllowed).
func ServerConfig(s *Store, o ServerOptions) (*tls.Config, error) {
	id := s.Identity()
	if id == nil {
		return nil, fmt.Errorf("server TLS: %w", ErrNoCertificate)
	}
	if id.Role == RoleCLI {
		return nil, fmt.Errorf("server TLS: %w: %s is a cli certificate, which cannot serve", ErrRoleNotAllowed, id)
	}
	minV := minVersion(o.MinVersion)
	protos := o.NextProtos
	if protos == nil {
		protos = []string{"http/1.1"}
	}
	auth := tls.VerifyClientCertIfGiven
	if o.RequireClientCert {
		auth = tls.RequireAndVerifyClientCert
	}
	roles := append([]Role(nil), o.ClientRoles...)
	return &tls.Config{
		MinVersion: minV,
		// Set so that net/http sees a certificate source; GetConfigForClient
		// answers every handshake.
		GetCertificate: s.GetCertificate,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			// m.cert is set: the store had a certificate above, and
			// Reload never swaps in material without one (identity kept).
			m := s.cur.Load()
			return &tls.Config{
				MinVersion:             minV,
				Certificates:           []tls.Certificate{*m.cert},
				ClientCAs:              m.pool,
				ClientAuth:             auth,
				NextProtos:             protos,
				SessionTicketsDisabled: true,
				VerifyConnection: func(cs tls.ConnectionState) error {
					_, err := m.verifyPeer(&cs, roles)
					return err
				},
			}, nil
		},
	}, nil
}

// ClientOptions tunes ClientConfig.
type ClientOptions struct {
	// ServerRoles, if not empty, are the only roles the server's
	// certificate may carry (RoleServer to call servers, RoleAgent to call
	// agents). A cli certificate can never serve: it lacks the usage.
	ServerRoles []Role
	// MinVersion is the oldest TLS version accepted; 0 means TLS 1.3.
	MinVersion uint16
}

// ClientConfig returns a TLS configuration for calling servers or agents of
// the store's cluster. The server's certificate must chain to the CA, be
// valid now for the host name or address dialled, and carry an identity of
// the cluster with a role in o.ServerRoles. The client presents the store's
// current certificate, if it has one, as of each handshake, so a rotated
// client certificate applies to the next connection.
//
// The CA pool is the store's when ClientConfig is called: the standard
// library verifies host names only against a fixed pool (a custom verifier
// cannot learn an IP address dialled). After a Reload that changes the CA,
// build a new configuration for new connections.
func ClientConfig(s *Store, o ClientOptions) *tls.Config {
	roles := append([]Role(nil), o.ServerRoles...)
	return &tls.Config{
		MinVersion:           minVersion(o.MinVersion),
		RootCAs:              s.Pool(),
		GetClientCertificate: s.GetClientCertificate,
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := s.VerifyPeer(&cs, roles...)
			if err == nil && id == nil {
				err = ErrUnverified // unreachable: a TLS server always presents a certificate
			}
			return err
		},
	}
}

func minVersion(v uint16) uint16 {
	if v == 0 {
		return tls.VersionTLS13
	}
	return v
}
