package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/tandemhq/tandem"
)

// Schedules is what the schedule routes need of a server; *server.Server
// implements it. A Service that does not has no schedule routes.
type Schedules interface {
	CreateScheduleIdem(ctx context.Context, spec tandem.ScheduleSpec, idemKey string) (*tandem.Schedule, bool, error)
	GetSchedule(id string) (*tandem.Schedule, error)
	ListSchedules() []*tandem.Schedule
	PatchSchedule(ctx context.Context, id string, version int64, patch []byte) (*tandem.Schedule, error)
	PauseSchedule(ctx context.Context, id, note string) (*tandem.Schedule, error)
	ResumeSchedule(ctx context.Context, id string) (*tandem.Schedule, error)
	DeleteSchedule(ctx context.Context, id string) error
	TriggerSchedule(ctx context.Context, id string) (*tandem.ScheduleRun, error)
	BackfillSchedule(ctx context.Context, id string, from, to time.Time) ([]tandem.ScheduleRun, error)
	ScheduleRuns(id string, f tandem.ScheduleRunFilter) ([]tandem.ScheduleRun, error)
	NextTimes(id string, n int) ([]time.Time, error)
}

// scheduleRoutes registers the schedule routes (docs/API.md, "Schedules")
// when the service has schedules. Creating one goes to a server that owns a
// shard (as a submission does); a write to one goes to the owner of its
// shard; reads are answered by any server from its view, linearizably.
func (a *API) scheduleRoutes() {
	ss, ok := a.srv.(Schedules)
	if !ok {
		return
	}
	h := &scheduleHandlers{a: a, s: ss}
	a.route("/v1/schedules", methods{http.MethodGet: a.reader(h.list), http.MethodPost: a.submitter(h.create)})
	a.route("/v1/schedules/{id}", methods{http.MethodGet: a.reader(h.get),
		http.MethodPatch: a.ownerWriter("schedule", h.patch), http.MethodDelete: a.ownerWriter("schedule", h.delete)})
	a.route("/v1/schedules/{id}/pause", methods{http.MethodPost: a.ownerWriter("schedule", h.pause)})
	a.route("/v1/schedules/{id}/resume", methods{http.MethodPost: a.ownerWriter("schedule", h.resume)})
	a.route("/v1/schedules/{id}/trigger", methods{http.MethodPost: a.ownerWriter("schedule", h.trigger)})
	a.route("/v1/schedules/{id}/backfill", methods{http.MethodPost: a.ownerWriter("schedule", h.backfill)})
	a.route("/v1/schedules/{id}/runs", methods{http.MethodGet: a.reader(h.runs)})
	a.route("/v1/schedules/{id}/next", methods{http.MethodGet: a.reader(h.next)})
}

type scheduleHandlers struct {
	a *API
	s Schedules
}

func (h *scheduleHandlers) create(w http.ResponseWriter, r *http.Request) {
	var spec tandem.ScheduleSpec
	if !h.a.decode(w, r, &spec) {
		return
	}
	err := h.a.mayRunAs(r, spec.Job)
	if err == nil && spec.Workflow != nil {
		err = h.a.mayRunSteps(r, spec.Workflow)
	}
	if err != nil {
		h.a.writeError(w, r, err)
		return
	}
	s, created, err := h.s.CreateScheduleIdem(r.Context(), spec, r.Header.Get("Idempotency-Key"))
	if err != nil {
		h.a.writeError(w, r, err)
		return
	}
	setTarget(r, "schedule "+s.ID)
	h.a.setRevision(w, s.Revision)
	w.Header().Set("Location", "/v1/schedules/"+s.ID)
	if !created {
		w.Header().Set("Idempotent-Replayed", "true")
		h.a.writeJSON(w, http.StatusOK, s)
		return
	}
	h.a.writeJSON(w, http.StatusCreated, s)
}

func (h *scheduleHandlers) list(w http.ResponseWriter, r *http.Request) {
	all := h.s.ListSchedules()
	if all == nil {
		all = []*tandem.Schedule{}
	}
	h.a.setRevision(w, 0)
	h.a.writeJSON(w, http.StatusOK, map[string]any{"schedules": all})
}

func (h *scheduleHandlers) get(w http.ResponseWriter, r *http.Request) {
	s, err := h.s.GetSchedule(r.PathValue("id"))
	h.a.setRevision(w, 0)
	if err != nil {
		h.a.writeError(w, r, err)
		return
	}
	h.a.writeJSON(w, http.StatusOK, s)
}

// patch applies a JSON merge patch (RFC 7386) of the spec; If-Match, when
// given, is the version the schedule must still be at.
func (h *scheduleHandlers) patch(w http.ResponseWriter, r *http.Request) {
	var version int64
	if v := r.Header.Get("If-Match"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "If-Match must be a schedule version (a whole number from 1), not %q", v))
			return
		}
		version = n
	}
	var patch json.RawMessage
	if !h.a.decode(w, r, &patch) {
		return
	}
	h.write(w, r, func(ctx context.Context, id string) (any, error) { return h.s.PatchSchedule(ctx, id, version, patch) })
}

func (h *scheduleHandlers) delete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	setTarget(r, "schedule "+id)
	if err := h.s.DeleteSchedule(r.Context(), id); err != nil {
		h.a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *scheduleHandlers) pause(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Note string `json:"note"`
	}
	if !h.decodeOptional(w, r, &req) {
		return
	}
	h.write(w, r, func(ctx context.Context, id string) (any, error) { return h.s.PauseSchedule(ctx, id, req.Note) })
}

func (h *scheduleHandlers) resume(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if !h.decodeOptional(w, r, &req) {
		return
	}
	h.write(w, r, func(ctx context.Context, id string) (any, error) { return h.s.ResumeSchedule(ctx, id) })
}

func (h *scheduleHandlers) trigger(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if !h.decodeOptional(w, r, &req) {
		return
	}
	h.write(w, r, func(ctx context.Context, id string) (any, error) { return h.s.TriggerSchedule(ctx, id) })
}

func (h *scheduleHandlers) backfill(w http.ResponseWriter, r *http.Request) {
	var req struct {
		From time.Time `json:"from"`
		To   time.Time `json:"to"`
	}
	if !h.a.decode(w, r, &req) {
		return
	}
	if req.From.IsZero() || req.To.IsZero() || req.To.Before(req.From) {
		h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "backfill needs from and to (RFC 3339 times), from not after to"))
		return
	}
	h.write(w, r, func(ctx context.Context, id string) (any, error) {
		runs, err := h.s.BackfillSchedule(ctx, id, req.From, req.To)
		if runs == nil {
			runs = []tandem.ScheduleRun{}
		}
		return map[string]any{"runs": runs}, err
	})
}

// write runs one write to schedule {id} and answers with its result.
func (h *scheduleHandlers) write(w http.ResponseWriter, r *http.Request, do func(context.Context, string) (any, error)) {
	id := r.PathValue("id")
	setTarget(r, "schedule "+id)
	v, err := do(r.Context(), id)
	if err != nil {
		h.a.writeError(w, r, err)
		return
	}
	h.a.setRevision(w, 0)
	h.a.writeJSON(w, http.StatusOK, v)
}

// decodeOptional decodes a JSON body if there is one: pause, resume and
// trigger take an empty body or an object.
func (h *scheduleHandlers) decodeOptional(w http.ResponseWriter, r *http.Request, v any) bool {
	if r.ContentLength == 0 {
		return true
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "reading request body: %v", err))
		return false
	}
	if len(b) == 0 {
		return true
	}
	if err := json.Unmarshal(b, v); err != nil {
		h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "malformed JSON body: %s", jsonErr(err)))
		return false
	}
	return true
}

func (h *scheduleHandlers) runs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f tandem.ScheduleRunFilter
	switch o := tandem.ScheduleOutcome(q.Get("outcome")); o {
	case "", tandem.OutcomeFired, tandem.OutcomeSkipped, tandem.OutcomeBuffered:
		f.Outcome = o
	default:
		h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "outcome must be fired, skipped or buffered, not %q", o))
		return
	}
	for _, p := range []struct {
		name string
		to   *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := q.Get(p.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "%s must be an RFC 3339 time, not %q", p.name, v))
				return
			}
			*p.to = t
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "limit must be a whole number from 1, not %q", v))
			return
		}
		f.Limit = n
	}
	runs, err := h.s.ScheduleRuns(r.PathValue("id"), f)
	h.a.setRevision(w, 0)
	if err != nil {
		h.a.writeError(w, r, err)
		return
	}
	if runs == nil {
		runs = []tandem.ScheduleRun{}
	}
	h.a.writeJSON(w, http.StatusOK, map[string]any{"runs": runs})
}

func (h *scheduleHandlers) next(w http.ResponseWriter, r *http.Request) {
	n := 5
	if v := r.URL.Query().Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			h.a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "n must be a whole number from 1, not %q", v))
			return
		}
	}
	times, err := h.s.NextTimes(r.PathValue("id"), n)
	h.a.setRevision(w, 0)
	if err != nil {
		h.a.writeError(w, r, err)
		return
	}
	if times == nil {
		times = []time.Time{}
	}
	h.a.writeJSON(w, http.StatusOK, map[string]any{"times": times})
}
