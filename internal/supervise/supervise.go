// Package supervise makes other people's daemons highly available: a
// supervisor runs on every node that may host a service, against the
// cluster's etcd, and exactly one node runs a service's command at a time,
// the owner of the service's lease-bound key (DESIGN.md section 10, the same
// HA core as the servers' shards).
//
// Taking a service over, in order (docs/SUPERVISE.md gives the safety
// argument): win the key (epoch E); if the last node that ran the command
// did not record a clean stop, fence it (the fence hooks, level by level,
// under --fencing strict); write E to the epoch file; add the VIP after a
// duplicate-address probe and announce it; start the command in its own
// cgroup; once healthy, announce the VIP again and record the failover.
// Giving it up cleanly stops the command, checks its cgroup is empty,
// removes the VIP, and records "clean at epoch E" in the transaction that
// deletes the key. A supervisor that cannot renew its lease kills its
// commands' cgroups before the lease can expire for the others.
package supervise

import (
	"time"
)

// NodeInfo is a supervisor's lease-bound record.
type NodeInfo struct {
	Node  string `json:"node"`
	URL   string `json:"url"`  // its HTTP address: status, metrics, and the liveness probe of the others
	Addr  string `json:"addr"` // the address fence hooks are given for this node
	Slots int    `json:"slots"`
	// Services lists the services this node offers to run; Pool means any
	// service defined in etcd.
	Services []string  `json:"services,omitempty"`
	Pool     bool      `json:"pool,omitempty"`
	Started  time.Time `json:"started"`
	Lease    int64     `json:"-"`
}

// offers reports whether the node offers to run svc.
func (n NodeInfo) offers(svc string) bool {
	return n.Pool || n.offersByName(svc)
}

// offersByName reports whether the node lists svc itself (not by Pool):
// the nodes that run an instance of an every-node service.
func (n NodeInfo) offersByName(svc string) bool {
	for _, s := range n.Services {
		if s == svc {
			return true
		}
	}
	return false
}

// RunState records the last node that ran a service's command. Clean is
// set, in the same transaction that gives the service up, only once its
// command stopped and its cgroup was empty and its VIP removed; or by the
// next owner once it fenced that node. A new owner fences Node unless
// Clean.
type RunState struct {
	Node  string    `json:"node"`
	Addr  string    `json:"addr"`
	Epoch int64     `json:"epoch"`
	Clean bool      `json:"clean"`
	At    time.Time `json:"at"`
	// FencedBy is the node that fenced Node, when Clean came from fencing.
	FencedBy string `json:"fenced_by,omitempty"`
}

// Run states of a service on its owner.
const (
	StateFencing  = "fencing"
	StateStarting = "starting"
	StateHealthy  = "healthy"
	StateFailing  = "unhealthy"
	StateStopping = "stopping"
)

// RunStatus is the owner's report on a service's run.
type RunStatus struct {
	Node     string    `json:"node"`
	Epoch    int64     `json:"epoch"`
	State    string    `json:"state"`
	PID      int       `json:"pid,omitempty"`
	Restarts int       `json:"restarts"`
	Since    time.Time `json:"since"`
	Reason   string    `json:"reason,omitempty"`
}

// MoveRequest asks the owner of a service to hand it to a node.
type MoveRequest struct {
	To  string    `json:"to"`
	At  time.Time `json:"at"`
	rev int64
}

// Ban keeps a node out of a service until the ban's lease expires, or an
// operator clears it.
type Ban struct {
	Service string    `json:"service"`
	Node    string    `json:"node"`
	Reason  string    `json:"reason"`
	Until   time.Time `json:"until"`
}

// Causes of a supervised service's failover, beyond the servers' own
// (tandem.Cause*).
const (
	CauseHealthFailed = "health-failed" // the command failed its checks past the restart limit
	CauseStartFailed  = "start-failed"  // the command could not start at all
	CauseMove         = "move"          // tandem supervise move
	CauseFenceFailed  = "fence-failed"  // no fence level succeeded: gave the service up for another node to try
	CauseVIPInUse     = "vip-in-use"    // the duplicate-address probe found the VIP held by someone else
	CauseBanned       = "banned"        // an operator banned the owner from the service
	CauseUndefined    = "undefined"     // the service's definition was deleted
)

// Event records one takeover of a supervised service, with the duration
// of each phase as the new owner saw it (nil where it could not know).
type Event struct {
	Service   string    `json:"service"`
	Epoch     int64     `json:"epoch"`
	Node      string    `json:"node"`
	PrevNode  string    `json:"prev_node,omitempty"`
	PrevEpoch int64     `json:"prev_epoch,omitempty"`
	Cause     string    `json:"cause"`
	Time      time.Time `json:"time"`
	// DetectionS: from the last sign of the old owner (its resignation,
	// or when it was last seen alive) to its key's deletion; ElectionS: the
	// deletion to this node's win; FencingS: running the fence hooks (0 when
	// the old node stopped cleanly); StartS: epoch file, VIP and the
	// command's start; HealthyS: start to healthy; VIPS: adding and first
	// announcing the VIP; TotalS: the old owner's last sign to healthy.
	DetectionS *float64 `json:"detection_s,omitempty"`
	ElectionS  *float64 `json:"election_s,omitempty"`
	FencingS   *float64 `json:"fencing_s,omitempty"`
	StartS     *float64 `json:"start_s,omitempty"`
	HealthyS   *float64 `json:"healthy_s,omitempty"`
	VIPS       *float64 `json:"vip_s,omitempty"`
	TotalS     *float64 `json:"total_s,omitempty"`
	// Fenced is the node the fence hooks were run against, and FenceLevel
	// the level that succeeded.
	Fenced     string `json:"fenced,omitempty"`
	FenceLevel int    `json:"fence_level,omitempty"`
}

func secs(d time.Duration) *float64 {
	v := max(d, 0).Seconds()
	return &v
}
