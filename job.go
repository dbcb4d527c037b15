package tandem

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// JobState is the lifecycle state of a job.
type JobState string

// Job states. A job is pending until the active places it on an agent
// (scheduled), running once the agent has started its attempt, and ends
// succeeded, failed, killed or lost (its agent vanished and no attempts
// remain). A failed or lost attempt with attempts left sends the job back to
// pending.
const (
	JobPending   JobState = "pending"
	JobScheduled JobState = "scheduled"
	JobRunning   JobState = "running"
	JobSucceeded JobState = "succeeded"
	JobFailed    JobState = "failed"
	JobKilled    JobState = "killed"
	JobLost      JobState = "lost"
)

// JobStates lists every job state, for validation and metrics.
var JobStates = []JobState{JobPending, JobScheduled, JobRunning, JobSucceeded, JobFailed, JobKilled, JobLost}

// Terminal reports whether a job in state s is finished for good.
func (s JobState) Terminal() bool {
	switch s {
	case JobSucceeded, JobFailed, JobKilled, JobLost:
		return true
	}
	return false
}

// Valid reports whether s is a known job state.
func (s JobState) Valid() bool {
	for _, k := range JobStates {
		if s == k {
			return true
		}
	}
	return false
}

// Limits on a job spec, enforced by JobSpec.Validate.
const (
	MaxNameLen     = 256
	MaxCommandArgs = 4096
	MaxLabels      = 64
	MaxLabelLen    = 256
	MaxEnvVars     = 1024
	MaxUserLen     = 256
)

// JobSpec is what a user submits: everything about a job that the user chooses.
type JobSpec struct {
	Name      string            `json:"name,omitempty"`
	Command   []string          `json:"command"`
	Env       map[string]string `json:"env,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Submitter string            `json:"submitter,omitempty"`
	// WorkDir is the attempt's working directory on the agent; empty means
	// a fresh directory of its own under the agent's work dir.
	WorkDir string `json:"workdir,omitempty"`
	// Timeout kills an attempt that runs longer; 0 means no limit.
	Timeout Duration `json:"timeout,omitempty"`
	// MaxAttempts is how many attempts the job may have in all (default 1).
	MaxAttempts int `json:"max_attempts,omitempty"`
	// RetryBackoff is the wait before the second attempt, doubling for each
	// later one (default 1s).
	RetryBackoff Duration `json:"retry_backoff,omitempty"`
	// Resources is what one attempt needs from an agent (defaults:
	// DefaultCPU and DefaultMemoryMB).
	Resources Resources `json:"resources,omitempty"`
	// Constraints are agent labels the job needs: key=value, all must match.
	Constraints map[string]string `json:"constraints,omitempty"`
	// User is the user the job's attempts run as, by name; empty means the
	// agent's default (its --run-as user). An agent runs an attempt as
	// another user than its default only if it allows that user, and as
	// root only if it allows root too; otherwise the attempt fails at once,
	// without running.
	//
	// With ACLs on (tandem server --acl), naming a user also needs an
	// operator token: agents decide which users are allowed at all,
	// operators choose among them.
	User string `json:"user,omitempty"`
}

// Defaults for a job spec's resources and retries.
const (
	DefaultCPU          = 0.1
	DefaultMemoryMB     = 64
	DefaultMaxAttempts  = 1
	DefaultRetryBackoff = Duration(time.Second)
	MaxMaxAttempts      = 100
)

// WithDefaults returns the spec with defaults filled in where fields are zero.
func (s JobSpec) WithDefaults() JobSpec {
	if s.Resources.CPU == 0 {
		s.Resources.CPU = DefaultCPU
	}
	if s.Resources.MemoryMB == 0 {
		s.Resources.MemoryMB = DefaultMemoryMB
	}
	if s.MaxAttempts == 0 {
		s.MaxAttempts = DefaultMaxAttempts
	}
	if s.RetryBackoff == 0 {
		s.RetryBackoff = DefaultRetryBackoff
	}
	return s
}

// Job is a stored job: its spec plus what the cluster recorded about it.
type Job struct {
	ID string `json:"id"`
	JobSpec
	State     JobState  `json:"state"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Shard is the shard the job belongs to, forever: a hash of its ID
	// (always 0 in a cluster of one shard).
	Shard int `json:"shard"`
	// Epoch is the epoch of the shard's owner that accepted the job.
	Epoch int64 `json:"epoch"`
	// AcceptedBy is the ID of the server that accepted the job.
	AcceptedBy string `json:"accepted_by"`
	// UpdatedEpoch and UpdatedBy name the owner that wrote this version of
	// the record: every write carries the epoch of its shard's owner (I1).
	UpdatedEpoch   int64  `json:"updated_epoch,omitempty"`
	UpdatedBy      string `json:"updated_by,omitempty"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// Attempts lists every attempt, oldest first; at most the last one is live.
	Attempts []Attempt `json:"attempts,omitempty"`
	// Reason says why the job is in its state: why it is still pending,
	// or how it ended.
	Reason string `json:"reason,omitempty"`
	// NotBefore delays the next attempt (retry backoff).
	NotBefore *time.Time `json:"not_before,omitempty"`
	// KillRequested is set by `tandem job kill`; the job ends killed.
	KillRequested bool `json:"kill_requested,omitempty"`
	// ScheduleID and NominalTime link a job a schedule started to the
	// schedule and the nominal time it runs for (its run record is
	// fires/<schedule>/<nominal time>).
	ScheduleID  string    `json:"schedule_id,omitempty"`
	NominalTime time.Time `json:"nominal_time,omitzero"`
	// WorkflowID and Step link a job a workflow started to its run and step
	// (one job per attempt of the step).
	WorkflowID string `json:"workflow_id,omitempty"`
	Step       string `json:"step,omitempty"`
}

// LastAttempt returns the job's latest attempt, or nil.
func (j *Job) LastAttempt() *Attempt {
	if len(j.Attempts) == 0 {
		return nil
	}
	return &j.Attempts[len(j.Attempts)-1]
}

// Validate reports the first problem with the spec as an EINVALID error, or nil.
func (s *JobSpec) Validate() error {
	if len(s.Command) == 0 {
		return Errorf(EINVALID, "command is empty: give the program to run and its arguments")
	}
	if strings.TrimSpace(s.Command[0]) == "" {
		return Errorf(EINVALID, "command[0] is empty: it must name the program to run")
	}
	if len(s.Command) > MaxCommandArgs {
		return Errorf(EINVALID, "command has %d arguments, more than the limit of %d", len(s.Command), MaxCommandArgs)
	}
	for i, a := range s.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return Errorf(EINVALID, "command[%d] contains a NUL byte", i)
		}
	}
	if len(s.Name) > MaxNameLen {
		return Errorf(EINVALID, "name is %d bytes, more than the limit of %d", len(s.Name), MaxNameLen)
	}
	if !utf8.ValidString(s.Name) {
		return Errorf(EINVALID, "name is not valid UTF-8")
	}
	if len(s.Env) > MaxEnvVars {
		return Errorf(EINVALID, "env has %d variables, more than the limit of %d", len(s.Env), MaxEnvVars)
	}
	for k, v := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return Errorf(EINVALID, "env name %q is invalid: it must be non-empty and contain neither '=' nor NUL", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return Errorf(EINVALID, "env %s contains a NUL byte", k)
		}
	}
	if len(s.Labels) > MaxLabels {
		return Errorf(EINVALID, "%d labels, more than the limit of %d", len(s.Labels), MaxLabels)
	}
	for k, v := range s.Labels {
		if k == "" || len(k) > MaxLabelLen || len(v) > MaxLabelLen {
			return Errorf(EINVALID, "label %q is invalid: keys must be 1 to %d bytes and values at most %d", k, MaxLabelLen, MaxLabelLen)
		}
	}
	if len(s.Submitter) > MaxNameLen {
		return Errorf(EINVALID, "submitter is longer than %d bytes", MaxNameLen)
	}
	if len(s.WorkDir) > 4096 || strings.IndexByte(s.WorkDir, 0) >= 0 {
		return Errorf(EINVALID, "workdir is invalid")
	}
	if s.Timeout < 0 {
		return Errorf(EINVALID, "timeout must not be negative")
	}
	if s.MaxAttempts < 0 || s.MaxAttempts > MaxMaxAttempts {
		return Errorf(EINVALID, "max_attempts must be from 1 to %d, not %d", MaxMaxAttempts, s.MaxAttempts)
	}
	if s.RetryBackoff < 0 {
		return Errorf(EINVALID, "retry_backoff must not be negative")
	}
	if s.Resources.CPU < 0 || s.Resources.MemoryMB < 0 {
		return Errorf(EINVALID, "resources must not be negative")
	}
	if len(s.Constraints) > MaxLabels {
		return Errorf(EINVALID, "%d constraints, more than the limit of %d", len(s.Constraints), MaxLabels)
	}
	for k := range s.Constraints {
		if k == "" || len(k) > MaxLabelLen {
			return Errorf(EINVALID, "constraint %q is invalid: keys must be 1 to %d bytes", k, MaxLabelLen)
		}
	}
	if s.User != "" {
		if err := ValidateUserName(s.User); err != nil {
			return err
		}
	}
	return nil
}

// ValidateUserName reports, as an EINVALID error, why name cannot be a user
// name, or nil. It checks syntax only, not that the user exists on any
// agent. The rules are systemd's relaxed ones, which accept the names that
// directories such as LDAP and SSSD hand out (dots, '@', upper case) and
// refuse what a program could misread: no control characters, white space,
// ':', '/' or ','; no leading '-'; not "." or ".."; not all digits, since a
// UID is not a name (give the name).
func ValidateUserName(name string) error {
	switch {
	case name == "":
		return Errorf(EINVALID, "user is empty: give a user name such as nobody")
	case len(name) > MaxUserLen:
		return Errorf(EINVALID, "user is %d bytes, more than the limit of %d", len(name), MaxUserLen)
	case !utf8.ValidString(name):
		return Errorf(EINVALID, "user %q is not valid UTF-8", name)
	case name == "." || name == "..":
		return Errorf(EINVALID, "user %q is not a user name", name)
	case name[0] == '-':
		return Errorf(EINVALID, "user %q must not start with '-'", name)
	case strings.Trim(name, "0123456789") == "":
		return Errorf(EINVALID, "user %q is a number: give the user's name, not its UID", name)
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f || r == ':' || r == '/' || r == ',' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return Errorf(EINVALID, "user %q contains %q: a user name has no white space, control characters, ':', '/' or ','", name, r)
		}
	}
	return nil
}

// Hash returns a digest of the spec, used to tell a retried submission (same
// idempotency key, same spec) from a reuse of the key for a different job.
func (s *JobSpec) Hash() string {
	b, err := json.Marshal(s) // map keys are sorted, so the encoding is canonical
	if err != nil {
		panic(fmt.Sprintf("marshal job spec: %v", err)) // a JobSpec always marshals
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// JobList is one page of jobs, oldest first. Next, when non-empty, is the
// value to pass as "after" to get the following page.
type JobList struct {
	Jobs []*Job `json:"jobs"`
	Next string `json:"next,omitempty"`
}
