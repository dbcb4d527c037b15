package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
)

// fakeCluster is two fake servers speaking the HTTP API of docs/API.md: rm1
// the active, rm2 a standby that redirects job requests to it.
type fakeCluster struct {
	mu           sync.Mutex
	jobs         []*tandem.Job
	keys         []string // the Idempotency-Key of every POST /v1/jobs
	active       string   // the active's ID
	epoch        int64
	healthy      map[string]bool
	autoFailover bool
	urls         map[string]string // ID -> URL
	rm1, rm2     *httptest.Server
}

func newFakeCluster(t *testing.T) *fakeCluster {
	t.Helper()
	f := &fakeCluster{active: "rm1", epoch: 7, healthy: map[string]bool{"rm1": true, "rm2": true}, autoFailover: true}
	f.rm1 = httptest.NewServer(f.handler("rm1"))
	f.rm2 = httptest.NewServer(f.handler("rm2"))
	t.Cleanup(f.rm1.Close)
	t.Cleanup(f.rm2.Close)
	f.urls = map[string]string{"rm1": f.rm1.URL, "rm2": f.rm2.URL}
	return f
}

// recorded returns the jobs submitted so far and their idempotency keys.
func (f *fakeCluster) recorded() ([]*tandem.Job, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.jobs), slices.Clone(f.keys)
}

func (f *fakeCluster) servers() string { return f.rm1.URL + "," + f.rm2.URL }

func (f *fakeCluster) status(id string) tandem.ServerStatus {
	st := tandem.ServerStatus{ID: id, URL: f.urls[id], State: tandem.StateStandby, Epoch: f.epoch,
		ActiveID: f.active, ActiveURL: f.urls[f.active], AutoFailover: f.autoFailover}
	if id == f.active {
		st.State = tandem.StateActive
	}
	return st
}

func (f *fakeCluster) handler(id string) http.Handler {
	mux := http.NewServeMux()
	jobs := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			f.mu.Lock()
			active := f.active
			f.mu.Unlock()
			if id != active {
				http.Redirect(w, r, f.urls[active]+r.URL.RequestURI(), http.StatusTemporaryRedirect)
				return
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			h(w, r)
		}
	}
	mux.HandleFunc("POST /v1/jobs", jobs(func(w http.ResponseWriter, r *http.Request) {
		var spec tandem.JobSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			fakeError(w, tandem.Errorf(tandem.EINVALID, "%v", err))
			return
		}
		key := r.Header.Get(client.IdempotencyKeyHeader)
		f.keys = append(f.keys, key)
		job := &tandem.Job{ID: fmt.Sprintf("j%03d", len(f.jobs)+1), JobSpec: spec, State: tandem.JobPending,
			CreatedAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), Epoch: f.epoch, AcceptedBy: id, IdempotencyKey: key}
		f.jobs = append(f.jobs, job)
		fakeJSON(w, http.StatusCreated, job)
	}))
	mux.HandleFunc("GET /v1/jobs", jobs(func(w http.ResponseWriter, r *http.Request) {
		limit := 100
		if s := r.URL.Query().Get("limit"); s != "" {
			limit, _ = strconv.Atoi(s)
		}
		after := r.URL.Query().Get("after")
		list := tandem.JobList{Jobs: []*tandem.Job{}}
		for _, j := range f.jobs {
			if j.ID > after {
				list.Jobs = append(list.Jobs, j)
			}
		}
		if len(list.Jobs) > limit {
			list.Jobs = list.Jobs[:limit]
			list.Next = list.Jobs[limit-1].ID
		}
		fakeJSON(w, http.StatusOK, list)
	}))
	mux.HandleFunc("GET /v1/jobs/{id}", jobs(func(w http.ResponseWriter, r *http.Request) {
		for _, j := range f.jobs {
			if j.ID == r.PathValue("id") {
				fakeJSON(w, http.StatusOK, j)
				return
			}
		}
		fakeError(w, tandem.Errorf(tandem.ENOTFOUND, "job %q not found", r.PathValue("id")))
	}))
	mux.HandleFunc("GET /v1/cluster/servers", func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		var infos []tandem.ServerInfo
		for _, sid := range []string{"rm1", "rm2"} {
			st := f.status(sid)
			infos = append(infos, tandem.ServerInfo{ID: sid, URL: st.URL, State: st.State, PID: 100, Version: "v-test",
				StartedAt: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)})
		}
		fakeJSON(w, http.StatusOK, map[string]any{"servers": infos})
	})
	mux.HandleFunc("GET /v1/ha/state", func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		fakeJSON(w, http.StatusOK, f.status(id))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if !f.healthy[id] {
			fakeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "etcd unreachable"})
			return
		}
		fakeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/ha/history", func(w http.ResponseWriter, _ *http.Request) {
		d := 0.0123
		fakeJSON(w, http.StatusOK, map[string]any{"events": []tandem.FailoverEvent{
			{Epoch: 6, ActiveID: "rm1", Cause: tandem.CauseInitial, Time: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)},
			{Epoch: 7, ActiveID: "rm1", PrevID: "rm2", Cause: tandem.CauseLeaseExpired, DetectionS: &d, ElectionS: &d, TransitionS: &d},
		}})
	})
	mux.HandleFunc("POST /v1/ha/transition", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		var req tandem.TransitionRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			fakeError(w, tandem.Errorf(tandem.EINVALID, "%v", err))
			return
		}
		if f.autoFailover && !req.ForceManual {
			fakeError(w, tandem.Errorf(tandem.EREFUSED, "automatic failover is enabled for this cluster; refusing a manual transition, which could fight the election. Use --forcemanual if you are sure"))
			return
		}
		switch {
		case req.State == tandem.StateActive && f.active != id:
			f.active = id
			f.epoch++
		case req.State == tandem.StateStandby && f.active == id:
			f.active = ""
		}
		fakeJSON(w, http.StatusOK, f.status(id))
	})
	mux.HandleFunc("POST /v1/ha/failover", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		var req tandem.HandoffRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			fakeError(w, tandem.Errorf(tandem.EINVALID, "%v", err))
			return
		}
		if f.active != id || req.From != id {
			fakeError(w, tandem.Errorf(tandem.ECONFLICT, "%s is not the active", id))
			return
		}
		f.active = req.To
		f.epoch++
		fakeJSON(w, http.StatusOK, f.status(id))
	})
	return mux
}

func fakeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fakeError(w http.ResponseWriter, e *tandem.Error) {
	fakeJSON(w, tandem.HTTPStatus(e.Code), tandem.ErrorBody{Error: e})
}

// runCLI runs the tandem command line in-process and returns what it printed
// and its exit status, mapped from the error the way run maps it.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"--retry-base=1ms", "--retry-max=2ms", "--retry-attempts=5"}, args...))
	err := root.Execute()
	var ee *exitError
	var ue *usageError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.code
	case errors.As(err, &ue) || isCobraUsageError(err):
		code = 2
	default:
		code = 1
	}
	if err != nil {
		fmt.Fprintln(&errOut, "tandem:", err)
	}
	return out.String(), errOut.String(), code
}

func TestJobSubmit(t *testing.T) {
	f := newFakeCluster(t)
	t.Setenv("USER", "alice")

	out, errOut, code := runCLI(t, "--servers", f.servers(), "job", "submit", "--name", "n1", "--label", "team=data", "--label", "tier=a=b",
		"--env", "TZ=UTC", "--idempotency-key", "k1", "--", "ls", "-l", "/tmp")
	if code != 0 || out != "j001\n" {
		t.Fatalf("got %q, %q, exit %d, want the job ID and exit 0", out, errOut, code)
	}
	jobs, keys := f.recorded()
	job := jobs[0]
	want := tandem.JobSpec{Name: "n1", Command: []string{"ls", "-l", "/tmp"}, Labels: map[string]string{"team": "data", "tier": "a=b"},
		Env: map[string]string{"TZ": "UTC"}, Submitter: "alice"}
	if got, _ := json.Marshal(job.JobSpec); string(got) != mustJSON(t, want) {
		t.Errorf("got spec %s, want %s", got, mustJSON(t, want))
	}
	if job.IdempotencyKey != "k1" {
		t.Errorf("got key %q, want k1", job.IdempotencyKey)
	}

	// Without "--", the job's own flags still belong to the job; -o json
	// prints the job; a random key is sent.
	out, _, code = runCLI(t, "--servers", f.rm2.URL, "job", "submit", "--submitter", "bob", "-o", "json", "grep", "-r", "x")
	var got tandem.Job
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 {
		t.Fatalf("got %q (exit %d), want the job as JSON: %v", out, code, err)
	}
	if !slices.Equal(got.Command, []string{"grep", "-r", "x"}) || got.Submitter != "bob" || got.ID != "j002" {
		t.Errorf("got job %+v, want j002 running grep -r x submitted by bob", got)
	}
	_, keys = f.recorded()
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(keys[1]) {
		t.Errorf("got generated key %q, want 32 hex digits", keys[1])
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestUsageErrors(t *testing.T) {
	f := newFakeCluster(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{"job", "submit", "--name", "x"}, "no command given"},
		{"only a dash-dash", []string{"job", "submit", "--"}, "no command given"},
		{"label without =", []string{"job", "submit", "--label", "team", "--", "ls"}, `--label "team": want KEY=VALUE`},
		{"env without key", []string{"job", "submit", "--env", "=v", "--", "ls"}, `--env "=v": want KEY=VALUE`},
		{"bad output", []string{"job", "list", "-o", "yaml"}, `unknown output format "yaml": want table or json`},
		{"get without ID", []string{"job", "get"}, "accepts 1 arg"},
		{"get with two IDs", []string{"job", "get", "a", "b"}, "accepts 1 arg"},
		{"negative limit", []string{"job", "list", "--limit", "-1"}, "--limit is -1"},
		{"unknown subcommand", []string{"job", "kill"}, `unknown command "kill"`},
		{"failover with one server", []string{"admin", "failover", "rm1"}, "accepts 2 arg"},
		{"failover to itself", []string{"admin", "failover", "rm1", "rm1"}, "FROM and TO are the same server"},
		{"state of nobody", []string{"admin", "get-service-state"}, "accepts 1 arg"},
		{"unknown flag", []string{"admin", "servers", "--verbose"}, "unknown flag"},
		{"negative timeout", []string{"--timeout=-1s", "admin", "servers"}, "--timeout is -1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"--servers", f.servers()}, tt.args...)...)
			if code != 2 {
				t.Errorf("got exit %d, want 2 (usage)", code)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("got stderr %q, want it to contain %q", errOut, tt.want)
			}
			if out != "" {
				t.Errorf("got stdout %q, want nothing", out)
			}
		})
	}
	if jobs, _ := f.recorded(); len(jobs) != 0 {
		t.Errorf("got %d jobs submitted, want 0", len(jobs))
	}
}

func TestJobListAndGet(t *testing.T) {
	f := newFakeCluster(t)
	for i := range 5 {
		if _, _, code := runCLI(t, "--servers", f.servers(), "job", "submit", "--name", fmt.Sprint("n", i), "echo", "hello world"); code != 0 {
			t.Fatalf("submit: exit %d", code)
		}
	}

	out, errOut, code := runCLI(t, "--servers", f.servers(), "job", "list", "--limit", "2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("got %q (exit %d), want a header and 2 jobs", out, code)
	}
	if fields := strings.Fields(lines[0]); !slices.Equal(fields, []string{"ID", "NAME", "STATE", "CREATED", "COMMAND"}) {
		t.Errorf("got header %q, want ID NAME STATE CREATED COMMAND", lines[0])
	}
	if !strings.HasPrefix(lines[1], "j001") || !strings.Contains(lines[1], "pending") || !strings.HasSuffix(lines[1], "echo 'hello world'") {
		t.Errorf("got row %q, want j001 ... pending ... echo 'hello world'", lines[1])
	}
	if !strings.Contains(errOut, "--after j002") {
		t.Errorf("got stderr %q, want a hint to page on with --after j002", errOut)
	}

	out, _, code = runCLI(t, "--servers", f.servers(), "job", "list", "--limit", "2", "--all", "-o", "json")
	var list tandem.JobList
	if err := json.Unmarshal([]byte(out), &list); err != nil || code != 0 {
		t.Fatalf("got %q (exit %d), want a JSON job list: %v", out, code, err)
	}
	if len(list.Jobs) != 5 || list.Next != "" {
		t.Errorf("got %d jobs, next %q, want all 5 and no next", len(list.Jobs), list.Next)
	}

	out, _, code = runCLI(t, "--servers", f.servers(), "job", "list", "--after", "j004")
	if n := strings.Count(out, "\n"); code != 0 || n != 2 {
		t.Errorf("got %q, want a header and j005", out)
	}

	out, _, code = runCLI(t, "--servers", f.servers(), "job", "get", "j003")
	for _, want := range []string{"id:", "j003", "name:", "n2", "command:", "echo 'hello world'", "accepted-by:", "rm1", "epoch:", "7"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("got %q (exit %d), want it to contain %q", out, code, want)
		}
	}
	out, _, _ = runCLI(t, "--servers", f.servers(), "job", "get", "-o", "json", "j003")
	var job tandem.Job
	if err := json.Unmarshal([]byte(out), &job); err != nil || job.ID != "j003" {
		t.Errorf("got %q, want j003 as JSON", out)
	}

	_, errOut, code = runCLI(t, "--servers", f.servers(), "job", "get", "j999")
	if code != 1 || !strings.Contains(errOut, `job "j999" not found`) {
		t.Errorf("got %q, exit %d, want the server's not-found message and exit 1", errOut, code)
	}
}

func TestUnreachableClusterFails(t *testing.T) {
	_, errOut, code := runCLI(t, "--servers", "http://127.0.0.1:1", "job", "list")
	if code != 1 || !strings.Contains(errOut, "no active server answered after 5 attempts (http://127.0.0.1:1: connection refused)") {
		t.Errorf("got %q, exit %d, want the exhausted-attempts message and exit 1", errOut, code)
	}
}
