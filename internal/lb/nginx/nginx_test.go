package nginx

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

// TestStartAndClose starts a managed NGINX, sends a request through it,
// reads it back with Actual, and closes it: no process and no pid file is
// left.
func TestStartAndClose(t *testing.T) {
	d := newDriver(t, nil)
	a1 := startActive(t, "a1")
	listen := freeAddr(t)
	want := one("tandem", listen, lb.ModeActive, a1.server(true))
	want.Backends[0].Health = "/isActive"
	want.Rev = 7
	start(t, d, want)

	c := newConnClient()
	mustCall(t, c, "GET", "http://"+listen+"/v1/x?y=1", "", "a1 GET /v1/x?y=1 ")
	mustCall(t, c, "GET", "http://"+listen+GenerationPath, "", "1\n")
	pid := d.master.pid
	if len(workers(pid)) == 0 {
		t.Fatalf("master %d has no worker", pid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := d.Actual(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Actual: got %+v, want %+v", got, want)
	}
	if res := apply(t, d, want); res.Reloaded {
		t.Fatalf("Apply of the running state: got Reloaded, want a no-op")
	}

	done := d.Done()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	default:
		t.Fatal("Done not closed after Close")
	}
	if !gone(pid) {
		t.Fatalf("processes of group %d left after Close: %+v", pid, procs(func(p procInfo) bool { return p.pgid == pid }))
	}
	if _, err := os.Stat(filepath.Join(d.cfg.Dir, "nginx.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after Close: got %v, want it gone", err)
	}
	if _, _, _, err := call(c, "GET", "http://"+listen+"/", ""); err == nil {
		t.Fatal("a request after Close got an answer")
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := d.Apply(ctx, want); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close: got %v, want ErrClosed", err)
	}
}

// TestStartErrors: what can be seen before NGINX is touched is reported
// clearly (these need no nginx: /bin/true stands in for it).
func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ourPid := filepath.Join(dir, "our.pid")
	if err := os.WriteFile(ourPid, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := one("tandem", "127.0.0.1:1", lb.ModeActive, lb.Server{Name: "a", Addr: "127.0.0.1:2", Up: true})
	ext := func(conf, pid string) *External { return &External{Conf: conf, PidFile: pid} }
	cases := []struct {
		name string
		cfg  Config
		want lb.Desired
		is   error
		msg  string
	}{
		{"no nginx binary", Config{Binary: filepath.Join(dir, "nginx"), Dir: dir}, good, ErrNoBinary, "apt-get install nginx-light"},
		{"dir not writable", Config{Binary: "/bin/true", Dir: filepath.Join(file, "sub")}, good, nil, "not writable"},
		{"pid file unreadable", Config{Binary: "/bin/true", External: ext(filepath.Join(dir, "x.conf"), filepath.Join(dir, "none.pid"))}, good, nil, "pid file"},
		{"pid file of another process", Config{Binary: "/bin/true", External: ext(filepath.Join(dir, "x.conf"), ourPid)}, good, ErrNotRunning, "not an NGINX master"},
		{"conf dir not writable", Config{Binary: "/bin/true", External: ext(filepath.Join(file, "x.conf"), ourPid)}, good, nil, "not writable"},
		{"bad backend name", Config{Binary: "/bin/true", Dir: dir}, one("a b", "127.0.0.1:1", lb.ModeActive), ErrBadDesired, "backend name"},
		{"listen that could inject", Config{Binary: "/bin/true", Dir: dir}, one("a", "1; }", lb.ModeActive), ErrBadDesired, "listen address"},
		{"two backends on one address", Config{Binary: "/bin/true", Dir: dir}, lb.Desired{Backends: []lb.Backend{
			{Name: "a", Listen: ":80", Mode: lb.ModeAll}, {Name: "b", Listen: ":80", Mode: lb.ModeAll}}}, ErrBadDesired, "both listen on :80"},
		{"bad server address", Config{Binary: "/bin/true", Dir: dir}, one("a", ":80", lb.ModeAll, lb.Server{Name: "x", Addr: "nohost"}), ErrBadDesired, "want HOST:PORT"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = d.Start(ctx, tc.want)
			if err == nil {
				t.Fatal("got no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("got %v, want it to wrap %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %q, want it to say %q", err, tc.msg)
			}
		})
	}

	t.Run("config", func(t *testing.T) {
		for _, cfg := range []Config{
			{},
			{External: &External{Conf: "relative.conf"}},
			{Dir: dir, Checks: lb.Checks{Inter: time.Second, Fall: -1}},
		} {
			if _, err := New(cfg); err == nil {
				t.Errorf("New(%+v): got no error", cfg)
			}
		}
	})
}

// TestApplyMovesTraffic changes the active: once Apply has returned,
// every new connection reaches the new one.
func TestApplyMovesTraffic(t *testing.T) {
	d := newDriver(t, nil)
	a1, a2 := startActive(t, "a1"), startActive(t, "a2")
	listen := freeAddr(t)
	start(t, d, one("tandem", listen, lb.ModeActive, a1.server(true), a2.server(false)))
	c := newConnClient()
	mustCall(t, c, "GET", "http://"+listen+"/", "", "a1 GET / ")

	// A client polls through the change, to see when a2 first answers.
	var first atomic.Int64 // ns since t0 of the first answer from a2
	var pollErrs atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	t0 := time.Now()
	wg.Go(func() {
		pc := newConnClient()
		for {
			select {
			case <-stop:
				return
			default:
			}
			code, body, _, err := call(pc, "GET", "http://"+listen+"/", "")
			switch {
			case err != nil || code != http.StatusOK:
				pollErrs.Add(1)
			case strings.HasPrefix(body, "a2 ") && first.Load() == 0:
				first.Store(int64(time.Since(t0)))
			}
		}
	})
	res := apply(t, d, one("tandem", listen, lb.ModeActive, a1.server(false), a2.server(true)))
	returned := time.Since(t0)
	for i := 0; i < 50; i++ {
		mustCall(t, c, "GET", "http://"+listen+"/", "", "a2 GET / ")
	}
	close(stop)
	wg.Wait()
	if !res.Reloaded {
		t.Errorf("Applied.Reloaded: got false, want true")
	}
	if n := pollErrs.Load(); n != 0 {
		t.Errorf("new-connection requests during the change: got %d failures, want 0", n)
	}
	t.Logf("Apply returned after %v (driver's Took %v); first request served by the new active %v after Apply's call",
		returned.Round(time.Microsecond), res.Took.Round(time.Microsecond), time.Duration(first.Load()).Round(time.Microsecond))
}

// TestFollow307 is the safety net: a stale configuration whose primary is
// a standby (or a dead server) still gets requests to the active, with
// method, URI and body intact, in one hop.
func TestFollow307(t *testing.T) {
	d := newDriver(t, nil)
	act := startActive(t, "act")
	toActive := func() string { return act.addr }
	s1, s2 := startStandby(t, "s1", toActive), startStandby(t, "s2", toActive)
	listen := freeAddr(t)
	dead := freeAddr(t)
	start(t, d, one("tandem", listen, lb.ModeActive, s1.server(true), s2.server(false), act.server(false)))
	c := newConnClient()
	url := "http://" + listen

	mustCall(t, c, "GET", url+"/v1/jobs?state=running", "", "act GET /v1/jobs?state=running ")
	before := s1.hits.Load()
	mustCall(t, c, "POST", url+"/v1/jobs", `{"id":"j42"}`, `act POST /v1/jobs {"id":"j42"}`)
	if got := s1.hits.Load() - before; got != 1 {
		t.Errorf("the POST reached the stale primary %d times, want 1 (then followed to the active)", got)
	}
	// Larger than client_body_buffer_size: NGINX buffers it to a file
	// under Dir/tmp, which its workers (nobody) must reach, and sends it
	// twice.
	big := strings.Repeat("0123456789abcdef", 64<<10/16)
	mustCall(t, c, "PUT", url+"/v1/blob", big, "act PUT /v1/blob "+big)

	t.Run("dead primary", func(t *testing.T) {
		// Refused: the POST was not sent, so it goes to a backup (a
		// standby, which redirects, or the active).
		apply(t, d, one("tandem", listen, lb.ModeActive,
			lb.Server{Name: "dead", Addr: dead, Up: true}, s1.server(false), act.server(false)))
		for i := 0; i < 5; i++ {
			mustCall(t, c, "POST", url+"/v1/jobs", "body", "act POST /v1/jobs body")
		}
	})
	t.Run("one hop", func(t *testing.T) {
		// s3 redirects to s1, which redirects to act: the second 307
		// goes to the client.
		s3 := startStandby(t, "s3", func() string { return s1.addr })
		apply(t, d, one("tandem", listen, lb.ModeActive, s3.server(true), s1.server(false), act.server(false)))
		code, _, h, err := call(c, "GET", url+"/x", "")
		if err != nil {
			t.Fatal(err)
		}
		if want := "http://" + act.addr + "/x"; code != http.StatusTemporaryRedirect || h.Get("Location") != want {
			t.Fatalf("got %d Location %q, want 307 Location %q", code, h.Get("Location"), want)
		}
	})
	t.Run("not a member", func(t *testing.T) {
		// A Location outside the backend is not followed: the client
		// gets the 307.
		rogue := startStandby(t, "rogue", func() string { return "127.0.0.1:1" })
		apply(t, d, one("tandem", listen, lb.ModeActive, rogue.server(true), act.server(false)))
		code, _, h, err := call(c, "POST", url+"/x", "body")
		if err != nil {
			t.Fatal(err)
		}
		if want := "http://127.0.0.1:1/x"; code != http.StatusTemporaryRedirect || h.Get("Location") != want {
			t.Fatalf("got %d Location %q, want 307 Location %q", code, h.Get("Location"), want)
		}
	})
}

// TestApplyRefused: a configuration NGINX refuses, at nginx -t or at the
// reload, fails Apply with NGINX's words, and the last good one keeps
// serving, on disk and in NGINX.
func TestApplyRefused(t *testing.T) {
	d := newDriver(t, nil)
	a1, a2 := startActive(t, "a1"), startActive(t, "a2")
	listen := freeAddr(t)
	good := one("tandem", listen, lb.ModeActive, a1.server(true), a2.server(false))
	start(t, d, good)
	conf := filepath.Join(d.cfg.Dir, "nginx.conf")
	onDisk, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	c := newConnClient()
	url := "http://" + listen

	// The port of the second case is held by this listener.
	busy := startActive(t, "busy")
	for _, tc := range []struct {
		name, listen, msg string
	}{
		{"nginx -t", "notanaddress", `host not found in "notanaddress" of the "listen" directive`},
		{"reload", busy.addr, "Address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := one("tandem", tc.listen, lb.ModeActive, a1.server(false), a2.server(true))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := d.Apply(ctx, bad)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Apply: got %v, want ErrInvalid quoting %q", err, tc.msg)
			}
			t.Logf("Apply: %v", err)
			if now, _ := os.ReadFile(conf); string(now) != string(onDisk) {
				t.Fatalf("nginx.conf changed after a refused Apply:\n%s", now)
			}
			mustCall(t, c, "GET", url+"/", "", "a1 GET / ")
			mustCall(t, c, "GET", url+GenerationPath, "", "1\n")
			got, err := d.Actual(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, good) {
				t.Fatalf("Actual: got %+v, want %+v", got, good)
			}
		})
	}
	// The driver is not wedged: a good change goes through.
	apply(t, d, one("tandem", listen, lb.ModeActive, a1.server(false), a2.server(true)))
	mustCall(t, c, "GET", url+"/", "", "a2 GET / ")
}

// TestReloadsUnderLoad reloads 20 times back to back while clients loop:
// no request on a new connection may fail; requests on keep-alive
// connections that an old worker closes at the wrong instant can, and
// are counted.
func TestReloadsUnderLoad(t *testing.T) {
	d := newDriver(t, nil)
	a1, a2 := startActive(t, "a1"), startActive(t, "a2")
	listen := freeAddr(t)
	state := func(i int) lb.Desired {
		return one("tandem", listen, lb.ModeActive, a1.server(i%2 == 0), a2.server(i%2 == 1))
	}
	start(t, d, state(0))
	url := "http://" + listen + "/"

	type counts struct {
		ok, failed atomic.Int64
		retried    atomic.Int64 // by Go's transport, on a new connection, unseen by the caller
		firstErr   atomic.Value
	}
	loop := func(c *http.Client, method, body string, n *counts, stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			conns := 0
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { conns++ }})
			code, _, _, err := callCtx(ctx, c, method, url, body)
			if conns > 1 {
				n.retried.Add(1)
			}
			if err == nil && code != http.StatusOK {
				err = errors.New(http.StatusText(code))
			}
			if err != nil {
				n.failed.Add(1)
				n.firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			n.ok.Add(1)
		}
	}
	keepAlive := func() *http.Client {
		return &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1}, Timeout: 5 * time.Second}
	}
	var fresh, kaGet, kaPost counts
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { loop(newConnClient(), "GET", "", &fresh, stop) })
	wg.Go(func() { loop(keepAlive(), "GET", "", &kaGet, stop) })
	wg.Go(func() { loop(keepAlive(), "POST", "payload", &kaPost, stop) })

	var total, worst time.Duration
	const reloads = 20
	for i := 1; i <= reloads; i++ {
		res := apply(t, d, state(i))
		if !res.Reloaded {
			t.Fatalf("Apply %d: not reloaded", i)
		}
		total += res.Took
		worst = max(worst, res.Took)
	}
	close(stop)
	wg.Wait()

	t.Logf("%d reloads: mean %v, worst %v", reloads, (total / reloads).Round(time.Microsecond), worst.Round(time.Microsecond))
	for _, x := range []struct {
		name string
		n    *counts
	}{{"new connection GET", &fresh}, {"keep-alive GET", &kaGet}, {"keep-alive POST", &kaPost}} {
		t.Logf("%s: %d ok, %d failed (first: %v), %d retried by Go's transport", x.name, x.n.ok.Load(), x.n.failed.Load(), x.n.firstErr.Load(), x.n.retried.Load())
	}
	if n := fresh.failed.Load(); n != 0 {
		t.Errorf("new-connection requests across reloads: got %d failures (first: %v), want 0", n, fresh.firstErr.Load())
	}
	if fresh.ok.Load() == 0 || kaGet.ok.Load() == 0 || kaPost.ok.Load() == 0 {
		t.Errorf("a client loop made no successful request: the test measured nothing")
	}
}

// TestManagedCrash: a master killed with SIGKILL (what Pdeathsig cannot
// cover) leaves workers serving the old configuration; Done reports the
// exit, and the next Start kills them and starts afresh.
func TestManagedCrash(t *testing.T) {
	d := newDriver(t, nil)
	a1, a2 := startActive(t, "a1"), startActive(t, "a2")
	listen := freeAddr(t)
	start(t, d, one("tandem", listen, lb.ModeActive, a1.server(true), a2.server(false)))
	pid := d.master.pid
	done := d.Done()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10s after the master was killed")
	}
	if err := d.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Err: got %v, want the kill", err)
	}
	c := newConnClient()
	mustCall(t, c, "GET", "http://"+listen+"/", "", "a1 GET / ") // the orphaned worker
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := d.Apply(ctx, one("tandem", listen, lb.ModeActive, a1.server(false), a2.server(true))); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Apply with NGINX dead: got %v, want ErrNotRunning", err)
	}

	start(t, d, one("tandem", listen, lb.ModeActive, a1.server(false), a2.server(true)))
	if !gone(pid) {
		t.Fatalf("the old group %d is still there after Start", pid)
	}
	mustCall(t, c, "GET", "http://"+listen+"/", "", "a2 GET / ")
}

// TestModeAll: every up server gets requests and the others none; sticky
// keeps a client (by address) on one.
func TestModeAll(t *testing.T) {
	d := newDriver(t, nil)
	a1, a2, a3 := startActive(t, "a1"), startActive(t, "a2"), startActive(t, "a3")
	listen := freeAddr(t)
	want := one("svc", listen, lb.ModeAll, a1.server(true), a2.server(true), a3.server(false))
	start(t, d, want)
	c := newConnClient()
	count := func() map[string]int {
		seen := map[string]int{}
		for i := 0; i < 20; i++ {
			code, body, _, err := call(c, "GET", "http://"+listen+"/", "")
			if err != nil || code != http.StatusOK {
				t.Fatalf("GET: %d %v", code, err)
			}
			seen[strings.Fields(body)[0]]++
		}
		return seen
	}
	if seen := count(); seen["a1"] == 0 || seen["a2"] == 0 || seen["a3"] != 0 {
		t.Errorf("round robin over a1 and a2 (a3 down): got %v", seen)
	}
	want.Backends[0].Sticky = true
	apply(t, d, want)
	if seen := count(); len(seen) != 1 || seen["a3"] != 0 {
		t.Errorf("sticky by client address: got %v, want one of a1, a2 only", seen)
	}
}

// TestExternal attaches to an NGINX started the way systemd would (its own
// pid file, an include of the file the driver writes) and drives it
// without starting or stopping any NGINX.
func TestExternal(t *testing.T) {
	bin := requireNginx(t)
	dir := testDir(t)
	if err := os.Mkdir(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	main := filepath.Join(dir, "nginx.conf")
	pidFile := filepath.Join(dir, "nginx.pid")
	mainText := "pid " + pidFile + ";\nerror_log " + dir + "/error.log;\nworker_processes 1;\nevents {}\nhttp {\n    access_log off;\n"
	for _, p := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		mainText += "    " + p + "_temp_path " + dir + "/" + p + ";\n"
	}
	mainText += "    include " + dir + "/conf.d/*.conf;\n}\n"
	if err := os.WriteFile(main, []byte(mainText), 0o644); err != nil {
		t.Fatal(err)
	}
	// Daemonized, as with systemd's Type=forking.
	if out, err := exec.Command(bin, "-p", dir+"/", "-c", main).CombinedOutput(); err != nil {
		t.Fatalf("start nginx: %v: %s", err, out)
	}
	var pid int
	waitFor(t, "nginx's pid file", 10*time.Second, func() bool {
		p, err := readPid(pidFile)
		pid = p
		return err == nil && isMaster(p)
	})
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGQUIT)
		waitFor(t, "the test's nginx to stop", 10*time.Second, func() bool { return gone(pid) })
	})

	a1, a2 := startActive(t, "a1"), startActive(t, "a2")
	listen := freeAddr(t)
	newExt := func(conf string, timeout time.Duration) *Driver {
		d, err := New(Config{
			// No ErrorLog: a refused reload is seen from /proc alone.
			External:      &External{Conf: conf, PidFile: pidFile, Main: main, Prefix: dir + "/"},
			Checks:        lb.Checks{Inter: time.Second, Fall: 3},
			ReloadTimeout: timeout,
			Log:           testLog(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}

	t.Run("not included", func(t *testing.T) {
		other := filepath.Join(dir, "other")
		if err := os.Mkdir(other, 0o755); err != nil {
			t.Fatal(err)
		}
		d := newExt(filepath.Join(other, "tandem-lb.conf"), 5*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := d.Start(ctx, one("tandem", listen, lb.ModeActive, a1.server(true)))
		if err == nil || !strings.Contains(err.Error(), "include") {
			t.Fatalf("Start with a file NGINX does not include: got %v, want a question about the include", err)
		}
		t.Logf("Start: %v", err)
	})

	conf := filepath.Join(dir, "conf.d", "tandem-lb.conf")
	d := newExt(conf, 15*time.Second)
	start(t, d, one("tandem", listen, lb.ModeActive, a1.server(true), a2.server(false)))
	c := newConnClient()
	mustCall(t, c, "GET", "http://"+listen+"/", "", "a1 GET / ")
	apply(t, d, one("tandem", listen, lb.ModeActive, a1.server(false), a2.server(true)))
	mustCall(t, c, "GET", "http://"+listen+"/", "", "a2 GET / ")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	onDisk, _ := os.ReadFile(conf)
	busy := startActive(t, "busy")
	for _, bad := range []string{"notanaddress", busy.addr} {
		_, err := d.Apply(ctx, one("tandem", bad, lb.ModeActive, a1.server(true)))
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("Apply with listen %s: got %v, want ErrInvalid", bad, err)
		}
		t.Logf("Apply with listen %s: %v", bad, err)
		mustCall(t, c, "GET", "http://"+listen+"/", "", "a2 GET / ")
		if now, _ := os.ReadFile(conf); string(now) != string(onDisk) {
			t.Fatalf("%s changed after a refused Apply", conf)
		}
	}
	apply(t, d, one("tandem", listen, lb.ModeActive, a1.server(true), a2.server(false)))
	mustCall(t, c, "GET", "http://"+listen+"/", "", "a1 GET / ")

	if p, err := readPid(pidFile); err != nil || p != pid || !isMaster(pid) {
		t.Fatalf("master: got pid %d (%v), want the test's %d, running", p, err, pid)
	}
	for _, p := range procs(func(p procInfo) bool { return p.ppid == os.Getpid() && strings.HasPrefix(p.cmdline, "nginx") }) {
		t.Errorf("the driver left an NGINX process: %+v", p)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "conf.d"))
	for _, e := range ents {
		if e.Name() != "tandem-lb.conf" && !strings.HasSuffix(e.Name(), ".rejected") {
			t.Errorf("left in conf.d: %s", e.Name())
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// The safety net: NGINX runs on, as last applied.
	mustCall(t, c, "GET", "http://"+listen+"/", "", "a1 GET / ")
}

// TestPdeathsig kills -9 a process that started NGINX (a stand-in for
// tandem lb: this test binary, see helperEnv): NGINX, workers included,
// stops with it.
func TestPdeathsig(t *testing.T) {
	requireNginx(t)
	a1 := startActive(t, "a1")
	listen := freeAddr(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+testDir(t), "HELPER_LISTEN="+listen, "HELPER_SERVER="+a1.addr)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("the helper printed no pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("the helper printed %q, not a pid", line)
	}
	t.Cleanup(func() { // only if the test failed: NGINX should be gone
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = killGroup(ctx, pid)
	})
	c := newConnClient()
	mustCall(t, c, "GET", "http://"+listen+"/", "", "a1 GET / ")
	if len(workers(pid)) == 0 {
		t.Fatalf("NGINX %d has no worker", pid)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true
	waitFor(t, "NGINX and its workers to stop after the helper was killed", 10*time.Second, func() bool { return gone(pid) })
	if _, _, _, err := call(c, "GET", "http://"+listen+"/", ""); err == nil {
		t.Fatal("NGINX still answers after the process that started it was killed")
	}
}
