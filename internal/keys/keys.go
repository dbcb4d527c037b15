// Package keys is the etcd key layout of a tandem cluster (DESIGN.md section
// 11). Every key lives under /tandem/<cluster>/, so clusters sharing an etcd
// stay apart and an etcd role can be scoped to one cluster.
package keys

import (
	"fmt"
	"regexp"
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

// Leader is the lease-bound leader key; its create revision is the epoch.
func (l Layout) Leader() string { return l.prefix + "leader" }

// Handoff names the server a graceful failover hands leadership to; it is
// bound to the target's lease, so it vanishes if the target dies.
func (l Layout) Handoff() string { return l.prefix + "handoff" }

// Resign records why the last active gave up leadership on purpose.
func (l Layout) Resign() string { return l.prefix + "resign" }

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

// Event is the failover record of one epoch; zero-padded so keys sort by epoch.
func (l Layout) Event(epoch int64) string { return fmt.Sprintf("%s%020d", l.EventsPrefix(), epoch) }
