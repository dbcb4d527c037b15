// Package nginx is the lb.Driver for NGINX open source. NGINX has no
// runtime API for upstreams, so every change is a new configuration,
// checked with nginx -t and loaded by a graceful reload; Apply returns
// once every worker that accepts new connections runs it.
//
// # What NGINX open source cannot do, compared with HAProxy
//
//   - No runtime API: a change of which server is up is a reload, not a
//     command on an admin socket. A reload forks new workers, tells the old
//     ones to finish their in-flight requests and exit, and costs the parse
//     of the configuration, the old workers' idle client connections (see
//     below), their keep-alive connections to the servers and what their
//     passive checks had learnt. Applied.Reloaded is always true for a
//     change, and Applied.Runtime always 0.
//   - No active health checks (health_check is NGINX Plus): Backend.Health
//     is recorded but not checked. Checks are passive: a server that fails
//     Checks.Fall requests (refused, timed out, 502, 503) within
//     Fall×Inter gets no request for Fall×Inter, then one request tries it
//     again; Checks.Rise has no equivalent. When tandem lb is gone, these
//     and the 307 safety net are all that routes.
//   - No cookie stickiness (sticky is NGINX Plus): Backend.Sticky is
//     "hash $remote_addr consistent", by client address: clients behind
//     one NAT share a server, a client whose address changes moves, and
//     when a server goes down only its clients move. It applies to ModeAll
//     only: in ModeActive one server gets every request anyway, and NGINX's
//     hash does not allow the backup servers ModeActive uses.
//   - No live state to report: NGINX cannot say which configuration it
//     runs or which servers its passive checks hold down. Actual reads the
//     last file applied (the one the running master loaded, kept in memory
//     and on disk) and asks each listening address which generation
//     answers (GenerationPath).
//
// # Routing
//
// Each Backend is a server block on Listen (default_server, so an
// operator's server on the same address is a conflict nginx -t reports,
// not a silent split by Host) in front of an upstream. ModeActive: the up
// server is the primary and every other server a backup, which NGINX tries
// only when the primaries fail. ModeAll: the up servers get requests and
// the others are "down" (a server tandem does not count as serving gets
// nothing). In both modes, a backend with no server up has every server
// as a normal one, so that something answers (the 307 safety net then
// finds the active); Actual reports them as not up, as applied. A backend
// with no server at all answers 503. Listen ":PORT" is every IPv4 address.
//
// # Retries and the 307 safety net
//
// "proxy_next_upstream error timeout http_502 http_503": a request whose
// connection is refused or times out, or that gets 502 or 503, goes to the
// next server, but a non-idempotent one (POST, PATCH, LOCK) only if it was
// not sent yet (no non_idempotent): a POST that may have reached a server
// is never sent to another. A connection is given ConnectTimeout.
//
// A standby answers tandem's API with 307 and a Location at the active.
// NGINX follows it itself, once: the 307 is intercepted and a named
// location proxies the request to the Location, with the same method and
// the same body (NGINX has buffered it). A second 307 goes to the client.
// Only a Location of the form http://ADDR/... where ADDR is one of the
// backend's own servers is followed (IP literals, as tandem writes them,
// need no resolver); any other goes to the client as a 307 to the same
// Location (with NGINX's body, not the server's).
//
// # Reloads
//
// A reload is SIGHUP to the master (or External.Reload), one at a time.
// It has taken effect when every worker that may accept a connection is a
// new one: an old worker retitles itself "worker process is shutting
// down" as it closes its listening sockets, so the driver reads the titles
// of the master's children in /proc, then checks that every listening
// address answers GenerationPath with the new generation. Listening
// sockets are the master's and are shared, not per worker (no reuseport),
// so no new connection is lost across a reload. NGINX's master waits
// 100ms after forking the new workers before it stops the old ones, so a
// reload takes at least that (new connections may reach the new workers
// from their start). A reload NGINX refuses after nginx -t passed (an
// address in use) is seen in its error log ([emerg]) or, without one, as
// a master back in sigsuspend (SIGHUP no longer blocked, /proc/PID/status)
// that forked nothing: NGINX keeps running the old configuration, and so
// does the driver (and the file on disk). The driver sends no SIGHUP
// while the master is still busy with an earlier one.
//
// Idle keep-alive client connections of the old workers are closed at
// once, and a request in flight on an old worker gets "Connection: close".
// A client that sends a request on an idle connection just as it is
// closed sees the connection reset or closed: an HTTP/1.1 race no proxy
// avoids on close. Go's client (like most) then retries an idempotent
// request on a new connection by itself, but not a POST. The tests measure
// it.
//
// # Managed and external
//
// Managed (Config.External nil): Start runs "nginx -p Dir -c
// Dir/nginx.conf" as a child in its own process group, with every path
// (pid, error log, temp files) under Dir, and Pdeathsig SIGTERM: NGINX
// shuts down, workers included, when tandem lb dies. Done reports an exit;
// Start starts it again. Workers left serving by a master killed with
// SIGKILL are killed by the next Start.
//
// External: NGINX is someone else's (systemd): the driver writes only
// External.Conf, the upstream and server blocks, which the operator's
// configuration includes inside its http block; checks the whole
// configuration with nginx -t; reloads with SIGHUP to the pid in
// External.PidFile or with External.Reload; never starts or stops NGINX.
// The new file is in place while nginx -t runs and is put back if it
// fails: a restart of NGINX in those milliseconds would read it.
//
// # TLS
//
// An upstream with a server with TLS set is https (one scheme per
// proxy_pass): proxy_ssl_verify against TLS.BackendCA, TLS 1.3, one name
// checked for every server (TLS.ServerName, else DefaultServerName), no
// SNI, the client certificate if given; the 307 safety net then follows
// https:// Locations only. A backend with ListenTLS listens with ssl and
// TLS.Cert; GenerationPath is probed over TLS there. NGINX reads the files
// when it loads a configuration: ReloadTLS is a reload.
package nginx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

var _ lb.Driver = (*Driver)(nil)

// Sentinel errors.
var (
	// ErrNoBinary means the nginx executable was not found.
	ErrNoBinary = errors.New("nginx: executable not found (install it: apt-get install nginx-light)")
	// ErrInvalid means NGINX refused a configuration: nginx -t failed, or
	// the master did not load it. The running NGINX and the file on disk
	// keep the last good one.
	ErrInvalid = errors.New("nginx: configuration refused")
	// ErrNotRunning means the managed NGINX has exited (see Done); Start
	// starts it again.
	ErrNotRunning = errors.New("nginx: not running")
	// ErrNotStarted means Start has not succeeded yet.
	ErrNotStarted = errors.New("nginx: driver not started")
	// ErrClosed means Close was called.
	ErrClosed = errors.New("nginx: driver closed")
)

// Attribute keys of the driver's log records.
const (
	logPid        = "pid"
	logGeneration = "generation"
	logRev        = "rev"
	logTookMS     = "took_ms"
	logBackend    = "backend"
)

// Config configures a Driver.
type Config struct {
	// Binary is the nginx executable, looked up in PATH (default "nginx").
	Binary string
	// Dir is the managed NGINX's prefix and holds everything it reads and
	// writes: nginx.conf, nginx.pid, error.log, stderr.log (what NGINX
	// printed before it opened error.log), tmp/, and
	// nginx.conf.candidate (the last configuration checked, kept for
	// reading when nginx -t refused it). Unused when External is set.
	Dir string
	// Checks are the passive health checks: max_fails is Fall,
	// fail_timeout is Fall×Inter.
	Checks lb.Checks
	// External, when set, attaches to an NGINX that someone else runs.
	External *External
	// Workers is worker_processes (managed; 0: auto, one per CPU).
	Workers int
	// User is the user workers run as when NGINX starts as root (managed;
	// default NGINX's, nobody). It must be able to reach Dir/tmp.
	User string
	// ConnectTimeout is proxy_connect_timeout: a server that does not
	// accept within it is a failure and the request goes to the next one
	// (default 2s).
	ConnectTimeout time.Duration
	// ShutdownTimeout is worker_shutdown_timeout: how long old workers
	// finish in-flight requests after a reload before they close them
	// (managed; default 1m).
	ShutdownTimeout time.Duration
	// Keepalive is how many idle connections each worker keeps to each
	// backend's servers (default 16).
	Keepalive int
	// ReloadTimeout bounds nginx -t plus a reload until it has taken
	// effect, and a start until NGINX serves (default 10s).
	ReloadTimeout time.Duration
	// StopTimeout is how long Close lets NGINX finish in-flight requests
	// (SIGQUIT) before it kills it (default 10s).
	StopTimeout time.Duration
	// TLS are the files of TLS to servers with TLS set (an upstream with
	// one is https) and on backends with ListenTLS, which NGINX reads at
	// each reload (ReloadTLS). TLS.ServerName is the one name checked in
	// every server's certificate, against its DNS names and IP addresses;
	// empty means DefaultServerName.
	TLS lb.TLS
	Log *slog.Logger
}

// External describes an NGINX run by someone else, for example systemd.
type External struct {
	// Conf is the file the driver writes: upstream and server blocks only,
	// which NGINX's configuration must include inside its http block, e.g.
	// /etc/nginx/conf.d/tandem-lb.conf (Debian's nginx.conf includes
	// conf.d/*.conf). The driver's temporary files next to it start with
	// a dot, so that no include glob takes them.
	Conf string
	// PidFile is the master's pid file (default /run/nginx.pid).
	PidFile string
	// Main and Prefix are nginx -t's -c and -p (default: NGINX's own,
	// /etc/nginx/nginx.conf on Debian).
	Main, Prefix string
	// ErrorLog is NGINX's error log, read after a reload to quote why
	// NGINX refused it. Without it a refusal is still seen (the master is
	// idle again and forked no worker), but not explained.
	ErrorLog string
	// Reload, if set, is the command that reloads NGINX (e.g. systemctl
	// reload nginx), which must have signalled the master when it
	// returns; by default the driver sends SIGHUP to the master.
	Reload []string
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		Binary:          "nginx",
		Checks:          lb.Checks{Inter: 2 * time.Second, Fall: 3, Rise: 2},
		ConnectTimeout:  2 * time.Second,
		ShutdownTimeout: time.Minute,
		Keepalive:       16,
		ReloadTimeout:   10 * time.Second,
		StopTimeout:     10 * time.Second,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Binary == "" {
		c.Binary = d.Binary
	}
	if c.Checks.Inter == 0 {
		c.Checks.Inter = d.Checks.Inter
	}
	if c.Checks.Fall == 0 {
		c.Checks.Fall = d.Checks.Fall
	}
	if c.Checks.Rise == 0 {
		c.Checks.Rise = d.Checks.Rise
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = d.ConnectTimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = d.ShutdownTimeout
	}
	if c.Keepalive == 0 {
		c.Keepalive = d.Keepalive
	}
	if c.ReloadTimeout == 0 {
		c.ReloadTimeout = d.ReloadTimeout
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = d.StopTimeout
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Dir != "" {
		if abs, err := filepath.Abs(c.Dir); err == nil {
			c.Dir = abs
		}
	}
	if e := c.External; e != nil {
		x := *e
		if x.PidFile == "" {
			x.PidFile = "/run/nginx.pid"
		}
		c.External = &x
	}
	return c
}

// Validate checks the settings (not the machine: Start does).
func (c Config) Validate() error {
	if c.External == nil && c.Dir == "" {
		return errors.New("nginx: no Dir for the managed NGINX's files")
	}
	if strings.ContainsAny(c.Dir, "\n\r\x00") {
		return fmt.Errorf("nginx: Dir %q: control characters", c.Dir)
	}
	if c.External != nil && !filepath.IsAbs(c.External.Conf) {
		return fmt.Errorf("nginx: External.Conf %q: want an absolute path, the file NGINX's configuration includes", c.External.Conf)
	}
	if c.User != "" && !nameRE.MatchString(c.User) {
		return fmt.Errorf("nginx: User %q: not a user name", c.User)
	}
	if c.Checks.Inter < time.Millisecond || c.Checks.Fall < 1 {
		return fmt.Errorf("nginx: checks %+v: want Inter of at least 1ms and Fall of at least 1", c.Checks)
	}
	t := c.TLS
	if (t.BackendCert == "") != (t.BackendKey == "") || (t.Cert == "") != (t.Key == "") {
		return errors.New("nginx: TLS: a certificate needs its key, and a key its certificate")
	}
	if t.BackendCert != "" && t.BackendCA == "" {
		return errors.New("nginx: TLS: a client certificate for the servers needs their CA (BackendCA)")
	}
	for _, p := range []string{t.BackendCA, t.BackendCert, t.BackendKey, t.Cert, t.Key} {
		if p != "" && (!filepath.IsAbs(p) || strings.ContainsAny(p, "\n\r\x00")) {
			return fmt.Errorf("nginx: TLS file %q: want an absolute path without control characters", p)
		}
	}
	if t.ServerName != "" && !hostRE.MatchString(t.ServerName) {
		return fmt.Errorf("nginx: TLS server name %q: want a host name or address", t.ServerName)
	}
	if c.Workers < 0 || c.Keepalive < 1 || c.ConnectTimeout <= 0 || c.ShutdownTimeout <= 0 || c.ReloadTimeout <= 0 || c.StopTimeout <= 0 {
		return errors.New("nginx: Workers must not be negative, Keepalive and every timeout must be positive")
	}
	return nil
}

func (c Config) settings() settings {
	return settings{
		managed:         c.External == nil,
		dir:             c.Dir,
		workers:         c.Workers,
		user:            c.User,
		shutdownTimeout: c.ShutdownTimeout,
		connectTimeout:  c.ConnectTimeout,
		maxFails:        c.Checks.Fall,
		failTimeout:     c.Checks.Inter * time.Duration(c.Checks.Fall),
		keepalive:       c.Keepalive,
		tls:             c.TLS,
	}
}

// checkTLS refuses a desired state that needs TLS files the driver was not
// given: a server with TLS and no CA to verify it, a listener with TLS and
// no certificate to serve.
func (c Config) checkTLS(want lb.Desired) error {
	for _, b := range want.Backends {
		if b.ListenTLS && c.TLS.Cert == "" {
			return fmt.Errorf("%w: backend %s serves TLS on %s, but no certificate was given (--tls-cert, --tls-key)", ErrBadDesired, b.Name, b.Listen)
		}
		for _, s := range b.Servers {
			if s.TLS && c.TLS.BackendCA == "" {
				return fmt.Errorf("%w: server %s/%s serves TLS (https), but no CA was given to verify it (--backend-ca)", ErrBadDesired, b.Name, s.Name)
			}
		}
	}
	return nil
}

// Driver drives one NGINX. Its methods are safe for concurrent use and run
// one at a time.
type Driver struct {
	cfg   Config
	log   *slog.Logger
	probe *http.Client // GenerationPath, one connection per request
	wg    sync.WaitGroup

	mu      sync.Mutex
	bin     string
	started bool
	closed  bool
	master  *master // managed: the NGINX Start started
	gen     int64   // the last generation rendered; never reused
	cur     *applied
	// dirty: the running NGINX may not run cur (a reload that did not
	// finish, a listening address that answers another generation): the
	// next Apply reloads even if nothing changed.
	dirty bool
}

// applied is the last good configuration: on disk, and loaded by NGINX.
type applied struct {
	text string
	gen  int64
	d    lb.Desired
}

// New returns a driver for cfg. It starts nothing: see Start.
func New(cfg Config) (*Driver, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Driver{
		cfg: cfg,
		log: cfg.Log.With("proxy", "nginx"),
		probe: &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil,
				// For listeners with TLS: the probe asks our own NGINX,
				// on the address it listens on, for a generation number
				// (public, see GenerationPath), and needs no proof of
				// who answers; the certificate may name none of the
				// addresses probed (a wildcard listener is probed on
				// loopback).
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // see above
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// conf is the file NGINX reads.
func (d *Driver) conf() string {
	if d.cfg.External != nil {
		return d.cfg.External.Conf
	}
	return filepath.Join(d.cfg.Dir, "nginx.conf")
}

func (d *Driver) errorLog() string {
	if d.cfg.External != nil {
		return d.cfg.External.ErrorLog
	}
	return filepath.Join(d.cfg.Dir, "error.log")
}

// Start starts NGINX with want and returns once it serves every backend
// (managed), or attaches to the NGINX in External.PidFile and applies want
// with a reload (external). Everything that can be checked before NGINX is
// touched is: the binary (ErrNoBinary), the directories it must write,
// the pid file, want itself. Managed, Start may be called again once Done
// is closed, to start NGINX again. A cancelled ctx stops the wait; a
// managed NGINX that did not come up is killed.
func (d *Driver) Start(ctx context.Context, want lb.Desired) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.started && (d.master == nil || !d.master.exited()) {
		return errors.New("nginx: already started")
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoBinary, err)
	}
	d.bin = bin
	want = normalized(want)
	if err := check(want); err != nil {
		return err
	}
	if err := d.cfg.checkTLS(want); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ReloadTimeout)
	defer cancel()
	if d.cfg.External != nil {
		err = d.attach(ctx, want)
	} else {
		err = d.startManaged(ctx, want)
	}
	if err != nil {
		return err
	}
	d.started = true
	return nil
}

func (d *Driver) startManaged(ctx context.Context, want lb.Desired) error {
	dir := d.cfg.Dir
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return fmt.Errorf("nginx: directory %s not writable: %w", dir, err)
	}
	if err := writable(dir); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := workerCanReach(filepath.Join(dir, "tmp"), d.cfg.User); err != nil {
			return err
		}
	}
	if err := d.cleanStale(ctx); err != nil {
		return err
	}
	gen := d.gen + 1
	text := render(want, gen, d.cfg.settings())
	if _, err := d.install(ctx, text); err != nil {
		return err
	}
	d.gen = gen
	stderrPath := filepath.Join(dir, "stderr.log")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return fmt.Errorf("nginx: %w", err)
	}
	errOff := fileSize(d.errorLog())
	m, err := startMaster(d.bin, []string{"-p", dir + "/", "-c", d.conf()}, dir, stderr)
	stderr.Close()
	if err != nil {
		return fmt.Errorf("nginx: start %s: %w", d.bin, err)
	}
	if err := d.waitServing(ctx, m, gen, want.Backends); err != nil {
		kctx, cancel := context.WithTimeout(context.Background(), d.cfg.StopTimeout)
		defer cancel()
		_ = killGroup(kctx, m.pid)
		<-m.done
		_ = os.Remove(filepath.Join(dir, "nginx.pid"))
		msgs := append(logTail(stderrPath, 0, "[emerg]", "[alert]", "[crit]"), logTail(d.errorLog(), errOff, "[emerg]", "[alert]", "[crit]")...)
		if len(msgs) > 0 {
			return fmt.Errorf("nginx: did not start: %s: %w", strings.Join(msgs, "; "), err)
		}
		return fmt.Errorf("nginx: did not start: %w", err)
	}
	d.master = m
	d.cur = &applied{text: text, gen: gen, d: want}
	d.dirty = false
	d.log.Info("nginx started", logPid, m.pid, logGeneration, gen, logRev, want.Rev)
	d.wg.Go(func() {
		<-m.done
		d.mu.Lock()
		closed := d.closed
		d.mu.Unlock()
		if !closed {
			d.log.Error("nginx exited; Start starts it again", logPid, m.pid, "err", m.err)
		}
	})
	return nil
}

// waitServing waits until m has written its pid file and every backend's
// address answers generation gen.
func (d *Driver) waitServing(ctx context.Context, m *master, gen int64, backends []lb.Backend) error {
	pidFile := filepath.Join(d.cfg.Dir, "nginx.pid")
	for {
		if m.exited() {
			return m.err
		}
		var err error
		if pid, perr := readPid(pidFile); perr != nil || pid != m.pid {
			err = fmt.Errorf("pid file %s not written", pidFile)
		} else if len(workers(m.pid)) == 0 {
			err = errors.New("no worker process")
		} else if err = d.serves(ctx, gen, backends); err == nil {
			return nil
		}
		if perr := pause(ctx, pollEvery); perr != nil {
			return fmt.Errorf("%w: %v", perr, err)
		}
	}
}

// serves checks that every backend's address answers generation gen.
func (d *Driver) serves(ctx context.Context, gen int64, backends []lb.Backend) error {
	for _, b := range backends {
		g, err := generation(ctx, d.probe, b)
		if err != nil {
			return fmt.Errorf("backend %s on %s: %w", b.Name, b.Listen, err)
		}
		if g != gen {
			return fmt.Errorf("backend %s on %s answers generation %d, not %d", b.Name, b.Listen, g, gen)
		}
	}
	return nil
}

// cleanStale deals with what a managed NGINX whose master died without
// shutting down (SIGKILL) left: its workers, which go on serving the old
// configuration and hold the listening addresses, and its pid file.
func (d *Driver) cleanStale(ctx context.Context) error {
	pidFile := filepath.Join(d.cfg.Dir, "nginx.pid")
	pid, err := readPid(pidFile)
	if err != nil {
		return nil
	}
	// A master whose tandem lb just died is shutting down (Pdeathsig):
	// give it a moment.
	wait, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for isMaster(pid) {
		if pause(wait, pollEvery) != nil {
			return fmt.Errorf("nginx: an NGINX master (pid %d, in %s) already runs from %s: another tandem lb? Stop it or use another directory", pid, pidFile, d.cfg.Dir)
		}
	}
	// The master led its process group, so its workers are in group pid.
	// Only processes titled nginx are killed, in case the pid was reused.
	if stale := group(pid); len(stale) > 0 {
		pids := make([]int, len(stale))
		for i, p := range stale {
			pids[i] = p.pid
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
		d.log.Warn("killing the workers of an NGINX whose master was killed", "pids", pids)
		for len(group(pid)) > 0 {
			if err := pause(ctx, pollEvery); err != nil {
				return fmt.Errorf("nginx: stale workers %v of %s still there: %w", pids, d.cfg.Dir, err)
			}
		}
	}
	_ = os.Remove(pidFile)
	return nil
}

// attach checks the external NGINX and applies want with a reload, which
// also proves that NGINX includes Conf.
func (d *Driver) attach(ctx context.Context, want lb.Desired) error {
	ext := d.cfg.External
	if err := writable(filepath.Dir(ext.Conf)); err != nil {
		return err
	}
	if _, err := d.masterPid(); err != nil {
		return err
	}
	if b, err := os.ReadFile(ext.Conf); err == nil {
		if p, err := parse(string(b)); err == nil && p.gen > d.gen {
			d.gen = p.gen // generations keep growing across restarts of tandem lb
		}
	}
	d.dirty = true
	return d.apply(ctx, want)
}

// Apply makes NGINX route as want says, by a validated graceful reload,
// and returns once every worker accepting connections runs it (Reloaded
// true). A state that routes as the last applied one is a no-op (Reloaded
// false) unless the running NGINX was seen to differ. If NGINX refuses the
// configuration the error wraps ErrInvalid and quotes NGINX: the file and
// the running NGINX keep the last good one. A cancelled ctx stops the
// wait; NGINX may then load the change anyway, and the next Apply reloads.
func (d *Driver) Apply(ctx context.Context, want lb.Desired) (lb.Applied, error) {
	start := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return lb.Applied{}, err
	}
	want = normalized(want)
	if err := check(want); err != nil {
		return lb.Applied{Took: time.Since(start)}, err
	}
	if err := d.cfg.checkTLS(want); err != nil {
		return lb.Applied{Took: time.Since(start)}, err
	}
	if !d.dirty && sameRouting(want, d.cur.d) {
		return lb.Applied{Took: time.Since(start)}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ReloadTimeout)
	defer cancel()
	if err := d.apply(ctx, want); err != nil {
		return lb.Applied{Took: time.Since(start)}, err
	}
	return lb.Applied{Reloaded: true, Took: time.Since(start)}, nil
}

func (d *Driver) usable() error {
	switch {
	case d.closed:
		return ErrClosed
	case !d.started:
		return ErrNotStarted
	case d.master != nil && d.master.exited():
		return fmt.Errorf("%w: %v", ErrNotRunning, d.master.err)
	}
	return nil
}

// apply renders, checks and installs want, and reloads.
func (d *Driver) apply(ctx context.Context, want lb.Desired) error {
	d.gen++
	gen := d.gen
	text := render(want, gen, d.cfg.settings())
	t0 := time.Now()
	restore, err := d.install(ctx, text)
	if err != nil {
		return err
	}
	t1 := time.Now()
	switched, err := d.reload(ctx, gen, want.Backends)
	if err != nil {
		if errors.Is(err, ErrInvalid) {
			// NGINX kept the configuration it runs: so does the disk.
			if rerr := restore(); rerr != nil {
				d.dirty = true
				return fmt.Errorf("%w (and putting the last good file back failed: %v)", err, rerr)
			}
			return err
		}
		// NGINX may load it yet. The file is valid; the next Apply
		// reloads whatever it brings.
		d.cur = &applied{text: text, gen: gen, d: want}
		d.dirty = true
		return err
	}
	d.cur = &applied{text: text, gen: gen, d: want}
	d.dirty = false
	d.log.Info("nginx reloaded", logGeneration, gen, logRev, want.Rev, logTookMS, time.Since(t0).Milliseconds(),
		"check_ms", t1.Sub(t0).Milliseconds(), "switch_ms", switched.Milliseconds())
	return nil
}

// install checks text with nginx -t and puts it where NGINX reads it
// (write to a temporary file, rename). Managed, the candidate is checked
// before it replaces anything. External, nginx -t can only check NGINX's
// whole configuration, which includes Conf, so the new Conf is in place
// while it runs and is put back if it fails. restore puts back what Conf
// held before.
func (d *Driver) install(ctx context.Context, text string) (restore func() error, err error) {
	conf := d.conf()
	prev, perr := os.ReadFile(conf)
	restore = func() error {
		if perr != nil {
			return os.Remove(conf)
		}
		return writeAtomic(conf, prev)
	}
	if d.cfg.External == nil {
		cand := filepath.Join(d.cfg.Dir, "nginx.conf.candidate")
		if err := os.WriteFile(cand, []byte(text), 0o644); err != nil {
			return nil, fmt.Errorf("nginx: %w", err)
		}
		if err := d.test(ctx, cand); err != nil {
			return nil, err // the candidate stays, for reading
		}
		if err := os.Rename(cand, conf); err != nil {
			return nil, fmt.Errorf("nginx: %w", err)
		}
		return restore, nil
	}
	if err := writeAtomic(conf, []byte(text)); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	if err := d.test(ctx, ""); err != nil {
		// Kept for reading (nginx -t's line numbers are of this text);
		// the dot keeps it out of include globs.
		rejected := filepath.Join(filepath.Dir(conf), "."+filepath.Base(conf)+".rejected")
		if werr := os.WriteFile(rejected, []byte(text), 0o644); werr == nil {
			err = fmt.Errorf("%w (the refused file is kept as %s)", err, rejected)
		}
		if rerr := restore(); rerr != nil {
			return nil, fmt.Errorf("%w (and putting the last good %s back failed: %v)", err, conf, rerr)
		}
		return nil, err
	}
	return restore, nil
}

// test runs nginx -t on file (managed) or on NGINX's whole configuration
// (external), and returns NGINX's messages wrapped in ErrInvalid.
func (d *Driver) test(ctx context.Context, file string) error {
	args := []string{"-t", "-q"}
	if ext := d.cfg.External; ext != nil {
		if ext.Prefix != "" {
			args = append(args, "-p", ext.Prefix)
		}
		if ext.Main != "" {
			args = append(args, "-c", ext.Main)
		}
	} else {
		args = append(args, "-p", d.cfg.Dir+"/", "-c", file)
	}
	out, err := exec.CommandContext(ctx, d.bin, args...).CombinedOutput()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("nginx -t: %w", ctx.Err())
	}
	var msgs []string
	for _, l := range strings.Split(string(out), "\n") {
		for _, lv := range []string{"[emerg]", "[alert]", "[crit]"} {
			if i := strings.Index(l, lv); i >= 0 {
				msgs = append(msgs, cleanLine(l[i:]))
				break
			}
		}
	}
	if len(msgs) == 0 {
		msgs = []string{strings.TrimSpace(string(out)), err.Error()}
	}
	return fmt.Errorf("%w: nginx -t: %s", ErrInvalid, strings.Join(msgs, "; "))
}

// masterPid returns the pid of the running master.
func (d *Driver) masterPid() (int, error) {
	if d.master != nil {
		if d.master.exited() {
			return 0, fmt.Errorf("%w: %v", ErrNotRunning, d.master.err)
		}
		return d.master.pid, nil
	}
	pidFile := d.cfg.External.PidFile
	pid, err := readPid(pidFile)
	if err != nil {
		return 0, fmt.Errorf("nginx: read NGINX's pid file (is NGINX running?): %w", err)
	}
	if !isMaster(pid) {
		return 0, fmt.Errorf("%w: pid %d of %s is not an NGINX master", ErrNotRunning, pid, pidFile)
	}
	return pid, nil
}

// reload asks the master to load the configuration on disk (generation
// gen) and waits until it has: every worker that accepts connections is
// new, and every backend's address answers gen. It fails with ErrInvalid
// if the master tried and kept its old configuration: it logged [emerg]
// (quoted), or it is idle again without having forked a worker. switched
// is the time from the signal until only new workers accepted.
func (d *Driver) reload(ctx context.Context, gen int64, backends []lb.Backend) (switched time.Duration, err error) {
	pid, err := d.masterPid()
	if err != nil {
		return 0, err
	}
	// A master still busy with an earlier reload (NGINX retries a bind
	// for 2.5s) would log its messages after our offset.
	for !idle(pid) {
		if err := pause(ctx, pollEvery); err != nil {
			return 0, fmt.Errorf("nginx: master %d busy (an earlier reload?): %w", pid, err)
		}
	}
	before, kids := workers(pid), children(pid)
	errLog := d.errorLog()
	off := fileSize(errLog)
	if cmd := d.reloadCommand(); cmd != nil {
		if out, err := exec.CommandContext(ctx, cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("nginx: reload with %q: %v: %s", cmd, err, strings.TrimSpace(string(out)))
		}
	} else if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return 0, fmt.Errorf("nginx: reload: signal the master (pid %d): %w", pid, err)
	}
	signalled := time.Now()
	idleNoFork := 0
	for {
		if replaced(before, workers(pid)) {
			switched = time.Since(signalled)
			break
		}
		if lines := logTail(errLog, off, "[emerg]"); len(lines) > 0 {
			return 0, fmt.Errorf("%w: NGINX keeps its running configuration: %s", ErrInvalid, strings.Join(lines, "; "))
		}
		if d.master != nil && d.master.exited() {
			return 0, fmt.Errorf("%w: exited during a reload: %v", ErrNotRunning, d.master.err)
		}
		if d.master == nil && !isMaster(pid) {
			return 0, fmt.Errorf("%w: master %d gone during a reload", ErrNotRunning, pid)
		}
		// Idle with no new child: the reload was handled and refused.
		// Twice, for the instant between the kernel's dequeuing SIGHUP
		// and blocking it for the handler.
		if idle(pid) && !forked(kids, children(pid)) {
			if idleNoFork++; idleNoFork >= 2 {
				where := "NGINX's error log"
				if errLog != "" {
					where = errLog
				}
				return 0, fmt.Errorf("%w: NGINX keeps its running configuration (see %s)", ErrInvalid, where)
			}
		} else {
			idleNoFork = 0
		}
		if err := pause(ctx, pollEvery); err != nil {
			return 0, fmt.Errorf("nginx: reload to generation %d: old workers still accept connections: %w", gen, err)
		}
	}
	// Only new workers accept now, so a wrong answer (refused, another
	// generation, another server's 404) is not a matter of time: a few
	// tries, not the whole timeout.
	for tries := 0; ; tries++ {
		err := d.serves(ctx, gen, backends)
		if err == nil {
			return switched, nil
		}
		if perr := pause(ctx, pollEvery); perr != nil || tries >= 20 {
			if d.cfg.External != nil {
				return 0, fmt.Errorf("nginx: reloaded, but %v: does NGINX's configuration include %s inside its http block?", err, d.cfg.External.Conf)
			}
			return 0, fmt.Errorf("nginx: reloaded, but %w", err)
		}
	}
}

// forked reports whether now holds a child that was not in before.
func forked(before, now map[int]bool) bool {
	for pid := range now {
		if !before[pid] {
			return true
		}
	}
	return false
}

func (d *Driver) reloadCommand() []string {
	if d.cfg.External != nil && len(d.cfg.External.Reload) > 0 {
		return d.cfg.External.Reload
	}
	return nil
}

// ReloadTLS has NGINX read the files of Config.TLS again: a validated,
// graceful reload of the running configuration, after which new
// connections use them (NGINX reads certificates only when it loads a
// configuration). Files NGINX cannot load change nothing: the error wraps
// ErrInvalid and NGINX keeps the ones it has. It is how tandem lb handles
// SIGHUP.
func (d *Driver) ReloadTLS(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ReloadTimeout)
	defer cancel()
	// A new generation of the same configuration: nginx -t loads the
	// files, the reload swaps them in.
	d.dirty = true
	return d.apply(ctx, d.cur.d)
}

// Actual returns what NGINX routes to: the last configuration applied, as
// NGINX open source cannot report its live state, less every backend
// whose address does not answer that configuration's generation (NGINX
// was restarted with another file, or reloaded by hand), which also makes
// the next Apply reload. Servers its passive checks hold down are not
// known and reported as applied. ErrNotRunning if the managed NGINX has
// exited.
func (d *Driver) Actual(ctx context.Context) (lb.Desired, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return lb.Desired{}, err
	}
	p, err := parse(d.cur.text)
	if err != nil {
		return lb.Desired{}, fmt.Errorf("nginx: read back %s: %w", d.conf(), err)
	}
	out := lb.Desired{Rev: p.d.Rev}
	for _, b := range p.d.Backends {
		g, err := generation(ctx, d.probe, b)
		if ctx.Err() != nil {
			return lb.Desired{}, ctx.Err()
		}
		if err == nil && g == p.gen {
			out.Backends = append(out.Backends, b)
			continue
		}
		d.dirty = true
		d.log.Warn("NGINX does not serve the last applied configuration here; the next Apply reloads",
			logBackend, b.Name, "listen", b.Listen, logGeneration, p.gen, "answered", g, "err", err)
	}
	return out, nil
}

// Done returns a channel closed when the managed NGINX that Start started
// exits, whether by itself or by Close; Err then says why. It is nil
// (never ready) before Start and for an external NGINX. After Start
// starts NGINX again, call Done again.
func (d *Driver) Done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.master == nil {
		return nil
	}
	return d.master.done
}

// Err returns why the managed NGINX exited, or nil while it runs.
func (d *Driver) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.master == nil || !d.master.exited() {
		return nil
	}
	return d.master.err
}

// Close stops the managed NGINX (SIGQUIT: in-flight requests finish, for
// at most StopTimeout, then the whole process group is killed) and removes
// its pid file; an external NGINX is left running the last applied
// configuration. Close is idempotent.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	m := d.master
	d.mu.Unlock()
	var err error
	if m != nil {
		err = d.stop(m)
	}
	d.wg.Wait()
	d.probe.CloseIdleConnections()
	return err
}

func (d *Driver) stop(m *master) error {
	if !m.exited() {
		_ = syscall.Kill(m.pid, syscall.SIGQUIT)
	}
	t := time.NewTimer(d.cfg.StopTimeout)
	defer t.Stop()
	select {
	case <-m.done:
	case <-t.C:
		d.log.Warn("nginx did not stop in time; killing it", logPid, m.pid)
	}
	// Also whatever outlived the master.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := killGroup(ctx, m.pid)
	<-m.done
	pidFile := filepath.Join(d.cfg.Dir, "nginx.pid")
	if pid, perr := readPid(pidFile); perr != nil || pid == m.pid {
		_ = os.Remove(pidFile) // NGINX's own, or the empty one nginx -t creates
	}
	if err != nil {
		return fmt.Errorf("nginx: stop: %w", err)
	}
	return nil
}

// normalized returns a sorted deep copy of d: the caller's slices are not
// touched.
func normalized(d lb.Desired) lb.Desired {
	out := lb.Desired{Rev: d.Rev, Backends: make([]lb.Backend, len(d.Backends))}
	for i, b := range d.Backends {
		b.Servers = append([]lb.Server(nil), b.Servers...)
		out.Backends[i] = b
	}
	out.Normalize()
	return out
}

// sameRouting compares everything rendered (not the revision).
func sameRouting(a, b lb.Desired) bool {
	a.Rev, b.Rev = 0, 0
	if len(a.Backends) == 0 && len(b.Backends) == 0 {
		return true
	}
	return reflect.DeepEqual(a, b)
}

// writeAtomic writes path through a temporary file in its directory
// (named with a leading dot, so that no include glob takes it) and a
// rename.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, a no-op
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// writable checks that files can be created in dir.
func writable(dir string) error {
	f, err := os.CreateTemp(dir, ".tandem-lb-probe-*")
	if err != nil {
		return fmt.Errorf("nginx: directory %s not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// workerCanReach checks that NGINX's workers, which run as name (NGINX's
// default: nobody) when it starts as root, can enter dir, where they write
// request bodies too large for memory: otherwise such requests would fail
// with 500 long after Start.
func workerCanReach(dir, name string) error {
	if name == "" {
		name = "nobody"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil // NGINX reports a missing user itself
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for p := dir; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("nginx: %w", err)
		}
		mode := st.Mode().Perm()
		ok := mode&0o001 != 0
		if sys, isStat := st.Sys().(*syscall.Stat_t); isStat {
			ok = ok || int(sys.Uid) == uid && mode&0o100 != 0 || int(sys.Gid) == gid && mode&0o010 != 0
		}
		if !ok {
			return fmt.Errorf("nginx: workers run as %s and cannot enter %s (mode %v), so request bodies NGINX buffers to %s would fail: make it searchable (chmod o+x) or set User", name, p, mode, dir)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}
