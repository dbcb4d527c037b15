package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
)

// MaxTxnOps is etcd's default limit on the operations (and, separately, the
// comparisons) of one transaction (--max-txn-ops). A fire transaction that
// would exceed it is refused before it is sent.
const MaxTxnOps = 128

// schedView is the part of the view that holds schedules, their run
// records, and which jobs of each schedule are still live.
type schedView struct {
	schedules map[string]*schedEntry
	runs      map[string][]RunRecord         // schedule ID -> its run records, sorted by key (time)
	live      map[string]map[string]struct{} // schedule ID -> IDs of its runs (jobs, workflow runs) not yet terminal
}

type schedEntry struct {
	sch *tandem.Schedule
	rev int64
}

// RunRecord is a stored run record and its etcd key.
type RunRecord struct {
	Key string
	Run tandem.ScheduleRun
}

func (v *schedView) reset() {
	v.schedules = make(map[string]*schedEntry)
	v.runs = make(map[string][]RunRecord)
	v.live = make(map[string]map[string]struct{})
}

// applySchedulePut folds a key under schedules/ or fires/ into the view; it
// reports whether the key was one of them.
func (s *Store) applySchedulePut(kv *mvccpb.KeyValue) bool {
	key := string(kv.Key)
	switch {
	case strings.HasPrefix(key, s.keys.SchedulesPrefix()):
		var sch tandem.Schedule
		if s.decode(kv, &sch) {
			s.sched.schedules[sch.ID] = &schedEntry{sch: &sch, rev: kv.ModRevision}
		}
		return true
	case strings.HasPrefix(key, s.keys.FiresPrefix()):
		id, _, _, ok := s.keys.ParseFire(key)
		var r tandem.ScheduleRun
		if !ok || !s.decode(kv, &r) {
			return true
		}
		runs := s.sched.runs[id]
		i := sort.Search(len(runs), func(k int) bool { return runs[k].Key >= key })
		if i < len(runs) && runs[i].Key == key {
			runs[i].Run = r
			return true
		}
		s.sched.runs[id] = slices.Insert(runs, i, RunRecord{Key: key, Run: r})
		return true
	}
	return false
}

// applyScheduleDelete removes a key under schedules/ or fires/ from the
// view; it reports whether the key was one of them.
func (s *Store) applyScheduleDelete(kv *mvccpb.KeyValue) bool {
	key := string(kv.Key)
	switch {
	case strings.HasPrefix(key, s.keys.SchedulesPrefix()):
		delete(s.sched.schedules, strings.TrimPrefix(key, s.keys.SchedulesPrefix()))
		return true
	case strings.HasPrefix(key, s.keys.FiresPrefix()):
		id, _, _, ok := s.keys.ParseFire(key)
		if !ok {
			return true
		}
		runs := s.sched.runs[id]
		i := sort.Search(len(runs), func(k int) bool { return runs[k].Key >= key })
		if i < len(runs) && runs[i].Key == key {
			runs = slices.Delete(runs, i, i+1)
			if len(runs) == 0 {
				delete(s.sched.runs, id)
			} else {
				s.sched.runs[id] = runs
			}
		}
		return true
	}
	return false
}

// indexScheduleJob notes j as a live run of its schedule unless it is over.
func (s *Store) indexScheduleJob(j *tandem.Job) {
	if j.ScheduleID != "" && !j.State.Terminal() {
		s.addLiveRun(j.ScheduleID, j.ID)
	}
}

func (s *Store) unindexScheduleJob(j *tandem.Job) {
	if j.ScheduleID != "" {
		s.removeLiveRun(j.ScheduleID, j.ID)
	}
}

// addLiveRun notes run (a job or a workflow run) as a live run of schedule
// id; removeLiveRun forgets it.
func (s *Store) addLiveRun(id, run string) {
	m := s.sched.live[id]
	if m == nil {
		m = make(map[string]struct{})
		s.sched.live[id] = m
	}
	m[run] = struct{}{}
}

func (s *Store) removeLiveRun(id, run string) {
	if m := s.sched.live[id]; m != nil {
		delete(m, run)
		if len(m) == 0 {
			delete(s.sched.live, id)
		}
	}
}

func cloneSchedule(e *schedEntry) *tandem.Schedule {
	c := *e.sch
	c.Cron = slices.Clone(c.Cron)
	c.Buffered = slices.Clone(c.Buffered)
	c.Revision = e.rev
	return &c
}

// Schedule returns a copy of schedule id, with Revision set to its record's
// mod revision (the base of a conditional write), or an ENOTFOUND error.
func (s *Store) Schedule(id string) (*tandem.Schedule, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.sched.schedules[id]
	if !ok {
		return nil, tandem.Errorf(tandem.ENOTFOUND, "schedule %q not found", id)
	}
	return cloneSchedule(e), nil
}

// Schedules returns every schedule, sorted by ID.
func (s *Store) Schedules() []*tandem.Schedule {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*tandem.Schedule, 0, len(s.sched.schedules))
	for _, e := range s.sched.schedules {
		out = append(out, cloneSchedule(e))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// ScheduleRevs returns every schedule's ID and record mod revision: a cheap
// way for the controller to see which schedules changed.
func (s *Store) ScheduleRevs() map[string]int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]int64, len(s.sched.schedules))
	for id, e := range s.sched.schedules {
		out[id] = e.rev
	}
	return out
}

// ScheduleState is one consistent read of what the controller decides a
// schedule's fires from.
type ScheduleState struct {
	Schedule *tandem.Schedule // Revision set
	Live     []string         // IDs of its jobs not yet terminal, sorted
	Runs     []RunRecord      // its run records, oldest first
}

// ScheduleState returns schedule id with its live runs and run records, all
// from one state of the view, or an ENOTFOUND error.
func (s *Store) ScheduleState(id string) (*ScheduleState, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.sched.schedules[id]
	if !ok {
		return nil, tandem.Errorf(tandem.ENOTFOUND, "schedule %q not found", id)
	}
	st := &ScheduleState{Schedule: cloneSchedule(e), Runs: slices.Clone(s.sched.runs[id])}
	for jid := range s.sched.live[id] {
		st.Live = append(st.Live, jid)
	}
	sort.Strings(st.Live)
	return st, nil
}

// LiveRuns returns the number of jobs of schedule id not yet terminal.
func (s *Store) LiveRuns(id string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.sched.live[id])
}

// Runs returns schedule id's run records, oldest first, each with the state
// of its job as the view has it.
func (s *Store) Runs(id string) []tandem.ScheduleRun {
	s.mu.RLock()
	defer s.mu.RUnlock()
	recs := s.sched.runs[id]
	out := make([]tandem.ScheduleRun, 0, len(recs))
	for _, r := range recs {
		run := r.Run
		if je, ok := s.jobs[run.JobID]; ok && run.JobID != "" {
			run.JobState = je.job.State
		}
		if e, ok := s.wf.runs[run.WorkflowID]; ok && run.WorkflowID != "" {
			run.WorkflowState = e.wf.State
		}
		out = append(out, run)
	}
	return out
}

// HasRun reports whether the view holds the run record key.
func (s *Store) HasRun(id, key string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	runs := s.sched.runs[id]
	i := sort.Search(len(runs), func(k int) bool { return runs[k].Key >= key })
	return i < len(runs) && runs[i].Key == key
}

// CreateSchedule stores a new schedule, fenced by f, the term of its shard
// (I1). ErrFenced means nothing was written; ErrIDTaken means a schedule
// with its ID exists. On success the view shows it and its revision is
// returned.
func (s *Store) CreateSchedule(ctx context.Context, f election.Fence, sch *tandem.Schedule) (int64, error) {
	_, rev, _, err := s.CreateScheduleIdem(ctx, f, sch, "", "")
	return rev, err
}

// CreateScheduleIdem is CreateSchedule with an idempotency key: with a
// non-empty idemKey the schedule and the key are one transaction, so a
// retry of a creation whose answer was lost makes no second schedule (which
// would fire every time twice). A key already used for the same spec
// (specHash) returns the schedule it made, with created false; for another
// spec, an EIDEMPOTENCY error. Schedules' keys live apart from jobs' (the
// same client key names one job and one schedule at most), for
// IdempotencyTTL at least.
func (s *Store) CreateScheduleIdem(ctx context.Context, f election.Fence, sch *tandem.Schedule, idemKey, specHash string) (*tandem.Schedule, int64, bool, error) {
	rec := *sch
	rec.Revision = 0
	val, err := json.Marshal(&rec)
	if err != nil {
		return nil, 0, false, fmt.Errorf("encode schedule %s: %w", sch.ID, err)
	}
	rev, prevID, err := s.createIdem(ctx, f, newRecord{noun: "schedule", id: sch.ID, key: s.keys.Schedule(sch.ID), val: val,
		idemKey: idemKey, idemPrefix: scheduleIdemPrefix, specHash: specHash})
	switch {
	case err != nil:
		return nil, 0, false, err
	case prevID != "":
		prev, err := s.Schedule(prevID)
		if err != nil {
			return nil, 0, false, fmt.Errorf("idempotency key %q names schedule %s: %w", idemKey, prevID, err)
		}
		return prev, prev.Revision, false, nil
	}
	return sch, rev, true, nil
}

// scheduleIdemPrefix keeps schedules' idempotency keys apart from jobs'.
const scheduleIdemPrefix = "schedule\x00"

// DeleteSchedule deletes schedule id and its run records, fenced by f and
// conditional on the record still being at rev. The jobs it started stay.
// ErrFenced and ErrConflict (a *ConflictError) as for UpdateJob.
func (s *Store) DeleteSchedule(ctx context.Context, f election.Fence, id string, rev int64) error {
	key := s.keys.Schedule(id)
	resp, err := s.cli.Txn(ctx).
		If(f.IsOwner(), clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpDelete(key), clientv3.OpDelete(s.keys.Fires(id), clientv3.WithPrefix())).
		Else(clientv3.OpGet(f.Key, clientv3.WithKeysOnly()), clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return fmt.Errorf("delete schedule %s: %w", id, err)
	}
	if !resp.Succeeded {
		return s.scheduleTxnFailed("delete schedule "+id, f, key, resp)
	}
	return s.WaitRev(ctx, resp.Header.Revision)
}

// scheduleTxnFailed explains a failed transaction whose Else read the fence
// key and then the schedule key.
func (s *Store) scheduleTxnFailed(what string, f election.Fence, key string, resp *clientv3.TxnResponse) error {
	if !f.Held(resp.Responses[0].GetResponseRange().Kvs) {
		return fmt.Errorf("%s: %w", what, tandem.ErrFenced)
	}
	cur := resp.Header.Revision
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		cur = kvs[0].ModRevision
	}
	return fmt.Errorf("%s: %w", what, &ConflictError{Key: key, Rev: cur})
}

// Fire is one fenced transaction of a schedule's owner: the schedule's new
// record (cursor, buffered times, or a user's change), the run records it
// decided, the jobs they start, and old run records to prune.
type Fire struct {
	// Schedule is the record to write; Rev is its mod revision as read: the
	// write commits only if nobody wrote the record since.
	Schedule *tandem.Schedule
	Rev      int64
	// Runs are new run records: each key must not exist yet.
	Runs []RunRecord
	// Jobs are new jobs (created as CreateJob creates them), Workflows new
	// workflow runs: each ID must not be taken.
	Jobs      []*tandem.Job
	Workflows []*tandem.Workflow
	// Prune are run record keys to delete.
	Prune []string
}

// Ops returns how many operations and comparisons the transaction needs.
func (fi *Fire) Ops() (ops, cmps int) {
	return 1 + len(fi.Runs) + len(fi.Jobs) + len(fi.Workflows) + len(fi.Prune), 2 + len(fi.Runs) + len(fi.Jobs) + len(fi.Workflows)
}

// Fire commits fi in one transaction guarded by f (I1), by the schedule
// record's mod revision (no decision is taken twice, and none on a stale
// schedule), and by the absence of every new run and job key. That is what
// makes a fire exactly once (I7): the cursor move, the run record and the
// job are one write, which a deposed owner cannot make and which nobody can
// make twice.
//
// ErrFenced means f no longer holds; a *ConflictError (ErrConflict) means
// the schedule record changed since Rev or a key was taken: let the view
// reach its Rev, read again and decide again. Nothing is written on error.
// On success the view shows the write and its revision is returned.
func (s *Store) Fire(ctx context.Context, f election.Fence, fi *Fire) (int64, error) {
	id := fi.Schedule.ID
	if ops, cmps := fi.Ops(); ops > MaxTxnOps || cmps > MaxTxnOps {
		return 0, fmt.Errorf("fire schedule %s: %d operations and %d comparisons, more than etcd's limit of %d", id, ops, cmps, MaxTxnOps)
	}
	rec := *fi.Schedule
	rec.Revision = 0
	g, err := newGuardedWrite("fire schedule "+id, s.keys.Schedule(id), fi.Rev, f, &rec)
	if err != nil {
		return 0, err
	}
	for _, r := range fi.Runs {
		if err := g.create(r.Key, &r.Run); err != nil {
			return 0, err
		}
	}
	for _, j := range fi.Jobs {
		if err := g.create(s.keys.Job(j.ID), j); err != nil {
			return 0, err
		}
	}
	for _, wf := range fi.Workflows {
		if err := g.create(s.keys.Workflow(wf.ID), wf); err != nil {
			return 0, err
		}
	}
	for _, k := range fi.Prune {
		g.ops = append(g.ops, clientv3.OpDelete(k))
	}
	return s.commitGuarded(ctx, f, g, "a run or job key of schedule "+id)
}

// PruneRuns deletes run records of schedule id, fenced by f.
func (s *Store) PruneRuns(ctx context.Context, f election.Fence, id string, keys []string) error {
	if len(keys) > MaxTxnOps {
		keys = keys[:MaxTxnOps]
	}
	ops := make([]clientv3.Op, 0, len(keys))
	for _, k := range keys {
		ops = append(ops, clientv3.OpDelete(k))
	}
	resp, err := s.cli.Txn(ctx).If(f.IsOwner()).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("prune runs of schedule %s: %w", id, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("prune runs of schedule %s: %w", id, tandem.ErrFenced)
	}
	return s.WaitRev(ctx, resp.Header.Revision)
}
