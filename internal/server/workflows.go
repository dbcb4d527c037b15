package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/shard"
	"github.com/tandemhq/tandem/internal/store"
	"github.com/tandemhq/tandem/internal/workflow"
)

// Workflows: the fenced workflow controller and the Go API the HTTP layer
// serves.
//
// A workflow run belongs to one shard forever (a hash of its ID), and only
// that shard's owner writes it. The controller (runWorkflows, WhileOwning
// work) is level-triggered from durable state: for a run whose record or
// step jobs changed, it reads the record, records the end of every running
// step whose job has ended (workflow.Run.Finish, with the outputs the job's
// attempt reported), asks workflow.Decide what comes next, and commits the
// new record together with the jobs the decisions start in ONE transaction,
// fenced by the owner's epoch (I1) and guarded by the record's mod revision
// (store.CommitWorkflow). Only then does it act (kill the jobs of steps
// that timed out or were cancelled). So:
//
//   - a decision takes effect only by its commit; an owner deposed before
//     it writes nothing, and the next owner decides the same from the
//     stored record (Decide is a pure function of it);
//   - a step's job is created in the same write as the decision to start
//     it, so a step attempt has exactly one job (I7), and a finished step
//     (its record says so) is never started again;
//   - a started step's job is an ordinary job: it keeps running through a
//     failover, and the new owner finishes the step when the job ends;
//   - an action after a commit (a kill) is found again by the next owner:
//     any live job of a step whose record no longer runs it is killed.

// Limits of the workflow controller.
const (
	// wfJobsPerCommit bounds the jobs one commit starts (a wide fan-out is
	// started over several commits, each a prefix of the plan).
	wfJobsPerCommit = 32
	// wfJobBytesPerCommit bounds their encoded size, well under etcd's
	// request limit (1.5 MiB by default) with the record itself.
	wfJobBytesPerCommit = 512 << 10
	// workflowIDPrefix starts every workflow run ID, so run, schedule and
	// job IDs never look alike.
	workflowIDPrefix = "w"
)

// Failpoints of the workflow controller, for tests: the server kills itself
// (SIGKILL, as kill -9) when a commit changes step STEP (a decision or its
// end; with =STATE, only one that leaves it in STATE), just before the
// commit is sent (workflow-before-commit:STEP[=STATE]) or just after it
// committed (workflow-after-commit:STEP[=STATE]).
const (
	FailpointWorkflowBeforeCommit = "workflow-before-commit"
	FailpointWorkflowAfterCommit  = "workflow-after-commit"
)

// WorkflowPoint names a point of the workflow controller around a commit,
// where Config.WorkflowHook is called (tests depose the owner there).
type WorkflowPoint string

// Workflow points, in the order a commit passes them.
const (
	// WorkflowCommit: the commit is decided and about to be sent; nothing
	// of it is written yet.
	WorkflowCommit WorkflowPoint = "commit"
	// WorkflowCommitted: the commit has committed; nothing after it (a
	// kill) has been done yet.
	WorkflowCommitted WorkflowPoint = "committed"
)

// WorkflowEvent is what Config.WorkflowHook learns at a WorkflowPoint.
type WorkflowEvent struct {
	Point    WorkflowPoint
	Workflow string
	Shard    int
	Epoch    int64
	// Steps are the steps the commit changes (a decision or an end).
	Steps []string
}

func (s *Server) workflowHook(t *ha.Term, p WorkflowPoint, id string, steps []string) {
	if s.cfg.WorkflowHook != nil {
		s.cfg.WorkflowHook(WorkflowEvent{Point: p, Workflow: id, Shard: t.Shard, Epoch: t.Epoch(), Steps: steps})
	}
}

// validFailpoint reports whether fp names a failpoint this server knows.
func validFailpoint(fp string) bool {
	if fp == "" || fp == FailpointExitAfterAssign {
		return true
	}
	point, step, ok := strings.Cut(fp, ":")
	return ok && step != "" && (point == FailpointWorkflowBeforeCommit || point == FailpointWorkflowAfterCommit)
}

// WorkflowSpecOf converts the API's workflow spec to internal/workflow's.
// The two types have the same fields; a test keeps them so.
func WorkflowSpecOf(in tandem.WorkflowSpec) *workflow.Spec {
	out := &workflow.Spec{Name: in.Name, Params: maps.Clone(in.Params), Steps: make([]workflow.Step, len(in.Steps))}
	for i, st := range in.Steps {
		out.Steps[i] = workflow.Step{Name: st.Name, Job: st.Job, Needs: slices.Clone(st.Needs), Retries: st.Retries,
			Timeout: st.Timeout, Trigger: workflow.TriggerRule(st.Trigger), When: st.When}
	}
	return out
}

// ValidateWorkflow reports the first problem with spec as the server would
// (an EINVALID or ETOOLARGE *tandem.Error), for the CLI to refuse bad input
// before it asks.
func ValidateWorkflow(spec tandem.WorkflowSpec) error {
	b, err := json.Marshal(&spec)
	if err != nil {
		return tandem.Errorf(tandem.EINVALID, "invalid workflow: %v", err)
	}
	if len(b) > tandem.MaxWorkflowBytes {
		return tandem.Errorf(tandem.ETOOLARGE, "workflow is %d bytes in JSON, more than the limit of %d", len(b), tandem.MaxWorkflowBytes)
	}
	if err := WorkflowSpecOf(spec).Validate(); err != nil {
		var te *tandem.Error
		if errors.As(err, &te) {
			return tandem.Errorf(te.Code, "invalid workflow: %s", te.Message)
		}
		return err
	}
	return nil
}

// runOf returns the durable state Decide reads from a run's record.
func runOf(wf *tandem.Workflow) *workflow.Run {
	run := &workflow.Run{Cancelled: wf.Cancelled, Steps: make(map[string]workflow.StepRecord, len(wf.Progress))}
	for name, r := range wf.Progress {
		run.Steps[name] = workflow.StepRecord{State: workflow.StepState(r.State), Attempt: r.Attempt, StartedAt: r.StartedAt,
			Outputs: r.Outputs, Reason: r.Reason}
	}
	return run
}

// ---- The controller ----

// runWorkflows advances the workflow runs of the shards this server owns,
// while it owns any (WhileOwning work). It looks at every running run when
// it starts (a new owner picks up where the last one left off), then at the
// runs whose record or step jobs changed, and at timeouts when due.
func (s *Server) runWorkflows(ctx context.Context) {
	todo := make(map[string]struct{})
	s.store.TakeDirtyWorkflows() // the first pass looks at every run
	deadlines := make(map[string]time.Time)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var epochs map[int]int64 // the terms held at the last pass
	for {
		changed := s.store.Changed()
		terms := s.core.Changed()
		if held := s.heldEpochs(); !maps.Equal(held, epochs) {
			// A new term: look at every run again (a new owner picks up
			// where the last left off, and a finished run may have a job
			// to kill that its last owner did not get to).
			for _, id := range s.store.WorkflowIDs("") {
				todo[id] = struct{}{}
			}
			epochs = held
		}
		for _, id := range s.store.TakeDirtyWorkflows() {
			todo[id] = struct{}{}
		}
		now := s.localNow()
		for id, at := range deadlines {
			if !now.Before(at) {
				todo[id] = struct{}{}
				delete(deadlines, id)
			}
		}
		retry := false
		for _, id := range slices.Sorted(maps.Keys(todo)) {
			if ctx.Err() != nil {
				return
			}
			t := s.core.Term(shard.Of(id, s.Shards()))
			if t == nil || t.Ended() != nil {
				delete(todo, id) // another server's run; a new term looks at all again
				continue
			}
			next, err := s.advanceWorkflow(ctx, t, id)
			if err != nil {
				if ctx.Err() == nil && t.Ended() == nil && tandem.ErrorCode(err) != tandem.ENOTFOUND {
					s.log.Warn("workflow controller: could not advance", "workflow", id, "shard", t.Shard, "epoch", t.Epoch(), "err", err)
					retry = true
					continue // stays in todo
				}
			}
			delete(todo, id)
			if !next.IsZero() {
				deadlines[id] = next
			}
		}
		wait := time.Hour
		if retry {
			wait = time.Second // liveness only
		}
		for _, at := range deadlines {
			wait = min(wait, max(at.Sub(s.localNow()), time.Millisecond))
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-terms:
		case <-timer.C:
		}
	}
}

// heldEpochs returns the epoch of every shard this server owns.
func (s *Server) heldEpochs() map[int]int64 {
	held := s.core.Held()
	out := make(map[int]int64, len(held))
	for _, t := range held {
		out[t.Shard] = t.Epoch()
	}
	return out
}

// advanceWorkflow brings run id up to date for term t: it commits the end
// of the steps whose jobs ended and every decision Decide takes, in as many
// commits as needed, then kills the jobs the record no longer runs. It
// returns when Decide wants to look again (a step's timeout), zero if never.
func (s *Server) advanceWorkflow(ctx context.Context, t *ha.Term, id string) (time.Time, error) {
	for conflicts := 0; ; {
		if t.Ended() != nil {
			return time.Time{}, errNotOwner
		}
		wf, err := s.store.Workflow(id)
		if err != nil {
			return time.Time{}, err
		}
		c, next, touched, err := s.decideWorkflow(t, wf)
		if err != nil {
			return time.Time{}, err
		}
		if c == nil {
			s.killStray(ctx, wf)
			return next, nil
		}
		if t.Ended() != nil {
			return time.Time{}, errNotOwner // I1: never write for a term that is over
		}
		// From here only the fence protects the commit.
		s.workflowHook(t, WorkflowCommit, id, touched)
		s.failpoint(FailpointWorkflowBeforeCommit, c.Workflow, touched)
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		rev, err := s.store.CommitWorkflow(wctx, t.Fence, c)
		cancel()
		var conflict *store.ConflictError
		switch {
		case errors.Is(err, tandem.ErrFenced):
			s.log.Warn("workflow commit fenced: this server no longer owns the shard", "workflow", id, "shard", t.Shard, "epoch", t.Epoch())
			s.fenced(t)
			return time.Time{}, err
		case errors.As(err, &conflict) && conflicts < 5:
			conflicts++
			wctx, cancel := context.WithTimeout(ctx, writeTimeout)
			err := s.store.WaitRev(wctx, conflict.Rev)
			cancel()
			if err != nil {
				return time.Time{}, err
			}
			s.ids.seed(s.store.LastJobID())
			continue
		case err != nil:
			return time.Time{}, err
		}
		s.workflowHook(t, WorkflowCommitted, id, touched)
		s.failpoint(FailpointWorkflowAfterCommit, c.Workflow, touched)
		s.log.Debug("workflow advanced", "workflow", id, "state", c.Workflow.State, "steps", touched, "jobs", len(c.Jobs),
			"rev", rev, "shard", t.Shard, "epoch", t.Epoch())
		if c.Workflow.State.Terminal() {
			s.metrics.workflowRuns.WithLabelValues(string(c.Workflow.State)).Inc()
		}
		// Go on from the new record: a plan cut to fit one commit has more.
	}
}

// decideWorkflow computes the next commit of run wf: the end of steps whose
// jobs ended, then Decide's decisions with the jobs they start, as many as
// fit one commit. It returns nil when there is nothing to write, with the
// time Decide wants to look again; touched names the steps the commit
// changes.
func (s *Server) decideWorkflow(t *ha.Term, wf *tandem.Workflow) (*store.WorkflowCommit, time.Time, []string, error) {
	if wf.State.Terminal() {
		return nil, time.Time{}, nil, nil
	}
	spec := WorkflowSpecOf(wf.WorkflowSpec)
	run := runOf(wf)
	now := s.localNow().UTC()
	progress := wf.Progress
	if progress == nil {
		progress = make(map[string]tandem.StepRun)
	}
	var touched []string
	// 1. Steps whose job has ended.
	jobs := s.store.WorkflowJobs(wf)
	for _, name := range slices.Sorted(maps.Keys(progress)) {
		r := progress[name]
		if r.State != tandem.StepRunning {
			continue
		}
		j := jobs[r.JobID]
		var ok bool
		var outputs map[string]string
		var reason string
		switch {
		case j == nil:
			reason = fmt.Sprintf("its job %s is gone", r.JobID)
		case !j.State.Terminal():
			continue
		default:
			ok = j.State == tandem.JobSucceeded
			if a := j.LastAttempt(); a != nil {
				outputs = a.Outputs
			}
			reason = fmt.Sprintf("job %s %s", j.ID, j.State)
			if !ok && j.Reason != "" {
				reason += ": " + j.Reason
			}
		}
		if err := run.Finish(name, r.Attempt, ok, outputs, reason); err != nil {
			return nil, time.Time{}, nil, err
		}
		touched = append(touched, name)
	}
	// 2. Decisions, as many as fit one commit.
	var newJobs []*tandem.Job
	jobBytes := 0
	var next time.Time
	for full := false; !full; {
		plan, err := workflow.Decide(spec, run, now)
		if err != nil {
			return nil, time.Time{}, nil, fmt.Errorf("workflow %s: %w", wf.ID, err)
		}
		next = plan.NextDeadline
		if len(plan.Decisions) == 0 {
			wf.State, wf.Reason = tandem.WorkflowState(plan.State), plan.Reason
			break
		}
		progressed := false
		for _, d := range plan.Decisions {
			starts := d.Action == workflow.ActStart || d.Action == workflow.ActRetry
			if starts && (len(newJobs) == wfJobsPerCommit || jobBytes >= wfJobBytesPerCommit) {
				full = true
				break
			}
			if err := run.Apply(d, now); err != nil {
				return nil, time.Time{}, nil, err
			}
			progressed = true
			touched = append(touched, d.Step)
			if !starts {
				continue
			}
			j, err := s.stepJob(t, wf, spec, run, d)
			if err != nil {
				// The attempt cannot run (an output it needs is missing, or
				// the rendered job is invalid): it fails with the reason,
				// and Decide retries it if retries remain.
				if ferr := run.Finish(d.Step, d.Attempt, false, nil, "could not start: "+err.Error()); ferr != nil {
					return nil, time.Time{}, nil, ferr
				}
				continue
			}
			b, _ := json.Marshal(j)
			jobBytes += len(b)
			newJobs = append(newJobs, j)
			r := progress[d.Step]
			r.JobID = j.ID
			r.Jobs = append(slices.Clone(r.Jobs), j.ID)
			progress[d.Step] = r
		}
		if !progressed {
			break
		}
		if full {
			wf.State, wf.Reason = tandem.WorkflowRunning, ""
		}
	}
	if len(touched) == 0 {
		return nil, next, nil, nil
	}
	// Fold the run back into the record.
	for name, r := range run.Steps {
		p := progress[name]
		if p.State != string(r.State) || p.Attempt != r.Attempt {
			p.EndedAt = time.Time{}
			if r.State != workflow.StepRunning && r.State != workflow.StepPending {
				p.EndedAt = now
			}
		}
		p.State, p.Attempt, p.StartedAt, p.Outputs, p.Reason = string(r.State), r.Attempt, r.StartedAt, r.Outputs, r.Reason
		progress[name] = p
	}
	wf.Progress = progress
	wf.UpdatedAt, wf.UpdatedEpoch, wf.UpdatedBy = now, t.Epoch(), s.cfg.ID
	if wf.State.Terminal() && wf.EndedAt == nil {
		wf.EndedAt = &now
	}
	slices.Sort(touched)
	return &store.WorkflowCommit{Workflow: wf, Rev: wf.Revision, Jobs: newJobs}, next, slices.Compact(touched), nil
}

// stepJob makes the job of decision d (a start or retry) of run wf: the
// step's job rendered with the run's params and its ancestors' outputs, in
// the run's shard, with an ID that shard's owner makes.
func (s *Server) stepJob(t *ha.Term, wf *tandem.Workflow, spec *workflow.Spec, run *workflow.Run, d workflow.Decision) (*tandem.Job, error) {
	i := slices.IndexFunc(spec.Steps, func(st workflow.Step) bool { return st.Name == d.Step })
	if i < 0 {
		return nil, fmt.Errorf("no step %q", d.Step)
	}
	outputs := make(map[string]map[string]string, len(run.Steps))
	for name, r := range run.Steps {
		outputs[name] = r.Outputs
	}
	js, err := workflow.Render(spec.Steps[i].Job, spec.Params, outputs)
	if err != nil {
		return nil, err
	}
	name := wf.Name
	if name == "" {
		name = wf.ID
	}
	suffix := "." + d.Step
	if len(name)+len(suffix) > tandem.MaxNameLen {
		name = name[:tandem.MaxNameLen-len(suffix)]
	}
	js.Name = name + suffix
	env := make(map[string]string, len(js.Env)+7)
	maps.Copy(env, js.Env)
	env[tandem.EnvWorkflowID] = wf.ID
	env[tandem.EnvStep] = d.Step
	env[tandem.EnvStepAttempt] = strconv.Itoa(d.Attempt)
	if wf.ScheduleID != "" {
		env[EnvScheduleID] = wf.ScheduleID
		env[EnvNominalTime] = wf.NominalTime.UTC().Format(time.RFC3339Nano)
		env[EnvIntervalStart] = wf.IntervalStart.UTC().Format(time.RFC3339Nano)
		env[EnvIntervalEnd] = wf.NominalTime.UTC().Format(time.RFC3339Nano)
	}
	js.Env = env
	js.MaxAttempts = 1 // retrying is the step's business
	js = js.WithDefaults()
	if err := js.Validate(); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	id, ok := s.ids.next(now, func(id string) bool { return shard.Of(id, s.Shards()) == wf.Shard })
	if !ok {
		return nil, tandem.Errorf(tandem.EUNAVAILABLE, "could not make a job ID in shard %d; retry", wf.Shard)
	}
	return &tandem.Job{
		ID: id, Shard: wf.Shard, JobSpec: js, State: tandem.JobPending,
		CreatedAt: now, UpdatedAt: now, Epoch: t.Epoch(), AcceptedBy: s.cfg.ID, UpdatedEpoch: t.Epoch(), UpdatedBy: s.cfg.ID,
		WorkflowID: wf.ID, Step: d.Step,
	}, nil
}

// killStray kills every live job of run wf that its record does not run any
// more: the attempt of a step that timed out or was cancelled, whose kill
// comes after the commit (and, after a failover, from the next owner).
func (s *Server) killStray(ctx context.Context, wf *tandem.Workflow) {
	for name, r := range wf.Progress {
		for _, jid := range r.Jobs {
			if jid == r.JobID && r.State == tandem.StepRunning {
				continue
			}
			j, err := s.store.Job(jid)
			if err != nil || j.State.Terminal() || j.KillRequested {
				continue
			}
			if _, err := s.Kill(ctx, jid); err != nil && tandem.ErrorCode(err) != tandem.ECONFLICT {
				s.log.Warn("workflow controller: could not kill a step's job", "workflow", wf.ID, "step", name, "job", jid, "err", err)
			}
		}
	}
}

// failpoint kills this process, as kill -9 would, if the configured
// failpoint is point:STEP[=STATE] for a STEP in steps (that the commit of
// wf leaves in STATE).
func (s *Server) failpoint(point string, wf *tandem.Workflow, steps []string) {
	p, target, ok := strings.Cut(s.cfg.Failpoint, ":")
	step, state, _ := strings.Cut(target, "=")
	if !ok || p != point || !slices.Contains(steps, step) || (state != "" && wf.StepState(step) != state) {
		return
	}
	s.log.Warn("failpoint: killing this server", "failpoint", s.cfg.Failpoint)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

// ---- The Go API ----

// CreateWorkflowIdem validates spec and stores a new run, fenced by the
// owner of its shard; any server that owns a shard creates runs
// (ErrNotActive otherwise), giving each an ID in one of its shards, as for
// jobs. With idemKey, a retry with the same key and spec returns the run
// the first attempt made, created false, across servers and failovers. The
// run is committed to etcd before CreateWorkflowIdem returns; its first
// steps start as soon as the controller sees it.
func (s *Server) CreateWorkflowIdem(ctx context.Context, spec tandem.WorkflowSpec, idemKey string) (*tandem.Workflow, bool, error) {
	if len(idemKey) > MaxIdempotencyKeyLen {
		return nil, false, tandem.Errorf(tandem.EINVALID, "Idempotency-Key is %d bytes, more than %d", len(idemKey), MaxIdempotencyKeyLen)
	}
	if err := ValidateWorkflow(spec); err != nil {
		return nil, false, err
	}
	var got *tandem.Workflow
	var created bool
	err := s.createOwned(ctx, "workflow", workflowIDPrefix, func(ctx context.Context, t *ha.Term, id string) error {
		wf := s.newWorkflow(t, id, spec)
		wf.IdempotencyKey = idemKey
		var err error
		got, created, err = s.store.CreateWorkflowIdem(ctx, t.Fence, wf, idemKey, spec.Hash())
		if err == nil && created {
			s.log.Info("workflow created", "workflow", id, "name", spec.Name, "steps", len(spec.Steps), "shard", t.Shard, "epoch", t.Epoch())
		}
		return err
	})
	if err != nil {
		return nil, false, err
	}
	return got, created, nil
}

// newWorkflow is the record of a new run id of spec for term t.
func (s *Server) newWorkflow(t *ha.Term, id string, spec tandem.WorkflowSpec) *tandem.Workflow {
	now := time.Now().UTC()
	return &tandem.Workflow{ID: id, WorkflowSpec: spec, Shard: t.Shard, State: tandem.WorkflowRunning,
		CreatedAt: now, UpdatedAt: now, Epoch: t.Epoch(), AcceptedBy: s.cfg.ID, UpdatedEpoch: t.Epoch(), UpdatedBy: s.cfg.ID}
}

// scheduledWorkflow makes the workflow run schedule sch starts for nominal
// time at, covering (from, at], with an ID the schedule's shard's owner
// makes. Its steps' jobs get the schedule's environment (EnvScheduleID,
// EnvNominalTime, EnvIntervalStart, EnvIntervalEnd).
func (s *Server) scheduledWorkflow(t *ha.Term, sch *tandem.Schedule, at, from time.Time) (*tandem.Workflow, error) {
	raw, ok := s.ids.next(time.Now().UTC(), func(id string) bool { return shard.Of(workflowIDPrefix+id, s.Shards()) == sch.Shard })
	if !ok {
		return nil, tandem.Errorf(tandem.EUNAVAILABLE, "could not make a workflow ID in shard %d; retry", sch.Shard)
	}
	spec := *sch.Workflow
	name := sch.Name
	if name == "" {
		name = sch.ID
	}
	suffix := "@" + at.UTC().Format(time.RFC3339)
	if len(name)+len(suffix) > tandem.MaxNameLen {
		name = name[:tandem.MaxNameLen-len(suffix)]
	}
	spec.Name = name + suffix
	wf := s.newWorkflow(t, workflowIDPrefix+raw, spec)
	wf.ScheduleID, wf.NominalTime, wf.IntervalStart = sch.ID, at.UTC(), from.UTC()
	return wf, nil
}

// GetWorkflow returns run id from this server's view (any server answers),
// or an ENOTFOUND error (ERemoved if retention removed it).
func (s *Server) GetWorkflow(id string) (*tandem.Workflow, error) {
	wf, err := s.store.Workflow(id)
	if err != nil {
		return nil, s.removedOr(store.KindWorkflow, id, err)
	}
	return wf, nil
}

// ListWorkflows returns the runs f selects from this server's view, oldest
// first, and the cursor of the next page.
func (s *Server) ListWorkflows(f tandem.WorkflowFilter) ([]*tandem.Workflow, string) {
	return s.store.Workflows(f)
}

// CancelWorkflow cancels run id: its unfinished steps end cancelled (their
// running jobs are killed) and the run ends cancelled. Cancelling a run that
// is over, or already cancelled, changes nothing. Only the owner of the
// run's shard writes it (ErrNotActive elsewhere).
func (s *Server) CancelWorkflow(ctx context.Context, id string) (*tandem.Workflow, error) {
	return s.changeWorkflow(ctx, id, func(wf *tandem.Workflow) (bool, error) {
		if wf.State.Terminal() || wf.Cancelled {
			return false, nil
		}
		wf.Cancelled = true
		return true, nil
	})
}

// RetryWorkflow runs a failed or cancelled run again from where it failed:
// every step that did not succeed, and every step after one of those, goes
// back to pending (workflow.Retry); succeeded steps keep their outputs and
// do not run again. A running or succeeded run is an ECONFLICT error.
func (s *Server) RetryWorkflow(ctx context.Context, id string) (*tandem.Workflow, error) {
	return s.changeWorkflow(ctx, id, func(wf *tandem.Workflow) (bool, error) {
		if !wf.State.Terminal() || wf.State == tandem.WorkflowSucceeded {
			return false, tandem.Errorf(tandem.ECONFLICT, "workflow %s is %s: only a failed or cancelled run can be retried", id, wf.State)
		}
		run := runOf(wf)
		reset, err := workflow.Retry(WorkflowSpecOf(wf.WorkflowSpec), run, workflow.RunState(wf.State))
		if err != nil {
			return false, err
		}
		for _, name := range reset {
			p := wf.Progress[name]
			// Keep the jobs of earlier tries, for the record.
			wf.Progress[name] = tandem.StepRun{State: tandem.StepPending, Jobs: p.Jobs, Reason: "retried"}
		}
		wf.Cancelled, wf.State, wf.Reason, wf.EndedAt = false, tandem.WorkflowRunning, "", nil
		wf.Retried++
		return true, nil
	})
}

// changeWorkflow applies a user's change to run id and writes it, fenced by
// the owner of its shard and guarded by the record's revision, reading
// again when the controller wrote meanwhile. fn returns false to write
// nothing.
func (s *Server) changeWorkflow(ctx context.Context, id string, fn func(*tandem.Workflow) (bool, error)) (*tandem.Workflow, error) {
	t := s.core.Term(shard.Of(id, s.Shards()))
	if t == nil {
		return nil, tandem.ErrNotActive
	}
	for try := 0; ; try++ {
		if t.Ended() != nil {
			return nil, tandem.ErrNotActive
		}
		wf, err := s.store.Workflow(id)
		if err != nil {
			return nil, s.removedOr(store.KindWorkflow, id, err)
		}
		write, err := fn(wf)
		if err != nil || !write {
			return wf, err
		}
		wf.UpdatedAt, wf.UpdatedEpoch, wf.UpdatedBy = time.Now().UTC(), t.Epoch(), s.cfg.ID
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		rev, err := s.store.CommitWorkflow(wctx, t.Fence, &store.WorkflowCommit{Workflow: wf, Rev: wf.Revision})
		cancel()
		var conflict *store.ConflictError
		switch {
		case err == nil:
			wf.Revision = rev
			return wf, nil
		case errors.Is(err, tandem.ErrFenced):
			s.fenced(t)
			return nil, tandem.ErrNotActive
		case errors.As(err, &conflict) && try < 5:
			wctx, cancel := context.WithTimeout(ctx, writeTimeout)
			err := s.store.WaitRev(wctx, conflict.Rev)
			cancel()
			if err != nil {
				return nil, err
			}
		default:
			return nil, err
		}
	}
}
