package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/local"
)

// TestLBExternalKilled runs tandem lb --external against a proxy the test
// started itself, as systemd would, kills tandem lb with SIGKILL and moves
// the active: the proxy, left alone, still gets requests to the new active
// (HAProxy by its own /isActive checks, NGINX by following the old active's
// 307), and a tandem lb started again takes it over without restarting it.
func TestLBExternalKilled(t *testing.T) {
	for _, proxy := range []string{"haproxy", "nginx"} {
		t.Run(proxy, func(t *testing.T) {
			px := startExtProxy(t, proxy)
			c := startExtLBCluster(t, px)
			pid := px.pid()

			first := waitActive(t, c.Cluster)
			waitApplied(t, c.Cluster, c.id(first)+" up", onlyUp(c.id(first)))
			checkAnsweredBy(t, c.LBURL, c.id(first), 5)
			var reloads int
			if proxy == "haproxy" {
				reloads = px.haproxyReloads(t)
			}

			if err := c.LB.Kill(); err != nil {
				t.Fatal(err)
			}
			to := (first + 1) % 3
			if out, errOut, code := runCLI(t, c.env, "admin", "failover", c.id(first), c.id(to)); code != 0 {
				t.Fatalf("admin failover: exit %d: %s%s", code, out, errOut)
			}
			done := time.Now()
			px.checkSame(t, pid, "after tandem lb was killed and the active moved")
			load := startLoad(t, c.LBURL, fmt.Sprintf("extkilled-%d", time.Now().UnixNano()), false)
			stopped := false
			defer func() {
				if !stopped {
					load.Stop()
				}
			}()

			// Submissions are answered by the new active: HAProxy's checks
			// moved the traffic, NGINX followed the old active's 307.
			movedAt := waitRecord(t, load, 10*time.Second, fmt.Sprintf("a submission through the proxy answered by the new active %s with tandem lb dead", c.id(to)),
				func(r lbReq) bool { return r.kind == reqSubmit && r.job != "" && r.server == c.id(to) })
			t.Logf("first submission acknowledged by the new active %s %s after the failover, tandem lb dead", c.id(to), movedAt.end.Sub(done).Round(time.Millisecond))
			if proxy == "haproxy" {
				firstGet := waitRecord(t, load, 10*time.Second, fmt.Sprintf("a GET through the proxy reaching the new active %s by HAProxy's checks alone", c.id(to)),
					func(r lbReq) bool { return r.kind == reqNewConn && r.server == c.id(to) })
				// Once HAProxy's own state has the old active down and the
				// new one up (fall 2, rise 1), every new connection goes to
				// the new active.
				eventually(t, "HAProxy's checks taking "+c.id(first)+" out and "+c.id(to)+" in", 10*time.Second, func() error {
					state, err := haproxyRoutable(px.admin, "tandem")
					if err != nil {
						return err
					}
					if !onlyUp(c.id(to))(state) {
						return fmt.Errorf("routable: got %v, want only %s", state, c.id(to))
					}
					return nil
				})
				settled := time.Now()
				load.waitAnswered(settled, 30)
				for _, r := range load.snapshot() {
					if r.kind == reqNewConn && !r.start.Before(settled) && (r.server != c.id(to) || r.status != http.StatusOK) {
						t.Errorf("GET at %s answered by %s (HTTP %d, %v), want the new active %s", r.start.Format(time.StampMilli), r.server, r.status, r.err, c.id(to))
					}
				}
				t.Logf("HAProxy's checks alone: first GET to the new active %s after the failover, its state settled after %s",
					firstGet.start.Sub(done).Round(time.Millisecond), settled.Sub(done).Round(time.Millisecond))
			}
			load.Stop()
			stopped = true
			load.checkAcked(c.Cluster)
			px.checkSame(t, pid, "after the load with tandem lb dead")

			// tandem lb again: it attaches to the same proxy and applies
			// the active as it is now.
			restart := time.Now()
			if err := c.LB.Start(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := c.LB.WaitHealthy(ctx); err != nil {
				t.Fatal(err)
			}
			applied := waitApplied(t, c.Cluster, c.id(to)+" up after tandem lb started again", onlyUp(c.id(to)))
			px.checkSame(t, pid, "after tandem lb started again")
			if proxy == "haproxy" {
				// The file on disk is what tandem lb renders and the proxy
				// has its servers: attaching needs no reload.
				if got := px.haproxyReloads(t); got != reloads {
					t.Errorf("HAProxy master's reloads after tandem lb attached again: got %d, want %d (no reload)", got, reloads)
				}
			}
			checkAnsweredBy(t, c.LBURL, c.id(to), 5)
			st, err := lbStatus(c.Cluster)
			if err != nil {
				t.Fatal(err)
			}
			if st.Failures != 0 || st.LastError != "" {
				t.Errorf("tandem lb started again: got %d failures (last error %q), want none", st.Failures, st.LastError)
			}
			t.Logf("tandem lb started again: %s applied in %s (%d applies, %d reloads); proxy pid %d throughout",
				c.id(to), applied.Sub(restart).Round(time.Millisecond), st.Applies, st.Reloads, pid)
		})
	}
}

// TestLBProxyCrash kills the proxy tandem lb manages (its master and every
// worker, SIGKILL) under load: tandem lb starts it again, and traffic
// through it reaches the active again, with only the active up.
func TestLBProxyCrash(t *testing.T) {
	for _, proxy := range []string{"haproxy", "nginx"} {
		t.Run(proxy, func(t *testing.T) {
			c := startLBCluster(t, proxy)
			active := waitActive(t, c.Cluster)
			waitApplied(t, c.Cluster, c.id(active)+" up", onlyUp(c.id(active)))
			lbPID := c.LB.PID()
			old := proxyMaster(t, lbPID, proxy)
			workers := childProcs(old, proxy)
			if len(workers) == 0 {
				t.Fatalf("%s master %d has no worker", proxy, old)
			}
			var admin string
			if proxy == "haproxy" {
				admin = haproxyAdminSocket(t, old)
			}
			load := startLoad(t, c.LBURL, fmt.Sprintf("crash-%s-%d", proxy, time.Now().UnixNano()), false)
			stopped := false
			defer func() {
				if !stopped {
					load.Stop()
				}
			}()
			load.waitAnswered(time.Now(), 10)

			// tandem lb starts a crashed proxy again at once the first
			// time (superviseProxy begins with no backoff), whatever its age.
			for _, pid := range append([]int{old}, workers...) {
				// A worker may be gone already, with its master.
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
					t.Fatalf("kill -9 %s %d: %v", proxy, pid, err)
				}
			}
			// Taken once every SIGKILL is sent, so that no request started
			// after it can be answered by the killed processes.
			killed := time.Now()
			var master int
			eventually(t, "tandem lb starting "+proxy+" again", 30*time.Second, func() error {
				if len(alive(append([]int{old}, workers...))) > 0 {
					return fmt.Errorf("killed processes %v still there", alive(append([]int{old}, workers...)))
				}
				if c.LB.PID() != lbPID {
					return fmt.Errorf("tandem lb is pid %d, not %d", c.LB.PID(), lbPID)
				}
				ms := proxyMasters(lbPID, proxy)
				if len(ms) != 1 || ms[0] == old {
					return fmt.Errorf("%s children of tandem lb: %v, want one new master", proxy, ms)
				}
				master = ms[0]
				return nil
			})
			restarted := time.Now()
			okAfter := waitRecord(t, load, 30*time.Second, "a request through the proxy answered after the kill",
				func(r lbReq) bool {
					return r.kind == reqNewConn && !r.start.Before(killed) && r.status == http.StatusOK
				})

			// The right server up: tandem lb's applied state, and for
			// HAProxy the new proxy's own (a fresh HAProxy starts every
			// server up until tandem lb applies its up and down).
			settled := okAfter.end
			if proxy == "haproxy" {
				if admin != haproxyAdminSocket(t, master) {
					t.Errorf("the restarted HAProxy's admin socket moved: got %s, want %s", haproxyAdminSocket(t, master), admin)
				}
				eventually(t, "only "+c.id(active)+" up in the restarted HAProxy", 10*time.Second, func() error {
					state, err := haproxyRoutable(admin, "tandem")
					if err != nil {
						return err
					}
					if !onlyUp(c.id(active))(state) {
						return fmt.Errorf("routable: got %v, want only %s", state, c.id(active))
					}
					return nil
				})
				settled = time.Now()
			}
			waitApplied(t, c.Cluster, c.id(active)+" still up", onlyUp(c.id(active)))
			load.waitAnswered(settled, 30)
			load.waitAcked(settled)
			load.Stop()
			stopped = true

			var failed, standby, redirected int
			for _, r := range load.snapshot() {
				if r.kind == reqSubmit && !r.start.Before(killed) && r.status == http.StatusTemporaryRedirect {
					redirected++ // a standby's 307, passed on to the client
				}
				if r.kind != reqNewConn || r.start.Before(killed) {
					continue
				}
				if r.start.Before(settled) {
					if r.status != http.StatusOK {
						failed++
					} else if r.server != c.id(active) {
						standby++
					}
					continue
				}
				if r.status != http.StatusOK || r.server != c.id(active) {
					t.Errorf("GET at %s, after the restarted proxy settled: answered by %q (HTTP %d, %v), want the active %s", r.start.Format(time.StampMilli), r.server, r.status, r.err, c.id(active))
				}
			}
			load.checkAcked(c.Cluster)
			// The new proxy starts with every server but the active in
			// maintenance, so not one request reaches a standby.
			if standby > 0 || redirected > 0 {
				t.Errorf("after the restart %d GETs were answered by a standby and %d submissions got its 307; want none", standby, redirected)
			}
			st, err := lbStatus(c.Cluster)
			if err != nil {
				t.Fatal(err)
			}
			if st.ProxyExits < 1 || st.LastProxyExit == "" {
				t.Errorf("tandem lb status: proxy exits %d (%q), want the crash counted", st.ProxyExits, st.LastProxyExit)
			}
			if c.LB.PID() != lbPID {
				t.Errorf("tandem lb: got pid %d, want %d (it must outlive its proxy)", c.LB.PID(), lbPID)
			}
			t.Logf("%s master %d killed with %d worker(s); new master %d seen %s later; first request answered through the proxy %s after the kill; settled %s after; meanwhile %d GETs failed and %d were answered by a standby; %d submissions after the kill got a 307; tandem lb: %d applies, %d failures, last error %q",
				proxy, old, len(workers), master, restarted.Sub(killed).Round(time.Millisecond), okAfter.end.Sub(killed).Round(time.Millisecond),
				settled.Sub(killed).Round(time.Millisecond), failed, standby, redirected, st.Applies, st.Failures, st.LastError)
		})
	}
}

// extProxy is a proxy the test runs itself, as systemd would, for tandem
// lb --external to drive.
type extProxy struct {
	kind    string // haproxy or nginx
	dir     string
	conf    string // the file tandem lb writes (--config-path)
	admin   string // HAProxy: the stats socket at level admin
	master  string // HAProxy: the master CLI (-S)
	pidFile string // NGINX: the master's pid file
	main    string // NGINX: its main configuration, which includes conf
	logPath string // what the proxy printed
	cmd     *exec.Cmd
	exited  chan struct{}
}

// startExtProxy starts kind with a minimal configuration of its own, the
// one an operator installs before tandem lb first runs, and waits until it
// serves. It is stopped at cleanup.
func startExtProxy(t *testing.T, kind string) *extProxy {
	t.Helper()
	if _, err := os.Stat("/proc/self"); err != nil {
		t.Skip("needs Linux")
	}
	// Under the system's temporary directory and open to all: NGINX's
	// workers run as nobody (t.TempDir is closed to them), and HAProxy's
	// socket paths must stay short.
	dir, err := os.MkdirTemp("", "tandem-lb-ext-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &extProxy{kind: kind, dir: dir, logPath: filepath.Join(dir, kind+".log"), exited: make(chan struct{})}
	var args []string
	switch kind {
	case "haproxy":
		p.conf = filepath.Join(dir, "haproxy.cfg")
		p.admin, p.master = filepath.Join(dir, "admin.sock"), filepath.Join(dir, "master.sock")
		bootstrap := "global\n    stats socket " + p.admin + " mode 600 level admin expose-fd listeners\n" +
			"defaults\n    mode http\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n"
		if err := os.WriteFile(p.conf, []byte(bootstrap), 0o644); err != nil {
			t.Fatal(err)
		}
		args = []string{"-W", "-db", "-S", p.master, "-f", p.conf}
	case "nginx":
		// The file tandem lb writes is included inside the http block, as
		// Debian's nginx.conf includes conf.d/*.conf. In the foreground
		// (daemon off), as systemd's Type=exec would run it, so that the
		// pid the test started is the master's.
		if err := os.Mkdir(filepath.Join(dir, "conf.d"), 0o755); err != nil {
			t.Fatal(err)
		}
		p.conf = filepath.Join(dir, "conf.d", "tandem-lb.conf")
		p.pidFile = filepath.Join(dir, "nginx.pid")
		main := filepath.Join(dir, "nginx.conf")
		p.main = main
		text := "daemon off;\npid " + p.pidFile + ";\nerror_log " + dir + "/error.log notice;\nworker_processes 1;\n" +
			"events {\n    worker_connections 1024;\n}\nhttp {\n    access_log off;\n"
		for _, tp := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
			text += "    " + tp + "_temp_path " + dir + "/tmp/" + tp + ";\n"
		}
		text += "    include " + dir + "/conf.d/*.conf;\n}\n"
		if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(main, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		args = []string{"-p", dir + "/", "-e", filepath.Join(dir, "error.log"), "-c", main}
	default:
		t.Fatalf("proxy %q: want haproxy or nginx", kind)
	}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(kind, args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	// If the test dies the proxy stops, workers included (SIGTERM, not
	// SIGKILL, which would leave NGINX's workers serving).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	err = p.cmd.Start()
	logf.Close()
	if err != nil {
		t.Fatalf("start %s outside tandem lb: %v", kind, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.stop(t) })
	eventually(t, kind+" started outside tandem lb", 15*time.Second, p.ready)
	return p
}

// pid is the master's pid, the process the test started.
func (p *extProxy) pid() int { return p.cmd.Process.Pid }

// ready says why the proxy does not serve yet (nil once it does).
func (p *extProxy) ready() error {
	select {
	case <-p.exited:
		b, _ := os.ReadFile(p.logPath)
		return fmt.Errorf("%s exited: %s", p.kind, tail(string(b), 20))
	default:
	}
	switch p.kind {
	case "haproxy":
		out, err := haproxyCmd(p.master, "show proc")
		if err != nil {
			return err
		}
		if m, _, err := parseMasterLine(out); err != nil || m != p.pid() {
			return fmt.Errorf("show proc: master %d (%v), want %d", m, err, p.pid())
		}
		if _, err := haproxyCmd(p.admin, "show info"); err != nil {
			return err
		}
	case "nginx":
		b, err := os.ReadFile(p.pidFile)
		if err != nil {
			return err
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || pid != p.pid() {
			return fmt.Errorf("pid file %s: got %q, want %d", p.pidFile, b, p.pid())
		}
		if len(childProcs(p.pid(), "nginx")) == 0 {
			return fmt.Errorf("nginx master %d has no worker yet", p.pid())
		}
	}
	return nil
}

// lbArgs are tandem lb's flags to drive the proxy.
func (p *extProxy) lbArgs() []string {
	if p.kind == "haproxy" {
		return []string{"--external", "--config-path", p.conf, "--admin-socket", p.admin, "--master-socket", p.master}
	}
	return []string{"--external", "--config-path", p.conf, "--pid-file", p.pidFile,
		"--nginx-conf", p.main, "--nginx-prefix", p.dir + "/", "--nginx-error-log", filepath.Join(p.dir, "error.log")}
}

// checkSame fails the test unless the proxy's master still runs as pid.
func (p *extProxy) checkSame(t *testing.T, pid int, when string) {
	t.Helper()
	select {
	case <-p.exited:
		t.Fatalf("%s: the proxy (pid %d) exited: %v", when, pid, p.cmd.ProcessState)
	default:
	}
	if err := p.ready(); err != nil {
		t.Fatalf("%s: the proxy does not serve as pid %d: %v", when, pid, err)
	}
	if p.pid() != pid {
		t.Fatalf("%s: proxy pid: got %d, want %d", when, p.pid(), pid)
	}
}

// haproxyReloads is how many reloads the external HAProxy's master counts.
func (p *extProxy) haproxyReloads(t *testing.T) int {
	t.Helper()
	out, err := haproxyCmd(p.master, "show proc")
	if err != nil {
		t.Fatal(err)
	}
	_, n, err := parseMasterLine(out)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// stop stops the proxy (SIGTERM: HAProxy hard-stops, NGINX shuts down
// fast) and kills whatever of it is left after ten seconds.
func (p *extProxy) stop(t *testing.T) {
	workers := childProcs(p.pid(), p.kind)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("%s (pid %d) did not stop within 10s of SIGTERM; killing it", p.kind, p.pid())
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	for _, pid := range alive(workers) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if t.Failed() {
		for _, f := range []string{p.logPath, filepath.Join(p.dir, "error.log")} {
			if b, err := os.ReadFile(f); err == nil {
				t.Logf("---- %s ----\n%s", f, tail(string(b), 40))
			}
		}
		if b, err := os.ReadFile(p.conf); err == nil {
			t.Logf("---- %s ----\n%s", p.conf, b)
		}
	}
}

// startExtLBCluster starts three servers, their etcd, and tandem lb
// --external driving px, with the proxy's own checks as startLBCluster
// sets them.
func startExtLBCluster(t *testing.T, px *extProxy) *lbCluster {
	t.Helper()
	inter := "200ms"
	if px.kind == "nginx" {
		inter = "500ms" // fail_timeout is whole seconds; see startLBCluster
	}
	c := startLocal(t, local.Config{Binary: binary, Servers: 3, ExternalEtcd: 1, BasePort: freeBasePort(t, 3),
		DataDir: t.TempDir(), LB: px.kind, LeaseTTL: 2 * time.Second, LogLevel: "debug",
		LBArgs: append([]string{"--check-inter", inter, "--check-fall", "2", "--check-rise", "1"}, px.lbArgs()...)})
	t.Cleanup(func() {
		if t.Failed() {
			logLBAlarms(t, c.LB.LogPath)
		}
	})
	return &lbCluster{Cluster: c, env: []string{"TANDEM_SERVERS=" + strings.Join(c.URLs(), ","), "XDG_CONFIG_HOME=" + t.TempDir()}}
}

// logLBAlarms logs tandem lb's warnings and errors, then its log's tail.
func logLBAlarms(t *testing.T, path string) {
	b, _ := os.ReadFile(path)
	var alarms []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			alarms = append(alarms, l)
		}
	}
	t.Logf("---- lb log: warnings and errors ----\n%s", strings.Join(alarms, "\n"))
	t.Logf("---- lb log: tail ----\n%s", tail(string(b), 60))
}

// waitRecord waits until the load has recorded a request ok accepts and
// returns the first such.
func waitRecord(t *testing.T, l *lbLoad, within time.Duration, what string, ok func(lbReq) bool) lbReq {
	t.Helper()
	var found lbReq
	eventually(t, what, within, func() error {
		for _, r := range l.snapshot() {
			if ok(r) {
				found = r
				return nil
			}
		}
		return fmt.Errorf("none among %d requests", len(l.snapshot()))
	})
	return found
}

// checkAnsweredBy sends n GET /v1/ha/state through the proxy at url, each
// on a new connection, and fails the test unless want answers them all.
func checkAnsweredBy(t *testing.T, url, want string, n int) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for i := 0; i < n; i++ {
		resp, err := hc.Get(url + "/v1/ha/state")
		if err != nil {
			t.Fatalf("GET /v1/ha/state through the proxy: %v", err)
		}
		var st tandem.ServerStatus
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil || st.ID != want {
			t.Fatalf("GET /v1/ha/state through the proxy: got HTTP %d from %q (%v), want 200 from %s", resp.StatusCode, st.ID, err, want)
		}
	}
}

// haproxyCmd runs one command on an HAProxy CLI socket (stats or master)
// and returns its whole output.
func haproxyCmd(path, cmd string) (string, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", fmt.Errorf("%s: %q: %w", path, cmd, err)
	}
	// Without prompt mode HAProxy answers and closes once our side is shut.
	_ = c.(*net.UnixConn).CloseWrite()
	out, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("%s: %q: %w", path, cmd, err)
	}
	return string(out), nil
}

// parseMasterLine reads the master's pid and reload count from the master
// CLI's `show proc`.
func parseMasterLine(out string) (pid, reloads int, err error) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == "master" {
			pid, err1 := strconv.Atoi(f[0])
			n, err2 := strconv.Atoi(f[2])
			if err1 != nil || err2 != nil {
				return 0, 0, fmt.Errorf("show proc: master line %q", line)
			}
			return pid, n, nil
		}
	}
	return 0, 0, fmt.Errorf("show proc: no master in %q", out)
}

// haproxyRoutable asks HAProxy which servers of backend it would send new
// requests to: running (by its checks or forced health) and neither in
// maintenance nor of weight 0.
func haproxyRoutable(admin, backend string) (map[string]bool, error) {
	out, err := haproxyCmd(admin, "show servers state "+backend)
	if err != nil {
		return nil, err
	}
	col := map[string]int{}
	got := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "#"):
			for i, f := range strings.Fields(strings.TrimPrefix(line, "#")) {
				col[f] = i
			}
			continue
		case len(col) == 0:
			continue // the version line
		}
		f := strings.Fields(line)
		field := func(k string) string {
			if i, ok := col[k]; ok && i < len(f) {
				return f[i]
			}
			return ""
		}
		op, err1 := strconv.Atoi(field("srv_op_state"))
		adm, err2 := strconv.Atoi(field("srv_admin_state"))
		w, err3 := strconv.Atoi(field("srv_uweight"))
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("show servers state: line %q", line)
		}
		got[field("srv_name")] = (op == 1 || op == 2) && adm == 0 && w > 0
	}
	if len(got) == 0 {
		return nil, fmt.Errorf("show servers state %s: no server in %q", backend, out)
	}
	return got, nil
}

// haproxyAdminSocket finds the admin socket of the HAProxy whose master is
// pid: the stats socket of the configuration file it was started with.
func haproxyAdminSocket(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	for i, a := range args {
		if a != "-f" || i+1 == len(args) {
			continue
		}
		cfg, err := os.ReadFile(args[i+1])
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(cfg), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "stats" && f[1] == "socket" {
				return f[2]
			}
		}
		t.Fatalf("no stats socket in %s", args[i+1])
	}
	t.Fatalf("haproxy %d: no -f in its command line %q", pid, args)
	return ""
}

// childProcs lists the live processes (not zombies) whose parent is ppid
// and whose command name is comm.
func childProcs(ppid int, comm string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || s[open+1:end] != comm {
			continue
		}
		f := strings.Fields(s[end+1:]) // state, ppid, ...
		if len(f) < 2 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if p, err := strconv.Atoi(f[1]); err == nil && p == ppid {
			out = append(out, pid)
		}
	}
	return out
}

// proxyMasters lists the proxy masters among tandem lb's (pid lbPID)
// children: not the checks it runs (`haproxy -c`, `nginx -t`), which
// bear the same command name.
func proxyMasters(lbPID int, proxy string) []int {
	var out []int
	for _, pid := range childProcs(lbPID, proxy) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		switch {
		case proxy == "haproxy" && slices.Contains(args, "-W") && !slices.Contains(args, "-c"):
		case proxy == "nginx" && strings.HasPrefix(args[0], "nginx: master process"):
		default:
			continue
		}
		out = append(out, pid)
	}
	return out
}

// proxyMaster is the proxy master that tandem lb (pid lbPID) runs.
func proxyMaster(t *testing.T, lbPID int, proxy string) int {
	t.Helper()
	var ms []int
	// A check tandem lb runs may be starting as we look: ask again.
	eventually(t, "one "+proxy+" master under tandem lb", 10*time.Second, func() error {
		if ms = proxyMasters(lbPID, proxy); len(ms) != 1 {
			return fmt.Errorf("%s masters among tandem lb's (pid %d) children: got %v, want one", proxy, lbPID, ms)
		}
		return nil
	})
	return ms[0]
}
