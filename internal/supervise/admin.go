package supervise

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdview"
	"github.com/tandemhq/tandem/internal/keys"
)

// ServiceStatus is one supervised service as `tandem supervise status` and
// GET /v1/supervise/services show it.
type ServiceStatus struct {
	Service  string    `json:"service"`
	Node     string    `json:"node,omitempty"` // its owner, "" if none
	Epoch    int64     `json:"epoch,omitempty"`
	State    string    `json:"state"` // fencing, starting, healthy, unhealthy, stopping; "unplaced" without an owner
	Since    time.Time `json:"since,omitzero"`
	PID      int       `json:"pid,omitempty"`
	Restarts int       `json:"restarts,omitempty"`
	VIP      string    `json:"vip,omitempty"`
	Fencing  string    `json:"fencing"`
	Reason   string    `json:"reason,omitempty"`
	// LastRun is who last ran the command, and whether it stopped cleanly.
	LastRun *RunState `json:"last_run,omitempty"`
	Bans    []Ban     `json:"bans,omitempty"`
	// Candidates, for a service without an owner: why each live node
	// cannot take it ("" if it can).
	Candidates map[string]string `json:"candidates,omitempty"`
	MoveTo     string            `json:"move_to,omitempty"`
	// Instances, for an every-node service (State "every-node"): the
	// healthy instances, registered in etcd; Candidates then says which
	// nodes offer it without one.
	Instances []Instance `json:"instances,omitempty"`
}

// StateUnplaced is the state of a service nobody runs.
const StateUnplaced = "unplaced"

// StateEveryNode is the state of an every-node service: see its instances.
const StateEveryNode = "every-node"

// Admin reads and changes supervised services through etcd: what the CLI
// and each supervisor's HTTP API use.
type Admin struct {
	cli  *clientv3.Client
	keys keys.Layout
}

// NewAdmin returns an Admin of cluster's supervised services.
func NewAdmin(cli *clientv3.Client, cluster string) (*Admin, error) {
	if err := keys.ValidateName("cluster", cluster); err != nil {
		return nil, err
	}
	return &Admin{cli: cli, keys: keys.New(cluster)}, nil
}

// snapshot reads every supervise key at one revision into a view.
func (a *Admin) snapshot(ctx context.Context) (*view, error) {
	resp, err := a.cli.Get(ctx, a.keys.SupervisePrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read the supervised services: %w", err)
	}
	return &view{Cache: etcdview.Snapshot(resp.Kvs, resp.Header.Revision), keys: a.keys}, nil
}

// Status returns every defined service's status, by name.
func (a *Admin) Status(ctx context.Context) ([]ServiceStatus, error) {
	v, err := a.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	return statusOf(v), nil
}

func statusOf(v *view) []ServiceStatus {
	defs := v.Services()
	nodes := v.Nodes()
	var out []ServiceStatus
	for name, svc := range defs {
		st := ServiceStatus{Service: name, VIP: svc.VIP, Fencing: svc.Fencing, LastRun: v.State(name), Bans: v.Bans(name), State: StateUnplaced}
		if m := v.Move(name); m != nil {
			st.MoveTo = m.To
		}
		if svc.EveryNode() {
			st.State, st.Fencing, st.Instances = StateEveryNode, "", v.Instances(name)
			st.Candidates = map[string]string{}
			up := map[string]bool{}
			for _, in := range st.Instances {
				up[in.Node] = true
			}
			for id, n := range nodes {
				if n.offersByName(name) && !up[id] {
					st.Candidates[id] = "no healthy instance (starting, failing or backing off: see its log)"
				}
			}
			out = append(out, st)
			continue
		}
		if o := v.Owner(name); o != nil {
			st.Node, st.Epoch, st.Since, st.State = o.ID, o.Epoch, o.At, StateStarting
			if rs := v.Status(name); rs != nil && rs.Epoch == o.Epoch {
				st.State, st.Since, st.PID, st.Restarts, st.Reason = rs.State, rs.Since, rs.PID, rs.Restarts, rs.Reason
			}
		} else {
			st.Candidates = map[string]string{}
			for id, n := range nodes {
				st.Candidates[id] = whyNot(v, svc, n, defs)
			}
			if len(nodes) == 0 {
				st.Reason = "no supervisor is running"
			} else if h := v.Handoff(name); h != nil {
				st.Reason = "being handed to " + h.To
			} else {
				ok := false
				for _, why := range st.Candidates {
					ok = ok || why == ""
				}
				if !ok {
					st.Reason = "no node can take it"
				}
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// whyNot says why node n cannot take svc now ("" if it can).
func whyNot(v *view, svc Service, n NodeInfo, defs map[string]Service) string {
	if !n.offers(svc.Name) {
		return "does not offer it"
	}
	if !svc.canRunOn(n.Node) {
		return "not one of its nodes"
	}
	if b, ok := v.Banned(svc.Name, n.Node); ok {
		return "banned until " + b.Until.Format(time.RFC3339) + " (" + b.Reason + ")"
	}
	placed, _ := v.Placed(n.Node)
	return placementConflict(svc, placed, n.Slots, defs)
}

// History returns the failover records of svc ("" for every service).
func (a *Admin) History(ctx context.Context, svc string) ([]Event, error) {
	v, err := a.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	return v.Events(svc), nil
}

// Nodes returns the live supervisors.
func (a *Admin) Nodes(ctx context.Context) ([]NodeInfo, error) {
	v, err := a.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	var out []NodeInfo
	for _, n := range v.Nodes() {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

// Move asks svc's owner to stop it cleanly and hand it to node. It checks
// that node is live and could take it now, and returns once the request is
// recorded; wait polls nothing: callers watch Status.
func (a *Admin) Move(ctx context.Context, svc, node string) error {
	v, err := a.snapshot(ctx)
	if err != nil {
		return err
	}
	def, ok := v.Service(svc)
	if !ok {
		return tandem.Errorf(tandem.ENOTFOUND, "no supervised service %s", svc)
	}
	n, ok := v.Nodes()[node]
	if !ok {
		return tandem.Errorf(tandem.ENOTFOUND, "no live supervisor on node %s", node)
	}
	if def.EveryNode() {
		return tandem.Errorf(tandem.ECONFLICT, "service %s runs an instance on every node that offers it: there is nothing to move", svc)
	}
	o := v.Owner(svc)
	if o == nil {
		return tandem.Errorf(tandem.ECONFLICT, "service %s runs nowhere now; it goes to the first node that can take it", svc)
	}
	if o.ID == node {
		return tandem.Errorf(tandem.ECONFLICT, "service %s already runs on %s", svc, node)
	}
	if why := whyNot(v, def, n, v.Services()); why != "" {
		return tandem.Errorf(tandem.ECONFLICT, "node %s cannot take %s: %s", node, svc, why)
	}
	val, _ := json.Marshal(MoveRequest{To: node, At: time.Now().UTC()})
	_, err = a.cli.Put(ctx, a.keys.SuperviseMove(svc), string(val))
	if err != nil {
		return fmt.Errorf("record the move: %w", err)
	}
	return nil
}

// Ban keeps node out of svc for d (its owner there gives it up cleanly).
func (a *Admin) Ban(ctx context.Context, svc, node string, d time.Duration, reason string) error {
	if d <= 0 {
		return tandem.Errorf(tandem.EINVALID, "ban for %s: must be positive", d)
	}
	if err := keys.ValidateName("node", node); err != nil {
		return tandem.Errorf(tandem.EINVALID, "%v", err)
	}
	v, err := a.snapshot(ctx)
	if err != nil {
		return err
	}
	if _, ok := v.Service(svc); !ok {
		return tandem.Errorf(tandem.ENOTFOUND, "no supervised service %s", svc)
	}
	id, err := grantBanLease(ctx, a.cli, d)
	if err != nil {
		return err
	}
	if reason == "" {
		reason = "banned by an operator"
	}
	val, _ := json.Marshal(Ban{Service: svc, Node: node, Reason: reason, Until: time.Now().Add(d).UTC()})
	if _, err := a.cli.Put(ctx, a.keys.SuperviseBan(svc, node), string(val), clientv3.WithLease(id)); err != nil {
		return fmt.Errorf("record the ban: %w", err)
	}
	return nil
}

// Clear removes every ban of svc and any pending move request, so every
// node may take it again (Pacemaker's cleanup). It returns the bans removed.
func (a *Admin) Clear(ctx context.Context, svc string) (int, error) {
	if strings.TrimSpace(svc) == "" {
		return 0, tandem.Errorf(tandem.EINVALID, "clear: name the service")
	}
	v, err := a.snapshot(ctx)
	if err != nil {
		return 0, err
	}
	if _, ok := v.Service(svc); !ok {
		return 0, tandem.Errorf(tandem.ENOTFOUND, "no supervised service %s", svc)
	}
	resp, err := a.cli.Txn(ctx).Then(clientv3.OpDelete(a.keys.SuperviseBansPrefix(svc), clientv3.WithPrefix()),
		clientv3.OpDelete(a.keys.SuperviseMove(svc))).Commit()
	if err != nil {
		return 0, fmt.Errorf("clear %s: %w", svc, err)
	}
	return int(resp.Responses[0].GetResponseDeleteRange().Deleted), nil
}

// Undefine deletes svc's definition: its owner stops it cleanly and no
// node takes it again.
func (a *Admin) Undefine(ctx context.Context, svc string) error {
	resp, err := a.cli.Delete(ctx, a.keys.SuperviseService(svc))
	if err != nil {
		return fmt.Errorf("delete %s: %w", svc, err)
	}
	if resp.Deleted == 0 {
		return tandem.Errorf(tandem.ENOTFOUND, "no supervised service %s", svc)
	}
	return nil
}
