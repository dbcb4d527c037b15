package supervise

import (
	"log/slog"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdview"
	"github.com/tandemhq/tandem/internal/keys"
)

// view is a live copy of every key under the cluster's supervise/ prefix
// (etcdview). Supervisors decide from it; the decisions themselves are
// transactions that compare what they rely on, so a stale view can only
// cost a retry.
type view struct {
	*etcdview.Cache
	keys keys.Layout
}

func newView(cli *clientv3.Client, layout keys.Layout, log *slog.Logger) *view {
	// StallCheck: through a frozen etcd member (a tandem server with
	// embedded etcd under SIGSTOP) the watch would see nothing for 10 s or
	// more; the others' takeovers must not wait for that.
	return &view{Cache: etcdview.New(cli, etcdview.Config{Watch: layout.SupervisePrefix(), StallCheck: time.Second, Log: log}), keys: layout}
}

func (v *view) get(key string) *mvccpb.KeyValue { return v.Get(key) }

func (v *view) list(prefix string) []*mvccpb.KeyValue { return v.List(prefix) }

func decode[T any](kv *mvccpb.KeyValue) (T, bool) { return etcdview.Decode[T](kv) }

// Services returns every service defined, by name.
func (v *view) Services() map[string]Service {
	out := map[string]Service{}
	for _, kv := range v.list(v.keys.SuperviseServicesPrefix()) {
		if s, ok := decode[Service](kv); ok {
			out[s.Name] = s.WithDefaults()
		}
	}
	return out
}

// Service returns the definition of svc.
func (v *view) Service(svc string) (Service, bool) {
	s, ok := decode[Service](v.get(v.keys.SuperviseService(svc)))
	return s.WithDefaults(), ok
}

// Instances returns the registered (healthy) instances of the every-node
// service svc, by node.
func (v *view) Instances(svc string) []Instance {
	var out []Instance
	for _, kv := range v.list(v.keys.SuperviseInstancesPrefix(svc)) {
		if in, ok := decode[Instance](kv); ok {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Owner returns svc's owner, or nil.
func (v *view) Owner(svc string) *election.Owner {
	kv := v.get(v.keys.SuperviseOwnership(svc).Owner)
	o, ok := decode[election.Owner](kv)
	if !ok {
		return nil
	}
	o.Epoch, o.Lease, o.Key = kv.CreateRevision, kv.Lease, string(kv.Key)
	return &o
}

// Handoff returns svc's pending hand-off, or nil.
func (v *view) Handoff(svc string) *election.Handoff {
	kv := v.get(v.keys.SuperviseOwnership(svc).Handoff)
	h, ok := decode[election.Handoff](kv)
	if !ok {
		return nil
	}
	h.ModRev = kv.ModRevision
	return &h
}

// Resignation returns svc's last resignation record, or nil.
func (v *view) Resignation(svc string) *election.Resignation {
	r, ok := decode[election.Resignation](v.get(v.keys.SuperviseOwnership(svc).Resign))
	if !ok {
		return nil
	}
	return &r
}

// State returns who last ran svc's command, or nil if nobody ever did.
func (v *view) State(svc string) *RunState {
	s, ok := decode[RunState](v.get(v.keys.SuperviseState(svc)))
	if !ok {
		return nil
	}
	return &s
}

// Status returns the owner's report on svc's run, or nil.
func (v *view) Status(svc string) *RunStatus {
	s, ok := decode[RunStatus](v.get(v.keys.SuperviseStatus(svc)))
	if !ok {
		return nil
	}
	return &s
}

// Move returns an operator's pending request to move svc, or nil.
func (v *view) Move(svc string) *MoveRequest {
	kv := v.get(v.keys.SuperviseMove(svc))
	m, ok := decode[MoveRequest](kv)
	if !ok {
		return nil
	}
	m.rev = kv.ModRevision
	return &m
}

// Nodes returns every live supervisor, by node.
func (v *view) Nodes() map[string]NodeInfo {
	out := map[string]NodeInfo{}
	for _, kv := range v.list(v.keys.SuperviseNodesPrefix()) {
		if n, ok := decode[NodeInfo](kv); ok {
			n.Lease = kv.Lease
			out[n.Node] = n
		}
	}
	return out
}

// Placed returns the services node holds, and the record's revision (0:
// none).
func (v *view) Placed(node string) ([]string, int64) {
	kv := v.get(v.keys.SupervisePlaced(node))
	p, _ := decode[[]string](kv)
	if kv == nil {
		return nil, 0
	}
	return p, kv.ModRevision
}

// Banned reports whether node is banned from svc, and until when.
func (v *view) Banned(svc, node string) (Ban, bool) {
	return decode[Ban](v.get(v.keys.SuperviseBan(svc, node)))
}

// Bans returns every ban of svc ("" for every service).
func (v *view) Bans(svc string) []Ban {
	var out []Ban
	for _, kv := range v.list(v.keys.SuperviseBansPrefix(svc)) {
		if b, ok := decode[Ban](kv); ok {
			out = append(out, b)
		}
	}
	return out
}

// Events returns svc's failover history ("" for every service), oldest
// first.
func (v *view) Events(svc string) []Event {
	var out []Event
	for _, kv := range v.list(v.keys.SuperviseEventsPrefix(svc)) {
		if e, ok := decode[Event](kv); ok {
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Epoch < out[j].Epoch })
	return out
}
