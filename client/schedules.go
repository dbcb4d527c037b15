package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/transport"
)

// Schedules (docs/API.md, "Schedules"). Writes go to the owner of the
// schedule's shard (the active, with one shard), as for jobs; reads are
// answered by any server from its view, linearizably. Every call blocks and
// fails over as SubmitJob does.

// CreateSchedule stores a new schedule and returns it. The idempotency key
// (opts.IdempotencyKey, or a random one) makes a retry after an ambiguous
// failure return the schedule the first attempt created rather than make a
// second one, which would fire every nominal time twice.
func (c *Client) CreateSchedule(ctx context.Context, spec tandem.ScheduleSpec, opts SubmitOptions) (*tandem.Schedule, error) {
	key := opts.IdempotencyKey
	if key == "" {
		key = NewIdempotencyKey()
	}
	body, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("create schedule: encode spec: %w", err)
	}
	var s tandem.Schedule
	if err := c.tr.Do(ctx, &transport.Call{Op: "create schedule", Method: http.MethodPost, Path: "/v1/schedules",
		Body: body, Header: http.Header{IdempotencyKeyHeader: {key}}, Active: true}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// GetSchedule returns schedule id; one that does not exist matches
// tandem.ErrNotFound.
func (c *Client) GetSchedule(ctx context.Context, id string) (*tandem.Schedule, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "schedule ID is empty")
	}
	var s tandem.Schedule
	if err := c.tr.Do(ctx, &transport.Call{Op: "get schedule " + strconv.Quote(id), Method: http.MethodGet,
		Path: "/v1/schedules/" + url.PathEscape(id), Active: true}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// ListSchedules returns every schedule, by ID.
func (c *Client) ListSchedules(ctx context.Context) ([]*tandem.Schedule, error) {
	var out struct {
		Schedules []*tandem.Schedule `json:"schedules"`
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "list schedules", Method: http.MethodGet, Path: "/v1/schedules", Active: true}, &out); err != nil {
		return nil, err
	}
	if out.Schedules == nil {
		out.Schedules = []*tandem.Schedule{}
	}
	return out.Schedules, nil
}

// UpdateSchedule applies patch, a JSON merge patch (RFC 7386) of the
// schedule's spec, to schedule id. With version non-zero the update is
// refused (a conflict) unless the schedule is still at that version.
func (c *Client) UpdateSchedule(ctx context.Context, id string, patch json.RawMessage, version int64) (*tandem.Schedule, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "schedule ID is empty")
	}
	h := http.Header{}
	if version != 0 {
		h.Set("If-Match", strconv.FormatInt(version, 10))
	}
	var s tandem.Schedule
	if err := c.tr.Do(ctx, &transport.Call{Op: "update schedule " + strconv.Quote(id), Method: http.MethodPatch,
		Path: "/v1/schedules/" + url.PathEscape(id), Body: patch, Header: h, Active: true}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// DeleteSchedule deletes schedule id and its run records; the jobs it
// started stay. Deleting a schedule that does not exist matches
// tandem.ErrNotFound.
func (c *Client) DeleteSchedule(ctx context.Context, id string) error {
	if id == "" {
		return tandem.Errorf(tandem.EINVALID, "schedule ID is empty")
	}
	return c.tr.Do(ctx, &transport.Call{Op: "delete schedule " + strconv.Quote(id), Method: http.MethodDelete,
		Path: "/v1/schedules/" + url.PathEscape(id), Active: true}, nil)
}

// PauseSchedule pauses schedule id: every nominal time that falls due is
// recorded skipped (reason paused) until it is resumed. note says why.
func (c *Client) PauseSchedule(ctx context.Context, id, note string) (*tandem.Schedule, error) {
	body, _ := json.Marshal(map[string]string{"note": note})
	return c.scheduleAction(ctx, id, "pause", body)
}

// ResumeSchedule resumes a paused schedule.
func (c *Client) ResumeSchedule(ctx context.Context, id string) (*tandem.Schedule, error) {
	return c.scheduleAction(ctx, id, "resume", []byte("{}"))
}

func (c *Client) scheduleAction(ctx context.Context, id, action string, body []byte) (*tandem.Schedule, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "schedule ID is empty")
	}
	var s tandem.Schedule
	if err := c.tr.Do(ctx, &transport.Call{Op: action + " schedule " + strconv.Quote(id), Method: http.MethodPost,
		Path: "/v1/schedules/" + url.PathEscape(id) + "/" + action, Body: body, Active: true}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// TriggerSchedule starts one extra run of schedule id now (reason manual),
// outside its nominal times; it does not move the schedule's cursor.
func (c *Client) TriggerSchedule(ctx context.Context, id string) (*tandem.ScheduleRun, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "schedule ID is empty")
	}
	var run tandem.ScheduleRun
	if err := c.tr.Do(ctx, &transport.Call{Op: "trigger schedule " + strconv.Quote(id), Method: http.MethodPost,
		Path: "/v1/schedules/" + url.PathEscape(id) + "/trigger", Body: []byte("{}"), Active: true}, &run); err != nil {
		return nil, err
	}
	return &run, nil
}

// BackfillSchedule runs each of schedule id's nominal times in [from, to]
// once (reason backfill); times already backfilled are not run again, so a
// retry is safe. It returns the runs it started.
func (c *Client) BackfillSchedule(ctx context.Context, id string, from, to time.Time) ([]tandem.ScheduleRun, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "schedule ID is empty")
	}
	body, _ := json.Marshal(map[string]time.Time{"from": from, "to": to})
	var out struct {
		Runs []tandem.ScheduleRun `json:"runs"`
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "backfill schedule " + strconv.Quote(id), Method: http.MethodPost,
		Path: "/v1/schedules/" + url.PathEscape(id) + "/backfill", Body: body, Active: true}, &out); err != nil {
		return nil, err
	}
	if out.Runs == nil {
		out.Runs = []tandem.ScheduleRun{}
	}
	return out.Runs, nil
}

// ScheduleRuns returns schedule id's run records that match f, oldest first.
func (c *Client) ScheduleRuns(ctx context.Context, id string, f tandem.ScheduleRunFilter) ([]tandem.ScheduleRun, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "schedule ID is empty")
	}
	q := url.Values{}
	if f.Outcome != "" {
		q.Set("outcome", string(f.Outcome))
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		q.Set("until", f.Until.Format(time.RFC3339Nano))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Runs []tandem.ScheduleRun `json:"runs"`
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "list runs of schedule " + strconv.Quote(id), Method: http.MethodGet,
		Path: "/v1/schedules/" + url.PathEscape(id) + "/runs", Query: q, Active: true}, &out); err != nil {
		return nil, err
	}
	if out.Runs == nil {
		out.Runs = []tandem.ScheduleRun{}
	}
	return out.Runs, nil
}

// NextTimes returns up to n of schedule id's nominal times still to come.
func (c *Client) NextTimes(ctx context.Context, id string, n int) ([]time.Time, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "schedule ID is empty")
	}
	var out struct {
		Times []time.Time `json:"times"`
	}
	q := url.Values{}
	if n > 0 {
		q.Set("n", strconv.Itoa(n))
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "next times of schedule " + strconv.Quote(id), Method: http.MethodGet,
		Path: "/v1/schedules/" + url.PathEscape(id) + "/next", Query: q, Active: true}, &out); err != nil {
		return nil, err
	}
	if out.Times == nil {
		out.Times = []time.Time{}
	}
	return out.Times, nil
}
