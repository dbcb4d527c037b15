package tandem

import "time"

// HAState is a server's high-availability state, as in Hadoop.
type HAState string

// HA states. A server starts initializing, joins as standby, may become
// active, and is stopping while it shuts down.
const (
	StateInitializing HAState = "initializing"
	StateStandby      HAState = "standby"
	StateActive       HAState = "active"
	StateStopping     HAState = "stopping"
)

// HAStates lists every HA state, for metrics and validation.
var HAStates = []HAState{StateInitializing, StateStandby, StateActive, StateStopping}

// ServerStatus is a server's own account of itself: GET /v1/ha/state and /about.
type ServerStatus struct {
	ID           string    `json:"id"`
	Cluster      string    `json:"cluster"`
	URL          string    `json:"url"`
	State        HAState   `json:"state"`
	Epoch        int64     `json:"epoch"` // the current active's epoch, 0 if none is known
	ActiveID     string    `json:"active_id"`
	ActiveURL    string    `json:"active_url"`
	AutoFailover bool      `json:"auto_failover"`
	PID          int       `json:"pid"`
	Version      string    `json:"version"`
	StartedAt    time.Time `json:"started_at"`
	// Revision is the etcd revision this server's view of the cluster has reached.
	Revision int64 `json:"revision"`
	Jobs     int   `json:"jobs"`
	// Shards is the cluster's number of shards (1: active/standby).
	Shards int `json:"shards"`
	// Owned lists the shards this server owns (in a cluster of one shard,
	// [0] on the active).
	Owned []int `json:"owned"`
	// Ready is whether this server counts in the shards' target map (it has
	// been up its settle time and is not draining).
	Ready    bool `json:"ready"`
	Draining bool `json:"draining"`
}

// ServerInfo is one live server as seen in the membership registry:
// GET /v1/cluster/servers.
type ServerInfo struct {
	ID        string    `json:"id"`
	URL       string    `json:"url"`
	State     HAState   `json:"state"`
	PID       int       `json:"pid"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
	// Lease is the etcd lease the server's keys are bound to; a graceful
	// failover binds the hand-off to the target's lease.
	Lease int64 `json:"lease"`
	// Ready is set once the server has been up its settle time: only ready
	// servers that are not draining get shards in the target map.
	Ready    bool `json:"ready"`
	Draining bool `json:"draining,omitempty"`
	// Shards is how many shards the server owns, from the answering
	// server's view (not stored).
	Shards int `json:"shards"`
}

// ShardInfo is one shard's ownership: GET /v1/cluster/shards.
type ShardInfo struct {
	Shard    int       `json:"shard"`
	Owner    string    `json:"owner"` // server ID; "" while the shard is free
	OwnerURL string    `json:"owner_url,omitempty"`
	Epoch    int64     `json:"epoch"` // the owner key's create revision; 0 while free
	Since    time.Time `json:"since,omitempty"`
	// Target is the server the target map gives the shard to (active-active
	// only); HandoffTo names a hand-off under way.
	Target    string `json:"target,omitempty"`
	HandoffTo string `json:"handoff_to,omitempty"`
}

// DrainRequest asks a server to give up its shards and take none until
// undrained: POST /v1/ha/drain.
type DrainRequest struct {
	Drain bool `json:"drain"`
	// WaitMS bounds how long the call waits for the server to own nothing
	// (default 30000).
	WaitMS int `json:"wait_ms,omitempty"`
}

// Failover causes recorded in FailoverEvent.Cause.
const (
	CauseInitial      = "initial"        // first active of a cluster
	CauseLeaseExpired = "lease-expired"  // the active stopped renewing its lease (crash, hang, partition)
	CauseShutdown     = "shutdown"       // the active resigned as it shut down
	CauseHandoff      = "handoff"        // graceful failover (tandem admin failover)
	CauseManual       = "manual"         // transition-to-standby / transition-to-active by an operator
	CauseFenced       = "fenced"         // the active found its epoch superseded and stepped down
	CauseCrashed      = "crash-detected" // the others found the active dead or unresponsive and deposed it (see Detection)
	CauseRebalance    = "rebalance"      // active-active: the target map moved the shard (a server joined or left)
	CauseDrain        = "drain"          // the owner was drained (tandem admin drain) and handed the shard off
)

// How a crashed owner was detected, recorded in FailoverEvent.Detection
// when the cause is CauseCrashed.
const (
	// DetectConnectionLost: a server holding a watch stream to the owner
	// (GET /v1/ha/watch) saw it close without a goodbye, and one refused
	// connection to the owner's port confirmed the process was gone.
	DetectConnectionLost = "connection-lost"
	// DetectProbesRefused: the owner's port refused several probes in a
	// row (the fallback, when no stream was open).
	DetectProbesRefused = "probes-refused"
	// DetectAgreement: the owner stopped beating on its watch streams (hung,
	// paused, cut off), a majority of the other live servers voted so, and
	// it did not answer the votes through etcd (docs/HA.md, "Agreement").
	DetectAgreement = "agreement"
)

// FailoverEvent records one change of active, or of a shard's owner in an
// active-active cluster (DESIGN.md I6). Durations are in
// seconds and are nil where the new active could not know them.
type FailoverEvent struct {
	// Shard is the shard whose owner changed (always 0 with one shard).
	Shard     int    `json:"shard"`
	Epoch     int64  `json:"epoch"`
	ActiveID  string `json:"active_id"`
	ActiveURL string `json:"active_url"`
	PrevID    string `json:"prev_id,omitempty"`
	PrevEpoch int64  `json:"prev_epoch,omitempty"`
	Cause     string `json:"cause"`
	// Detection says how a crashed owner was found out (Detect*), when
	// the cause is CauseCrashed.
	Detection   string    `json:"detection,omitempty"`
	Time        time.Time `json:"time"`
	DetectionS  *float64  `json:"detection_s,omitempty"`
	ElectionS   *float64  `json:"election_s,omitempty"`
	TransitionS *float64  `json:"transition_s,omitempty"`
}

// HandoffRequest asks the active to hand leadership to another server:
// POST /v1/ha/failover.
type HandoffRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// TransitionRequest asks a server to change its own HA state:
// POST /v1/ha/transition.
type TransitionRequest struct {
	State       HAState `json:"state"` // active or standby
	ForceManual bool    `json:"force_manual,omitempty"`
}
