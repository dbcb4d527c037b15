package tandem

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// ScheduleSpec is a schedule as users write it: when it fires and what each
// fire starts. The timing fields are those of internal/schedule's Spec, with
// the same JSON names and meanings (internal/schedule's doc.go has the exact
// rules: nominal times, DST, jitter, overlap and catch-up policies); they are
// repeated here with plain types because internal/schedule imports this
// package, and the API record belongs here, in the root. The server converts
// between the two, and a test keeps their fields in step.
type ScheduleSpec struct {
	Name string `json:"name,omitempty"`

	// Cron holds one or more five-field cron expressions (or @daily-style
	// descriptors), read in TZ; Every is an interval in absolute time on the
	// grid Anchor + k*Every. Exactly one of them is set.
	Cron   []string  `json:"cron,omitempty"`
	Every  Duration  `json:"every,omitzero"`
	Anchor time.Time `json:"anchor,omitzero"`
	TZ     string    `json:"tz,omitempty"`

	// Start and End bound the nominal times, both inclusive; zero is open.
	Start time.Time `json:"start,omitzero"`
	End   time.Time `json:"end,omitzero"`

	// Jitter delays each fire by a deterministic amount in [0, Jitter).
	Jitter Duration `json:"jitter,omitzero"`

	// Overlap is one of allow, skip (the default), buffer_one, buffer_all,
	// replace; Catchup one of all, latest (the default), none.
	Overlap       string   `json:"overlap,omitempty"`
	Catchup       string   `json:"catchup,omitempty"`
	CatchupWindow Duration `json:"catchup_window,omitzero"`
	CatchupMax    int      `json:"catchup_max,omitempty"`

	// HistoryLimits bound the run records kept (the oldest are pruned).
	HistoryLimits ScheduleHistoryLimits `json:"history_limits,omitzero"`

	// Paused skips every nominal time that falls due (reason paused) until
	// the schedule is resumed; PauseNote says why, for the next operator.
	Paused    bool   `json:"paused,omitempty"`
	PauseNote string `json:"pause_note,omitempty"`

	// Job or Workflow is what each fire starts (exactly one is set): a job
	// or a workflow run in the schedule's shard, named
	// "<schedule name or ID>@<nominal time>".
	Job      JobSpec       `json:"job,omitzero"`
	Workflow *WorkflowSpec `json:"workflow,omitempty"`
}

// ScheduleHistoryLimits are how many run records of each kind a schedule
// keeps; zero means the default (100 each).
type ScheduleHistoryLimits struct {
	Fired   int `json:"fired,omitempty"`
	Skipped int `json:"skipped,omitempty"`
}

// Schedule is a stored schedule: its spec and what the cluster recorded
// about it. Its key is schedules/<id>; its runs are fires/<id>/<time>.
type Schedule struct {
	ID string `json:"id"`
	ScheduleSpec
	// Shard is the schedule's shard, forever (a hash of its ID): its owner
	// fires the schedule, and the jobs it starts belong to the same shard.
	Shard int `json:"shard"`
	// Cursor is the last nominal time that has a record (fired, skipped or
	// buffered). Every time after it is still to be decided; a new owner
	// continues from it, never from its own clock (I7). A new schedule's
	// cursor is its creation time: no earlier time fires on its own.
	Cursor time.Time `json:"cursor"`
	// Buffered are nominal times kept by the overlap policies buffer_one and
	// buffer_all, oldest first: each fires (and gets its run record) when no
	// run of the schedule is live.
	Buffered []time.Time `json:"buffered,omitempty"`
	// Done is set once the schedule has no nominal time after its cursor
	// (its end has passed).
	Done bool `json:"done,omitempty"`
	// Version counts the changes users made (create, update, pause, resume);
	// an update may name the version it read, to refuse lost updates. The
	// controller's cursor moves do not change it.
	Version   int64     `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Epoch is the epoch of the shard's owner that created the schedule;
	// UpdatedEpoch and UpdatedBy name the owner that wrote this version of
	// the record, user change or fire (I1).
	Epoch        int64  `json:"epoch"`
	CreatedBy    string `json:"created_by,omitempty"`
	UpdatedEpoch int64  `json:"updated_epoch,omitempty"`
	UpdatedBy    string `json:"updated_by,omitempty"`
	// Revision is the etcd mod revision of the record, from the answering
	// server's view (not stored).
	Revision int64 `json:"revision,omitempty"`
}

// ScheduleOutcome is what happened to a nominal time.
type ScheduleOutcome string

// Outcomes of a nominal time. Every nominal time after a schedule's creation
// ends with exactly one record, fired or skipped (I7). Buffered is never
// stored: a run listing shows the buffered times, which fire later.
const (
	OutcomeFired    ScheduleOutcome = "fired"
	OutcomeSkipped  ScheduleOutcome = "skipped"
	OutcomeBuffered ScheduleOutcome = "buffered"
)

// Reasons on run records: why a time was skipped (paused, overlap, catchup),
// or why a fired run is not one of the schedule's own nominal times
// (manual: `tandem schedule trigger`; backfill: `tandem schedule backfill`).
// A fired nominal time of the schedule's own has no reason, or "buffered"
// when it waited for a live run to end first.
const (
	ReasonPaused   = "paused"
	ReasonOverlap  = "overlap"
	ReasonCatchup  = "catchup"
	ReasonManual   = "manual"
	ReasonBackfill = "backfill"
	ReasonBuffered = "buffered"
)

// ScheduleRun is the record of one nominal time of a schedule (or of a range
// of consecutive skipped times, NominalTime through Through), written in the
// same fenced transaction as the cursor move and the job it started.
type ScheduleRun struct {
	ScheduleID  string    `json:"schedule_id"`
	NominalTime time.Time `json:"nominal_time"`
	// Through is the last nominal time a merged skip covers (a long pause or
	// outage costs one record); Count is how many nominal times the record
	// covers. Through is absent for a single time.
	Through *time.Time      `json:"through,omitempty"`
	Count   int             `json:"count"`
	Outcome ScheduleOutcome `json:"outcome"`
	// Reason and JobID are always in the JSON ("" when there is none):
	// `tandem schedule runs -o json` promises nominal_time, outcome,
	// reason and job_id on every record.
	Reason string `json:"reason"`
	Detail string `json:"detail,omitempty"`
	// JobID is the job a fire started; JobState is its state from the
	// answering server's view (not stored).
	JobID    string   `json:"job_id"`
	JobState JobState `json:"job_state,omitempty"`
	// WorkflowID is the workflow run a fire started (for a schedule of a
	// workflow); WorkflowState its state from the answering server's view
	// (not stored).
	WorkflowID    string        `json:"workflow_id,omitempty"`
	WorkflowState WorkflowState `json:"workflow_state,omitempty"`
	// Replaced lists the live runs killed to make way for this one
	// (overlap policy replace).
	Replaced []string `json:"replaced,omitempty"`
	// Due is the nominal time plus its jitter; Late is how late after Due
	// the decision was made by the deciding server's clock.
	Due  time.Time `json:"due"`
	Late Duration  `json:"late"`
	// CommittedAt, Epoch and FiredBy say when (by the writer's clock), under
	// which epoch and by which server the record was committed.
	CommittedAt time.Time `json:"committed_at"`
	Epoch       int64     `json:"epoch"`
	FiredBy     string    `json:"fired_by"`
}

// ScheduleRunFilter selects run records: by outcome (fired, skipped or
// buffered), within [Since, Until] by nominal time, at most Limit of the
// most recent (0: all kept).
type ScheduleRunFilter struct {
	Outcome ScheduleOutcome
	Since   time.Time
	Until   time.Time
	Limit   int
}

// Hash identifies the spec for idempotent creation: the same spec, the same
// hash (its JSON encoding is canonical: struct fields in order, map keys
// sorted).
func (s *ScheduleSpec) Hash() string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(fmt.Sprintf("marshal schedule spec: %v", err)) // a ScheduleSpec always marshals
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}
