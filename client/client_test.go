package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// recorder logs, in order, every request any test server receives and every
// sleep the client takes, so tests can check the interleaving.
type recorder struct {
	mu     sync.Mutex
	events []string
	reqs   []recorded
}

type recorded struct {
	server string // the test server's name
	method string
	path   string
	key    string // Idempotency-Key
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
	r.reqs = append(r.reqs, recorded{name, req.Method, req.URL.RequestURI(), req.Header.Get(IdempotencyKeyHeader), string(body)})
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

// activeAPI is a minimal active server: it stores jobs, honours idempotency
// keys and answers the read-only cluster endpoints.
type activeAPI struct {
	mu   sync.Mutex
	jobs map[string]*tandem.Job
	keys map[string]string // idempotency key -> job ID
}

func (a *activeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.jobs == nil {
		a.jobs, a.keys = map[string]*tandem.Job{}, map[string]string{}
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/jobs":
		var spec tandem.JobSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			writeError(w, tandem.Errorf(tandem.EINVALID, "bad spec: %v", err))
			return
		}
		key := r.Header.Get(IdempotencyKeyHeader)
		if id, ok := a.keys[key]; ok && key != "" {
			writeJSON(w, http.StatusOK, a.jobs[id])
			return
		}
		job := &tandem.Job{ID: fmt.Sprintf("j%d", len(a.jobs)+1), JobSpec: spec, State: tandem.JobPending, IdempotencyKey: key}
		a.jobs[job.ID], a.keys[key] = job, job.ID
		writeJSON(w, http.StatusCreated, job)
	case r.Method == http.MethodGet && r.URL.Path == "/v1/jobs":
		list := tandem.JobList{Jobs: []*tandem.Job{}}
		for _, j := range a.jobs {
			list.Jobs = append(list.Jobs, j)
		}
		writeJSON(w, http.StatusOK, list)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/jobs/"):
		job, ok := a.jobs[strings.TrimPrefix(r.URL.Path, "/v1/jobs/")]
		if !ok {
			writeError(w, tandem.Errorf(tandem.ENOTFOUND, "job not found"))
			return
		}
		writeJSON(w, http.StatusOK, job)
	case r.URL.Path == "/v1/cluster/servers":
		writeJSON(w, http.StatusOK, map[string]any{"servers": []tandem.ServerInfo{{ID: "rm1", State: tandem.StateActive}}})
	case r.URL.Path == "/v1/ha/history":
		writeJSON(w, http.StatusOK, map[string]any{"events": []tandem.FailoverEvent{{Epoch: 7, ActiveID: "rm1"}}})
	default:
		writeError(w, tandem.Errorf(tandem.ENOTFOUND, "no route"))
	}
}

// count returns the number of jobs stored.
func (a *activeAPI) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.jobs)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *tandem.Error) {
	if tandem.HTTPStatus(e.Code) == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, tandem.HTTPStatus(e.Code), tandem.ErrorBody{Error: e})
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

// newTestClient returns a client whose sleeps are recorded instead of slept
// and whose jitter always picks the full delay. Its attempt timeout is long:
// with sleeps not taken, a test server slowed past the default (a loaded
// -race run) would use up every attempt at once; hung servers have their
// own tests (timeout_test.go).
func newTestClient(t *testing.T, rec *recorder, b Backoff, servers ...string) *Client {
	t.Helper()
	c, err := New(Config{Servers: servers, Backoff: b, AttemptTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c.sleep = func(ctx context.Context, d time.Duration) error {
		rec.log("sleep " + d.String())
		return ctx.Err()
	}
	c.randN = func(n int64) int64 { return n - 1 }
	return c
}

var testSpec = tandem.JobSpec{Name: "t", Command: []string{"sleep", "1"}}

func TestSubmitFailsOverToTheActive(t *testing.T) {
	tests := []struct {
		name   string
		before []string // what answers ahead of the active: "dead", "503" or "standby"
	}{
		{"active first", nil},
		{"dead first", []string{"dead"}},
		{"503 first", []string{"503"}},
		{"dead then 503", []string{"dead", "503"}},
		{"503 then dead then standby", []string{"503", "dead", "standby"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			active := serve(t, rec, "active", &activeAPI{})
			var urls []string
			for i, kind := range tt.before {
				switch kind {
				case "dead":
					urls = append(urls, deadURL(t))
				case "503":
					urls = append(urls, serve(t, rec, fmt.Sprint("503-", i), unavailable()).URL)
				case "standby":
					urls = append(urls, serve(t, rec, fmt.Sprint("standby-", i), redirectTo(func() string { return active.URL })).URL)
				}
			}
			urls = append(urls, active.URL)
			c := newTestClient(t, rec, DefaultBackoff(), urls...)

			job, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{})
			if err != nil {
				t.Fatalf("SubmitJob: got error %v, want none", err)
			}
			if job.ID != "j1" || job.Name != "t" {
				t.Errorf("got job %+v, want j1 named t", job)
			}
			if got := c.Current(); got != active.URL {
				t.Errorf("Current: got %s, want the active %s", got, active.URL)
			}
		})
	}
}

func TestStickinessIsNotMovedByReadsFromAnyServer(t *testing.T) {
	rec := &recorder{}
	var activeURL string
	dead := deadURL(t)
	standby := serve(t, rec, "standby", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/cluster/servers" {
			writeJSON(w, http.StatusOK, map[string]any{"servers": []tandem.ServerInfo{{ID: "rm2"}}})
			return
		}
		http.Redirect(w, r, activeURL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	active := serve(t, rec, "active", &activeAPI{})
	activeURL = active.URL
	c := newTestClient(t, rec, DefaultBackoff(), active.URL, dead, standby.URL)
	if _, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	servers, err := c.Servers(context.Background())
	if err != nil {
		t.Fatalf("Servers: %v", err)
	}
	if len(servers) != 1 || servers[0].ID != "rm1" {
		t.Errorf("got servers %+v, want rm1 from the sticky active", servers)
	}
	if got := c.Current(); got != active.URL {
		t.Errorf("Current: got %s, want %s", got, active.URL)
	}
}

func TestRedirectFollowedWithSameBodyAndKey(t *testing.T) {
	rec := &recorder{}
	active := serve(t, rec, "active", &activeAPI{})
	standby := serve(t, rec, "standby", redirectTo(func() string { return active.URL }))
	c := newTestClient(t, rec, DefaultBackoff(), standby.URL, active.URL)

	job, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{IdempotencyKey: "k-1"})
	if err != nil {
		t.Fatalf("SubmitJob: %v", err)
	}
	if job.IdempotencyKey != "k-1" {
		t.Errorf("got job key %q, want k-1", job.IdempotencyKey)
	}
	_, reqs := rec.snapshot()
	if len(reqs) != 2 {
		t.Fatalf("got %d requests, want 2 (standby, then active): %+v", len(reqs), reqs)
	}
	first, second := reqs[0], reqs[1]
	if first.server != "standby" || second.server != "active" {
		t.Errorf("got requests to %s then %s, want standby then active", first.server, second.server)
	}
	if second.method != http.MethodPost || second.path != "/v1/jobs" {
		t.Errorf("got redirected request %s %s, want POST /v1/jobs", second.method, second.path)
	}
	if second.body != first.body || second.body == "" {
		t.Errorf("got redirected body %q, want %q", second.body, first.body)
	}
	if second.key != "k-1" || first.key != "k-1" {
		t.Errorf("got keys %q and %q, want k-1 on both", first.key, second.key)
	}
	if got := c.Current(); got != active.URL {
		t.Errorf("Current: got %s, want the redirect target %s", got, active.URL)
	}
	if _, err := c.GetJob(context.Background(), job.ID); err != nil {
		t.Fatalf("GetJob: %v", err)
	}
	if got := rec.hits("standby"); got != 1 {
		t.Errorf("got %d requests to the standby, want 1 (the target became sticky)", got)
	}
}

func TestRedirectPreservesQuery(t *testing.T) {
	rec := &recorder{}
	active := serve(t, rec, "active", &activeAPI{})
	standby := serve(t, rec, "standby", redirectTo(func() string { return active.URL }))
	c := newTestClient(t, rec, DefaultBackoff(), standby.URL)
	if _, err := c.ListJobs(context.Background(), ListOptions{Limit: 5, After: "j 1", State: tandem.JobPending}); err != nil {
		t.Fatalf("ListJobs: %v", err)
	}
	_, reqs := rec.snapshot()
	want := "/v1/jobs?after=j+1&limit=5&state=pending"
	if got := reqs[len(reqs)-1]; got.server != "active" || got.path != want {
		t.Errorf("got last request %s %s, want active %s", got.server, got.path, want)
	}
	// The target is not configured, so the standby stays sticky.
	if got := c.Current(); got != standby.URL {
		t.Errorf("Current: got %s, want %s", got, standby.URL)
	}
}

func TestEveryRetryCarriesTheSameKey(t *testing.T) {
	rec := &recorder{}
	api := &activeAPI{}
	var mu sync.Mutex
	calls := 0
	flaky := serve(t, rec, "flaky", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		switch n {
		case 1:
			// Store the job, then lose the answer: an ambiguous failure.
			api.ServeHTTP(httptest.NewRecorder(), r)
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			conn.Close()
		case 2:
			writeError(w, tandem.Errorf(tandem.ENOACTIVE, "election under way"))
		default:
			api.ServeHTTP(w, r)
		}
	}))
	c := newTestClient(t, rec, DefaultBackoff(), flaky.URL)

	job, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{})
	if err != nil {
		t.Fatalf("SubmitJob: %v", err)
	}
	_, reqs := rec.snapshot()
	if len(reqs) != 3 {
		t.Fatalf("got %d requests, want 3", len(reqs))
	}
	key := reqs[0].key
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(key) {
		t.Errorf("got generated key %q, want 32 hex digits (128 bits)", key)
	}
	for i, r := range reqs {
		if r.key != key {
			t.Errorf("request %d: got key %q, want %q", i, r.key, key)
		}
	}
	if n := api.count(); job.ID != "j1" || n != 1 {
		t.Errorf("got job %s and %d stored jobs, want j1 and 1 (the retry found the first)", job.ID, n)
	}

	if _, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	_, reqs = rec.snapshot()
	if got := reqs[len(reqs)-1].key; got == key {
		t.Errorf("got the same key %q for a second SubmitJob call, want a fresh one", got)
	}
}

func TestConcurrentCallsShareOneClient(t *testing.T) {
	rec := &recorder{}
	down := serve(t, rec, "down", unavailable())
	api := &activeAPI{}
	active := serve(t, rec, "active", api)
	c := newTestClient(t, rec, DefaultBackoff(), deadURL(t), down.URL, active.URL)
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			key := fmt.Sprintf("key-%d", i%8)
			if _, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{IdempotencyKey: key}); err != nil {
				t.Errorf("SubmitJob: %v", err)
			}
		})
	}
	wg.Wait()
	if got := api.count(); got != 8 {
		t.Errorf("got %d jobs, want 8 (one per idempotency key)", got)
	}
	if got := c.Current(); got != active.URL {
		t.Errorf("Current: got %s, want %s", got, active.URL)
	}
}

func TestConfigNormalizes(t *testing.T) {
	c, err := New(Config{Servers: []string{"http://127.0.0.1:7070/"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Current(), "http://127.0.0.1:7070"; got != want {
		t.Errorf("Current: got %q, want %q", got, want)
	}
	if got, want := c.tr.Backoff(), DefaultBackoff(); got != want {
		t.Errorf("backoff: got %+v, want the default %+v", got, want)
	}
}

func TestUserAgent(t *testing.T) {
	agents := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		agents <- r.Header.Get("User-Agent")
		writeJSON(w, http.StatusOK, tandem.JobList{})
	}))
	t.Cleanup(srv.Close)
	c, err := New(Config{Servers: []string{srv.URL}, UserAgent: "tandem-test/1"})
	if err != nil {
		t.Fatal(err)
	}
	list, err := c.ListJobs(context.Background(), ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := <-agents; got != "tandem-test/1" {
		t.Errorf("got User-Agent %q, want tandem-test/1", got)
	}
	if list.Jobs == nil {
		t.Errorf("got nil Jobs, want an empty slice")
	}
}

func TestTokenGoesToConfiguredServersOnly(t *testing.T) {
	auth := make(map[string]string) // server name -> Authorization it saw
	var mu sync.Mutex
	record := func(name string, h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			auth[name] = r.Header.Get("Authorization")
			mu.Unlock()
			h.ServeHTTP(w, r)
		})
	}
	rec := &recorder{}
	active := serve(t, rec, "active", record("active", &activeAPI{}))
	standby := serve(t, rec, "standby", record("standby", redirectTo(func() string { return active.URL })))
	c, err := New(Config{Servers: []string{standby.URL}, Token: "t0k"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{}); err != nil {
		t.Fatalf("SubmitJob: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := auth["standby"]; got != "Bearer t0k" {
		t.Errorf("configured server: got Authorization %q, want %q", got, "Bearer t0k")
	}
	if got, ok := auth["active"]; !ok || got != "" {
		t.Errorf("unconfigured redirect target: got Authorization %q (asked: %v), want none", got, ok)
	}
}
