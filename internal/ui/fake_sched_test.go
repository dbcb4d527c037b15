package ui_test

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
)

// The fake's schedules and workflow runs (ui.Schedules, ui.Workflows).

func (f *fake) addSchedulesAndWorkflows() {
	f.schedules = map[string]*tandem.Schedule{
		"s1": {ID: "s1", ScheduleSpec: tandem.ScheduleSpec{Name: "nightly-etl", Cron: []string{"0 2 * * *"}, TZ: "Europe/Paris",
			Job: tandem.JobSpec{Command: []string{"etl", "--all"}}}, Cursor: t0, Version: 1, CreatedAt: t0.Add(-48 * time.Hour), UpdatedAt: t0},
		"s2": {ID: "s2", ScheduleSpec: tandem.ScheduleSpec{Every: tandem.Duration(time.Hour), Paused: true, PauseNote: "db migration",
			Job: tandem.JobSpec{Command: []string{"true"}}}, Cursor: t0, Version: 2, CreatedAt: t0, UpdatedAt: t0},
		"s3": {ID: "s3", ScheduleSpec: tandem.ScheduleSpec{Name: "pipeline", Every: tandem.Duration(24 * time.Hour),
			Workflow: &tandem.WorkflowSpec{Name: "pipe", Steps: []tandem.WorkflowStep{{Name: "a"}}}}, Done: true, Cursor: t0, Version: 1, CreatedAt: t0, UpdatedAt: t0},
	}
	late := tandem.Duration(1500 * time.Millisecond)
	through := t0.Add(-2 * time.Hour)
	f.runs = map[string][]tandem.ScheduleRun{
		"s1": {
			{ScheduleID: "s1", NominalTime: t0.Add(-4 * time.Hour), Through: &through, Count: 3, Outcome: tandem.OutcomeSkipped, Reason: tandem.ReasonCatchup, FiredBy: "rm1", Epoch: 12, CommittedAt: t0},
			{ScheduleID: "s1", NominalTime: t0.Add(-time.Hour), Count: 1, Outcome: tandem.OutcomeFired, JobID: "j2", Late: late, FiredBy: "rm1", Epoch: 12, CommittedAt: t0},
			{ScheduleID: "s1", NominalTime: t0, Count: 1, Outcome: tandem.OutcomeFired, Reason: tandem.ReasonManual, JobID: "j1", FiredBy: "rm1", Epoch: 12, CommittedAt: t0},
		},
		"s3": {{ScheduleID: "s3", NominalTime: t0, Count: 1, Outcome: tandem.OutcomeFired, WorkflowID: "w1", FiredBy: "rm1", Epoch: 12, CommittedAt: t0}},
	}
	job := func(cmd string) json.RawMessage {
		b, _ := json.Marshal(tandem.JobSpec{Command: []string{cmd}})
		return b
	}
	f.workflows = map[string]*tandem.Workflow{
		"w1": {ID: "w1", WorkflowSpec: tandem.WorkflowSpec{Name: "pipe", Params: map[string]string{"day": "2026-11-30"}, Steps: []tandem.WorkflowStep{
			{Name: "extract", Job: job("x")},
			{Name: "transform", Job: job("t"), Needs: []string{"extract"}, Retries: 2},
			{Name: "report", Job: job("r"), Needs: []string{"extract"}},
			{Name: "load", Job: job("l"), Needs: []string{"transform", "report"}, Trigger: "all_done"},
		}}, State: tandem.WorkflowRunning, ScheduleID: "s3", NominalTime: t0, CreatedAt: t0, UpdatedAt: t0, AcceptedBy: "rm1", Epoch: 12,
			Progress: map[string]tandem.StepRun{
				"extract":   {State: tandem.StepSucceeded, Attempt: 1, JobID: "j2", Jobs: []string{"j2"}, Outputs: map[string]string{"rows": "42"}, StartedAt: t0, EndedAt: t0.Add(time.Second)},
				"transform": {State: tandem.StepRunning, Attempt: 2, JobID: "j1", Jobs: []string{"j0", "j1"}, Reason: "attempt 1 failed: exit 1; retrying", StartedAt: t0},
				"report":    {State: tandem.StepFailed, Attempt: 1, JobID: "j3", Jobs: []string{"j3"}, Reason: "exit status 3"},
			}},
		"w2": {ID: "w2", WorkflowSpec: tandem.WorkflowSpec{Name: "adhoc", Steps: []tandem.WorkflowStep{{Name: "only", Job: job("o")}}},
			State: tandem.WorkflowFailed, Reason: "step only failed", CreatedAt: t0, UpdatedAt: t0,
			Progress: map[string]tandem.StepRun{"only": {State: tandem.StepFailed, Attempt: 1, Reason: "exit status 1"}}},
	}
}

func (f *fake) GetSchedule(id string) (*tandem.Schedule, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.schedules[id]
	if !ok {
		return nil, tandem.Errorf(tandem.ENOTFOUND, "schedule %q not found", id)
	}
	c := *s
	return &c, nil
}

func (f *fake) ListSchedules() []*tandem.Schedule {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*tandem.Schedule
	for _, s := range f.schedules {
		c := *s
		out = append(out, &c)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

func (f *fake) ScheduleRuns(id string, rf tandem.ScheduleRunFilter) ([]tandem.ScheduleRun, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.schedules[id]; !ok {
		return nil, tandem.Errorf(tandem.ENOTFOUND, "schedule %q not found", id)
	}
	runs := append([]tandem.ScheduleRun(nil), f.runs[id]...)
	if rf.Limit > 0 && len(runs) > rf.Limit {
		runs = runs[len(runs)-rf.Limit:]
	}
	return runs, nil
}

func (f *fake) NextTimes(id string, n int) ([]time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.schedules[id]
	if !ok {
		return nil, tandem.Errorf(tandem.ENOTFOUND, "schedule %q not found", id)
	}
	var out []time.Time
	for i := 1; i <= n; i++ {
		out = append(out, s.Cursor.Add(time.Duration(i)*time.Hour))
	}
	return out, nil
}

func (f *fake) GetWorkflow(id string) (*tandem.Workflow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, ok := f.workflows[id]
	if !ok {
		return nil, tandem.Errorf(tandem.ENOTFOUND, "workflow run %q not found", id)
	}
	c := *w
	return &c, nil
}

func (f *fake) ListWorkflows(wf tandem.WorkflowFilter) ([]*tandem.Workflow, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.workflows {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []*tandem.Workflow
	for _, id := range ids {
		w := f.workflows[id]
		if id <= wf.After || wf.State != "" && w.State != wf.State || wf.Schedule != "" && w.ScheduleID != wf.Schedule ||
			wf.Query != "" && !strings.Contains(w.Name, wf.Query) && !strings.Contains(w.ID, wf.Query) {
			continue
		}
		if len(out) == wf.Limit {
			return out, out[len(out)-1].ID
		}
		c := *w
		out = append(out, &c)
	}
	return out, ""
}

// EtcdMembers answers as an etcd of three members whose leader is rm1, as
// rm2's client sees it; etcdErr, when set, is etcd not answering.
func (f *fake) EtcdMembers(ctx context.Context) (*clientv3.MemberListResponse, *clientv3.StatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.etcdErr != nil {
		return nil, nil, f.etcdErr
	}
	ml := &clientv3.MemberListResponse{Members: []*etcdserverpb.Member{
		{ID: 0x11, Name: "rm1", PeerURLs: []string{"http://rm1.test:2380"}, ClientURLs: []string{"http://rm1.test:2379"}},
		{ID: 0x22, Name: "rm2", PeerURLs: []string{"http://rm2.test:2380"}, ClientURLs: []string{"http://rm2.test:2379"}},
		{ID: 0x33, Name: "e3", PeerURLs: []string{"http://e3.test:2380"}, ClientURLs: []string{"http://e3.test:2379"}},
	}}
	st := &clientv3.StatusResponse{Header: &etcdserverpb.ResponseHeader{MemberId: 0x22}, Leader: f.etcdLeader, Version: "3.6.0"}
	return ml, st, nil
}
