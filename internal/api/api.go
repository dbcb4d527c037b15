// Package api is the HTTP surface of a tandem server (DESIGN.md section 8):
// HA endpoints that every server answers for itself, and job endpoints.
//
// With one shard (active/standby) only the active serves jobs; a standby
// redirects them to the active. With several shards (active-active) every
// server reads jobs from its own hot view, any server that owns a shard
// accepts submissions, and a write to a job goes to the owner of its shard.
// Every read is linearizable, whichever server answers: the server first
// waits for its view to reach etcd's current revision (and at least the
// X-Tandem-Min-Revision a client brings). Every answer carries the revision
// of the view it reflects (X-Tandem-Revision).
//
// With WithSecurity, every route needs the capability Capabilities gives it
// and a bearer token whose policy allows it (acl.Guard, auth.go), checked on
// the server the request reaches, before any redirect; mutating requests
// and denials go to the audit log.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/endpoint"
	"github.com/tandemhq/tandem/internal/store"
	"github.com/tandemhq/tandem/internal/transport"
	"github.com/tandemhq/tandem/internal/ui"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

// Default and largest page sizes of GET /v1/jobs.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// MaxRevisionWait bounds how long a read waits for the server's view to
// catch up with etcd (and with the revision the client asks for); past it
// the server answers 503 and the client tries another.
const MaxRevisionWait = 3 * time.Second

// Service is what the API needs of a server; *server.Server implements it.
type Service interface {
	ID() string
	Shards() int
	State() tandem.HAState
	Status() tandem.ServerStatus
	// ActiveAnswering reports whether this server's probes find server id
	// answering.
	ActiveAnswering(id string) bool
	// Changed returns a channel closed at the next change of the
	// server's view (owners, jobs, anything).
	Changed() <-chan struct{}
	// TermsChanged returns a channel closed the next time this server
	// begins or ends a term (its State can change).
	TermsChanged() <-chan struct{}
	// HandoffTarget returns, with one shard and no active, the server a
	// graceful failover under way hands the shard to, and whether there
	// is one.
	HandoffTarget() (tandem.ServerRef, bool)
	Healthy(ctx context.Context) error
	RetryAfter() time.Duration
	Registry() *prometheus.Registry
	History() []tandem.FailoverEvent
	Servers() []tandem.ServerInfo
	ShardInfos() []tandem.ShardInfo
	// OwnerOf returns the owner of job id's shard; AnyOwner some server
	// that owns a shard, preferring one that answers.
	OwnerOf(id string) (tandem.ServerRef, bool)
	AnyOwner() (tandem.ServerRef, bool)
	Transition(ctx context.Context, req tandem.TransitionRequest) (tandem.ServerStatus, error)
	HandOff(ctx context.Context, req tandem.HandoffRequest) (tandem.ServerStatus, error)
	Drain(ctx context.Context, req tandem.DrainRequest) (tandem.ServerStatus, error)
	Submit(ctx context.Context, spec tandem.JobSpec, idemKey string) (*tandem.Job, bool, error)
	Kill(ctx context.Context, id string) (*tandem.Job, error)
	// Job returns a job (with why it waits, if pending) and its record's
	// revision; Jobs a page of them.
	Job(id string) (*tandem.Job, int64, error)
	Jobs(after string, limit int, state tandem.JobState) ([]*tandem.Job, string)
	Agents() []tandem.AgentStatus
	Agent(id string) (tandem.AgentInfo, bool)
	Sync(ctx context.Context, req *tandem.SyncRequest) (*tandem.SyncResponse, error)
	// Watch serves GET /v1/ha/watch: it calls beat with a heartbeat
	// byte now and then until ctx ends (the caller went away) or the server
	// stops, when its last beat is the goodbye byte, and returns. A beat
	// that fails ends it.
	Watch(ctx context.Context, beat func([]byte) error) error
	// Revision is the revision the view has reached; WaitRevision blocks
	// until it reaches rev; Fresh until it holds every write etcd had
	// committed when it was called.
	Revision() int64
	WaitRevision(ctx context.Context, rev int64) error
	Fresh(ctx context.Context) error
}

// API serves one server's HTTP endpoints.
type API struct {
	srv       Service
	id        string
	log       *slog.Logger
	mux       *http.ServeMux
	requests  *prometheus.CounterVec
	sec       Security
	tls       TLS
	guard     *acl.Guard   // authenticates, authorizes and audits every route
	logClient *http.Client // fetches attempt logs from agents (logs.go)
}

// Option configures an API.
type Option func(*API)

// New returns the HTTP handler of srv. Without options it authenticates
// nobody and keeps no audit log (the token routes then answer that ACLs are
// off); WithSecurity turns tokens and the audit log on.
func New(srv Service, log *slog.Logger, opts ...Option) *API {
	a := &API{srv: srv, id: srv.ID(), log: log.With("server", srv.ID()), mux: http.NewServeMux()}
	for _, o := range opts {
		o(a)
	}
	if a.sec.Now == nil {
		a.sec.Now = time.Now
	}
	if a.logClient == nil {
		a.logClient = newLogClient(nil)
	}
	a.guard = a.newGuard()
	a.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tandem_http_requests_total", Help: "HTTP requests served, by route and status code.",
	}, []string{"route", "code"})
	srv.Registry().MustRegister(a.requests)

	// Never redirected: every server answers these for itself.
	a.route("/isActive", methods{http.MethodGet: a.isActive})
	a.route("/healthz", methods{http.MethodGet: a.healthz})
	a.route("/about", methods{http.MethodGet: a.state})
	a.route("/v1/ha/state", methods{http.MethodGet: a.state})
	a.route("/v1/ha/history", methods{http.MethodGet: a.history})
	a.route("/v1/ha/transition", methods{http.MethodPost: a.transition})
	a.route("/v1/ha/failover", methods{http.MethodPost: a.failover})
	a.route("/v1/ha/drain", methods{http.MethodPost: a.drain})
	a.route("/v1/ha/watch", methods{http.MethodGet: a.watch})
	a.route("/v1/cluster/servers", methods{http.MethodGet: a.servers})
	a.route("/v1/cluster/shards", methods{http.MethodGet: a.shards})
	a.route("/v1/agent/sync", methods{http.MethodPost: a.sync})
	metrics := promhttp.HandlerFor(srv.Registry(), promhttp.HandlerOpts{})
	a.route("/metrics", methods{http.MethodGet: metrics.ServeHTTP})
	// Jobs: on the active with one shard; on any server, or the shard's
	// owner, with several.
	a.route("/v1/jobs", methods{http.MethodGet: a.reader(a.listJobs), http.MethodPost: a.submitter(a.submit)})
	a.route("/v1/jobs/{id}", methods{http.MethodGet: a.reader(a.getJob)})
	a.route("/v1/jobs/{id}/kill", methods{http.MethodPost: a.jobWriter(a.killJob)})
	a.route("/v1/jobs/{id}/logs", methods{http.MethodGet: a.reader(a.jobLogs)})
	a.route("/v1/cluster/agents", methods{http.MethodGet: a.reader(a.agents)})
	// Tokens: written by the owner of shard 0 (the active, with one shard),
	// under its fence; read from etcd by any server.
	a.route("/v1/acl/bootstrap", methods{http.MethodPost: a.aclWriter(a.bootstrap)})
	a.route("/v1/acl/tokens", methods{http.MethodGet: a.aclReader(a.listTokens), http.MethodPost: a.aclWriter(a.createToken)})
	a.route("/v1/acl/tokens/{accessor}", methods{http.MethodDelete: a.aclWriter(a.deleteToken)})
	a.route("/v1/acl/token/self", methods{http.MethodGet: a.aclReader(a.tokenSelf)})
	a.scheduleRoutes()
	a.workflowRoutes()
	a.mountUI()
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// A browser asking for / gets the web UI; API clients the JSON 404.
		if r.URL.Path == "/" && ui.Mountable(r) {
			http.Redirect(w, r, "/ui/", http.StatusFound)
			return
		}
		a.writeError(w, r, tandem.Errorf(tandem.ENOTFOUND, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return a
}

// mountUI serves the web UI (internal/ui) under /ui/, on every server, from
// this server's own view. Its pages check the session's token themselves
// (with the same Authenticator as the guard); every write it makes is a
// request to this API, so the guard checks and audits it (docs/UI.md).
func (a *API) mountUI() {
	cfg := ui.Config{Service: a.srv, API: a, Enforce: a.sec.Enforce, AgentClient: a.logClient,
		ServerClient: ui.ServerClient(a.tls.AgentClient, a.tls.Cluster), Log: a.log, Now: a.sec.Now}
	if a.sec.ACL != nil {
		cfg.Tokens = a.sec.ACL
	}
	h, err := ui.New(cfg)
	if err != nil {
		panic(fmt.Sprintf("api: web UI: %v", err)) // embedded templates that do not parse: a bug, caught by tests
	}
	a.mux.Handle("/ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := acl.NewStatusRecorder(w)
		defer func() { a.requests.WithLabelValues("/ui/", strconv.Itoa(rec.Status())).Inc() }()
		h.ServeHTTP(rec, r)
	}))
}

// ServeHTTP implements http.Handler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Tandem-Server", a.id)
	w.Header().Set("X-Tandem-State", string(a.srv.State()))
	a.mux.ServeHTTP(w, r)
}

type methods map[string]http.HandlerFunc

// route registers a path whose methods are dispatched here, so a wrong
// method gets a JSON 405 with Allow, like every other error.
func (a *API) route(pattern string, m methods) {
	allowed := make([]string, 0, len(m))
	for k := range m {
		allowed = append(allowed, k)
	}
	sort.Strings(allowed)
	allow := strings.Join(allowed, ", ")
	// Every method is guarded by its capability (auth.go), once, here. The
	// guard runs before any redirect, so a standby refuses a request the
	// caller may not make itself, and the server a redirect leads to checks
	// the token again.
	guarded := make(map[string]http.Handler, len(m))
	for method, h := range m {
		if _, ok := Capabilities[pattern][method]; !ok {
			panic(fmt.Sprintf("api: route %s %s has no entry in Capabilities", method, pattern))
		}
		guarded[method] = a.guard.Handler(pattern, a.need(pattern, method), h)
	}
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		rec := acl.NewStatusRecorder(w)
		defer func() { a.requests.WithLabelValues(pattern, strconv.Itoa(rec.Status())).Inc() }()
		h, ok := guarded[r.Method]
		if !ok && r.Method == http.MethodHead {
			h, ok = guarded[http.MethodGet]
		}
		if !ok {
			rec.Header().Set("Allow", allow)
			a.writeError(rec, r, tandem.Errorf(tandem.EMETHOD, "%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow))
			return
		}
		h.ServeHTTP(rec, r)
	})
}

// sharded reports whether the cluster runs several shards (active-active).
// The server learns it when it starts, after the API is built, so routes ask
// on every request.
func (a *API) sharded() bool { return a.srv.Shards() > 1 }

// HoldForOwner is how long a server holds a request it cannot serve while it
// knows no owner to send it to that answers (none is known, or the known one
// is silent or its process is gone), waiting for one that does. An election
// after a crash takes tens of milliseconds: holding serves the client the
// moment a new owner is in place, where a 503 would send it into a backoff
// that outlasts the election several times over. It stays below the
// client's attempt timeout (transport.DefaultAttemptTimeout), which would
// otherwise abandon the held request as hung.
const HoldForOwner = 400 * time.Millisecond

// holdTick is how often a held request looks again between changes of the
// view: a probe that finds an owner answering changes no key.
const holdTick = 5 * time.Millisecond

// awaitOwner returns find's answer once it names a server to serve r (this
// one, or an owner that answers), or its last answer when HoldForOwner has
// passed, the client has gone, or this server is stopping.
func (a *API) awaitOwner(r *http.Request, find func() (tandem.ServerRef, bool)) (tandem.ServerRef, bool) {
	to, ok := find()
	if ok || a.srv.State() == tandem.StateStopping {
		return to, ok
	}
	ctx, cancel := context.WithTimeout(r.Context(), HoldForOwner)
	defer cancel()
	tick := time.NewTicker(holdTick)
	defer tick.Stop()
	for {
		// Taken before looking, so a change in between is not missed.
		changed, terms := a.srv.Changed(), a.srv.TermsChanged()
		if to, ok = find(); ok {
			return to, ok
		}
		select {
		case <-ctx.Done():
			return to, ok
		case <-changed:
		case <-terms: // this server began a term: it may be the owner now
		case <-tick.C:
		}
	}
}

// answering returns to, and whether it can serve r: it is this server, or
// this server's probes find it answering and the client did not find its
// port refusing connections (transport.RefusedHeader).
func (a *API) answering(r *http.Request, to tandem.ServerRef, known bool) (tandem.ServerRef, bool) {
	return to, known && (to.ID == a.id || a.srv.ActiveAnswering(to.ID) && !refusedBy(r, to.URL))
}

// maxRefused bounds the servers a request's RefusedHeader may list.
const maxRefused = 16

// refusedBy reports whether r's client found the server at u refusing
// connections earlier in its call (transport.RefusedHeader).
func refusedBy(r *http.Request, u string) bool {
	h := r.Header.Get(transport.RefusedHeader)
	if h == "" || u == "" {
		return false
	}
	e, err := endpoint.Parse(u)
	if err != nil {
		return false
	}
	for i, k := range strings.Split(h, ",") {
		if i == maxRefused {
			break
		}
		if strings.TrimSpace(k) == e.Key {
			return true
		}
	}
	return false
}

// findActive names the server to serve r, a request for the active: this
// one while active, else the active it knows.
func (a *API) findActive(r *http.Request) (tandem.ServerRef, bool) {
	if a.srv.State() == tandem.StateActive {
		return tandem.ServerRef{ID: a.id}, true
	}
	st := a.srv.Status()
	if st.ActiveURL == "" {
		// A graceful failover under way: its target will be the active
		// unless it dies first, and holds what it is sent until then, so
		// the client waits there, not here for this view to see it win.
		// The target itself holds on.
		if to, ok := a.srv.HandoffTarget(); ok && to.ID != a.id {
			return a.answering(r, to, true)
		}
	}
	return a.answering(r, tandem.ServerRef{ID: st.ActiveID, URL: st.ActiveURL}, st.ActiveURL != "" && st.ActiveID != st.ID)
}

// activeOnly serves h on the active. A standby answers 307 to the active,
// same path and query; with no active known that answers, it holds the
// request up to HoldForOwner for one (a failover under way), then answers
// 503 with Retry-After.
func (a *API) activeOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.srv.State() == tandem.StateActive {
			h(w, r)
			return
		}
		to, ok := a.awaitOwner(r, func() (tandem.ServerRef, bool) { return a.findActive(r) })
		if ok && to.ID == a.id {
			h(w, r) // this server became the active meanwhile
			return
		}
		st := a.srv.Status()
		if ok && st.ActiveURL == "" {
			a.redirect(w, r, to, fmt.Sprintf("server %s is %s; the active role is being handed to %s at %s", st.ID, st.State, to.ID, to.URL))
			return
		}
		if st.ActiveURL == "" || st.ActiveID == st.ID {
			a.writeError(w, r, tandem.Errorf(tandem.ENOACTIVE,
				"server %s is %s and no active server is known; an election is under way, retry shortly", st.ID, st.State))
			return
		}
		a.redirect(w, r, tandem.ServerRef{ID: st.ActiveID, URL: st.ActiveURL}, fmt.Sprintf("server %s is %s; the active is %s at %s", st.ID, st.State, st.ActiveID, st.ActiveURL))
	}
}

// redirect answers 307 to the same path and query on to, unless this
// server's probes find to silent: sending the client to a server that hangs
// would make it hang too, so it gets 503 and tries the other servers at once.
func (a *API) redirect(w http.ResponseWriter, r *http.Request, to tandem.ServerRef, why string) {
	if !a.srv.ActiveAnswering(to.ID) || refusedBy(r, to.URL) {
		a.writeError(w, r, tandem.Errorf(tandem.ENOACTIVE,
			"%s, which does not answer; a failover may be under way, retry shortly", why))
		return
	}
	target := strings.TrimRight(to.URL, "/") + r.URL.RequestURI()
	w.Header().Set("Location", target)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusTemporaryRedirect)
	_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: tandem.Errorf(tandem.ENOTACTIVE, "%s", why)})
}

// reader serves a read: on the active with one shard, on any server with
// several. Either way the read is linearizable: the server first waits for
// its view to hold every write etcd had committed when the request came
// (Service.Fresh), so it never answers from a view behind a write already
// acknowledged elsewhere, and at least the revision the client asks for.
func (a *API) reader(h http.HandlerFunc) http.HandlerFunc {
	read := func(w http.ResponseWriter, r *http.Request) {
		var rev int64
		if v := r.Header.Get(transport.MinRevisionHeader); v != "" {
			var err error
			if rev, err = strconv.ParseInt(v, 10, 64); err != nil || rev < 0 {
				a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "%s must be a revision (a whole number), not %q", transport.MinRevisionHeader, v))
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), MaxRevisionWait)
		err := a.srv.WaitRevision(ctx, rev)
		if err == nil {
			err = a.srv.Fresh(ctx)
		}
		cancel()
		if err != nil {
			a.writeError(w, r, tandem.Errorf(tandem.EUNAVAILABLE,
				"server %s cannot bring its view up to date (at revision %d): %v; retry, or ask another server", a.id, a.srv.Revision(), err))
			return
		}
		h(w, r)
	}
	one := a.activeOnly(read)
	return func(w http.ResponseWriter, r *http.Request) {
		if a.sharded() {
			read(w, r)
			return
		}
		one(w, r)
	}
}

// submitter serves a submission: on the active with one shard; with several,
// on any server that owns a shard (the job gets an ID in one of them), and a
// server that owns none sends the client to one that does.
func (a *API) submitter(h http.HandlerFunc) http.HandlerFunc {
	one := a.activeOnly(h)
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.sharded() {
			one(w, r)
			return
		}
		if a.srv.State() == tandem.StateActive {
			h(w, r)
			return
		}
		to, ok := a.awaitOwner(r, func() (tandem.ServerRef, bool) {
			if a.srv.State() == tandem.StateActive {
				return tandem.ServerRef{ID: a.id}, true
			}
			to, ok := a.srv.AnyOwner()
			return a.answering(r, to, ok)
		})
		switch {
		case ok && to.ID == a.id:
			h(w, r) // this server came to own a shard meanwhile
			return
		case to.ID != "" && to.ID != a.id:
			a.redirect(w, r, to, fmt.Sprintf("server %s owns no shard; %s does", a.id, to.ID))
			return
		}
		a.writeError(w, r, tandem.Errorf(tandem.ENOACTIVE, "server %s owns no shard and no owner is known; retry shortly", a.id))
	}
}

// jobWriter serves a write to one job (r's {id}): on the active with one
// shard; with several, on the owner of the job's shard, to which any other
// server sends the client.
func (a *API) jobWriter(h http.HandlerFunc) http.HandlerFunc { return a.ownerWriter("job", h) }

// ownerWriter serves a write to one thing of a shard (r's {id}: a job, a
// schedule, which noun names), as jobWriter does.
func (a *API) ownerWriter(noun string, h http.HandlerFunc) http.HandlerFunc {
	one := a.activeOnly(h)
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.sharded() {
			one(w, r)
			return
		}
		id := r.PathValue("id")
		to, ok := a.awaitOwner(r, func() (tandem.ServerRef, bool) {
			to, ok := a.srv.OwnerOf(id)
			return a.answering(r, to, ok)
		})
		if !ok {
			to, ok = a.srv.OwnerOf(id)
		}
		switch {
		case ok && to.ID == a.id:
			h(w, r)
		case ok:
			a.redirect(w, r, to, fmt.Sprintf("%s %s belongs to a shard owned by %s", noun, id, to.ID))
		default:
			a.writeError(w, r, tandem.Errorf(tandem.ENOACTIVE, "the shard of %s %s has no owner right now; retry shortly", noun, id))
		}
	}
}

// setRevision reports in the answer the revision it reflects: rev, or the
// view's if later.
func (a *API) setRevision(w http.ResponseWriter, rev int64) {
	w.Header().Set(transport.RevisionHeader, strconv.FormatInt(max(rev, a.srv.Revision()), 10))
}

func (a *API) isActive(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	state := a.srv.State()
	if state == tandem.StateActive {
		fmt.Fprintln(w, "active")
		return
	}
	// Hadoop's semantics for load-balancer probes: 405 unless active.
	w.Header().Set("Allow", http.MethodGet)
	w.WriteHeader(http.StatusMethodNotAllowed)
	fmt.Fprintln(w, state)
}

type health struct {
	Status string         `json:"status"`
	Error  string         `json:"error,omitempty"`
	State  tandem.HAState `json:"state"`
	ID     string         `json:"id"`
}

func (a *API) healthz(w http.ResponseWriter, r *http.Request) {
	st := a.srv.Status()
	if err := a.srv.Healthy(r.Context()); err != nil {
		a.writeJSON(w, http.StatusServiceUnavailable, health{Status: "unhealthy", Error: err.Error(), State: st.State, ID: st.ID})
		return
	}
	a.writeJSON(w, http.StatusOK, health{Status: "ok", State: st.State, ID: st.ID})
}

func (a *API) state(w http.ResponseWriter, r *http.Request) {
	a.writeJSON(w, http.StatusOK, a.srv.Status())
}

func (a *API) history(w http.ResponseWriter, r *http.Request) {
	a.writeJSON(w, http.StatusOK, struct {
		Events []tandem.FailoverEvent `json:"events"`
	}{Events: nonNil(a.srv.History())})
}

func (a *API) servers(w http.ResponseWriter, r *http.Request) {
	a.writeJSON(w, http.StatusOK, struct {
		Servers []tandem.ServerInfo `json:"servers"`
	}{Servers: nonNil(a.srv.Servers())})
}

func (a *API) shards(w http.ResponseWriter, r *http.Request) {
	a.writeJSON(w, http.StatusOK, struct {
		Shards []tandem.ShardInfo `json:"shards"`
	}{Shards: nonNil(a.srv.ShardInfos())})
}

func (a *API) drain(w http.ResponseWriter, r *http.Request) {
	var req tandem.DrainRequest
	if !a.decode(w, r, &req) {
		return
	}
	setTarget(r, "server "+a.id)
	st, err := a.srv.Drain(r.Context(), req)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.writeJSON(w, http.StatusOK, st)
}

func (a *API) transition(w http.ResponseWriter, r *http.Request) {
	var req tandem.TransitionRequest
	if !a.decode(w, r, &req) {
		return
	}
	setTarget(r, "server "+a.id)
	st, err := a.srv.Transition(r.Context(), req)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.writeJSON(w, http.StatusOK, st)
}

func (a *API) failover(w http.ResponseWriter, r *http.Request) {
	var req tandem.HandoffRequest
	if !a.decode(w, r, &req) {
		return
	}
	setTarget(r, "failover "+req.From+" -> "+req.To)
	st, err := a.srv.HandOff(r.Context(), req)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.writeJSON(w, http.StatusOK, st)
}

func (a *API) submit(w http.ResponseWriter, r *http.Request) {
	var spec tandem.JobSpec
	if !a.decode(w, r, &spec) {
		return
	}
	if err := a.mayRunAs(r, spec); err != nil {
		a.writeError(w, r, err)
		return
	}
	job, created, err := a.srv.Submit(r.Context(), spec, r.Header.Get("Idempotency-Key"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	setTarget(r, job.ID)
	if _, rev, err := a.srv.Job(job.ID); err == nil {
		a.setRevision(w, rev)
	}
	w.Header().Set("Location", "/v1/jobs/"+job.ID)
	if !created {
		w.Header().Set("Idempotent-Replayed", "true")
		a.writeJSON(w, http.StatusOK, job)
		return
	}
	a.writeJSON(w, http.StatusCreated, job)
}

func (a *API) listJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := DefaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "limit must be a whole number from 1 to %d, not %q", MaxListLimit, v))
			return
		}
		limit = n
	}
	// Filters (state, q, label, submitter, agent) narrow the page; the
	// cursor stays the ID of the last job returned.
	filter, err := store.JobFilterFromQuery(q)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.setRevision(w, 0)
	jobs, next := store.FilterJobs(a.srv.Jobs, q.Get("after"), limit, filter)
	a.writeJSON(w, http.StatusOK, tandem.JobList{Jobs: jobs, Next: next})
}

func (a *API) getJob(w http.ResponseWriter, r *http.Request) {
	job, rev, err := a.srv.Job(r.PathValue("id"))
	a.setRevision(w, rev)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.writeJSON(w, http.StatusOK, job)
}

func (a *API) killJob(w http.ResponseWriter, r *http.Request) {
	job, err := a.srv.Kill(r.Context(), r.PathValue("id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if _, rev, err := a.srv.Job(job.ID); err == nil {
		a.setRevision(w, rev)
	}
	a.writeJSON(w, http.StatusOK, job)
}

func (a *API) agents(w http.ResponseWriter, r *http.Request) {
	a.writeJSON(w, http.StatusOK, struct {
		Agents []tandem.AgentStatus `json:"agents"`
	}{Agents: a.srv.Agents()})
}

// watch holds its answer open, a heartbeat byte at a time, so that another
// server holding it learns of this process's death the instant the kernel
// closes the connection (internal/server/watch.go).
func (a *API) watch(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	started := false
	err := a.srv.Watch(r.Context(), func(b []byte) error {
		if !started {
			started = true
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Cache-Control", "no-store")
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil && !started {
		a.writeError(w, r, err)
	}
}

func (a *API) sync(w http.ResponseWriter, r *http.Request) {
	var req tandem.SyncRequest
	if !a.decode(w, r, &req) {
		return
	}
	if err := a.checkSyncAgent(r, req.Agent.ID); err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := a.srv.Sync(r.Context(), &req)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.writeJSON(w, http.StatusOK, resp)
}

// decode reads a JSON body strictly: at most MaxBodyBytes, no unknown
// fields, exactly one value. On failure it has written a 4xx and returns false.
func (a *API) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			a.writeError(w, r, tandem.Errorf(tandem.EMEDIATYPE, "Content-Type must be application/json, not %q", ct))
			return false
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			a.writeError(w, r, tandem.Errorf(tandem.ETOOLARGE, "request body is larger than %d bytes", MaxBodyBytes))
		} else {
			a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "reading request body: %v", err))
		}
		return false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "request body is empty; send a JSON object"))
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "malformed JSON body: %s", jsonErr(err)))
		return false
	}
	if dec.More() {
		a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "malformed JSON body: unexpected data after the JSON object"))
		return false
	}
	return true
}

// jsonErr words a decoding error for a person.
func jsonErr(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s, not %s", te.Field, te.Type, te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the JSON ends too early"
	default:
		return err.Error() // e.g. `json: unknown field "x"`
	}
}

func (a *API) writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	if err := enc.Encode(v); err != nil {
		a.log.Debug("write response", "err", err)
	}
}

// writeError writes err as {"error": {...}} with the status its code maps
// to. Internal errors are logged here and shown to the caller only as
// "internal error".
func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := tandem.ErrorCode(err)
	status := tandem.HTTPStatus(code)
	if code == tandem.EINTERNAL {
		a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(a.srv.RetryAfter().Seconds()))))
	}
	msg := tandem.ErrorMessage(err)
	if code == tandem.EINTERNAL {
		msg = "internal error (see the server log)"
	}
	a.writeJSON(w, status, tandem.ErrorBody{Error: &tandem.Error{Code: code, Message: msg}})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// ReadHeaderTimeout is the timeout servers should use for request headers.
const ReadHeaderTimeout = 10 * time.Second
