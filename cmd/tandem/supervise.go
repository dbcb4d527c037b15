package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/tandemhq/tandem/internal/pki"
	"github.com/tandemhq/tandem/internal/supervise"
	"github.com/tandemhq/tandem/internal/supervise/health"
)

// superviseFlags are the flags of `tandem supervise` (the single-service
// form and the node's settings); a config file (--config) gives the same
// settings and any number of services, and flags given override it.
type superviseFlags struct {
	config        string
	node          string
	cluster       string
	etcdEndpoints string
	etcdTLS       etcdTLS
	listen        string
	advertise     string
	addr          string
	slots         int
	leaseTTL      time.Duration
	margin        time.Duration
	cgroupParent  string
	logDir        string
	pool          bool
	update        bool
	logLevel      string
	logFormat     string

	// The API's security (docs/SUPERVISE.md, "Security"): flags only, not
	// in the config file.
	tls        procTLS
	acl        bool
	aclMetrics bool
	auditLog   string

	// The single-service form.
	service        string
	health         []string
	healthInterval time.Duration
	healthTimeout  time.Duration
	healthFall     int
	healthRise     int
	healthStatus   int
	healthBody     string
	fence          []string
	fencing        string
	instances      string
	killMode       string
	vip            string
	epochFile      string
	startTimeout   time.Duration
	stopTimeout    time.Duration
	restarts       int
	restartWindow  time.Duration
	ban            time.Duration
	hooks          []string
	antiAffinity   []string
	nodes          []string
	dir            string
	env            []string
}

func newSuperviseCmd() *cobra.Command {
	f := &superviseFlags{}
	cmd := &cobra.Command{
		Use:   "supervise [flags] [-- COMMAND [ARGS...]]",
		Short: "Make any daemon highly available: one node runs it, fenced, with a moving virtual IP",
		Long: `Run on every node that may host a service, against the cluster's etcd.
Exactly one node runs a service's command at a time: the owner of the
service's lease-bound key. On a failure the command is restarted in place
up to a limit, then given up; another node fences the last one (fence hooks,
--fencing strict) or trusts it to have killed its own command in time
(--fencing self), takes the VIP and starts the command in a cgroup of its
own. docs/SUPERVISE.md explains the takeover order and what each guarantee
rests on.

One service from flags:

  tandem supervise --service nn --node n2 --etcd-endpoints http://10.0.0.1:2379 \
    --health http:http://127.0.0.1:50070/ --vip 10.0.0.50/24@eth0 \
    --fence 1:/etc/tandem/fence-ipmi -- /opt/hadoop/bin/hadoop namenode

Several from a file (--config), or any service defined in etcd (--pool).
Subcommands show and move services: status, history, move, ban, clear.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSupervise(cmd, f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "YAML file with this node's settings and its services (flags given override it)")
	fl.StringVar(&f.node, "node", "", "this node's name (default the host name)")
	fl.StringVar(&f.listen, "listen", "", "address of this supervisor's HTTP API: status, metrics, and the others' liveness probe (default :7480)")
	fl.StringVar(&f.advertise, "advertise", "", "URL the other supervisors reach this one at (default http://<host name>:<port of --listen>)")
	fl.StringVar(&f.addr, "addr", "", "this node's address as fence hooks get it (TANDEM_FENCE_ADDR; default the host of --advertise)")
	fl.IntVar(&f.slots, "slots", 0, "services this node may run at once (default 1)")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", 0, "this supervisor's etcd lease, whole seconds (default 2s): a node that stops renewing it loses its services that long after")
	fl.DurationVar(&f.margin, "self-fence-margin", 0, "kill the commands this long before the lease could expire when renewals fail (default a quarter of --lease-ttl)")
	fl.StringVar(&f.cgroupParent, "cgroup-parent", "", "cgroup v2 directory for the commands' cgroups (default <cgroup2 mount>/tandem); none: process groups instead, for development without root")
	fl.StringVar(&f.logDir, "log-dir", "", "directory for each service's output (SERVICE.log) and hooks' output (SERVICE.hooks.log)")
	fl.BoolVar(&f.pool, "pool", false, "offer to run any service defined in etcd (an N+K spare node), not only this node's own")
	fl.BoolVar(&f.update, "update", false, "replace a service's definition in etcd that differs from this node's")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	f.tls.register(fl, "server")
	fl.BoolVar(&f.acl, "acl", false, "require a bearer token of the cluster on the API: read for status, history and nodes, operator for move, ban and clear; /healthz stays open, /metrics too unless --acl-metrics")
	fl.BoolVar(&f.aclMetrics, "acl-metrics", false, "with --acl, /metrics needs a read token too")
	fl.StringVar(&f.auditLog, "audit-log", "", "append one JSON line per mutating API request and per denial to this file (\"-\": stderr)")

	fl.StringVar(&f.service, "service", "", "the service's name (the single-service form, with the command after --)")
	fl.StringArrayVar(&f.health, "health", nil, "health check KIND:TARGET, repeatable: exec:PATH [ARGS], tcp:HOST:PORT, http:URL (the command's own exit is always watched)")
	fl.DurationVar(&f.healthInterval, "health-interval", 0, "time between probes of each check (default 1s)")
	fl.DurationVar(&f.healthTimeout, "health-timeout", 0, "timeout of one probe (default 1s)")
	fl.IntVar(&f.healthFall, "health-fall", 0, "failures in a row that make a healthy service unhealthy (default 3)")
	fl.IntVar(&f.healthRise, "health-rise", 0, "successes in a row that make it healthy (default 2)")
	fl.IntVar(&f.healthStatus, "health-status", 0, "HTTP status an http check expects (default any 2xx)")
	fl.StringVar(&f.healthBody, "health-body", "", "text the body of an http check's answer must contain")
	fl.StringArrayVar(&f.fence, "fence", nil, "fence hook LEVEL:PATH [ARGS], repeatable; levels run in order until every hook of one exits 0")
	fl.StringVar(&f.fencing, "fencing", "", "strict (default: fence hooks must succeed before a takeover) or self (trust the old node's self-fencing: timing)")
	fl.StringVar(&f.instances, "instances", "", "one (default: one node at a time, the owner, with fencing and VIP) or every-node (every node listing the service runs its own instance, registered for tandem lb while healthy)")
	fl.StringVar(&f.vip, "vip", "", "virtual IPv4 address ADDR/BITS@DEV that follows the service")
	fl.StringVar(&f.epochFile, "epoch-file", "", "write the service's epoch here before each start, for services that can check a fencing token")
	fl.DurationVar(&f.startTimeout, "start-timeout", 0, "how long the command may take to become healthy (default 30s)")
	fl.StringVar(&f.killMode, "kill-mode", "", "whom a stop's SIGTERM goes to: control-group (default: every process of the command) or mixed (the main process alone, for a daemon that stops its children gracefully, like HAProxy, NGINX or tandem lb); the kill after --stop-timeout takes every process")
	fl.DurationVar(&f.stopTimeout, "stop-timeout", 0, "how long after SIGTERM the command's whole process tree is killed (default 10s)")
	fl.IntVar(&f.restarts, "restarts", 0, "restarts in place allowed within --restart-window before giving the service up (default 3)")
	fl.DurationVar(&f.restartWindow, "restart-window", 0, "window of --restarts (default 5m)")
	fl.DurationVar(&f.ban, "ban", 0, "how long a node that gave the service up (health-failed, start-failed) stays out of it (default 10m)")
	fl.StringArrayVar(&f.hooks, "hook", nil, "hook KIND:PATH [ARGS], repeatable; KIND is pre-start, post-start, pre-stop, post-stop or notify")
	fl.StringSliceVar(&f.antiAffinity, "anti-affinity", nil, "services never to run on the same node as this one")
	fl.StringSliceVar(&f.nodes, "nodes", nil, "the only nodes that may run the service, in order of preference")
	fl.StringVar(&f.dir, "dir", "", "working directory of the command")
	fl.StringArrayVar(&f.env, "env", nil, "KEY=VALUE for the command's environment, repeatable")

	pf := cmd.PersistentFlags()
	pf.StringVar(&f.cluster, "cluster", "", "cluster name: its keys are under /tandem/<cluster>/ in etcd (default \"default\")")
	pf.StringVar(&f.etcdEndpoints, "etcd-endpoints", "", "comma-separated etcd client URLs (default $TANDEM_ETCD_ENDPOINTS, else http://127.0.0.1:2379, https with --etcd-cert)")
	f.etcdTLS.register(pf)

	cmd.AddCommand(newSuperviseStatusCmd(f), newSuperviseHistoryCmd(f), newSuperviseMoveCmd(f),
		newSuperviseBanCmd(f), newSuperviseClearCmd(f))
	return cmd
}

// superviseFile is the YAML config file of `tandem supervise --config`.
type superviseFile struct {
	Node          string             `json:"node"`
	Cluster       string             `json:"cluster"`
	EtcdEndpoints []string           `json:"etcd_endpoints"`
	Listen        string             `json:"listen"`
	Advertise     string             `json:"advertise"`
	Addr          string             `json:"addr"`
	Slots         int                `json:"slots"`
	LeaseTTL      supervise.Duration `json:"lease_ttl"`
	SelfFence     supervise.Duration `json:"self_fence_margin"`
	CgroupParent  string             `json:"cgroup_parent"`
	LogDir        string             `json:"log_dir"`
	Pool          bool               `json:"pool"`
	Services      []fileService      `json:"services"`
}

// fileService is one service in the config file: a Service, with health
// checks written as "KIND:TARGET" or as objects.
type fileService struct {
	supervise.Service
	Health []fileCheck `json:"health"`
}

type fileCheck struct {
	Check    string             `json:"check"`
	Interval supervise.Duration `json:"interval"`
	Timeout  supervise.Duration `json:"timeout"`
	Fall     int                `json:"fall"`
	Rise     int                `json:"rise"`
	Status   int                `json:"status"`
	Body     string             `json:"body"`
}

func (c *fileCheck) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		c.Check = s
		return nil
	}
	type plain fileCheck
	var p plain
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	*c = fileCheck(p)
	return nil
}

func (c fileCheck) toCheck() (health.Check, error) {
	hc, err := health.Parse(c.Check)
	if err != nil {
		return hc, err
	}
	if c.Interval != 0 {
		hc.Interval = c.Interval.D()
	}
	if c.Timeout != 0 {
		hc.Timeout = c.Timeout.D()
	}
	if c.Fall != 0 {
		hc.Fall = c.Fall
	}
	if c.Rise != 0 {
		hc.Rise = c.Rise
	}
	hc.Status, hc.Body = c.Status, c.Body
	return hc, nil
}

func loadSuperviseFile(path string) (*superviseFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("--config: %v", err)
	}
	var file superviseFile
	if err := yaml.UnmarshalStrict(b, &file); err != nil {
		return nil, usagef("--config %s: %v", path, err)
	}
	return &file, nil
}

// superviseConfig builds the supervisor's configuration from the file and
// the flags (flags win), and the command after --.
func superviseConfig(cmd *cobra.Command, f *superviseFlags, args []string) (supervise.Config, []string, error) {
	cfg := supervise.DefaultConfig()
	var endpoints []string
	changed := cmd.Flags().Changed
	if f.config != "" {
		file, err := loadSuperviseFile(f.config)
		if err != nil {
			return cfg, nil, err
		}
		cfg.Node, cfg.URL, cfg.Listen, cfg.Addr = file.Node, file.Advertise, file.Listen, file.Addr
		if file.Cluster != "" {
			cfg.Cluster = file.Cluster
		}
		if file.Slots != 0 {
			cfg.Slots = file.Slots
		}
		if file.LeaseTTL != 0 {
			cfg.LeaseTTL = file.LeaseTTL.D()
		}
		cfg.SelfFenceMargin, cfg.CgroupParent, cfg.LogDir, cfg.Pool = file.SelfFence.D(), file.CgroupParent, file.LogDir, file.Pool
		endpoints = file.EtcdEndpoints
		for i, fs := range file.Services {
			svc := fs.Service
			svc.Health = nil
			for _, c := range fs.Health {
				hc, err := c.toCheck()
				if err != nil {
					return cfg, nil, usagef("--config %s: service %d (%s): %v", f.config, i+1, svc.Name, err)
				}
				svc.Health = append(svc.Health, hc)
			}
			cfg.Services = append(cfg.Services, svc)
		}
		if len(args) > 0 {
			return cfg, nil, usagef("a command after -- goes with --service, not with --config (put it in the file's services)")
		}
	}
	if changed("node") || cfg.Node == "" {
		cfg.Node = f.node
	}
	if cfg.Node == "" {
		host, err := os.Hostname()
		if err != nil {
			return cfg, nil, usagef("--node: not given, and the host name is unknown: %v", err)
		}
		cfg.Node = strings.Split(host, ".")[0]
	}
	if changed("cluster") {
		cfg.Cluster = f.cluster
	}
	if f.etcdEndpoints != "" {
		endpoints = strings.Split(f.etcdEndpoints, ",")
	}
	if len(endpoints) == 0 {
		endpoints = strings.Split(orDefault(os.Getenv("TANDEM_ETCD_ENDPOINTS"), f.etcdTLS.defaultURL(defaultEtcdEndpoint)), ",")
	}
	for _, ep := range endpoints {
		if u, err := url.Parse(ep); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return cfg, nil, usagef("--etcd-endpoints: %q is not a URL like http://127.0.0.1:2379", ep)
		}
	}
	if changed("listen") || cfg.Listen == "" {
		cfg.Listen = orDefault(f.listen, ":7480")
	}
	if changed("advertise") || cfg.URL == "" {
		cfg.URL = f.advertise
	}
	if cfg.URL == "" {
		_, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return cfg, nil, usagef("--listen %q: want HOST:PORT or :PORT", cfg.Listen)
		}
		host, _ := os.Hostname()
		cfg.URL = "http://" + net.JoinHostPort(orDefault(host, "localhost"), port)
		if f.tls.on() {
			cfg.URL = httpsURL(cfg.URL)
		}
	}
	if u, err := url.Parse(cfg.URL); err == nil && u.Scheme == "http" && f.tls.on() {
		return cfg, nil, usagef("--advertise %q: with --tls-cert the supervisor serves https only", cfg.URL)
	}
	if changed("addr") {
		cfg.Addr = f.addr
	}
	if changed("slots") {
		cfg.Slots = f.slots
	}
	if changed("lease-ttl") {
		cfg.LeaseTTL = f.leaseTTL
	}
	if changed("self-fence-margin") {
		cfg.SelfFenceMargin = f.margin
	}
	if changed("cgroup-parent") {
		cfg.CgroupParent = f.cgroupParent
	}
	if changed("log-dir") {
		cfg.LogDir = f.logDir
	}
	if changed("pool") {
		cfg.Pool = f.pool
	}
	cfg.Update = f.update

	single := f.service != "" || len(args) > 0
	if !single {
		for _, name := range []string{"health", "fence", "fencing", "instances", "kill-mode", "vip", "epoch-file", "hook", "anti-affinity", "nodes", "dir", "env",
			"start-timeout", "stop-timeout", "restarts", "restart-window", "ban"} {
			if changed(name) {
				return cfg, nil, usagef("--%s describes a service: give --service NAME and the command after --", name)
			}
		}
		return cfg, endpoints, nil
	}
	if f.service == "" {
		return cfg, nil, usagef("a command after -- needs --service NAME")
	}
	if len(args) == 0 {
		return cfg, nil, usagef("--service %s: no command: give the command to run after --, e.g. -- /usr/bin/redis-server --port 6379", f.service)
	}
	svc, err := serviceFromFlags(f, args)
	if err != nil {
		return cfg, nil, err
	}
	cfg.Services = append(cfg.Services, svc)
	return cfg, endpoints, nil
}

func serviceFromFlags(f *superviseFlags, args []string) (supervise.Service, error) {
	svc := supervise.Service{
		Name: f.service, Command: args, Dir: f.dir, Fencing: f.fencing, Instances: f.instances, KillMode: f.killMode, VIP: f.vip, EpochFile: f.epochFile,
		StartTimeout: supervise.Duration(f.startTimeout), StopTimeout: supervise.Duration(f.stopTimeout),
		Restarts: f.restarts, RestartWindow: supervise.Duration(f.restartWindow), Ban: supervise.Duration(f.ban),
		AntiAffinity: f.antiAffinity, Nodes: f.nodes,
	}
	for _, h := range f.health {
		c := fileCheck{Check: h, Interval: supervise.Duration(f.healthInterval), Timeout: supervise.Duration(f.healthTimeout),
			Fall: f.healthFall, Rise: f.healthRise, Status: f.healthStatus, Body: f.healthBody}
		hc, err := c.toCheck()
		if err != nil {
			return svc, usagef("--health %q: %v", h, err)
		}
		svc.Health = append(svc.Health, hc)
	}
	for _, fh := range f.fence {
		h, err := supervise.ParseFence(fh)
		if err != nil {
			return svc, usagef("%v", err)
		}
		svc.Fence = append(svc.Fence, h)
	}
	for _, h := range f.hooks {
		kind, path, ok := strings.Cut(h, ":")
		if !ok || path == "" {
			return svc, usagef("--hook %q: want KIND:PATH, e.g. pre-start:/etc/tandem/mount-disk", h)
		}
		switch kind {
		case "pre-start":
			svc.Hooks.PreStart = path
		case "post-start":
			svc.Hooks.PostStart = path
		case "pre-stop":
			svc.Hooks.PreStop = path
		case "post-stop":
			svc.Hooks.PostStop = path
		case "notify":
			svc.Hooks.Notify = path
		default:
			return svc, usagef("--hook %q: unknown kind %q: want pre-start, post-start, pre-stop, post-stop or notify", h, kind)
		}
	}
	for _, kv := range f.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return svc, usagef("--env %q: want KEY=VALUE", kv)
		}
		if svc.Env == nil {
			svc.Env = map[string]string{}
		}
		svc.Env[k] = v
	}
	return svc, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func runSupervise(cmd *cobra.Command, f *superviseFlags, args []string) error {
	cfg, endpoints, err := superviseConfig(cmd, f, args)
	if err != nil {
		return err
	}
	if endpoints == nil {
		endpoints = etcdEndpoints(f)
	}
	log, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	cfg.Log = log
	for i := range cfg.Services {
		cfg.Services[i] = cfg.Services[i].WithDefaults()
	}
	if err := cfg.Validate(); err != nil {
		return usagef("%v", err)
	}
	// Everything this machine must have is checked before anything starts.
	for _, svc := range cfg.Services {
		if err := svc.Check(); err != nil {
			return usagef("%v", err)
		}
	}
	certs, closeAudit, err := superviseSecurity(f, &cfg, log)
	if err != nil {
		return err
	}
	defer closeAudit()
	if cfg.LogDir != "" {
		if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
			return fmt.Errorf("--log-dir: %w", err)
		}
	}
	cli, err := newEtcdClient(endpoints, &f.etcdTLS, cfg.Cluster)
	if err != nil {
		return err
	}
	defer cli.Close()
	sup, err := supervise.New(cfg, cli)
	if err != nil {
		return usagef("%v", err)
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if certs != nil {
		defer watchTLS(ctx, certs, sup.Registry())()
	}
	log.Info("supervising", "node", cfg.Node, "cluster", cfg.Cluster, "listen", cfg.Listen, "url", cfg.URL, "services", len(cfg.Services), "pool", cfg.Pool,
		"tls", certs != nil, "acl", f.acl, "acl_metrics", f.aclMetrics, "audit_log", f.auditLog)
	return sup.Run(ctx)
}

// superviseSecurity checks the API's security flags and fills
// cfg.Security: TLS with a server certificate of the cluster whose ID is
// the node (the same rule as a server's --id), tokens, the audit log. It
// returns the certificate store (nil without TLS), to reload on SIGHUP, and
// the audit log's closer. Every problem is a usage error naming the flag.
func superviseSecurity(f *superviseFlags, cfg *supervise.Config, log *slog.Logger) (*pki.Store, func(), error) {
	if f.aclMetrics && !f.acl {
		return nil, nil, usagef("--acl-metrics protects /metrics with a token: it needs --acl")
	}
	if f.tls.cert != "" && f.tls.key != "" && f.tls.ca != "" {
		// procTLS.load names the server's --id; a supervisor's ID is its
		// --node. Anything else wrong with the files, load says.
		if c, err := pki.ReadCerts(f.tls.cert); err == nil && len(c) > 0 {
			if id, err := pki.FromCert(c[0]); err == nil && id.Role == pki.RoleServer && id.Cluster == cfg.Cluster && id.ID != cfg.Node {
				return nil, nil, usagef("--tls-cert %s is %s's certificate, not node %s's (--node): the ID in a supervisor's certificate must be its node", f.tls.cert, id.ID, cfg.Node)
			}
		}
	}
	certs, err := f.tls.load(pki.RoleServer, cfg.Cluster, cfg.Node, log)
	if err != nil {
		return nil, nil, err
	}
	if certs != nil {
		// Client certificates are verified if given, not required: tools
		// call the API with a token, and the others' probes of /healthz
		// need nothing.
		srvTLS, err := tlsServerConfig(certs, pki.ServerOptions{})
		if err != nil {
			return nil, nil, err
		}
		cfg.Security.TLS = srvTLS
		cfg.Security.PeerTLS = pki.ClientConfig(certs, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer}})
	}
	audit, closeAudit, err := openAuditLog(f.auditLog)
	if err != nil {
		return nil, nil, err
	}
	cfg.Security.Enforce, cfg.Security.ProtectMetrics, cfg.Security.Audit = f.acl, f.aclMetrics, audit
	return certs, closeAudit, nil
}

func etcdEndpoints(f *superviseFlags) []string {
	if f.etcdEndpoints != "" {
		return strings.Split(f.etcdEndpoints, ",")
	}
	return strings.Split(orDefault(os.Getenv("TANDEM_ETCD_ENDPOINTS"), f.etcdTLS.defaultURL(defaultEtcdEndpoint)), ",")
}

// defaultEtcdEndpoint is where a process looks for etcd when told nothing
// (https with certificates: etcdTLS.defaultURL).
const defaultEtcdEndpoint = "http://127.0.0.1:2379"

// superviseAdmin connects to etcd for the operator subcommands.
func superviseAdmin(f *superviseFlags) (*supervise.Admin, func(), error) {
	cluster := orDefault(f.cluster, "default")
	cli, err := newEtcdClient(etcdEndpoints(f), &f.etcdTLS, cluster)
	if err != nil {
		return nil, nil, err
	}
	a, err := supervise.NewAdmin(cli, cluster)
	if err != nil {
		cli.Close()
		return nil, nil, usagef("--cluster: %v", err)
	}
	return a, func() { cli.Close() }, nil
}

func adminContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), 10*time.Second)
}

func newSuperviseStatusCmd(f *superviseFlags) *cobra.Command {
	var out *outputFormat
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Every supervised service: where it runs, its state and epoch, or why it runs nowhere",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, done, err := superviseAdmin(f)
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := adminContext(cmd)
			defer cancel()
			st, err := a.Status(ctx)
			if err != nil {
				return err
			}
			if *out == outputJSON {
				if st == nil {
					st = []supervise.ServiceStatus{}
				}
				return writeJSON(cmd.OutOrStdout(), st)
			}
			return printSuperviseStatus(cmd.OutOrStdout(), st)
		},
	}
	out = addOutputFlag(cmd)
	return cmd
}

func printSuperviseStatus(w io.Writer, st []supervise.ServiceStatus) error {
	t := newTable(w, "SERVICE", "NODE", "STATE", "EPOCH", "SINCE", "PID", "RESTARTS", "VIP", "FENCING", "NOTE")
	for _, s := range st {
		note := s.Reason
		if s.Node == "" && len(s.Candidates) > 0 {
			var why []string
			for _, n := range sortedKeys(s.Candidates) {
				if s.Candidates[n] != "" {
					why = append(why, n+": "+s.Candidates[n])
				}
			}
			note = strings.TrimPrefix(note+"; "+strings.Join(why, "; "), "; ")
		}
		if s.MoveTo != "" {
			note = strings.TrimPrefix(note+"; moving to "+s.MoveTo, "; ")
		}
		if len(s.Bans) > 0 {
			var bans []string
			for _, b := range s.Bans {
				bans = append(bans, b.Node)
			}
			note = strings.TrimPrefix(note+"; banned: "+strings.Join(bans, ","), "; ")
		}
		if s.State == supervise.StateEveryNode {
			// One row per healthy instance; the note on the last says which
			// nodes offer it without one.
			for _, in := range s.Instances {
				t.row(s.Service, in.Node, "healthy", "-", fmtTime(in.Since), strconv.Itoa(in.PID), strconv.Itoa(in.Restarts), "-", "-", "instance")
			}
			if len(s.Instances) == 0 || note != "" {
				t.row(s.Service, "-", "every-node", "-", "-", "-", "-", "-", "-", orDash(note))
			}
			continue
		}
		epoch, pid := "-", "-"
		if s.Epoch != 0 {
			epoch = strconv.FormatInt(s.Epoch, 10)
		}
		if s.PID != 0 {
			pid = strconv.Itoa(s.PID)
		}
		t.row(s.Service, orDash(s.Node), s.State, epoch, fmtTime(s.Since), pid, strconv.Itoa(s.Restarts), orDash(s.VIP), s.Fencing, orDash(note))
	}
	return t.flush()
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func newSuperviseHistoryCmd(f *superviseFlags) *cobra.Command {
	var out *outputFormat
	cmd := &cobra.Command{
		Use:   "history [SERVICE]",
		Short: "Failovers of supervised services, with the duration of each phase",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, done, err := superviseAdmin(f)
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := adminContext(cmd)
			defer cancel()
			svc := ""
			if len(args) == 1 {
				svc = args[0]
			}
			evs, err := a.History(ctx, svc)
			if err != nil {
				return err
			}
			if *out == outputJSON {
				if evs == nil {
					evs = []supervise.Event{}
				}
				return writeJSON(cmd.OutOrStdout(), evs)
			}
			t := newTable(cmd.OutOrStdout(), "TIME", "SERVICE", "EPOCH", "NODE", "PREV", "CAUSE", "FENCED", "DETECTION", "ELECTION", "FENCING", "START", "HEALTHY", "VIP", "TOTAL")
			for _, e := range evs {
				t.row(fmtTime(e.Time), e.Service, strconv.FormatInt(e.Epoch, 10), e.Node, orDash(e.PrevNode), e.Cause, orDash(e.Fenced),
					fmtSeconds(e.DetectionS), fmtSeconds(e.ElectionS), fmtSeconds(e.FencingS), fmtSeconds(e.StartS),
					fmtSeconds(e.HealthyS), fmtSeconds(e.VIPS), fmtSeconds(e.TotalS))
			}
			return t.flush()
		},
	}
	out = addOutputFlag(cmd)
	return cmd
}

func newSuperviseMoveCmd(f *superviseFlags) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "move SERVICE NODE",
		Short: "Stop a service cleanly where it runs and start it on NODE",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, done, err := superviseAdmin(f)
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := adminContext(cmd)
			err = a.Move(ctx, args[0], args[1])
			cancel()
			if err != nil {
				return err
			}
			if wait <= 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "asked the owner of %s to move it to %s\n", args[0], args[1])
				return nil
			}
			return waitSuperviseOn(cmd, a, args[0], args[1], wait)
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the service to be healthy on NODE (0: do not wait)")
	return cmd
}

// waitSuperviseOn polls until svc is healthy on node.
func waitSuperviseOn(cmd *cobra.Command, a *supervise.Admin, svc, node string, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), wait)
	defer cancel()
	for {
		st, err := a.Status(ctx)
		if err == nil {
			for _, s := range st {
				if s.Service == svc && s.Node == node && s.State == supervise.StateHealthy {
					fmt.Fprintf(cmd.OutOrStdout(), "%s is healthy on %s (epoch %d)\n", svc, node, s.Epoch)
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return &exitError{code: 1, err: fmt.Errorf("%s is not healthy on %s after %s", svc, node, wait)}
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func newSuperviseBanCmd(f *superviseFlags) *cobra.Command {
	var d time.Duration
	var reason string
	cmd := &cobra.Command{
		Use:   "ban SERVICE NODE",
		Short: "Keep NODE out of a service for a while (if it runs the service there, it stops it cleanly)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if d <= 0 {
				return usagef("--for %s: must be positive", d)
			}
			a, done, err := superviseAdmin(f)
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := adminContext(cmd)
			defer cancel()
			if err := a.Ban(ctx, args[0], args[1], d, reason); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "banned %s from %s for %s\n", args[1], args[0], d)
			return nil
		},
	}
	cmd.Flags().DurationVar(&d, "for", time.Hour, "how long the ban lasts")
	cmd.Flags().StringVar(&reason, "reason", "", "why, shown in status")
	return cmd
}

func newSuperviseClearCmd(f *superviseFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "clear SERVICE",
		Short: "Lift every ban of a service and drop a pending move, so any node may take it again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, done, err := superviseAdmin(f)
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := adminContext(cmd)
			defer cancel()
			n, err := a.Clear(ctx, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cleared %d ban(s) of %s\n", n, args[0])
			return nil
		},
	}
}
