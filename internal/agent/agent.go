// Package agent is tandem's agent: it runs job attempts as local processes,
// keeps their logs, and reports to the servers that own their jobs (DESIGN.md
// sections 9 and 10), much as a YARN NodeManager does for its
// ResourceManagers.
//
// The cluster's jobs are split into shards; each shard has one owner server
// at a time, and each term of ownership an epoch (cluster-wide monotonic).
// With one shard its owner is "the active". The agent keeps one sync
// session with every server it knows, the configured ones and those the
// servers' answers list: each session keeps a long poll, POST
// /v1/agent/sync, open to its one server, and a failed session retries that
// same server, with backoff, forever. Every sync carries what the agent runs
// and what has finished; every server answers for the shards it owns, with
// assignments, kill orders and acknowledgements, each carrying its shard and
// the epoch of the term that vouches for it. A server that owns nothing
// simply holds the poll. Something happening locally (an attempt started or
// ended) cuts every session's poll short, so every owner hears at once.
//
// The agent enforces two of tandem's promises itself:
//
//   - I1, fencing at the resource, per shard: it keeps the highest epoch it
//     has seen for each shard, on disk, recorded before it acts on the
//     answer that raised it, and refuses, item by item, anything vouched for
//     by a lower epoch of the item's shard. A deposed owner of one shard
//     does not make the agent refuse what the owners of other shards send.
//   - I4, launch at most once: every attempt ID is appended to an fsync'ed
//     ledger before its process starts, and an ID in the ledger is never
//     launched again, not even by a restarted agent. Answers, from however
//     many sessions, are applied one at a time.
//
// The agent never kills an attempt because a server went away or changed
// (work-preserving failover). Attempts do die with the agent process
// (Pdeathsig), so an agent restart loses them, and reports them lost, but
// never runs them twice.
//
// The package runs on Linux only (process groups, Pdeathsig, /proc).
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/endpoint"
	"github.com/tandemhq/tandem/internal/transport"
)

// Defaults for Config fields left zero.
const (
	DefaultPollWait     = 2 * time.Second
	DefaultIdlePollWait = 5 * time.Second
	DefaultKillGrace    = 5 * time.Second
	DefaultBackoffBase  = 20 * time.Millisecond
	DefaultBackoffMax   = 250 * time.Millisecond
	DefaultListen       = "127.0.0.1:0"
)

// Log attribute keys.
const (
	logAgent     = "agent"
	logAttempt   = "attempt"
	logJob       = "job"
	logShard     = "shard"
	logEpoch     = "epoch"
	logServerURL = "server_url"
	logServerID  = "server_id"
)

var idPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// Backoff paces a session's retries of its server after failures: the first
// retry is immediate, then Base doubling up to Max, each scaled by a jitter
// uniform in [1/2, 1]. A session of a configured server never stops
// retrying.
type Backoff struct {
	Base time.Duration
	Max  time.Duration
}

// Config configures an Agent. ID, Servers and WorkDir are required.
type Config struct {
	// ID names the agent in the cluster: 1 to 63 letters, digits, '.', '_'
	// or '-', starting with a letter or digit.
	ID string
	// Servers are the servers' base URLs (http or https). The agent keeps a
	// sync session with each of them for as long as it runs, and with every
	// other server their answers list while it is listed or answers.
	Servers []string
	// WorkDir holds the agent's durable state (ledger, epochs, pending
	// reports), the attempts' logs and their default work dirs. Only one
	// agent may use a work dir at a time.
	WorkDir string
	// Listen is the host:port of the agent's HTTP server (attempt logs);
	// default 127.0.0.1:0, a free port.
	Listen string
	// AdvertiseURL is how servers reach the agent's HTTP server; default
	// http://<the address it listens on>.
	AdvertiseURL string
	// Capacity is what the agent offers; a zero field defaults to the
	// machine's (runtime.NumCPU(), MemTotal of /proc/meminfo).
	Capacity tandem.Resources
	// Labels are matched against jobs' constraints.
	Labels map[string]string
	// PollWait is how long a server may hold a sync that it has nothing to
	// answer (default 2s).
	PollWait time.Duration
	// IdlePollWait is how long a server whose last answer said it owns no
	// shard (a standby) may hold a sync (default 5s, never less than
	// PollWait). Such a server has nothing to say until it takes a shard,
	// and then it answers the sync it holds at once; holding it longer
	// spares it and the agent requests. The server holds a sync at most half
	// its --agent-timeout whatever the agent asks.
	IdlePollWait time.Duration
	// KillGrace is the time between SIGTERM and SIGKILL when an attempt is
	// killed or times out (default 5s).
	KillGrace time.Duration
	// Backoff paces each session's retries of its server; zero fields take
	// the defaults (20ms, 250ms).
	Backoff Backoff
	// RunAs is the user attempts run as when their job names none. Empty
	// means the agent's own user, except that an agent running as root
	// runs them as DefaultRunAs: attempts never run as root by accident.
	// An agent not running as root can run attempts only as itself.
	RunAs string
	// AllowUsers are the users, besides RunAs, that a job may name
	// (JobSpec.User); an attempt of a job naming any other user fails
	// without running.
	AllowUsers []string
	// AllowRoot lets attempts run as root (uid 0), as RunAs or as a user in
	// AllowUsers; without it, naming root in either is refused.
	AllowRoot bool
	// ClientTLS, when set, configures the sync with https servers: the CA
	// to verify them against and the agent's certificate to present, whose
	// ID must be the agent's (pki.ClientConfig with the server role).
	ClientTLS *tls.Config
	// ServerTLS, when set, makes the agent's HTTP server serve TLS with it
	// (pki.ServerConfig requiring a client certificate of the server role:
	// only servers call an agent, to read attempt logs), and the default
	// advertise URL https.
	ServerTLS *tls.Config
	// Logger receives the agent's logs; every record carries agent=<ID>.
	// Nil discards them.
	Logger *slog.Logger
}

// server is one server's endpoint.
type server struct {
	base string // normalized base URL, no trailing slash
	key  string // scheme://host:port: the server's identity, and its session's name
}

// Agent runs attempts for a tandem cluster. Create it with New, run it with
// Start, stop it with Close. Its methods are safe for concurrent use.
type Agent struct {
	cfg     Config
	servers []server // configured
	log     *slog.Logger
	hc      *http.Client         // tr's, to close its idle connections
	tr      *transport.Transport // for each sync's HTTP exchange (Direct)
	boot    string               // this boot's ID (see bootID)
	users   *users               // who attempts run as

	// Lock order: launchMu, then diskMu, then mu; an attempt's sigMu, then mu.

	// launchMu serializes applying answers, so two answers carrying the
	// same assignment cannot both pass the ledger check (I4), and an answer
	// raising a shard's epoch is recorded before a concurrent one of the
	// deposed owner is checked (I1). It guards ledger, the ledger file and
	// the epoch file; epochs changes only under it (and mu).
	launchMu sync.Mutex
	ledger   map[string]bool // every attempt ID ever launched on this work dir (I4)

	// diskMu keeps reports of finishing attempts from being written to the
	// work dir after Close released it; diskClosed is set under it.
	diskMu     sync.RWMutex
	diskClosed bool

	mu        sync.Mutex
	st        *state // set by Start; its files are written under launchMu or diskMu
	info      tandem.AgentInfo
	epochs    map[int]int64                   // highest epoch seen per shard (I1)
	launching map[string]bool                 // IDs between the ledger and a running process
	running   map[string]*attempt             // attempts whose process runs
	done      map[string]tandem.AttemptReport // finished, not yet acknowledged
	acked     map[string]bool                 // acknowledged by a server, to this process
	sessions  map[string]*session             // by server key: one per server synced with
	seqs      map[string]uint64               // by session name: the last Seq sent, across restarts of the session
	answered  time.Time                       // when any session last had an answer
	quietWarn time.Time                       // when "no server answers" was last logged
	closed    bool
	started   bool

	sessionCtx    context.Context // parent of every session's context; Close cancels it
	stopSessions  context.CancelFunc
	sessionsGroup sync.WaitGroup // one per session goroutine

	httpSrv    *http.Server
	url        string
	cancelHTTP context.CancelFunc
	httpDone   chan struct{}
	closeOnce  sync.Once
}

// New validates cfg and returns an Agent, or an error naming the first
// problem with cfg. It touches neither the network nor the work dir.
func New(cfg Config) (*Agent, error) {
	if !idPattern.MatchString(cfg.ID) {
		return nil, fmt.Errorf("invalid agent ID %q: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", cfg.ID)
	}
	if len(cfg.Servers) == 0 {
		return nil, errors.New("no servers given: give at least one server URL, such as http://127.0.0.1:7070")
	}
	if cfg.WorkDir == "" {
		return nil, errors.New("no work dir given")
	}
	a := &Agent{cfg: cfg}
	seen := make(map[string]string)
	for _, s := range cfg.Servers {
		srv, err := parseServer(s)
		if err != nil {
			return nil, err
		}
		if prev, ok := seen[srv.key]; ok {
			return nil, fmt.Errorf("server %q is listed twice (also as %q)", s, prev)
		}
		seen[srv.key] = s
		a.servers = append(a.servers, srv)
	}
	if cfg.Listen == "" {
		a.cfg.Listen = DefaultListen
	}
	if _, _, err := net.SplitHostPort(a.cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen address %q: want host:port, e.g. 127.0.0.1:0", a.cfg.Listen)
	}
	if cfg.AdvertiseURL != "" {
		u, err := url.Parse(cfg.AdvertiseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return nil, fmt.Errorf("advertise URL %q: want http(s)://host:port", cfg.AdvertiseURL)
		}
		a.cfg.AdvertiseURL = strings.TrimRight(cfg.AdvertiseURL, "/")
	}
	if cfg.Capacity.CPU < 0 || cfg.Capacity.MemoryMB < 0 {
		return nil, fmt.Errorf("capacity %v CPU, %d MiB: must not be negative", cfg.Capacity.CPU, cfg.Capacity.MemoryMB)
	}
	if cfg.Capacity.CPU == 0 {
		a.cfg.Capacity.CPU = float64(runtime.NumCPU())
	}
	if cfg.Capacity.MemoryMB == 0 {
		mb, err := totalMemoryMB()
		if err != nil {
			return nil, fmt.Errorf("cannot tell the machine's memory (%v): give the capacity's memory explicitly", err)
		}
		a.cfg.Capacity.MemoryMB = mb
	}
	for k := range cfg.Labels {
		if k == "" || len(k) > tandem.MaxLabelLen || len(cfg.Labels[k]) > tandem.MaxLabelLen {
			return nil, fmt.Errorf("label %q is invalid: keys must be 1 to %d bytes and values at most %d", k, tandem.MaxLabelLen, tandem.MaxLabelLen)
		}
	}
	if len(cfg.Labels) > tandem.MaxLabels {
		return nil, fmt.Errorf("%d labels, more than the limit of %d", len(cfg.Labels), tandem.MaxLabels)
	}
	switch {
	case cfg.PollWait < 0:
		return nil, fmt.Errorf("poll wait %v must not be negative", cfg.PollWait)
	case cfg.PollWait == 0:
		a.cfg.PollWait = DefaultPollWait
	}
	switch {
	case cfg.IdlePollWait < 0:
		return nil, fmt.Errorf("idle poll wait %v must not be negative", cfg.IdlePollWait)
	case cfg.IdlePollWait == 0:
		a.cfg.IdlePollWait = DefaultIdlePollWait
	}
	a.cfg.IdlePollWait = max(a.cfg.IdlePollWait, a.cfg.PollWait)
	switch {
	case cfg.KillGrace < 0:
		return nil, fmt.Errorf("kill grace %v must not be negative", cfg.KillGrace)
	case cfg.KillGrace == 0:
		a.cfg.KillGrace = DefaultKillGrace
	}
	if a.cfg.Backoff.Base == 0 {
		a.cfg.Backoff.Base = DefaultBackoffBase
	}
	if a.cfg.Backoff.Max == 0 {
		a.cfg.Backoff.Max = max(DefaultBackoffMax, a.cfg.Backoff.Base)
	}
	if a.cfg.Backoff.Base < 0 || a.cfg.Backoff.Max < a.cfg.Backoff.Base {
		return nil, fmt.Errorf("backoff base %v and max %v: want 0 < base <= max", a.cfg.Backoff.Base, a.cfg.Backoff.Max)
	}
	a.cfg.Labels = make(map[string]string, len(cfg.Labels))
	for k, v := range cfg.Labels {
		a.cfg.Labels[k] = v
	}
	a.cfg.AllowUsers = slices.Clone(cfg.AllowUsers)
	users, err := newUsers(cfg.RunAs, cfg.AllowUsers, cfg.AllowRoot)
	if err != nil {
		return nil, err
	}
	a.users = users
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	a.log = log.With(logAgent, cfg.ID)
	a.boot = bootID()

	// No overall timeout: each sync is bounded by its own context (the poll
	// wait plus answerSlack). No proxy: one would hold, cut or buffer long
	// polls.
	a.hc = transport.NewHTTPClient(transport.HTTPOptions{NoProxy: true, DialTimeout: dialTimeout, TLS: cfg.ClientTLS})
	tr, err := transport.New(transport.Config{
		Servers:    cfg.Servers,
		HTTPClient: a.hc,
		Backoff:    transport.Backoff{Base: a.cfg.Backoff.Base, Max: a.cfg.Backoff.Max, Attempts: 1}, // unused by Direct; the sessions retry
		UserAgent:  "tandem-agent/" + tandem.Version,
	})
	if err != nil {
		return nil, err
	}
	a.tr = tr
	return a, nil
}

// parseServer validates and normalizes one server base URL.
func parseServer(s string) (server, error) {
	e, err := endpoint.Parse(s)
	return server{base: e.Base, key: e.Key}, err
}

// Start opens the work dir (taking its lock, loading the epochs, the ledger
// and the pending reports), starts the HTTP server and a sync session with
// every configured server, and returns once the HTTP server listens. ctx
// bounds the start-up only; the agent then runs until Close. Start may be
// called once.
func (a *Agent) Start(ctx context.Context) error {
	a.mu.Lock()
	if a.started || a.closed {
		a.mu.Unlock()
		return errors.New("agent already started or closed")
	}
	a.started = true
	a.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}

	st, epochs, ledger, reports, err := openState(a.cfg.WorkDir, a.log)
	if err != nil {
		return err
	}
	// Said now rather than by every attempt failing to start.
	if u := a.users.runAs; a.users.credential(u) != nil {
		if err := checkSearchable(filepath.Join(a.cfg.WorkDir, attemptsDir), u); err != nil {
			st.close()
			return fmt.Errorf("attempts run as %s but could not reach their directories under the work dir: %w; "+
				"choose a work dir whose parent directories that user can search", u, err)
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", a.cfg.Listen)
	if err != nil {
		st.close()
		return fmt.Errorf("listen on %s: %w", a.cfg.Listen, err)
	}
	advertise := a.cfg.AdvertiseURL
	if advertise == "" {
		advertise = defaultURL(ln.Addr())
		if a.cfg.ServerTLS != nil {
			advertise = "https" + strings.TrimPrefix(advertise, "http")
		}
	}
	if a.cfg.ServerTLS != nil {
		ln = tls.NewListener(ln, a.cfg.ServerTLS)
	}

	a.launchMu.Lock()
	a.ledger = ledger
	a.launchMu.Unlock()
	a.mu.Lock()
	a.st, a.epochs, a.done = st, epochs, reports
	a.launching = make(map[string]bool)
	a.running = make(map[string]*attempt)
	a.acked = make(map[string]bool)
	a.sessions = make(map[string]*session)
	a.seqs = make(map[string]uint64)
	a.url = advertise
	a.info = tandem.AgentInfo{
		ID: a.cfg.ID, URL: advertise, Capacity: a.cfg.Capacity, Labels: a.cfg.Labels,
		Version: tandem.Version, PID: os.Getpid(), StartedAt: time.Now().UTC(),
	}
	a.mu.Unlock()

	for id, r := range reports {
		if r.State == tandem.AttemptLost {
			a.log.Warn("attempt lost: it was running when the agent stopped", logAttempt, id, logJob, r.JobID)
		}
	}
	a.log.Info("agent started", "url", advertise, "work_dir", a.cfg.WorkDir, "epochs", epochs,
		"launched_before", len(ledger), "pending_reports", len(reports),
		"cpu", a.cfg.Capacity.CPU, "memory_mb", a.cfg.Capacity.MemoryMB, "servers", strings.Join(a.serverBases(), ","),
		"run_as", a.users.runAs.name, "allow_users", strings.Join(slices.Sorted(maps.Keys(a.users.allowed)), ","), "allow_root", a.users.root)

	httpCtx, cancelHTTP := context.WithCancel(context.Background())
	a.cancelHTTP = cancelHTTP
	a.httpSrv = &http.Server{
		Handler:           a.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return httpCtx },
		// Refused TLS handshakes land here: only servers call an agent,
		// so one is worth a warning.
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.httpDone = make(chan struct{})
	go func() {
		defer close(a.httpDone)
		if err := a.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("agent HTTP server stopped", "err", err)
		}
	}()

	a.mu.Lock()
	a.sessionCtx, a.stopSessions = context.WithCancel(context.Background())
	for i, srv := range a.servers {
		a.startSessionLocked(srv, i)
	}
	a.mu.Unlock()
	return nil
}

// defaultURL is http://<addr>, with the host name in place of an address
// that means "every address".
func defaultURL(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return "http://" + addr.String()
	}
	host, err := os.Hostname()
	if err != nil {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, fmt.Sprint(tcp.Port))
}

func (a *Agent) serverBases() []string {
	out := make([]string, len(a.servers))
	for i, s := range a.servers {
		out[i] = s.base
	}
	return out
}

// Close ends every sync session and the HTTP server and releases the work
// dir. It does not kill running attempts: they keep running until they end,
// and die with the agent's process (Pdeathsig), which is how a restarted
// agent loses them. Close waits for the sessions' goroutines and the
// server's handlers; it is idempotent.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		a.closed = true // no session starts from now on
		started := a.started && a.stopSessions != nil
		a.mu.Unlock()
		if !started {
			return
		}
		a.stopSessions()
		a.sessionsGroup.Wait()
		a.cancelHTTP() // ends followed log streams
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := a.httpSrv.Shutdown(sctx); err != nil {
			_ = a.httpSrv.Close()
		}
		cancel()
		<-a.httpDone
		// Taking launchMu waits out an answer being applied right now.
		a.launchMu.Lock()
		a.diskMu.Lock()
		a.diskClosed = true
		a.st.close()
		a.diskMu.Unlock()
		a.launchMu.Unlock()
		a.hc.CloseIdleConnections()
		a.log.Info("agent stopped")
	})
	return nil
}

// URL returns the URL servers reach the agent's HTTP server at; empty before
// Start.
func (a *Agent) URL() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.url
}

// Status is the agent's own view of itself, as GET /v1/agent shows it.
type Status struct {
	Agent tandem.AgentInfo `json:"agent"`
	// Running lists the attempts whose process runs now.
	Running []string `json:"running"`
	// Unacknowledged lists finished attempts not yet acknowledged.
	Unacknowledged []string `json:"unacknowledged"`
	// Epochs is the highest epoch seen for each shard.
	Epochs map[int]int64 `json:"epochs"`
	// Sessions are the agent's sync sessions: the configured servers' in
	// the order configured, then the discovered servers' by URL.
	Sessions []SessionStatus `json:"sessions"`
}

// SessionStatus is one sync session, with one server.
type SessionStatus struct {
	// URL is the server's base URL.
	URL string `json:"url"`
	// ServerID is the server's ID, as its last answer gave it; empty before
	// any answer.
	ServerID string `json:"server_id,omitempty"`
	// Configured is whether the server was configured (Config.Servers)
	// rather than learned from another server's answer.
	Configured bool `json:"configured"`
	// Terms are the shards the server owned at its last answer, with their
	// epochs.
	Terms []tandem.ShardTerm `json:"terms"`
	// Failures counts the session's failed syncs since its last answer.
	Failures int `json:"failures"`
	// LastAnswer is when the server last answered; nil before any answer.
	LastAnswer *time.Time `json:"last_answer,omitempty"`
}

// Status returns the agent's view of itself.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{
		Agent:          a.info,
		Running:        make([]string, 0, len(a.running)),
		Unacknowledged: make([]string, 0, len(a.done)),
		Epochs:         maps.Clone(a.epochs),
		Sessions:       make([]SessionStatus, 0, len(a.sessions)),
	}
	if s.Epochs == nil {
		s.Epochs = map[int]int64{}
	}
	for id := range a.running {
		s.Running = append(s.Running, id)
	}
	for id := range a.done {
		s.Unacknowledged = append(s.Unacknowledged, id)
	}
	slices.Sort(s.Running)
	slices.Sort(s.Unacknowledged)
	ss := slices.Collect(maps.Values(a.sessions))
	slices.SortFunc(ss, compareSessions)
	for _, x := range ss {
		s.Sessions = append(s.Sessions, x.statusLocked())
	}
	return s
}
