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
	Epoch  int64        `json:"epoch"` // epoch of the shard's owner that scheduled it
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
	// Outputs are what a workflow step's attempt wrote to $TANDEM_OUTPUTS.
	Outputs map[string]string `json:"outputs,omitempty"`
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
	// Outputs are what a workflow step's attempt wrote to $TANDEM_OUTPUTS
	// (done reports only).
	Outputs map[string]string `json:"outputs,omitempty"`
}

// SyncRequest is an agent's long poll to one server: POST /v1/agent/sync.
// An agent keeps one sync session with every live server (DESIGN.md section
// 10): each server answers for the shards it owns, so reports reach the owner
// of each job's shard directly, and a server that owns nothing (a standby)
// simply holds the poll.
type SyncRequest struct {
	Agent AgentInfo `json:"agent"`
	// Epochs is the highest epoch the agent has seen for each shard; the
	// owner of a shard whose term has a lower epoch is deposed and ends that
	// term.
	Epochs map[int]int64 `json:"epochs"`
	// Running lists every attempt the agent is running now.
	Running []AttemptReport `json:"running"`
	// Done lists finished attempts no owner has acknowledged yet.
	Done []AttemptReport `json:"done"`
	// WaitMS is how long the server may hold the request when it has
	// nothing to send (long poll); 0 answers at once.
	WaitMS int `json:"wait_ms"`
	// Session names the agent's sync session (one per server); Seq numbers
	// the syncs of one session of one agent process (1, 2, ...): a server
	// ignores a sync older than one it has already processed, so a delayed
	// request cannot undo what a later one reported.
	Session string `json:"session"`
	Seq     uint64 `json:"seq"`
}

// Assignment tells an agent to launch attempt AttemptID of job JobID.
// Assignments are recorded in etcd before they are sent and re-sent until the
// agent reports the attempt, so the agent must launch each ID at most once.
// Shard and Epoch name the term of the owner that vouches for it: an agent
// refuses the item if it has seen a higher epoch for that shard (I1).
type Assignment struct {
	AttemptID string  `json:"attempt_id"`
	JobID     string  `json:"job_id"`
	Shard     int     `json:"shard"`
	Epoch     int64   `json:"epoch"`
	Spec      JobSpec `json:"spec"`
}

// KillOrder tells an agent to kill a running attempt; Shard and Epoch fence
// it as they fence an Assignment.
type KillOrder struct {
	AttemptID string `json:"attempt_id"`
	Shard     int    `json:"shard"`
	Epoch     int64  `json:"epoch"`
	Reason    string `json:"reason"`
}

// Ack tells an agent that the owner of Shard recorded the Done report of
// AttemptID; the agent may forget it. An ack from a term older than one the
// agent has seen for the shard is refused: a deposed owner's view may not
// know the attempt at all.
type Ack struct {
	AttemptID string `json:"attempt_id"`
	Shard     int    `json:"shard"`
	Epoch     int64  `json:"epoch"`
}

// ShardTerm is one shard a server owns and the epoch of its term.
type ShardTerm struct {
	Shard int   `json:"shard"`
	Epoch int64 `json:"epoch"`
}

// ServerRef names a live server and the URL agents reach it at.
type ServerRef struct {
	ID  string `json:"id"`
	URL string `json:"url"`
}

// SyncResponse is a server's answer. Every item carries the shard and epoch
// it is valid under; an agent refuses, item by item, those whose epoch is
// lower than one it has seen for their shard (I1: fencing at the resource).
type SyncResponse struct {
	ServerID string `json:"server_id"`
	// Terms are the shards this server owns, with their epochs: the agent
	// records them, so that it refuses a deposed owner even before any item
	// of the new one arrives.
	Terms  []ShardTerm  `json:"terms"`
	Assign []Assignment `json:"assign"`
	Kill   []KillOrder  `json:"kill"`
	Ack    []Ack        `json:"ack"`
	// Servers lists the live servers, so an agent keeps a session with
	// every one, including servers it was not configured with.
	Servers []ServerRef `json:"servers"`
}
