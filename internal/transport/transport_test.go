package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/endpoint"
)

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" means valid
	}{
		{"valid", Config{Servers: []string{"http://127.0.0.1:7070", "https://rm2.example"}}, ""},
		{"no servers", Config{}, "no servers given: give at least one server URL, such as http://127.0.0.1:7070"},
		{"bad scheme", Config{Servers: []string{"ftp://h:1"}}, `"ftp://h:1": the scheme must be http or https`},
		{"no scheme", Config{Servers: []string{"127.0.0.1:7070"}}, `"127.0.0.1:7070"`},
		{"no host", Config{Servers: []string{"http://"}}, `"http://" has no host`},
		{"bad port", Config{Servers: []string{"http://h:port"}}, `"http://h:port" is malformed`},
		{"query", Config{Servers: []string{"http://h:1/?a=b"}}, "no user, query or fragment"},
		{"duplicate", Config{Servers: []string{"http://h:80", "http://H/"}}, `server "http://H/" is listed twice (also as "http://h:80")`},
		{"zero base", Config{Servers: []string{"http://h"}, Backoff: Backoff{Max: time.Second, Attempts: 3}}, "base is 0s"},
		{"max below base", Config{Servers: []string{"http://h"}, Backoff: Backoff{Base: time.Second, Max: time.Millisecond, Attempts: 3}}, "less than its base"},
		{"no attempts", Config{Servers: []string{"http://h"}, Backoff: Backoff{Base: time.Millisecond, Max: time.Second}}, "attempts is 0"},
		{"token", Config{Servers: []string{"http://h"}, Token: "abc.DEF-_~+/="}, ""},
		{"token with a newline", Config{Servers: []string{"http://h"}, Token: "abc\nX-Evil: 1"}, "the token contains a control character"},
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
			if tt.cfg.Token != "" && err != nil && strings.Contains(err.Error(), tt.cfg.Token) {
				t.Errorf("got error %q, want one that does not reveal the token", err)
			}
		})
	}
}

func TestConfigNormalizes(t *testing.T) {
	tr, err := New(Config{Servers: []string{"http://127.0.0.1:7070/", "HTTP://Rm2.Example/base/"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tr.Current(), "http://127.0.0.1:7070"; got != want {
		t.Errorf("Current: got %q, want %q", got, want)
	}
	if got, want := strings.Join(tr.Servers(), " "), "http://127.0.0.1:7070 http://Rm2.Example/base"; got != want {
		t.Errorf("Servers: got %q, want %q", got, want)
	}
	if got, want := tr.Backoff(), DefaultBackoff(); got != want {
		t.Errorf("Backoff: got %+v, want the default %+v", got, want)
	}
	if tr.hc.Timeout != DefaultTimeout || tr.attemptTimeout != DefaultAttemptTimeout {
		t.Errorf("got timeout %v and attempt timeout %v, want %v and %v", tr.hc.Timeout, tr.attemptTimeout, DefaultTimeout, DefaultAttemptTimeout)
	}
}

func TestFailsOverToTheActive(t *testing.T) {
	tests := []struct {
		name   string
		before []string // what answers ahead of the active: "dead", "503", "502", "504" or "standby"
	}{
		{"active first", nil},
		{"dead first", []string{"dead"}},
		{"503 first", []string{"503"}},
		{"proxy errors first", []string{"502", "504"}},
		{"dead then 503", []string{"dead", "503"}},
		{"503 then dead then standby", []string{"503", "dead", "standby"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			active := serve(t, rec, "active", answer("active"))
			var urls []string
			for i, kind := range tt.before {
				name := fmt.Sprint(kind, "-", i)
				switch kind {
				case "dead":
					urls = append(urls, deadURL(t))
				case "503":
					urls = append(urls, serve(t, rec, name, unavailable()).URL)
				case "502", "504":
					status := map[string]int{"502": http.StatusBadGateway, "504": http.StatusGatewayTimeout}[kind]
					urls = append(urls, serve(t, rec, name, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
						w.WriteHeader(status)
						io.WriteString(w, "proxy says no")
					})).URL)
				case "standby":
					urls = append(urls, serve(t, rec, name, redirectTo(func() string { return active.URL })).URL)
				}
			}
			urls = append(urls, active.URL)
			tr := newTestTransport(t, rec, nil, urls...)

			var got reply
			c := submit()
			if err := tr.Do(context.Background(), c, &got); err != nil {
				t.Fatalf("Do: got error %v, want none", err)
			}
			if got.Server != "active" || got.Method != http.MethodPost || got.Path != "/v1/jobs" {
				t.Errorf("got reply %+v, want the active's answer to POST /v1/jobs", got)
			}
			if got := tr.Current(); got != active.URL {
				t.Errorf("Current: got %s, want the active %s", got, active.URL)
			}
			want := len(tt.before) + 1
			if i := slices.Index(tt.before, "standby"); i >= 0 {
				want = i + 1 // the standby's redirect is followed within its attempt
			}
			if c.Tries != want {
				t.Errorf("Tries: got %d, want %d", c.Tries, want)
			}
		})
	}
}

func TestBackoffFirstRetryImmediateThenGrowing(t *testing.T) {
	rec := &recorder{}
	a := serve(t, rec, "a", unavailable())
	b := serve(t, rec, "b", unavailable())
	tr := newTestTransport(t, rec, func(c *Config) {
		c.Backoff = Backoff{Base: 10 * time.Millisecond, Max: 40 * time.Millisecond, Attempts: 7}
	}, a.URL, b.URL)

	err := tr.Do(context.Background(), get("/v1/jobs/j1"), nil)
	if err == nil {
		t.Fatal("Do: got no error, want unavailable")
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

func TestRetriesSleepWithJitter(t *testing.T) {
	rec := &recorder{}
	a := serve(t, rec, "a", unavailable())
	tr := newTestTransport(t, rec, func(c *Config) {
		c.Backoff = Backoff{Base: 100 * time.Millisecond, Max: time.Second, Attempts: 4}
		c.RandN = func(int64) int64 { return 0 } // the lowest jitter: half the delay
	}, a.URL)
	_ = tr.Do(context.Background(), get("/"), nil)
	events, _ := rec.snapshot()
	if got, want := sleeps(events), "sleep 50ms,sleep 100ms"; got != want {
		t.Errorf("got sleeps %s, want %s", got, want)
	}
}

func TestStickiness(t *testing.T) {
	rec := &recorder{}
	down := serve(t, rec, "down", unavailable())
	active := serve(t, rec, "active", answer("active"))
	tr := newTestTransport(t, rec, nil, down.URL, active.URL)
	ctx := context.Background()

	if err := tr.Do(ctx, submit(), nil); err != nil {
		t.Fatalf("Do: %v", err)
	}
	for range 3 {
		if err := tr.Do(ctx, &Call{Op: "get", Method: http.MethodGet, Path: "/v1/jobs/j1", Active: true}, nil); err != nil {
			t.Fatalf("Do: %v", err)
		}
	}
	if got := rec.hits("down"); got != 1 {
		t.Errorf("got %d requests to the 503 server, want 1 (later calls stick to the active)", got)
	}
	if got := rec.hits("active"); got != 4 {
		t.Errorf("got %d requests to the active, want 4", got)
	}
	if got := tr.CurrentIndex(); got != 1 {
		t.Errorf("CurrentIndex: got %d, want 1", got)
	}
}

func TestStickinessIsNotMovedByCallsAnyServerAnswers(t *testing.T) {
	rec := &recorder{}
	active := serve(t, rec, "active", answer("active"))
	standby := serve(t, rec, "standby", redirectTo(func() string { return active.URL }))
	tr := newTestTransport(t, rec, nil, standby.URL, active.URL)
	var got reply
	if err := tr.Do(context.Background(), get("/v1/ha/history"), &got); err != nil || got.Server != "active" {
		t.Fatalf("Do: got %+v, %v, want the active's answer through the standby's redirect", got, err)
	}
	if got := tr.Current(); got != standby.URL {
		t.Errorf("Current after a call any server answers: got %s, want still %s", got, standby.URL)
	}
	c := get("/v1/jobs")
	c.Active = true
	if err := tr.Do(context.Background(), c, &got); err != nil || got.Server != "active" {
		t.Fatalf("Do: got %+v, %v, want the active's answer", got, err)
	}
	if got := tr.Current(); got != active.URL {
		t.Errorf("Current after a call needing the active: got %s, want %s", got, active.URL)
	}
}

// N calls that fail together on the sticky server move it one step, not N:
// each advances it only if it still points at the server that failed.
func TestConcurrentFailuresAdvanceOneStep(t *testing.T) {
	// n is not one more than a multiple of the server count, so that n
	// steps would not land where one does.
	const n = 12
	rec := &recorder{}
	var (
		mu      sync.Mutex
		arrived int
		all     = make(chan struct{})
	)
	// The first server holds every call until all n are in, then fails them
	// all at once.
	gate := serve(t, rec, "gate", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrived++
		if arrived == n {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
		case <-r.Context().Done():
			return
		}
		unavailable().ServeHTTP(w, r)
	}))
	second := serve(t, rec, "second", answer("second"))
	third := serve(t, rec, "third", answer("third"))
	tr := newTestTransport(t, rec, func(c *Config) { c.AttemptTimeout = -1 }, gate.URL, second.URL, third.URL)

	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			var got reply
			// Not Active: success does not move the sticky server, so only
			// the failures do.
			if err := tr.Do(context.Background(), get("/v1/cluster/servers"), &got); err != nil {
				t.Errorf("Do: %v", err)
			} else if got.Server != "second" {
				t.Errorf("got an answer from %s, want second", got.Server)
			}
		})
	}
	wg.Wait()
	if got := tr.Current(); got != second.URL {
		t.Errorf("Current: got %s, want %s (one step past the failed server)", got, second.URL)
	}
	if got := rec.hits("third"); got != 0 {
		t.Errorf("got %d requests to the third server, want 0", got)
	}
}

func TestRedirectFollowedWithSameBodyAndHeaders(t *testing.T) {
	rec := &recorder{}
	down := serve(t, rec, "down", unavailable())
	active := serve(t, rec, "active", answer("active"))
	standby := serve(t, rec, "standby", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, active.URL+r.URL.RequestURI(), http.StatusPermanentRedirect)
	}))
	tr := newTestTransport(t, rec, nil, down.URL, standby.URL, active.URL)
	c := submit()
	c.Query = url.Values{"a": {"1 2"}}
	var got reply
	if err := tr.Do(context.Background(), c, &got); err != nil {
		t.Fatalf("Do: %v", err)
	}
	if got.Server != "active" || got.Method != http.MethodPost || got.Path != "/v1/jobs?a=1+2" {
		t.Errorf("got reply %+v, want the active's answer to POST /v1/jobs?a=1+2", got)
	}
	events, reqs := rec.snapshot()
	if got, want := strings.Join(events, ","), "down,standby,active"; got != want {
		t.Errorf("got events %s, want %s", got, want)
	}
	for i, r := range reqs {
		if r.method != http.MethodPost || r.body != `{"name":"t"}` || r.header.Get("Idempotency-Key") != "k-1" || r.header.Get("Content-Type") != "application/json" {
			t.Errorf("request %d to %s: got %s, body %q, key %q, type %q, want the call's on every request", i, r.server, r.method, r.body, r.header.Get("Idempotency-Key"), r.header.Get("Content-Type"))
		}
		if r.path != "/v1/jobs?a=1+2" {
			t.Errorf("request %d to %s: got path %s, want /v1/jobs?a=1+2", i, r.server, r.path)
		}
	}
	if got := tr.Current(); got != active.URL {
		t.Errorf("Current: got %s, want the redirect target %s", got, active.URL)
	}
	if c.Tries != 2 {
		t.Errorf("Tries: got %d, want 2", c.Tries)
	}
}

func TestRedirectToAnUnconfiguredServer(t *testing.T) {
	rec := &recorder{}
	active := serve(t, rec, "active", answer("active"))
	standby := serve(t, rec, "standby", redirectTo(func() string { return active.URL }))
	other := serve(t, rec, "other", unavailable())
	tr := newTestTransport(t, rec, nil, other.URL, standby.URL)
	var got reply
	if err := tr.Do(context.Background(), submit(), &got); err != nil || got.Server != "active" {
		t.Fatalf("Do: got %+v, %v, want the active's answer", got, err)
	}
	// The target is not configured, so the standby that leads there sticks.
	if got := tr.Current(); got != standby.URL {
		t.Errorf("Current: got %s, want %s", got, standby.URL)
	}
}

func TestBadRedirectsCountAsFailedAttempts(t *testing.T) {
	tests := []struct {
		name    string
		handler func(self, other *string) http.Handler
		wantMsg string
	}{
		{"loop to itself", func(self, _ *string) http.Handler { return redirectTo(func() string { return *self }) }, "redirect loop through"},
		{"ping-pong", func(_, other *string) http.Handler { return redirectTo(func() string { return *other }) }, "redirect loop through"},
		{"no Location", func(_, _ *string) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTemporaryRedirect) })
		}, `307 with an unusable Location ""`},
		{"bad scheme", func(_, _ *string) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Location", "ftp://x/")
				w.WriteHeader(http.StatusTemporaryRedirect)
			})
		}, `307 with an unusable Location "ftp://x/"`},
		{"too many hops", func(self, _ *string) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, *self+r.URL.Path+"x", http.StatusTemporaryRedirect)
			})
		}, fmt.Sprintf("more than %d redirects", MaxRedirects)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			var u1, u2 string
			s1 := serve(t, rec, "s1", tt.handler(&u1, &u2))
			s2 := serve(t, rec, "s2", tt.handler(&u2, &u1))
			u1, u2 = s1.URL, s2.URL
			tr := newTestTransport(t, rec, func(c *Config) { c.Backoff = Backoff{Base: time.Millisecond, Max: time.Millisecond, Attempts: 2} }, s1.URL, s2.URL)
			err := tr.Do(context.Background(), submit(), nil)
			if tandem.ErrorCode(err) != tandem.EUNAVAILABLE || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("got %v, want unavailable saying %q", err, tt.wantMsg)
			}
			if got := rec.hits("s1") + rec.hits("s2"); got > 2*(MaxRedirects+1) {
				t.Errorf("got %d requests, want at most %d", got, 2*(MaxRedirects+1))
			}
		})
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
		{"undecodable 200", 200, "not json", tandem.EINTERNAL, "HTTP 200: undecodable response", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			srv := serve(t, rec, "srv", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			other := serve(t, rec, "other", answer("other"))
			tr := newTestTransport(t, rec, nil, srv.URL, other.URL)

			var out reply
			err := tr.Do(context.Background(), get("/v1/jobs/j9"), &out)
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
	for _, active := range []bool{true, false} {
		t.Run(fmt.Sprint("active=", active), func(t *testing.T) {
			rec := &recorder{}
			dead := deadURL(t)
			down := serve(t, rec, "down", unavailable())
			proxy := serve(t, rec, "proxy", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusBadGateway)
				io.WriteString(w, "bad gateway")
			}))
			tr := newTestTransport(t, rec, func(c *Config) {
				c.Backoff = Backoff{Base: time.Millisecond, Max: time.Millisecond, Attempts: 5}
			}, dead, down.URL, proxy.URL)

			c := submit()
			c.Active = active
			err := tr.Do(context.Background(), c, nil)
			var te *tandem.Error
			if !errors.As(err, &te) || te.Code != tandem.EUNAVAILABLE {
				t.Fatalf("got error %v, want a *tandem.Error with code %s", err, tandem.EUNAVAILABLE)
			}
			who := "no active server"
			if !active {
				who = "no server"
			}
			for _, want := range []string{
				who + " answered after 5 attempts (",
				dead + ": connection refused",
				down.URL + ": 503 no_active: no active server is known",
				proxy.URL + ": 502 unavailable: " + proxy.URL + ": HTTP 502: bad gateway",
			} {
				if !strings.Contains(te.Message, want) {
					t.Errorf("got message %q, want it to contain %q", te.Message, want)
				}
			}
			if c.Tries != 5 {
				t.Errorf("Tries: got %d, want 5", c.Tries)
			}
		})
	}
}

func TestContextStopsRetrying(t *testing.T) {
	cause := errors.New("the operator gave up")
	tests := []struct {
		name    string
		cancel  func(context.CancelCauseFunc)
		wantErr error
	}{
		{"cancel", func(cancel context.CancelCauseFunc) { cancel(nil) }, context.Canceled},
		{"cause", func(cancel context.CancelCauseFunc) { cancel(cause) }, cause},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			down := serve(t, rec, "down", unavailable())
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			// The caller gives up during the first sleep.
			tr := newTestTransport(t, rec, func(c *Config) {
				c.Sleep = func(ctx context.Context, d time.Duration) error {
					rec.log("sleep " + d.String())
					tt.cancel(cancel)
					return ctx.Err()
				}
			}, down.URL, deadURL(t))
			err := tr.Do(ctx, submit(), nil)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("got error %v, want one wrapping %v", err, tt.wantErr)
			}
			for _, want := range []string{"submit: ", "(last errors: ", "no_active", "connection refused"} {
				if !strings.Contains(fmt.Sprint(err), want) {
					t.Errorf("got error %q, want it to contain %q (what the servers answered)", err, want)
				}
			}
			if events, _ := rec.snapshot(); strings.Join(events, ",") != "down,sleep 20ms" {
				t.Errorf("got events %q, want down (then the dead server), the first sleep, and no more requests", events)
			}
		})
	}
}

func TestContextCancelDuringRequest(t *testing.T) {
	rec := &recorder{}
	hung := serveHung(t, rec, "hang")
	tr := newTestTransport(t, rec, func(c *Config) { c.AttemptTimeout = -1 }, hung.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := tr.Do(ctx, get("/v1/jobs/j1"), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got error %v, want one wrapping context.DeadlineExceeded", err)
	}
	if got := rec.hits("hang"); got != 1 {
		t.Errorf("got %d requests, want 1 (no retry once ctx is done)", got)
	}
}

// A hung server (it accepts the connection and never answers) costs a call
// about AttemptTimeout, not the HTTP timeout, and the call passes over it
// while it retries elsewhere.
func TestHungServerIsPassedOver(t *testing.T) {
	rec := &recorder{}
	hung := serveHung(t, rec, "hung")
	var calls atomic.Int32
	flaky := serve(t, rec, "flaky", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			unavailable().ServeHTTP(w, r)
			return
		}
		answer("flaky").ServeHTTP(w, r)
	}))
	tr := newTestTransport(t, rec, func(c *Config) { c.AttemptTimeout = 100 * time.Millisecond }, hung.URL, flaky.URL)
	start := time.Now()
	var got reply
	if err := tr.Do(context.Background(), submit(), &got); err != nil || got.Server != "flaky" {
		t.Fatalf("Do: got %+v, %v, want flaky's answer", got, err)
	}
	if took := time.Since(start); took >= DefaultTimeout/2 {
		t.Errorf("Do took %s: the hung server held it for the HTTP timeout, not the attempt timeout", took)
	}
	if events, _ := rec.snapshot(); strings.Join(events, ",") != "hung,flaky,sleep 20ms,flaky" {
		t.Errorf("got events %q, want hung, flaky, a sleep, flaky (the retry after flaky's 503 passes over the hung server)", events)
	}
}

func TestStreamIsBoundedOnlyUntilItsHeaders(t *testing.T) {
	rec := &recorder{}
	mute := serveHung(t, rec, "mute") // no headers, ever
	more := make(chan struct{})
	talk := serve(t, rec, "talk", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		select {
		case <-more:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	}))
	const timeout = 200 * time.Millisecond
	tr := newTestTransport(t, rec, func(c *Config) { c.HTTPClient = &http.Client{Timeout: timeout} }, mute.URL, talk.URL)
	c := &Call{Op: "logs", Method: http.MethodGet, Path: "/v1/jobs/j1/logs", Active: true, Stream: true}
	resp, err := tr.Exchange(context.Background(), c, nil)
	if err != nil {
		t.Fatalf("Exchange: got %v, want the talking server's stream after the mute one timed out", err)
	}
	defer resp.Body.Close()
	if got := tr.Current(); got != talk.URL {
		t.Errorf("Current: got %s, want %s", got, talk.URL)
	}
	// Outlive the HTTP client's timeout before the stream brings more: the
	// timeout bounds the headers, not the stream.
	time.AfterFunc(2*timeout, func() { close(more) })
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "first\nsecond\n" {
		t.Errorf("got %q, %v, want both lines", body, err)
	}
}

func TestStreamErrorsAreDecoded(t *testing.T) {
	rec := &recorder{}
	srv := serve(t, rec, "srv", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, tandem.Errorf(tandem.ENOTFOUND, "job j1 has no attempts yet"))
	}))
	tr := newTestTransport(t, rec, nil, srv.URL)
	resp, err := tr.Exchange(context.Background(), &Call{Op: "logs", Method: http.MethodGet, Path: "/", Stream: true}, nil)
	if resp != nil || !errors.Is(err, tandem.ErrNotFound) || err.Error() != "job j1 has no attempts yet" {
		t.Errorf("got %v, %v, want no response and the server's not_found", resp, err)
	}
}

func TestHTTPClientDoesNotFollowRedirects(t *testing.T) {
	rec := &recorder{}
	active := serve(t, rec, "active", answer("active"))
	standby := serve(t, rec, "standby", redirectTo(func() string { return active.URL }))
	// A caller's client that would follow redirects on its own (and, for a
	// POST after a 307, resend the body without our bookkeeping).
	hc := &http.Client{Timeout: 5 * time.Second}
	tr := newTestTransport(t, rec, func(c *Config) { c.HTTPClient = hc }, standby.URL, active.URL)
	if err := tr.Do(context.Background(), submit(), nil); err != nil {
		t.Fatal(err)
	}
	// Only the transport's own redirect handling makes the target sticky.
	if got := tr.Current(); got != active.URL {
		t.Errorf("Current: got %s, want %s", got, active.URL)
	}
	if hc.CheckRedirect != nil {
		t.Errorf("the caller's HTTP client was modified: got a CheckRedirect, want none")
	}
}

func TestRequestHeaders(t *testing.T) {
	rec := &recorder{}
	srv := serve(t, rec, "srv", answer("srv"))
	tr := newTestTransport(t, rec, func(c *Config) { c.UserAgent = "tandem-test/1" }, srv.URL)
	ctx := context.Background()
	if err := tr.Do(ctx, get("/a"), nil); err != nil {
		t.Fatal(err)
	}
	r := rec.last(t, "srv")
	if got := r.header.Get("User-Agent"); got != "tandem-test/1" {
		t.Errorf("got User-Agent %q, want tandem-test/1", got)
	}
	if got := r.header.Get("Accept"); got != "application/json" {
		t.Errorf("got Accept %q, want application/json", got)
	}
	if got := r.header.Get("Content-Type"); got != "" {
		t.Errorf("got Content-Type %q on a request without a body, want none", got)
	}
	c := get("/b")
	c.Header = http.Header{"Accept": {"text/plain"}}
	if err := tr.Do(ctx, c, nil); err != nil {
		t.Fatal(err)
	}
	if got := rec.last(t, "srv").header.Get("Accept"); got != "text/plain" {
		t.Errorf("got Accept %q, want the call's text/plain", got)
	}
}

// roundTripFunc is an http.RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Each attempt is bounded by AttemptTimeout; the bound doubles from the
// second attempt that timed out on, the first repeat staying short.
func TestAttemptTimeoutDoublesFromTheSecondTimeout(t *testing.T) {
	rec := &recorder{}
	var bounds []time.Duration // what each attempt had left when it was sent
	hung := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		deadline, ok := r.Context().Deadline()
		if !ok {
			return nil, errors.New("no deadline")
		}
		bounds = append(bounds, time.Until(deadline))
		<-r.Context().Done()
		return nil, r.Context().Err()
	})
	const base = 100 * time.Millisecond
	tr := newTestTransport(t, rec, func(c *Config) {
		c.HTTPClient = &http.Client{Transport: hung}
		c.AttemptTimeout = base
		c.Backoff = Backoff{Base: time.Millisecond, Max: time.Millisecond, Attempts: 4}
	}, "http://rm1.example")
	err := tr.Do(context.Background(), get("/"), nil)
	if tandem.ErrorCode(err) != tandem.EUNAVAILABLE || !strings.Contains(err.Error(), "http://rm1.example: timeout") {
		t.Errorf("got %v, want unavailable with the server's timeouts", err)
	}
	want := []time.Duration{base, base, 2 * base, 4 * base}
	if len(bounds) != len(want) {
		t.Fatalf("got %d attempts, want %d", len(bounds), len(want))
	}
	for i, w := range want {
		// The bound is set just before the request is sent: at most w, and,
		// where it doubled, well above the one before.
		if got := bounds[i]; got > w || (i > 0 && w > want[i-1] && got <= w*3/4) {
			t.Errorf("attempt %d: got a bound of %v, want about %v", i+1, got, w)
		}
	}
}

// A server that refuses a connection is gone: the call passes over it and
// tells the servers it asks next (RefusedHeader), so that a standby which
// still names it the active holds the request rather than redirecting
// there again.
func TestRefusedServersAreToldAndPassedOver(t *testing.T) {
	rec := &recorder{}
	dead, dead2 := deadURL(t), deadURL(t)
	var calls atomic.Int32
	standby := serve(t, rec, "standby", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			redirectTo(func() string { return dead2 + r.URL.Path }).ServeHTTP(w, r)
			return
		}
		answer("standby").ServeHTTP(w, r)
	}))
	tr := newTestTransport(t, rec, nil, dead, standby.URL)
	var got reply
	if err := tr.Do(context.Background(), submit(), &got); err != nil || got.Server != "standby" {
		t.Fatalf("Do: got %+v, %v, want the standby's answer", got, err)
	}
	if events, _ := rec.snapshot(); strings.Join(events, ",") != "standby,sleep 20ms,standby" {
		t.Errorf("got events %q, want standby, a sleep, standby (the refusing server passed over)", events)
	}
	key := func(u string) string {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		return endpoint.KeyOf(p)
	}
	_, reqs := rec.snapshot()
	want := []string{key(dead), strings.Join(slices.Sorted(slices.Values([]string{key(dead), key(dead2)})), ",")}
	for i, q := range reqs {
		if h := q.header.Get(RefusedHeader); h != want[i] {
			t.Errorf("request %d to the standby: %s %q, want %q", i+1, RefusedHeader, h, want[i])
		}
	}
}
