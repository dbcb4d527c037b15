package store

import (
	"net/url"
	"slices"
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
