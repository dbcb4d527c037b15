package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/store"
)

// mutate applies fn to the current record of job id and writes the result,
// fenced by epoch (I1) and conditional on the record not having changed
// since it was read. fn returns false to write nothing. All job changes of
// the active go through here, one at a time.
func (s *Server) mutate(ctx context.Context, epoch int64, id string, fn func(j *tandem.Job, now time.Time) (bool, error)) (*tandem.Job, error) {
	s.jobMu.Lock()
	defer s.jobMu.Unlock()
	for try := 0; ; try++ {
		j, rev, err := s.store.JobWithRev(id)
		if err != nil {
			return nil, err
		}
		now := time.Now().UTC()
		write, err := fn(j, now)
		if err != nil || !write {
			return j, err
		}
		j.UpdatedAt = now
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		err = s.store.UpdateJob(wctx, epoch, j, rev)
		cancel()
		switch {
		case err == nil:
			return j, nil
		case errors.Is(err, tandem.ErrFenced):
			s.fenced(epoch)
			return nil, err
		case errors.Is(err, store.ErrConflict) && try < 5:
			time.Sleep(5 * time.Millisecond) // let the view catch up with the other write
		default:
			return nil, err
		}
	}
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

// recordRunning records that agent runs an attempt. It returns a kill order
// when the attempt is not current any more (replaced after its agent was
// declared lost, or its job was killed): the agent must not keep it.
func (s *Server) recordRunning(ctx context.Context, epoch int64, agent string, r tandem.AttemptReport) (*tandem.KillOrder, error) {
	var order *tandem.KillOrder
	_, err := s.mutate(ctx, epoch, r.JobID, func(j *tandem.Job, now time.Time) (bool, error) {
		a, ok := currentOn(j, r.AttemptID, agent)
		if !ok {
			order = &tandem.KillOrder{AttemptID: r.AttemptID, Reason: "not a current attempt of its job (replaced, or the job ended)"}
			return false, nil
		}
		if j.KillRequested {
			order = &tandem.KillOrder{AttemptID: r.AttemptID, Reason: "killed by request"}
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
	})
	if tandem.ErrorCode(err) == tandem.ENOTFOUND {
		return &tandem.KillOrder{AttemptID: r.AttemptID, Reason: "unknown job"}, nil
	}
	return order, err
}

// recordDone records how an attempt ended, if it is current; reports of
// attempts that are not are acknowledged and ignored.
func (s *Server) recordDone(ctx context.Context, epoch int64, agent string, r tandem.AttemptReport) error {
	if r.State.Live() || r.State == "" {
		return tandem.Errorf(tandem.EINVALID, "done report for %s has state %q, not a final one", r.AttemptID, r.State)
	}
	_, err := s.mutate(ctx, epoch, r.JobID, func(j *tandem.Job, now time.Time) (bool, error) {
		a, ok := currentOn(j, r.AttemptID, agent)
		if !ok {
			return false, nil
		}
		a.State, a.ExitCode, a.Signal, a.Reason = r.State, r.ExitCode, r.Signal, r.Reason
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
	})
	if tandem.ErrorCode(err) == tandem.ENOTFOUND {
		return nil
	}
	return err
}

// loseAttempt ends a live attempt on agent as lost, with reason.
func (s *Server) loseAttempt(ctx context.Context, epoch int64, agent, jobID, reason string) error {
	_, err := s.mutate(ctx, epoch, jobID, func(j *tandem.Job, now time.Time) (bool, error) {
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
// reports it. Killing a finished job is a conflict.
func (s *Server) Kill(ctx context.Context, id string) (*tandem.Job, error) {
	epoch, ok := s.ActiveEpoch()
	if !ok {
		return nil, tandem.ErrNotActive
	}
	return s.mutate(ctx, epoch, id, func(j *tandem.Job, now time.Time) (bool, error) {
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
}
