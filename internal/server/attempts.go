package server

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/shard"
	"github.com/tandemhq/tandem/internal/store"
	"github.com/tandemhq/tandem/internal/workflow"
)

// errNotOwner means this server does not own the job's shard (any more).
var errNotOwner = tandem.Errorf(tandem.ENOTACTIVE, "this server does not own the job's shard")

// mutate applies fn to the current record of job id and writes the result,
// fenced by t, the term of the job's shard (I1), and conditional on the
// record not having changed since it was read. fn returns false to write
// nothing. With place, the write is also a placement on an agent (see
// store.Placement). Every job change of an owner goes through here, one at
// a time per shard, or through a batch that holds the same lock of every
// shard it writes to (mutateBatch, commitPlacements). It returns the job as written and the write's revision
// (0 when nothing was written).
func (s *Server) mutate(ctx context.Context, t *ha.Term, id string, place *store.Placement, fn func(j *tandem.Job, now time.Time) (bool, error)) (*tandem.Job, int64, error) {
	mu := &s.jobMu[t.Shard]
	mu.Lock()
	defer mu.Unlock()
	for try := 0; ; try++ {
		if t.Ended() != nil {
			return nil, 0, errNotOwner // I1: never write for a term that is over
		}
		j, rev, err := s.store.JobWithRev(id)
		if err != nil {
			return nil, 0, err
		}
		now := time.Now().UTC()
		write, err := fn(j, now)
		if err != nil || !write {
			return j, 0, err
		}
		j.UpdatedAt, j.UpdatedEpoch, j.UpdatedBy = now, t.Epoch(), s.cfg.ID
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		wrev, err := s.store.UpdateJob(wctx, t.Fence, j, rev, place)
		cancel()
		var conflict *store.ConflictError
		switch {
		case err == nil:
			return j, wrev, nil
		case errors.Is(err, tandem.ErrFenced):
			s.fenced(t)
			return nil, 0, err
		case errors.As(err, &conflict) && try < 5:
			// The view is behind the record: let it catch up, then read again.
			wctx, cancel := context.WithTimeout(ctx, writeTimeout)
			err := s.store.WaitRev(wctx, conflict.Rev)
			cancel()
			if err != nil {
				return nil, 0, err
			}
		default:
			return nil, 0, err
		}
	}
}

// change is one job change of a batch: fn applied to job id's record under
// t, the term of its shard, as mutate applies it. err is its outcome.
type change struct {
	t   *ha.Term
	id  string
	fn  func(j *tandem.Job, now time.Time) (bool, error)
	err error
}

// mutateMany applies changes (an agent's reports) as mutate applies each, but writes the records
// that change together, up to store.MaxWriteBatch to a transaction fenced by
// every term involved and conditional on every record being as read: an
// agent's sync with many reports costs one etcd round trip, not one each.
// A batch that cannot commit (a fence, a record changed meanwhile, no
// answer) is applied change by change through mutate, which tells the
// causes apart; so is a batch that names a job twice, in order.
func (s *Server) mutateMany(ctx context.Context, changes []*change) {
	for len(changes) > 0 {
		n := min(len(changes), store.MaxWriteBatch)
		batch := changes[:n]
		changes = changes[n:]
		if n > 1 && distinctJobs(batch) && s.mutateBatch(ctx, batch) {
			continue
		}
		for _, c := range batch {
			var rev int64
			_, rev, c.err = s.mutate(ctx, c.t, c.id, nil, c.fn)
			if rev > 0 {
				s.metrics.reports.WithLabelValues("single").Inc()
				s.metrics.reportTxns.WithLabelValues("single").Inc()
			}
		}
	}
}

func distinctJobs(changes []*change) bool {
	seen := make(map[string]bool, len(changes))
	for _, c := range changes {
		if seen[c.id] {
			return false
		}
		seen[c.id] = true
	}
	return true
}

// lockShards takes the job locks of the shards of terms, in shard order
// (mutate holds one at a time, so this order cannot deadlock), and returns
// what releases them.
func (s *Server) lockShards(terms []*ha.Term) func() {
	var shards []int
	seen := map[int]bool{}
	for _, t := range terms {
		if !seen[t.Shard] {
			seen[t.Shard] = true
			shards = append(shards, t.Shard)
		}
	}
	sort.Ints(shards)
	for _, k := range shards {
		s.jobMu[k].Lock()
	}
	return func() {
		for _, k := range shards {
			s.jobMu[k].Unlock()
		}
	}
}

// mutateBatch applies changes in one transaction, holding their shards'
// job locks from reading the records to the commit. It reports whether the
// batch is done, each change's outcome set. False: the batch was refused,
// or not answered (it may have committed), and no outcome is set; the
// changes' functions may have run, so each is written to run again.
func (s *Server) mutateBatch(ctx context.Context, changes []*change) bool {
	terms := make([]*ha.Term, len(changes))
	for i, c := range changes {
		terms[i] = c.t
	}
	defer s.lockShards(terms)()
	now := time.Now().UTC()
	writes := make([]store.JobWrite, 0, len(changes))
	errs := make([]error, len(changes))
	for i, c := range changes {
		if c.t.Ended() != nil {
			return false // mutate says so, change by change
		}
		j, rev, err := s.store.JobWithRev(c.id)
		if err != nil {
			errs[i] = err
			continue
		}
		write, err := c.fn(j, now)
		if err != nil || !write {
			errs[i] = err
			continue
		}
		j.UpdatedAt, j.UpdatedEpoch, j.UpdatedBy = now, c.t.Epoch(), s.cfg.ID
		writes = append(writes, store.JobWrite{Fence: c.t.Fence, Job: j, Rev: rev})
	}
	if len(writes) > 0 {
		if _, ok := s.writeBatch(ctx, writes, nil, s.metrics.reports, s.metrics.reportTxns); !ok {
			return false
		}
	}
	for i, c := range changes {
		c.err = errs[i]
	}
	return true
}

// writeBatch writes a batch of job records (and placement records) in one
// transaction, and reports whether it committed. When it did not (refused,
// or not answered) the records say what happened, and the caller applies
// the changes again one by one, which compares them again: a batch that did
// commit leaves them nothing to do (its jobs scheduled, its attempts
// recorded). A committed batch is counted in records and txns, by how:
// "batch" with several writes, "single" with one.
func (s *Server) writeBatch(ctx context.Context, writes []store.JobWrite, places []store.Placement, records, txns *prometheus.CounterVec) (int64, bool) {
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	rev, err := s.store.WriteJobs(wctx, writes, places)
	if err != nil {
		s.log.Debug("batch of job writes not committed; writing them one by one", "jobs", len(writes), "placements", len(places), "err", err)
		return 0, false
	}
	if len(writes) > 0 {
		how := "batch"
		if len(writes) == 1 {
			how = "single"
		}
		records.WithLabelValues(how).Add(float64(len(writes)))
		txns.WithLabelValues(how).Inc()
	}
	return rev, true
}

// termOf returns the term of the shard job id belongs to, or nil if this
// server does not own it.
func (s *Server) termOf(id string) *ha.Term {
	return s.core.Term(shard.Of(id, s.Shards()))
}

// settle sets a job's state after its latest attempt ended: done, killed,
// back to pending for a retry (with backoff), or failed/lost for good.
func settle(j *tandem.Job, now time.Time) {
	a := j.LastAttempt()
	spec := j.JobSpec.WithDefaults()
	switch {
	case a.State == tandem.AttemptSucceeded:
		j.State, j.Reason = tandem.JobSucceeded, ""
	case a.State == tandem.AttemptKilled || j.KillRequested:
		j.State, j.Reason = tandem.JobKilled, a.Reason
		if a.State != tandem.AttemptKilled || j.Reason == "" {
			j.Reason = "killed by request"
		}
	case a.Number < spec.MaxAttempts:
		wait := spec.RetryBackoff.Std() << (a.Number - 1)
		at := now.Add(wait)
		j.State, j.NotBefore = tandem.JobPending, &at
		j.Reason = fmt.Sprintf("attempt %d %s (%s); attempt %d of %d after %s", a.Number, a.State, a.Reason, a.Number+1, spec.MaxAttempts, wait)
	case a.State == tandem.AttemptLost:
		j.State, j.Reason = tandem.JobLost, fmt.Sprintf("attempt %d lost (%s); no attempts left", a.Number, a.Reason)
	default:
		j.State, j.Reason = tandem.JobFailed, fmt.Sprintf("attempt %d failed (%s); no attempts left", a.Number, a.Reason)
	}
}

// currentOn reports whether attemptID is the job's latest attempt, live,
// on agent: the only attempt whose reports count.
func currentOn(j *tandem.Job, attemptID, agent string) (*tandem.Attempt, bool) {
	a := j.LastAttempt()
	if a == nil || a.ID != attemptID || a.Agent != agent || !a.State.Live() {
		return nil, false
	}
	return a, true
}

// runningChange is the change that records that agent runs attempt r, and
// what tells its outcome once applied: a kill order when the attempt is not
// current any more (replaced after its agent was declared lost, or its job
// was killed), which the agent must not keep.
func (s *Server) runningChange(t *ha.Term, agent string, r tandem.AttemptReport) (*change, func() (*tandem.KillOrder, error)) {
	var order *tandem.KillOrder
	kill := func(reason string) *tandem.KillOrder {
		return &tandem.KillOrder{AttemptID: r.AttemptID, Shard: t.Shard, Epoch: t.Epoch(), Reason: reason}
	}
	c := &change{t: t, id: r.JobID, fn: func(j *tandem.Job, now time.Time) (bool, error) {
		order = nil // a batch that did not commit applies it again
		a, ok := currentOn(j, r.AttemptID, agent)
		if !ok {
			order = kill("not a current attempt of its job (replaced, or the job ended)")
			return false, nil
		}
		if j.KillRequested {
			order = kill("killed by request")
		}
		if a.State == tandem.AttemptRunning {
			return false, nil
		}
		a.State, a.PID, a.StartedAt = tandem.AttemptRunning, r.PID, r.StartedAt
		if a.StartedAt == nil {
			a.StartedAt = &now
		}
		j.State, j.Reason = tandem.JobRunning, ""
		return true, nil
	}}
	return c, func() (*tandem.KillOrder, error) {
		switch {
		case tandem.ErrorCode(c.err) == tandem.ENOTFOUND:
			return kill("unknown job"), nil
		case c.err != nil:
			// An order found by a batch that then did not commit is not
			// given: the term may have ended since (errNotOwner).
			return nil, c.err
		}
		return order, nil
	}
}

// checkDone refuses a done report whose state is not a final one.
func checkDone(r tandem.AttemptReport) error {
	if r.State.Live() || r.State == "" {
		return tandem.Errorf(tandem.EINVALID, "done report for %s has state %q, not a final one", r.AttemptID, r.State)
	}
	return nil
}

// doneChange is the change that records how attempt r ended, if it is
// current; reports of attempts that are not are acknowledged and ignored,
// as are those of jobs that no longer exist (its outcome is then nil).
func doneChange(t *ha.Term, agent string, r tandem.AttemptReport) *change {
	return &change{t: t, id: r.JobID, fn: func(j *tandem.Job, now time.Time) (bool, error) {
		a, ok := currentOn(j, r.AttemptID, agent)
		if !ok {
			return false, nil
		}
		a.State, a.ExitCode, a.Signal, a.Reason = r.State, r.ExitCode, r.Signal, r.Reason
		if err := workflow.CheckOutputs(r.Outputs); err != nil {
			// The agent checks outputs before it reports them; whatever
			// slips through is refused here and fails the attempt, so the
			// steps after it never read them.
			if a.State == tandem.AttemptSucceeded {
				a.State = tandem.AttemptFailed
			}
			a.Reason = "outputs refused: " + tandem.ErrorMessage(err)
		} else {
			a.Outputs = r.Outputs
		}
		if r.PID != 0 {
			a.PID = r.PID
		}
		if r.StartedAt != nil {
			a.StartedAt = r.StartedAt
		}
		a.EndedAt = r.EndedAt
		if a.EndedAt == nil {
			a.EndedAt = &now
		}
		settle(j, now)
		return true, nil
	}}
}

// doneOutcome is the outcome of a change made by doneChange.
func doneOutcome(c *change) error {
	if tandem.ErrorCode(c.err) == tandem.ENOTFOUND {
		return nil
	}
	return c.err
}

// loseAttempt ends a live attempt on agent as lost, with reason.
func (s *Server) loseAttempt(ctx context.Context, t *ha.Term, agent, jobID, reason string) error {
	_, _, err := s.mutate(ctx, t, jobID, nil, func(j *tandem.Job, now time.Time) (bool, error) {
		a := j.LastAttempt()
		if a == nil || a.Agent != agent || !a.State.Live() {
			return false, nil
		}
		a.State, a.Reason, a.EndedAt = tandem.AttemptLost, reason, &now
		settle(j, now)
		return true, nil
	})
	return err
}

// Kill asks for a job to be killed. A pending job, or one whose attempt no
// agent has started, ends killed at once; a running attempt gets a kill
// order with its agent's next sync, and the job ends killed when the agent
// reports it. Killing a finished job is a conflict. Only the owner of the
// job's shard kills it (ErrNotActive elsewhere; the API sends the caller to
// the owner).
func (s *Server) Kill(ctx context.Context, id string) (*tandem.Job, error) {
	t := s.termOf(id)
	if t == nil {
		return nil, tandem.ErrNotActive
	}
	j, _, err := s.mutate(ctx, t, id, nil, func(j *tandem.Job, now time.Time) (bool, error) {
		if j.KillRequested || j.State == tandem.JobKilled {
			return false, nil // killing is idempotent
		}
		if j.State.Terminal() {
			return false, tandem.Errorf(tandem.ECONFLICT, "job %s already ended %s", j.ID, j.State)
		}
		j.KillRequested = true
		switch a := j.LastAttempt(); {
		case j.State == tandem.JobPending:
			j.State, j.Reason, j.NotBefore = tandem.JobKilled, "killed before it ran", nil
		case a != nil && a.State == tandem.AttemptScheduled:
			// If the agent launched it meanwhile, it reports an attempt that is
			// no longer current and is told to kill it.
			a.State, a.Reason, a.EndedAt = tandem.AttemptKilled, "killed before its agent started it", &now
			j.State, j.Reason = tandem.JobKilled, "killed before its agent started it"
		}
		return true, nil
	})
	if errors.Is(err, errNotOwner) {
		return nil, tandem.ErrNotActive
	}
	if err != nil {
		return nil, s.removedOr(store.KindJob, id, err) // a job retention removed answers 410
	}
	return j, nil
}
