package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/workflow"
)

// fakeWorkflows is one fake server speaking the workflow routes of
// docs/API.md, plus GET /v1/jobs and POST /v1/schedules, recording every
// request. advance, when set, changes a run on each GET of it (to drive
// --wait).
type fakeWorkflows struct {
	mu      sync.Mutex
	runs    []*tandem.Workflow
	reqs    []string // "METHOD /path?query"
	keys    []string // Idempotency-Key of each POST /v1/workflows
	bodies  []string // every request body
	advance func(*tandem.Workflow)
	srv     *httptest.Server
}

func newFakeWorkflows(t *testing.T) *fakeWorkflows {
	t.Helper()
	f := &fakeWorkflows{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/workflows", func(w http.ResponseWriter, r *http.Request) {
		var spec tandem.WorkflowSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			fakeError(w, tandem.Errorf(tandem.EINVALID, "%v", err))
			return
		}
		f.keys = append(f.keys, r.Header.Get(client.IdempotencyKeyHeader))
		wf := &tandem.Workflow{ID: fmt.Sprintf("w%03d", len(f.runs)+1), WorkflowSpec: spec, State: tandem.WorkflowRunning,
			CreatedAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), Epoch: 7}
		f.runs = append(f.runs, wf)
		fakeJSON(w, http.StatusCreated, wf)
	})
	mux.HandleFunc("GET /v1/workflows", func(w http.ResponseWriter, r *http.Request) {
		out := []*tandem.Workflow{}
		for _, wf := range f.runs {
			if s := r.URL.Query().Get("state"); s == "" || string(wf.State) == s {
				out = append(out, wf)
			}
		}
		fakeJSON(w, http.StatusOK, map[string]any{"workflows": out, "next": ""})
	})
	mux.HandleFunc("GET /v1/workflows/{id}", func(w http.ResponseWriter, r *http.Request) {
		wf := f.run(r.PathValue("id"))
		if wf == nil {
			fakeError(w, tandem.Errorf(tandem.ENOTFOUND, "workflow %q not found", r.PathValue("id")))
			return
		}
		if f.advance != nil {
			f.advance(wf)
		}
		fakeJSON(w, http.StatusOK, wf)
	})
	mux.HandleFunc("POST /v1/workflows/{id}/{action}", func(w http.ResponseWriter, r *http.Request) {
		wf := f.run(r.PathValue("id"))
		switch {
		case wf == nil:
			fakeError(w, tandem.Errorf(tandem.ENOTFOUND, "workflow %q not found", r.PathValue("id")))
			return
		case r.PathValue("action") == "cancel":
			if !wf.State.Terminal() {
				wf.Cancelled = true
			}
		case r.PathValue("action") == "retry":
			if !wf.State.Terminal() || wf.State == tandem.WorkflowSucceeded {
				fakeError(w, tandem.Errorf(tandem.ECONFLICT, "workflow %s is %s: only a failed or cancelled run can be retried", wf.ID, wf.State))
				return
			}
			wf.State, wf.Retried = tandem.WorkflowRunning, wf.Retried+1
		}
		fakeJSON(w, http.StatusOK, wf)
	})
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, _ *http.Request) {
		fakeJSON(w, http.StatusOK, tandem.JobList{Jobs: []*tandem.Job{{ID: "j001", JobSpec: tandem.JobSpec{Name: "b", Command: []string{"true"}},
			State: tandem.JobSucceeded, WorkflowID: "w001", Step: "b"}}})
	})
	mux.HandleFunc("POST /v1/schedules", func(w http.ResponseWriter, r *http.Request) {
		var spec tandem.ScheduleSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			fakeError(w, tandem.Errorf(tandem.EINVALID, "%v", err))
			return
		}
		fakeJSON(w, http.StatusCreated, &tandem.Schedule{ID: "s001", ScheduleSpec: spec})
	})
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		var body strings.Builder
		if r.Body != nil {
			b := make([]byte, 1<<20)
			n, _ := r.Body.Read(b)
			body.Write(b[:n])
			r.Body = http.NoBody
			if n > 0 {
				r.Body = readCloser{strings.NewReader(body.String())}
			}
		}
		f.reqs = append(f.reqs, r.Method+" "+r.URL.RequestURI())
		f.bodies = append(f.bodies, body.String())
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

// run returns run id, or nil; the caller holds f.mu.
func (f *fakeWorkflows) run(id string) *tandem.Workflow {
	for _, wf := range f.runs {
		if wf.ID == id {
			return wf
		}
	}
	return nil
}

func (f *fakeWorkflows) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

func (f *fakeWorkflows) cli(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runCLI(t, append([]string{"--servers", f.srv.URL}, args...)...)
}

const diamondJSON = `{
  "name": "diamond",
  "params": {"day": "2030-01-01", "env": "staging"},
  "steps": [
    {"name": "a", "job": {"command": ["sh", "-c", "echo rows=42 >> \"$TANDEM_OUTPUTS\""]}},
    {"name": "b", "needs": ["a"], "retries": 2, "timeout": "5m", "job": {"command": ["echo", "${steps.a.outputs.rows}"]}},
    {"name": "c", "needs": ["a"], "when": "params.env == 'prod'", "job": {"command": ["echo", "${params.day}"]}},
    {"name": "d", "needs": ["b", "c"], "trigger": "none_failed", "job": {"command": ["echo", "done"]}}
  ]
}`

const diamondYAML = `# the same diamond, in YAML
name: diamond
params:
  day: "2030-01-01"
  env: staging
steps:
  - name: a
    job:
      command: [sh, -c, 'echo rows=42 >> "$TANDEM_OUTPUTS"']
  - name: b
    needs: [a]
    retries: 2
    timeout: 5m
    job:
      command: [echo, "${steps.a.outputs.rows}"]
  - name: c
    needs: [a]
    when: params.env == 'prod'
    job:
      command: [echo, "${params.day}"]
  - name: d
    needs: [b, c]
    trigger: none_failed
    job:
      command: [echo, done]
`

func TestWorkflowRun(t *testing.T) {
	f := newFakeWorkflows(t)
	jsonFile := writeFile(t, "diamond.json", diamondJSON)
	yamlFile := writeFile(t, "diamond.yaml", diamondYAML)

	out, errOut, code := f.cli(t, "workflow", "run", "-f", jsonFile, "--param", "day=2030-01-02", "--param", "extra=x=y",
		"--name", "nightly", "--idempotency-key", "k-1")
	if code != 0 || out != "w001\n" {
		t.Fatalf("run: exit %d, stdout %q, stderr %q; want 0 and the run's ID", code, out, errOut)
	}
	out, errOut, code = f.cli(t, "workflow", "run", yamlFile, "-o", "json")
	if code != 0 {
		t.Fatalf("run YAML: exit %d, stderr %q", code, errOut)
	}
	var got tandem.Workflow
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.ID != "w002" {
		t.Fatalf("run -o json: got %q (%v), want the run w002 as JSON", out, err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	first, second := f.runs[0], f.runs[1]
	if first.Name != "nightly" || !reflect.DeepEqual(first.Params, map[string]string{"day": "2030-01-02", "env": "staging", "extra": "x=y"}) {
		t.Errorf("got name %q params %v, want nightly and the file's params with --param applied", first.Name, first.Params)
	}
	if f.keys[0] != "k-1" || f.keys[1] == "" || f.keys[1] == "k-1" {
		t.Errorf("got keys %q, want k-1 then a generated one", f.keys)
	}
	// The YAML file is the JSON one: same steps, jobs decoded alike.
	if second.Name != "diamond" || len(second.Steps) != 4 || second.Params["day"] != "2030-01-01" {
		t.Fatalf("YAML run: got %+v", second.WorkflowSpec)
	}
	for i := range first.Steps {
		a, b := first.Steps[i], second.Steps[i]
		var ja, jb tandem.JobSpec
		if json.Unmarshal(a.Job, &ja) != nil || json.Unmarshal(b.Job, &jb) != nil || !reflect.DeepEqual(ja, jb) {
			t.Errorf("step %d: JSON job %s, YAML job %s; want the same", i, a.Job, b.Job)
		}
		a.Job, b.Job = nil, nil
		if !reflect.DeepEqual(a, b) {
			t.Errorf("step %d: JSON %+v, YAML %+v; want the same", i, a, b)
		}
	}
	if second.Steps[1].Timeout != tandem.Duration(5*time.Minute) || second.Steps[3].Trigger != "none_failed" {
		t.Errorf("got steps %+v, want b's timeout and d's trigger", second.Steps)
	}
}

func TestWorkflowRunFromStdin(t *testing.T) {
	for _, tt := range []struct{ name, input string }{{"json", diamondJSON}, {"yaml", diamondYAML}} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeWorkflows(t)
			root := newRootCmd()
			root.SetIn(strings.NewReader(tt.input))
			out, errOut, code := runRoot(t, root, "--servers", f.srv.URL, "workflow", "run", "-")
			if code != 0 || out != "w001\n" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and w001", code, out, errOut)
			}
		})
	}
}

// Bad input to tandem workflow run: exit 2 with the reason, nothing sent.
func TestWorkflowRunUsageErrors(t *testing.T) {
	step := func(name, rest string) string {
		return `{"name": "` + name + `", "job": {"command": ["true"]}` + rest + `}`
	}
	spec := func(steps ...string) string { return `{"name": "w", "steps": [` + strings.Join(steps, ",") + `]}` }
	for _, tt := range []struct {
		name    string
		content string // the file's; "" gives no file
		args    []string
		want    string
	}{
		{"no file", "", nil, "no workflow given"},
		{"file twice", spec(step("a", "")), []string{"other.json"}, "not both"},
		{"missing file", "", []string{"-f", "/nonexistent/w.json"}, "no such file"},
		{"empty file", " \n", nil, "is empty"},
		{"malformed JSON", "{\n\"name\": \"w\",\n\"steps\": [\n", nil, "line 4"},
		{"unknown field", `{"name": "w", "stpes": []}`, nil, `unknown field "stpes"`},
		{"wrong type", `{"name": "w", "steps": [{"name": "a", "retries": "two"}]}`, nil, "steps.retries"},
		{"trailing data", spec(step("a", "")) + " {}", nil, "unexpected data after the workflow spec"},
		{"no steps", `{"name": "w", "steps": []}`, nil, "has no steps"},
		{"cycle", spec(step("a", `, "needs": ["b"]`), step("b", `, "needs": ["a"]`)), nil, "steps form a cycle"},
		{"missing need", spec(step("a", `, "needs": ["z"]`)), nil, `step "a" needs "z", which is not a step of this workflow`},
		{"bad trigger", spec(step("a", `, "trigger": "sometimes"`)), nil, `unknown trigger rule "sometimes"`},
		{"bad condition", spec(step("a", `, "when": "params.x =="`)), nil, `step "a"`},
		{"unknown param", spec(`{"name": "a", "job": {"command": ["echo", "${params.nope}"]}}`), nil, "nope"},
		{"bad job", spec(`{"name": "a", "job": {"command": []}}`), nil, `step "a": job`},
		{"bad param flag", spec(step("a", "")), []string{"--param", "novalue"}, `--param "novalue": want KEY=VALUE`},
		{"bad param name", spec(step("a", "")), []string{"--param", "9x=1"}, "9x"},
		{"bad poll", spec(step("a", "")), []string{"--wait", "--poll", "0s"}, "--poll is 0s"},
		{"yaml syntax", "name: w\nsteps: [\n", []string{"--yaml-file"}, "yaml: line"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeWorkflows(t)
			args := []string{"workflow", "run"}
			rest := tt.args
			if tt.content != "" {
				name := "w.json"
				if slices.Contains(rest, "--yaml-file") {
					name, rest = "w.yml", slices.DeleteFunc(slices.Clone(rest), func(s string) bool { return s == "--yaml-file" })
				}
				args = append(args, "-f", writeFile(t, name, tt.content))
			}
			out, errOut, code := f.cli(t, append(args, rest...)...)
			if code != 2 || !strings.Contains(errOut, tt.want) || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2 and %q", code, out, errOut, tt.want)
			}
			if reqs := f.requests(); len(reqs) != 0 {
				t.Errorf("sent %v, want nothing", reqs)
			}
		})
	}
}

func TestWorkflowRunWait(t *testing.T) {
	for _, tt := range []struct {
		name     string
		end      tandem.WorkflowState
		wantCode int
		wantErr  string
	}{
		{"succeeded", tandem.WorkflowSucceeded, 0, "workflow w001 succeeded"},
		{"failed", tandem.WorkflowFailed, 1, "workflow w001 failed: step b failed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeWorkflows(t)
			gets := 0
			f.advance = func(wf *tandem.Workflow) {
				gets++
				switch gets {
				case 1:
					wf.Progress = map[string]tandem.StepRun{"a": {State: tandem.StepRunning, Attempt: 1, JobID: "j1"}}
				case 2:
					wf.Progress = map[string]tandem.StepRun{"a": {State: tandem.StepSucceeded, Attempt: 1, JobID: "j1"},
						"b": {State: tandem.StepRunning, Attempt: 1, JobID: "j2"}}
				default:
					b := tandem.StepRun{State: tandem.StepSucceeded, Attempt: 1, JobID: "j2"}
					wf.Reason = ""
					if tt.end == tandem.WorkflowFailed {
						b = tandem.StepRun{State: tandem.StepFailed, Attempt: 1, JobID: "j2", Reason: "job j2: exit status 1"}
						wf.Reason = "step b failed"
					}
					wf.Progress = map[string]tandem.StepRun{"a": {State: tandem.StepSucceeded, Attempt: 1, JobID: "j1"}, "b": b}
					wf.State = tt.end
				}
			}
			file := writeFile(t, "w.json", `{"name": "w", "steps": [{"name": "a", "job": {"command": ["true"]}},
				{"name": "b", "needs": ["a"], "job": {"command": ["true"]}}]}`)
			out, errOut, code := f.cli(t, "workflow", "run", "-f", file, "--wait", "--poll", "1ms")
			if code != tt.wantCode || out != "w001\n" || !strings.Contains(errOut, tt.wantErr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, the ID, and %q", code, out, errOut, tt.wantCode, tt.wantErr)
			}
			// Each change of a step is said once, in order.
			var changes []string
			for line := range strings.SplitSeq(errOut, "\n") {
				if _, rest, ok := strings.Cut(line, "  "); ok {
					changes = append(changes, rest)
				}
			}
			want := []string{"a: running (attempt 1, job j1)", "a: succeeded (attempt 1, job j1)",
				"b: running (attempt 1, job j2)"}
			if tt.end == tandem.WorkflowSucceeded {
				want = append(want, "b: succeeded (attempt 1, job j2)")
			} else {
				want = append(want, "b: failed (attempt 1, job j2: exit status 1)")
			}
			if !slices.Equal(changes, want) {
				t.Errorf("got progress\n%s\nwant\n%s", strings.Join(changes, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// diamondRun is the diamond of diamondJSON after a failure of b: a
// succeeded, b failed after its retries, c skipped by its condition, d
// upstream_failed.
func diamondRun(t *testing.T) *tandem.Workflow {
	t.Helper()
	var spec tandem.WorkflowSpec
	if err := json.Unmarshal([]byte(diamondJSON), &spec); err != nil {
		t.Fatal(err)
	}
	ended := time.Date(2030, 1, 2, 3, 9, 0, 0, time.UTC)
	return &tandem.Workflow{ID: "w001", WorkflowSpec: spec, State: tandem.WorkflowFailed, Reason: "step b failed",
		CreatedAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), EndedAt: &ended, Epoch: 7, Shard: 0,
		Progress: map[string]tandem.StepRun{
			"a": {State: tandem.StepSucceeded, Attempt: 1, JobID: "j1", Jobs: []string{"j1"}, Outputs: map[string]string{"rows": "42"}},
			"b": {State: tandem.StepFailed, Attempt: 3, JobID: "j4", Jobs: []string{"j2", "j3", "j4"}, Reason: "exit status 1"},
			"c": {State: tandem.StepSkipped, Reason: "condition is false: params.env == 'prod'"},
			"d": {State: tandem.StepUpstreamFailed, Reason: "b failed"},
		}}
}

func TestWorkflowGet(t *testing.T) {
	f := newFakeWorkflows(t)
	f.runs = append(f.runs, diamondRun(t))
	out, errOut, code := f.cli(t, "workflow", "get", "w001")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		"state:            failed",
		"reason:           step b failed",
		"params:           day=2030-01-01 env=staging",
		"steps:            4 (1 succeeded, 1 failed, 1 skipped, 1 upstream_failed)",
		// The graph, from a: d under b in full, and again under c.
		"a [succeeded]\n├── b [failed]\n│   └── d [upstream_failed]\n└── c [skipped]\n    └── d (*)\n(*) drawn in full above",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The steps' table, in canonical order, state as text.
	var rows [][]string
	for line := range strings.SplitSeq(out[strings.Index(out, "STEP "):], "\n") {
		if fields := strings.Fields(line); len(fields) > 0 {
			rows = append(rows, fields)
		}
	}
	want := [][]string{
		{"a", "-", "all_success", "-", "succeeded", "1/1", "j1", "-", "rows=42"},
		{"b", "a", "all_success", "-", "failed", "3/3", "j4", "exit", "status", "1", "-"},
		{"c", "a", "all_success", "params.env", "==", "'prod'", "skipped", "-", "-", "condition", "is", "false:", "params.env", "==", "'prod'", "-"},
		{"d", "b,c", "none_failed", "-", "upstream_failed", "-", "-", "b", "failed", "-"},
	}
	if len(rows) != 5 || !reflect.DeepEqual(rows[1:], want) {
		t.Errorf("got step rows\n%v\nwant\n%v", rows, want)
	}

	out, _, code = f.cli(t, "workflow", "get", "w001", "-o", "json")
	var got tandem.Workflow
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.Progress["b"].Attempt != 3 {
		t.Errorf("-o json: exit %d, got %q; want the run", code, out)
	}
	if _, errOut, code := f.cli(t, "workflow", "get", "w404"); code != 1 || !strings.Contains(errOut, `workflow "w404" not found`) {
		t.Errorf("unknown run: exit %d, stderr %q; want 1 and not found", code, errOut)
	}
	if _, errOut, code := f.cli(t, "workflow", "get"); code != 2 || !strings.Contains(errOut, "accepts 1 arg") {
		t.Errorf("no ID: exit %d, stderr %q; want 2", code, errOut)
	}
}

func TestStepOrderAndDrawing(t *testing.T) {
	job := json.RawMessage(`{"command":["true"]}`)
	steps := func(needs map[string][]string, names ...string) []tandem.WorkflowStep {
		var out []tandem.WorkflowStep
		for _, n := range names {
			out = append(out, tandem.WorkflowStep{Name: n, Job: job, Needs: needs[n]})
		}
		return out
	}
	for _, tt := range []struct {
		name  string
		spec  tandem.WorkflowSpec
		order []string
		draw  string
	}{
		{"one step", tandem.WorkflowSpec{Steps: steps(nil, "only")}, []string{"only"}, "only [pending]"},
		// The order depends on the graph, not on the order in the spec.
		{"two roots", tandem.WorkflowSpec{Steps: steps(map[string][]string{"z": {"y"}, "b": {"y", "x"}}, "z", "y", "x", "b")},
			[]string{"x", "y", "b", "z"}, "x [pending]\n└── b [pending]\ny [pending]\n├── b (*)\n└── z [pending]\n(*) drawn in full above"},
		// Never in a stored run, but shown rather than lost.
		{"cycle", tandem.WorkflowSpec{Steps: steps(map[string][]string{"a": {"b"}, "b": {"a"}}, "a", "b")},
			[]string{"a", "b"}, "a [pending]\n└── b [pending]\n    └── a (*)\n(*) drawn in full above"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := stepOrder(&tt.spec); !slices.Equal(got, tt.order) {
				t.Errorf("order: got %v, want %v", got, tt.order)
			}
			if got := strings.Join(drawWorkflow(&tandem.Workflow{WorkflowSpec: tt.spec}), "\n"); got != tt.draw {
				t.Errorf("drawing: got\n%s\nwant\n%s", got, tt.draw)
			}
		})
	}
}

func TestWorkflowListCancelRetry(t *testing.T) {
	f := newFakeWorkflows(t)
	failed := diamondRun(t)
	failed.ScheduleID = "s001"
	f.runs = append(f.runs, failed, &tandem.Workflow{ID: "w002", WorkflowSpec: tandem.WorkflowSpec{Name: "other",
		Steps: []tandem.WorkflowStep{{Name: "x"}}}, State: tandem.WorkflowRunning})

	out, errOut, code := f.cli(t, "workflow", "list", "--state", "failed", "--schedule", "s001", "--limit", "5", "-q", "dia")
	if code != 0 {
		t.Fatalf("list: exit %d, stderr %q", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !slices.Equal(strings.Fields(lines[1])[:5], []string{"w001", "diamond", "failed", "4/4", "s001"}) {
		t.Errorf("list: got\n%s\nwant the header and w001 failed 4/4 from s001", out)
	}
	if got, want := f.requests()[0], "GET /v1/workflows?limit=5&q=dia&schedule=s001&state=failed"; got != want {
		t.Errorf("list sent %s, want %s", got, want)
	}
	out, _, _ = f.cli(t, "workflow", "list", "-o", "json")
	var page struct {
		Workflows []tandem.Workflow `json:"workflows"`
		Next      *string           `json:"next"`
	}
	if err := json.Unmarshal([]byte(out), &page); err != nil || len(page.Workflows) != 2 || page.Next == nil {
		t.Errorf("list -o json: got %q (%v), want both runs and next", out, err)
	}

	if out, errOut, code := f.cli(t, "workflow", "cancel", "w002"); code != 0 || out != "workflow w002: cancel requested\n" {
		t.Errorf("cancel: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if out, errOut, code := f.cli(t, "workflow", "retry", "w001"); code != 0 || out != "workflow w001 running (retry 1)\n" {
		t.Errorf("retry: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, errOut, code := f.cli(t, "workflow", "retry", "w002"); code != 1 || !strings.Contains(errOut, "only a failed or cancelled run can be retried") {
		t.Errorf("retry of a running run: exit %d, stderr %q; want 1 and the server's reason", code, errOut)
	}
	reqs := f.requests()
	if !slices.Contains(reqs, "POST /v1/workflows/w002/cancel") || !slices.Contains(reqs, "POST /v1/workflows/w001/retry") {
		t.Errorf("got requests %v, want the cancel and the retry", reqs)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"workflow", "list", "--state", "done"}, `--state "done": want running, succeeded, failed or cancelled`},
		{[]string{"workflow", "list", "--limit", "0"}, "--limit is 0"},
		{[]string{"workflow", "cancel"}, "accepts 1 arg"},
		{[]string{"workflow", "retry", "a", "b"}, "accepts 1 arg"},
		{[]string{"workflow", "frobnicate"}, "unknown command"},
	} {
		if out, errOut, code := f.cli(t, tt.args...); code != 2 || out != "" || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 and %q", tt.args, code, out, errOut, tt.want)
		}
	}
}

func TestJobListByScheduleAndWorkflow(t *testing.T) {
	f := newFakeWorkflows(t)
	out, errOut, code := f.cli(t, "job", "list", "--workflow", "w001", "--schedule", "s001")
	if code != 0 || !strings.Contains(out, "j001") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if got, want := f.requests()[0], "GET /v1/jobs?schedule=s001&workflow=w001"; got != want {
		t.Errorf("sent %s, want %s", got, want)
	}
	for _, tt := range []struct{ flag, value, want string }{
		{"--workflow", "w 1", `workflow "w 1" is not a workflow ID`},
		{"--schedule", "s/1", `schedule "s/1" is not a schedule ID`},
	} {
		out, errOut, code := f.cli(t, "job", "list", tt.flag, tt.value)
		if code != 2 || out != "" || !strings.Contains(errOut, tt.want) {
			t.Errorf("%s %q: exit %d, stdout %q, stderr %q; want 2 and %q", tt.flag, tt.value, code, out, errOut, tt.want)
		}
	}
	if n := len(f.requests()); n != 1 {
		t.Errorf("got %d requests, want 1 (bad filters are refused before asking)", n)
	}
}

func TestScheduleCreateWorkflow(t *testing.T) {
	f := newFakeWorkflows(t)
	file := writeFile(t, "diamond.json", diamondJSON)
	out, errOut, code := f.cli(t, "schedule", "create", "--name", "nightly", "--cron", "0 2 * * *", "--workflow", file)
	if code != 0 || out != "s001\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and the schedule's ID", code, out, errOut)
	}
	f.mu.Lock()
	body := f.bodies[0]
	f.mu.Unlock()
	var sent map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &sent); err != nil {
		t.Fatal(err)
	}
	var wf tandem.WorkflowSpec
	if err := json.Unmarshal(sent["workflow"], &wf); err != nil || wf.Name != "diamond" || len(wf.Steps) != 4 {
		t.Errorf("sent workflow %s (%v), want the diamond", sent["workflow"], err)
	}
	if _, ok := sent["job"]; ok {
		t.Errorf("sent a job too: %s", body)
	}

	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"both", []string{"--workflow", file, "--", "true"}, "give --workflow FILE or -- CMD [ARGS...], not both"},
		{"job flag", []string{"--workflow", file, "--cpu", "2"}, "--cpu describes a job"},
		{"bad workflow", []string{"--workflow", writeFile(t, "bad.json", `{"name": "w", "steps": [{"name": "a", "needs": ["a"], "job": {"command": ["true"]}}]}`)},
			`step "a" needs itself`},
		{"missing file", []string{"--workflow", "/nonexistent.json"}, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"schedule", "create", "--every", "1m"}, tt.args...)
			out, errOut, code := f.cli(t, args...)
			if code != 2 || out != "" || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2 and %q", code, out, errOut, tt.want)
			}
		})
	}
	if n := len(f.requests()); n != 1 {
		t.Errorf("got %d requests, want 1", n)
	}
}

// The CLI's view of a step is the root type's; internal/workflow's Step must
// have the same fields, or the conversion (server.WorkflowSpecOf) loses one.
func TestWorkflowStepFieldsMatch(t *testing.T) {
	names := func(typ reflect.Type) []string {
		var out []string
		for i := range typ.NumField() {
			out = append(out, typ.Field(i).Name+" "+typ.Field(i).Tag.Get("json"))
		}
		return out
	}
	if a, b := names(reflect.TypeFor[tandem.WorkflowStep]()), names(reflect.TypeFor[workflow.Step]()); !slices.Equal(a, b) {
		t.Errorf("tandem.WorkflowStep has %v, workflow.Step %v", a, b)
	}
}

func TestWorkflowRunWaitEnds(t *testing.T) {
	file := writeFile(t, "w.json", `{"name": "w", "steps": [{"name": "a", "job": {"command": ["true"]}}]}`)

	// --timeout bounds the wait when given: the run is still running.
	f := newFakeWorkflows(t)
	out, errOut, code := f.cli(t, "--timeout", "100ms", "workflow", "run", "-f", file, "--wait", "--poll", "1ms")
	if code != 1 || out != "w001\n" || !strings.Contains(errOut, "workflow w001 is still running after --timeout 100ms") {
		t.Errorf("timeout: exit %d, stdout %q, stderr %q; want 1 and still running", code, out, errOut)
	}

	// -o json prints the run as it ended, and nothing else on stdout.
	f = newFakeWorkflows(t)
	f.advance = func(wf *tandem.Workflow) {
		wf.State = tandem.WorkflowCancelled
		wf.Reason = "the workflow was cancelled"
		wf.Progress = map[string]tandem.StepRun{"a": {State: tandem.StepCancelled, Reason: "the workflow was cancelled"}}
	}
	out, errOut, code = f.cli(t, "workflow", "run", "-f", file, "--wait", "--poll", "1ms", "-o", "json")
	var got tandem.Workflow
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.State != tandem.WorkflowCancelled {
		t.Errorf("-o json: got %q (%v), want the cancelled run", out, err)
	}
	if code != 1 || !strings.Contains(errOut, "workflow w001 cancelled: the workflow was cancelled") {
		t.Errorf("-o json: exit %d, stderr %q; want 1 and how it ended", code, errOut)
	}
}
