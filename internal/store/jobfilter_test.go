package store

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/tandemhq/tandem"
)

func TestFilterJobs(t *testing.T) {
	var all []*tandem.Job
	for i, spec := range []tandem.JobSpec{
		{Name: "etl-daily", Labels: map[string]string{"team": "data"}, Submitter: "ann"},
		{Name: "report", Submitter: "bob"},
		{Name: "ETL-weekly", Labels: map[string]string{"team": "ops"}, Submitter: "ann"},
		{Name: "backup", Labels: map[string]string{"team": "data"}, Submitter: "ann"},
	} {
		j := &tandem.Job{ID: "j" + string(rune('1'+i)), JobSpec: spec, State: tandem.JobSucceeded}
		if i%2 == 1 {
			j.State = tandem.JobFailed
			j.Attempts = []tandem.Attempt{{Agent: "w1"}, {Agent: "w2"}}
		}
		all = append(all, j)
	}
	// A pager over all, in pages of at most 2 to make FilterJobs walk.
	var asked []int
	page := func(after string, limit int, state tandem.JobState) ([]*tandem.Job, string) {
		asked = append(asked, limit)
		var out []*tandem.Job
		for _, j := range all {
			if j.ID <= after || state != "" && j.State != state {
				continue
			}
			if len(out) == min(limit, 2) {
				return out, out[len(out)-1].ID
			}
			out = append(out, j)
		}
		return out, ""
	}
	ids := func(js []*tandem.Job) []string {
		var out []string
		for _, j := range js {
			out = append(out, j.ID)
		}
		return out
	}
	for _, tc := range []struct {
		query    string
		after    string
		limit    int
		want     []string
		wantNext string
	}{
		{"q=etl", "", 10, []string{"j1", "j3"}, ""},
		{"q=J2", "", 10, []string{"j2"}, ""},
		{"label=team=data", "", 10, []string{"j1", "j4"}, ""},
		{"label=team", "", 10, []string{"j1", "j3", "j4"}, ""},
		{"submitter=ann", "", 2, []string{"j1", "j3"}, "j3"},
		{"submitter=ann", "j3", 2, []string{"j4"}, ""},
		{"agent=w2", "", 10, []string{"j2", "j4"}, ""},
		{"agent=w2&state=failed&label=team", "", 10, []string{"j4"}, ""},
		{"agent=w3", "", 10, nil, ""},
	} {
		q, _ := url.ParseQuery(tc.query)
		f, err := JobFilterFromQuery(q)
		if err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		got, next := FilterJobs(page, tc.after, tc.limit, f)
		if !slices.Equal(ids(got), tc.want) || next != tc.wantNext {
			t.Errorf("%s after %q limit %d: got %v next %q, want %v next %q", tc.query, tc.after, tc.limit, ids(got), next, tc.want, tc.wantNext)
		}
		if f.Values().Encode() != q.Encode() {
			t.Errorf("%s: Values gives back %s", tc.query, f.Values().Encode())
		}
	}
	for _, bad := range []string{"state=nope", "label==v"} {
		q, _ := url.ParseQuery(bad)
		if _, err := JobFilterFromQuery(q); tandem.ErrorCode(err) != tandem.EINVALID {
			t.Errorf("%s: got %v, want invalid_argument", bad, err)
		}
	}
}

func TestFilterJobsByScheduleAndWorkflow(t *testing.T) {
	all := []*tandem.Job{
		{ID: "j1", ScheduleID: "s1", State: tandem.JobSucceeded},
		{ID: "j2", WorkflowID: "w1", Step: "a", State: tandem.JobSucceeded},
		{ID: "j3", ScheduleID: "s2", State: tandem.JobFailed},
		{ID: "j4", WorkflowID: "w1", Step: "b", State: tandem.JobFailed},
		{ID: "j5", WorkflowID: "w10", Step: "a", State: tandem.JobSucceeded},
		{ID: "j6", ScheduleID: "s1", State: tandem.JobFailed},
	}
	page := func(after string, limit int, state tandem.JobState) ([]*tandem.Job, string) {
		var out []*tandem.Job
		for _, j := range all {
			if j.ID <= after || state != "" && j.State != state {
				continue
			}
			if len(out) == limit {
				return out, out[len(out)-1].ID
			}
			out = append(out, j)
		}
		return out, ""
	}
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"schedule=s1", []string{"j1", "j6"}},
		{"schedule=s1&state=failed", []string{"j6"}},
		{"workflow=w1", []string{"j2", "j4"}}, // exactly: not w10
		{"workflow=w10", []string{"j5"}},
		{"workflow=w1&schedule=s1", nil},
		{"schedule=s9", nil},
	} {
		q, _ := url.ParseQuery(tc.query)
		f, err := JobFilterFromQuery(q)
		if err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		if !f.Narrow() {
			t.Errorf("%s: Narrow is false, want true", tc.query)
		}
		got, _ := FilterJobs(page, "", 10, f)
		var ids []string
		for _, j := range got {
			ids = append(ids, j.ID)
		}
		if !slices.Equal(ids, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.query, ids, tc.want)
		}
		if f.Values().Encode() != q.Encode() {
			t.Errorf("%s: Values gives back %s", tc.query, f.Values().Encode())
		}
	}
	for _, tc := range []struct{ query, want string }{
		{"schedule=s%201", `schedule "s 1" is not a schedule ID`},
		{"workflow=w/1", `workflow "w/1" is not a workflow ID`},
		{"workflow=" + strings.Repeat("w", tandem.MaxNameLen+1), "workflow is longer than"},
	} {
		q, _ := url.ParseQuery(tc.query)
		_, err := JobFilterFromQuery(q)
		if tandem.ErrorCode(err) != tandem.EINVALID || !strings.Contains(tandem.ErrorMessage(err), tc.want) {
			t.Errorf("%s: got %v, want invalid_argument saying %q", tc.query, err, tc.want)
		}
	}
}
