package store

import (
	"net/url"
	"strings"

	"github.com/tandemhq/tandem"
)

// JobFilter selects jobs for GET /v1/jobs and the web UI's job list. Its zero
// value selects every job. Every set field must match.
type JobFilter struct {
	// State is the job's state.
	State tandem.JobState
	// Query matches, without regard to case, part of the job's ID or name.
	Query string
	// Label is "key=value" (the job has that label with that value) or
	// "key" (the job has that label, with any value).
	Label string
	// Submitter is the job's submitter, exactly.
	Submitter string
	// Agent is the ID of an agent that ran (or runs) one of the job's
	// attempts.
	Agent string
	// Schedule is the ID of the schedule that started the job, exactly.
	Schedule string
	// Workflow is the ID of the workflow run that started the job (one job
	// per attempt of a step), exactly.
	Workflow string
}

// JobFilterFromQuery reads a filter from URL query parameters: state, q,
// label, submitter, agent, schedule and workflow. An unknown state, a value
// longer than tandem.MaxNameLen, a label without a key, and a schedule or
// workflow ID with a character an ID never has are EINVALID errors.
func JobFilterFromQuery(q url.Values) (JobFilter, error) {
	f := JobFilter{
		State:     tandem.JobState(q.Get("state")),
		Query:     strings.TrimSpace(q.Get("q")),
		Label:     strings.TrimSpace(q.Get("label")),
		Submitter: strings.TrimSpace(q.Get("submitter")),
		Agent:     strings.TrimSpace(q.Get("agent")),
		Schedule:  strings.TrimSpace(q.Get("schedule")),
		Workflow:  strings.TrimSpace(q.Get("workflow")),
	}
	if f.State != "" && !f.State.Valid() {
		return f, tandem.Errorf(tandem.EINVALID, "unknown job state %q; known states: %v", f.State, tandem.JobStates)
	}
	for name, v := range map[string]string{"q": f.Query, "label": f.Label, "submitter": f.Submitter, "agent": f.Agent,
		"schedule": f.Schedule, "workflow": f.Workflow} {
		if len(v) > tandem.MaxNameLen {
			return f, tandem.Errorf(tandem.EINVALID, "%s is longer than %d bytes", name, tandem.MaxNameLen)
		}
	}
	for name, v := range map[string]string{"schedule": f.Schedule, "workflow": f.Workflow} {
		if !validID(v) {
			return f, tandem.Errorf(tandem.EINVALID, "%s %q is not a %s ID: IDs are letters, digits, '-' and '_'", name, v, name)
		}
	}
	if strings.HasPrefix(f.Label, "=") {
		return f, tandem.Errorf(tandem.EINVALID, "label must be key=value or key, not %q", f.Label)
	}
	return f, nil
}

// Values returns the filter as URL query parameters (the inverse of
// JobFilterFromQuery), leaving out the fields that are not set.
func (f JobFilter) Values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"state": string(f.State), "q": f.Query, "label": f.Label, "submitter": f.Submitter, "agent": f.Agent,
		"schedule": f.Schedule, "workflow": f.Workflow} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// Narrow reports whether the filter selects on more than the state, which
// the store's page function does itself.
func (f JobFilter) Narrow() bool {
	return f.Query != "" || f.Label != "" || f.Submitter != "" || f.Agent != "" || f.Schedule != "" || f.Workflow != ""
}

// validID reports whether s could be the ID of a schedule or a workflow
// run (empty: no filter). IDs are made of letters, digits, '-' and '_';
// anything else is a mistake worth saying, not a filter that matches
// nothing.
func validID(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// Match reports whether job j passes the filter.
func (f JobFilter) Match(j *tandem.Job) bool {
	if f.State != "" && j.State != f.State {
		return false
	}
	if f.Query != "" {
		q := strings.ToLower(f.Query)
		if !strings.Contains(strings.ToLower(j.ID), q) && !strings.Contains(strings.ToLower(j.Name), q) {
			return false
		}
	}
	if f.Label != "" {
		k, v, hasValue := strings.Cut(f.Label, "=")
		got, ok := j.Labels[k]
		if !ok || hasValue && got != v {
			return false
		}
	}
	if f.Submitter != "" && j.Submitter != f.Submitter {
		return false
	}
	if f.Schedule != "" && j.ScheduleID != f.Schedule {
		return false
	}
	if f.Workflow != "" && j.WorkflowID != f.Workflow {
		return false
	}
	if f.Agent != "" {
		ran := false
		for _, a := range j.Attempts {
			ran = ran || a.Agent == f.Agent
		}
		if !ran {
			return false
		}
	}
	return true
}

// String words the filter for messages: "state=running q=etl".
func (f JobFilter) String() string {
	s := f.Values().Encode()
	if s == "" {
		return "all jobs"
	}
	return strings.ReplaceAll(s, "&", " ")
}

// JobPager returns a page of jobs in ID order after the ID after, of at most
// limit jobs in state (all states if empty), and the cursor of the next page
// ("" at the end): Store.Jobs, or the server's Jobs, which adds why pending
// jobs wait.
type JobPager func(after string, limit int, state tandem.JobState) ([]*tandem.Job, string)

// scanPage is how many jobs FilterJobs asks the pager for at a time.
const scanPage = 500

// FilterJobs returns a page of at most limit jobs after the cursor after
// that pass f, in ID order, and the cursor of the next page ("" when no job
// is left to look at). It walks the pager's pages, so a filter that matches
// few jobs reads the whole view once: fine for a view held in memory, and
// the price of keeping the store's own listing (and its other callers)
// untouched.
func FilterJobs(page JobPager, after string, limit int, f JobFilter) ([]*tandem.Job, string) {
	if !f.Narrow() {
		return page(after, limit, f.State)
	}
	out := make([]*tandem.Job, 0, min(limit, scanPage))
	cursor := after
	for {
		jobs, next := page(cursor, scanPage, f.State)
		for _, j := range jobs {
			if !f.Match(j) {
				continue
			}
			if len(out) == limit {
				return out, out[len(out)-1].ID
			}
			out = append(out, j)
		}
		if next == "" {
			return out, ""
		}
		cursor = next
	}
}
