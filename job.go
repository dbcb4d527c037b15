package tandem

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// JobState is the lifecycle state of a job.
type JobState string

// Job states. Jobs are accepted in JobPending; running them on agents comes
// with the agent issue.
const (
	JobPending JobState = "pending"
)

// JobStates lists every job state, for validation and metrics.
var JobStates = []JobState{JobPending}

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
)

// JobSpec is what a user submits: everything about a job that the user chooses.
type JobSpec struct {
	Name      string            `json:"name,omitempty"`
	Command   []string          `json:"command"`
	Env       map[string]string `json:"env,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Submitter string            `json:"submitter,omitempty"`
}

// Job is a stored job: its spec plus what the cluster recorded about it.
type Job struct {
	ID string `json:"id"`
	JobSpec
	State     JobState  `json:"state"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Epoch is the epoch of the active server that accepted the job.
	Epoch int64 `json:"epoch"`
	// AcceptedBy is the ID of the server that accepted the job.
	AcceptedBy     string `json:"accepted_by"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
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
