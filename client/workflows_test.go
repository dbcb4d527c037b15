package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// workflowAPI is a minimal owner of workflow runs: it stores runs, honours
// idempotency keys, and cancels and retries them with the server's rules
// (a retry of a running run is a conflict).
type workflowAPI struct {
	mu   sync.Mutex
	runs []*tandem.Workflow
	keys map[string]string // idempotency key -> run ID
}

func (a *workflowAPI) run(id string) *tandem.Workflow {
	for _, wf := range a.runs {
		if wf.ID == id {
			return wf
		}
	}
	return nil
}

func (a *workflowAPI) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.runs)
}

func (a *workflowAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.keys == nil {
		a.keys = map[string]string{}
	}
	path := strings.TrimPrefix(r.URL.Path, "/v1/workflows")
	id, action, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	switch {
	case r.Method == http.MethodPost && path == "":
		var spec tandem.WorkflowSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			writeError(w, tandem.Errorf(tandem.EINVALID, "bad spec: %v", err))
			return
		}
		key := r.Header.Get(IdempotencyKeyHeader)
		if id, ok := a.keys[key]; ok && key != "" {
			w.Header().Set("Idempotent-Replayed", "true")
			writeJSON(w, http.StatusOK, a.run(id))
			return
		}
		wf := &tandem.Workflow{ID: fmt.Sprintf("w%d", len(a.runs)+1), WorkflowSpec: spec, State: tandem.WorkflowRunning, IdempotencyKey: key}
		a.runs = append(a.runs, wf)
		a.keys[key] = wf.ID
		w.Header().Set("Location", "/v1/workflows/"+wf.ID)
		writeJSON(w, http.StatusCreated, wf)
	case r.Method == http.MethodGet && path == "":
		q := r.URL.Query()
		out := []*tandem.Workflow{}
		for _, wf := range a.runs {
			if (q.Get("state") == "" || string(wf.State) == q.Get("state")) && wf.ID > q.Get("after") {
				out = append(out, wf)
			}
		}
		next := ""
		if q.Get("limit") == "1" && len(out) > 1 {
			out, next = out[:1], out[0].ID
		}
		writeJSON(w, http.StatusOK, map[string]any{"workflows": out, "next": next})
	default:
		wf := a.run(id)
		if wf == nil {
			writeError(w, tandem.Errorf(tandem.ENOTFOUND, "workflow %q not found", id))
			return
		}
		switch {
		case r.Method == http.MethodGet && action == "":
		case r.Method == http.MethodPost && action == "cancel":
			if !wf.State.Terminal() {
				wf.Cancelled, wf.State = true, tandem.WorkflowCancelled
			}
		case r.Method == http.MethodPost && action == "retry":
			if !wf.State.Terminal() {
				writeError(w, tandem.Errorf(tandem.ECONFLICT, "workflow %s is still running: nothing to retry", wf.ID))
				return
			}
			wf.State, wf.Cancelled = tandem.WorkflowRunning, false
			wf.Retried++
		default:
			writeError(w, tandem.Errorf(tandem.ENOTFOUND, "no route"))
			return
		}
		writeJSON(w, http.StatusOK, wf)
	}
}

var testWorkflow = tandem.WorkflowSpec{Name: "diamond", Params: map[string]string{"day": "2030-01-02"}, Steps: []tandem.WorkflowStep{
	{Name: "a", Job: json.RawMessage(`{"command":["true"]}`)},
	{Name: "b", Job: json.RawMessage(`{"command":["true"]}`), Needs: []string{"a"}},
}}

func TestRunWorkflowFollowsTheStandbyWithTheSameBodyAndKey(t *testing.T) {
	rec := &recorder{}
	active := serve(t, rec, "active", &workflowAPI{})
	standby := serve(t, rec, "standby", redirectTo(func() string { return active.URL }))
	c := newTestClient(t, rec, DefaultBackoff(), deadURL(t), standby.URL, active.URL)

	wf, err := c.RunWorkflow(context.Background(), testWorkflow, SubmitOptions{IdempotencyKey: "k-1"})
	if err != nil {
		t.Fatalf("RunWorkflow: %v", err)
	}
	if wf.ID != "w1" || wf.Name != "diamond" || len(wf.Steps) != 2 || wf.Params["day"] != "2030-01-02" {
		t.Errorf("got run %+v, want w1, the diamond with its two steps and param", wf)
	}
	_, reqs := rec.snapshot()
	if len(reqs) != 2 || reqs[0].server != "standby" || reqs[1].server != "active" {
		t.Fatalf("got requests %+v, want the standby's redirect then the active", reqs)
	}
	for _, q := range reqs {
		if q.method != http.MethodPost || q.path != "/v1/workflows" || q.key != "k-1" || q.body != reqs[0].body {
			t.Errorf("got request %s %s key %q body %q, want POST /v1/workflows, key k-1, the first body", q.method, q.path, q.key, q.body)
		}
	}
	var sent tandem.WorkflowSpec
	if err := json.Unmarshal([]byte(reqs[0].body), &sent); err != nil || sent.Steps[1].Needs[0] != "a" {
		t.Errorf("got body %s (%v), want the spec", reqs[0].body, err)
	}
	if got := c.Current(); got != active.URL {
		t.Errorf("Current: got %s, want the active %s", got, active.URL)
	}
}

func TestRunWorkflowRetriesAnAmbiguousFailureWithItsKey(t *testing.T) {
	rec := &recorder{}
	api := &workflowAPI{}
	var mu sync.Mutex
	calls := 0
	flaky := serve(t, rec, "flaky", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 1 {
			// Start the run, then lose the answer.
			api.ServeHTTP(httptest.NewRecorder(), r)
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			conn.Close()
			return
		}
		api.ServeHTTP(w, r)
	}))
	c := newTestClient(t, rec, DefaultBackoff(), flaky.URL)
	wf, err := c.RunWorkflow(context.Background(), testWorkflow, SubmitOptions{})
	if err != nil {
		t.Fatalf("RunWorkflow: %v", err)
	}
	_, reqs := rec.snapshot()
	if len(reqs) != 2 || reqs[0].key == "" || reqs[1].key != reqs[0].key {
		t.Fatalf("got requests %+v, want two with the same generated key", reqs)
	}
	if n := api.count(); wf.ID != "w1" || n != 1 {
		t.Errorf("got run %s and %d runs stored, want w1 and 1 (the retry found the first)", wf.ID, n)
	}
	if _, err := c.RunWorkflow(context.Background(), testWorkflow, SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, reqs = rec.snapshot(); reqs[len(reqs)-1].key == reqs[0].key {
		t.Errorf("a second RunWorkflow call reused the key %q, want a fresh one", reqs[0].key)
	}
}

func TestWorkflowReadsAndActions(t *testing.T) {
	rec := &recorder{}
	api := &workflowAPI{}
	active := serve(t, rec, "active", api)
	c := newTestClient(t, rec, DefaultBackoff(), active.URL)
	ctx := context.Background()
	for range 3 {
		if _, err := c.RunWorkflow(ctx, testWorkflow, SubmitOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	got, err := c.GetWorkflow(ctx, "w2")
	if err != nil || got.ID != "w2" || got.State != tandem.WorkflowRunning {
		t.Errorf("GetWorkflow w2: got %+v, %v; want w2 running", got, err)
	}
	if _, err := c.GetWorkflow(ctx, "w9"); !errors.Is(err, tandem.ErrNotFound) {
		t.Errorf("GetWorkflow w9: got %v, want not found", err)
	}

	runs, next, err := c.ListWorkflows(ctx, tandem.WorkflowFilter{State: tandem.WorkflowRunning, Schedule: "s 1", Query: "dia", After: "w1", Limit: 1})
	if err != nil || len(runs) != 1 || runs[0].ID != "w2" || next != "w2" {
		t.Errorf("ListWorkflows: got %v next %q, %v; want [w2] next w2", runs, next, err)
	}
	_, reqs := rec.snapshot()
	if got, want := reqs[len(reqs)-1].path, "/v1/workflows?after=w1&limit=1&q=dia&schedule=s+1&state=running"; got != want {
		t.Errorf("ListWorkflows sent %s, want %s", got, want)
	}
	if runs, next, err := c.ListWorkflows(ctx, tandem.WorkflowFilter{State: tandem.WorkflowFailed}); err != nil || runs == nil || len(runs) != 0 || next != "" {
		t.Errorf("ListWorkflows failed: got %v next %q, %v; want an empty, non-nil list", runs, next, err)
	}

	wf, err := c.CancelWorkflow(ctx, "w1")
	if err != nil || wf.State != tandem.WorkflowCancelled || !wf.Cancelled {
		t.Errorf("CancelWorkflow: got %+v, %v; want it cancelled", wf, err)
	}
	if wf, err = c.RetryWorkflow(ctx, "w1"); err != nil || wf.State != tandem.WorkflowRunning || wf.Retried != 1 {
		t.Errorf("RetryWorkflow: got %+v, %v; want it running again, retried once", wf, err)
	}
	if _, err := c.RetryWorkflow(ctx, "w1"); tandem.ErrorCode(err) != tandem.ECONFLICT {
		t.Errorf("RetryWorkflow of a running run: got %v, want the server's conflict", err)
	}
	_, reqs = rec.snapshot()
	for _, q := range reqs[len(reqs)-3:] {
		if q.method != http.MethodPost || q.body != "{}" || !strings.HasPrefix(q.path, "/v1/workflows/w1/") {
			t.Errorf("got %s %s body %q, want POST /v1/workflows/w1/<action> with {}", q.method, q.path, q.body)
		}
	}

	for name, call := range map[string]func() error{
		"get":    func() error { _, err := c.GetWorkflow(ctx, ""); return err },
		"cancel": func() error { _, err := c.CancelWorkflow(ctx, ""); return err },
		"retry":  func() error { _, err := c.RetryWorkflow(ctx, ""); return err },
	} {
		if err := call(); tandem.ErrorCode(err) != tandem.EINVALID || !strings.Contains(err.Error(), "workflow ID is empty") {
			t.Errorf("%s with no ID: got %v, want invalid_argument", name, err)
		}
	}
}

// An action whose first attempt took effect but whose answer was lost is
// answered, on the client's retry, with a conflict: the client returns the
// run, since what it asked for is done.
func TestWorkflowActionRetriedAfterALostAnswer(t *testing.T) {
	for _, action := range []string{"cancel", "retry"} {
		t.Run(action, func(t *testing.T) {
			rec := &recorder{}
			api := &workflowAPI{runs: []*tandem.Workflow{{ID: "w1", State: tandem.WorkflowFailed}}}
			if action == "cancel" {
				api.runs[0].State = tandem.WorkflowRunning
			}
			var mu sync.Mutex
			lost := false
			srv := serve(t, rec, "owner", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				first := !lost && r.Method == http.MethodPost
				lost = lost || first
				mu.Unlock()
				if first {
					api.ServeHTTP(httptest.NewRecorder(), r)
					conn, _, _ := w.(http.Hijacker).Hijack()
					conn.Close()
					return
				}
				if action == "cancel" && r.Method == http.MethodPost {
					// A server that refuses to cancel a run that has ended.
					writeError(w, tandem.Errorf(tandem.ECONFLICT, "workflow w1 has ended"))
					return
				}
				api.ServeHTTP(w, r)
			}))
			c := newTestClient(t, rec, DefaultBackoff(), srv.URL)
			do := c.RetryWorkflow
			if action == "cancel" {
				do = c.CancelWorkflow
			}
			wf, err := do(context.Background(), "w1")
			if err != nil {
				t.Fatalf("%s: got %v, want the run", action, err)
			}
			if action == "cancel" && !wf.Cancelled || action == "retry" && (wf.State != tandem.WorkflowRunning || wf.Retried != 1) {
				t.Errorf("%s: got %+v, want it done once", action, wf)
			}
		})
	}
}

func TestWaitWorkflow(t *testing.T) {
	rec := &recorder{}
	api := &workflowAPI{runs: []*tandem.Workflow{{ID: "w1", State: tandem.WorkflowRunning}}}
	polls := 0
	srv := serve(t, rec, "active", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api.mu.Lock()
		if polls++; polls == 3 {
			api.runs[0].State = tandem.WorkflowFailed
		}
		api.mu.Unlock()
		api.ServeHTTP(w, r)
	}))
	c := newTestClient(t, rec, DefaultBackoff(), srv.URL)
	wf, err := c.WaitWorkflow(context.Background(), "w1", time.Second)
	if err != nil || wf.State != tandem.WorkflowFailed {
		t.Fatalf("WaitWorkflow: got %+v, %v; want w1 failed", wf, err)
	}
	events, _ := rec.snapshot()
	if want := "active sleep 1s active sleep 1s active"; strings.Join(events, " ") != want {
		t.Errorf("got events %q, want %q", strings.Join(events, " "), want)
	}

	ctx, cancel := context.WithCancel(context.Background())
	api.mu.Lock()
	api.runs[0].State = tandem.WorkflowRunning
	api.mu.Unlock()
	c.sleep = func(context.Context, time.Duration) error { cancel(); return context.Canceled }
	wf, err = c.WaitWorkflow(ctx, "w1", 0)
	if !errors.Is(err, context.Canceled) || wf == nil || wf.State != tandem.WorkflowRunning {
		t.Errorf("WaitWorkflow cancelled: got %+v, %v; want the run as last seen and context.Canceled", wf, err)
	}
}

func TestListJobsByScheduleAndWorkflow(t *testing.T) {
	rec := &recorder{}
	active := serve(t, rec, "active", &activeAPI{})
	c := newTestClient(t, rec, DefaultBackoff(), active.URL)
	if _, err := c.ListJobs(context.Background(), ListOptions{Schedule: "s1", Workflow: "w1"}); err != nil {
		t.Fatalf("ListJobs: %v", err)
	}
	_, reqs := rec.snapshot()
	if got, want := reqs[0].path, "/v1/jobs?schedule=s1&workflow=w1"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
