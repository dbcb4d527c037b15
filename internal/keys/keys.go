// Package keys is the etcd key layout of a tandem cluster (DESIGN.md section
// 11). Every key lives under /tandem/<cluster>/, so clusters sharing an etcd
// stay apart and an etcd role can be scoped to one cluster.
package keys

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var clusterName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// ValidateName checks a cluster or server name: 1 to 63 characters of
// letters, digits, '.', '_' and '-', starting with a letter or digit. Names
// become parts of etcd keys, so '/' is never allowed.
func ValidateName(kind, name string) error {
	if !clusterName.MatchString(name) {
		return fmt.Errorf("invalid %s name %q: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", kind, name)
	}
	return nil
}

// Layout names the keys of one cluster.
type Layout struct{ prefix string }

// New returns the layout of cluster; the name must pass ValidateName.
func New(cluster string) Layout { return Layout{prefix: "/tandem/" + cluster + "/"} }

// Prefix is the prefix of every key of the cluster.
func (l Layout) Prefix() string { return l.prefix }

// Leader is the lease-bound leader key of a cluster of one shard; its create
// revision is the epoch.
func (l Layout) Leader() string { return l.prefix + "leader" }

// Config holds the cluster-wide settings written once when the cluster is
// first started (the number of shards).
func (l Layout) Config() string { return l.prefix + "config" }

// Ownership is the set of keys of one thing that can be owned: the
// lease-bound owner key, whose create revision is the owner's epoch; the
// hand-off key, bound to the target's lease, that names the server a
// graceful hand-off goes to; and the resign key, recording why the last
// owner gave it up.
type Ownership struct {
	Owner, Handoff, Resign string
}

// MaxShards bounds the number of shards of a cluster.
const MaxShards = 1024

// Shard returns the keys of shard k of a cluster of n shards. A cluster of
// one shard keeps the layout of active/standby (leader, handoff, resign), so
// its one owner is the active; with more, each shard has its keys under
// shards/<k>/.
func (l Layout) Shard(k, n int) Ownership {
	if n <= 1 {
		return Ownership{Owner: l.prefix + "leader", Handoff: l.prefix + "handoff", Resign: l.prefix + "resign"}
	}
	base := fmt.Sprintf("%s%04d/", l.ShardsPrefix(), k)
	return Ownership{Owner: base + "owner", Handoff: base + "handoff", Resign: base + "resign"}
}

// ShardsPrefix is the prefix of the per-shard keys of an active-active cluster.
func (l Layout) ShardsPrefix() string { return l.prefix + "shards/" }

// ParseShardKey splits a key under ShardsPrefix into its shard and its part
// ("owner", "handoff" or "resign"); ok is false for any other key.
func (l Layout) ParseShardKey(key string) (shard int, part string, ok bool) {
	rest, found := strings.CutPrefix(key, l.ShardsPrefix())
	if !found {
		return 0, "", false
	}
	num, part, found := strings.Cut(rest, "/")
	if !found || len(num) != 4 {
		return 0, "", false
	}
	k, err := strconv.Atoi(num)
	if err != nil || k < 0 || k >= MaxShards {
		return 0, "", false
	}
	switch part {
	case "owner", "handoff", "resign":
		return k, part, true
	}
	return 0, "", false
}

// PlacementsPrefix is the prefix of the per-agent placement records.
func (l Layout) PlacementsPrefix() string { return l.prefix + "placements/" }

// Placement is agent's placement record: every placement on the agent
// rewrites it, and every placement transaction compares its revision, so
// owners of different shards never over-commit one agent.
func (l Layout) Placement(agent string) string { return l.PlacementsPrefix() + agent }

// ServersPrefix is the prefix of the membership registry.
func (l Layout) ServersPrefix() string { return l.prefix + "servers/" }

// Server is one server's lease-bound membership record.
func (l Layout) Server(id string) string { return l.ServersPrefix() + id }

// JobsPrefix is the prefix of job records.
func (l Layout) JobsPrefix() string { return l.prefix + "jobs/" }

// Job is one job record.
func (l Layout) Job(id string) string { return l.JobsPrefix() + id }

// AgentsPrefix is the prefix of agent registrations.
func (l Layout) AgentsPrefix() string { return l.prefix + "agents/" }

// Agent is one agent's registration (what it offers, where it listens).
func (l Layout) Agent(id string) string { return l.AgentsPrefix() + id }

// IdemPrefix is the prefix of idempotency keys.
func (l Layout) IdemPrefix() string { return l.prefix + "idem/" }

// Idem maps an idempotency key to the job it created.
func (l Layout) Idem(key string) string { return l.IdemPrefix() + key }

// EventsPrefix is the prefix of the HA history.
func (l Layout) EventsPrefix() string { return l.prefix + "events/" }

// Event is the failover record of shard's term at epoch; zero-padded so
// keys sort by epoch. One transaction may win several shards at one
// revision (election.AcquireEach), so epochs alone are not unique across
// shards: a shard other than 0 adds its number. Shard 0, the one shard of
// an active/standby cluster, keeps the key it always had.
func (l Layout) Event(shard int, epoch int64) string {
	if shard == 0 {
		return fmt.Sprintf("%s%020d", l.EventsPrefix(), epoch)
	}
	return fmt.Sprintf("%s%020d.%04d", l.EventsPrefix(), epoch, shard)
}

// Supervised services (tandem supervise) keep their keys under supervise/:
//
//	supervise/services/<svc>           the service's definition (what to run, how to check, fence, reach it)
//	supervise/svc/<svc>/owner|handoff|resign   its ownership: the owner runs the command
//	supervise/svc/<svc>/state          who last ran the command, at which epoch, and whether it stopped cleanly
//	supervise/svc/<svc>/status         the owner's view of its run (starting, healthy...), bound to its lease
//	supervise/svc/<svc>/move           an operator's request to move it to a node
//	supervise/svc/<svc>/instances/<node>   a healthy instance of an every-node service, bound to its node's lease
//	supervise/nodes/<node>             a supervisor's lease-bound record: slots, services offered, address
//	supervise/placed/<node>            the services a node holds, rewritten in every transaction that wins or gives one up
//	supervise/bans/<svc>/<node>        a node kept out of a service, bound to a lease of the ban's length
//	supervise/events/<svc>/<epoch>     the failover history of the service

// SupervisePrefix is the prefix of every key of supervised services.
func (l Layout) SupervisePrefix() string { return l.prefix + "supervise/" }

// SuperviseService is the definition of the supervised service svc.
func (l Layout) SuperviseService(svc string) string { return l.prefix + "supervise/services/" + svc }

// SuperviseServicesPrefix is the prefix of service definitions.
func (l Layout) SuperviseServicesPrefix() string { return l.prefix + "supervise/services/" }

// SuperviseOwnership is the ownership of the supervised service svc.
func (l Layout) SuperviseOwnership(svc string) Ownership {
	base := l.prefix + "supervise/svc/" + svc + "/"
	return Ownership{Owner: base + "owner", Handoff: base + "handoff", Resign: base + "resign"}
}

// SuperviseSvcPrefix is the prefix of the per-service runtime keys.
func (l Layout) SuperviseSvcPrefix() string { return l.prefix + "supervise/svc/" }

// SuperviseState records who last ran svc's command and whether it stopped
// cleanly: the next owner fences that node unless it did.
func (l Layout) SuperviseState(svc string) string {
	return l.prefix + "supervise/svc/" + svc + "/state"
}

// SuperviseStatus is the owner's report of svc's run, bound to its lease.
func (l Layout) SuperviseStatus(svc string) string {
	return l.prefix + "supervise/svc/" + svc + "/status"
}

// SuperviseMove is an operator's request to move svc to another node.
func (l Layout) SuperviseMove(svc string) string { return l.prefix + "supervise/svc/" + svc + "/move" }

// SuperviseInstance is node's healthy instance of the every-node service
// svc, bound to the lease of node's supervisor.
func (l Layout) SuperviseInstance(svc, node string) string {
	return l.SuperviseInstancesPrefix(svc) + node
}

// SuperviseInstancesPrefix is the prefix of svc's registered instances.
func (l Layout) SuperviseInstancesPrefix(svc string) string {
	return l.prefix + "supervise/svc/" + svc + "/instances/"
}

// SuperviseNode is the lease-bound record of the supervisor of node.
func (l Layout) SuperviseNode(node string) string { return l.prefix + "supervise/nodes/" + node }

// SuperviseNodesPrefix is the prefix of supervisor records.
func (l Layout) SuperviseNodesPrefix() string { return l.prefix + "supervise/nodes/" }

// SupervisePlaced lists the services node holds; winning or giving up a
// service rewrites it in the same transaction, so slots and anti-affinity
// are checked against what the node really holds.
func (l Layout) SupervisePlaced(node string) string { return l.prefix + "supervise/placed/" + node }

// SuperviseBan keeps node out of svc while it exists (bound to a lease of
// the ban's length).
func (l Layout) SuperviseBan(svc, node string) string {
	return l.prefix + "supervise/bans/" + svc + "/" + node
}

// SuperviseBansPrefix is the prefix of svc's bans ("" for every service's).
func (l Layout) SuperviseBansPrefix(svc string) string {
	if svc == "" {
		return l.prefix + "supervise/bans/"
	}
	return l.prefix + "supervise/bans/" + svc + "/"
}

// SuperviseEvent is the failover record of svc's term at epoch.
func (l Layout) SuperviseEvent(svc string, epoch int64) string {
	return fmt.Sprintf("%ssupervise/events/%s/%020d", l.prefix, svc, epoch)
}

// SuperviseEventsPrefix is the prefix of svc's failover history ("" for
// every service's).
func (l Layout) SuperviseEventsPrefix(svc string) string {
	if svc == "" {
		return l.prefix + "supervise/events/"
	}
	return l.prefix + "supervise/events/" + svc + "/"
}

// ACL keys (tokens and policies, docs/SECURITY.md) live under acl/:
//
//	acl/tokens/<sha256 hex>    one token's record, keyed by the SHA-256 of its secret (never the secret)
//	acl/accessors/<accessor>   the hash of the token with that accessor, for list and delete
//	acl/bootstrap              created once, by the one-time bootstrap

// ACLPrefix is the prefix of every ACL key.
func (l Layout) ACLPrefix() string { return l.prefix + "acl/" }

// ACLTokensPrefix is the prefix of token records.
func (l Layout) ACLTokensPrefix() string { return l.prefix + "acl/tokens/" }

// ACLToken is the record of the token whose secret hashes to hash (hex SHA-256).
func (l Layout) ACLToken(hash string) string { return l.ACLTokensPrefix() + hash }

// ACLAccessor maps a token's accessor to its hash.
func (l Layout) ACLAccessor(accessor string) string { return l.prefix + "acl/accessors/" + accessor }

// ACLBootstrap is created, once, by the bootstrap that makes the first
// management token; its presence refuses every later bootstrap.
func (l Layout) ACLBootstrap() string { return l.prefix + "acl/bootstrap" }

// Schedules (DESIGN.md section 13) keep their records under schedules/ and
// their run records under fires/:
//
//	schedules/<id>               the schedule: spec, cursor, buffered times
//	fires/<id>/<nominal time>    one record per nominal time (or merged skip range)
//	fires/<id>/<time>~manual     a manual run (tandem schedule trigger)
//	fires/<id>/<time>~backfill   a backfilled run of a past nominal time
//
// A time in a key is UTC with a fixed width (RunTime), so a schedule's runs
// sort by time.

// SchedulesPrefix is the prefix of schedule records.
func (l Layout) SchedulesPrefix() string { return l.prefix + "schedules/" }

// Schedule is one schedule's record.
func (l Layout) Schedule(id string) string { return l.SchedulesPrefix() + id }

// FiresPrefix is the prefix of every schedule's run records.
func (l Layout) FiresPrefix() string { return l.prefix + "fires/" }

// Fires is the prefix of schedule id's run records.
func (l Layout) Fires(id string) string { return l.FiresPrefix() + id + "/" }

// Run kinds: the suffix of a run key after its time.
const (
	RunScheduled = ""
	RunManual    = "~manual"
	RunBackfill  = "~backfill"
)

// Fire is the run record of schedule id at nominal time t, of kind (one of
// RunScheduled, RunManual, RunBackfill).
func (l Layout) Fire(id string, t time.Time, kind string) string {
	return l.Fires(id) + RunTime(t) + kind
}

// runTimeLayout is RFC 3339 in UTC with all nine fractional digits: fixed
// width for years 0000-9999, so keys sort as times do.
const runTimeLayout = "2006-01-02T15:04:05.000000000Z"

// RunTime formats t for a run key.
func RunTime(t time.Time) string { return t.UTC().Format(runTimeLayout) }

// ParseFire splits a key under FiresPrefix into its schedule ID, time and
// kind; ok is false for any other key.
func (l Layout) ParseFire(key string) (id string, t time.Time, kind string, ok bool) {
	rest, found := strings.CutPrefix(key, l.FiresPrefix())
	if !found {
		return "", time.Time{}, "", false
	}
	id, rest, found = strings.Cut(rest, "/")
	if !found || id == "" || len(rest) < len(runTimeLayout) {
		return "", time.Time{}, "", false
	}
	t, err := time.Parse(runTimeLayout, rest[:len(runTimeLayout)])
	if err != nil {
		return "", time.Time{}, "", false
	}
	switch kind = rest[len(runTimeLayout):]; kind {
	case RunScheduled, RunManual, RunBackfill:
		return id, t, kind, true
	}
	return "", time.Time{}, "", false
}

// Workflow runs (docs/WORKFLOWS.md) keep one record each, holding the spec
// and every step's state; the jobs of their steps are ordinary jobs:
//
//	workflows/<id>    the run: spec, params, each step's record

// WorkflowsPrefix is the prefix of workflow run records.
func (l Layout) WorkflowsPrefix() string { return l.prefix + "workflows/" }

// Workflow is one workflow run's record.
func (l Layout) Workflow(id string) string { return l.WorkflowsPrefix() + id }

// Suspicion of an owner that stopped answering (issue 13: a hung or cut-off
// owner is deposed once the others agree) keeps its keys under suspects/:
//
//	suspects/<server>/<lease>/votes/<voter>   a vote that server stopped beating, bound to the voter's lease
//	suspects/<server>/<lease>/alive           the suspect's answer that it is alive, bound to its own lease
//
// <lease> (hex) is the suspect's lease: votes against one incarnation of a
// server never count against the next.

// SuspectsPrefix is the prefix of every suspicion key.
func (l Layout) SuspectsPrefix() string { return l.prefix + "suspects/" }

// Suspect is the prefix of the suspicion keys of server under lease.
func (l Layout) Suspect(server string, lease int64) string {
	return fmt.Sprintf("%s%s/%x/", l.SuspectsPrefix(), server, lease)
}

// SuspectVote is voter's vote that server, under lease, stopped beating.
func (l Layout) SuspectVote(server string, lease int64, voter string) string {
	return l.Suspect(server, lease) + "votes/" + voter
}

// SuspectAlive is server's answer, under lease, that it is alive.
func (l Layout) SuspectAlive(server string, lease int64) string {
	return l.Suspect(server, lease) + "alive"
}

// ParseSuspectKey splits a key under SuspectsPrefix into the suspect, its
// lease and the voter (empty for the suspect's own alive key); ok is false
// for any other key.
func (l Layout) ParseSuspectKey(key string) (server string, lease int64, voter string, ok bool) {
	rest, found := strings.CutPrefix(key, l.SuspectsPrefix())
	if !found {
		return "", 0, "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) < 3 || parts[0] == "" {
		return "", 0, "", false
	}
	lease, err := strconv.ParseInt(parts[1], 16, 64)
	if err != nil || lease == 0 {
		return "", 0, "", false
	}
	switch {
	case len(parts) == 3 && parts[2] == "alive":
		return parts[0], lease, "", true
	case len(parts) == 4 && parts[2] == "votes" && parts[3] != "":
		return parts[0], lease, parts[3], true
	}
	return "", 0, "", false
}
