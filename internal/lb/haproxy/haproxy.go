// Package haproxy is the HAProxy (2.6 or later) Driver of tandem lb.
//
// # Fast path: the runtime API
//
// The driver keeps one connection to the admin socket open in prompt mode
// and sends each change as one pipelined write, then reads and checks every
// reply (a reply other than the command's success answer is a
// *CommandError naming the command). A change of active is four commands:
// the new active is brought up in the same write that takes the old one
// down, up first, so the next request already goes to the new one. Every
// batch is led by `show info`, which reveals a worker that is soft-stopping
// because someone else reloaded the proxy (it would answer "Proxy is
// disabled." or, worse, obey); the batch then goes again on a new
// connection, which reaches the current worker. A connection the proxy
// closed while idle (`stats timeout 2m`) is replaced once, which is safe
// because nothing was answered on it.
//
// Up and down never turn the proxy's own checks off. Up is `state ready`
// then `health up`; down is `health down` then `state ready` when the
// backend has an HTTP health path. The checks keep running, so if tandem
// lb is gone they route on their own: a standby left forced up fails its
// /isActive check and falls after Fall checks, a new active passes and
// rises after Rise. The health path must therefore agree with membership
// (non-2xx whenever the server should get no traffic), as /isActive does;
// where they disagree, the check wins after Rise or Fall checks. A backend
// with a TCP check is the exception: a connect check cannot tell an active
// from a standby and would bring a forced-down standby back after Rise
// checks, so down is `state maint` there, and such a backend has no safety
// net. Apply re-asserts every server's state each time, so it also undoes
// drift.
//
// Membership changes use dynamic servers: `add server` (with the same
// check options a configured server has, since HAProxy 2.6 applies no
// default-server settings to them) then `enable health`; `set server B/S
// addr` for one that moves; and, once the new servers have their up and
// down, `disable server` then `del server` for one that leaves. A leaving
// server is out of the rotation at once, but 2.6 deletes a server only when
// it has no connection left, idle ones included; one with requests in
// flight is parked in maintenance and a reaper goroutine deletes it when
// they are done, and never before DeleteGrace (see there); its sessions are
// shut after DrainTimeout; a short
// pool-purge-delay on every server makes its idle connections go within
// a second or two), so Apply never waits for them. Until then Actual lists
// it, not Up. They were chosen over server-template slots because the
// proxy then knows every server by tandem's name (Actual needs no slot map
// that would die with tandem lb), there is no slot count to outgrow, and a
// reload simply writes them as ordinary servers. The runtime API cannot do
// everything, and then the driver reloads: a backend added or removed; a
// listen address, health path or stickiness changed; a server given by
// host name (the runtime API takes addresses); a server added to a sticky
// backend (2.6 refuses `cookie` on a dynamic server). A runtime change
// that fails falls back to a reload. A runtime membership change is checked
// with `haproxy -c` first like any other, and rewrites the configuration
// file, so that a restart finds the servers the proxy had. When the shape
// changes, the up and down of the servers the proxy already has are sent
// before the check and the reload, so neither they nor a rejected backend
// hold up a failover.
//
// # Reload path
//
// The configuration is rendered from the desired state (every server with
// its checks on, never `disabled`, which would stop them: up and down are
// applied at run time), written to a temporary file beside the real one
// and checked with `haproxy -c`. A configuration the check rejects is
// refused: the error wraps ErrRejected and quotes HAProxy's alerts, and
// neither the file nor the proxy's configuration changes. Otherwise the
// driver writes `show servers state` into the server-state-file that
// `load-server-state-from-file global` reads, keeping only the servers the
// new configuration has at the same address (HAProxy matches the lines by
// name and would restore a moved server's old port), renames the file
// into place and sends `reload` to the master CLI. It then waits until the
// reload has taken effect: the master's `show proc` counts one more reload
// and lists a new worker, and the admin socket answers from that worker's
// pid. If the master counts a failed reload instead (`haproxy -c` does not
// bind, so an address no interface has passes it), the previous file is
// put back, the old worker goes on serving, and the error wraps ErrReload
// and quotes the master's alerts. Only after the new worker answers does
// the driver re-apply up and down to it: the state file carries them over,
// but forced health is not guaranteed to survive it. Waiting for the old
// workers to leave is not part of a reload: they drain for up to
// hard-stop-after. Reloads run one at a time (Start, Apply, Actual and
// Close are serialised); debouncing is the caller's job.
//
// # Reloads keep-alive clients do not notice
//
// The listening sockets pass from worker to worker (the master hands them
// over; `expose-fd listeners` on the admin socket serves a proxy started
// with -x), so no connection is refused. An old worker finishes what it
// has: `option idle-close-on-response` keeps its idle keep-alive
// connections open rather than closing them at once, which races a client
// that is just sending its next request there (a non-replayable request
// then fails), and answers that next request with `Connection: close`, so
// the client moves to the new worker cleanly. `timeout http-keep-alive`
// closes connections left idle, and `hard-stop-after 30s` bounds how long
// an old worker lingers. `option redispatch` with `retries 2` retries a
// request whose server died before its checks noticed on another server,
// and moves a sticky client (`cookie TANDEMLB insert indirect nocache`,
// `cookie <name>` per server) whose server is down or gone.
//
// # Modes
//
// Managed (Config.Managed): Start runs `haproxy -W -db -S
// <Dir>/master.sock -f <Dir>/haproxy.cfg` as a child, which gets SIGTERM
// if tandem lb dies and takes its workers with it, waits until both
// sockets answer, and reports the proxy's exit through Done and Err; Start
// again restarts it. The checks' safety net then covers a tandem lb that
// lives but cannot drive the proxy. External: the driver attaches to a
// proxy systemd runs (`haproxy -Ws -S <master socket> -f <file>`, a stats
// socket at level admin in the file), rewrites that file, reloads through
// the master socket or ReloadCommand, and never starts or stops the proxy;
// there the safety net also covers tandem lb's death.
//
// ModeActive and ModeAll backends are rendered alike, with `balance
// roundrobin`: in ModeActive only one server is up, and `first` would
// only add a dependence on server order and maxconn.
//
// # TLS
//
// A server with TLS set gets `ssl verify required ca-file <BackendCA>
// verifyhost <ServerName> ssl-min-ver TLSv1.3 check-ssl [crt <client>]`,
// written or added at run time alike; its checks go over TLS too. A
// backend with ListenTLS binds with `ssl crt <frontend> ssl-min-ver
// TLSv1.3`. HAProxy's crt takes a certificate and its key in one file,
// which the driver writes into Dir (0600) at Start and ReloadTLS; a
// server that turns TLS on or off is a reload. See Config.TLS.
package haproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

var _ lb.Driver = (*Driver)(nil)

// Errors of the driver; match them with errors.Is.
var (
	// ErrNoBinary: the haproxy executable was not found.
	ErrNoBinary = errors.New("haproxy: binary not found (apt-get install haproxy)")
	// ErrInvalid: the desired state or the Config cannot be used.
	ErrInvalid = errors.New("haproxy: invalid")
	// ErrRejected: `haproxy -c` rejected the rendered configuration; the
	// message quotes HAProxy. Nothing was changed.
	ErrRejected = errors.New("haproxy: configuration rejected")
	// ErrReload: a reload did not take effect.
	ErrReload = errors.New("haproxy: reload failed")
	// ErrUnreachable: an admin or master socket did not answer.
	ErrUnreachable = errors.New("haproxy: socket unreachable")
	// ErrExited: the proxy Start started has exited; Start restarts it.
	ErrExited = errors.New("haproxy: proxy exited")
	// ErrNotStarted: Apply or Actual before Start.
	ErrNotStarted = errors.New("haproxy: not started")
	// ErrClosed: the driver was closed.
	ErrClosed = errors.New("haproxy: driver closed")
)

// Attribute keys of the driver's log records. A proxy's server is
// "member", not "server", which tandem's records use for its own name.
const (
	keyBackend = "backend"
	keyMember  = "member"
	keyReason  = "reason"
	keyPID     = "pid"
	keyError   = "err"
	keyLine    = "line"
	keyTook    = "took"
)

// Config configures a Driver.
type Config struct {
	// Binary is the haproxy executable, looked up in PATH. Both modes need
	// it: every configuration is checked with `haproxy -c` first.
	Binary string
	// Dir holds the server-state file and, in managed mode, the
	// configuration and both sockets. It is created if missing and must be
	// writable.
	Dir string
	// Checks are the proxy's own health checks, the safety net.
	Checks lb.Checks
	// Managed makes Start run the proxy as a child process. When false the
	// driver attaches to a proxy run by someone else (systemd) and needs
	// ExternalConfigPath, AdminSocket and MasterSocket or ReloadCommand.
	Managed bool
	// ExternalConfigPath is the configuration file the external proxy
	// loads; the driver rewrites it. Its directory must be writable.
	ExternalConfigPath string
	// AdminSocket is the stats socket at level admin (the runtime API).
	// Managed default: Dir/admin.sock. The rendered configuration binds it.
	AdminSocket string
	// MasterSocket is the master CLI (-S). Managed default: Dir/master.sock.
	MasterSocket string
	// ReloadCommand reloads an external proxy that has no master socket,
	// e.g. {"systemctl", "reload", "haproxy"}. The driver then knows the
	// reload took effect when the admin socket answers from a new pid.
	ReloadCommand []string
	// IOTimeout bounds each exchange on a socket and each `haproxy -c`.
	IOTimeout time.Duration
	// ReloadTimeout bounds the wait for a reload to take effect.
	ReloadTimeout time.Duration
	// DrainTimeout is how long a removed server keeps the requests it has
	// in flight before its sessions are shut. It gets no new ones.
	DrainTimeout time.Duration
	// StopTimeout is how long Close lets a managed proxy finish the requests
	// in flight (soft stop: its listeners close at once) before it is
	// stopped hard (default 10s).
	StopTimeout time.Duration
	// DeleteGrace is the least time a removed server stays, in
	// maintenance, before `del server`. A stream waiting out the one-second
	// turn-around before it retries a refused connection holds its server
	// without counting as a session or in the queue, and HAProxy 2.6.12
	// deletes the server under it; the stream then crashes the worker
	// (haproxy#2298, fixed upstream in later releases). The default outlasts
	// every retry: (retries + 1) × (timeout connect + 1 s).
	DeleteGrace time.Duration
	// TLS are the files of TLS to servers with TLS set and on backends
	// with ListenTLS (both modes). HAProxy's crt wants a certificate and
	// its key in one file, so the driver writes BackendCert and
	// BackendKey, and Cert and Key, to Dir/tls-client.pem and
	// Dir/tls-frontend.pem (mode 0600) at Start and ReloadTLS.
	// TLS.ServerName is checked against each server certificate's DNS
	// names and common name (verifyhost; never its IP addresses); empty,
	// the chain alone is checked.
	TLS lb.TLS
	// Log receives decisions and the proxy's own output; nil discards.
	Log *slog.Logger
}

// DefaultConfig is a managed proxy in dir, with the lb package's default
// checks (every 2s, down after 3 failures, up after 2 successes).
func DefaultConfig(dir string) Config {
	return Config{
		Binary:        "haproxy",
		Dir:           dir,
		Checks:        lb.Checks{Inter: 2 * time.Second, Fall: 3, Rise: 2},
		Managed:       true,
		IOTimeout:     5 * time.Second,
		ReloadTimeout: 30 * time.Second,
		DrainTimeout:  10 * time.Second,
		DeleteGrace:   (retries + 1) * (connectTimeout + turnAround),
		StopTimeout:   10 * time.Second,
	}
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	def := DefaultConfig(c.Dir)
	if c.Binary == "" {
		c.Binary = def.Binary
	}
	if c.Checks.Inter <= 0 {
		c.Checks.Inter = def.Checks.Inter
	}
	if c.Checks.Fall <= 0 {
		c.Checks.Fall = def.Checks.Fall
	}
	if c.Checks.Rise <= 0 {
		c.Checks.Rise = def.Checks.Rise
	}
	if c.IOTimeout <= 0 {
		c.IOTimeout = def.IOTimeout
	}
	if c.ReloadTimeout <= 0 {
		c.ReloadTimeout = def.ReloadTimeout
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = def.DrainTimeout
	}
	if c.DeleteGrace <= 0 {
		c.DeleteGrace = def.DeleteGrace
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = def.StopTimeout
	}
	if c.Managed {
		if c.AdminSocket == "" {
			c.AdminSocket = filepath.Join(c.Dir, "admin.sock")
		}
		if c.MasterSocket == "" {
			c.MasterSocket = filepath.Join(c.Dir, "master.sock")
		}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports what makes c unusable, before anything runs.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Dir == "" {
		return fmt.Errorf("%w: config: Dir is required", ErrInvalid)
	}
	if !c.Managed {
		switch {
		case c.ExternalConfigPath == "":
			return fmt.Errorf("%w: config: external mode needs ExternalConfigPath", ErrInvalid)
		case c.AdminSocket == "":
			return fmt.Errorf("%w: config: external mode needs AdminSocket", ErrInvalid)
		case c.MasterSocket == "" && len(c.ReloadCommand) == 0:
			return fmt.Errorf("%w: config: external mode needs MasterSocket or ReloadCommand", ErrInvalid)
		}
	}
	for _, p := range []string{c.Dir, c.ExternalConfigPath, c.AdminSocket, c.MasterSocket} {
		if p != "" && plainWord(p) != nil {
			return fmt.Errorf("%w: config: path %q: no spaces, quotes or control characters", ErrInvalid, p)
		}
	}
	t := c.TLS
	if (t.BackendCert == "") != (t.BackendKey == "") || (t.Cert == "") != (t.Key == "") {
		return fmt.Errorf("%w: config: TLS: a certificate needs its key, and a key its certificate", ErrInvalid)
	}
	if t.BackendCert != "" && t.BackendCA == "" {
		return fmt.Errorf("%w: config: TLS: a client certificate for the servers needs their CA (BackendCA)", ErrInvalid)
	}
	for _, p := range []string{t.BackendCA, t.BackendCert, t.BackendKey, t.Cert, t.Key} {
		if p != "" && (!filepath.IsAbs(p) || plainWord(p) != nil) {
			return fmt.Errorf("%w: config: TLS file %q: want an absolute path without spaces, quotes or control characters", ErrInvalid, p)
		}
	}
	if t.ServerName != "" && !name.MatchString(t.ServerName) {
		return fmt.Errorf("%w: config: TLS server name %q: want a host name", ErrInvalid, t.ServerName)
	}
	for _, s := range []string{c.AdminSocket, c.MasterSocket} {
		if len(s) >= 104 { // sun_path, less HAProxy's temporary suffix
			return fmt.Errorf("%w: config: socket path %q longer than a unix socket allows", ErrInvalid, s)
		}
	}
	return nil
}

// Driver drives one HAProxy. Its methods are safe for concurrent use and
// run one at a time.
type Driver struct {
	cfg       Config
	bin       string // the resolved Binary
	cfgPath   string
	statePath string
	log       *slog.Logger

	closing  context.Context // cancelled by Close, ending blocking calls
	closeNow context.CancelFunc

	proc atomic.Pointer[process] // managed: the proxy Start started

	mu      sync.Mutex // serialises Start, Apply, Actual, Close
	started bool
	closed  bool
	adm     *adminConn
	cur     *lb.Desired // shape the proxy runs; nil: unknown, reload next
	curText []byte      // configuration the proxy runs
	// parked are removed servers, in maintenance, that `del server` has
	// not taken yet because they still have connections. Not in cur.
	parked  map[ref]*parking
	reaping bool           // a reaper goroutine runs
	reaper  sync.WaitGroup // the reaper, for Close
}

// parking is a removed server waiting for its connections to go.
type parking struct {
	since time.Time
	tls   bool // the server's TLS, which a return must keep
	shut  bool // its sessions were shut after DrainTimeout
}

// New checks cfg and the machine (the binary exists, Dir is writable) and
// returns a driver; it starts nothing.
func New(cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrNoBinary, cfg.Binary, err)
	}
	cfgPath := filepath.Join(cfg.Dir, "haproxy.cfg")
	if !cfg.Managed {
		cfgPath = cfg.ExternalConfigPath
	}
	for _, dir := range []string{cfg.Dir, filepath.Dir(cfgPath)} {
		if err := writable(dir); err != nil {
			return nil, fmt.Errorf("%w: config: %v", ErrInvalid, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Driver{
		cfg:       cfg,
		bin:       bin,
		cfgPath:   cfgPath,
		statePath: filepath.Join(cfg.Dir, "server-state"),
		log:       cfg.Log,
		closing:   ctx,
		closeNow:  cancel,
		adm:       &adminConn{path: cfg.AdminSocket, timeout: cfg.IOTimeout},
		parked:    map[ref]*parking{},
	}, nil
}

func writable(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("directory %s: %v", dir, err)
	}
	f, err := os.CreateTemp(dir, ".tandem-lb-probe-*")
	if err != nil {
		return fmt.Errorf("directory %s is not writable: %v", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// ConfigPath is the configuration file the driver writes.
func (d *Driver) ConfigPath() string { return d.cfgPath }

// Render returns the configuration the driver would write for ds, to show
// an operator or to bootstrap an external proxy.
func (d *Driver) Render(ds lb.Desired) ([]byte, error) {
	if err := validate(ds); err != nil {
		return nil, err
	}
	if err := d.checkTLS(ds); err != nil {
		return nil, err
	}
	return render(normalized(ds), d.cfg.Checks, d.paths()), nil
}

func (d *Driver) paths() paths {
	p := paths{adminSocket: d.cfg.AdminSocket, stateFile: d.statePath,
		backendCA: d.cfg.TLS.BackendCA, serverName: d.cfg.TLS.ServerName}
	if d.cfg.TLS.BackendCert != "" {
		p.clientPEM = filepath.Join(d.cfg.Dir, "tls-client.pem")
	}
	if d.cfg.TLS.Cert != "" {
		p.frontendPEM = filepath.Join(d.cfg.Dir, "tls-frontend.pem")
	}
	return p
}

// checkTLS refuses a desired state that needs TLS files the driver was not
// given: a server with TLS and no CA to verify it, a listener with TLS and
// no certificate to serve.
func (d *Driver) checkTLS(ds lb.Desired) error {
	for _, b := range ds.Backends {
		if b.ListenTLS && d.cfg.TLS.Cert == "" {
			return fmt.Errorf("%w: backend %q serves TLS on %s, but no certificate was given (--tls-cert, --tls-key)", ErrInvalid, b.Name, b.Listen)
		}
		for _, s := range b.Servers {
			if s.TLS && d.cfg.TLS.BackendCA == "" {
				return fmt.Errorf("%w: server %s/%s serves TLS (https), but no CA was given to verify it (--backend-ca)", ErrInvalid, b.Name, s.Name)
			}
		}
	}
	return nil
}

// writeTLSFiles writes the combined certificate-and-key files HAProxy's
// crt reads, from Config.TLS's files as they are now: the certificate must
// be the key's.
func (d *Driver) writeTLSFiles() error {
	p := d.paths()
	for _, f := range []struct{ cert, key, out string }{
		{d.cfg.TLS.BackendCert, d.cfg.TLS.BackendKey, p.clientPEM},
		{d.cfg.TLS.Cert, d.cfg.TLS.Key, p.frontendPEM},
	} {
		if f.out == "" {
			continue
		}
		certPEM, err := os.ReadFile(f.cert)
		if err != nil {
			return fmt.Errorf("%w: TLS: %v", ErrInvalid, err)
		}
		keyPEM, err := os.ReadFile(f.key)
		if err != nil {
			return fmt.Errorf("%w: TLS: %v", ErrInvalid, err)
		}
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			return fmt.Errorf("%w: TLS: %s and %s: %v", ErrInvalid, f.cert, f.key, err)
		}
		combined := append(bytes.TrimRight(certPEM, "\n"), '\n')
		combined = append(combined, keyPEM...)
		if err := writeAtomicMode(f.out, combined, 0o600); err != nil {
			return fmt.Errorf("haproxy: TLS: %w", err)
		}
	}
	return nil
}

// ReloadTLS reads the TLS files of Config.TLS again and reloads the proxy
// (validated, graceful, as any reload) so that new connections use them;
// established ones keep theirs. Files that are unreadable, or a
// certificate that is not its key's, change nothing and return an error
// wrapping ErrInvalid. It is how tandem lb handles SIGHUP.
func (d *Driver) ReloadTLS(ctx context.Context) error {
	ctx, cancel := d.op(ctx)
	defer cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	// HAProxy reads the combined files only when it loads a configuration,
	// so rewriting them under the running proxy is safe.
	if err := d.writeTLSFiles(); err != nil {
		return err
	}
	if d.cur == nil {
		return nil // the next Apply reloads anyway
	}
	cur := *d.cur
	text := render(cur, d.cfg.Checks, d.paths())
	tmp, err := d.checkConfig(ctx, text)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := d.reload(ctx, tmp, cur, text, "TLS files reloaded"); err != nil {
		return err
	}
	d.cur = &cur
	_, err = d.applyStates(ctx, cur)
	return err
}

// Done is closed when the proxy the last Start started exits (managed
// mode). It is nil, never ready, before Start and in external mode.
func (d *Driver) Done() <-chan struct{} {
	if p := d.proc.Load(); p != nil {
		return p.done
	}
	return nil
}

// Err says why the managed proxy exited (wrapping ErrExited), nil while it
// runs or when there is none.
func (d *Driver) Err() error {
	if p := d.proc.Load(); p != nil {
		_, err := p.exited()
		return err
	}
	return nil
}

// op is ctx, also cancelled by Close.
func (d *Driver) op(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(d.closing, cancel)
	return ctx, func() { stop(); cancel() }
}

// Start starts the proxy with ds (managed), or attaches to the running one
// and brings it to ds (external, reloading it if its configuration
// differs). It fails before starting anything if the configuration is
// rejected, and in external mode if a socket does not answer. It blocks
// until the proxy routes as ds says or ctx ends. Starting a managed driver
// whose proxy exited restarts it; otherwise a second Start is an error.
func (d *Driver) Start(ctx context.Context, ds lb.Desired) error {
	ctx, cancel := d.op(ctx)
	defer cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.started {
		p := d.proc.Load()
		if p == nil {
			return fmt.Errorf("haproxy: start: already started")
		}
		if done, _ := p.exited(); !done {
			return fmt.Errorf("haproxy: start: already started (pid %d)", p.pid)
		}
		p.stop(d.cfg.IOTimeout) // reap its reader
	}
	if err := validate(ds); err != nil {
		return err
	}
	if err := d.checkTLS(ds); err != nil {
		return err
	}
	next := normalized(ds)
	if err := d.ensureStateFile(); err != nil {
		return err
	}
	if err := d.writeTLSFiles(); err != nil {
		return err
	}
	var err error
	if d.cfg.Managed {
		err = d.startManaged(ctx, next)
	} else {
		err = d.attach(ctx, next)
	}
	if err != nil {
		return err
	}
	d.started = true
	if _, err = d.applyStates(ctx, next); err != nil {
		return err
	}
	// The states are applied: the file on disk becomes the plain rendering,
	// as every later change writes it.
	if text := render(next, d.cfg.Checks, d.paths()); d.cfg.Managed && !bytes.Equal(text, d.curText) {
		if err := writeAtomic(d.cfgPath, text); err != nil {
			d.log.Warn("haproxy configuration file not updated", keyError, err)
		} else {
			d.curText = text
		}
	}
	return nil
}

func (d *Driver) ensureStateFile() error {
	if _, err := os.Stat(d.statePath); err == nil {
		return nil
	}
	// A version line alone is an empty state file; none at all makes
	// HAProxy warn on every check.
	if err := writeAtomic(d.statePath, []byte("1\n")); err != nil {
		return fmt.Errorf("haproxy: server state file: %w", err)
	}
	return nil
}

func (d *Driver) startManaged(ctx context.Context, next lb.Desired) error {
	d.adm.close()
	if _, err := d.adm.run(ctx, "show info"); err == nil {
		d.adm.close()
		return fmt.Errorf("haproxy: start: a proxy already answers on %s; stop it or use external mode", d.cfg.AdminSocket)
	}
	for _, s := range []string{d.cfg.AdminSocket, d.cfg.MasterSocket} {
		os.Remove(s) // a stale socket of an earlier run
	}
	text := renderStart(next, d.cfg.Checks, d.paths())
	tmp, err := d.checkConfig(ctx, text)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, d.cfgPath); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("haproxy: install configuration: %w", err)
	}
	// A new process starts from the configuration alone, not from the state
	// an earlier one saved: tandem lb applies who is up right after.
	if err := writeAtomic(d.statePath, []byte("1\n")); err != nil {
		return fmt.Errorf("haproxy: server state file: %w", err)
	}
	args := []string{"-W", "-db", "-S", d.cfg.MasterSocket + ",mode,600", "-f", d.cfgPath}
	p, err := startProcess(d.bin, args, d.log)
	if err != nil {
		return err
	}
	d.proc.Store(p)
	d.log.Info("haproxy started", keyPID, p.pid, "config", d.cfgPath)
	for {
		// The master's CLI may answer a moment after the worker's.
		in, err := d.info(ctx)
		if err == nil && !in.stopping {
			if _, err := d.showProc(ctx); err == nil {
				break
			}
		}
		if done, perr := p.exited(); done {
			d.adm.close()
			p.stop(d.cfg.IOTimeout) // and read what it said
			return fmt.Errorf("haproxy: start: %w%s", perr, quote(p.logs.alerts(0)))
		}
		if werr := waitCtx(ctx, 10*time.Millisecond); werr != nil {
			p.stop(d.cfg.IOTimeout)
			return fmt.Errorf("haproxy: start: admin socket %s and master socket %s never both answered: %w", d.cfg.AdminSocket, d.cfg.MasterSocket, werr)
		}
	}
	d.cur, d.curText = &next, text
	clear(d.parked)
	return nil
}

// attach takes over a running external proxy. It reloads unless the file
// on disk is what ds renders and the proxy has exactly ds's servers.
func (d *Driver) attach(ctx context.Context, next lb.Desired) error {
	if _, err := d.info(ctx); err != nil {
		return fmt.Errorf("haproxy: attach: %w", err)
	}
	if d.cfg.MasterSocket != "" {
		if _, err := d.showProc(ctx); err != nil {
			return fmt.Errorf("haproxy: attach: %w", err)
		}
	}
	text := render(next, d.cfg.Checks, d.paths())
	onDisk, _ := os.ReadFile(d.cfgPath)
	d.curText = onDisk
	if bytes.Equal(onDisk, text) {
		actual, err := d.actual(ctx)
		if err == nil && sameServers(actual, next) {
			d.log.Info("haproxy attached; running configuration is current", "config", d.cfgPath)
			d.cur = &next
			return nil
		}
	}
	tmp, err := d.checkConfig(ctx, text)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	d.log.Info("haproxy attached; reloading", "config", d.cfgPath)
	if err := d.reload(ctx, tmp, next, text, "attach"); err != nil {
		return err
	}
	d.cur = &next
	return nil
}

// sameServers compares backends, servers and addresses, not up or down.
func sameServers(a, b lb.Desired) bool {
	if len(a.Backends) != len(b.Backends) {
		return false
	}
	for i := range a.Backends {
		x, y := a.Backends[i], b.Backends[i]
		if x.Name != y.Name || len(x.Servers) != len(y.Servers) {
			return false
		}
		for j := range x.Servers {
			if x.Servers[j].Name != y.Servers[j].Name || !sameAddr(x.Servers[j].Addr, y.Servers[j].Addr) {
				return false
			}
		}
	}
	return true
}

// Apply makes the proxy route as ds says and returns how. Up and down and
// membership changes go through the runtime API; a change it cannot make
// is a checked reload, and Apply returns once the new worker serves and
// has ds's up and down. A configuration HAProxy rejects is refused with
// ErrRejected and the configuration and servers stay as they were; the up
// and down of the servers the proxy already has are applied all the same,
// first, so that neither a check, a reload nor a broken backend holds up a
// failover. Apply is idempotent: it re-asserts every server's up or down
// each time, which also undoes drift. A cancelled ctx abandons the change
// part way; the next Apply completes it.
func (d *Driver) Apply(ctx context.Context, ds lb.Desired) (lb.Applied, error) {
	start := time.Now()
	ctx, cancel := d.op(ctx)
	defer cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	var applied lb.Applied
	if err := d.usable(); err != nil {
		return applied, err
	}
	if err := validate(ds); err != nil {
		return applied, err
	}
	next := normalized(ds)
	text := render(next, d.cfg.Checks, d.paths())
	var p plan
	if d.cur == nil {
		p.reload = "running state unknown"
	} else {
		p = diff(*d.cur, next)
	}
	if p.reload != "" || len(p.add)+len(p.del)+len(p.addr) > 0 || !bytes.Equal(text, d.curText) {
		if d.cur != nil {
			if cmds := stateCmds(common(*d.cur, next)); len(cmds) > 0 {
				n, err := d.runChecked(ctx, cmds)
				applied.Runtime += n
				if err != nil {
					d.log.Warn("haproxy up/down before the shape change failed", keyError, err)
				}
			}
		}
		// After the up and down of the servers the proxy has: a server
		// that turned to https without a CA to verify it must not hold
		// up a failover.
		if err := d.checkTLS(next); err != nil {
			applied.Took = time.Since(start)
			return applied, err
		}
		n, reloaded, err := d.applyShape(ctx, p, next, text)
		applied.Runtime += n
		applied.Reloaded = reloaded
		if err != nil {
			applied.Took = time.Since(start)
			return applied, err
		}
	}
	cur := next
	d.cur = &cur
	n, err := d.applyStates(ctx, next)
	applied.Runtime += n
	applied.Took = time.Since(start)
	return applied, err
}

// applyShape checks the configuration for next and brings the proxy to
// it: through the runtime API when p allows, by a reload otherwise or if
// the runtime API fails.
func (d *Driver) applyShape(ctx context.Context, p plan, next lb.Desired, text []byte) (sent int, reloaded bool, err error) {
	tmp, err := d.checkConfig(ctx, text)
	if err != nil {
		return 0, false, err
	}
	defer os.Remove(tmp) // gone already once renamed into place
	if p.reload == "" {
		n, err := d.changeServers(ctx, p, next)
		sent += n
		switch {
		case err != nil && ctx.Err() != nil:
			d.cur = nil // part done: the next Apply reloads
			return sent, false, err
		case err != nil:
			d.log.Warn("haproxy runtime change failed; reloading instead", keyError, err)
			p.reload = "runtime change failed: " + err.Error()
		default:
			if err := os.Rename(tmp, d.cfgPath); err != nil {
				// The proxy has the change; the next shape change or Apply
				// writes the file again.
				d.log.Warn("haproxy configuration file not updated", keyError, err)
			} else {
				d.curText = text
			}
			return sent, false, nil
		}
	}
	if err := d.reload(ctx, tmp, next, text, p.reload); err != nil {
		return sent, false, err
	}
	return sent, true, nil
}

// usable says whether Apply and Actual may run.
func (d *Driver) usable() error {
	switch {
	case d.closed:
		return ErrClosed
	case !d.started:
		return ErrNotStarted
	}
	if p := d.proc.Load(); p != nil {
		if done, err := p.exited(); done {
			return err
		}
	}
	return nil
}

// Actual returns the backends and servers the proxy has, each server Up
// when the proxy would send it new requests (running, no maintenance or
// drain, weight above zero). A removed server still draining its requests
// is listed, not Up, until it is deleted. Listen, Health, Mode and Sticky
// are those of the configuration the driver loaded, and Rev that of the
// last state applied; the proxy cannot report them.
func (d *Driver) Actual(ctx context.Context) (lb.Desired, error) {
	ctx, cancel := d.op(ctx)
	defer cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return lb.Desired{}, err
	}
	return d.actual(ctx)
}

func (d *Driver) actual(ctx context.Context) (lb.Desired, error) {
	replies, err := d.runCurrent(ctx, "show backend", "show servers state")
	if err != nil {
		return lb.Desired{}, fmt.Errorf("haproxy: actual: %w", err)
	}
	_, _, states, err := parseServersState(replies[1])
	if err != nil {
		return lb.Desired{}, fmt.Errorf("haproxy: actual: %w", err)
	}
	known := map[string]lb.Backend{}
	var out lb.Desired
	if d.cur != nil {
		out.Rev = d.cur.Rev
		for _, b := range d.cur.Backends {
			known[b.Name] = b
		}
	}
	index := map[string]int{}
	for _, line := range strings.Split(replies[0], "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "<") {
			continue
		}
		b := lb.Backend{Name: line, Servers: []lb.Server{}}
		if k, ok := known[line]; ok {
			b.Listen, b.Health, b.Mode, b.Sticky = k.Listen, k.Health, k.Mode, k.Sticky
		}
		index[line] = len(out.Backends)
		out.Backends = append(out.Backends, b)
	}
	for _, s := range states {
		i, ok := index[s.backend]
		if !ok {
			continue
		}
		if d.parked[ref{backend: s.backend, server: s.server}] != nil && !s.routable() {
			continue // removed, waiting for `del server`; see DeleteGrace
		}
		out.Backends[i].Servers = append(out.Backends[i].Servers, lb.Server{Name: s.server, Addr: s.addr, Up: s.routable()})
	}
	out.Normalize()
	return out, nil
}

// Close releases the admin connection and, in managed mode, stops the
// proxy gracefully (SIGUSR1: requests in flight finish, for at most
// StopTimeout; then SIGTERM, and SIGKILL after IOTimeout) and waits for it. An
// external proxy is left running. A call in progress is cancelled. Close
// is idempotent.
func (d *Driver) Close() error {
	d.closeNow()
	d.mu.Lock()
	wasClosed := d.closed
	d.closed = true // no reaper starts after this
	d.mu.Unlock()
	if wasClosed {
		return nil
	}
	d.reaper.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.adm.close()
	if p := d.proc.Load(); p != nil {
		p.softStop(d.cfg.StopTimeout, d.cfg.IOTimeout)
		d.log.Info("haproxy stopped", keyPID, p.pid)
	}
	return nil
}
