package haproxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
	"github.com/tandemhq/tandem/internal/lb/lbtest"
	"github.com/tandemhq/tandem/internal/pki"
)

// getTLS returns the body of GET https://addr/ and the connection's state.
func getTLS(c *http.Client, addr string) (string, *tls.ConnectionState, error) {
	resp, err := c.Get("https://" + addr + "/")
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", resp.TLS, fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return string(b), resp.TLS, nil
}

// TestLBTLS runs HAProxy with TLS on both sides, as tandem lb does for a
// cluster whose servers serve https: the frontend serves the proxy's
// certificate (TLS 1.3), the servers are verified against the cluster's CA
// and the common name of its server certificates, checks included, and
// see the proxy's client certificate. A server whose certificate is of
// another CA, or is an agent's, gets no request at all.
func TestLBTLS(t *testing.T) {
	needHAProxy(t)
	p := lbtest.NewPKI(t, "prod")
	lbCert, lbKey := p.Issue(t, pki.RoleServer, "lb")
	serve := func(name string, role pki.Role, other bool, active bool) *lbtest.Server {
		if other {
			cert, key := p.IssueOther(t, role, name)
			return lbtest.StartStranger(t, name, cert, key, active)
		}
		cert, key := p.Issue(t, role, name)
		return lbtest.StartServer(t, name, cert, key, p.CAFile, active)
	}
	rm1 := serve("rm1", pki.RoleServer, false, true)
	rm2 := serve("rm2", pki.RoleServer, false, false)
	stranger := serve("rm3", pki.RoleServer, true, true)
	agent := serve("w1", pki.RoleAgent, false, true)
	tlsServer := func(s *lbtest.Server, up bool) lb.Server {
		return lb.Server{Name: s.Name, Addr: s.Addr, Up: up, TLS: true}
	}

	api, strangers, agents := freeAddr(t), freeAddr(t), freeAddr(t)
	desired := func(active string) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{
			{Name: "tandem", Listen: api, Health: "/isActive", Mode: lb.ModeActive, ListenTLS: true,
				Servers: []lb.Server{tlsServer(rm1, active == "rm1"), tlsServer(rm2, active == "rm2")}},
			{Name: "stranger", Listen: strangers, Health: "/isActive", Mode: lb.ModeActive, Servers: []lb.Server{tlsServer(stranger, true)}},
			{Name: "agent", Listen: agents, Health: "/isActive", Mode: lb.ModeActive, Servers: []lb.Server{tlsServer(agent, true)}},
		}}
	}
	drv := startManaged(t, fastChecks, desired("rm1"), func(c *Config) {
		c.TLS = lb.TLS{BackendCA: p.CAFile, BackendCert: lbCert, BackendKey: lbKey, ServerName: pki.ServerCommonName("prod"),
			Cert: lbCert, Key: lbKey}
	})
	client := p.Client(t)

	waitFor(t, 10*time.Second, "rm1 through the proxy's TLS frontend", func() error {
		got, cs, err := getTLS(client, api)
		switch {
		case err != nil:
			return err
		case got != "rm1":
			return fmt.Errorf("got %q, want rm1", got)
		case cs.Version != tls.VersionTLS13:
			return fmt.Errorf("frontend TLS version %x, want TLS 1.3", cs.Version)
		}
		return nil
	})
	if got, want := rm1.Client(), "spiffe://tandem/prod/server/lb"; got != want {
		t.Errorf("client certificate rm1 saw: got %q, want %q", got, want)
	}
	if _, err := get(fresh, api); err == nil {
		t.Errorf("plain http to the TLS frontend: got an answer, want none")
	}

	t.Run("the active moves", func(t *testing.T) {
		rm1.Active.Store(false)
		rm2.Active.Store(true)
		if a := apply(t, drv, desired("rm2")); a.Reloaded {
			t.Errorf("change of active: reloaded, want the runtime API")
		}
		waitFor(t, 5*time.Second, "rm2 through the proxy", func() error {
			got, _, err := getTLS(client, api)
			if err == nil && got != "rm2" {
				err = fmt.Errorf("got %q, want rm2", got)
			}
			return err
		})
	})

	t.Run("a server with TLS added at run time", func(t *testing.T) {
		rm4 := serve("rm4", pki.RoleServer, false, true)
		d := desired("")
		d.Backends[2].Servers = append(d.Backends[2].Servers, tlsServer(rm4, true))
		d.Backends[2].Servers[0].Up = false
		if a := apply(t, drv, d); a.Reloaded {
			t.Errorf("adding a TLS server: reloaded, want the runtime API (add server ... ssl)")
		}
		waitFor(t, 5*time.Second, "rm4 through the proxy", func() error {
			got, err := get(fresh, agents)
			if err == nil && got != "rm4" {
				err = fmt.Errorf("got %q, want rm4", got)
			}
			return err
		})
		apply(t, drv, desired("rm2"))
	})

	t.Run("certificates the proxy refuses", func(t *testing.T) {
		for _, tc := range []struct {
			why    string
			listen string
			s      *lbtest.Server
		}{
			{"another CA", strangers, stranger},
			{"an agent's certificate", agents, agent},
		} {
			for range 3 {
				if got, err := get(fresh, tc.listen); err == nil {
					t.Errorf("%s: got %q through the proxy, want an error", tc.why, got)
				}
			}
			if n := tc.s.Requests.Load(); n != 0 {
				t.Errorf("%s: the server got %d requests (checks included), want 0", tc.why, n)
			}
		}
	})

	t.Run("ReloadTLS serves a new certificate", func(t *testing.T) {
		before := servedSerial(t, client, api)
		newCert, newKey := p.Issue(t, pki.RoleServer, "lb", "server-lb-new")
		for _, mv := range [][2]string{{newCert, lbCert}, {newKey, lbKey}} {
			if err := os.Rename(mv[0], mv[1]); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := drv.ReloadTLS(ctx); err != nil {
			t.Fatalf("ReloadTLS: %v", err)
		}
		after := servedSerial(t, client, api)
		if after == before {
			t.Errorf("after ReloadTLS the frontend still serves serial %s", before)
		}
		waitFor(t, 5*time.Second, "rm2 through the proxy after the reload", func() error {
			got, _, err := getTLS(client, api)
			if err == nil && got != "rm2" {
				err = fmt.Errorf("got %q, want rm2", got)
			}
			return err
		})

		// A key that is not the certificate's changes nothing.
		other, _ := p.Issue(t, pki.RoleServer, "lb", "server-lb-other")
		if err := os.Rename(other, lbCert); err != nil {
			t.Fatal(err)
		}
		if err := drv.ReloadTLS(ctx); err == nil {
			t.Errorf("ReloadTLS with a certificate that is not the key's: got no error")
		}
		if got := servedSerial(t, client, api); got != after {
			t.Errorf("after a refused ReloadTLS: serves serial %s, want %s (the one it had)", got, after)
		}
	})
}

// servedSerial is the serial number of the certificate the frontend at
// addr serves.
func servedSerial(t *testing.T, c *http.Client, addr string) string {
	t.Helper()
	_, cs, err := getTLS(c, addr)
	if cs == nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	return cs.PeerCertificates[0].SerialNumber.String()
}

// TestLBTLSNeedsFiles: a server with TLS and no CA to verify it, or a TLS
// listener without a certificate, is refused before HAProxy runs.
func TestLBTLSNeedsFiles(t *testing.T) {
	needHAProxy(t)
	drv, err := New(DefaultConfig(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	for _, b := range []lb.Backend{
		{Name: "t", Listen: freeAddr(t), Mode: lb.ModeActive, Servers: []lb.Server{{Name: "a", Addr: "127.0.0.1:1", TLS: true}}},
		{Name: "t", Listen: freeAddr(t), Mode: lb.ModeActive, ListenTLS: true},
	} {
		err := drv.Start(context.Background(), lb.Desired{Backends: []lb.Backend{b}})
		if err == nil || !strings.Contains(err.Error(), "--") {
			t.Errorf("%+v: got %v, want an error naming the flag", b, err)
		}
		if drv.proc.Load() != nil {
			t.Errorf("%+v: a proxy was started", b)
		}
	}
}
