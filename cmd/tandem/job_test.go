package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
)

// fakeCluster is two fake servers speaking the HTTP API of docs/API.md: rm1
// the active, rm2 a standby that redirects job requests to it.
type fakeCluster struct {
	mu           sync.Mutex
	jobs         []*tandem.Job
	logs         map[string][]byte // attempt ID -> its log
	agents       []tandem.AgentStatus
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

// update changes the job with the given ID under the cluster's lock.
func (f *fakeCluster) update(t *testing.T, id string, change func(*tandem.Job)) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, j := range f.jobs {
		if j.ID == id {
			change(j)
			return
		}
	}
	t.Fatalf("no job %s", id)
}

// job returns the job with the given ID, or nil. The caller holds f.mu.
func (f *fakeCluster) job(id string) *tandem.Job {
	for _, j := range f.jobs {
		if j.ID == id {
			return j
		}
	}
	return nil
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
		if j := f.job(r.PathValue("id")); j != nil {
			fakeJSON(w, http.StatusOK, j)
			return
		}
		fakeError(w, tandem.Errorf(tandem.ENOTFOUND, "job %q not found", r.PathValue("id")))
	}))
	mux.HandleFunc("POST /v1/jobs/{id}/kill", jobs(func(w http.ResponseWriter, r *http.Request) {
		j := f.job(r.PathValue("id"))
		switch {
		case j == nil:
			fakeError(w, tandem.Errorf(tandem.ENOTFOUND, "job %q not found", r.PathValue("id")))
			return
		case j.State.Terminal():
			fakeError(w, tandem.Errorf(tandem.ECONFLICT, "job %s already ended %s", j.ID, j.State))
			return
		case j.State == tandem.JobPending:
			j.State, j.Reason = tandem.JobKilled, "killed before it ran"
		}
		j.KillRequested = true
		fakeJSON(w, http.StatusOK, j)
	}))
	mux.HandleFunc("GET /v1/jobs/{id}/logs", jobs(func(w http.ResponseWriter, r *http.Request) {
		j := f.job(r.PathValue("id"))
		if j == nil {
			fakeError(w, tandem.Errorf(tandem.ENOTFOUND, "job %q not found", r.PathValue("id")))
			return
		}
		if len(j.Attempts) == 0 {
			fakeError(w, tandem.Errorf(tandem.ENOTFOUND, "job %s has no attempts yet (%s: %s)", j.ID, j.State, j.Reason))
			return
		}
		n := len(j.Attempts)
		if v := r.URL.Query().Get("attempt"); v != "" {
			n, _ = strconv.Atoi(v)
		}
		if n < 1 || n > len(j.Attempts) {
			fakeError(w, tandem.Errorf(tandem.ENOTFOUND, "job %s has %d attempts, not %d", j.ID, len(j.Attempts), n))
			return
		}
		a := j.Attempts[n-1]
		log := f.logs[a.ID]
		off, _ := strconv.Atoi(r.URL.Query().Get("offset"))
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Tandem-Attempt", a.ID)
		w.Write(log[min(off, len(log)):])
	}))
	mux.HandleFunc("GET /v1/cluster/agents", jobs(func(w http.ResponseWriter, _ *http.Request) {
		fakeJSON(w, http.StatusOK, map[string]any{"agents": f.agents})
	}))
	mux.HandleFunc("GET /v1/cluster/servers", func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		var infos []tandem.ServerInfo
		for _, sid := range []string{"rm1", "rm2"} {
			st := f.status(sid)
			shards := 0
			if st.State == tandem.StateActive {
				shards = 1
			}
			infos = append(infos, tandem.ServerInfo{ID: sid, URL: st.URL, State: st.State, PID: 100, Version: "v-test",
				StartedAt: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), Ready: sid == "rm1", Shards: shards})
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
	return runRoot(t, newRootCmd(), args...)
}

// runRoot is runCLI for a given root command.
func runRoot(t *testing.T, root *cobra.Command, args ...string) (stdout, stderr string, code int) {
	t.Helper()
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
		{"unknown subcommand", []string{"job", "frobnicate"}, `unknown command "frobnicate"`},
		{"kill without ID", []string{"job", "kill"}, "accepts 1 arg"},
		{"negative cpu", []string{"job", "submit", "--cpu", "-1", "ls"}, "--cpu is -1"},
		{"zero cpu", []string{"job", "submit", "--cpu", "0", "ls"}, "--cpu is 0"},
		{"NaN cpu", []string{"job", "submit", "--cpu", "NaN", "ls"}, "--cpu is NaN"},
		{"cpu not a number", []string{"job", "submit", "--cpu", "two", "ls"}, `invalid argument "two" for "--cpu"`},
		{"zero memory", []string{"job", "submit", "--memory", "0", "ls"}, "--memory is 0"},
		{"zero max attempts", []string{"job", "submit", "--max-attempts", "0", "ls"}, "--max-attempts is 0: it must be from 1 to 100"},
		{"too many attempts", []string{"job", "submit", "--max-attempts", "101", "ls"}, "--max-attempts is 101"},
		{"bad timeout", []string{"job", "submit", "--timeout", "10", "ls"}, `invalid argument "10" for "--timeout"`},
		{"negative job timeout", []string{"job", "submit", "--timeout", "-1s", "ls"}, "--timeout is -1s: it must not be negative"},
		{"negative backoff", []string{"job", "submit", "--retry-backoff", "-1s", "ls"}, "--retry-backoff is -1s"},
		{"constraint without =", []string{"job", "submit", "--constraint", "zone", "ls"}, `--constraint "zone": want KEY=VALUE`},
		{"invalid spec", []string{"job", "submit", "--env", "A\x00=1", "ls"}, "job submit: env name"},
		{"zero poll", []string{"job", "wait", "--poll", "0s", "j1"}, "--poll is 0s"},
		{"negative attempt", []string{"job", "logs", "--attempt", "-1", "j1"}, "--attempt is -1"},
		{"logs without ID", []string{"job", "logs", "-f"}, "accepts 1 arg"},
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
	if fields := strings.Fields(lines[0]); !slices.Equal(fields, []string{"ID", "NAME", "STATE", "ATTEMPTS", "CREATED", "COMMAND", "REASON"}) {
		t.Errorf("got header %q, want ID NAME STATE ATTEMPTS CREATED COMMAND REASON", lines[0])
	}
	if !strings.HasPrefix(lines[1], "j001") || !strings.Contains(lines[1], "pending") || !strings.HasSuffix(lines[1], "echo 'hello world'  -") {
		t.Errorf("got row %q, want j001 ... pending ... echo 'hello world'  -", lines[1])
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

func TestJobSubmitSpecFlags(t *testing.T) {
	f := newFakeCluster(t)
	t.Setenv("USER", "alice")
	_, errOut, code := runCLI(t, "--servers", f.servers(), "job", "submit", "--timeout", "90s", "--max-attempts", "3", "--retry-backoff", "2s",
		"--cpu", "1.5", "--memory", "512", "--workdir", "/srv/w", "--constraint", "zone=a", "--constraint", "gpu=yes", "--env", "A=1", "--", "./run.sh", "--fast")
	if code != 0 {
		t.Fatalf("got exit %d (%s), want 0", code, errOut)
	}
	jobs, _ := f.recorded()
	want := tandem.JobSpec{Command: []string{"./run.sh", "--fast"}, Env: map[string]string{"A": "1"}, Submitter: "alice", WorkDir: "/srv/w",
		Timeout: tandem.Duration(90 * time.Second), MaxAttempts: 3, RetryBackoff: tandem.Duration(2 * time.Second),
		Resources: tandem.Resources{CPU: 1.5, MemoryMB: 512}, Constraints: map[string]string{"zone": "a", "gpu": "yes"}}
	if got := mustJSON(t, jobs[0].JobSpec); got != mustJSON(t, want) {
		t.Errorf("got spec %s, want %s", got, mustJSON(t, want))
	}

	// Flags not given leave their fields to the server's defaults.
	if _, _, code := runCLI(t, "--servers", f.servers(), "job", "submit", "true"); code != 0 {
		t.Fatalf("submit: exit %d", code)
	}
	jobs, _ = f.recorded()
	if s := jobs[1].JobSpec; s.Timeout != 0 || s.MaxAttempts != 0 || s.RetryBackoff != 0 || s.Resources != (tandem.Resources{}) || s.Constraints != nil {
		t.Errorf("got spec %+v, want every unset field zero", s)
	}
}

// writeFile writes content to a file in a test directory and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestJobSubmitFile(t *testing.T) {
	t.Setenv("USER", "alice")
	spec := writeFile(t, "etl.json", `{
  "name": "etl",
  "command": ["./etl.sh", "--full"],
  "env": {"TZ": "UTC", "DAY": "monday"},
  "submitter": "svc-etl",
  "timeout": "1h",
  "max_attempts": 2,
  "retry_backoff": 5,
  "resources": {"cpu": 2, "memory_mb": 4096},
  "constraints": {"zone": "a"}
}`)
	tests := []struct {
		name  string
		args  []string
		stdin string
		want  tandem.JobSpec
	}{
		{"file alone", []string{"--file", spec}, "", tandem.JobSpec{Name: "etl", Command: []string{"./etl.sh", "--full"},
			Env: map[string]string{"TZ": "UTC", "DAY": "monday"}, Submitter: "svc-etl", Timeout: tandem.Duration(time.Hour), MaxAttempts: 2,
			RetryBackoff: tandem.Duration(5 * time.Second), Resources: tandem.Resources{CPU: 2, MemoryMB: 4096}, Constraints: map[string]string{"zone": "a"}}},
		{"flags override", []string{"--file", spec, "--name", "etl2", "--env", "DAY=tuesday", "--cpu", "0.5", "--max-attempts", "1",
			"--submitter", "bob", "--constraint", "gpu=no", "--timeout", "0s", "--", "./other.sh"}, "",
			tandem.JobSpec{Name: "etl2", Command: []string{"./other.sh"}, Env: map[string]string{"TZ": "UTC", "DAY": "tuesday"}, Submitter: "bob",
				MaxAttempts: 1, RetryBackoff: tandem.Duration(5 * time.Second), Resources: tandem.Resources{CPU: 0.5, MemoryMB: 4096},
				Constraints: map[string]string{"zone": "a", "gpu": "no"}}},
		{"stdin", []string{"--file", "-"}, `{"command": ["echo", "hi"]}`, tandem.JobSpec{Command: []string{"echo", "hi"}, Submitter: "alice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCluster(t)
			root := newRootCmd()
			root.SetIn(strings.NewReader(tt.stdin))
			_, errOut, code := runRoot(t, root, append([]string{"--servers", f.servers(), "job", "submit"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("got exit %d (%s), want 0", code, errOut)
			}
			jobs, _ := f.recorded()
			if got := mustJSON(t, jobs[0].JobSpec); got != mustJSON(t, tt.want) {
				t.Errorf("got spec %s, want %s", got, mustJSON(t, tt.want))
			}
		})
	}
}

func TestJobSubmitFileErrors(t *testing.T) {
	f := newFakeCluster(t)
	tests := []struct {
		name, content string
		args          []string
		want          string
	}{
		{"unknown field", `{"command": ["ls"], "state": "running"}`, nil, `spec.json: unknown field "state"`},
		{"syntax", "{\n  \"command\": [\"ls\"],\n  \"name\": oops\n}", nil, "spec.json: line 3: invalid character 'o'"},
		{"wrong type", `{"command": "ls -l"}`, nil, "spec.json: command: want []string, got string"},
		{"bad duration", `{"command": ["ls"], "timeout": "soon"}`, nil, `invalid duration "soon"`},
		{"trailing data", `{"command": ["ls"]} {"command": ["rm"]}`, nil, "spec.json: unexpected data after the job spec"},
		{"empty", "", nil, "spec.json: the file is empty"},
		{"no command", `{"name": "x"}`, nil, "spec.json has none, and none follows the flags"},
		{"invalid field", `{"command": ["ls"], "max_attempts": 500}`, nil, "job submit: max_attempts must be from 1 to 100, not 500"},
		{"negative resources", `{"command": ["ls"], "resources": {"cpu": -1}}`, nil, "job submit: resources must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, "spec.json", tt.content)
			out, errOut, code := runCLI(t, append([]string{"--servers", f.servers(), "job", "submit", "--file", p}, tt.args...)...)
			if code != 2 || out != "" || !strings.Contains(errOut, tt.want) {
				t.Errorf("got %q, %q, exit %d, want exit 2 and a message containing %q", out, errOut, code, tt.want)
			}
		})
	}
	_, errOut, code := runCLI(t, "--servers", f.servers(), "job", "submit", "--file", filepath.Join(t.TempDir(), "missing.json"))
	if code != 2 || !strings.Contains(errOut, "missing.json: no such file") {
		t.Errorf("got %q, exit %d, want exit 2 naming the missing file", errOut, code)
	}
	if jobs, _ := f.recorded(); len(jobs) != 0 {
		t.Errorf("got %d jobs submitted, want 0", len(jobs))
	}
}

// withAttempts gives a job attempts as an agent would have run them.
func withAttempts(states ...tandem.AttemptState) func(*tandem.Job) {
	return func(j *tandem.Job) {
		start := time.Date(2030, 1, 2, 3, 4, 6, 0, time.UTC)
		for i, s := range states {
			a := tandem.Attempt{ID: fmt.Sprintf("%s-a%d", j.ID, i+1), Number: i + 1, Agent: "w1", State: s, StartedAt: &start}
			if !s.Live() {
				end := start.Add(time.Second)
				a.EndedAt = &end
			}
			switch s {
			case tandem.AttemptFailed:
				code := 3
				a.ExitCode, a.Reason = &code, "exit status 3"
			case tandem.AttemptSucceeded:
				code := 0
				a.ExitCode = &code
			case tandem.AttemptKilled:
				a.Signal, a.Reason = "SIGKILL", "killed by tandem job kill"
			}
			j.Attempts = append(j.Attempts, a)
		}
	}
}

func TestJobGetShowsAttempts(t *testing.T) {
	f := newFakeCluster(t)
	if _, _, code := runCLI(t, "--servers", f.servers(), "job", "submit", "--cpu", "0.5", "--memory", "256", "--timeout", "1m", "--max-attempts", "2", "false"); code != 0 {
		t.Fatalf("submit: exit %d", code)
	}
	long := strings.Repeat("the agent said no ", 10)
	f.update(t, "j001", withAttempts(tandem.AttemptFailed, tandem.AttemptSucceeded))
	f.update(t, "j001", func(j *tandem.Job) { j.State, j.Reason = tandem.JobSucceeded, long })

	out, errOut, code := runCLI(t, "--servers", f.servers(), "job", "get", "j001")
	if code != 0 {
		t.Fatalf("got exit %d (%s), want 0", code, errOut)
	}
	for _, want := range []string{"state:", "succeeded", "reason:", long, "resources:", "cpu 0.5, memory 256 MiB", "timeout:", "1m0s",
		"max-attempts:", "attempts:"} {
		if !strings.Contains(out, want) {
			t.Errorf("got %q, want it to contain %q", out, want)
		}
	}
	_, table, ok := strings.Cut(out, "\n\n")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if !ok || len(lines) != 3 {
		t.Fatalf("got %q, want the job, a blank line, and an attempts table of 2 rows", out)
	}
	if got := strings.Fields(lines[0]); !slices.Equal(got, []string{"#", "ID", "AGENT", "STATE", "STARTED", "ENDED", "EXIT/SIGNAL", "REASON"}) {
		t.Errorf("got attempts header %q", lines[0])
	}
	if got := strings.Fields(lines[1]); len(got) < 11 || got[0] != "1" || got[1] != "j001-a1" || got[2] != "w1" || got[3] != "failed" || got[8] != "3" || got[9] != "exit" {
		t.Errorf("got first attempt row %q, want 1 j001-a1 w1 failed ... 3 exit status 3", lines[1])
	}

	out, _, _ = runCLI(t, "--servers", f.servers(), "job", "get", "-o", "json", "j001")
	var job tandem.Job
	if err := json.Unmarshal([]byte(out), &job); err != nil || job.State != tandem.JobSucceeded || len(job.Attempts) != 2 || job.Reason != long {
		t.Errorf("got %q, want the whole job as JSON with its state, reason and 2 attempts", out)
	}

	out, _, _ = runCLI(t, "--servers", f.servers(), "job", "list")
	if !strings.Contains(out, "2/2") || strings.Contains(out, long) || !strings.Contains(out, "the agent sai…") {
		t.Errorf("got %q, want ATTEMPTS 2/2 and the reason cut short", out)
	}
}

func TestJobKill(t *testing.T) {
	f := newFakeCluster(t)
	for range 3 {
		if _, _, code := runCLI(t, "--servers", f.servers(), "job", "submit", "sleep", "100"); code != 0 {
			t.Fatalf("submit: exit %d", code)
		}
	}
	f.update(t, "j002", func(j *tandem.Job) { j.State = tandem.JobRunning })
	f.update(t, "j003", func(j *tandem.Job) { j.State = tandem.JobSucceeded })
	tests := []struct {
		id       string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"j001", "job j001 killed\n", "", 0},
		{"j002", "job j002: kill requested\n", "", 0},
		{"j003", "", "tandem: job j003 already ended succeeded", 1},
		{"j009", "", `job "j009" not found`, 1},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			// Through the standby: kill is redirected to the active.
			out, errOut, code := runCLI(t, "--servers", f.rm2.URL, "job", "kill", tt.id)
			if out != tt.wantOut || code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("got %q, %q, exit %d, want %q, %q, exit %d", out, errOut, code, tt.wantOut, tt.wantErr, tt.wantCode)
			}
		})
	}
	out, _, _ := runCLI(t, "--servers", f.servers(), "job", "kill", "-o", "json", "j002")
	var job tandem.Job
	if err := json.Unmarshal([]byte(out), &job); err != nil || !job.KillRequested || job.State != tandem.JobRunning {
		t.Errorf("got %q, want j002 as JSON, running with kill_requested", out)
	}
}

func TestJobWait(t *testing.T) {
	f := newFakeCluster(t)
	for range 5 {
		if _, _, code := runCLI(t, "--servers", f.servers(), "job", "submit", "true"); code != 0 {
			t.Fatalf("submit: exit %d", code)
		}
	}
	f.update(t, "j001", func(j *tandem.Job) { j.State = tandem.JobSucceeded })
	f.update(t, "j002", func(j *tandem.Job) { j.State, j.Reason = tandem.JobFailed, "attempt 2 of 2 failed: exit status 3" })
	f.update(t, "j003", func(j *tandem.Job) { j.State, j.Reason = tandem.JobLost, "agent w1 was lost" })
	f.update(t, "j004", func(j *tandem.Job) { j.State = tandem.JobRunning })
	f.update(t, "j005", func(j *tandem.Job) { j.State = tandem.JobRunning })
	time.AfterFunc(300*time.Millisecond, func() {
		f.update(t, "j005", func(j *tandem.Job) { j.State, j.Reason = tandem.JobKilled, "killed by a user" })
	})
	tests := []struct {
		name     string
		args     []string
		wantErr  string
		wantCode int
	}{
		{"succeeded", []string{"job", "wait", "j001"}, "", 0},
		{"failed", []string{"job", "wait", "j002"}, "tandem: job j002 failed: attempt 2 of 2 failed: exit status 3\n", 1},
		{"lost", []string{"job", "wait", "j003"}, "tandem: job j003 lost: agent w1 was lost\n", 1},
		{"timeout", []string{"--timeout", "300ms", "job", "wait", "--poll", "50ms", "j004"}, "tandem: job j004 is still running after --timeout 300ms\n", 1},
		{"ends while waiting", []string{"--timeout", "0", "job", "wait", "--poll", "20ms", "j005"}, "tandem: job j005 killed: killed by a user\n", 1},
		{"unknown", []string{"job", "wait", "j009"}, `tandem: job "j009" not found`, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"--servers", f.servers()}, tt.args...)...)
			if out != "" || code != tt.wantCode || (tt.wantErr == "" && errOut != "") || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("got %q, %q, exit %d, want nothing, %q, exit %d", out, errOut, code, tt.wantErr, tt.wantCode)
			}
		})
	}
	out, _, code := runCLI(t, "--servers", f.servers(), "job", "wait", "-o", "json", "j002")
	var job tandem.Job
	if err := json.Unmarshal([]byte(out), &job); err != nil || code != 1 || job.State != tandem.JobFailed {
		t.Errorf("got %q, exit %d, want the failed job as JSON and exit 1", out, code)
	}
}

func TestJobLogs(t *testing.T) {
	f := newFakeCluster(t)
	for range 2 {
		if _, _, code := runCLI(t, "--servers", f.servers(), "job", "submit", "./run.sh"); code != 0 {
			t.Fatalf("submit: exit %d", code)
		}
	}
	f.update(t, "j001", withAttempts(tandem.AttemptFailed, tandem.AttemptSucceeded))
	f.update(t, "j001", func(j *tandem.Job) { j.State = tandem.JobSucceeded })
	f.update(t, "j002", func(j *tandem.Job) { j.Reason = "no agent has 4 CPUs free" })
	f.mu.Lock()
	f.logs = map[string][]byte{"j001-a1": []byte("first try\nerror: boom\n"), "j001-a2": []byte("second try\nok\n")}
	f.mu.Unlock()
	tests := []struct {
		name     string
		args     []string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"latest", []string{"j001"}, "second try\nok\n", "", 0},
		{"first", []string{"--attempt", "1", "j001"}, "first try\nerror: boom\n", "", 0},
		{"follow", []string{"-f", "j001"}, "second try\nok\n", "", 0},
		{"follow first", []string{"--follow", "--attempt", "1", "j001"}, "first try\nerror: boom\n", "", 0},
		{"no such attempt", []string{"--attempt", "3", "j001"}, "", "job j001 has 2 attempts, not 3", 1},
		{"not started", []string{"j002"}, "", "job j002 has no attempts yet (pending: no agent has 4 CPUs free)", 1},
		{"not started, follow", []string{"-f", "j002"}, "", "job j002 has no attempts yet", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"--servers", f.servers(), "job", "logs"}, tt.args...)...)
			if out != tt.wantOut || code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("got %q, %q, exit %d, want %q, %q, exit %d", out, errOut, code, tt.wantOut, tt.wantErr, tt.wantCode)
			}
		})
	}
}

func TestAgentList(t *testing.T) {
	f := newFakeCluster(t)
	f.agents = []tandem.AgentStatus{
		{AgentInfo: tandem.AgentInfo{ID: "w2", URL: "http://10.0.0.2:7300", Capacity: tandem.Resources{CPU: 8, MemoryMB: 16384}},
			State: tandem.AgentLost, LastContact: time.Now().Add(-90 * time.Second)},
		{AgentInfo: tandem.AgentInfo{ID: "w1", URL: "http://10.0.0.1:7300", Capacity: tandem.Resources{CPU: 4, MemoryMB: 8192}},
			State: tandem.AgentReady, Used: tandem.Resources{CPU: 0.1 + 0.2, MemoryMB: 128}, Running: []string{"a1", "a2"},
			LastContact: time.Now().Add(-120 * time.Millisecond)},
		{AgentInfo: tandem.AgentInfo{ID: "w3"}, State: tandem.AgentReady},
	}
	root := &cobra.Command{Use: "tandem", SilenceUsage: true, SilenceErrors: true}
	g := &globals{}
	g.register(root)
	agent := &cobra.Command{Use: "agent"}
	agent.AddCommand(newAgentListCmd(g))
	root.AddCommand(agent)

	out, errOut, code := runRoot(t, root, "--servers", f.servers(), "agent", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 4 {
		t.Fatalf("got %q, %q, exit %d, want a header and 3 agents", out, errOut, code)
	}
	want := [][]string{
		{"ID", "URL", "STATE", "CPU", "MEMORY(MiB)", "RUNNING", "LAST-CONTACT"},
		{"w1", "http://10.0.0.1:7300", "ready", "0.3/4", "128/8192", "2", "*ms", "ago"},
		{"w2", "http://10.0.0.2:7300", "lost", "0/8", "0/16384", "0", "1m30s", "ago"},
		{"w3", "-", "ready", "0/0", "0/0", "0", "-"},
	}
	for i, w := range want {
		got := strings.Fields(lines[i])
		match := len(got) == len(w)
		for j := 0; match && j < len(w); j++ {
			if p, ok := strings.CutPrefix(w[j], "*"); ok {
				match = strings.HasSuffix(got[j], p)
			} else {
				match = got[j] == w[j]
			}
		}
		if !match {
			t.Errorf("line %d: got %q, want %q", i, got, w)
		}
	}

	root = &cobra.Command{Use: "tandem", SilenceUsage: true, SilenceErrors: true}
	g = &globals{}
	g.register(root)
	root.AddCommand(newAgentListCmd(g))
	out, _, code = runRoot(t, root, "--servers", f.rm2.URL, "list", "-o", "json")
	var agents []tandem.AgentStatus
	if err := json.Unmarshal([]byte(out), &agents); err != nil || code != 0 || len(agents) != 3 || agents[0].ID != "w1" || len(agents[0].Running) != 2 {
		t.Errorf("got %q (exit %d), want the 3 agents as JSON, sorted by ID", out, code)
	}
}

func TestJobSubmitUser(t *testing.T) {
	f := newFakeCluster(t)
	spec := writeFile(t, "spec.json", `{"command": ["id", "-u"], "user": "www-data"}`)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"flag", []string{"--user", "nobody", "id", "-u"}, "nobody"},
		{"file", []string{"--file", spec}, "www-data"},
		{"flag overrides file", []string{"--file", spec, "--user", "nobody"}, "nobody"},
		{"none", []string{"id", "-u"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := f.recorded()
			if _, errOut, code := runCLI(t, append([]string{"--servers", f.servers(), "job", "submit"}, tt.args...)...); code != 0 {
				t.Fatalf("got exit %d (%s), want 0", code, errOut)
			}
			jobs, _ := f.recorded()
			if len(jobs) != len(before)+1 {
				t.Fatalf("got %d jobs, want %d", len(jobs), len(before)+1)
			}
			if got := jobs[len(jobs)-1].User; got != tt.want {
				t.Errorf("got user %q, want %q", got, tt.want)
			}
		})
	}
	n, _ := f.recorded()
	for _, bad := range []string{"no body", "65534", "-x"} {
		out, errOut, code := runCLI(t, "--servers", f.servers(), "job", "submit", "--user", bad, "true")
		if code != 2 || out != "" || !strings.Contains(errOut, "job submit: user") {
			t.Errorf("--user %q: got %q, %q, exit %d, want exit 2 and a message about the user", bad, out, errOut, code)
		}
	}
	if jobs, _ := f.recorded(); len(jobs) != len(n) {
		t.Errorf("got %d jobs after invalid users, want %d", len(jobs), len(n))
	}
}
