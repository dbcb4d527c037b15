package nginx

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

// helperEnv, when set in the environment of the test binary, makes it a
// stand-in for tandem lb instead: it starts a managed NGINX in the
// directory the variable names and waits to be killed (TestPdeathsig).
const helperEnv = "TANDEM_NGINX_TEST_HELPER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		helperMain(dir)
		return
	}
	os.Exit(m.Run())
}

// helperMain starts NGINX for the backend in $HELPER_LISTEN and
// $HELPER_SERVER, prints the master's pid, and blocks.
func helperMain(dir string) {
	d, err := New(Config{Dir: dir, Workers: 1})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = d.Start(ctx, one("tandem", os.Getenv("HELPER_LISTEN"), lb.ModeActive,
			lb.Server{Name: "a1", Addr: os.Getenv("HELPER_SERVER"), Up: true}))
		cancel()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(d.master.pid)
	select {}
}

// requireNginx returns the nginx binary, or skips the test where there is
// none. In CI (CI set) a skip would hide a regression, so it fails instead.
func requireNginx(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("nginx")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("needs nginx: %v (CI is set, so this is a failure)", err)
		}
		t.Skipf("needs nginx: %v (apt-get install nginx-light)", err)
	}
	return p
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testDir returns a directory that NGINX's workers (nobody, when the tests
// run as root) can enter; t.TempDir's are 0700.
func testDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// freeAddr returns a loopback address nothing listens on (now).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// testLog sends the driver's records to the test's log.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// backend is a test HTTP server behind the proxy.
type backend struct {
	name string
	addr string
	hits atomic.Int64
}

// startActive starts a server that answers every request with
// "NAME METHOD URI BODY".
func startActive(t *testing.T, name string) *backend {
	b := &backend{name: name}
	b.serve(t, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s %s %s %s", name, r.Method, r.URL.RequestURI(), body)
	})
	return b
}

// startStandby starts a server that answers like a tandem standby: 307 to
// the same URI at to().
func startStandby(t *testing.T, name string, to func() string) *backend {
	b := &backend{name: name}
	b.serve(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Location", "http://"+to()+r.URL.RequestURI())
		w.WriteHeader(http.StatusTemporaryRedirect)
		fmt.Fprintf(w, "%s is a standby\n", name)
	})
	return b
}

func (b *backend) serve(t *testing.T, h http.HandlerFunc) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.hits.Add(1)
			h(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}

func (b *backend) server(up bool) lb.Server { return lb.Server{Name: b.name, Addr: b.addr, Up: up} }

// one returns a desired state of one backend.
func one(name, listen, mode string, servers ...lb.Server) lb.Desired {
	return lb.Desired{Backends: []lb.Backend{{Name: name, Listen: listen, Mode: mode, Servers: servers}}}
}

// newDriver returns a managed driver in a fresh directory, closed at the
// end of the test.
func newDriver(t *testing.T, edit func(*Config)) *Driver {
	t.Helper()
	requireNginx(t)
	cfg := Config{
		Dir:           testDir(t),
		Workers:       1,
		Checks:        lb.Checks{Inter: time.Second, Fall: 3, Rise: 2},
		ReloadTimeout: 15 * time.Second,
		StopTimeout:   5 * time.Second,
		Log:           testLog(t),
	}
	if edit != nil {
		edit(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

func start(t *testing.T, d *Driver, want lb.Desired) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := d.Start(ctx, want); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

func apply(t *testing.T, d *Driver, want lb.Desired) lb.Applied {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := d.Apply(ctx, want)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return res
}

// newConnClient opens a connection per request and does not follow
// redirects.
func newConnClient() *http.Client {
	return &http.Client{
		Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
		Timeout:       5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// call sends a request and returns the status and body.
func call(c *http.Client, method, url, body string) (int, string, http.Header, error) {
	return callCtx(context.Background(), c, method, url, body)
}

func callCtx(ctx context.Context, c *http.Client, method, url, body string) (int, string, http.Header, error) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return 0, "", nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

// mustCall sends a request and wants 200 and body.
func mustCall(t *testing.T, c *http.Client, method, url, body, want string) {
	t.Helper()
	code, got, _, err := call(c, method, url, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	if code != http.StatusOK || got != want {
		t.Fatalf("%s %s: got %d %q, want 200 %q", method, url, code, trunc(got), trunc(want))
	}
}

func trunc(s string) string {
	if len(s) > 120 {
		return s[:120] + fmt.Sprintf("...(%d bytes)", len(s))
	}
	return s
}

// gone reports whether no process of group pgid is alive.
func gone(pgid int) bool { return len(procs(func(p procInfo) bool { return p.pgid == pgid })) == 0 }
