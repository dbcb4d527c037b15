package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/tandemhq/tandem"
)

// Workflows is what the workflow routes need of a server; *server.Server
// implements it. A Service that does not has no workflow routes.
type Workflows interface {
	CreateWorkflowIdem(ctx context.Context, spec tandem.WorkflowSpec, idemKey string) (*tandem.Workflow, bool, error)
	GetWorkflow(id string) (*tandem.Workflow, error)
	// ListWorkflows returns the runs f selects, oldest first, and the
	// cursor of the next page ("" at the end).
	ListWorkflows(f tandem.WorkflowFilter) ([]*tandem.Workflow, string)
	CancelWorkflow(ctx context.Context, id string) (*tandem.Workflow, error)
	RetryWorkflow(ctx context.Context, id string) (*tandem.Workflow, error)
}

// workflowRoutes registers the workflow routes (docs/API.md, "Workflows")
// when the service has workflows. Running one goes to a server that owns a
// shard (as a submission does); cancel and retry go to the owner of the
// run's shard; reads are answered by any server from its view.
func (a *API) workflowRoutes() {
	ws, ok := a.srv.(Workflows)
	if !ok {
		return
	}
	h := &workflowHandlers{a: a, s: ws}
	a.route("/v1/workflows", methods{http.MethodGet: a.reader(h.list), http.MethodPost: a.submitter(h.create)})
	a.route("/v1/workflows/{id}", methods{http.MethodGet: a.reader(h.get)})
	a.route("/v1/workflows/{id}/cancel", methods{http.MethodPost: a.ownerWriter("workflow", h.cancel)})
	a.route("/v1/workflows/{id}/retry", methods{http.MethodPost: a.ownerWriter("workflow", h.retry)})
}

type workflowHandlers struct {
	a *API
	s Workflows
}

func (h *workflowHandlers) create(w http.ResponseWriter, r *http.Request) {
	var spec tandem.WorkflowSpec
	if !h.a.decode(w, r, &spec) {
		return
	}
	if err := h.a.mayRunSteps(r, &spec); err != nil {
		h.a.writeError(w, r, err)
		return
	}
	wf, created, err := h.s.CreateWorkflowIdem(r.Context(), spec, r.Header.Get("Idempotency-Key"))
	if err != nil {
		h.a.writeError(w, r, err)
		return
	}
	setTarget(r, "workflow "+wf.ID)
	h.a.setRevision(w, wf.Revision)
	w.Header().Set("Location", "/v1/workflows/"+wf.ID)
	if !created {
		w.Header().Set("Idempotent-Replayed", "true")
		h.a.writeJSON(w, http.StatusOK, wf)
		return
	}
	h.a.writeJSON(w, http.StatusCreated, wf)
}

func (h *workflowHandlers) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := tandem.WorkflowFilter{Schedule: q.Get("schedule"), Query: strings.TrimSpace(q.Get("q")), After: q.Get("after"), Limit: DefaultListLimit}
	if v := q.Get("state"); v != "" {
		st := tandem.WorkflowState(v)
		known := false
		for _, s := range tandem.WorkflowStates {
			known = known || s == st
		}
		if !known {
			h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "state must be running, succeeded, failed or cancelled, not %q", v))
			return
		}
		f.State = st
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "limit must be a whole number from 1 to %d, not %q", MaxListLimit, v))
			return
		}
		f.Limit = n
	}
	all, next := h.s.ListWorkflows(f)
	if all == nil {
		all = []*tandem.Workflow{}
	}
	h.a.setRevision(w, 0)
	h.a.writeJSON(w, http.StatusOK, map[string]any{"workflows": all, "next": next})
}

func (h *workflowHandlers) get(w http.ResponseWriter, r *http.Request) {
	wf, err := h.s.GetWorkflow(r.PathValue("id"))
	h.a.setRevision(w, 0)
	if err != nil {
		h.a.writeError(w, r, err)
		return
	}
	h.a.writeJSON(w, http.StatusOK, wf)
}

func (h *workflowHandlers) cancel(w http.ResponseWriter, r *http.Request) {
	h.write(w, r, h.s.CancelWorkflow)
}

func (h *workflowHandlers) retry(w http.ResponseWriter, r *http.Request) {
	h.write(w, r, h.s.RetryWorkflow)
}

// mayRunSteps applies the rule of job submission to every step of a
// workflow: a step's job may name its user only if the caller may. A job
// that does not decode is left to the server's validation, which says why.
func (a *API) mayRunSteps(r *http.Request, spec *tandem.WorkflowSpec) error {
	for _, st := range spec.Steps {
		var js tandem.JobSpec
		if json.Unmarshal(st.Job, &js) != nil {
			continue
		}
		if err := a.mayRunAs(r, js); err != nil {
			return err
		}
	}
	return nil
}

// write runs cancel or retry of workflow {id}, which take an empty body or
// an empty object, and answers with the run.
func (h *workflowHandlers) write(w http.ResponseWriter, r *http.Request, do func(context.Context, string) (*tandem.Workflow, error)) {
	var req struct{}
	if !(&scheduleHandlers{a: h.a}).decodeOptional(w, r, &req) { // the same rule as schedule actions
		return
	}
	id := r.PathValue("id")
	setTarget(r, "workflow "+id)
	wf, err := do(r.Context(), id)
	if err != nil {
		h.a.writeError(w, r, err)
		return
	}
	h.a.setRevision(w, wf.Revision)
	h.a.writeJSON(w, http.StatusOK, wf)
}
