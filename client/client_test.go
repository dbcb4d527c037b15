package client

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/tandemhq/tandem/internal/transport"
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
// and whose jitter always picks the full delay.
func newTestClient(t *testing.T, rec *recorder, b Backoff, servers ...string) *Client {
	t.Helper()
	c, err := New(Config{Servers: servers, Backoff: b})
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

func TestBackoffFirstRetryImmediateThenGrowing(t *testing.T) {
	rec := &recorder{}
	a := serve(t, rec, "a", unavailable())
	b := serve(t, rec, "b", unavailable())
	c := newTestClient(t, rec, Backoff{Base: 10 * time.Millisecond, Max: 40 * time.Millisecond, Attempts: 7}, a.URL, b.URL)

	_, err := c.GetJob(context.Background(), "j1")
	if err == nil {
		t.Fatal("GetJob: got no error, want unavailable")
	}
	events, _ := rec.snapshot()
	want := []string{
		"a", "b", // the first retry is immediate
		"sleep 10ms", "a",
		"sleep 20ms", "b",
		"sleep 40ms", "a",
		"sleep 40ms", "b", // capped at Max
		"sleep 40ms", "a",
	}
	if strings.Join(events, ",") != strings.Join(want, ",") {
		t.Errorf("got events %q, want %q", events, want)
	}
}

func TestStickiness(t *testing.T) {
	rec := &recorder{}
	down := serve(t, rec, "down", unavailable())
	active := serve(t, rec, "active", &activeAPI{})
	c := newTestClient(t, rec, DefaultBackoff(), down.URL, active.URL)
	ctx := context.Background()

	job, err := c.SubmitJob(ctx, testSpec, SubmitOptions{})
	if err != nil {
		t.Fatalf("SubmitJob: %v", err)
	}
	for range 3 {
		if _, err := c.GetJob(ctx, job.ID); err != nil {
			t.Fatalf("GetJob: %v", err)
		}
	}
	if got := rec.hits("down"); got != 1 {
		t.Errorf("got %d requests to the 503 server, want 1 (later calls stick to the active)", got)
	}
	if got := rec.hits("active"); got != 4 {
		t.Errorf("got %d requests to the active, want 4", got)
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

func TestRedirectLoopCountsAsFailedAttempt(t *testing.T) {
	tests := []struct {
		name string
		loop func(self, other *string) http.Handler
	}{
		{"to itself", func(self, _ *string) http.Handler { return redirectTo(func() string { return *self }) }},
		{"ping-pong", func(_, other *string) http.Handler { return redirectTo(func() string { return *other }) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			var u1, u2 string
			s1 := serve(t, rec, "s1", tt.loop(&u1, &u2))
			s2 := serve(t, rec, "s2", tt.loop(&u2, &u1))
			u1, u2 = s1.URL, s2.URL
			active := serve(t, rec, "active", &activeAPI{})
			c := newTestClient(t, rec, DefaultBackoff(), s1.URL, s2.URL, active.URL)
			if _, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{}); err != nil {
				t.Fatalf("SubmitJob: got %v, want success from the third server", err)
			}
			if got := c.Current(); got != active.URL {
				t.Errorf("Current: got %s, want %s", got, active.URL)
			}
			if got := rec.hits("s1") + rec.hits("s2"); got > 2*(transport.MaxRedirects+1) {
				t.Errorf("got %d requests into the loop, want at most %d", got, 2*(transport.MaxRedirects+1))
			}
		})
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

func TestErrorsReturnedWithoutRetry(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		body     string
		wantCode string
		wantMsg  string
		wantIs   error
	}{
		{"not found", 404, `{"error":{"code":"not_found","message":"job j9 not found"}}`, tandem.ENOTFOUND, "job j9 not found", tandem.ErrNotFound},
		{"invalid", 400, `{"error":{"code":"invalid_argument","message":"command is empty"}}`, tandem.EINVALID, "command is empty", nil},
		{"conflict", 409, `{"error":{"code":"conflict","message":"no"}}`, tandem.ECONFLICT, "no", nil},
		{"idempotency", 422, `{"error":{"code":"idempotency_mismatch","message":"key reused"}}`, tandem.EIDEMPOTENCY, "key reused", nil},
		{"internal", 500, `{"error":{"code":"internal","message":"internal error"}}`, tandem.EINTERNAL, "internal error", nil},
		{"non-JSON 500", 500, "<html>boom</html>", tandem.EINTERNAL, "HTTP 500: <html>boom</html>", nil},
		{"non-JSON 404", 404, "404 page not found", tandem.EINTERNAL, "HTTP 404: 404 page not found", nil},
		{"long body", 400, strings.Repeat("x", 500), tandem.EINTERNAL, "HTTP 400: " + strings.Repeat("x", 200), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			srv := serve(t, rec, "srv", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			other := serve(t, rec, "other", &activeAPI{})
			c := newTestClient(t, rec, DefaultBackoff(), srv.URL, other.URL)

			_, err := c.GetJob(context.Background(), "j9")
			var te *tandem.Error
			if !errors.As(err, &te) {
				t.Fatalf("got error %v (%T), want a *tandem.Error", err, err)
			}
			if te.Code != tt.wantCode {
				t.Errorf("got code %q, want %q", te.Code, tt.wantCode)
			}
			if !strings.Contains(te.Message, tt.wantMsg) {
				t.Errorf("got message %q, want it to contain %q", te.Message, tt.wantMsg)
			}
			if strings.Contains(te.Message, strings.Repeat("x", 201)) {
				t.Errorf("got message of %d bytes, want the body cut at 200", len(te.Message))
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v): got false, want true", err, tt.wantIs)
			}
			if got := rec.hits("srv") + rec.hits("other"); got != 1 {
				t.Errorf("got %d requests, want 1 (no retry)", got)
			}
		})
	}
}

func TestAttemptsExhausted(t *testing.T) {
	rec := &recorder{}
	dead := deadURL(t)
	down := serve(t, rec, "down", unavailable())
	proxy := serve(t, rec, "proxy", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "bad gateway")
	}))
	c := newTestClient(t, rec, Backoff{Base: time.Millisecond, Max: time.Millisecond, Attempts: 5}, dead, down.URL, proxy.URL)

	_, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{})
	var te *tandem.Error
	if !errors.As(err, &te) || te.Code != tandem.EUNAVAILABLE {
		t.Fatalf("got error %v, want a *tandem.Error with code %s", err, tandem.EUNAVAILABLE)
	}
	for _, want := range []string{
		"no active server answered after 5 attempts",
		dead + ": connection refused",
		down.URL + ": 503 no_active: no active server is known",
		proxy.URL + ": 502 unavailable: " + proxy.URL + ": HTTP 502: bad gateway",
	} {
		if !strings.Contains(te.Message, want) {
			t.Errorf("got message %q, want it to contain %q", te.Message, want)
		}
	}
	if got, want := rec.hits("down")+rec.hits("proxy"), 3; got != want {
		t.Errorf("got %d requests to live servers, want %d", got, want)
	}
}

func TestContextStopsRetrying(t *testing.T) {
	tests := []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		wantErr error
	}{
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			down := serve(t, rec, "down", unavailable())
			// Real sleeps, long ones: the cancellation must cut them short.
			c, err := New(Config{Servers: []string{down.URL, deadURL(t)}, Backoff: Backoff{Base: time.Minute, Max: time.Minute, Attempts: 100}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := tt.ctx()
			defer cancel()
			start := time.Now()
			_, err = c.SubmitJob(ctx, testSpec, SubmitOptions{})
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("got error %v, want one wrapping %v", err, tt.wantErr)
			}
			if !strings.Contains(fmt.Sprint(err), "no_active") {
				t.Errorf("got error %q, want it to say what the servers answered", err)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("got return after %v, want promptly after the cancellation", took)
			}
		})
	}
}

func TestContextCancelDuringRequest(t *testing.T) {
	rec := &recorder{}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hang := serve(t, rec, "hang", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	c := newTestClient(t, rec, DefaultBackoff(), hang.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.GetJob(ctx, "j1")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got error %v, want one wrapping context.DeadlineExceeded", err)
	}
	if got := rec.hits("hang"); got != 1 {
		t.Errorf("got %d requests, want 1 (no retry once ctx is done)", got)
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

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" means valid
	}{
		{"valid", Config{Servers: []string{"http://127.0.0.1:7070", "https://rm2.example"}}, ""},
		{"no servers", Config{}, "no servers given"},
		{"bad scheme", Config{Servers: []string{"ftp://h:1"}}, `"ftp://h:1": the scheme must be http or https`},
		{"no scheme", Config{Servers: []string{"127.0.0.1:7070"}}, `"127.0.0.1:7070"`},
		{"no host", Config{Servers: []string{"http://"}}, `"http://" has no host`},
		{"bad port", Config{Servers: []string{"http://h:port"}}, `"http://h:port" is malformed`},
		{"query", Config{Servers: []string{"http://h:1/?a=b"}}, "no user, query or fragment"},
		{"duplicate", Config{Servers: []string{"http://h:80", "http://H/"}}, "listed twice"},
		{"zero base", Config{Servers: []string{"http://h"}, Backoff: Backoff{Max: time.Second, Attempts: 3}}, "base is 0s"},
		{"max below base", Config{Servers: []string{"http://h"}, Backoff: Backoff{Base: time.Second, Max: time.Millisecond, Attempts: 3}}, "less than its base"},
		{"no attempts", Config{Servers: []string{"http://h"}, Backoff: Backoff{Base: time.Millisecond, Max: time.Second}}, "attempts is 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("got error %v, want none", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got error %v, want one containing %q", err, tt.wantErr)
			}
			if got := tandem.ErrorCode(err); got != tandem.EINVALID {
				t.Errorf("got code %q, want %q", got, tandem.EINVALID)
			}
		})
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

func TestHTTPClientDoesNotFollowRedirects(t *testing.T) {
	rec := &recorder{}
	active := serve(t, rec, "active", &activeAPI{})
	standby := serve(t, rec, "standby", redirectTo(func() string { return active.URL }))
	// A caller's client that would follow redirects on its own (and, for a
	// POST after a 307, resend the body without our bookkeeping).
	c, err := New(Config{Servers: []string{standby.URL, active.URL}, HTTPClient: &http.Client{Timeout: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SubmitJob(context.Background(), testSpec, SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	// Only the client's own redirect handling makes the target sticky.
	if got := c.Current(); got != active.URL {
		t.Errorf("Current: got %s, want %s", got, active.URL)
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
