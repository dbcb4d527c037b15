package transport

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// recorder logs, in order, every request any test server receives and every
// sleep the transport takes, so tests can check the interleaving.
type recorder struct {
	mu     sync.Mutex
	events []string
	reqs   []recorded
}

type recorded struct {
	server string // the test server's name
	method string
	path   string // with the query
	header http.Header
	body   string
}

func (r *recorder) log(ev string) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

func (r *recorder) request(name string, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	req.Body = io.NopCloser(strings.NewReader(string(body)))
	r.mu.Lock()
	r.events = append(r.events, name)
	r.reqs = append(r.reqs, recorded{name, req.Method, req.URL.RequestURI(), req.Header.Clone(), string(body)})
	r.mu.Unlock()
}

func (r *recorder) snapshot() ([]string, []recorded) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...), append([]recorded(nil), r.reqs...)
}

// hits counts the requests the named server received.
func (r *recorder) hits(name string) int {
	_, reqs := r.snapshot()
	n := 0
	for _, q := range reqs {
		if q.server == name {
			n++
		}
	}
	return n
}

// last returns the last request the named server received.
func (r *recorder) last(t *testing.T, name string) recorded {
	t.Helper()
	_, reqs := r.snapshot()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].server == name {
			return reqs[i]
		}
	}
	t.Fatalf("server %s got no request", name)
	return recorded{}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *tandem.Error) {
	writeJSON(w, tandem.HTTPStatus(e.Code), tandem.ErrorBody{Error: e})
}

// reply is what the fake servers answer with: the request's method and path
// as the server saw them.
type reply struct {
	Server string `json:"server"`
	Method string `json:"method"`
	Path   string `json:"path"`
}

// answer answers every request with a reply naming name.
func answer(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, reply{name, r.Method, r.URL.RequestURI()})
	})
}

// unavailable answers every request like a server with no known active.
func unavailable() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, tandem.Errorf(tandem.ENOACTIVE, "no active server is known"))
	})
}

// redirectTo answers every request like a standby whose active is target.
func redirectTo(target func() string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target()+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	})
}

// serve starts a test server named name whose requests are recorded before h
// answers them.
func serve(t *testing.T, rec *recorder, name string, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.request(name, r)
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// serveHung starts a test server named name that answers nothing until the
// request is cancelled or the test ends.
func serveHung(t *testing.T, rec *recorder, name string) *httptest.Server {
	t.Helper()
	release := make(chan struct{})
	srv := serve(t, rec, name, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	// Registered after serve's cleanup, so it runs first: Close waits for
	// the handlers.
	t.Cleanup(func() { close(release) })
	return srv
}

// deadURL returns the URL of a port nothing listens on: connecting to it is
// refused.
func deadURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

// newTestTransport returns a transport for servers whose sleeps are recorded
// in rec instead of slept and whose jitter always picks the full delay. edit,
// if not nil, adjusts the config first.
func newTestTransport(t *testing.T, rec *recorder, edit func(*Config), servers ...string) *Transport {
	t.Helper()
	cfg := Config{
		Servers: servers,
		// Long: with sleeps not taken, a test server slowed past the
		// default attempt timeout (a loaded -race run) would use up every
		// attempt at once. Tests of hung servers set their own.
		AttemptTimeout: 10 * time.Second,
		Sleep: func(ctx context.Context, d time.Duration) error {
			rec.log("sleep " + d.String())
			return ctx.Err()
		},
		RandN: func(n int64) int64 { return n - 1 },
	}
	if edit != nil {
		edit(&cfg)
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tr
}

// get is a call that any server may answer.
func get(path string) *Call {
	return &Call{Op: "get " + path, Method: http.MethodGet, Path: path}
}

// submit is a call that needs the active, with a body and a header.
func submit() *Call {
	return &Call{
		Op:     "submit",
		Method: http.MethodPost,
		Path:   "/v1/jobs",
		Body:   []byte(`{"name":"t"}`),
		Header: http.Header{"Idempotency-Key": {"k-1"}},
		Active: true,
	}
}
