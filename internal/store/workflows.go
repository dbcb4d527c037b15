package store

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
)

// wfView is the part of the view that holds workflow runs.
type wfView struct {
	runs  map[string]*wfEntry
	order []string // run IDs, sorted (creation order: IDs are monotonic)
	// dirty holds the runs whose record, or one of whose steps' jobs,
	// changed since the controller last took them (TakeDirtyWorkflows).
	dirty map[string]struct{}
}

type wfEntry struct {
	wf  *tandem.Workflow
	rev int64
}

func (v *wfView) reset() {
	v.runs = make(map[string]*wfEntry)
	v.order = nil
	v.dirty = make(map[string]struct{})
}

// applyWorkflowPut folds a key under workflows/ into the view; it reports
// whether the key was one.
func (s *Store) applyWorkflowPut(kv *mvccpb.KeyValue, loading bool) bool {
	key := string(kv.Key)
	if !strings.HasPrefix(key, s.keys.WorkflowsPrefix()) {
		return false
	}
	var wf tandem.Workflow
	if !s.decode(kv, &wf) {
		return true
	}
	old, ok := s.wf.runs[wf.ID]
	switch {
	case ok:
		s.unindexWorkflow(old.wf)
	case loading:
		s.wf.order = append(s.wf.order, wf.ID) // sorted after the load
	default:
		s.wf.order = insertSorted(s.wf.order, wf.ID)
	}
	s.wf.runs[wf.ID] = &wfEntry{wf: &wf, rev: kv.ModRevision}
	s.indexWorkflow(&wf)
	s.wf.dirty[wf.ID] = struct{}{}
	return true
}

// applyWorkflowDelete removes a key under workflows/ from the view; it
// reports whether the key was one.
func (s *Store) applyWorkflowDelete(kv *mvccpb.KeyValue) bool {
	key := string(kv.Key)
	if !strings.HasPrefix(key, s.keys.WorkflowsPrefix()) {
		return false
	}
	id := strings.TrimPrefix(key, s.keys.WorkflowsPrefix())
	if e, ok := s.wf.runs[id]; ok {
		s.unindexWorkflow(e.wf)
		delete(s.wf.runs, id)
		if i, found := slices.BinarySearch(s.wf.order, id); found {
			s.wf.order = slices.Delete(s.wf.order, i, i+1)
		}
	}
	return true
}

// indexWorkflow counts a running run of a schedule among the schedule's
// live runs (its overlap policy sees it as it sees a live job).
func (s *Store) indexWorkflow(wf *tandem.Workflow) {
	if wf.ScheduleID != "" && !wf.State.Terminal() {
		s.addLiveRun(wf.ScheduleID, wf.ID)
	}
}

func (s *Store) unindexWorkflow(wf *tandem.Workflow) {
	if wf.ScheduleID != "" {
		s.removeLiveRun(wf.ScheduleID, wf.ID)
	}
}

// noteWorkflowJob marks the run of a step's job as needing a look: the job
// changed.
func (s *Store) noteWorkflowJob(j *tandem.Job) {
	if j.WorkflowID != "" {
		s.wf.dirty[j.WorkflowID] = struct{}{}
	}
}

func insertSorted(order []string, id string) []string {
	if n := len(order); n == 0 || order[n-1] < id {
		return append(order, id)
	}
	i, found := slices.BinarySearch(order, id)
	if found {
		return order
	}
	return slices.Insert(order, i, id)
}

func cloneWorkflow(e *wfEntry) *tandem.Workflow {
	c := *e.wf
	c.Progress = make(map[string]tandem.StepRun, len(e.wf.Progress))
	for k, r := range e.wf.Progress {
		r.Outputs = maps.Clone(r.Outputs)
		r.Jobs = slices.Clone(r.Jobs)
		c.Progress[k] = r
	}
	c.Params = maps.Clone(c.Params)
	// Steps are never changed after creation: they are shared.
	c.Revision = e.rev
	return &c
}

// Workflow returns a copy of workflow run id, with Revision set to its
// record's mod revision (the base of a conditional write), or an ENOTFOUND
// error.
func (s *Store) Workflow(id string) (*tandem.Workflow, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.wf.runs[id]
	if !ok {
		return nil, tandem.Errorf(tandem.ENOTFOUND, "workflow %q not found", id)
	}
	return cloneWorkflow(e), nil
}

// Workflows returns the runs f selects, oldest first, at most f.Limit (all
// if 0) after f.After, and the cursor of the next page ("" at the end).
func (s *Store) Workflows(f tandem.WorkflowFilter) ([]*tandem.Workflow, string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i := 0
	if f.After != "" {
		i, _ = slices.BinarySearch(s.wf.order, f.After)
		if i < len(s.wf.order) && s.wf.order[i] == f.After {
			i++
		}
	}
	var out []*tandem.Workflow
	for ; i < len(s.wf.order); i++ {
		e := s.wf.runs[s.wf.order[i]]
		wf := e.wf
		if (f.State != "" && wf.State != f.State) || (f.Schedule != "" && wf.ScheduleID != f.Schedule) ||
			(f.Query != "" && !strings.Contains(wf.Name, f.Query) && !strings.Contains(wf.ID, f.Query)) {
			continue
		}
		if f.Limit > 0 && len(out) == f.Limit {
			return out, out[len(out)-1].ID
		}
		out = append(out, cloneWorkflow(e))
	}
	return out, ""
}

// WorkflowIDs returns the IDs of the runs in state, sorted (all runs if
// state is empty).
func (s *Store) WorkflowIDs(state tandem.WorkflowState) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for _, id := range s.wf.order {
		if state == "" || s.wf.runs[id].wf.State == state {
			out = append(out, id)
		}
	}
	return out
}

// WorkflowCounts returns the number of runs in each state.
func (s *Store) WorkflowCounts() map[tandem.WorkflowState]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[tandem.WorkflowState]int, len(tandem.WorkflowStates))
	for _, e := range s.wf.runs {
		out[e.wf.State]++
	}
	return out
}

// TakeDirtyWorkflows returns the IDs of the runs whose record or step jobs
// changed since the last call, and forgets them.
func (s *Store) TakeDirtyWorkflows() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.wf.dirty))
	for id := range s.wf.dirty {
		out = append(out, id)
	}
	clear(s.wf.dirty)
	sort.Strings(out)
	return out
}

// WorkflowJobs returns the jobs of run id's steps' latest attempts, by job
// ID, as the view has them (a job not in the view is absent).
func (s *Store) WorkflowJobs(wf *tandem.Workflow) map[string]*tandem.Job {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]*tandem.Job)
	for _, r := range wf.Progress {
		if je, ok := s.jobs[r.JobID]; ok && r.JobID != "" {
			out[r.JobID] = cloneJob(je.job)
		}
	}
	return out
}

// CreateWorkflowIdem stores a new workflow run, fenced by f, the term of its
// shard (I1), with an optional idempotency key in the same transaction: a
// key already used for the same spec (specHash) returns the run it made,
// with created false; for another spec, an EIDEMPOTENCY error. ErrFenced
// means nothing was written; ErrIDTaken means a run with its ID exists.
func (s *Store) CreateWorkflowIdem(ctx context.Context, f election.Fence, wf *tandem.Workflow, idemKey, specHash string) (*tandem.Workflow, bool, error) {
	rec := *wf
	rec.Revision = 0
	val, err := json.Marshal(&rec)
	if err != nil {
		return nil, false, fmt.Errorf("encode workflow %s: %w", wf.ID, err)
	}
	rev, prevID, err := s.createIdem(ctx, f, newRecord{noun: "workflow", id: wf.ID, key: s.keys.Workflow(wf.ID), val: val,
		idemKey: idemKey, idemPrefix: workflowIdemPrefix, specHash: specHash})
	switch {
	case err != nil:
		return nil, false, err
	case prevID != "":
		prev, err := s.Workflow(prevID)
		if err != nil {
			return nil, false, fmt.Errorf("idempotency key %q names workflow %s: %w", idemKey, prevID, err)
		}
		return prev, false, nil
	}
	out := *wf
	out.Revision = rev
	return &out, true, nil
}

// workflowIdemPrefix keeps workflow runs' idempotency keys apart from jobs'
// and schedules'.
const workflowIdemPrefix = "workflow\x00"

// WorkflowCommit is one fenced transaction of a run's owner: the run's new
// record and the jobs of the attempts its decisions start.
type WorkflowCommit struct {
	// Workflow is the record to write; Rev is its mod revision as read:
	// the write commits only if nobody wrote the record since.
	Workflow *tandem.Workflow
	Rev      int64
	// Jobs are new jobs: each ID must not be taken.
	Jobs []*tandem.Job
}

// CommitWorkflow commits c in one transaction guarded by f (I1), by the
// run's mod revision (no decision is taken twice, and none on a stale
// record) and by the absence of every new job key: a decision and the job
// it starts are one write, which a deposed owner cannot make and nobody can
// make twice.
//
// ErrFenced means f no longer holds; a *ConflictError (ErrConflict) means
// the record changed since Rev (or a job ID was taken): let the view reach
// its Rev, read again and decide again. Nothing is written on error. On
// success the view shows the write and its revision is returned.
func (s *Store) CommitWorkflow(ctx context.Context, f election.Fence, c *WorkflowCommit) (int64, error) {
	id := c.Workflow.ID
	if 1+len(c.Jobs) > MaxTxnOps {
		return 0, fmt.Errorf("commit workflow %s: %d jobs, more than etcd's limit of %d operations", id, len(c.Jobs), MaxTxnOps-1)
	}
	rec := *c.Workflow
	rec.Revision = 0
	g, err := newGuardedWrite("commit workflow "+id, s.keys.Workflow(id), c.Rev, f, &rec)
	if err != nil {
		return 0, err
	}
	for _, j := range c.Jobs {
		if err := g.create(s.keys.Job(j.ID), j); err != nil {
			return 0, err
		}
	}
	return s.commitGuarded(ctx, f, g, "a job key of workflow "+id)
}
