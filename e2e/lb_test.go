package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/local"
)

// lbCluster is a local cluster of three servers (a fourth stopped, to add),
// two agents and tandem lb in front, sharing one external etcd member.
type lbCluster struct {
	*local.Cluster
	env     []string // TANDEM_SERVERS of the servers themselves
	emptyLB string   // the proxy's listener of a service nobody runs
}

func startLBCluster(t *testing.T, proxy string) *lbCluster {
	t.Helper()
	if _, err := os.Stat("/proc/self"); err != nil {
		t.Skip("needs Linux")
	}
	base := freeBasePort(t, 4)
	empty := fmt.Sprintf("127.0.0.1:%d", base+397)
	inter := "200ms"
	if proxy == "nginx" {
		// NGINX has no active checks; its fail_timeout (inter × fall) is
		// whole seconds (the driver rounds up).
		inter = "500ms"
	}
	// The fourth server, added and removed by lbMembership, registers by
	// host name: HAProxy's runtime API takes only addresses, so each time
	// it joins the proxy reloads, under the test's keep-alive load.
	extra := base + 3
	c := startLocal(t, local.Config{Binary: binary, Servers: 4, Initial: 3, Agents: 2, ExternalEtcd: 1,
		ServerArgs: map[string][]string{local.ServerID(3): {"--advertise-url", fmt.Sprintf("http://localhost:%d", extra),
			"--listen", fmt.Sprintf(":%d", extra)}},
		BasePort: base, DataDir: t.TempDir(), LB: proxy, LeaseTTL: 2 * time.Second, LogLevel: "debug",
		LBArgs: []string{"--check-inter", inter, "--check-fall", "2", "--check-rise", "1",
			"--service", "nosuch=" + empty + ",port=9,health=/"}})
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(c.LB.LogPath)
			// Every warning and error in full (a proxy that exited and was
			// started again shows here), then the tail.
			var alarms []string
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
					alarms = append(alarms, l)
				}
			}
			t.Logf("---- lb log: warnings and errors ----\n%s", strings.Join(alarms, "\n"))
			t.Logf("---- lb log: tail ----\n%s", tail(string(b), 60))
		}
	})
	urls := strings.Join(c.URLs(), ",")
	return &lbCluster{Cluster: c, emptyLB: "http://" + empty,
		env: []string{"TANDEM_SERVERS=" + urls, "XDG_CONFIG_HOME=" + t.TempDir()}}
}

func (c *lbCluster) id(i int) string { return c.Servers[i].ID }

func (c *lbCluster) index(id string) int {
	for i := range c.Servers {
		if c.Servers[i].ID == id {
			return i
		}
	}
	return -1
}

// TestLB runs tandem lb in front of a real cluster with HAProxy and with
// NGINX, and moves the active, kills and pauses it, adds and removes
// servers and freezes tandem lb itself under load through the proxy.
func TestLB(t *testing.T) {
	for _, proxy := range []string{"haproxy", "nginx"} {
		t.Run(proxy, func(t *testing.T) {
			c := startLBCluster(t, proxy)
			first := waitActive(t, c.Cluster)
			waitApplied(t, c.Cluster, c.id(first)+" up", onlyUp(c.id(first)))

			t.Run("servers through the proxy", func(t *testing.T) { lbServerList(t, c) })
			t.Run("service with no instances", func(t *testing.T) { lbEmptyService(t, c) })
			t.Run("graceful failover", func(t *testing.T) {
				lbFailover(t, c, "graceful", func(old, to int) {
					if out, errOut, code := runCLI(t, c.env, "admin", "failover", c.id(old), c.id(to)); code != 0 {
						t.Fatalf("admin failover: exit %d: %s%s", code, out, errOut)
					}
				})
			})
			t.Run("kill -9 of the active", func(t *testing.T) {
				lbFailover(t, c, "kill9", func(old, _ int) {
					if err := c.Kill(old); err != nil {
						t.Fatal(err)
					}
				})
			})
			t.Run("SIGSTOP of the active", func(t *testing.T) {
				lbFailover(t, c, "sigstop", func(old, _ int) {
					if err := c.Signal(old, syscall.SIGSTOP); err != nil {
						t.Fatal(err)
					}
				})
			})
			t.Run("adding, removing and reloads", func(t *testing.T) { lbMembership(t, c, proxy) })
			t.Run("tandem lb frozen", func(t *testing.T) { lbFrozen(t, c, proxy) })
		})
	}
}

// lbServerList: get-all-service-state through the proxy lists the three
// servers, not the proxy as a fourth.
func lbServerList(t *testing.T, c *lbCluster) {
	out, errOut, code := runCLI(t, []string{"XDG_CONFIG_HOME=" + t.TempDir()}, "--servers", c.LBURL, "admin", "get-all-service-state")
	if code != 0 {
		t.Fatalf("get-all-service-state --servers %s: exit %d: %s", c.LBURL, code, errOut)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 3 {
		t.Fatalf("get-all-service-state through the proxy: got %d lines, want 3 (the servers):\n%s", len(lines), out)
	}
	for i, l := range lines {
		if f := strings.Fields(l); len(f) < 2 || f[0] != c.id(i) || f[1] != c.Servers[i].URL {
			t.Errorf("line %d: got %q, want %s at %s", i+1, l, c.id(i), c.Servers[i].URL)
		}
	}
}

// lbEmptyService: a service with no instances leaves its backend empty,
// the proxy answers 503 for it, and the API backend keeps working.
func lbEmptyService(t *testing.T, c *lbCluster) {
	st, err := lbStatus(c.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, b := range st.Desired.Backends {
		if b.Name == "nosuch" {
			found = true
			if len(b.Servers) != 0 {
				t.Errorf("backend nosuch: got servers %+v, want none", b.Servers)
			}
		}
	}
	if !found {
		t.Fatalf("no backend nosuch in %+v", st.Desired.Backends)
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(c.emptyLB + "/")
	if err != nil {
		t.Fatalf("GET the empty service through the proxy: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("empty service through the proxy: got HTTP %d, want 503", resp.StatusCode)
	}
	resp, err = hc.Get(c.LBURL + "/v1/ha/state")
	if err != nil {
		t.Fatalf("GET /v1/ha/state through the proxy: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("API through the proxy: got HTTP %d, want 200", resp.StatusCode)
	}
}

// lbFailover moves the active by event under load through the proxy: once
// tandem lb has applied the new active, no request started after reaches
// the old one, and every acknowledged submission exists exactly once.
func lbFailover(t *testing.T, c *lbCluster, name string, event func(old, to int)) {
	old := waitActive(t, c.Cluster)
	to := (old + 1) % 3
	waitApplied(t, c.Cluster, c.id(old)+" up", onlyUp(c.id(old)))
	load := startLoad(t, c.LBURL, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()), false)
	stopped := false
	defer func() {
		if !stopped {
			load.Stop()
		}
	}()
	load.waitAnswered(time.Now(), 10)
	event(old, to)
	applied := waitApplied(t, c.Cluster, "a new active up", upNot(c.id(old)))
	load.waitAnswered(applied, 40)
	load.waitAcked(applied)
	load.Stop()
	stopped = true

	var before, after, wrong, failed int
	for _, r := range load.snapshot() {
		if r.start.Before(applied) {
			before++
			continue
		}
		after++
		if r.server == c.id(old) {
			wrong++
			t.Errorf("%s request started %s after the apply was answered by the old active %s", r.kind, r.start.Sub(applied), c.id(old))
		}
		if r.kind == reqNewConn && (r.err != nil || r.status != http.StatusOK) {
			failed++
			t.Errorf("new-connection request started %s after the apply: HTTP %d, %v (a request to a frozen or dead server?)", r.start.Sub(applied), r.status, r.err)
		}
	}
	t.Logf("%d requests before the apply, %d after (%d answered by the old active, %d new-connection failures)", before, after, wrong, failed)
	load.checkAcked(c.Cluster)

	// Back to three live servers for what follows.
	if c.PID(old) == 0 {
		if err := c.StartServer(old); err != nil {
			t.Fatal(err)
		}
	} else {
		_ = c.Signal(old, syscall.SIGCONT)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx, old); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, c.Cluster, c.id(old)+" back", func(s map[string]bool) bool { _, ok := s[c.id(old)]; return ok && upNot(c.id(old))(s) })
}

// lbMembership adds and removes a fourth server ten times under load (it
// registers by host name, so with HAProxy each addition is a reload as
// well, and with NGINX every change is): in-flight requests complete, no
// new-connection request fails, and kept-alive errors are none with
// HAProxy.
func lbMembership(t *testing.T, c *lbCluster, proxy string) {
	const extra = 3
	has := func(want bool) func(map[string]bool) bool {
		return func(s map[string]bool) bool { _, ok := s[c.id(extra)]; return ok == want }
	}
	st0, err := lbStatus(c.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	load := startLoad(t, c.LBURL, fmt.Sprintf("members-%d", time.Now().UnixNano()), true)
	stopped := false
	defer func() {
		if !stopped {
			load.Stop()
		}
	}()
	load.waitAnswered(time.Now(), 10)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cycles := 10
	if testing.Short() {
		cycles = 3
	}
	for i := 0; i < cycles; i++ {
		if err := c.StartServer(extra); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitHealthy(ctx, extra); err != nil {
			t.Fatal(err)
		}
		waitApplied(t, c.Cluster, c.id(extra)+" added", has(true))
		if err := c.StopServer(extra, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		waitApplied(t, c.Cluster, c.id(extra)+" removed", has(false))
	}
	load.waitAnswered(time.Now(), 10)
	load.Stop()
	stopped = true
	st1, err := lbStatus(c.Cluster)
	if err != nil {
		t.Fatal(err)
	}

	var newConn, newFailed, kept, keptErr, long, longBad int
	for _, r := range load.snapshot() {
		switch r.kind {
		case reqNewConn:
			newConn++
			if r.err != nil || r.status != http.StatusOK {
				newFailed++
				t.Errorf("new-connection request at %s: HTTP %d, %v", r.start.Format(time.StampMilli), r.status, r.err)
			}
		case reqSubmit:
			kept++
			if r.err != nil {
				keptErr++
				if proxy == "haproxy" {
					t.Errorf("kept-alive submission at %s: %v", r.start.Format(time.StampMilli), r.err)
				}
			}
		case reqLong:
			long++
			if r.err != nil || r.status != http.StatusOK {
				longBad++
				t.Errorf("long request (log follow of %s, %s): HTTP %d, %v", r.job, r.end.Sub(r.start).Round(time.Millisecond), r.status, r.err)
			}
		}
	}
	if proxy == "haproxy" && st1.Reloads-st0.Reloads < cycles {
		t.Errorf("%d reloads in %d cycles: the server that joins by host name should force one each time", st1.Reloads-st0.Reloads, cycles)
	}
	t.Logf("%d membership changes: %d applies, %d reloads; %d new-connection requests (%d failed), %d kept-alive submissions (%d errors, %.2f per reload), %d long requests (%d not complete)",
		2*cycles, st1.Applies-st0.Applies, st1.Reloads-st0.Reloads, newConn, newFailed, kept, keptErr,
		float64(keptErr)/float64(max(1, st1.Reloads-st0.Reloads)), long, longBad)
	if long == 0 {
		t.Errorf("no long request completed during the reloads")
	}
	load.checkAcked(c.Cluster)
}

// lbFrozen freezes tandem lb (SIGSTOP: it cannot push) and fails over: the
// proxy still gets requests to the new active, by its own health checks
// (HAProxy) or by following the old active's 307 (NGINX).
func lbFrozen(t *testing.T, c *lbCluster, proxy string) {
	old := waitActive(t, c.Cluster)
	to := (old + 1) % 3
	waitApplied(t, c.Cluster, c.id(old)+" up", onlyUp(c.id(old)))
	if err := c.LB.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := true
	defer func() {
		if frozen {
			_ = c.LB.Signal(syscall.SIGCONT)
		}
	}()
	if out, errOut, code := runCLI(t, c.env, "admin", "failover", c.id(old), c.id(to)); code != 0 {
		t.Fatalf("admin failover: exit %d: %s%s", code, out, errOut)
	}
	done := time.Now()
	load := startLoad(t, c.LBURL, fmt.Sprintf("frozen-%d", time.Now().UnixNano()), false)
	defer load.Stop()

	// Submissions are answered by the new active: HAProxy's checks moved
	// the traffic, NGINX followed the old active's 307.
	deadline := done.Add(10 * time.Second)
	var movedAt time.Time
	for movedAt.IsZero() {
		for _, r := range load.snapshot() {
			if r.kind == reqSubmit && r.job != "" && r.server == c.id(to) {
				movedAt = r.end
				break
			}
		}
		if movedAt.IsZero() && time.Now().After(deadline) {
			t.Fatalf("no submission through the proxy was answered by the new active %s within 10s of the failover with tandem lb frozen", c.id(to))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("first submission acknowledged by the new active %s after the failover", movedAt.Sub(done).Round(time.Millisecond))
	if proxy == "haproxy" {
		// The checks (every 200ms, fall 2, rise 1) take the old active out
		// and the new one in: new connections reach the new active within
		// a few intervals; after that, only it.
		var first time.Time
		deadline := time.Now().Add(10 * time.Second)
		for first.IsZero() {
			for _, r := range load.snapshot() {
				if r.kind == reqNewConn && r.server == c.id(to) {
					first = r.start
					break
				}
			}
			if first.IsZero() && time.Now().After(deadline) {
				t.Fatalf("HAProxy's checks never sent a GET to the new active %s with tandem lb frozen", c.id(to))
			}
			time.Sleep(20 * time.Millisecond)
		}
		// fall 2 checks of 200ms take the old active out: give it ten.
		settled := done.Add(2 * time.Second)
		for time.Now().Before(settled) {
			time.Sleep(20 * time.Millisecond)
		}
		load.waitAnswered(settled, 30)
		for _, r := range load.snapshot() {
			if r.kind == reqNewConn && !r.start.Before(settled) && r.server != c.id(to) {
				t.Errorf("GET at %s answered by %s (HTTP %d, %v), want the new active %s", r.start.Format(time.StampMilli), r.server, r.status, r.err, c.id(to))
			}
		}
		t.Logf("HAProxy's checks alone: first GET to the new active %s after the failover", first.Sub(done).Round(time.Millisecond))
	}
	load.Stop()
	load.checkAcked(c.Cluster)
	_ = c.LB.Signal(syscall.SIGCONT)
	frozen = false
	waitApplied(t, c.Cluster, "tandem lb thawed", onlyUp(c.id(to)))
}

// TestLBBadInput: tandem lb refuses a missing proxy binary and an
// unwritable directory, with an exit code and words that say so.
func TestLBBadInput(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"XDG_CONFIG_HOME=" + t.TempDir()}
	common := []string{"lb", "--listen", "127.0.0.1:1", "--http", "127.0.0.1:0", "--etcd-endpoints", "http://127.0.0.1:1"}
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int // 0: any non-zero
		want     string
	}{
		{"missing binary", []string{"--proxy", "haproxy", "--binary", "/nonexistent", "--dir", t.TempDir()}, 2, "/nonexistent"},
		{"missing nginx binary", []string{"--proxy", "nginx", "--binary", "/nonexistent", "--dir", t.TempDir()}, 2, "/nonexistent"},
		{"unwritable dir", []string{"--proxy", "haproxy", "--dir", filepath.Join(file, "lb")}, 0, filepath.Join(file, "lb")},
		{"unwritable dir nginx", []string{"--proxy", "nginx", "--dir", filepath.Join(file, "lb")}, 0, filepath.Join(file, "lb")},
		{"nginx-conf without external", []string{"--proxy", "nginx", "--nginx-conf", file}, 2, "--nginx-conf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := runCLI(t, env, append(common, tc.args...)...)
			if code == 0 || (tc.wantCode != 0 && code != tc.wantCode) {
				t.Errorf("exit %d, want %d (non-zero); stderr: %s", code, tc.wantCode, errOut)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q does not name %s", errOut, tc.want)
			}
		})
	}
}
