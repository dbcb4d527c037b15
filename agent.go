package tandem

import (
	"encoding/json"
	"fmt"
	"time"
)

// Duration is a time.Duration that reads and writes JSON as a Go duration
// string ("90s", "1m30s"); it also reads a number of seconds.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case float64:
		*d = Duration(x * float64(time.Second))
	case string:
		p, err := time.ParseDuration(x)
		if err != nil {
			return fmt.Errorf("invalid duration %q: use e.g. \"30s\" or \"5m\"", x)
		}
		*d = Duration(p)
	default:
		return fmt.Errorf("invalid duration %s: use a string like \"30s\"", b)
	}
	return nil
}

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// Resources are CPU cores and memory in MiB: what an agent offers and what
// an attempt needs.
type Resources struct {
	CPU      float64 `json:"cpu"`
	MemoryMB int64   `json:"memory_mb"`
}

// Fits reports whether r fits within free.
func (r Resources) Fits(free Resources) bool {
	return r.CPU <= free.CPU+1e-9 && r.MemoryMB <= free.MemoryMB
}

// Add returns r + o.
func (r Resources) Add(o Resources) Resources {
	return Resources{CPU: r.CPU + o.CPU, MemoryMB: r.MemoryMB + o.MemoryMB}
}

// Sub returns r - o.
func (r Resources) Sub(o Resources) Resources {
	return Resources{CPU: r.CPU - o.CPU, MemoryMB: r.MemoryMB - o.MemoryMB}
}

// AttemptState is the state of one attempt of a job.
type AttemptState string

// Attempt states. An attempt is scheduled once the active has recorded it
// for an agent, running once the agent has started its process, and ends
// succeeded (exit 0), failed (non-zero exit, a signal, a timeout, or a
// command that could not start), killed (by `tandem job kill`) or lost (its
// agent was silent too long, or restarted while it ran).
const (
	AttemptScheduled AttemptState = "scheduled"
	AttemptRunning   AttemptState = "running"
	AttemptSucceeded AttemptState = "succeeded"
	AttemptFailed    AttemptState = "failed"
	AttemptKilled    AttemptState = "killed"
	AttemptLost      AttemptState = "lost"
)

// Live reports whether an attempt in state s may still be running.
func (s AttemptState) Live() bool { return s == AttemptScheduled || s == AttemptRunning }

// Attempt is one try at running a job, on one agent. Its ID is launched at
// most once (I4).
type Attempt struct {
	ID     string       `json:"id"`
	Number int          `json:"number"` // 1, 2, ...
	Agent  string       `json:"agent"`
	Epoch  int64        `json:"epoch"` // epoch of the active that scheduled it
	State  AttemptState `json:"state"`
	// ScheduledAt, StartedAt and EndedAt are when the attempt was recorded,
	// when its process started and when it ended.
	ScheduledAt time.Time  `json:"scheduled_at"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	EndedAt     *time.Time `json:"ended_at,omitempty"`
	PID         int        `json:"pid,omitempty"`
	ExitCode    *int       `json:"exit_code,omitempty"`
	Signal      string     `json:"signal,omitempty"`
	Reason      string     `json:"reason,omitempty"`
}

// AgentInfo is what an agent tells the active about itself on every sync.
type AgentInfo struct {
	ID        string            `json:"id"`
	URL       string            `json:"url"` // the agent's own HTTP server (attempt logs)
	Capacity  Resources         `json:"capacity"`
	Labels    map[string]string `json:"labels,omitempty"`
	Version   string            `json:"version"`
	PID       int               `json:"pid"`
	StartedAt time.Time         `json:"started_at"`
}

// Agent states as the active sees them.
const (
	AgentReady = "ready"
	AgentLost  = "lost"
)

// AgentStatus is one agent as GET /v1/cluster/agents shows it.
type AgentStatus struct {
	AgentInfo
	State       string    `json:"state"` // ready or lost
	Used        Resources `json:"used"`
	Running     []string  `json:"running"` // live attempt IDs
	LastContact time.Time `json:"last_contact"`
}

// AttemptReport is an agent's account of one attempt.
type AttemptReport struct {
	AttemptID string       `json:"attempt_id"`
	JobID     string       `json:"job_id"`
	State     AttemptState `json:"state"`
	PID       int          `json:"pid,omitempty"`
	StartedAt *time.Time   `json:"started_at,omitempty"`
	EndedAt   *time.Time   `json:"ended_at,omitempty"`
	ExitCode  *int         `json:"exit_code,omitempty"`
	Signal    string       `json:"signal,omitempty"`
	Reason    string       `json:"reason,omitempty"`
}

// SyncRequest is an agent's long-poll to the active: POST /v1/agent/sync.
type SyncRequest struct {
	Agent AgentInfo `json:"agent"`
	// Epoch is the highest epoch the agent has seen; an active with a lower
	// epoch is deposed and steps down.
	Epoch int64 `json:"epoch"`
	// Running lists every attempt the agent is running now.
	Running []AttemptReport `json:"running"`
	// Done lists finished attempts the active has not acknowledged yet.
	Done []AttemptReport `json:"done"`
	// WaitMS is how long the active may hold the request when it has
	// nothing to send (long poll); 0 answers at once.
	WaitMS int `json:"wait_ms"`
	// Seq numbers the syncs of one agent process (1, 2, ...): the active
	// ignores a sync older than one it has already processed, so a delayed
	// request cannot undo what a later one reported.
	Seq uint64 `json:"seq"`
}

// Assignment tells an agent to launch attempt AttemptID of job JobID.
// Assignments are recorded in etcd before they are sent and re-sent until the
// agent reports the attempt, so the agent must launch each ID at most once.
type Assignment struct {
	AttemptID string  `json:"attempt_id"`
	JobID     string  `json:"job_id"`
	Spec      JobSpec `json:"spec"`
}

// KillOrder tells an agent to kill a running attempt.
type KillOrder struct {
	AttemptID string `json:"attempt_id"`
	Reason    string `json:"reason"`
}

// SyncResponse is the active's answer. Every field is only valid with its
// Epoch: an agent ignores a response whose epoch is lower than one it has
// seen (I1: fencing at the resource).
type SyncResponse struct {
	Epoch    int64        `json:"epoch"`
	ServerID string       `json:"server_id"`
	Assign   []Assignment `json:"assign"`
	Kill     []KillOrder  `json:"kill"`
	// Ack lists the Done reports now recorded; the agent may forget them.
	Ack []string `json:"ack"`
}
