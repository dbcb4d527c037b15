package ui

import (
	"cmp"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
)

// Schedules is what the schedule pages read of a server: its own view,
// never redirected. *server.Server implements it (as api.Schedules); a
// Service that does not has no schedule pages (pageList asks, as the API
// does for its routes). The pages' buttons are requests to the API's
// schedule routes, which check and audit them.
type Schedules interface {
	GetSchedule(id string) (*tandem.Schedule, error)
	ListSchedules() []*tandem.Schedule
	ScheduleRuns(id string, f tandem.ScheduleRunFilter) ([]tandem.ScheduleRun, error)
	NextTimes(id string, n int) ([]time.Time, error)
}

// How many next fire times the list and a schedule's page show, and how
// many of a schedule's latest runs its page lists.
const (
	listNextTimes   = 3
	detailNextTimes = 10
	detailRuns      = 50
)

// scheduleState words a schedule's state: done (no nominal time is left),
// paused, or active.
func scheduleState(s *tandem.Schedule) string {
	switch {
	case s.Done:
		return "done"
	case s.Paused:
		return "paused"
	}
	return "active"
}

// timing words when a schedule fires: its cron expressions or interval,
// and its time zone.
func timing(s *tandem.ScheduleSpec) string {
	var w string
	if len(s.Cron) > 0 {
		w = "cron " + strings.Join(s.Cron, " | ")
	} else {
		w = "every " + s.Every.Std().String()
	}
	if tz := cmp.Or(s.TZ, "UTC"); len(s.Cron) > 0 || s.TZ != "" {
		w += " (" + tz + ")"
	}
	return w
}

type scheduleRow struct {
	S     *tandem.Schedule
	State string
	Next  []time.Time
	Last  *runRow
}

// runRow is a run record with what the view says of the job or workflow
// run it started.
type runRow struct {
	tandem.ScheduleRun
	// Ref is the job or workflow run the fire started ("" for none), Link
	// its page, State its state in the view ("" when not in the view).
	Ref, Link, State string
	// ID is the row's id in the page (see key).
	ID string
}

func (u *UI) runRow(r tandem.ScheduleRun) *runRow {
	rr := &runRow{ScheduleRun: r}
	switch {
	case r.WorkflowID != "":
		rr.Ref, rr.Link = "workflow "+r.WorkflowID, "/ui/workflows/"+url.PathEscape(r.WorkflowID)
		rr.State = string(r.WorkflowState)
		if ws, ok := u.svc.(Workflows); ok && rr.State == "" {
			if wf, err := ws.GetWorkflow(r.WorkflowID); err == nil {
				rr.State = string(wf.State)
			}
		}
	case r.JobID != "":
		rr.Ref, rr.Link = "job "+r.JobID, "/ui/jobs/"+url.PathEscape(r.JobID)
		rr.State = string(r.JobState)
		if j, _, err := u.svc.Job(r.JobID); err == nil {
			rr.State = string(j.State)
		}
	}
	return rr
}

// key is the run's id in the page, stable across renders so live updates
// replace its row: its nominal time and outcome (a schedule has one record
// per nominal time) and its reason (a manual or backfilled fire).
func (r *runRow) key() string {
	return fmt.Sprintf("run-%d-%s-%s", r.NominalTime.UnixMilli(), r.Outcome, cmp.Or(r.Reason, "due"))
}

type schedulesData struct {
	Rows  []scheduleRow
	Count string
}

func (u *UI) scheduleRowOf(ss Schedules, s *tandem.Schedule) scheduleRow {
	row := scheduleRow{S: s, State: scheduleState(s)}
	if !s.Done {
		row.Next, _ = ss.NextTimes(s.ID, listNextTimes)
	}
	if runs, err := ss.ScheduleRuns(s.ID, tandem.ScheduleRunFilter{Limit: 1}); err == nil && len(runs) > 0 {
		row.Last = u.runRow(runs[len(runs)-1])
	}
	return row
}

func (u *UI) schedules(r *http.Request, s *session) (*view, error) {
	ss := u.svc.(Schedules)
	d := schedulesData{}
	for _, sch := range ss.ListSchedules() {
		d.Rows = append(d.Rows, u.scheduleRowOf(ss, sch))
	}
	d.Count = plural(len(d.Rows), "schedule")
	parts := []part{{ID: "schedules-count", Template: "schedules-count", Data: d}}
	for _, row := range d.Rows {
		parts = append(parts, part{ID: "schedule-" + row.S.ID, Parent: "schedule-rows", Template: "schedule-row", Data: row})
	}
	if len(d.Rows) == 0 {
		parts = append(parts, part{ID: "schedules-empty", Parent: "schedule-rows", Template: "schedules-empty", Data: d})
	}
	return &view{Title: "Schedules", Live: "/ui/schedules", Data: d, Parts: parts}, nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

type scheduleData struct {
	S       *tandem.Schedule
	State   string
	Timing  string
	Next    []time.Time
	NextErr string
	Runs    []*runRow
	Session *session
	Now     time.Time
	// RunsLimit is how many of the latest runs the page lists.
	RunsLimit int
}

func (u *UI) schedule(r *http.Request, s *session) (*view, error) {
	ss := u.svc.(Schedules)
	sch, err := ss.GetSchedule(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	d := scheduleData{S: sch, State: scheduleState(sch), Timing: timing(&sch.ScheduleSpec), Session: s, Now: u.cfg.Now(), RunsLimit: detailRuns}
	if !sch.Done {
		if d.Next, err = ss.NextTimes(sch.ID, detailNextTimes); err != nil {
			d.NextErr = tandem.ErrorMessage(err)
		}
	}
	runs, err := ss.ScheduleRuns(sch.ID, tandem.ScheduleRunFilter{Limit: detailRuns})
	if err != nil {
		return nil, err
	}
	// Newest first: the latest fire is what a reader looks for. Ids stay
	// unique even if two records share a time and reason.
	seen := map[string]int{}
	for _, run := range slices.Backward(runs) {
		rr := u.runRow(run)
		rr.ID = rr.key()
		if seen[rr.ID]++; seen[rr.ID] > 1 {
			rr.ID += fmt.Sprintf("-%d", seen[rr.ID])
		}
		d.Runs = append(d.Runs, rr)
	}
	parts := []part{
		{ID: "schedule-summary", Template: "schedule-summary", Data: d},
		{ID: "schedule-actions", Template: "schedule-actions", Data: d},
		{ID: "schedule-next", Template: "schedule-next", Data: d},
		{ID: "runs-caption", Template: "runs-caption", Data: d},
	}
	for _, run := range d.Runs {
		parts = append(parts, part{ID: run.ID, Parent: "run-rows", Template: "run-row", Data: run})
	}
	if len(d.Runs) == 0 {
		parts = append(parts, part{ID: "runs-empty", Parent: "run-rows", Template: "runs-empty", Data: d})
	}
	return &view{Title: "Schedule " + cmp.Or(sch.Name, sch.ID), Live: r.URL.Path, Data: d, Parts: parts}, nil
}

// scheduleActions are the schedule buttons: each a confirmation page (GET)
// and the write (POST), which is a request to the API's route of the same
// name.
var scheduleActions = map[string]struct {
	Question, Button, Did string
}{
	"pause":   {"Pause schedule %s? Every nominal time that falls due while it is paused is skipped (reason paused).", "Yes, pause %s", "Paused %s"},
	"resume":  {"Resume schedule %s? Its next nominal times fire again.", "Yes, resume %s", "Resumed %s"},
	"trigger": {"Fire schedule %s now? This starts one run at once (reason manual), outside its timetable.", "Yes, fire %s now", "Triggered %s"},
}

// scheduleConfirm asks before pausing, resuming or firing a schedule.
func (u *UI) scheduleConfirm(w http.ResponseWriter, r *http.Request) {
	s := sessionOf(r)
	id, action := r.PathValue("id"), r.PathValue("action")
	a, ok := scheduleActions[action]
	if !ok {
		u.errorPage(w, r, s, tandem.Errorf(tandem.ENOTFOUND, "no schedule action %q (pause, resume or trigger)", action))
		return
	}
	sch, err := u.svc.(Schedules).GetSchedule(id)
	if err != nil {
		u.errorPage(w, r, s, err)
		return
	}
	name := sch.ID
	if sch.Name != "" {
		name = sch.Name + " (" + sch.ID + ")"
	}
	back := "/ui/schedules/" + url.PathEscape(id)
	d := confirmData{Action: back + "/" + action, Back: back, Question: fmt.Sprintf(a.Question, name), Button: fmt.Sprintf(a.Button, name)}
	if action == "pause" {
		d.Fields = []field{{Name: "note", Label: "Note for the next operator (optional): why it is paused", Value: ""}}
	}
	u.render(w, r, s, http.StatusOK, "confirm", &view{Title: "Confirm " + action, Data: d})
}

// scheduleWrite pauses, resumes or fires a schedule through the API.
func (u *UI) scheduleWrite(w http.ResponseWriter, r *http.Request) {
	id, action := r.PathValue("id"), r.PathValue("action")
	a, ok := scheduleActions[action]
	if !ok {
		u.errorPage(w, r, sessionOf(r), tandem.Errorf(tandem.ENOTFOUND, "no schedule action %q (pause, resume or trigger)", action))
		return
	}
	var body any
	if action == "pause" {
		body = map[string]string{"note": strings.TrimSpace(r.PostFormValue("note"))}
	}
	res, err := u.call(r, "", http.MethodPost, "/v1/schedules/"+url.PathEscape(id)+"/"+action, body, nil)
	u.reportWrite(w, r, "/ui/schedules/"+url.PathEscape(id), fmt.Sprintf(a.Did, id), res, err)
}

// reportWrite reports a write's result like report, except that the API's
// refusal of the caller's token (401, 403) is answered with a 403 page, as
// kill does: what refused it is plain to people and scripts alike.
func (u *UI) reportWrite(w http.ResponseWriter, r *http.Request, back, did string, res apiResult, err error) {
	if err == nil && (res.Status == http.StatusForbidden || res.Status == http.StatusUnauthorized) {
		u.errorPage(w, r, sessionOf(r), tandem.Errorf(tandem.EFORBIDDEN, "refused by the API: %d %s", res.Status, res.errMessage()))
		return
	}
	u.report(w, r, back, did, res, err)
}
