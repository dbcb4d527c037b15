package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/lb"
	"github.com/tandemhq/tandem/internal/supervise"
)

// TestLBSticky: a service with an instance on every node (seeds/001's Hue),
// run by two real `tandem supervise` nodes (127.0.0.2 and 127.0.0.3) and
// balanced by `tandem lb` with sticky sessions. A client holds to one
// instance while it lives, moves to the other when it dies, and, with
// HAProxy's cookie, stays there when the first comes back. NGINX open
// source sticks by client address (consistent hash): it holds and moves
// the same way, but goes back to the first instance once it returns.
func TestLBSticky(t *testing.T) {
	for _, proxy := range []string{"haproxy", "nginx"} {
		t.Run(proxy, func(t *testing.T) { lbSticky(t, proxy) })
	}
}

func lbSticky(t *testing.T, proxy string) {
	e := etcdtest.Start(t)
	base := freeBasePort(t, 4)
	port := base + 1 // every instance listens on its node's address, this port
	front := fmt.Sprintf("127.0.0.1:%d", base+2)
	status := fmt.Sprintf("127.0.0.1:%d", base+3)
	dir := t.TempDir()
	for i, node := range []string{"n1", "n2"} {
		api := fmt.Sprintf("127.0.0.1:%d", base+10+i)
		startBackground(t, filepath.Join(dir, node+".log"), "supervise", "--node", node, "--cluster", "sticky",
			"--etcd-endpoints", e.Endpoint, "--listen", api, "--advertise", "http://"+api, "--addr", fmt.Sprintf("127.0.0.%d", i+2),
			"--cgroup-parent", "none", "--service", "hue", "--instances", "every-node",
			"--health", fmt.Sprintf("http:http://${TANDEM_NODE_ADDR}:%d/", port), "--health-interval", "100ms", "--health-rise", "1",
			"--restarts", "10", "--stop-timeout", "2s", "--log-level", "debug",
			"--", "/bin/sh", "-c", fmt.Sprintf(`exec "$0" demo-service --listen "$TANDEM_NODE_ADDR:%d"`, port), binary)
	}
	inter := "200ms"
	if proxy == "nginx" {
		inter = "1s"
	}
	// NGINX's workers run as nobody: the proxy's directory must be
	// reachable for them, which t.TempDir() (mode 0700) is not.
	lbDir, err := os.MkdirTemp("", "tandem-e2e-sticky-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(lbDir) })
	if err := os.Chmod(lbDir, 0o755); err != nil {
		t.Fatal(err)
	}
	startBackground(t, filepath.Join(dir, "lb.log"), "lb", "--proxy", proxy, "--listen", "", "--cluster", "sticky",
		"--etcd-endpoints", e.Endpoint, "--dir", lbDir, "--http", status,
		"--service", fmt.Sprintf("hue=%s,port=%d,health=/,sticky", front, port),
		"--check-inter", inter, "--check-fall", "2", "--check-rise", "1", "--log-level", "debug")

	applied := func(what string, ok func(map[string]bool) bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		var last map[string]bool
		for time.Now().Before(deadline) {
			if st, err := lbStatusAt(status); err == nil {
				last = backendServers(st, "hue")
				if ok(last) {
					return
				}
			}
			time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
		}
		t.Fatalf("tandem lb never applied %s; last %v", what, last)
	}
	both := func(s map[string]bool) bool { return s["n1"] && s["n2"] }
	applied("both instances up", both)

	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: 5 * time.Second}
	ask := func() (string, error) {
		resp, err := client.Get("http://" + front + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
		}
		// "demo served by node n1 at epoch - (pid ...)"
		f := strings.Fields(string(b))
		if len(f) < 5 {
			return "", fmt.Errorf("answer %q", b)
		}
		return f[4], nil
	}
	holds := func(what string, n int) string {
		t.Helper()
		first := ""
		for i := range n {
			got, err := ask()
			if err != nil {
				t.Fatalf("%s: request %d: %v", what, i, err)
			}
			if first == "" {
				first = got
			} else if got != first {
				t.Fatalf("%s: request %d answered by %s, the first by %s: not sticky", what, i, got, first)
			}
		}
		return first
	}
	held := holds("both instances live", 20)
	other := map[string]string{"n1": "n2", "n2": "n1"}[held]

	// The held instance dies: its node deregisters it (and restarts it);
	// the client moves to the other and holds there.
	pid := instancePID(t, e.Endpoint, held)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	applied(held+" down", func(s map[string]bool) bool { return !s[held] })
	if got := holds("after "+held+"'s instance died", 20); got != other {
		t.Fatalf("after %s's instance died the client went to %s, want %s", held, got, other)
	}
	applied(held+" back", both)
	got := holds("after "+held+"'s instance came back", 20)
	switch {
	case proxy == "haproxy" && got != other:
		t.Errorf("HAProxy: after %s came back the client went to %s; its cookie names %s", held, got, other)
	case proxy == "nginx":
		t.Logf("NGINX (hash of the client's address): after %s came back the client is on %s", held, got)
	}
}

// instancePID returns the pid of node's registered instance of hue.
func instancePID(t *testing.T, endpoint, node string) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out, _, code := runCLI(t, nil, "supervise", "status", "-o", "json", "--cluster", "sticky", "--etcd-endpoints", endpoint)
		var st []supervise.ServiceStatus
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil {
			for _, s := range st {
				for _, in := range s.Instances {
					if s.Service == "hue" && in.Node == node && in.PID > 0 {
						return in.PID
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
	t.Fatalf("no registered instance of hue on %s", node)
	return 0
}

// lbStatusAt reads tandem lb's status from its HTTP address.
func lbStatusAt(addr string) (lb.Status, error) {
	var st lb.Status
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/lb/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("lb status: HTTP %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// backendServers returns backend's servers as tandem lb last applied
// them, name -> up.
func backendServers(st lb.Status, backend string) map[string]bool {
	out := map[string]bool{}
	if st.Applied == nil {
		return out
	}
	for _, b := range st.Applied.Backends {
		if b.Name == backend {
			for _, s := range b.Servers {
				out[s.Name] = s.Up
			}
		}
	}
	return out
}

// startBackground runs the tandem binary with args until the test ends
// (SIGTERM, then SIGKILL), its output in logPath, shown if the test fails.
func startBackground(t *testing.T, logPath string, args ...string) {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- %s %s ----\n%s", filepath.Base(logPath), args[0], tail(string(b), 40))
		}
	})
}
