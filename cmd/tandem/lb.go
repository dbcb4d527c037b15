package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandemhq/tandem/internal/lb"
	"github.com/tandemhq/tandem/internal/lb/haproxy"
	"github.com/tandemhq/tandem/internal/lb/nginx"
	"github.com/tandemhq/tandem/internal/pki"
)

type lbFlags struct {
	proxy         string
	listen        string
	services      []string
	cluster       string
	etcdEndpoints string
	etcdTLS       etcdTLS
	dir           string
	binary        string
	external      bool
	configPath    string
	adminSocket   string
	masterSocket  string
	pidFile       string
	nginxMain     string
	nginxPrefix   string
	nginxErrorLog string
	inter         time.Duration
	stopTimeout   time.Duration
	fall, rise    int
	http          string
	logLevel      string
	logFormat     string
	// TLS (docs/LB.md, "TLS"): to the servers, and on --listen.
	backendCA, backendCert, backendKey string
	backendTLS                         bool
	backendServerName                  string
	tlsCert, tlsKey                    string
}

func newLBCmd() *cobra.Command {
	f := &lbFlags{}
	cmd := &cobra.Command{
		Use:   "lb",
		Short: "Keep HAProxy or NGINX in step with live membership: traffic moves the moment the active changes",
		Long: `Drive a real HAProxy (or NGINX) from the cluster's etcd: tandem's servers on
--listen (in active/standby only the active gets traffic, in active-active every
server that owns shards), and services run by tandem supervise (--service: the
node that runs it gets the traffic).

HAProxy changes who gets traffic through its runtime API at once, and reloads
(validated, one at a time, state kept) only when the shape changes; NGINX
reloads on every change. The proxy's own health checks (/isActive, or the
service's path) stay on, so it still routes correctly if tandem lb dies.

By default tandem lb starts the proxy itself and stops it on exit; --external
drives one started by systemd through its sockets and files.

TLS (docs/LB.md): servers that advertise https:// URLs are called over TLS 1.3
and verified against --backend-ca (required then), checks included;
--backend-cert/--backend-key present a client certificate. --tls-cert and
--tls-key serve TLS on --listen. SIGHUP reloads the files.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runLB(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.proxy, "proxy", "haproxy", "haproxy or nginx")
	fl.StringVar(&f.listen, "listen", ":8080", "where the proxy takes tandem API traffic (\"\" for none)")
	fl.StringArrayVar(&f.services, "service", nil, "a supervised service to balance, NAME=LISTEN,port=PORT[,health=/PATH][,sticky] (repeatable)")
	fl.StringVar(&f.cluster, "cluster", "default", "cluster name: its keys are under /tandem/<cluster>/ in etcd")
	fl.StringVar(&f.etcdEndpoints, "etcd-endpoints", "", "comma-separated etcd client URLs (default $TANDEM_ETCD_ENDPOINTS, else http://127.0.0.1:2379, https with --etcd-cert)")
	f.etcdTLS.register(fl)
	fl.StringVar(&f.dir, "dir", "", "where the proxy's configuration, sockets and state live (default a directory under the system's temporary directory)")
	fl.StringVar(&f.binary, "binary", "", "the proxy's binary (default haproxy or nginx from PATH)")
	fl.BoolVar(&f.external, "external", false, "drive a proxy started elsewhere (systemd): give --config-path and its sockets or pid file")
	fl.StringVar(&f.configPath, "config-path", "", "with --external: the file tandem lb writes (HAProxy: the whole configuration; NGINX: a file the main configuration includes)")
	fl.StringVar(&f.adminSocket, "admin-socket", "", "with --external and HAProxy: the stats socket at level admin")
	fl.StringVar(&f.masterSocket, "master-socket", "", "with --external and HAProxy: the master CLI socket (-S), used to reload")
	fl.StringVar(&f.pidFile, "pid-file", "", "with --external and NGINX: the master's pid file, signalled to reload")
	fl.StringVar(&f.nginxMain, "nginx-conf", "", "with --external and NGINX: the main configuration the master runs (nginx -c), which includes --config-path; nginx -t checks it before each reload (default NGINX's own, /etc/nginx/nginx.conf on Debian)")
	fl.StringVar(&f.nginxPrefix, "nginx-prefix", "", "with --external and NGINX: the master's prefix (nginx -p), if it was started with one")
	fl.StringVar(&f.nginxErrorLog, "nginx-error-log", "", "with --external and NGINX: its error log, quoted when it refuses a reload")
	fl.DurationVar(&f.inter, "check-inter", 2*time.Second, "the proxy's own health checks: time between checks (the safety net if tandem lb dies)")
	fl.IntVar(&f.fall, "check-fall", 3, "failed checks that mark a server down")
	fl.IntVar(&f.rise, "check-rise", 2, "passed checks that mark a server up")
	fl.DurationVar(&f.stopTimeout, "stop-timeout", 10*time.Second, "on exit, how long a proxy tandem lb started may finish the requests in flight (it takes no new connection) before it is stopped hard")
	fl.StringVar(&f.http, "http", "127.0.0.1:7680", "address of tandem lb's own status and metrics (GET /v1/lb/status, /metrics)")
	fl.StringVar(&f.backendCA, "backend-ca", "", "the cluster's CA (ca.pem): the proxy calls servers that advertise https:// URLs over TLS 1.3 and verifies them against it (required when any server does)")
	fl.StringVar(&f.backendCert, "backend-cert", "", "a client certificate the proxy presents to the servers (a server or cli certificate of the cluster, e.g. tandem tls cert create --server --id lb); optional, with --backend-key")
	fl.StringVar(&f.backendKey, "backend-key", "", "the key of --backend-cert")
	fl.BoolVar(&f.backendTLS, "backend-tls", false, "call every server over TLS, even one that advertises an http:// URL (needs --backend-ca)")
	fl.StringVar(&f.backendServerName, "backend-server-name", "", "the name every server's certificate must carry (default: HAProxy tandem-<cluster>, the common name of the cluster's server certificates; NGINX localhost, which they all carry)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "serve TLS 1.3 on --listen with this certificate (e.g. tandem tls cert create --server --id lb --dns <the name clients use>); with --tls-key. SIGHUP reloads it and the --backend-* files")
	fl.StringVar(&f.tlsKey, "tls-key", "", "the key of --tls-cert")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	cmd.AddCommand(newLBStatusCmd())
	return cmd
}

func (f *lbFlags) validate() ([]lb.Service, error) {
	if f.proxy != "haproxy" && f.proxy != "nginx" {
		return nil, usagef("--proxy %q: want haproxy or nginx", f.proxy)
	}
	var svcs []lb.Service
	for _, s := range f.services {
		svc, err := lb.ParseService(s)
		if err != nil {
			return nil, usagef("%v", err)
		}
		svcs = append(svcs, svc)
	}
	if f.stopTimeout <= 0 {
		return nil, usagef("--stop-timeout %s: must be positive", f.stopTimeout)
	}
	if f.inter <= 0 || f.fall < 1 || f.rise < 1 {
		return nil, usagef("--check-inter must be positive, --check-fall and --check-rise at least 1")
	}
	if f.external && f.configPath == "" {
		return nil, usagef("--external needs --config-path: the file tandem lb writes for the running proxy")
	}
	if f.external && f.proxy == "haproxy" && (f.adminSocket == "" || f.masterSocket == "") {
		return nil, usagef("--external with HAProxy needs --admin-socket (stats socket, level admin) and --master-socket (-S)")
	}
	if f.external && f.proxy == "nginx" && f.pidFile == "" {
		return nil, usagef("--external with NGINX needs --pid-file (the master's)")
	}
	if (!f.external || f.proxy != "nginx") && (f.nginxMain != "" || f.nginxPrefix != "" || f.nginxErrorLog != "") {
		return nil, usagef("--nginx-conf, --nginx-prefix and --nginx-error-log describe an NGINX started elsewhere: use them with --proxy nginx --external")
	}
	if f.binary != "" {
		// Refused here, before etcd is asked: a driver may only find out
		// when it first runs the proxy.
		if _, err := exec.LookPath(f.binary); err != nil {
			return nil, usagef("--binary %s: %v", f.binary, err)
		}
	}
	if _, _, err := net.SplitHostPort(f.http); err != nil {
		return nil, usagef("--http %q: want HOST:PORT", f.http)
	}
	if err := f.etcdTLS.validate(f.cluster, map[string]*string{"etcd-endpoints": &f.etcdEndpoints}); err != nil {
		return nil, err
	}
	if _, err := f.loadTLS(); err != nil {
		return nil, err
	}
	return svcs, nil
}

// loadTLS checks the TLS flags and their files and returns them for the
// driver, with absolute paths (the proxy reads them itself, from its own
// directory). Every problem is a usage error naming the flag. It reads f
// only, so the SIGHUP handler may call it again to check the files before
// the proxy reloads them.
func (f *lbFlags) loadTLS() (lb.TLS, error) {
	var t lb.TLS
	switch {
	case (f.backendCert == "") != (f.backendKey == ""):
		return t, usagef("--backend-cert and --backend-key go together")
	case f.backendCert != "" && f.backendCA == "":
		return t, usagef("--backend-cert needs --backend-ca, the cluster's CA that verifies the servers")
	case f.backendTLS && f.backendCA == "":
		return t, usagef("--backend-tls needs --backend-ca, the cluster's CA that verifies the servers")
	case f.backendServerName != "" && f.backendCA == "":
		return t, usagef("--backend-server-name needs --backend-ca")
	case (f.tlsCert == "") != (f.tlsKey == ""):
		return t, usagef("--tls-cert and --tls-key go together")
	case f.tlsCert != "" && f.listen == "":
		return t, usagef("--tls-cert serves TLS on --listen, which is empty")
	}
	if f.backendServerName != "" && !validServerName(f.backendServerName) {
		return t, usagef("--backend-server-name %q: want a host name (letters, digits, '.', '-', '_') or an IP address", f.backendServerName)
	}
	t = lb.TLS{BackendCA: f.backendCA, BackendCert: f.backendCert, BackendKey: f.backendKey,
		ServerName: f.backendServerName, Cert: f.tlsCert, Key: f.tlsKey}
	for _, p := range []*string{&t.BackendCA, &t.BackendCert, &t.BackendKey, &t.Cert, &t.Key} {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return lb.TLS{}, usagef("%v", err)
			}
			*p = abs
		}
	}
	if t.BackendCA != "" {
		// The store checks what the servers will: a CA file of CA
		// certificates, and a client certificate of the cluster that
		// verifies against it now, with its key.
		s, err := pki.NewStore(t.BackendCert, t.BackendKey, t.BackendCA, nil)
		if err != nil {
			flag := "--backend-ca"
			if t.BackendCert != "" {
				flag = "--backend-ca, --backend-cert, --backend-key"
			}
			return lb.TLS{}, usagef("%s: %v", flag, err)
		}
		if c := s.Cluster(); c != "" && c != f.cluster {
			return lb.TLS{}, usagef("--backend-ca %s is the CA of cluster %q, not of --cluster %q", t.BackendCA, c, f.cluster)
		}
		if id := s.Identity(); id != nil && id.Role != pki.RoleServer && id.Role != pki.RoleCLI {
			// Servers refuse an agent certificate on every route but the
			// agents' sync (403).
			return lb.TLS{}, usagef("--backend-cert %s is %s: the servers take a server or cli certificate from a proxy", t.BackendCert, id)
		}
	}
	if t.Cert != "" {
		// Any certificate will do for clients (one of a public CA for
		// browsers, or the cluster's); it must be its key's and valid now.
		pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return lb.TLS{}, usagef("--tls-cert %s, --tls-key %s: %v", t.Cert, t.Key, err)
		}
		now := time.Now()
		if leaf := pair.Leaf; leaf != nil && (now.After(leaf.NotAfter) || now.Before(leaf.NotBefore)) {
			return lb.TLS{}, usagef("--tls-cert %s is valid from %s to %s, not now", t.Cert,
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if t.BackendCA != "" && t.ServerName == "" && f.proxy == "haproxy" {
		// HAProxy compares the name with the common name too: this one is
		// every server certificate's of the cluster, and no agent's or cli's.
		t.ServerName = pki.ServerCommonName(f.cluster)
	}
	return t, nil
}

// validServerName accepts what both proxies can take as one word: a host
// name or an IP address.
func validServerName(s string) bool {
	if net.ParseIP(s) != nil {
		return true
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return s != "" && len(s) <= 253
}

// httpsServers lists the servers of d that serve TLS.
func httpsServers(d lb.Desired) []string {
	var out []string
	for _, b := range d.Backends {
		for _, s := range b.Servers {
			if s.TLS {
				out = append(out, s.Name)
			}
		}
	}
	return out
}

func runLB(cmd *cobra.Command, f *lbFlags) error {
	svcs, err := f.validate()
	if err != nil {
		return err
	}
	log, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	dir := f.dir
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "tandem-lb-"+f.cluster+"-"+f.proxy)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return usagef("--dir %s: %v", dir, err)
	}
	checks := lb.Checks{Inter: f.inter, Fall: f.fall, Rise: f.rise}
	tlsFiles, err := f.loadTLS()
	if err != nil {
		return err
	}
	// From now on SIGHUP reloads the TLS files rather than ending tandem
	// lb (one that comes before the proxy runs waits for it).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	drv, err := newLBDriver(f, dir, checks, tlsFiles, log)
	if err != nil {
		return usagef("%v", err)
	}
	eps := f.etcdEndpoints
	if eps == "" {
		eps = orDefault(os.Getenv("TANDEM_ETCD_ENDPOINTS"), f.etcdTLS.defaultURL(defaultEtcdEndpoint))
	}
	cli, err := newEtcdClient(strings.Split(eps, ","), &f.etcdTLS, f.cluster)
	if err != nil {
		return err
	}
	defer cli.Close()
	api := lb.API{Listen: f.listen, TLS: f.backendTLS, ListenTLS: f.tlsCert != ""}
	src, err := lb.NewSource(cli, f.cluster, api, svcs, log)
	if err != nil {
		return usagef("%v", err)
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go src.Run(ctx)
	// The proxy starts with the membership as it is now.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	for !src.Synced() && sctx.Err() == nil {
		select {
		case <-src.Changed():
		case <-sctx.Done():
		}
	}
	cancel()
	if !src.Synced() {
		return fmt.Errorf("read the cluster's membership from etcd at %s: no answer", eps)
	}
	if tlsOn := httpsServers(src.Desired()); len(tlsOn) > 0 && f.backendCA == "" {
		// Refused before the proxy starts. A server that turns to https
		// later is refused by the driver, and the proxy keeps routing as
		// it did (HAProxy still moves the active among the others).
		return usagef("servers %s advertise https:// URLs: give --backend-ca, the cluster's CA (ca.pem), so that the proxy can verify them",
			strings.Join(tlsOn, ", "))
	}
	if err := drv.Start(ctx, src.Desired()); err != nil {
		return err
	}
	defer drv.Close()
	go reloadTLSOnHUP(ctx, hup, f, drv, log)
	rc := lb.RunnerConfig{Log: log}
	if f.proxy == "nginx" {
		// Every change is a reload: a switchover's moment with no active
		// would cost the new active a second one.
		rc.Interregnum = 100 * time.Millisecond
	}
	r := lb.NewRunner(src, drv, f.proxy, rc)
	go superviseProxy(ctx, drv, src, r, log)
	ln, err := net.Listen("tcp", f.http)
	if err != nil {
		return fmt.Errorf("--http %s: %w", f.http, err)
	}
	hs := &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	log.Info("balancing", "proxy", f.proxy, "api", f.listen, "services", len(svcs), "dir", dir, "status", "http://"+ln.Addr().String()+"/v1/lb/status")
	r.Run(ctx)
	return nil
}

func newLBStatusCmd() *cobra.Command {
	var addr string
	var out *outputFormat
	cmd := &cobra.Command{
		Use:   "status",
		Short: "What tandem lb wants the proxy to do, what it applied, and how it went",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/lb/status", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("tandem lb at %s: %w", addr, err)
			}
			defer resp.Body.Close()
			var st lb.Status
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
				return fmt.Errorf("tandem lb at %s: %w", addr, err)
			}
			if *out == outputJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			return printLBStatus(cmd.OutOrStdout(), st)
		},
	}
	cmd.Flags().StringVar(&addr, "http", "127.0.0.1:7680", "tandem lb's --http address")
	out = addOutputFlag(cmd)
	return cmd
}

func printLBStatus(w io.Writer, st lb.Status) error {
	lag := "not measured yet"
	if st.WatchLagMS >= 0 {
		lag = fmt.Sprintf("%.1f ms behind etcd", st.WatchLagMS)
	}
	fmt.Fprintf(w, "proxy %s; watch at revision %d, %s; %d applies (%d reloads, %d failures, %d drifts); last apply %s (%.1f ms after the change)\n",
		st.Proxy, st.WatchRev, lag, st.Applies, st.Reloads, st.Failures, st.Drifts, fmtTime(st.LastApply), st.LastApplyMS)
	if st.LastError != "" {
		fmt.Fprintf(w, "last error: %s\n", st.LastError)
	}
	if st.ProxyExits > 0 {
		fmt.Fprintf(w, "the proxy exited %d times and was started again; last: %s\n", st.ProxyExits, st.LastProxyExit)
	}
	t := newTable(w, "BACKEND", "LISTEN", "SERVER", "ADDR", "WANT", "APPLIED")
	applied := map[string]bool{}
	if st.Applied != nil {
		for _, b := range st.Applied.Backends {
			for _, s := range b.Servers {
				applied[b.Name+"/"+s.Name] = s.Up
			}
		}
	}
	for _, b := range st.Desired.Backends {
		for _, s := range b.Servers {
			a, ok := applied[b.Name+"/"+s.Name]
			t.row(b.Name, b.Listen, s.Name, s.Addr, upDown(s.Up), map[bool]string{true: upDown(a), false: "-"}[ok])
		}
		if len(b.Servers) == 0 {
			t.row(b.Name, b.Listen, "-", "-", "-", "-")
		}
	}
	return t.flush()
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

// lbDriver is a proxy driver with a managed proxy's exit.
type lbDriver interface {
	lb.Driver
	Done() <-chan struct{}
	Err() error
	// ReloadTLS has the proxy read its TLS files again.
	ReloadTLS(ctx context.Context) error
}

// reloadTLSOnHUP has the proxy read its TLS files again on each SIGHUP
// from hup until ctx ends: they are checked as at start first, and files
// that do not pass change nothing (the proxy keeps the ones it has; an
// error is logged), like tandem's servers and agents.
func reloadTLSOnHUP(ctx context.Context, hup <-chan os.Signal, f *lbFlags, drv lbDriver, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		t, err := f.loadTLS()
		if err != nil {
			log.Error("SIGHUP: the TLS files do not pass; the proxy keeps the ones it has", "err", err)
			continue
		}
		if t == (lb.TLS{}) {
			log.Info("SIGHUP: no TLS files to reload")
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = drv.ReloadTLS(rctx)
		cancel()
		if err != nil {
			log.Error("SIGHUP: the proxy could not reload its TLS files; it keeps the ones it has", "err", err)
			continue
		}
		log.Info("SIGHUP: the proxy reloaded its TLS files")
	}
}

func newLBDriver(f *lbFlags, dir string, checks lb.Checks, tlsFiles lb.TLS, log *slog.Logger) (lbDriver, error) {
	switch f.proxy {
	case "haproxy":
		cfg := haproxy.DefaultConfig(dir)
		cfg.Checks, cfg.Log, cfg.StopTimeout, cfg.TLS = checks, log, f.stopTimeout, tlsFiles
		if f.binary != "" {
			cfg.Binary = f.binary
		}
		if f.external {
			cfg.Managed, cfg.ExternalConfigPath, cfg.AdminSocket, cfg.MasterSocket = false, f.configPath, f.adminSocket, f.masterSocket
		}
		return haproxy.New(cfg)
	default:
		cfg := nginx.DefaultConfig()
		cfg.Dir, cfg.Checks, cfg.Log, cfg.StopTimeout, cfg.TLS = dir, checks, log, f.stopTimeout, tlsFiles
		if f.binary != "" {
			cfg.Binary = f.binary
		}
		if f.external {
			cfg.External = &nginx.External{Conf: f.configPath, PidFile: f.pidFile, Main: f.nginxMain, Prefix: f.nginxPrefix, ErrorLog: f.nginxErrorLog}
		}
		return nginx.New(cfg)
	}
}

// superviseProxy restarts a managed proxy that exits until ctx ends: at
// once the first time and whenever it had run 10 s (a crash costs the
// least time without routing), with a growing backoff (1 s, 2 s, ... 30 s)
// while it keeps exiting sooner.
func superviseProxy(ctx context.Context, drv lbDriver, src *lb.Source, r *lb.Runner, log *slog.Logger) {
	const stable = 10 * time.Second
	backoff := func(w time.Duration) time.Duration { return min(max(2*w, time.Second), 30*time.Second) }
	var wait time.Duration
	for started := time.Now(); ; {
		done := drv.Done()
		if done == nil {
			return // external: not ours to restart
		}
		select {
		case <-ctx.Done():
			return
		case <-done:
		}
		if time.Since(started) >= stable {
			wait = 0
		}
		log.Error("the proxy exited; starting it again", "err", drv.Err(), "in", wait.String())
		r.ProxyExited(drv.Err())
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = backoff(wait)
			err := drv.Start(ctx, src.Desired())
			if err == nil {
				break
			}
			log.Error("could not start the proxy again", "err", err, "retry_in", wait.String())
		}
		started = time.Now()
	}
}
