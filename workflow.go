package tandem

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// WorkflowSpec is a workflow (a DAG of steps) as users submit it: the body of
// POST /v1/workflows, or what a schedule starts. Its fields are those of
// internal/workflow's Spec, with the same JSON names and meanings
// (internal/workflow's doc.go has the exact rules: names, trigger rules,
// conditions, outputs, rendering); they are repeated here with plain types
// because internal/workflow imports this package, and the API record belongs
// in the root. The server converts between the two, and a test keeps their
// fields in step.
type WorkflowSpec struct {
	Name string `json:"name"`
	// Params are this run's parameter values, read by ${params.NAME} in a
	// step's command and env, and by params.NAME in conditions.
	Params map[string]string `json:"params,omitempty"`
	Steps  []WorkflowStep    `json:"steps"`
}

// WorkflowStep is one node of a workflow: a job to run once the steps it
// needs have finished and its trigger rule and condition allow it.
type WorkflowStep struct {
	Name string `json:"name"`
	// Job is a JobSpec in JSON, whose command arguments and env values may
	// hold ${params.NAME} and ${steps.STEP.outputs.KEY}.
	Job json.RawMessage `json:"job"`
	// Needs names the steps that must have finished first.
	Needs []string `json:"needs,omitempty"`
	// Retries is how many more attempts a failed step gets (0 to 99).
	Retries int `json:"retries,omitempty"`
	// Timeout, when set, fails an attempt still running that long after it
	// started (waiting for an agent included).
	Timeout Duration `json:"timeout,omitempty"`
	// Trigger is all_success (the default), all_done, one_failed,
	// one_success or none_failed.
	Trigger string `json:"trigger,omitempty"`
	// When is an optional condition on params and earlier steps' outputs
	// and states; false skips the step.
	When string `json:"when,omitempty"`
}

// Hash identifies the spec for idempotent creation.
func (s *WorkflowSpec) Hash() string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(fmt.Sprintf("marshal workflow spec: %v", err)) // a WorkflowSpec always marshals
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// WorkflowState is the state of a workflow run.
type WorkflowState string

// Workflow run states. A run is running until every step is finished for
// good; then it is cancelled (a user cancelled it and a step ended
// cancelled), failed (a step ended failed, upstream_failed or cancelled) or
// succeeded (every step succeeded or was skipped).
const (
	WorkflowRunning   WorkflowState = "running"
	WorkflowSucceeded WorkflowState = "succeeded"
	WorkflowFailed    WorkflowState = "failed"
	WorkflowCancelled WorkflowState = "cancelled"
)

// WorkflowStates lists every workflow state.
var WorkflowStates = []WorkflowState{WorkflowRunning, WorkflowSucceeded, WorkflowFailed, WorkflowCancelled}

// Terminal reports whether a run in state s has ended.
func (s WorkflowState) Terminal() bool { return s != WorkflowRunning }

// Step states: pending (not decided yet), running (an attempt is live),
// succeeded, failed (for good once no retries are left), skipped,
// upstream_failed, cancelled.
const (
	StepPending        = "pending"
	StepRunning        = "running"
	StepSucceeded      = "succeeded"
	StepFailed         = "failed"
	StepSkipped        = "skipped"
	StepUpstreamFailed = "upstream_failed"
	StepCancelled      = "cancelled"
)

// StepRun is the durable record of one step of a workflow run. A step
// without one is pending.
type StepRun struct {
	State string `json:"state"`
	// Attempt is the number of the latest attempt started, from 1.
	Attempt int `json:"attempt,omitempty"`
	// StartedAt is when the latest attempt was committed, by the owner's
	// clock (a step's timeout counts from it).
	StartedAt time.Time `json:"started_at,omitzero"`
	// EndedAt is when the step's latest attempt, or the step, ended.
	EndedAt time.Time `json:"ended_at,omitzero"`
	// Outputs are those the latest attempt wrote (KEY=VALUE lines in the
	// file $TANDEM_OUTPUTS names).
	Outputs map[string]string `json:"outputs,omitempty"`
	// Reason says why the step is in its state.
	Reason string `json:"reason,omitempty"`
	// JobID is the job of the latest attempt; Jobs lists the jobs of every
	// attempt, oldest first (a retried run keeps those of earlier tries).
	JobID string   `json:"job_id,omitempty"`
	Jobs  []string `json:"jobs,omitempty"`
}

// Workflow is a stored workflow run: its spec, with params resolved, and
// the state of every step. Its key is workflows/<id>; only the owner of its
// shard writes it, every decision committed (fenced, I1) before it takes
// effect, so a new owner after a failover reaches the same decisions.
type Workflow struct {
	ID string `json:"id"`
	WorkflowSpec
	// Shard is the run's shard, forever (a hash of its ID); the jobs of its
	// steps belong to the same shard.
	Shard int           `json:"shard"`
	State WorkflowState `json:"state"`
	// Reason explains a terminal state: which steps failed, or that the run
	// was cancelled.
	Reason string `json:"reason,omitempty"`
	// Cancelled is set when a user (or a schedule's replace policy) cancels
	// the run; a retry clears it.
	Cancelled bool `json:"cancelled,omitempty"`
	// Progress holds the record of every step that left pending, by name.
	Progress map[string]StepRun `json:"progress,omitempty"`
	// Retried counts the user's retries of the run.
	Retried int `json:"retried,omitempty"`
	// ScheduleID and NominalTime link a run a schedule started to its
	// schedule and nominal time; the run covers (IntervalStart,
	// NominalTime].
	ScheduleID     string     `json:"schedule_id,omitempty"`
	NominalTime    time.Time  `json:"nominal_time,omitzero"`
	IntervalStart  time.Time  `json:"interval_start,omitzero"`
	IdempotencyKey string     `json:"idempotency_key,omitempty"`
	CreatedAt      time.Time  `json:"created_at"`
	UpdatedAt      time.Time  `json:"updated_at"`
	EndedAt        *time.Time `json:"ended_at,omitempty"`
	// Epoch is the epoch of the shard's owner that accepted the run;
	// UpdatedEpoch and UpdatedBy name the owner that wrote this version.
	Epoch        int64  `json:"epoch"`
	AcceptedBy   string `json:"accepted_by,omitempty"`
	UpdatedEpoch int64  `json:"updated_epoch,omitempty"`
	UpdatedBy    string `json:"updated_by,omitempty"`
	// Revision is the etcd mod revision of the record, from the answering
	// server's view (not stored).
	Revision int64 `json:"revision,omitempty"`
}

// StepState returns the state of step name: its record's, or pending.
func (w *Workflow) StepState(name string) string {
	if r, ok := w.Progress[name]; ok {
		return r.State
	}
	return StepPending
}

// WorkflowFilter selects workflow runs in a listing: by state, by the
// schedule that started them, by name (substring), at most Limit after the
// run After (IDs in creation order).
type WorkflowFilter struct {
	State    WorkflowState
	Schedule string
	Query    string
	After    string
	Limit    int
}

// Environment of a workflow step's job, set by the server (the first three)
// and by the agent (EnvOutputs: the file where the step may write its
// outputs, KEY=VALUE lines, at most MaxOutputBytes).
const (
	EnvWorkflowID  = "TANDEM_WORKFLOW_ID"
	EnvStep        = "TANDEM_STEP"
	EnvStepAttempt = "TANDEM_STEP_ATTEMPT"
	EnvOutputs     = "TANDEM_OUTPUTS"
)

// MaxOutputBytes bounds the outputs file of a workflow step.
const MaxOutputBytes = 4096

// MaxWorkflowBytes bounds a workflow spec in JSON (so a run's record, which
// is rewritten on every decision, stays small for etcd).
const MaxWorkflowBytes = 256 << 10
