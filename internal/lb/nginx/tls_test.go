package nginx

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
	"github.com/tandemhq/tandem/internal/lb/lbtest"
	"github.com/tandemhq/tandem/internal/pki"
)

// TestLBTLS runs NGINX with TLS on both sides, as tandem lb does for a
// cluster whose servers serve https: the listener serves the proxy's
// certificate (TLS 1.3), the upstream is https, verified against the
// cluster's CA, and the servers see the proxy's client certificate. A
// standby's 307 to https://<active> is followed over TLS too. A server
// whose certificate is of another CA gets no request at all.
func TestLBTLS(t *testing.T) {
	requireNginx(t)
	p := lbtest.NewPKI(t, "prod")
	lbCert, lbKey := p.Issue(t, pki.RoleServer, "lb")
	serve := func(name string, other, active bool) *lbtest.Server {
		if other {
			cert, key := p.IssueOther(t, pki.RoleServer, name)
			return lbtest.StartStranger(t, name, cert, key, active)
		}
		cert, key := p.Issue(t, pki.RoleServer, name)
		return lbtest.StartServer(t, name, cert, key, p.CAFile, active)
	}
	rm1, rm2 := serve("rm1", false, true), serve("rm2", false, false)
	stranger := serve("rm3", true, true)
	active := rm1
	rm2.Redirect = func() string { return active.Addr }
	tlsServer := func(s *lbtest.Server, up bool) lb.Server {
		return lb.Server{Name: s.Name, Addr: s.Addr, Up: up, TLS: true}
	}
	api, strangers := freeAddr(t), freeAddr(t)
	desired := func(up string) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{
			{Name: "tandem", Listen: api, Health: "/isActive", Mode: lb.ModeActive, ListenTLS: true,
				Servers: []lb.Server{tlsServer(rm1, up == "rm1"), tlsServer(rm2, up == "rm2")}},
			{Name: "stranger", Listen: strangers, Mode: lb.ModeActive, Servers: []lb.Server{tlsServer(stranger, true)}},
		}}
	}
	d := newDriver(t, func(c *Config) {
		c.TLS = lb.TLS{BackendCA: p.CAFile, BackendCert: lbCert, BackendKey: lbKey, Cert: lbCert, Key: lbKey}
	})
	start(t, d, desired("rm1"))
	client := p.Client(t)
	url := "https://" + api + "/v1/jobs"

	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	if resp.TLS.Version != tls.VersionTLS13 {
		t.Errorf("listener's TLS version: got %x, want TLS 1.3", resp.TLS.Version)
	}
	mustCall(t, client, "GET", url, "", "rm1")
	if got, want := rm1.Client(), "spiffe://tandem/prod/server/lb"; got != want {
		t.Errorf("client certificate rm1 saw: got %q, want %q", got, want)
	}
	if code, _, _, err := call(newConnClient(), "GET", "http://"+api+"/", ""); err == nil && code == http.StatusOK {
		t.Errorf("plain http to the TLS listener: got 200, want a refusal")
	}

	t.Run("a standby's 307 to https is followed", func(t *testing.T) {
		// tandem lb has not heard yet: rm2 is up, and a standby.
		apply(t, d, desired("rm2"))
		mustCall(t, client, "POST", url, "body", "rm1")
	})

	t.Run("the active moves", func(t *testing.T) {
		rm1.Active.Store(false)
		rm2.Active.Store(true)
		active = rm2
		rm1.Redirect = func() string { return active.Addr }
		apply(t, d, desired("rm2"))
		mustCall(t, client, "GET", url, "", "rm2")
		// The old active is killed: still rm2.
		rm1.Close()
		for range 5 {
			mustCall(t, client, "GET", url, "", "rm2")
		}
	})

	t.Run("a certificate of another CA", func(t *testing.T) {
		for range 3 {
			code, body, _, err := call(newConnClient(), "GET", "http://"+strangers+"/", "")
			if err == nil && code == http.StatusOK {
				t.Errorf("got 200 %q through the proxy, want a refusal", body)
			}
		}
		if n := stranger.Requests.Load(); n != 0 {
			t.Errorf("the server got %d requests, want 0", n)
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
		if err := d.ReloadTLS(ctx); err != nil {
			t.Fatalf("ReloadTLS: %v", err)
		}
		after := servedSerial(t, client, api)
		if after == before {
			t.Errorf("after ReloadTLS the listener still serves serial %s", before)
		}
		mustCall(t, client, "GET", url, "", "rm2")

		// A certificate that is not the key's changes nothing: nginx -t
		// refuses it and NGINX keeps what it serves.
		other, _ := p.Issue(t, pki.RoleServer, "lb", "server-lb-other")
		if err := os.Rename(other, lbCert); err != nil {
			t.Fatal(err)
		}
		if err := d.ReloadTLS(ctx); err == nil {
			t.Errorf("ReloadTLS with a certificate that is not the key's: got no error")
		}
		if got := servedSerial(t, client, api); got != after {
			t.Errorf("after a refused ReloadTLS: serves serial %s, want %s (the one it had)", got, after)
		}
		mustCall(t, client, "GET", url, "", "rm2")
	})
}

// servedSerial is the serial number of the certificate the listener at
// addr serves.
func servedSerial(t *testing.T, c *http.Client, addr string) string {
	t.Helper()
	resp, err := c.Get("https://" + addr + GenerationPath)
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	resp.Body.Close()
	return resp.TLS.PeerCertificates[0].SerialNumber.String()
}

// TestLBTLSNeedsFiles: a server with TLS and no CA to verify it, or a TLS
// listener without a certificate, is refused before NGINX runs.
func TestLBTLSNeedsFiles(t *testing.T) {
	d := newDriver(t, nil)
	for _, b := range []lb.Backend{
		{Name: "t", Listen: freeAddr(t), Mode: lb.ModeActive, Servers: []lb.Server{{Name: "a", Addr: "127.0.0.1:1", TLS: true}}},
		{Name: "t", Listen: freeAddr(t), Mode: lb.ModeActive, ListenTLS: true},
	} {
		err := d.Start(context.Background(), lb.Desired{Backends: []lb.Backend{b}})
		if !errors.Is(err, ErrBadDesired) || !strings.Contains(err.Error(), "--") {
			t.Errorf("%+v: got %v, want ErrBadDesired naming the flag", b, err)
		}
		if d.master != nil {
			t.Errorf("%+v: NGINX was started", b)
		}
	}
}
