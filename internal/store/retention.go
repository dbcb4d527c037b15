package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
)

// Retention bounds the history a cluster keeps (docs/RETENTION.md): a
// finished record is removed once it has been finished for Age and is not
// among the Keep most recently finished records of its kind (finished jobs
// on their own; finished workflow runs, each with its step jobs). Both
// conditions must hold, so Keep is a floor whatever the age, and Age a
// floor whatever the count.
type Retention struct {
	Age  time.Duration
	Keep int
}

// Kinds of removed records, as in their tombstone keys (removed/<kind>/<id>).
const (
	KindJob      = "jobs"
	KindWorkflow = "workflows"
)

// ReasonRetention is the reason of every removal retention makes.
const ReasonRetention = "retention"

// Expired is one finished record retention may remove, as the view had it:
// a job, or a workflow run with the jobs of its steps (removed with their
// run, never before it).
type Expired struct {
	Kind       string
	ID         string
	Shard      int
	Rev        int64 // the record's mod revision: the removal commits only if it is unchanged
	State      string
	FinishedAt time.Time
	// Job or Workflow is a copy of the record (for the archive).
	Job      *tandem.Job
	Workflow *tandem.Workflow
	// Steps are the step jobs of a workflow run, oldest first.
	Steps []Expired
}

// records returns how many records removing e deletes.
func (e *Expired) records() int { return 1 + len(e.Steps) }

// Removal is the tombstone of a removed record, kept under
// removed/<kind>/<id> (bound to a lease, so tombstones expire too): reading
// a removed job or run answers that it was removed, and when, rather than
// "not found".
type Removal struct {
	Kind       string    `json:"kind"`
	ID         string    `json:"id"`
	State      string    `json:"state"`
	FinishedAt time.Time `json:"finished_at"`
	RemovedAt  time.Time `json:"removed_at"`
	Reason     string    `json:"reason"`
	// WorkflowID names the run a step job was removed with.
	WorkflowID string `json:"workflow_id,omitempty"`
}

// RemovedPrefix is the prefix of every tombstone.
func (s *Store) RemovedPrefix() string { return s.keys.Prefix() + "removed/" }

// RemovedKey is the tombstone key of record id of kind.
func (s *Store) RemovedKey(kind, id string) string { return s.RemovedPrefix() + kind + "/" + id }

// Expired returns, oldest finished first, at most limit records (0: no
// limit) that retention r removes at now from the shards owned selects. It
// reads the view only. The count r.Keep is over the whole cluster (every
// shard), so each owner keeps its part of the newest r.Keep.
//
// Never selected: a job that is not terminal or whose last attempt is still
// live; a step job of a run still in the view (it goes with its run); a run
// that is not terminal or has a step job that is not (or is live).
func (s *Store) Expired(now time.Time, r Retention, owned func(shard int) bool, limit int) []Expired {
	if r.Age <= 0 {
		return nil
	}
	cutoff := now.Add(-r.Age)
	// The scan holds the view's read lock; sorting and choosing happen
	// without it, so the watch is held up as little as possible.
	s.mu.RLock()

	steps := make(map[string][]*tandem.Job) // run ID -> its step jobs in the view
	var jobs []Expired
	youngJobs := 0
	for _, je := range s.jobs {
		j := je.job
		if j.WorkflowID != "" {
			if _, ok := s.wf.runs[j.WorkflowID]; ok {
				steps[j.WorkflowID] = append(steps[j.WorkflowID], j)
				continue
			}
		}
		if !finished(j) {
			continue
		}
		if !j.UpdatedAt.Before(cutoff) {
			youngJobs++
			continue
		}
		jobs = append(jobs, Expired{Kind: KindJob, ID: j.ID, Shard: j.Shard, Rev: je.rev,
			State: string(j.State), FinishedAt: j.UpdatedAt})
	}
	var runs []Expired
	youngRuns := 0
	for id, e := range s.wf.runs {
		wf := e.wf
		if !wf.State.Terminal() {
			continue
		}
		at := wf.UpdatedAt
		if wf.EndedAt != nil {
			at = *wf.EndedAt
		}
		if !at.Before(cutoff) {
			youngRuns++
			continue
		}
		x := Expired{Kind: KindWorkflow, ID: id, Shard: wf.Shard, Rev: e.rev, State: string(wf.State), FinishedAt: at}
		ok := true
		for _, j := range steps[id] {
			if !finished(j) {
				ok = false // a stray attempt still to end (or be killed): keep the run
				break
			}
			x.Steps = append(x.Steps, Expired{Kind: KindJob, ID: j.ID, Shard: j.Shard, Rev: s.jobs[j.ID].rev,
				State: string(j.State), FinishedAt: j.UpdatedAt})
		}
		if ok {
			runs = append(runs, x)
		}
	}
	s.mu.RUnlock()
	jobs = beyondKeep(jobs, youngJobs, r.Keep)
	runs = beyondKeep(runs, youngRuns, r.Keep)

	out := make([]Expired, 0, len(jobs)+len(runs))
	for _, x := range slices.Concat(jobs, runs) {
		if owned(x.Shard) {
			out = append(out, x)
		}
	}
	slices.SortFunc(out, func(a, b Expired) int {
		if c := a.FinishedAt.Compare(b.FinishedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	// Copies for the archive, only of what is returned; a record that
	// changed since the scan is left for the next pass (its removal would
	// fail its comparison anyway).
	s.mu.RLock()
	defer s.mu.RUnlock()
	kept := out[:0]
	for _, x := range out {
		if s.copyExpired(&x) {
			kept = append(kept, x)
		}
	}
	return kept
}

// copyExpired sets x's copies of its records, and reports whether they are
// still at the revisions x was chosen at.
func (s *Store) copyExpired(x *Expired) bool {
	switch x.Kind {
	case KindJob:
		je, ok := s.jobs[x.ID]
		if !ok || je.rev != x.Rev {
			return false
		}
		x.Job = cloneJob(je.job)
	case KindWorkflow:
		e, ok := s.wf.runs[x.ID]
		if !ok || e.rev != x.Rev {
			return false
		}
		x.Workflow = cloneWorkflow(e)
		slices.SortFunc(x.Steps, func(a, b Expired) int { return strings.Compare(a.ID, b.ID) })
		for k := range x.Steps {
			st := &x.Steps[k]
			if !s.copyExpired(st) {
				return false
			}
		}
	}
	return true
}

// finished reports whether j is over for good: terminal, with no live
// attempt left (a killed job's attempt may still be stopping).
func finished(j *tandem.Job) bool {
	if !j.State.Terminal() {
		return false
	}
	a := j.LastAttempt()
	return a == nil || !a.State.Live()
}

// beyondKeep returns the old records that are not among the keep most
// recently finished, given that young more recent ones exist.
func beyondKeep(old []Expired, young, keep int) []Expired {
	spare := keep - young // how many old ones the count still keeps
	if spare <= 0 {
		return old
	}
	if spare >= len(old) {
		return nil
	}
	slices.SortFunc(old, func(a, b Expired) int { // newest first
		if c := b.FinishedAt.Compare(a.FinishedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return old[spare:]
}

// removeOps is how many operations (and comparisons) one record's removal
// costs in a transaction: the delete and the tombstone's put; one
// comparison of its mod revision.
const removeOps = 2

// maxRemovePerTxn is how many records one removal transaction deletes, so
// that it keeps within etcd's limit on operations (MaxTxnOps).
const maxRemovePerTxn = MaxTxnOps / removeOps

// RemoveResult says what Remove did.
type RemoveResult struct {
	Removed []Expired // the records removed (a run's Steps hold those of its steps removed with it)
	Skipped int       // records left because they changed since they were read
	Rev     int64     // the revision of the last commit (0: none)
}

// Remove deletes the records of xs from etcd, each with a tombstone bound
// to tombLease, in transactions fenced by f (I1: only the owner of their
// shard removes records, and a deposed owner's removal fails with
// ErrFenced) and conditional on each record's mod revision (a record
// changed since the view read it, such as a workflow run retried, is never
// removed on a stale reading: it is skipped and looked at again on the
// next pass). Each transaction keeps within MaxTxnOps. A run whose step
// jobs do not fit in one transaction with it is removed with as many as fit;
// its other step jobs are then ordinary finished jobs, removed later (after
// their run, never before it).
//
// Before each transaction, before is called with the records it is about to
// remove; an error from before stops Remove before anything more is deleted
// (an archive that cannot write must not lose history). On return the view
// shows every removal made. All of xs must belong to f's shard.
func (s *Store) Remove(ctx context.Context, f election.Fence, xs []Expired, removedAt time.Time,
	tombLease clientv3.LeaseID, before func([]Expired) error) (RemoveResult, error) {
	var res RemoveResult
	for len(xs) > 0 {
		n, batch := 0, []Expired(nil)
		for len(xs) > 0 && n < maxRemovePerTxn {
			x := xs[0]
			if room := maxRemovePerTxn - n; x.records() > room {
				if n > 0 {
					break // the next transaction
				}
				x.Steps = x.Steps[:room-1]
			}
			batch = append(batch, x)
			n += x.records()
			xs = xs[1:]
		}
		if err := s.removeBatch(ctx, f, batch, removedAt, tombLease, before, &res); err != nil {
			return res, err
		}
	}
	if res.Rev != 0 {
		return res, s.WaitRev(ctx, res.Rev)
	}
	return res, nil
}

// removeBatch removes batch in one transaction; when one of its records
// changed, it splits the batch in halves and tries each, so one busy record
// never holds back the others.
func (s *Store) removeBatch(ctx context.Context, f election.Fence, batch []Expired, removedAt time.Time,
	tombLease clientv3.LeaseID, before func([]Expired) error, res *RemoveResult) error {
	if len(batch) == 0 {
		return nil
	}
	if before != nil {
		if err := before(batch); err != nil {
			return err
		}
	}
	cmps := []clientv3.Cmp{f.IsOwner()}
	var ops []clientv3.Op
	add := func(x *Expired, wf string) error {
		key := s.keys.Prefix() + x.Kind + "/" + x.ID
		tomb, err := json.Marshal(Removal{Kind: x.Kind, ID: x.ID, State: x.State, FinishedAt: x.FinishedAt,
			RemovedAt: removedAt.UTC(), Reason: ReasonRetention, WorkflowID: wf})
		if err != nil {
			return err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", x.Rev))
		ops = append(ops, clientv3.OpDelete(key),
			clientv3.OpPut(s.RemovedKey(x.Kind, x.ID), string(tomb), clientv3.WithLease(tombLease)))
		return nil
	}
	for i := range batch {
		x := &batch[i]
		if err := add(x, ""); err != nil {
			return fmt.Errorf("remove %s %s: %w", x.Kind, x.ID, err)
		}
		for k := range x.Steps {
			if err := add(&x.Steps[k], x.ID); err != nil {
				return fmt.Errorf("remove %s %s: %w", x.Kind, x.ID, err)
			}
		}
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(f.Key, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return fmt.Errorf("remove %d finished records: %w", len(batch), err)
	}
	if resp.Succeeded {
		res.Removed = append(res.Removed, batch...)
		res.Rev = resp.Header.Revision
		return nil
	}
	if !f.Held(resp.Responses[0].GetResponseRange().Kvs) {
		return fmt.Errorf("remove %d finished records: %w", len(batch), tandem.ErrFenced)
	}
	if len(batch) == 1 {
		res.Skipped += batch[0].records()
		return nil
	}
	// The halves were handed to before already.
	half := len(batch) / 2
	if err := s.removeBatch(ctx, f, batch[:half], removedAt, tombLease, nil, res); err != nil {
		return err
	}
	return s.removeBatch(ctx, f, batch[half:], removedAt, tombLease, nil, res)
}

// Removed returns the tombstone of record id of kind (KindJob,
// KindWorkflow), read from etcd, or nil if there is none: never removed,
// or removed so long ago that its tombstone expired. It is asked only
// when the view lacks the record, so it costs a read of etcd only then.
func (s *Store) Removed(ctx context.Context, kind, id string) (*Removal, error) {
	resp, err := s.cli.Get(ctx, s.RemovedKey(kind, id))
	if err != nil {
		return nil, fmt.Errorf("read the tombstone of %s %s: %w", kind, id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var r Removal
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		return nil, fmt.Errorf("decode the tombstone of %s %s: %w", kind, id, err)
	}
	return &r, nil
}

// RemovedError turns a tombstone into the error a reader of the removed
// record gets: ERemoved, saying when and why it went.
func RemovedError(r *Removal) error {
	noun := "job"
	if r.Kind == KindWorkflow {
		noun = "workflow run"
	}
	msg := fmt.Sprintf("%s %q was removed by %s at %s (it had finished %s at %s)",
		noun, r.ID, r.Reason, r.RemovedAt.UTC().Format(time.RFC3339), r.State, r.FinishedAt.UTC().Format(time.RFC3339))
	if r.WorkflowID != "" {
		msg += fmt.Sprintf(", with its workflow run %q", r.WorkflowID)
	}
	return tandem.Errorf(tandem.EREMOVED, "%s", msg)
}

// GrantTombstoneLease grants a lease of ttl for the tombstones of the
// removals to come: every tombstone written under it goes when it expires.
func (s *Store) GrantTombstoneLease(ctx context.Context, ttl time.Duration) (clientv3.LeaseID, error) {
	resp, err := s.cli.Grant(ctx, leaseSeconds(ttl))
	if err != nil {
		return 0, fmt.Errorf("grant a lease for tombstones: %w", err)
	}
	return resp.ID, nil
}
