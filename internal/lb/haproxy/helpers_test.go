package haproxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

// needHAProxy skips a test that needs the real binary where it is absent,
// unless CI is set: there the skip is a failure, so nothing is silently
// left out.
func needHAProxy(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("haproxy not found and CI is set: %v", err)
		}
		t.Skipf("needs haproxy: %v (apt-get install haproxy)", err)
	}
}

// upstream is a backend server: / answers its name, /isActive 200 while
// active and 503 otherwise.
// /slow answers once release is closed.
type upstream struct {
	name    string
	addr    string
	active  atomic.Bool
	entered chan struct{} // a request to /slow arrived
	release chan struct{}
}

func newUpstream(t *testing.T, name string, active bool) *upstream {
	t.Helper()
	u := &upstream{name: name, entered: make(chan struct{}, 16), release: make(chan struct{})}
	u.active.Store(active)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/isActive":
			if !u.active.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		case "/slow":
			u.entered <- struct{}{}
			select {
			case <-u.release:
			case <-r.Context().Done():
				return
			}
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, u.name)
	}))
	t.Cleanup(srv.Close)
	u.addr = srv.Listener.Addr().String()
	return u
}

func (u *upstream) server(up bool) lb.Server { return lb.Server{Name: u.name, Addr: u.addr, Up: up} }

// freeAddr is a 127.0.0.1 address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// testChecks are fast checks for the tests that exercise them, slow ones
// for the tests where only the runtime API may move traffic.
var (
	fastChecks = lb.Checks{Inter: 100 * time.Millisecond, Fall: 2, Rise: 1}
	slowChecks = lb.Checks{Inter: 3 * time.Second, Fall: 3, Rise: 2}
)

func startManaged(t *testing.T, checks lb.Checks, d lb.Desired, opts ...func(*Config)) *Driver {
	t.Helper()
	cfg := DefaultConfig(t.TempDir())
	cfg.Checks = checks
	cfg.Log = testLogger(t)
	for _, o := range opts {
		o(&cfg)
	}
	drv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := drv.Start(ctx, d); err != nil {
		t.Fatalf("start: %v", err)
	}
	return drv
}

func apply(t *testing.T, drv *Driver, d lb.Desired) lb.Applied {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := drv.Apply(ctx, d)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return a
}

// fresh makes every request on a new connection.
var fresh = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}

// get returns the body of GET http://addr/.
func get(c *http.Client, addr string) (string, error) {
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

// waitFor polls cond until it returns nil, failing the test with cond's
// last error after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

// allReach checks that n sequential requests, each on a new connection,
// reach want.
func allReach(addr, want string, n int) error {
	for i := range n {
		got, err := get(fresh, addr)
		if err != nil {
			return fmt.Errorf("request %d: %v", i, err)
		}
		if got != want {
			return fmt.Errorf("request %d: got %q, want %q", i, got, want)
		}
	}
	return nil
}

func showProc(t *testing.T, drv *Driver) procs {
	t.Helper()
	p, err := drv.showProc(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// gone says whether pid has exited (a zombie whose parent has not reaped
// it counts: it runs no code and holds no socket).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// proxyServers lists the servers HAProxy has in its first backend, removed
// ones waiting for `del server` included (Actual leaves those out).
func proxyServers(drv *Driver) ([]string, error) {
	drv.mu.Lock()
	defer drv.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	replies, err := drv.adm.run(ctx, "show servers state")
	if err != nil {
		return nil, err
	}
	_, _, states, err := parseServersState(replies[0])
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range states {
		if s.backend == states[0].backend {
			names = append(names, s.server)
		}
	}
	sort.Strings(names)
	return names, nil
}
