// Package api is the HTTP surface of a tandem server (DESIGN.md section 8):
// HA endpoints that every server answers for itself, and job endpoints that
// only the active serves, which a standby redirects to the active.
package api

import (
	"bytes"
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
	"github.com/tandemhq/tandem/internal/server"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

// Default and largest page sizes of GET /v1/jobs.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// API serves one server's HTTP endpoints.
type API struct {
	srv      *server.Server
	id       string
	log      *slog.Logger
	mux      *http.ServeMux
	requests *prometheus.CounterVec
}

// New returns the HTTP handler of srv.
func New(srv *server.Server, log *slog.Logger) *API {
	a := &API{srv: srv, id: srv.Config().ID, log: log.With("server", srv.Config().ID), mux: http.NewServeMux()}
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
	a.route("/v1/cluster/servers", methods{http.MethodGet: a.servers})
	metrics := promhttp.HandlerFor(srv.Registry(), promhttp.HandlerOpts{})
	a.route("/metrics", methods{http.MethodGet: metrics.ServeHTTP})
	// Served by the active only; a standby redirects them.
	a.route("/v1/jobs", methods{http.MethodGet: a.activeOnly(a.listJobs), http.MethodPost: a.activeOnly(a.submit)})
	a.route("/v1/jobs/{id}", methods{http.MethodGet: a.activeOnly(a.getJob)})
	a.route("/v1/jobs/{id}/kill", methods{http.MethodPost: a.activeOnly(a.killJob)})
	a.route("/v1/jobs/{id}/logs", methods{http.MethodGet: a.activeOnly(a.jobLogs)})
	a.route("/v1/cluster/agents", methods{http.MethodGet: a.activeOnly(a.agents)})
	a.route("/v1/agent/sync", methods{http.MethodPost: a.activeOnly(a.sync)})
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.writeError(w, r, tandem.Errorf(tandem.ENOTFOUND, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return a
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
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		defer func() { a.requests.WithLabelValues(pattern, strconv.Itoa(rec.code)).Inc() }()
		h, ok := m[r.Method]
		if !ok && r.Method == http.MethodHead {
			h, ok = m[http.MethodGet]
		}
		if !ok {
			rec.Header().Set("Allow", allow)
			a.writeError(rec, r, tandem.Errorf(tandem.EMETHOD, "%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow))
			return
		}
		h(rec, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the real writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// activeOnly serves h on the active. A standby answers 307 to the active,
// same path and query; with no active known, 503 with Retry-After.
func (a *API) activeOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, ok := a.srv.ActiveEpoch(); ok {
			h(w, r)
			return
		}
		st := a.srv.Status()
		if st.ActiveURL != "" && st.ActiveID != st.ID && !a.srv.ActiveAnswering(st.Epoch) {
			// Sending the client to an active that hangs would make it hang
			// too; "no active" makes it try the other servers at once.
			a.writeError(w, r, tandem.Errorf(tandem.ENOACTIVE,
				"server %s is %s and the active %s does not answer; a failover may be under way, retry shortly", st.ID, st.State, st.ActiveID))
			return
		}
		if st.ActiveURL != "" && st.ActiveID != st.ID {
			target := strings.TrimRight(st.ActiveURL, "/") + r.URL.RequestURI()
			w.Header().Set("Location", target)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTemporaryRedirect)
			_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: tandem.Errorf(tandem.ENOTACTIVE,
				"server %s is %s; the active is %s at %s", st.ID, st.State, st.ActiveID, st.ActiveURL)})
			return
		}
		a.writeError(w, r, tandem.Errorf(tandem.ENOACTIVE,
			"server %s is %s and no active server is known; an election is under way, retry shortly", st.ID, st.State))
	}
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

func (a *API) transition(w http.ResponseWriter, r *http.Request) {
	var req tandem.TransitionRequest
	if !a.decode(w, r, &req) {
		return
	}
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
	job, created, err := a.srv.Submit(r.Context(), spec, r.Header.Get("Idempotency-Key"))
	if err != nil {
		a.writeError(w, r, err)
		return
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
	state := tandem.JobState(q.Get("state"))
	if state != "" && !state.Valid() {
		a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "unknown job state %q; known states: %v", state, tandem.JobStates))
		return
	}
	jobs, next := a.srv.Store().Jobs(q.Get("after"), limit, state)
	for _, j := range jobs {
		a.srv.Explain(j)
	}
	a.writeJSON(w, http.StatusOK, tandem.JobList{Jobs: jobs, Next: next})
}

func (a *API) getJob(w http.ResponseWriter, r *http.Request) {
	job, err := a.srv.Store().Job(r.PathValue("id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.srv.Explain(job)
	a.writeJSON(w, http.StatusOK, job)
}

func (a *API) killJob(w http.ResponseWriter, r *http.Request) {
	job, err := a.srv.Kill(r.Context(), r.PathValue("id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.writeJSON(w, http.StatusOK, job)
}

func (a *API) agents(w http.ResponseWriter, r *http.Request) {
	a.writeJSON(w, http.StatusOK, struct {
		Agents []tandem.AgentStatus `json:"agents"`
	}{Agents: a.srv.Agents()})
}

func (a *API) sync(w http.ResponseWriter, r *http.Request) {
	var req tandem.SyncRequest
	if !a.decode(w, r, &req) {
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
