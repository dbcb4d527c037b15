package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/api"
	"github.com/tandemhq/tandem/internal/embedetcd"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/pki"
	"github.com/tandemhq/tandem/internal/server"
	"github.com/tandemhq/tandem/internal/store"
)

// serverFlags are the flags of `tandem server`.
type serverFlags struct {
	id, cluster, listen, advertiseURL string
	etcdEndpoints                     string
	leaseTTL                          time.Duration
	autoFailover                      bool
	dataDir                           string
	embed                             bool
	etcdName, etcdPeerURL             string
	etcdClientURL, initialCluster     string
	etcdAdvClientURL, etcdAdvPeerURL  string
	etcdToken                         string
	etcdTLS                           etcdTLS
	etcdHeartbeat, etcdElection       time.Duration
	logLevel, logFormat               string
	moveEtcdLeader, deposeDead        bool
	probeInterval, agentTimeout       time.Duration
	suspectAfter                      time.Duration
	peerAddrs                         []string // id=host:port, hidden (tests)
	peerAddr                          map[string]string
	shards, maxMoves                  int
	settle, freeGrace                 time.Duration
	failpoint                         string
	scheduleGrace, clockSkew          time.Duration
	acl, aclMetrics                   bool
	auditLog                          string
	tls                               procTLS
	retention                         server.RetentionConfig
}

// The API serves a server through the interfaces it declares.
var (
	_ api.Service = (*server.Server)(nil)
	_ api.ACL     = (*server.Server)(nil)
)

func newServerCmd() *cobra.Command {
	f := &serverFlags{}
	def := server.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a tandem server (a master): election, state store, HTTP API",
		Long: `Run a tandem server. Servers of one cluster elect one active through etcd;
the others are hot standbys that redirect job requests to the active.

With --embed-etcd the server also runs an etcd member in-process, so three
servers form a complete HA cluster with nothing else installed:

  tandem server --id rm1 --listen 127.0.0.1:7070 --embed-etcd --data-dir /var/lib/tandem/rm1 \
    --etcd-client-url http://127.0.0.1:2379 --etcd-peer-url http://127.0.0.1:2380 \
    --initial-cluster rm1=http://127.0.0.1:2380,rm2=http://127.0.0.1:2382,rm3=http://127.0.0.1:2384`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runServer(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.id, "id", "", "server ID, unique in the cluster (required), e.g. rm1")
	fl.StringVar(&f.cluster, "cluster", def.Cluster, "cluster name: the servers of one cluster share /tandem/<cluster>/ in etcd")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:7070", "host:port to serve HTTP on")
	fl.StringVar(&f.advertiseURL, "advertise-url", "", "URL other servers and clients use to reach this server (default http://<listen>, https with --tls-cert)")
	fl.StringVar(&f.etcdEndpoints, "etcd-endpoints", "", "comma-separated etcd client URLs (default http://127.0.0.1:2379, or this server's member with --embed-etcd)")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", def.LeaseTTL, "lease TTL: how long a crashed active holds leadership (whole seconds; etcd's minimum with default timing is 2s)")
	fl.BoolVar(&f.autoFailover, "auto-failover", def.AutoFailover, "campaign automatically; with false, servers stay standby until `tandem admin transition-to-active`")
	fl.StringVar(&f.dataDir, "data-dir", "", "data directory (embedded etcd keeps its data here; default ./tandem-data/<id>)")
	fl.BoolVar(&f.embed, "embed-etcd", false, "run an etcd member inside this server")
	fl.StringVar(&f.etcdName, "etcd-name", "", "embedded etcd member name (default: the server ID)")
	fl.StringVar(&f.etcdPeerURL, "etcd-peer-url", "http://127.0.0.1:2380", "embedded etcd peer URL")
	fl.StringVar(&f.etcdClientURL, "etcd-client-url", "http://127.0.0.1:2379", "embedded etcd client URL")
	fl.StringVar(&f.etcdAdvClientURL, "etcd-advertise-client-url", "", "embedded etcd client URL others use, if not --etcd-client-url (e.g. through a proxy)")
	fl.StringVar(&f.etcdAdvPeerURL, "etcd-advertise-peer-url", "", "embedded etcd peer URL others use, if not --etcd-peer-url")
	fl.StringVar(&f.initialCluster, "initial-cluster", "", "embedded etcd initial cluster: name=peerURL,... (default: this member alone)")
	fl.StringVar(&f.etcdToken, "etcd-cluster-token", "", "embedded etcd cluster token (default tandem-<cluster>)")
	f.etcdTLS.register(fl)
	fl.DurationVar(&f.etcdHeartbeat, "etcd-heartbeat", 0, "embedded etcd heartbeat interval (default etcd's 100ms)")
	fl.DurationVar(&f.etcdElection, "etcd-election-timeout", 0, "embedded etcd election timeout (default etcd's 1s); lower it with the heartbeat to allow a 1s lease TTL")
	fl.BoolVar(&f.moveEtcdLeader, "etcd-leader-away", true, "with --embed-etcd: while active, hand etcd leadership to another member, so a crash of this process does not also cost an etcd election")
	fl.BoolVar(&f.deposeDead, "depose-dead-active", def.DeposeDead, "standbys depose an active whose port refuses connections instead of waiting for its lease")
	fl.DurationVar(&f.probeInterval, "probe-interval", def.ProbeInterval, "how often standbys probe the active")
	fl.DurationVar(&f.suspectAfter, "suspect-after", def.SuspectAfter, "vote that the active stopped answering after its watch stream is silent this long; a majority of the other servers voting, unanswered by the active, deposes it (0: wait for its lease)")
	fl.StringArrayVar(&f.peerAddrs, "peer-addr", nil, "for tests: reach server ID's watch stream and probes at host:port instead of its advertised URL's (ID=host:port, repeatable)")
	_ = fl.MarkHidden("peer-addr")
	fl.DurationVar(&f.agentTimeout, "agent-timeout", def.AgentTimeout, "an agent silent this long is declared lost and its attempts are retried elsewhere")
	fl.IntVar(&f.shards, "shards", 0, "number of shards, fixed when the cluster is first started: 1 is active/standby, more is active-active (default: the cluster's setting, 1 for a new cluster)")
	fl.DurationVar(&f.settle, "settle", def.Settle, "active-active: how long a server must be up before the target map gives it shards")
	fl.IntVar(&f.maxMoves, "max-moves", def.MaxMoves, "active-active: how many shards a server hands off at a time when the target map moves them")
	fl.DurationVar(&f.freeGrace, "free-grace", def.FreeGrace, "active-active: how long a free shard waits for its target before any server may take it")
	fl.StringVar(&f.failpoint, "failpoint", "", "for tests: crash at a chosen point ("+server.FailpointExitAfterAssign+", "+server.FailpointWorkflowBeforeCommit+":STEP, "+server.FailpointWorkflowAfterCommit+":STEP)")
	_ = fl.MarkHidden("failpoint")
	fl.DurationVar(&f.scheduleGrace, "schedule-grace", def.ScheduleGrace, "a schedule's nominal time less than this late always fires, whatever its catch-up policy (must exceed a failover, so be longer than --lease-ttl)")
	fl.DurationVar(&f.clockSkew, "clock-skew", 0, "for tests: add this to the clock the schedule controller reads (e.g. 5s: a clock 5s ahead)")
	_ = fl.MarkHidden("clock-skew")
	fl.BoolVar(&f.acl, "acl", false, "require a bearer token with the right policy on every API route but /isActive, /healthz, /metrics and the agents' sync (docs/SECURITY.md); all servers of a cluster should agree")
	fl.BoolVar(&f.aclMetrics, "acl-metrics", false, "with --acl, /metrics needs a read token too")
	f.tls.register(fl, "server")
	rt := &f.retention
	fl.DurationVar(&rt.Age, "retention-age", def.Retention.Age, "remove a finished job or workflow run (with its step jobs) once it has been finished this long and is beyond --retention-keep (0: keep all history; docs/RETENTION.md)")
	fl.IntVar(&rt.Keep, "retention-keep", def.Retention.Keep, "keep at least this many of the most recently finished jobs, and as many workflow runs, whatever their age")
	fl.DurationVar(&rt.Interval, "retention-interval", def.Retention.Interval, "how often the owner of a shard removes what retention allows")
	fl.DurationVar(&rt.TombstoneTTL, "retention-tombstone-ttl", def.Retention.TombstoneTTL, "how long reading a removed job answers 410 removed (afterwards 404 not found)")
	fl.DurationVar(&rt.IdempotencyTTL, "idempotency-ttl", store.IdempotencyTTL, fmt.Sprintf("how long an Idempotency-Key is remembered at least: a retry within it returns the first job (%s to %s)", store.MinIdempotencyTTL, store.MaxIdempotencyTTL))
	fl.StringVar(&rt.ArchiveDir, "archive-dir", "", "append removed records to gzip JSON-lines files in this directory (synced before they are deleted from etcd)")
	fl.DurationVar(&rt.CompactInterval, "etcd-compact-interval", def.Retention.CompactInterval, "how often the owner of shard 0 compacts etcd's history, keeping one interval of it (0: leave compaction to etcd)")
	fl.DurationVar(&rt.DefragInterval, "etcd-defrag-interval", def.Retention.DefragInterval, "how often the owner of shard 0 defragments, one at a time, the etcd members whose database is at least half free (0: never)")
	fl.Int64Var(&rt.DefragMinFree, "etcd-defrag-min-free", def.Retention.DefragMinFree, "defragment a member only when at least this many bytes of its database are free")
	fl.StringVar(&f.auditLog, "audit-log", "", "append one JSON line per mutating request and per denial to this file (\"-\": stderr)")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

// newLogger builds the process's slog handler; only cmd/ chooses it.
func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, usagef("--log-format %q: use text or json", format)
	}
}

// validate checks the flags and fills in defaults that depend on others.
func (f *serverFlags) validate() error {
	if f.id == "" {
		return usagef("--id is required: give each server a unique ID, e.g. --id rm1")
	}
	if f.retention.IdempotencyTTL == 0 {
		return usagef("--idempotency-ttl 0: must be from %s to %s", store.MinIdempotencyTTL, store.MaxIdempotencyTTL)
	}
	if err := f.retention.Validate(); err != nil {
		return usagef("%v (--retention-*, --archive-dir, --etcd-compact-interval, --etcd-defrag-*, --idempotency-ttl)", err)
	}
	host, port, err := net.SplitHostPort(f.listen)
	if err != nil || port == "" {
		return usagef("--listen %q: want host:port, e.g. 127.0.0.1:7070", f.listen)
	}
	if f.advertiseURL == "" {
		if host == "" || host == "0.0.0.0" || host == "::" {
			return usagef("--listen %q listens on every address: set --advertise-url to the URL others should use", f.listen)
		}
		f.advertiseURL = "http://" + f.listen
		if f.tls.on() {
			f.advertiseURL = httpsURL(f.advertiseURL)
		}
	}
	u, err := url.Parse(f.advertiseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return usagef("--advertise-url %q: want http(s)://host:port", f.advertiseURL)
	}
	f.advertiseURL = strings.TrimRight(f.advertiseURL, "/")
	if f.tls.on() && u.Scheme != "https" {
		return usagef("--advertise-url %q: with --tls-cert the server serves https only", f.advertiseURL)
	}
	if f.dataDir == "" {
		f.dataDir = filepath.Join("tandem-data", f.id)
	}
	if f.etcdName == "" {
		f.etcdName = f.id
	}
	if f.etcdToken == "" {
		f.etcdToken = "tandem-" + f.cluster
	}
	if f.etcdEndpoints == "" {
		if f.embed {
			f.etcdEndpoints = f.etcdClientURL
		} else {
			f.etcdEndpoints = "http://127.0.0.1:2379"
		}
	}
	for _, ep := range strings.Split(f.etcdEndpoints, ",") {
		if u, err := url.Parse(ep); err != nil || u.Host == "" {
			return usagef("--etcd-endpoints: %q is not a URL like http://127.0.0.1:2379", ep)
		}
	}
	if f.leaseTTL%time.Second != 0 {
		return usagef("--lease-ttl %s: etcd leases count whole seconds; use e.g. 1s, 2s, 5s", f.leaseTTL)
	}
	if (f.etcdHeartbeat == 0) != (f.etcdElection == 0) || f.etcdHeartbeat < 0 || f.etcdElection < 0 {
		return usagef("--etcd-heartbeat and --etcd-election-timeout go together (e.g. 50ms and 500ms)")
	}
	if f.etcdElection != 0 && f.etcdElection < 5*f.etcdHeartbeat {
		return usagef("--etcd-election-timeout must be at least 5 x --etcd-heartbeat")
	}
	if f.aclMetrics && !f.acl {
		return usagef("--acl-metrics protects /metrics with a token: it needs --acl")
	}
	if f.suspectAfter != 0 && (f.suspectAfter < 300*time.Millisecond || f.suspectAfter > time.Minute) {
		return usagef("--suspect-after %s: use 300ms (three beats) to 1m, or 0 to wait for the active's lease", f.suspectAfter)
	}
	f.peerAddr = make(map[string]string, len(f.peerAddrs))
	for _, pa := range f.peerAddrs {
		id, addr, ok := strings.Cut(pa, "=")
		if _, port, err := net.SplitHostPort(addr); !ok || id == "" || err != nil || port == "" {
			return usagef("--peer-addr %q: want ID=host:port, e.g. rm1=127.0.0.1:7071", pa)
		}
		f.peerAddr[id] = addr
	}
	return nil
}

// openAuditLog opens the audit log named by --audit-log: nil for "", stderr
// for "-", else the file, appended to (created 0600: it names every caller).
func openAuditLog(path string) (*acl.AuditLog, func(), error) {
	switch path {
	case "":
		return nil, func() {}, nil
	case "-":
		return acl.NewAuditLog(os.Stderr), func() {}, nil
	}
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, usagef("--audit-log: %v", err)
	}
	return acl.NewAuditLog(fh), func() { _ = fh.Close() }, nil
}

// A server serves the schedule routes (the API finds them on it).
var _ api.Schedules = (*server.Server)(nil)

func runServer(ctx context.Context, f *serverFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	etcdURLs := map[string]*string{"etcd-endpoints": &f.etcdEndpoints}
	if f.embed {
		etcdURLs["etcd-client-url"], etcdURLs["etcd-peer-url"] = &f.etcdClientURL, &f.etcdPeerURL
		etcdURLs["etcd-advertise-client-url"], etcdURLs["etcd-advertise-peer-url"] = &f.etcdAdvClientURL, &f.etcdAdvPeerURL
	}
	if err := f.etcdTLS.validate(f.cluster, etcdURLs); err != nil {
		return err
	}
	base, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	// Every record of a server names it (server=). server.New and api.New
	// add the attribute to what they are given, so they get base; all else
	// here (the certificate store, the HTTP server's error log, the embedded
	// etcd's shutdown) logs through log.
	log := base.With("server", f.id)
	audit, closeAudit, err := openAuditLog(f.auditLog)
	if err != nil {
		return err
	}
	defer closeAudit()
	certs, err := f.tls.load(pki.RoleServer, f.cluster, f.id, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Bind the HTTP port first: a port conflict should fail before this
	// server joins anything.
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.listen, err)
	}
	defer ln.Close()
	if certs != nil {
		// Client certificates are verified if given, not required: the
		// API also serves browsers and tools that bring a token.
		srvTLS, err := tlsServerConfig(certs, pki.ServerOptions{})
		if err != nil {
			return err
		}
		ln = tls.NewListener(ln, srvTLS)
	}

	var member *embedetcd.Member
	var memberErr <-chan error
	if f.embed {
		log.Info("starting embedded etcd member", "name", f.etcdName,
			"client_url", f.etcdClientURL, "peer_url", f.etcdPeerURL, "initial_cluster", f.initialCluster)
		member, err = embedetcd.Start(embedetcd.Config{
			Name: f.etcdName, Dir: filepath.Join(f.dataDir, "etcd"), ClientURL: f.etcdClientURL, PeerURL: f.etcdPeerURL,
			AdvertiseClientURL: f.etcdAdvClientURL, AdvertisePeerURL: f.etcdAdvPeerURL,
			InitialCluster: f.initialCluster, ClusterToken: f.etcdToken,
			HeartbeatMs: uint(f.etcdHeartbeat.Milliseconds()), ElectionMs: uint(f.etcdElection.Milliseconds()),
			CACert: f.etcdTLS.files.CACert, Cert: f.etcdTLS.files.Cert, Key: f.etcdTLS.files.Key,
		})
		if err != nil {
			return err
		}
		defer closeWithin(member.Close, 3*time.Second, log)
		memberErr = member.Err()
	}

	cli, err := newEtcdClient(strings.Split(f.etcdEndpoints, ","), &f.etcdTLS, f.cluster)
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := lockDownEtcd(ctx, &f.etcdTLS, cli, f.cluster, member != nil, log); err != nil {
		return err
	}

	cfg := server.DefaultConfig()
	cfg.ID, cfg.Cluster, cfg.URL = f.id, f.cluster, f.advertiseURL
	cfg.LeaseTTL, cfg.AutoFailover = f.leaseTTL, f.autoFailover
	cfg.Etcd, cfg.Logger = cli, base
	cfg.DeposeDead, cfg.ProbeInterval = f.deposeDead, f.probeInterval
	cfg.SuspectAfter, cfg.PeerAddrs = f.suspectAfter, f.peerAddr
	cfg.AgentTimeout, cfg.Failpoint = f.agentTimeout, f.failpoint
	cfg.ScheduleGrace = f.scheduleGrace
	cfg.Retention = f.retention
	if skew := f.clockSkew; skew != 0 {
		cfg.Clock = func() time.Time { return time.Now().Add(skew) }
	}
	cfg.Shards, cfg.Settle, cfg.MaxMoves, cfg.FreeGrace = f.shards, f.settle, f.maxMoves, f.freeGrace
	var apiOpts []api.Option
	if certs != nil {
		cfg.PeerTLS = pki.ClientConfig(certs, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer}})
		apiOpts = append(apiOpts, api.WithTLS(api.TLS{
			Cluster:     certs.Cluster(),
			AgentClient: pki.ClientConfig(certs, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleAgent}}),
		}))
	}
	srv, err := server.New(cfg)
	if err != nil {
		return usagef("%v", err)
	}
	if certs != nil {
		defer watchTLS(ctx, certs, srv.Registry())()
	}
	apiOpts = append(apiOpts, api.WithSecurity(api.Security{ACL: srv, Enforce: f.acl, ProtectMetrics: f.aclMetrics, Audit: audit}))
	handler := api.New(srv, base, apiOpts...)
	httpSrv := &http.Server{Handler: handler, ReadHeaderTimeout: api.ReadHeaderTimeout,
		// Refused TLS handshakes among them, at debug (load balancers'
		// TCP checks would fill the log otherwise), and refusals to the
		// audit log.
		ErrorLog: handler.HandshakeLog(log)}
	httpErr := make(chan error, 1)
	go func() { httpErr <- httpSrv.Serve(ln) }()

	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	err = srv.Start(startCtx)
	cancel()
	if err != nil {
		_ = httpSrv.Close()
		if ctx.Err() != nil {
			return nil // interrupted during start-up
		}
		return fmt.Errorf("start server %s: %w (is etcd reachable at %s?)", f.id, err, f.etcdEndpoints)
	}

	log.Info("api access", "acl", f.acl, "acl_metrics", f.aclMetrics, "audit_log", f.auditLog)

	if member != nil && f.moveEtcdLeader {
		go keepEtcdLeaderAway(ctx, srv, member, cli, keys.New(f.cluster).Leader(), log)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-httpErr:
		runErr = fmt.Errorf("http server: %w", err)
	case err := <-memberErr:
		runErr = fmt.Errorf("embedded etcd: %w", err)
	}
	// Resign first, so a standby takes over at once, then stop serving.
	_ = srv.Close()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := httpSrv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("http shutdown", "err", err)
	}
	return runErr
}

// etcdLeaderAwayAfter is how long a server is active before it hands etcd
// leadership away (see keepEtcdLeaderAway).
const etcdLeaderAwayAfter = 2 * time.Second

// keepEtcdLeaderAway moves etcd leadership off this process's member while
// this server is active (see embedetcd.Member.MoveLeadershipAway).
//
// It waits until the server has been active for etcdLeaderAwayAfter: a
// leadership transfer makes etcd drop the proposals it receives meanwhile,
// and right after a failover (when the new active's member often leads
// etcd, as the one that won the election fastest) those are the new
// active's first writes and its clients' first submissions.
// key is one the server may read: the check that a member hears the leader
// reads it through that member (embedetcd.Member.MoveLeadershipAway).
func keepEtcdLeaderAway(ctx context.Context, srv *server.Server, m *embedetcd.Member, cli *clientv3.Client, key string, log *slog.Logger) {
	var activeSince time.Time // zero while not active
	for {
		wait := 100 * time.Millisecond
		active := srv.Shards() == 1 && srv.State() == tandem.StateActive
		switch {
		case !active:
			activeSince = time.Time{}
		case activeSince.IsZero():
			activeSince = time.Now()
		}
		// With several shards every server owns some: moving leadership
		// between them would only bounce it around.
		if active && time.Since(activeSince) >= etcdLeaderAwayAfter && m.IsLeader() {
			to, err := m.MoveLeadershipAway(ctx, cli, key)
			switch {
			case err != nil:
				log.Warn("could not move etcd leadership away from the active", "err", err)
				wait = 2 * time.Second
			case to != "":
				log.Info("moved etcd leadership away from the active's member", "to", to)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// closeWithin runs stop but gives up waiting after limit. etcd's graceful
// stop first tries to hand raft leadership to a peer; when the peers are
// stopping too (tandem dev's Ctrl-C) that waits for etcd's request timeout.
// Exiting without it is as safe as a crash, which etcd's WAL is built for.
func closeWithin(stop func(), limit time.Duration, log *slog.Logger) {
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		log.Warn("embedded etcd did not stop in time; exiting anyway", "waited", limit.String())
	}
}
