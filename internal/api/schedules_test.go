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
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/api"
)

// The fake's schedules: kept beside it, so the fake itself stays the jobs'.
type fakeSchedules struct {
	mu    sync.Mutex
	byID  map[string]*tandem.Schedule
	idem  map[string]string
	calls []string
}

var fakeScheds sync.Map // *fake -> *fakeSchedules

func (f *fake) sched() *fakeSchedules {
	v, _ := fakeScheds.LoadOrStore(f, &fakeSchedules{byID: map[string]*tandem.Schedule{}, idem: map[string]string{}})
	return v.(*fakeSchedules)
}

func (f *fake) CreateScheduleIdem(_ context.Context, spec tandem.ScheduleSpec, key string) (*tandem.Schedule, bool, error) {
	s := f.sched()
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.idem[key]; ok && key != "" {
		return s.byID[id], false, nil
	}
	if len(spec.Cron) == 0 && spec.Every == 0 {
		return nil, false, tandem.Errorf(tandem.EINVALID, "give cron or every")
	}
	id := "s" + string(rune('0'+len(s.byID)+1))
	sch := &tandem.Schedule{ID: id, ScheduleSpec: spec, Version: 1, Revision: 7}
	s.byID[id] = sch
	s.idem[key] = id
	return sch, true, nil
}

func (f *fake) GetSchedule(id string) (*tandem.Schedule, error) {
	s := f.sched()
	s.mu.Lock()
	defer s.mu.Unlock()
	if sch, ok := s.byID[id]; ok {
		return sch, nil
	}
	return nil, tandem.Errorf(tandem.ENOTFOUND, "schedule %s not found", id)
}

func (f *fake) ListSchedules() []*tandem.Schedule {
	s := f.sched()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*tandem.Schedule
	for _, sch := range s.byID {
		out = append(out, sch)
	}
	return out
}

func (f *fake) record(call string) {
	s := f.sched()
	s.mu.Lock()
	s.calls = append(s.calls, call)
	s.mu.Unlock()
}

func (f *fake) PatchSchedule(_ context.Context, id string, version int64, patch []byte) (*tandem.Schedule, error) {
	f.record("patch " + id + " " + string(patch))
	if version == 99 {
		return nil, tandem.Errorf(tandem.ECONFLICT, "schedule %s is at version 1, not 99", id)
	}
	return f.GetSchedule(id)
}

func (f *fake) PauseSchedule(_ context.Context, id, note string) (*tandem.Schedule, error) {
	f.record("pause " + id + " " + note)
	return f.GetSchedule(id)
}

func (f *fake) ResumeSchedule(_ context.Context, id string) (*tandem.Schedule, error) {
	f.record("resume " + id)
	return f.GetSchedule(id)
}

func (f *fake) DeleteSchedule(_ context.Context, id string) error {
	f.record("delete " + id)
	_, err := f.GetSchedule(id)
	return err
}

func (f *fake) TriggerSchedule(_ context.Context, id string) (*tandem.ScheduleRun, error) {
	f.record("trigger " + id)
	return &tandem.ScheduleRun{ScheduleID: id, Outcome: tandem.OutcomeFired, Reason: tandem.ReasonManual, JobID: "j9"}, nil
}

func (f *fake) BackfillSchedule(_ context.Context, id string, from, to time.Time) ([]tandem.ScheduleRun, error) {
	f.record("backfill " + id + " " + from.Format(time.RFC3339) + " " + to.Format(time.RFC3339))
	return nil, nil
}

func (f *fake) ScheduleRuns(id string, flt tandem.ScheduleRunFilter) ([]tandem.ScheduleRun, error) {
	f.record("runs " + id + " " + string(flt.Outcome))
	return []tandem.ScheduleRun{{ScheduleID: id, NominalTime: time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC), Outcome: tandem.OutcomeFired, JobID: "j1"}}, nil
}

func (f *fake) NextTimes(id string, n int) ([]time.Time, error) {
	f.record("next " + id)
	return []time.Time{time.Date(2030, 1, 2, 4, 0, 0, 0, time.UTC)}, nil
}

var _ api.Schedules = (*fake)(nil)

// The schedule routes: status codes, bodies, idempotent creation, bad input
// refused with 400 before the service is asked, and writes sent to the
// owner of the schedule's shard.
func TestScheduleRoutes(t *testing.T) {
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
	spec := `{"name":"n","every":"30s","job":{"command":["true"]}}`
	code, body, h := do("POST", "/v1/schedules", spec, map[string]string{"Idempotency-Key": "k1"})
	if code != http.StatusCreated || h.Get("Location") != "/v1/schedules/s1" || !strings.Contains(body, `"id":"s1"`) {
		t.Fatalf("create: %d %s %v", code, body, h)
	}
	if code, body, h := do("POST", "/v1/schedules", spec, map[string]string{"Idempotency-Key": "k1"}); code != http.StatusOK || h.Get("Idempotent-Replayed") != "true" || !strings.Contains(body, `"id":"s1"`) {
		t.Fatalf("create again with the same key: %d %s; want 200 replayed, the same schedule", code, body)
	}
	for _, tc := range []struct {
		method, path, body string
		hdr                map[string]string
		want               int
		in                 string
	}{
		{"POST", "/v1/schedules", `{"every":"30s","job":{"command":["true"]},"bogus":1}`, nil, 400, "unknown field"},
		{"POST", "/v1/schedules", `{"job":{"command":["true"]}}`, nil, 400, "give cron or every"},
		{"GET", "/v1/schedules", "", nil, 200, `"schedules":[`},
		{"GET", "/v1/schedules/s1", "", nil, 200, `"id":"s1"`},
		{"GET", "/v1/schedules/nope", "", nil, 404, "not found"},
		{"PATCH", "/v1/schedules/s1", `{"overlap":"allow"}`, map[string]string{"If-Match": "x"}, 400, "If-Match"},
		{"PATCH", "/v1/schedules/s1", `{"overlap":"allow"}`, map[string]string{"If-Match": "99"}, 409, "version"},
		{"PATCH", "/v1/schedules/s1", `{"overlap":"allow"}`, nil, 200, `"id":"s1"`},
		{"POST", "/v1/schedules/s1/pause", `{"note":"maintenance"}`, nil, 200, `"id":"s1"`},
		{"POST", "/v1/schedules/s1/pause", `{"note":`, nil, 400, "malformed"},
		{"POST", "/v1/schedules/s1/resume", "", nil, 200, `"id":"s1"`},
		{"POST", "/v1/schedules/s1/trigger", "", nil, 200, `"job_id":"j9"`},
		{"POST", "/v1/schedules/s1/backfill", `{"from":"2030-01-02T00:00:00Z","to":"2030-01-01T00:00:00Z"}`, nil, 400, "from not after to"},
		{"POST", "/v1/schedules/s1/backfill", `{"from":"2030-01-01T00:00:00Z","to":"2030-01-02T00:00:00Z"}`, nil, 200, `"runs":[]`},
		{"GET", "/v1/schedules/s1/runs?outcome=maybe", "", nil, 400, "outcome"},
		{"GET", "/v1/schedules/s1/runs?since=yesterday", "", nil, 400, "since"},
		{"GET", "/v1/schedules/s1/runs?outcome=fired&limit=5", "", nil, 200, `"nominal_time":"2030-01-02T03:00:00Z"`},
		{"GET", "/v1/schedules/s1/next?n=0", "", nil, 400, "n must be"},
		{"GET", "/v1/schedules/s1/next?n=3", "", nil, 200, `"times":["2030-01-02T04:00:00Z"]`},
		{"DELETE", "/v1/schedules/s1", "", nil, 204, ""},
		{"PUT", "/v1/schedules/s1", "{}", nil, 405, ""},
	} {
		code, body, _ := do(tc.method, tc.path, tc.body, tc.hdr)
		if code != tc.want || !strings.Contains(body, tc.in) {
			t.Errorf("%s %s %s: %d %s; want %d with %q", tc.method, tc.path, tc.body, code, strings.TrimSpace(body), tc.want, tc.in)
		}
	}
	calls := f.sched().calls
	want := []string{`patch s1 {"overlap":"allow"}`, `patch s1 {"overlap":"allow"}`, "pause s1 maintenance", "resume s1", "trigger s1",
		"backfill s1 2030-01-01T00:00:00Z 2030-01-02T00:00:00Z", "runs s1 fired", "next s1", "delete s1"}
	if b, _ := json.Marshal(calls); string(b) != mustJSON(want) {
		t.Fatalf("the service was asked %v; want %v (bad input never reaches it; a version conflict is the service's to find)", calls, want)
	}
}

// With several shards, a write to a schedule goes to the owner of its
// shard; a server that owns none of it redirects there.
func TestScheduleWriteRedirectsToOwner(t *testing.T) {
	f := newFake("rm1", 4, tandem.StateActive)
	f.owners["s1"] = tandem.ServerRef{ID: "rm2", URL: "http://rm2.example:7070"}
	ts := httptest.NewServer(api.New(f, slog.New(slog.DiscardHandler)))
	t.Cleanup(ts.Close)
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Post(ts.URL+"/v1/schedules/s1/pause", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != "http://rm2.example:7070/v1/schedules/s1/pause" {
		t.Fatalf("pause on a non-owner: %d %q; want 307 to rm2", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
