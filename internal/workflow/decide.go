package workflow

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// StepState is the durable state of a step in a run.
type StepState string

// Step states. A step is pending until decided; running while an attempt
// is live; failed after an attempt failed (for good once it has no retries
// left); and it ends succeeded, failed, skipped, upstream_failed or
// cancelled.
const (
	StepPending        StepState = "pending"
	StepRunning        StepState = "running"
	StepSucceeded      StepState = "succeeded"
	StepFailed         StepState = "failed"
	StepSkipped        StepState = "skipped"
	StepUpstreamFailed StepState = "upstream_failed"
	StepCancelled      StepState = "cancelled"
)

// StepStates lists every step state.
var StepStates = []StepState{StepPending, StepRunning, StepSucceeded, StepFailed, StepSkipped, StepUpstreamFailed, StepCancelled}

// Valid reports whether s is a known step state.
func (s StepState) Valid() bool { return slices.Contains(StepStates, s) }

// RunState is the overall state of a workflow run.
type RunState string

// Run states. A run is running until every step is finished for good.
const (
	RunRunning   RunState = "running"
	RunSucceeded RunState = "succeeded"
	RunFailed    RunState = "failed"
	RunCancelled RunState = "cancelled"
)

// Terminal reports whether a run in state s is finished.
func (s RunState) Terminal() bool { return s != RunRunning }

// StepRecord is what the controller stores about one step of a run. A step
// without a record is pending.
type StepRecord struct {
	State StepState `json:"state"`
	// Attempt is the number of the latest attempt started, from 1 (0 for
	// a step that never started).
	Attempt int `json:"attempt,omitempty"`
	// StartedAt is when the latest attempt was started (committed), by the
	// controller's clock; needed for a running step with a timeout.
	StartedAt time.Time `json:"started_at,omitzero"`
	// Outputs are those the latest attempt wrote (see ParseOutputs).
	Outputs map[string]string `json:"outputs,omitempty"`
	// Reason says why the step is in its state, for people.
	Reason string `json:"reason,omitempty"`
}

// Run is the durable state of one run of a workflow: what Decide reads.
type Run struct {
	// Cancelled is set, once and for good, when a user cancels the run.
	Cancelled bool                  `json:"cancelled,omitempty"`
	Steps     map[string]StepRecord `json:"steps,omitempty"`
}

// Action is what a decision does to a step.
type Action string

// Actions, and the step state each leaves behind (Decision.State).
const (
	ActStart   Action = "start"   // pending -> running, attempt 1: create the attempt's job
	ActRetry   Action = "retry"   // failed -> running, attempt n+1: create the attempt's job
	ActSkip    Action = "skip"    // pending -> skipped or upstream_failed, never run
	ActTimeout Action = "timeout" // running -> failed: kill the attempt's job
	ActCancel  Action = "cancel"  // any unfinished -> cancelled: kill the job if one runs
)

// Decision is one change Decide asks the controller to commit.
type Decision struct {
	Action Action `json:"action"`
	Step   string `json:"step"`
	// Attempt is the step's attempt number once the decision is committed:
	// the attempt to start for start and retry, the attempt timed out or
	// cancelled for timeout and cancel (0 if none had started), 0 for skip.
	Attempt int `json:"attempt,omitempty"`
	// State is the step's state once the decision is committed.
	State StepState `json:"state"`
	// Reason says why, for people (and for the step's record).
	Reason string `json:"reason"`
}

// Plan is what Decide returns: the decisions to commit, in order, and what
// the run's state will be once they are.
type Plan struct {
	Decisions []Decision `json:"decisions,omitempty"`
	// State is the run's state once every decision is committed.
	State RunState `json:"state"`
	// Reason explains a terminal State: which steps failed, or that the
	// run was cancelled.
	Reason string `json:"reason,omitempty"`
	// NextDeadline is the earliest time, after now, at which an attempt
	// already running will time out (zero if none): the controller should
	// call Decide again then. Attempts this plan starts get theirs from the
	// next call, once their StartedAt is recorded. It is for liveness only.
	NextDeadline time.Time `json:"next_deadline,omitzero"`
}

// ErrInconsistentRun is returned (wrapped, with the step and the problem)
// by Decide and Apply for a run record that no sequence of
// decisions could have produced: a state for an unknown step, an attempt
// out of range, a step started before its needs finished. It is the
// controller's bug or a corrupt record, not the user's mistake, and Decide
// takes no decision on such a run.
var ErrInconsistentRun = errors.New("workflow: inconsistent run record")

// ErrStaleReport is returned by Finish for the outcome of an attempt that is
// not the step's running attempt (a late report after a timeout, a retry
// or a cancel): the controller drops it.
var ErrStaleReport = errors.New("workflow: report for an attempt that is not running")

// Decide returns the decisions that move run forward, given the spec it is
// a run of and the time now by the controller's clock. It is a pure,
// deterministic function of its arguments: the same input gives the same
// plan, decisions in the canonical order of the steps (a topological order:
// repeatedly, of the steps whose needs are all listed, the one with the
// smallest name). It does not modify spec or run.
//
// The rules (the package documentation has them in full): a step is decided only once every
// step it needs is finished for good; a finished step is never started
// again; a failed attempt is retried while retries remain; a running
// attempt past its timeout is timed out (only if now is not zero); a
// cancelled run cancels every unfinished step. Decisions cascade: a step
// skipped by this plan lets the steps after it be decided in the same plan,
// and a timed-out attempt is followed by its retry. At most one decision
// concerns any step, except that pair (timeout, then retry). Any prefix of
// the decisions may be committed on its own: Decide on the resulting run
// returns the rest.
//
// The controller commits a plan's decisions (with the jobs they create)
// before acting on them, then calls Decide again; a plan with no decisions
// and a terminal State means the run is over. A spec whose graph, trigger
// rules or conditions are invalid gives the error Validate gives (the steps'
// jobs are not checked again here: Render does that); an impossible run
// gives ErrInconsistentRun.
func Decide(spec *Spec, run *Run, now time.Time) (*Plan, error) {
	g, err := compile(spec, false)
	if err != nil {
		return nil, fmt.Errorf("decide: %w", err)
	}
	if run == nil {
		run = &Run{}
	}
	if err := g.check(run); err != nil {
		return nil, err
	}
	// ws is the run as it will be once the decisions so far are committed.
	ws := make(map[string]StepRecord, len(g.nodes))
	for _, n := range g.nodes {
		ws[n.step.Name] = record(run, n.step.Name)
	}
	plan := &Plan{}
	decide := func(n *node, d Decision) {
		d.Step = n.step.Name
		plan.Decisions = append(plan.Decisions, d)
		r := ws[d.Step]
		r.State, r.Attempt, r.Reason = d.State, d.Attempt, d.Reason
		ws[d.Step] = r
	}
	for _, n := range g.nodes {
		r := ws[n.step.Name]
		if run.Cancelled {
			if !finished(n, r) {
				decide(n, Decision{Action: ActCancel, Attempt: r.Attempt, State: StepCancelled, Reason: "the workflow was cancelled"})
			}
			continue
		}
		if r.State == StepRunning && n.step.Timeout > 0 {
			deadline := r.StartedAt.Add(n.step.Timeout.Std())
			if !now.IsZero() && !now.Before(deadline) {
				decide(n, Decision{Action: ActTimeout, Attempt: r.Attempt, State: StepFailed,
					Reason: fmt.Sprintf("attempt %d timed out after %s", r.Attempt, n.step.Timeout.Std())})
				r = ws[n.step.Name] // failed now: retried just below if retries remain
			} else if plan.NextDeadline.IsZero() || deadline.Before(plan.NextDeadline) {
				plan.NextDeadline = deadline
			}
		}
		switch r.State {
		case StepFailed:
			if r.Attempt <= n.step.Retries {
				decide(n, Decision{Action: ActRetry, Attempt: r.Attempt + 1, State: StepRunning,
					Reason: fmt.Sprintf("attempt %d failed; starting attempt %d of %d", r.Attempt, r.Attempt+1, n.step.Retries+1)})
			}
		case StepPending:
			if d, ok := g.decidePending(n, ws); ok {
				decide(n, d)
			}
		}
	}
	plan.State, plan.Reason = g.outcome(run, ws)
	return plan, nil
}

// decidePending decides a pending step once all it needs have finished for
// good: its trigger rule first, then its condition.
func (g *graph) decidePending(n *node, ws map[string]StepRecord) (Decision, bool) {
	var succeeded, failed, skipped int // failed counts failed, upstream_failed and cancelled
	for _, m := range n.needs {
		r := ws[m.step.Name]
		if !finished(m, r) {
			return Decision{}, false
		}
		switch r.State {
		case StepSucceeded:
			succeeded++
		case StepSkipped:
			skipped++
		default:
			failed++
		}
	}
	all := len(n.needs)
	state, why := StepRunning, ""
	if all > 0 { // Airflow: a step with no needs always passes its trigger rule
		switch n.trigger {
		case AllSuccess:
			switch {
			case failed > 0:
				state, why = StepUpstreamFailed, "a step it needs did not succeed"
			case skipped > 0:
				state, why = StepSkipped, "a step it needs was skipped"
			}
		case AllDone:
		case OneFailed:
			if failed == 0 {
				state, why = StepSkipped, "no step it needs failed"
			}
		case OneSuccess:
			switch {
			case skipped == all:
				state, why = StepSkipped, "every step it needs was skipped"
			case succeeded == 0:
				state, why = StepUpstreamFailed, "no step it needs succeeded"
			}
		case NoneFailed:
			if failed > 0 {
				state, why = StepUpstreamFailed, "a step it needs did not succeed"
			}
		}
	}
	if state != StepRunning {
		return Decision{Action: ActSkip, State: state, Reason: fmt.Sprintf("trigger rule %s not met: %s", n.trigger, why)}, true
	}
	if n.when != nil && !n.when.evalBool(g.lookupIn(ws)) {
		return Decision{Action: ActSkip, State: StepSkipped, Reason: fmt.Sprintf("condition is false: %s", n.step.When)}, true
	}
	return Decision{Action: ActStart, Attempt: 1, State: StepRunning, Reason: "ready"}, true
}

// lookupIn resolves references against a run. A step's output that was not
// written reads as "" (a condition asks a question; a job template, which
// has no good default, refuses instead). Only ancestors are referenced, and
// they have all finished for good when a step is decided, so the values
// read are final.
func (g *graph) lookupIn(ws map[string]StepRecord) lookup {
	return func(r ref) string {
		switch r.kind {
		case refParam:
			return g.spec.Params[r.key]
		case refOutput:
			return ws[r.step].Outputs[r.key]
		default:
			return string(ws[r.step].State)
		}
	}
}

// outcome is the run's state given its steps: running until every step has
// finished for good; then cancelled if the run was cancelled and a step
// ended cancelled; failed if a step ended failed, upstream_failed or
// cancelled; else succeeded.
func (g *graph) outcome(run *Run, ws map[string]StepRecord) (RunState, string) {
	var bad []string
	cancelled := false
	for _, n := range g.nodes {
		r := ws[n.step.Name]
		if !finished(n, r) {
			return RunRunning, ""
		}
		switch r.State {
		case StepCancelled:
			cancelled = true
			bad = append(bad, n.step.Name+" (cancelled)")
		case StepFailed:
			bad = append(bad, n.step.Name)
		}
	}
	switch {
	case run.Cancelled && cancelled:
		return RunCancelled, "the workflow was cancelled"
	case len(bad) == 1:
		return RunFailed, "step " + bad[0] + " failed"
	case len(bad) > 1:
		return RunFailed, "steps " + strings.Join(bad, ", ") + " failed"
	}
	// No failed step means no upstream_failed step either: that state only
	// follows a failure.
	return RunSucceeded, ""
}

// finished reports whether a step is finished for good: it will take no
// further decision, and its state and outputs are final.
func finished(n *node, r StepRecord) bool {
	switch r.State {
	case StepSucceeded, StepSkipped, StepUpstreamFailed, StepCancelled:
		return true
	case StepFailed:
		return r.Attempt > n.step.Retries
	}
	return false
}

func record(run *Run, step string) StepRecord {
	r, ok := run.Steps[step]
	if !ok {
		return StepRecord{State: StepPending}
	}
	return r
}

// check refuses a run that no sequence of decisions and reports could have
// produced. In particular, a step that was ever started or skipped must have
// had all its needs finished for good: Decide relies on this to know that
// every ancestor of a step being decided is final.
func (g *graph) check(run *Run) error {
	for _, name := range sortedKeys(run.Steps) {
		if _, ok := g.named[name]; !ok {
			return fmt.Errorf("%w: a record for step %q, which the workflow does not have", ErrInconsistentRun, name)
		}
	}
	for _, n := range g.nodes {
		r := record(run, n.step.Name)
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: step %q (%s, attempt %d): %s", ErrInconsistentRun, n.step.Name, r.State, r.Attempt, fmt.Sprintf(format, args...))
		}
		limit := n.step.Retries + 1
		switch r.State {
		case StepPending, StepSkipped, StepUpstreamFailed:
			if r.Attempt != 0 {
				return bad("a step in this state has no attempt")
			}
		case StepRunning, StepSucceeded, StepFailed:
			if r.Attempt < 1 || r.Attempt > limit {
				return bad("the attempt must be from 1 to %d", limit)
			}
		case StepCancelled:
			if r.Attempt < 0 || r.Attempt > limit {
				return bad("the attempt must be from 0 to %d", limit)
			}
			if r.Attempt == 0 && !run.Cancelled {
				return bad("only a cancelled run cancels a step that never started")
			}
		default:
			return bad("unknown state")
		}
		if r.State == StepRunning && n.step.Timeout > 0 && r.StartedAt.IsZero() {
			return bad("a running step with a timeout needs started_at")
		}
		decided := r.State != StepPending && !(r.State == StepCancelled && r.Attempt == 0)
		if !decided {
			continue
		}
		for _, m := range n.needs {
			if mr := record(run, m.step.Name); !finished(m, mr) {
				return bad("it needs %q, which has not finished (%s)", m.step.Name, mr.State)
			}
		}
	}
	return nil
}

// Apply records a decision in run, as the controller does when it commits
// it: the step's state, attempt and reason, and for start and retry
// StartedAt = now and no outputs. It returns ErrInconsistentRun if the
// decision does not apply to the step's current state (a plan applied
// twice, or to a changed run).
func (run *Run) Apply(d Decision, now time.Time) error {
	r, ok := run.Steps[d.Step]
	if !ok {
		r = StepRecord{State: StepPending}
	}
	var from []StepState
	switch d.Action {
	case ActStart, ActSkip:
		from = []StepState{StepPending}
	case ActRetry:
		from = []StepState{StepFailed}
	case ActTimeout:
		from = []StepState{StepRunning}
	case ActCancel:
		from = []StepState{StepPending, StepRunning, StepFailed}
	default:
		return fmt.Errorf("%w: unknown action %q", ErrInconsistentRun, d.Action)
	}
	if !slices.Contains(from, r.State) {
		return fmt.Errorf("%w: cannot %s step %q, which is %s", ErrInconsistentRun, d.Action, d.Step, r.State)
	}
	if d.Action == ActStart || d.Action == ActRetry {
		r.StartedAt, r.Outputs = now, nil
	}
	r.State, r.Attempt, r.Reason = d.State, d.Attempt, d.Reason
	if run.Steps == nil {
		run.Steps = make(map[string]StepRecord)
	}
	run.Steps[d.Step] = r
	return nil
}

// Finish records the end of a step's attempt, as reported by its job: the
// step becomes succeeded or failed, with the outputs the attempt wrote. It
// returns ErrStaleReport, changing nothing, unless the step is running that
// attempt.
func (run *Run) Finish(step string, attempt int, succeeded bool, outputs map[string]string, reason string) error {
	r, ok := run.Steps[step]
	if !ok || r.State != StepRunning || r.Attempt != attempt {
		return fmt.Errorf("%w: step %q attempt %d", ErrStaleReport, step, attempt)
	}
	r.State = StepFailed
	if succeeded {
		r.State = StepSucceeded
	}
	r.Outputs, r.Reason = outputs, reason
	run.Steps[step] = r
	return nil
}
