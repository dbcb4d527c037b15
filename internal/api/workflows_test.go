package api_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/api"
)

// The fake's workflow runs, kept beside it like its schedules.
type fakeWorkflows struct {
	mu    sync.Mutex
	byID  map[string]*tandem.Workflow
	calls []string
}

var fakeWFs sync.Map // *fake -> *fakeWorkflows

func (f *fake) wfs() *fakeWorkflows {
	v, _ := fakeWFs.LoadOrStore(f, &fakeWorkflows{byID: map[string]*tandem.Workflow{}})
	return v.(*fakeWorkflows)
}

func (f *fake) CreateWorkflowIdem(_ context.Context, spec tandem.WorkflowSpec, key string) (*tandem.Workflow, bool, error) {
	w := f.wfs()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(spec.Steps) == 0 {
		return nil, false, tandem.Errorf(tandem.EINVALID, "workflow %q has no steps", spec.Name)
	}
	for _, wf := range w.byID {
		if key != "" && wf.IdempotencyKey == key {
			return wf, false, nil
		}
	}
	id := "w" + string(rune('0'+len(w.byID)+1))
	wf := &tandem.Workflow{ID: id, WorkflowSpec: spec, State: tandem.WorkflowRunning, IdempotencyKey: key, Revision: 9}
	w.byID[id] = wf
	return wf, true, nil
}

func (f *fake) GetWorkflow(id string) (*tandem.Workflow, error) {
	w := f.wfs()
	w.mu.Lock()
	defer w.mu.Unlock()
	if wf, ok := w.byID[id]; ok {
		return wf, nil
	}
	return nil, tandem.Errorf(tandem.ENOTFOUND, "workflow %q not found", id)
}

func (f *fake) ListWorkflows(fl tandem.WorkflowFilter) ([]*tandem.Workflow, string) {
	w := f.wfs()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, "list "+string(fl.State)+" "+fl.Schedule)
	var out []*tandem.Workflow
	for _, wf := range w.byID {
		out = append(out, wf)
	}
	return out, ""
}

func (f *fake) CancelWorkflow(_ context.Context, id string) (*tandem.Workflow, error) {
	return f.wfAction("cancel", id)
}

func (f *fake) RetryWorkflow(_ context.Context, id string) (*tandem.Workflow, error) {
	return f.wfAction("retry", id)
}

func (f *fake) wfAction(what, id string) (*tandem.Workflow, error) {
	w := f.wfs()
	w.mu.Lock()
	w.calls = append(w.calls, what+" "+id)
	w.mu.Unlock()
	return f.GetWorkflow(id)
}

var _ api.Workflows = (*fake)(nil)

// The workflow routes: status codes, bodies, idempotent creation, and bad
// input refused with 400 before the service is asked.
func TestWorkflowRoutes(t *testing.T) {
	f := newFake("rm1", 1, tandem.StateActive)
	ts := httptest.NewServer(api.New(f, slog.New(slog.DiscardHandler)))
	t.Cleanup(ts.Close)
	do := func(method, path, body string, hdr map[string]string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		return resp.StatusCode, b.String(), resp.Header
	}
	spec := `{"name":"n","steps":[{"name":"a","job":{"command":["true"]}}]}`
	code, body, h := do("POST", "/v1/workflows", spec, map[string]string{"Idempotency-Key": "k1"})
	if code != http.StatusCreated || h.Get("Location") != "/v1/workflows/w1" || !strings.Contains(body, `"id":"w1"`) {
		t.Fatalf("create: %d %s %v", code, body, h)
	}
	if code, body, h := do("POST", "/v1/workflows", spec, map[string]string{"Idempotency-Key": "k1"}); code != http.StatusOK || h.Get("Idempotent-Replayed") != "true" || !strings.Contains(body, `"id":"w1"`) {
		t.Fatalf("create again with the same key: %d %s; want 200 replayed, the same run", code, body)
	}
	for _, tc := range []struct {
		method, path, body string
		want               int
		in                 string
	}{
		{"POST", "/v1/workflows", `{"name":"n","steps":[],"bogus":1}`, 400, "unknown field"},
		{"POST", "/v1/workflows", `{"name":"n"}`, 400, "has no steps"},
		{"POST", "/v1/workflows", `{"name":`, 400, "malformed"},
		{"GET", "/v1/workflows?state=sleeping", "", 400, "state must be"},
		{"GET", "/v1/workflows?limit=0", "", 400, "limit must be"},
		{"GET", "/v1/workflows?state=running&schedule=s1", "", 200, `"workflows":[`},
		{"GET", "/v1/workflows/w1", "", 200, `"id":"w1"`},
		{"GET", "/v1/workflows/nope", "", 404, "not found"},
		{"POST", "/v1/workflows/w1/cancel", "", 200, `"id":"w1"`},
		{"POST", "/v1/workflows/w1/cancel", `{"x":`, 400, "malformed"},
		{"POST", "/v1/workflows/w1/retry", "{}", 200, `"id":"w1"`},
		{"DELETE", "/v1/workflows/w1", "", 405, ""},
	} {
		code, body, _ := do(tc.method, tc.path, tc.body, nil)
		if code != tc.want || !strings.Contains(body, tc.in) {
			t.Errorf("%s %s %s: %d %s; want %d with %q", tc.method, tc.path, tc.body, code, strings.TrimSpace(body), tc.want, tc.in)
		}
	}
	want := []string{"list running s1", "cancel w1", "retry w1"}
	if b, _ := json.Marshal(f.wfs().calls); string(b) != mustJSON(want) {
		t.Fatalf("the service was asked %s; want %v (bad input never reaches it)", b, want)
	}
}
