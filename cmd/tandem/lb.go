package main

import (
	"context"
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
drives one started by systemd through its sockets and files.`,
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
	return svcs, nil
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
	drv, err := newLBDriver(f, dir, checks, log)
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
	src, err := lb.NewSource(cli, f.cluster, lb.API{Listen: f.listen}, svcs, log)
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
	if err := drv.Start(ctx, src.Desired()); err != nil {
		return err
	}
	defer drv.Close()
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
}

func newLBDriver(f *lbFlags, dir string, checks lb.Checks, log *slog.Logger) (lbDriver, error) {
	switch f.proxy {
	case "haproxy":
		cfg := haproxy.DefaultConfig(dir)
		cfg.Checks, cfg.Log, cfg.StopTimeout = checks, log, f.stopTimeout
		if f.binary != "" {
			cfg.Binary = f.binary
		}
		if f.external {
			cfg.Managed, cfg.ExternalConfigPath, cfg.AdminSocket, cfg.MasterSocket = false, f.configPath, f.adminSocket, f.masterSocket
		}
		return haproxy.New(cfg)
	default:
		cfg := nginx.DefaultConfig()
		cfg.Dir, cfg.Checks, cfg.Log, cfg.StopTimeout = dir, checks, log, f.stopTimeout
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
