package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
)

// TestHandshakeRefusals makes real handshakes over loopback sockets with
// bad certificates on either side and checks the refusing side's own
// error, and the alert the other side receives.
func TestHandshakeRefusals(t *testing.T) {
	ca := newCA(t, "dev")
	other := newCA(t, "dev") // another CA, even of a cluster with the same name
	srvStore := newStore(t, issue(t, ca, RoleServer, "rm1"), ca)
	cliStore := newStore(t, issue(t, ca, RoleCLI, "alice"), ca)
	agentStore := newStore(t, issue(t, ca, RoleAgent, "w1"), ca)
	caOnly := newStore(t, nil, ca)

	serverCfg := func(o ServerOptions) *tls.Config {
		cfg, err := ServerConfig(srvStore, o)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	verifyIfGiven := serverCfg(ServerOptions{})
	required := serverCfg(ServerOptions{RequireClientCert: true})
	serversOnly := serverCfg(ServerOptions{RequireClientCert: true, ClientRoles: []Role{RoleServer}})
	cliClient := ClientConfig(cliStore, ClientOptions{ServerRoles: []Role{RoleServer}})
	trusting := func(certs ...tls.Certificate) *tls.Config { return rawClient(pool(ca), certs...) }

	// A server certificate of cluster prod, signed by dev's CA: one CA
	// shared by mistake must still keep the clusters apart.
	prod := craft(t, ca, func(c *x509.Certificate) {
		c.URIs[0] = Identity{Cluster: "prod", Role: RoleServer, ID: "rm1"}.URI()
	})

	unknownCA := func(err error) string {
		if _, ok := errors.AsType[x509.UnknownAuthorityError](err); !ok {
			return "want x509.UnknownAuthorityError"
		}
		return ""
	}
	invalid := func(detail string) func(error) string {
		return func(err error) string {
			ce, ok := errors.AsType[x509.CertificateInvalidError](err)
			if !ok || ce.Reason != x509.Expired || !strings.Contains(ce.Detail, detail) {
				return "want x509.CertificateInvalidError{Reason: Expired} with " + detail
			}
			return ""
		}
	}
	is := func(target error) func(error) string {
		return func(err error) string {
			if !errors.Is(err, target) {
				return "want " + target.Error()
			}
			return ""
		}
	}
	contains := func(s string) func(error) string {
		return func(err error) string {
			if err == nil || !strings.Contains(err.Error(), s) {
				return "want an error containing " + s
			}
			return ""
		}
	}

	tests := []struct {
		name       string
		srv, cli   *tls.Config
		serverName string
		// server: the refusing server's error; client: the alert its
		// client reads (or the reverse when the client refuses).
		server, client func(error) string
	}{
		{"client cert of another CA", verifyIfGiven, trusting(keyPair(t, issue(t, other, RoleCLI, "alice"))), "127.0.0.1",
			unknownCA, contains("remote error: tls: unknown certificate authority")},
		{"expired client cert", verifyIfGiven, trusting(keyPair(t, issue(t, ca, RoleCLI, "old", expired()))), "127.0.0.1",
			invalid("is after"), contains("remote error: tls: expired certificate")},
		{"client cert not yet valid", verifyIfGiven, trusting(keyPair(t, issue(t, ca, RoleCLI, "new", notYetValid()))), "127.0.0.1",
			invalid("is before"), contains("remote error: tls: expired certificate")},
		{"no client cert where required", required, ClientConfig(caOnly, ClientOptions{}), "127.0.0.1",
			contains("tls: client didn't provide a certificate"), contains("remote error: tls: certificate required")},
		{"agent cert on a servers-only listener", serversOnly, ClientConfig(agentStore, ClientOptions{}), "127.0.0.1",
			is(ErrRoleNotAllowed), contains("remote error: tls: bad certificate")},
		{"cli cert on a servers-only listener", serversOnly, cliClient, "localhost",
			is(ErrRoleNotAllowed), contains("remote error: tls: bad certificate")},
		{"client cert of another cluster", verifyIfGiven, trusting(prod), "127.0.0.1",
			is(ErrWrongCluster), contains("remote error: tls: bad certificate")},
		{"TLS 1.2 client", verifyIfGiven, &tls.Config{RootCAs: pool(ca), MaxVersion: tls.VersionTLS12}, "127.0.0.1",
			contains("client offered only unsupported versions"), contains("remote error: tls: protocol version not supported")},

		// The client refuses; the server reads its alert.
		{"server cert of another CA", rawServer(keyPair(t, issue(t, other, RoleServer, "rm1"))), cliClient, "127.0.0.1",
			contains("remote error: tls: bad certificate"), unknownCA},
		{"expired server cert", rawServer(keyPair(t, issue(t, ca, RoleServer, "old", expired()))), cliClient, "127.0.0.1",
			contains("remote error: tls: bad certificate"), invalid("is after")},
		{"server cert not yet valid", rawServer(keyPair(t, issue(t, ca, RoleServer, "new", notYetValid()))), cliClient, "localhost",
			contains("remote error: tls: bad certificate"), invalid("is before")},
		{"agent posing as a server", mustServerConfig(t, agentStore), cliClient, "127.0.0.1",
			contains("remote error: tls: bad certificate"), is(ErrRoleNotAllowed)},
		{"server of another cluster", rawServer(prod), cliClient, "127.0.0.1",
			contains("remote error: tls: bad certificate"), is(ErrWrongCluster)},
		{"host name not in the cert", verifyIfGiven, cliClient, "rm9.example.com",
			contains("remote error: tls: bad certificate"), func(err error) string {
				if _, ok := errors.AsType[x509.HostnameError](err); !ok {
					return "want x509.HostnameError"
				}
				return ""
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := handshake(t, tt.srv, tt.cli, tt.serverName)
			if r.reply == "ok" {
				t.Fatalf("the handshake succeeded: server saw %d certs, want it refused", len(r.server.PeerCertificates))
			}
			if msg := tt.server(r.serverErr); msg != "" {
				t.Errorf("server: got %v, %s", r.serverErr, msg)
			}
			if msg := tt.client(r.clientErr); msg != "" {
				t.Errorf("client: got %v, %s", r.clientErr, msg)
			}
		})
	}
}

// mustServerConfig is ServerConfig with default options.
func mustServerConfig(t *testing.T, s *Store) *tls.Config {
	t.Helper()
	cfg, err := ServerConfig(s, ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestHandshakeAccepted checks the handshakes that must succeed, and the
// identity each side then sees.
func TestHandshakeAccepted(t *testing.T) {
	ca := newCA(t, "dev")
	srvStore := newStore(t, issue(t, ca, RoleServer, "rm1"), ca)
	agentStore := newStore(t, issue(t, ca, RoleAgent, "w1"), ca)
	cliStore := newStore(t, issue(t, ca, RoleCLI, "alice"), ca)
	caOnly := newStore(t, nil, ca)

	tests := []struct {
		name       string
		srv        *Store
		o          ServerOptions
		cli        *Store
		co         ClientOptions
		serverName string
		wantPeer   *Identity // as the server sees the client
		wantServer Identity  // as the client sees the server
	}{
		{"cli to server", srvStore, ServerOptions{}, cliStore, ClientOptions{ServerRoles: []Role{RoleServer}}, "127.0.0.1",
			&Identity{"dev", RoleCLI, "alice"}, Identity{"dev", RoleServer, "rm1"}},
		{"token-only client to the API", srvStore, ServerOptions{}, caOnly, ClientOptions{}, "localhost",
			nil, Identity{"dev", RoleServer, "rm1"}},
		{"agent to server, peers only", srvStore, ServerOptions{RequireClientCert: true, ClientRoles: []Role{RoleAgent, RoleServer}}, agentStore, ClientOptions{ServerRoles: []Role{RoleServer}}, "127.0.0.1",
			&Identity{"dev", RoleAgent, "w1"}, Identity{"dev", RoleServer, "rm1"}},
		{"server to agent's log server", agentStore, ServerOptions{RequireClientCert: true}, srvStore, ClientOptions{ServerRoles: []Role{RoleAgent}}, "localhost",
			&Identity{"dev", RoleServer, "rm1"}, Identity{"dev", RoleAgent, "w1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ServerConfig(tt.srv, tt.o)
			if err != nil {
				t.Fatal(err)
			}
			r := handshake(t, cfg, ClientConfig(tt.cli, tt.co), tt.serverName)
			if r.serverErr != nil || r.clientErr != nil || r.reply != "ok" {
				t.Fatalf("got server error %v, client error %v, reply %q; want a connection", r.serverErr, r.clientErr, r.reply)
			}
			if r.server.Version != tls.VersionTLS13 {
				t.Errorf("got TLS version %x, want 1.3", r.server.Version)
			}
			peer, err := tt.srv.VerifyPeer(&r.server)
			if err != nil {
				t.Fatal(err)
			}
			if (peer == nil) != (tt.wantPeer == nil) || peer != nil && *peer != *tt.wantPeer {
				t.Errorf("server sees %v, want %v", peer, tt.wantPeer)
			}
			srv, err := tt.cli.VerifyPeer(&r.client)
			if err != nil {
				t.Fatal(err)
			}
			if srv == nil || *srv != tt.wantServer {
				t.Errorf("client sees %v, want %v", srv, tt.wantServer)
			}
			if r.server.DidResume || r.server.NegotiatedProtocol != "http/1.1" && r.server.NegotiatedProtocol != "" {
				t.Errorf("got resumed %v, protocol %q", r.server.DidResume, r.server.NegotiatedProtocol)
			}
		})
	}
}

func TestServerConfigNeedsAServingCertificate(t *testing.T) {
	ca := newCA(t, "dev")
	if _, err := ServerConfig(newStore(t, nil, ca), ServerOptions{}); !errors.Is(err, ErrNoCertificate) {
		t.Errorf("CA only: got %v, want ErrNoCertificate", err)
	}
	if _, err := ServerConfig(newStore(t, issue(t, ca, RoleCLI, "alice"), ca), ServerOptions{}); !errors.Is(err, ErrRoleNotAllowed) {
		t.Errorf("cli certificate: got %v, want ErrRoleNotAllowed", err)
	}
}
