package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// killAPI is an active that kills jobs the way the server does: a job that
// has not started is killed at once, a running one gets kill_requested, and
// killing an ended job is a conflict.
type killAPI struct {
	mu   sync.Mutex
	jobs map[string]*tandem.Job
}

func newKillAPI(jobs ...*tandem.Job) *killAPI {
	a := &killAPI{jobs: map[string]*tandem.Job{}}
	for _, j := range jobs {
		a.jobs[j.ID] = j
	}
	return a
}

func (a *killAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, kill := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v1/jobs/"), "/kill")
	j, ok := a.jobs[id]
	switch {
	case !ok:
		writeError(w, tandem.Errorf(tandem.ENOTFOUND, "job %s not found", id))
	case kill && r.Method == http.MethodPost:
		switch {
		case j.State.Terminal():
			writeError(w, tandem.Errorf(tandem.ECONFLICT, "job %s already ended %s", id, j.State))
			return
		case j.State == tandem.JobPending:
			j.State, j.Reason = tandem.JobKilled, "killed before it ran"
		}
		j.KillRequested = true
		writeJSON(w, http.StatusOK, j)
	case r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, j)
	default:
		writeError(w, tandem.Errorf(tandem.ENOTFOUND, "no route"))
	}
}

func TestKillJob(t *testing.T) {
	tests := []struct {
		name      string
		state     tandem.JobState
		before    string // what answers ahead of the active: "", "dead", "503" or "standby"
		wantState tandem.JobState
		wantCode  string // "" for success
	}{
		{"pending is killed at once", tandem.JobPending, "", tandem.JobKilled, ""},
		{"running gets a request", tandem.JobRunning, "", tandem.JobRunning, ""},
		{"after a dead server", tandem.JobRunning, "dead", tandem.JobRunning, ""},
		{"after a 503", tandem.JobPending, "503", tandem.JobKilled, ""},
		{"through a standby", tandem.JobPending, "standby", tandem.JobKilled, ""},
		{"ended is a conflict", tandem.JobSucceeded, "", "", tandem.ECONFLICT},
		{"killed is a conflict when asked once", tandem.JobKilled, "", "", tandem.ECONFLICT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			active := serve(t, rec, "active", newKillAPI(&tandem.Job{ID: "j1", State: tt.state}))
			var urls []string
			switch tt.before {
			case "dead":
				urls = append(urls, deadURL(t))
			case "503":
				urls = append(urls, serve(t, rec, "503", unavailable()).URL)
			case "standby":
				urls = append(urls, serve(t, rec, "standby", redirectTo(func() string { return active.URL })).URL)
			}
			c := newTestClient(t, rec, DefaultBackoff(), append(urls, active.URL)...)
			job, err := c.KillJob(context.Background(), "j1")
			if tt.wantCode != "" {
				if got := tandem.ErrorCode(err); got != tt.wantCode || !strings.Contains(fmt.Sprint(err), "already ended") {
					t.Fatalf("got %v (code %s), want a %s error with the server's message", err, got, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("KillJob: %v", err)
			}
			if job.State != tt.wantState || !job.KillRequested {
				t.Errorf("got state %s, kill_requested %v, want %s, true", job.State, job.KillRequested, tt.wantState)
			}
			_, reqs := rec.snapshot()
			if last := reqs[len(reqs)-1]; last.server != "active" || last.method != http.MethodPost || last.path != "/v1/jobs/j1/kill" {
				t.Errorf("got last request %+v, want POST /v1/jobs/j1/kill to the active", last)
			}
		})
	}
}

func TestKillJobRetriedAfterAnAmbiguousFailure(t *testing.T) {
	rec := &recorder{}
	api := newKillAPI(&tandem.Job{ID: "j1", State: tandem.JobPending})
	var once sync.Once
	flaky := serve(t, rec, "flaky", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lost := false
		once.Do(func() { lost = true })
		if !lost {
			api.ServeHTTP(w, r)
			return
		}
		// Kill the job, then lose the answer: the retry finds it killed.
		api.ServeHTTP(httptest.NewRecorder(), r)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		conn.Close()
	}))
	c := newTestClient(t, rec, DefaultBackoff(), flaky.URL)
	job, err := c.KillJob(context.Background(), "j1")
	if err != nil {
		t.Fatalf("KillJob: got %v, want the job the first attempt killed", err)
	}
	if job.State != tandem.JobKilled {
		t.Errorf("got state %s, want killed", job.State)
	}
	if got := rec.hits("flaky"); got != 3 {
		t.Errorf("got %d requests, want 3 (kill, kill again, get)", got)
	}
}

func TestAgents(t *testing.T) {
	rec := &recorder{}
	want := []tandem.AgentStatus{{AgentInfo: tandem.AgentInfo{ID: "a1", Capacity: tandem.Resources{CPU: 4, MemoryMB: 8192}}, State: tandem.AgentReady, Running: []string{"x"}}}
	active := serve(t, rec, "active", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/cluster/agents" {
			writeError(w, tandem.Errorf(tandem.ENOTFOUND, "no route"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"agents": want})
	}))
	standby := serve(t, rec, "standby", redirectTo(func() string { return active.URL }))
	c := newTestClient(t, rec, DefaultBackoff(), serve(t, rec, "503", unavailable()).URL, standby.URL, active.URL)
	got, err := c.Agents(context.Background())
	if err != nil {
		t.Fatalf("Agents: %v", err)
	}
	if len(got) != 1 || got[0].ID != "a1" || got[0].Capacity.CPU != 4 || got[0].State != tandem.AgentReady {
		t.Errorf("got agents %+v, want a1 with 4 CPUs, ready", got)
	}
	if c.Current() != active.URL {
		t.Errorf("Current: got %s, want the active %s", c.Current(), active.URL)
	}

	empty := serve(t, rec, "empty", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{})
	}))
	c = newTestClient(t, rec, DefaultBackoff(), empty.URL)
	if got, err := c.Agents(context.Background()); err != nil || got == nil || len(got) != 0 {
		t.Errorf("got %v, %v, want an empty, non-nil list", got, err)
	}
}

// stateSequence answers GET /v1/jobs/j1 with the job in each state in turn,
// the last one for ever.
func stateSequence(states ...tandem.JobState) http.Handler {
	var mu sync.Mutex
	n := 0
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		s := states[min(n, len(states)-1)]
		n++
		mu.Unlock()
		writeJSON(w, http.StatusOK, &tandem.Job{ID: "j1", State: s, Reason: "because"})
	})
}

func TestWaitJob(t *testing.T) {
	rec := &recorder{}
	srv := serve(t, rec, "active", stateSequence(tandem.JobPending, tandem.JobRunning, tandem.JobRunning, tandem.JobFailed))
	c := newTestClient(t, rec, DefaultBackoff(), deadURL(t), srv.URL)
	job, err := c.WaitJob(context.Background(), "j1", 30*time.Millisecond)
	if err != nil {
		t.Fatalf("WaitJob: %v", err)
	}
	if job.State != tandem.JobFailed || job.Reason != "because" {
		t.Errorf("got %s (%q), want failed (because)", job.State, job.Reason)
	}
	events, _ := rec.snapshot()
	want := "active,sleep 30ms,active,sleep 30ms,active,sleep 30ms,active"
	if got := strings.Join(events, ","); got != want {
		t.Errorf("got events %s, want %s", got, want)
	}

	if _, err := c.WaitJob(context.Background(), "", 0); tandem.ErrorCode(err) != tandem.EINVALID {
		t.Errorf("WaitJob(\"\"): got %v, want invalid_argument", err)
	}
}

func TestWaitJobContextEnds(t *testing.T) {
	rec := &recorder{}
	srv := serve(t, rec, "active", stateSequence(tandem.JobRunning))
	c, err := New(Config{Servers: []string{srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	job, err := c.WaitJob(ctx, "j1", 10*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got error %v, want one wrapping context.DeadlineExceeded", err)
	}
	if job == nil || job.State != tandem.JobRunning {
		t.Errorf("got job %+v, want the last seen, running", job)
	}
	if rec.hits("active") < 2 {
		t.Errorf("got %d polls, want several", rec.hits("active"))
	}
}

// fullLog is the log the log tests serve: long enough to cut anywhere.
var fullLog = func() []byte {
	var b bytes.Buffer
	for i := range 2000 {
		fmt.Fprintf(&b, "line %d of the attempt's output\n", i)
	}
	return b.Bytes()
}()

// logJob is job j1 with one attempt, a1, whose log is fullLog.
type logJob struct {
	mu    sync.Mutex
	state tandem.AttemptState
}

func (l *logJob) setState(s tandem.AttemptState) {
	l.mu.Lock()
	l.state = s
	l.mu.Unlock()
}

func (l *logJob) job() *tandem.Job {
	l.mu.Lock()
	defer l.mu.Unlock()
	js := tandem.JobRunning
	if !l.state.Live() {
		js = tandem.JobSucceeded
	}
	return &tandem.Job{ID: "j1", State: js, Attempts: []tandem.Attempt{{ID: "a1", Number: 1, Agent: "ag1", State: l.state}}}
}

// logStyle says how a fake active serves a log request.
type logStyle int

const (
	logFull  logStyle = iota // everything from the offset, then a clean end
	logAbort                 // cut bytes from the offset, then the connection drops
	logHang                  // cut bytes from the offset, then nothing until the client gives up
)

// logActive serves job j1 and its log from ?offset, in the given style, and
// records the offsets it was asked for.
type logActive struct {
	job     *logJob
	style   logStyle
	cut     int
	mu      sync.Mutex
	offsets []string
	queries []string
}

func (a *logActive) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/jobs/j1":
		writeJSON(w, http.StatusOK, a.job.job())
		return
	case "/v1/jobs/j1/logs":
	default:
		writeError(w, tandem.Errorf(tandem.ENOTFOUND, "no route"))
		return
	}
	a.mu.Lock()
	a.offsets = append(a.offsets, r.URL.Query().Get("offset"))
	a.queries = append(a.queries, r.URL.RawQuery)
	a.mu.Unlock()
	off, _ := strconv.Atoi(r.URL.Query().Get("offset"))
	rest := fullLog[min(off, len(fullLog)):]
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set(attemptHeader, "a1")
	if a.style == logFull {
		w.Write(rest)
		return
	}
	w.Write(rest[:min(a.cut, len(rest))])
	http.NewResponseController(w).Flush()
	if a.style == logHang {
		<-r.Context().Done()
	}
	panic(http.ErrAbortHandler) // drop the connection mid-stream
}

func (a *logActive) asked() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.offsets...)
}

func TestJobLogs(t *testing.T) {
	rec := &recorder{}
	lj := &logJob{state: tandem.AttemptSucceeded}
	api := &logActive{job: lj, style: logFull}
	active := serve(t, rec, "active", api)
	standby := serve(t, rec, "standby", redirectTo(func() string { return active.URL }))
	c := newTestClient(t, rec, DefaultBackoff(), deadURL(t), standby.URL)

	body, err := c.JobLogs(context.Background(), "j1", LogOptions{Attempt: 1, Follow: true, Offset: 10})
	if err != nil {
		t.Fatalf("JobLogs: %v", err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil || !bytes.Equal(got, fullLog[10:]) {
		t.Errorf("got %d bytes (%v), want the %d bytes after offset 10", len(got), err, len(fullLog)-10)
	}
	if q := api.queries[0]; q != "attempt=1&follow=1&offset=10" {
		t.Errorf("got query %q, want attempt=1&follow=1&offset=10", q)
	}
	if c.Current() != standby.URL {
		t.Errorf("Current: got %s, want the standby that redirected to an unconfigured active", c.Current())
	}

	for _, opts := range []LogOptions{{Attempt: -1}, {Offset: -1}} {
		if _, err := c.JobLogs(context.Background(), "j1", opts); tandem.ErrorCode(err) != tandem.EINVALID {
			t.Errorf("JobLogs(%+v): got %v, want invalid_argument", opts, err)
		}
	}
}

func TestJobLogsErrors(t *testing.T) {
	tests := []struct {
		name     string
		err      *tandem.Error
		wantCode string
		wantHits int
	}{
		{"no attempts yet", tandem.Errorf(tandem.ENOTFOUND, "job j1 has no attempts yet (pending: no agent has room)"), tandem.ENOTFOUND, 1},
		{"agent unreachable", tandem.Errorf(tandem.EUNAVAILABLE, "agent ag1 at http://x is unreachable"), tandem.EUNAVAILABLE, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			srv := serve(t, rec, "active", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { writeError(w, tt.err) }))
			c := newTestClient(t, rec, Backoff{Base: time.Millisecond, Max: time.Millisecond, Attempts: 3}, srv.URL)
			_, err := c.JobLogs(context.Background(), "j1", LogOptions{})
			if got := tandem.ErrorCode(err); got != tt.wantCode || !strings.Contains(err.Error(), tt.err.Message) {
				t.Errorf("got %v (code %s), want %s with the server's message", err, got, tt.wantCode)
			}
			if got := rec.hits("active"); got != tt.wantHits {
				t.Errorf("got %d requests, want %d", got, tt.wantHits)
			}
		})
	}
}

func TestStreamOutlivesTheClientTimeout(t *testing.T) {
	// The HTTP client's timeout bounds waiting for a stream's headers, not
	// reading it: a followed log is read for as long as the attempt runs.
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for i := range 5 {
			fmt.Fprintf(w, "tick %d\n", i)
			http.NewResponseController(w).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	t.Cleanup(slow.Close)
	release := make(chan struct{})
	mute := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // no headers, ever
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(mute.Close)
	t.Cleanup(func() { close(release) })

	c, err := New(Config{Servers: []string{mute.URL, slow.URL}, HTTPClient: &http.Client{Timeout: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	body, err := c.JobLogs(context.Background(), "j1", LogOptions{Follow: true})
	if err != nil {
		t.Fatalf("JobLogs: got %v, want the slow server's stream after the mute one timed out", err)
	}
	defer body.Close()
	got, err := io.ReadAll(body)
	if err != nil || strings.Count(string(got), "tick") != 5 {
		t.Errorf("got %q, %v, want 5 ticks over 500ms", got, err)
	}
}

func TestFollowJobLogsSurvivesFailover(t *testing.T) {
	tests := []struct {
		name  string
		style logStyle
		ended bool // the attempt has ended by the time the stream breaks
	}{
		{"stream cut, attempt running", logAbort, false},
		{"stream cut, attempt ended", logAbort, true},
		{"active hangs", logHang, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			lj := &logJob{state: tandem.AttemptRunning}
			const cut = 12345
			first := &logActive{job: lj, style: tt.style, cut: cut}
			var mu sync.Mutex
			deposed := false
			// The first active streams part of the log and then dies (the
			// stream drops) or hangs; from then on it answers 503, as a
			// deposed server with no active known would.
			old := serve(t, rec, "old", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				d := deposed
				if strings.HasSuffix(r.URL.Path, "/logs") {
					deposed = true
				}
				mu.Unlock()
				if d {
					writeError(w, tandem.Errorf(tandem.ENOACTIVE, "no active server is known"))
					return
				}
				if tt.ended {
					lj.setState(tandem.AttemptSucceeded)
				}
				first.ServeHTTP(w, r)
			}))
			second := &logActive{job: lj, style: logFull}
			next := serve(t, rec, "new", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/logs") {
					// The attempt ends while its log is read from the new active.
					defer lj.setState(tandem.AttemptSucceeded)
				}
				second.ServeHTTP(w, r)
			}))
			c := newTestClient(t, rec, DefaultBackoff(), old.URL, next.URL)
			c.followCheck = 100 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			var out bytes.Buffer
			if err := c.FollowJobLogs(ctx, "j1", LogOptions{}, &out); err != nil {
				t.Fatalf("FollowJobLogs: %v", err)
			}
			if !bytes.Equal(out.Bytes(), fullLog) {
				t.Errorf("got %d bytes, want the %d bytes of the log exactly once", out.Len(), len(fullLog))
			}
			if got := first.asked(); len(got) != 1 || got[0] != "" {
				t.Errorf("got offsets %q asked of the first active, want one request from the start", got)
			}
			if got := second.asked(); len(got) == 0 || got[0] != strconv.Itoa(cut) {
				t.Errorf("got offsets %q asked of the new active, want the first at %d", got, cut)
			}
			for _, q := range second.queries {
				if !strings.Contains(q, "attempt=1") || !strings.Contains(q, "follow=1") {
					t.Errorf("got query %q on reconnecting, want it pinned to attempt 1 and following", q)
				}
			}
		})
	}
}

func TestFollowJobLogsEndsWithTheAttempt(t *testing.T) {
	rec := &recorder{}
	lj := &logJob{state: tandem.AttemptSucceeded}
	api := &logActive{job: lj, style: logFull}
	srv := serve(t, rec, "active", api)
	c := newTestClient(t, rec, DefaultBackoff(), srv.URL)
	var out bytes.Buffer
	if err := c.FollowJobLogs(context.Background(), "j1", LogOptions{Offset: 100}, &out); err != nil {
		t.Fatalf("FollowJobLogs: %v", err)
	}
	if !bytes.Equal(out.Bytes(), fullLog[100:]) {
		t.Errorf("got %d bytes, want the %d after offset 100", out.Len(), len(fullLog)-100)
	}
	// The stream, the job (ended), and one more stream from the end to make
	// sure nothing was missed.
	if got, want := api.asked(), []string{"100", strconv.Itoa(len(fullLog))}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("got offsets %q, want %q", got, want)
	}
}

func TestFollowJobLogsStopsOnContextAndWriteErrors(t *testing.T) {
	rec := &recorder{}
	lj := &logJob{state: tandem.AttemptRunning}
	srv := serve(t, rec, "active", &logActive{job: lj, style: logHang, cut: 10})
	c := newTestClient(t, rec, DefaultBackoff(), srv.URL)
	c.followCheck = 0 // no watchdog: only ctx ends the hung stream

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	err := c.FollowJobLogs(ctx, "j1", LogOptions{}, &out)
	if !errors.Is(err, context.DeadlineExceeded) || out.Len() != 10 {
		t.Errorf("got %v and %d bytes, want context.DeadlineExceeded and the 10 bytes sent", err, out.Len())
	}

	err = c.FollowJobLogs(context.Background(), "j1", LogOptions{}, failWriter{})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("got %v, want the write error", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }
