package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/pki"
)

// TestLBTLS runs tandem lb, with HAProxy and with NGINX, in front of three
// servers that serve TLS (local.Cluster.EnableTLS): the proxy serves TLS
// itself with a certificate made as `tandem tls cert create --server --id
// lb` makes it, calls the servers over TLS 1.3 verified against the
// cluster's CA, and presents that certificate to them. A request through
// the proxy reaches the active; after a kill -9 of the active, the new
// one. A second tandem lb given another CA than the cluster's (same
// cluster name) starts, but its proxy refuses the servers: no request
// through it reaches any of them.
func TestLBTLS(t *testing.T) {
	for _, proxy := range []string{"haproxy", "nginx"} {
		t.Run(proxy, func(t *testing.T) {
			if _, err := exec.LookPath(proxy); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("%s not found and CI is set: %v", proxy, err)
				}
				t.Skipf("needs %s: %v", proxy, err)
			}
			lbTLS(t, proxy)
		})
	}
}

func lbTLS(t *testing.T, proxy string) {
	e := etcdtest.Start(t)
	base := freeBasePort(t, 3)
	c, err := local.New(local.Config{Binary: binary, Servers: 3, BasePort: base, DataDir: t.TempDir(),
		EtcdEndpoints: e.Endpoint, LeaseTTL: 2 * time.Second, LogLevel: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	pkiDir := filepath.Join(t.TempDir(), "pki")
	files, err := c.EnableTLS(pkiDir)
	if err != nil {
		t.Fatal(err)
	}
	startTLSLocal(t, c)
	first := waitActive(t, c)

	ca, err := pki.LoadCA(pkiDir)
	if err != nil {
		t.Fatal(err)
	}
	lbDir := t.TempDir()
	lbCert, err := pki.Issue(ca, pki.RoleServer, "lb", nil, nil, time.Hour, pki.WithOutput(lbDir, "server-lb"))
	if err != nil {
		t.Fatal(err)
	}
	// Another CA that calls itself the same cluster's.
	stranger, err := pki.CreateCA(filepath.Join(t.TempDir(), "stranger"), "default", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	strangerCA := filepath.Join(stranger.Dir, pki.CACertFile)

	goodLB, goodProc := startTLSLB(t, c, proxy, base+395, base+396, files.CACert, lbCert, true)
	client := caClient(t, files.CACert)
	healthz := goodLB + "/healthz"

	// The proxy answers from the active, over TLS 1.3 on its own side.
	waitServedBy(t, client, healthz, c.Servers[first].ID)
	resp, err := client.Get(healthz)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 {
		t.Fatalf("TLS through the proxy: got %+v, want TLS 1.3", resp.TLS)
	}

	// Requests through the proxy reach the servers (the same count the
	// refused proxy below must not move).
	before := healthzServed(t, c, client)
	for range 3 {
		waitServedBy(t, client, healthz, c.Servers[first].ID)
	}
	if after := healthzServed(t, c, client); after < before+3 {
		t.Fatalf("/healthz served by the servers: %d before, %d after 3 through the proxy; want at least 3 more", before, after)
	}

	// kill -9 of the active: the proxy moves to the new one.
	if err := c.Kill(first); err != nil {
		t.Fatal(err)
	}
	next := waitActive(t, c, first)
	waitServedBy(t, client, healthz, c.Servers[next].ID)

	// SIGHUP: a renewed certificate, installed over the old files, is
	// served from then on.
	old := servedSerial(t, client, healthz)
	renewed, err := pki.Issue(ca, pki.RoleServer, "lb", nil, nil, time.Hour, pki.WithOutput(lbDir, "server-lb.new"))
	if err != nil {
		t.Fatal(err)
	}
	for _, mv := range [][2]string{{renewed.CertFile, lbCert.CertFile}, {renewed.KeyFile, lbCert.KeyFile}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := goodProc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	want := renewed.Cert.SerialNumber.String()
	deadline := time.Now().Add(30 * time.Second)
	for got := old; got != want; got = servedSerial(t, client, healthz) {
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP: the proxy serves serial %s, want %s (the renewed certificate; was %s)", got, want, old)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	waitServedBy(t, client, healthz, c.Servers[next].ID)

	// The wrong CA: tandem lb starts (its files are fine; with no client
	// certificate, which it would refuse for not being of that CA), and
	// the proxy refuses every server in the handshake.
	badLB, _ := startTLSLB(t, c, proxy, base+397, base+398, strangerCA, lbCert, false)
	before = healthzServed(t, c, client)
	for i := range 5 {
		resp, err := client.Get(badLB + "/healthz")
		if err != nil {
			t.Fatalf("request %d through the proxy with the wrong CA: %v (want the proxy's own error answer)", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("request %d through the proxy with the wrong CA: got %d %q, want 502 or 503 from the proxy", i, resp.StatusCode, body)
		}
	}
	if after := healthzServed(t, c, client); after != before {
		t.Errorf("/healthz served by the servers: %d before, %d after requests through the proxy with the wrong CA; want no change", before, after)
	}
	// The good proxy still routes.
	waitServedBy(t, client, healthz, c.Servers[next].ID)
}

// startTLSLB starts tandem lb with proxy in front of c's servers, serving
// TLS on port with cert and verifying the servers against caFile; it
// returns the proxy's https URL and tandem lb's process once tandem lb
// answers on httpPort. With present, the proxy presents cert to the
// servers too. It is stopped at the end of the test.
func startTLSLB(t *testing.T, c *local.Cluster, proxy string, port, httpPort int, caFile string, cert *pki.Issued, present bool) (string, *os.Process) {
	t.Helper()
	inter := "200ms"
	if proxy == "nginx" {
		inter = "500ms"
	}
	// Where NGINX's workers (nobody, as root) can reach it; t.TempDir's
	// are closed to them.
	dir, err := os.MkdirTemp("", "tandem-lb-tls-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "lb.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"lb", "--proxy", proxy, "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--cluster", "default", "--etcd-endpoints", strings.Join(c.EtcdEndpoints(), ","), "--dir", dir,
		"--http", fmt.Sprintf("127.0.0.1:%d", httpPort), "--log-level", "debug",
		"--check-inter", inter, "--check-fall", "2", "--check-rise", "1",
		"--backend-ca", caFile, "--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile}
	if present {
		args = append(args, "--backend-cert", cert.CertFile, "--backend-key", cert.KeyFile)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		os.RemoveAll(dir)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- tandem lb (%s, CA %s) log ----\n%s", proxy, caFile, tail(string(b), 60))
		}
	})
	status := fmt.Sprintf("http://127.0.0.1:%d/healthz", httpPort)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(status)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("tandem lb exited: %s", tail(string(b), 30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tandem lb never answered on %s: %v", status, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	return fmt.Sprintf("https://127.0.0.1:%d", port), cmd.Process
}

// servedSerial is the serial number of the certificate that serves url.
func servedSerial(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.TLS.PeerCertificates[0].SerialNumber.String()
}

// caClient trusts caFile alone and opens a connection per request, as a
// client new to the proxy does.
func caClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s: no certificate", caFile)
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil,
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
}

// waitServedBy waits until GET url answers 200 from the server id, active.
func waitServedBy(t *testing.T, c *http.Client, url, id string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		resp, err := c.Get(url)
		if err == nil {
			var h struct {
				ID    string `json:"id"`
				State string `json:"state"`
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = json.Unmarshal(b, &h)
			if resp.StatusCode == http.StatusOK && h.ID == id && h.State == "active" {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: not answered by %s, active, within 30s; last: %s", url, id, last)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// healthzServed sums, over the running servers, the /healthz requests
// they served (their tandem_http_requests_total): nothing else calls
// /healthz in this test.
func healthzServed(t *testing.T, c *local.Cluster, hc *http.Client) int {
	t.Helper()
	total := 0
	for i, s := range c.Servers {
		if c.PID(i) == 0 {
			continue
		}
		resp, err := hc.Get(s.URL + "/metrics")
		if err != nil {
			t.Fatalf("metrics of %s: %v", s.ID, err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			l := sc.Text()
			if !strings.HasPrefix(l, "tandem_http_requests_total{") || !strings.Contains(l, `route="/healthz"`) {
				continue
			}
			f := strings.Fields(l)
			n, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("metrics of %s: %q: %v", s.ID, l, err)
			}
			total += int(n)
		}
		resp.Body.Close()
	}
	return total
}
