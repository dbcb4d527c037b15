package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
)

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestFromCert(t *testing.T) {
	ca := newCA(t, "dev")
	uris := func(us ...string) func(*x509.Certificate) {
		return func(c *x509.Certificate) {
			c.URIs = nil
			for _, u := range us {
				c.URIs = append(c.URIs, mustURL(t, u))
			}
		}
	}
	withUsage := func(role Role, usages ...x509.ExtKeyUsage) func(*x509.Certificate) {
		return func(c *x509.Certificate) {
			c.URIs = []*url.URL{Identity{Cluster: "dev", Role: role, ID: "x"}.URI()}
			c.ExtKeyUsage = usages
		}
	}
	server, client, any := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageAny
	tests := []struct {
		name    string
		edit    func(*x509.Certificate)
		want    Identity
		wantErr error
	}{
		{"server", nil, Identity{"dev", RoleServer, "rm1"}, nil},
		{"agent", withUsage(RoleAgent, server, client), Identity{"dev", RoleAgent, "x"}, nil},
		{"cli", withUsage(RoleCLI, client), Identity{"dev", RoleCLI, "x"}, nil},
		{"other URIs ignored", uris("https://example.com/a", "spiffe://example.org/dev/server/rm2", "spiffe://tandem/dev/server/rm1"), Identity{"dev", RoleServer, "rm1"}, nil},
		{"scheme case folded by URL parsing", uris("SPIFFE://tandem/dev/server/rm1"), Identity{"dev", RoleServer, "rm1"}, nil},
		{"no URI", uris(), Identity{}, ErrNoIdentity},
		{"only someone else's URI", uris("spiffe://example.org/dev/server/rm1"), Identity{}, ErrNoIdentity},
		{"two identities", uris("spiffe://tandem/dev/server/rm1", "spiffe://tandem/dev/agent/w1"), Identity{}, ErrMalformedIdentity},
		{"same identity twice", uris("spiffe://tandem/dev/server/rm1", "spiffe://tandem/dev/server/rm1"), Identity{}, ErrMalformedIdentity},
		{"unknown role", uris("spiffe://tandem/dev/admin/root"), Identity{}, ErrMalformedIdentity},
		{"role in capitals", uris("spiffe://tandem/dev/SERVER/rm1"), Identity{}, ErrMalformedIdentity},
		{"role and ID swapped", uris("spiffe://tandem/dev/rm1/server"), Identity{}, ErrMalformedIdentity},
		{"no cluster", uris("spiffe://tandem/server/rm1"), Identity{}, ErrMalformedIdentity},
		{"extra segment", uris("spiffe://tandem/dev/agent/w1/w2"), Identity{}, ErrMalformedIdentity},
		{"trailing slash", uris("spiffe://tandem/dev/agent/w1/"), Identity{}, ErrMalformedIdentity},
		{"escaped slash", uris("spiffe://tandem/dev/agent/w1%2Fw2"), Identity{}, ErrMalformedIdentity},
		{"dot-dot ID", uris("spiffe://tandem/dev/agent/.."), Identity{}, ErrMalformedIdentity},
		{"empty ID", uris("spiffe://tandem/dev/agent/"), Identity{}, ErrMalformedIdentity},
		{"query", uris("spiffe://tandem/dev/agent/w1?as=w2"), Identity{}, ErrMalformedIdentity},
		{"fragment", uris("spiffe://tandem/dev/agent/w1#w2"), Identity{}, ErrMalformedIdentity},
		{"user", uris("spiffe://w2@tandem/dev/agent/w1"), Identity{}, ErrMalformedIdentity},
		{"port", uris("spiffe://tandem:1/dev/agent/w1"), Identity{}, ErrMalformedIdentity},
		{"host in capitals", uris("spiffe://TANDEM/dev/agent/w1"), Identity{}, ErrMalformedIdentity},
		{"CA URI on a leaf", uris("spiffe://tandem/dev"), Identity{}, ErrMalformedIdentity},
		{"cli that can serve", withUsage(RoleCLI, server, client), Identity{}, ErrMalformedIdentity},
		{"server that cannot serve", withUsage(RoleServer, client), Identity{}, ErrMalformedIdentity},
		{"agent that cannot call", withUsage(RoleAgent, server), Identity{}, ErrMalformedIdentity},
		{"any usage", withUsage(RoleAgent, any), Identity{}, ErrMalformedIdentity},
		{"no usage", withUsage(RoleCLI), Identity{}, ErrMalformedIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromCert(craft(t, ca, tt.edit).Leaf)
			if !errors.Is(err, tt.wantErr) || tt.wantErr == nil && err != nil {
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if _, err := FromCert(ca.Cert); !errors.Is(err, ErrMalformedIdentity) {
		t.Errorf("CA certificate: got %v, want ErrMalformedIdentity", err)
	}
	if _, err := FromCert(nil); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("nil: got %v, want ErrNoIdentity", err)
	}
}

func TestIdentityURIRoundTrip(t *testing.T) {
	for _, id := range []Identity{{"dev", RoleServer, "rm1"}, {"Prod_2", RoleAgent, "w-1.eu"}, {"c", RoleCLI, "alice"}} {
		u := id.URI()
		if got, want := u.String(), "spiffe://tandem/"+id.Cluster+"/"+string(id.Role)+"/"+id.ID; got != want {
			t.Errorf("got %s, want %s", got, want)
		}
		got, err := ParseURI(mustURL(t, u.String()))
		if err != nil || got != id {
			t.Errorf("ParseURI(%s): got %+v, %v; want %+v", u, got, err, id)
		}
	}
	for _, bad := range []Identity{{"", RoleServer, "rm1"}, {"dev", "root", "x"}, {"dev", RoleAgent, "a/b"}, {"a/b", RoleAgent, "w1"}, {"dev", RoleCLI, ""}} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("Validate(%+v): got %v, want ErrInvalid", bad, err)
		}
	}
}

func TestFromConnectionState(t *testing.T) {
	ca := newCA(t, "dev")
	leaf := issue(t, ca, RoleAgent, "w1").Cert
	verified := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf, ca.Cert}}}

	if id, err := FromConnectionState(nil, "dev"); id != nil || err != nil {
		t.Errorf("no TLS: got %v, %v; want nil, nil", id, err)
	}
	if id, err := FromConnectionState(&tls.ConnectionState{}, "dev"); id != nil || err != nil {
		t.Errorf("no client certificate: got %v, %v; want nil, nil", id, err)
	}
	if _, err := FromConnectionState(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}, "dev"); !errors.Is(err, ErrUnverified) {
		t.Errorf("unverified certificate: got %v, want ErrUnverified", err)
	}
	if _, err := FromConnectionState(verified, "prod"); !errors.Is(err, ErrWrongCluster) {
		t.Errorf("certificate of dev in prod: got %v, want ErrWrongCluster", err)
	}
	if id, err := FromConnectionState(verified, "dev"); err != nil || *id != (Identity{"dev", RoleAgent, "w1"}) {
		t.Errorf("got %v, %v; want dev's agent w1", id, err)
	}
	if id, err := FromRequest(&http.Request{}, "dev"); id != nil || err != nil {
		t.Errorf("plain HTTP request: got %v, %v; want nil, nil", id, err)
	}
}

// TestFromRequestOverHTTPS runs an HTTPS server built on ServerConfig, as
// the API will be, and checks what FromRequest sees from clients with and
// without certificates.
func TestFromRequestOverHTTPS(t *testing.T) {
	ca := newCA(t, "dev")
	srvStore := newStore(t, issue(t, ca, RoleServer, "rm1"), ca)
	cfg, err := ServerConfig(srvStore, ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{TLSConfig: cfg, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := FromRequest(r, srvStore.Cluster())
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		json.NewEncoder(w).Encode(id)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: %v", err)
		}
	})

	get := func(client *Store) string {
		t.Helper()
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: ClientConfig(client, ClientOptions{ServerRoles: []Role{RoleServer}})}}
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://" + ln.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("got %d %s, %v", resp.StatusCode, b, err)
		}
		return string(b)
	}
	if got, want := get(newStore(t, issue(t, ca, RoleCLI, "alice"), ca)), `{"cluster":"dev","role":"cli","id":"alice"}`+"\n"; got != want {
		t.Errorf("with a cli certificate: got %s, want %s", got, want)
	}
	if got, want := get(newStore(t, nil, ca)), "null\n"; got != want {
		t.Errorf("without a certificate: got %s, want %s", got, want)
	}
}
