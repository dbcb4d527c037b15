package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tandemhq/tandem/internal/netns"
	"github.com/tandemhq/tandem/internal/supervise"
)

// Faults RunSupervise can inject into the node that runs the service.
const (
	// FaultKillCommand is kill -9 of the service's command: the supervisor
	// restarts it in place.
	FaultKillCommand = "kill-command"
	// FaultKillSupervisor is kill -9 of the owner's supervisor: its command
	// dies with it (Pdeathsig) and the others see its port refuse
	// connections.
	FaultKillSupervisor = "kill-supervisor"
	// FaultFreeze freezes the owner's whole node (supervisor and command,
	// through its cgroup) past its lease, and thaws it after the takeover.
	FaultFreeze = "freeze"
	// FaultIsolate cuts the owner's control link (no etcd, no peers) while
	// its service link stays up, and heals it after the takeover.
	FaultIsolate = "isolate"
)

// SuperviseFaults lists the faults of RunSupervise, in the order it runs them.
var SuperviseFaults = []string{FaultKillCommand, FaultKillSupervisor, FaultFreeze, FaultIsolate}

// Fencing modes of the supervised service (supervise.FencingStrict and
// supervise.FencingSelf).
const (
	FencingStrict = supervise.FencingStrict
	FencingSelf   = supervise.FencingSelf
)

// SuperviseConfig configures RunSupervise.
type SuperviseConfig struct {
	Binary   string        // the tandem binary: etcd, the supervisors and the service
	Nodes    int           // nodes, each a network namespace with a supervisor (2 to 9)
	Trials   int           // trials of each fault
	Faults   []string      // faults to inject, in this order (default SuperviseFaults)
	LeaseTTL time.Duration // the supervisors' lease (whole seconds)
	Fencing  string        // strict (a fence hook) or self
	// HealthInterval is the service's health check interval (an HTTP check
	// of the command; rise 2, fall 3).
	HealthInterval time.Duration
	// ProbeEvery is how often the client opens a new connection to the VIP.
	ProbeEvery time.Duration
	Quiet      time.Duration // pause between trials, once everything settled
	BasePort   int           // etcd on BasePort and +1; supervisors on +10 and the service on +20 in each namespace
	DataDir    string        // logs and etcd's data ("" for a temporary directory, removed at the end)
	Out        io.Writer     // progress and the result tables
}

func (c *SuperviseConfig) validate() error {
	if len(c.Faults) == 0 {
		c.Faults = SuperviseFaults
	}
	for _, f := range c.Faults {
		if !slices.Contains(SuperviseFaults, f) {
			return fmt.Errorf("unknown fault %q: use %s", f, strings.Join(SuperviseFaults, ", "))
		}
	}
	switch {
	case c.Nodes < 2 || c.Nodes > 9:
		return fmt.Errorf("nodes %d: must be from 2 to 9", c.Nodes)
	case c.Trials < 1:
		return errors.New("trials must be at least 1")
	case c.LeaseTTL < time.Second || c.LeaseTTL%time.Second != 0:
		return fmt.Errorf("lease TTL %s: use whole seconds, at least 1s", c.LeaseTTL)
	case c.Fencing != FencingStrict && c.Fencing != FencingSelf:
		return fmt.Errorf("fencing %q: want strict or self", c.Fencing)
	case c.HealthInterval <= 0 || c.ProbeEvery <= 0 || c.Quiet < 0:
		return errors.New("health interval and probe interval must be positive, quiet time not negative")
	case c.BasePort < 1024 || c.BasePort+20 > 65535:
		return fmt.Errorf("base port %d: must be from 1024 to %d", c.BasePort, 65535-20)
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return nil
}

// SuperviseTrial is one injected fault and what it cost. Durations are in
// seconds; nil where the phase does not apply or was not seen.
type SuperviseTrial struct {
	N        int    `json:"n"`
	Fault    string `json:"fault"`
	From     string `json:"from"` // the node that ran the service
	To       string `json:"to"`   // the node that runs it after
	OldEpoch int64  `json:"old_epoch"`
	NewEpoch int64  `json:"new_epoch"`
	Cause    string `json:"cause,omitempty"`  // as the new owner recorded it
	Fenced   string `json:"fenced,omitempty"` // the node its fence hook was run against
	// The failover record's phases (tandem supervise history -o json). For
	// kill-command, which leaves no record, from the supervisor's log and
	// the service's status: detection is the kill to the supervisor logging
	// the failure, start to it logging the new command's start, healthy to
	// the status turning healthy, total the kill to healthy.
	DetectionS *float64 `json:"detection_s,omitempty"`
	ElectionS  *float64 `json:"election_s,omitempty"`
	FencingS   *float64 `json:"fencing_s,omitempty"`
	StartS     *float64 `json:"start_s,omitempty"`
	HealthyS   *float64 `json:"healthy_s,omitempty"`
	VIPS       *float64 `json:"vip_s,omitempty"`
	TotalS     *float64 `json:"total_s,omitempty"`
	// FaultToHealthyS is the fault to the new run's healthy time as the
	// supervisor recorded it (same machine, same clock).
	FaultToHealthyS *float64 `json:"fault_to_healthy_s,omitempty"`
	// VIPToClientS is from the VIP appearing in the new owner's namespace
	// (a netlink event the bench receives) to the end of the first request
	// the new run answered.
	VIPToClientS *float64 `json:"vip_to_client_s,omitempty"`
	// OutageS is the client-visible outage: the end of the last request the
	// old run answered to the end of the first one the new run answered.
	// OldServedS is how long after the fault the old run still answered
	// (negative: its last answer came before the fault).
	OutageS    float64 `json:"outage_s"`
	OldServedS float64 `json:"old_served_after_fault_s"`
	// CommandDiedS is the fault to the old command's death, seen from
	// outside (pidfd).
	CommandDiedS *float64 `json:"command_died_s,omitempty"`
	// LeaseExpiredS is the fault to the watch receiving the deletion of the
	// old owner key (isolate, freeze).
	LeaseExpiredS *float64 `json:"lease_expired_s,omitempty"`
	// LeadS is the self-fence lead: the old owner key's deletion (its lease
	// expired) minus the old command's death; it must be positive (isolate,
	// and freeze under --fencing self). VIPLeadS is the same for the VIP's
	// removal from the old node.
	LeadS    *float64 `json:"self_fence_lead_s,omitempty"`
	VIPLeadS *float64 `json:"vip_drop_lead_s,omitempty"`
	// StaleAnswers counts requests the old run answered that started after
	// the new run had answered one.
	StaleAnswers int      `json:"stale_answers"`
	LoadAvg      float64  `json:"load_avg_1m"`
	Notes        []string `json:"notes,omitempty"`
}

// LeadSummary is the distribution of self-fence lead times, in seconds.
type LeadSummary struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Min float64 `json:"min"`
}

// SuperviseFault is every trial of one fault, and their distributions.
type SuperviseFault struct {
	Fault           string           `json:"fault"`
	Trials          int              `json:"trials"`
	DetectionS      Summary          `json:"detection_s"`
	ElectionS       Summary          `json:"election_s"`
	FencingS        Summary          `json:"fencing_s"`
	StartS          Summary          `json:"start_s"`
	HealthyS        Summary          `json:"healthy_s"`
	VIPS            Summary          `json:"vip_s"`
	TotalS          Summary          `json:"total_s"`
	FaultToHealthyS Summary          `json:"fault_to_healthy_s"`
	VIPToClientS    Summary          `json:"vip_to_client_s"`
	OutageS         Summary          `json:"outage_s"`
	LeadS           *LeadSummary     `json:"self_fence_lead_s,omitempty"`
	VIPLeadS        *LeadSummary     `json:"vip_drop_lead_s,omitempty"`
	Details         []SuperviseTrial `json:"trial_details"`
}

// SuperviseOverlap is two nodes seen running the command at once.
type SuperviseOverlap struct {
	NodeA string  `json:"node_a"`
	PIDA  int     `json:"pid_a"`
	NodeB string  `json:"node_b"`
	PIDB  int     `json:"pid_b"`
	ForS  float64 `json:"for_s"`
}

// SuperviseResult is what RunSupervise measured; it is also the JSON output.
type SuperviseResult struct {
	Nodes           int     `json:"nodes"`
	TrialsPerFault  int     `json:"trials_per_fault"`
	LeaseTTLS       float64 `json:"lease_ttl_s"`
	Fencing         string  `json:"fencing"`
	HealthIntervalS float64 `json:"health_interval_s"`
	ProbeEveryS     float64 `json:"client_probe_every_s"`
	// NumCPU is the machine's cores; LoadAvg the 1-minute load average
	// before and after the run; MachineCores how many cores were busy on
	// average during it (everything on the machine, not only the run).
	NumCPU       int                `json:"num_cpu"`
	LoadAvg      [2]float64         `json:"load_avg_1m"`
	MachineCores float64            `json:"machine_cores"`
	StartedAt    time.Time          `json:"started_at"`
	Faults       []SuperviseFault   `json:"faults"`
	Overlaps     []SuperviseOverlap `json:"overlaps"`
	// Violations are broken promises: two commands at once, the VIP not on
	// exactly one node after a trial, a self-fence lead not positive, the
	// old run answering after the new one, no takeover at all.
	Violations []string `json:"violations"`
	// Aborted says why the run stopped before its last trial, if it did.
	Aborted string `json:"aborted,omitempty"`
}

// Failed reports whether the run broke a promise or could not finish.
func (r *SuperviseResult) Failed() error {
	var errs []error
	for _, v := range r.Violations {
		errs = append(errs, errors.New(v))
	}
	if r.Aborted != "" {
		errs = append(errs, fmt.Errorf("stopped early: %s", r.Aborted))
	}
	return errors.Join(errs...)
}

// superviseBench is a run of RunSupervise: the world and what watches it.
type superviseBench struct {
	cfg     SuperviseConfig
	w       *world
	etcd    *etcdWatch
	client  *prober
	runners *runners
	vips    *vipWatch
	admin   *supervise.Admin
	res     *SuperviseResult
	// reported counts the overlaps already turned into violations.
	reported int
}

// RunSupervise builds a small world of network namespaces, one per node,
// with an etcd, a `tandem supervise` on every node supervising a small HTTP
// service with a VIP, a fence hook (--fencing strict) and a health check,
// and a client in the root namespace opening a new connection to the VIP
// every few milliseconds. Then, cfg.Trials times for each fault, one trial
// at a time with recovery between, it injects the fault into the node that
// runs the service and measures: the phases of the takeover as the new
// owner recorded them, the VIP to the first answer, the outage the client
// saw, and, where the old node must fence itself, how long before its lease
// expired its command died. It checks throughout that no two nodes ran the
// command at once, and after each trial that the VIP is on exactly one
// node. The result says; an error means the run could not be made. Every
// namespace, cgroup and process is removed before it returns, also when ctx
// ends (SIGINT) or the run fails.
func RunSupervise(ctx context.Context, cfg SuperviseConfig) (res *SuperviseResult, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := netns.Available(); err != nil {
		return nil, fmt.Errorf("the supervise bench needs root, network namespaces and cgroup v2: %w", err)
	}
	dir := cfg.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "tandem-bench-supervise-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	res = &SuperviseResult{Nodes: cfg.Nodes, TrialsPerFault: cfg.Trials, LeaseTTLS: cfg.LeaseTTL.Seconds(), Fencing: cfg.Fencing,
		HealthIntervalS: cfg.HealthInterval.Seconds(), ProbeEveryS: cfg.ProbeEvery.Seconds(), NumCPU: runtime.NumCPU(),
		LoadAvg: [2]float64{LoadAvg(), -1}, StartedAt: time.Now().UTC(), Overlaps: []SuperviseOverlap{}, Violations: []string{}}
	fmt.Fprintf(cfg.Out, "building %d nodes (network namespaces, cgroups), etcd, a supervisor on each; %s fencing, lease TTL %s; logs in %s\n",
		cfg.Nodes, cfg.Fencing, cfg.LeaseTTL, dir)
	w, err := newWorld(ctx, cfg, dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := w.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up the supervise bench: %w", cerr))
		}
	}()
	wctx, stopWatching := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopWatching(); wg.Wait() }()

	b := &superviseBench{cfg: cfg, w: w, res: res}
	b.etcd = newEtcdWatch(w.cli, "bench")
	b.admin, err = supervise.NewAdmin(w.cli, "bench")
	if err != nil {
		return nil, err
	}
	paths := map[string]string{}
	namespaces := map[string]string{}
	for _, n := range w.nodes {
		paths[n] = filepath.Join(w.serviceCgroup(n), "cgroup.procs")
		namespaces[n] = w.net.Namespace(n)
	}
	b.runners = newRunners(2*time.Millisecond, paths)
	if b.vips, err = newVIPWatch(wctx, w.vip.Addr(), namespaces); err != nil {
		return nil, err
	}
	defer b.vips.close()
	b.client = newProber(netip.AddrPortFrom(w.vip.Addr(), uint16(w.servicePort())), cfg.ProbeEvery)
	for _, run := range []func(context.Context){b.etcd.run, b.runners.run, b.client.run} {
		wg.Add(1)
		go func() { defer wg.Done(); run(wctx) }()
	}
	for _, n := range w.nodes {
		if err := w.startSupervisor(n); err != nil {
			return nil, err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	_, err = b.settle(rctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("the service did not start: %w (logs in %s)", err, dir)
	}
	machine0, _ := MachineCPU()
	started := time.Now()
	fmt.Fprintf(cfg.Out, "service healthy behind VIP %s; client: a new connection every %s; %d trials of %s\n",
		w.vip.Addr(), cfg.ProbeEvery, cfg.Trials, strings.Join(cfg.Faults, ", "))

	for _, fault := range cfg.Faults {
		fr := SuperviseFault{Fault: fault}
		for n := 1; n <= cfg.Trials && res.Aborted == ""; n++ {
			tr, err := b.trial(ctx, fault, n)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if tr != nil {
				fr.Details = append(fr.Details, *tr)
				fmt.Fprintln(cfg.Out, tr.line())
			}
			if err != nil {
				res.Aborted = fmt.Sprintf("%s trial %d: %v (logs in %s)", fault, n, err, dir)
				fmt.Fprintf(cfg.Out, "%s trial %d: %v\n", fault, n, err)
				break
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(cfg.Quiet):
			}
		}
		fr.summarize()
		res.Faults = append(res.Faults, fr)
		if res.Aborted != "" {
			break
		}
	}
	b.checkOverlaps()
	if m1, err := MachineCPU(); err == nil && machine0 > 0 {
		res.MachineCores = (m1 - machine0).Seconds() / time.Since(started).Seconds()
	}
	res.LoadAvg[1] = LoadAvg()
	res.Print(cfg.Out)
	return res, nil
}

// settle waits until the service runs healthy on one node, every
// supervisor is registered, the VIP is on exactly the owner's node and the
// client got an answer from the owner's run. It returns the owner's state;
// its error says what was still wrong.
func (b *superviseBench) settle(ctx context.Context) (svcState, error) {
	var holders []string
	var herr error
	ready := func(st svcState) bool {
		if st.owner == nil || st.status == nil || st.status.Epoch != st.owner.Epoch || st.status.State != supervise.StateHealthy ||
			len(st.nodes) != len(b.w.nodes) {
			return false
		}
		holders, herr = b.vips.holders()
		return herr == nil && len(holders) == 1 && holders[0] == st.owner.ID
	}
	for {
		from := time.Now()
		if err := b.etcd.wait(ctx, ready); err != nil {
			return svcState{}, b.notReady(holders, herr)
		}
		st := b.etcd.state()
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := b.client.waitAnswer(actx, from, func(a answer) bool { return a.ok && a.epoch == st.owner.Epoch })
		cancel()
		if ctx.Err() != nil {
			return svcState{}, b.notReady(holders, herr)
		}
		if err == nil && ready(b.etcd.state()) && b.etcd.state().owner.Epoch == st.owner.Epoch {
			return st, nil
		}
	}
}

// notReady says what settle was still waiting for.
func (b *superviseBench) notReady(holders []string, herr error) error {
	st := b.etcd.state()
	var what []string
	switch {
	case st.owner == nil:
		what = append(what, "no owner")
	case st.status == nil || st.status.Epoch != st.owner.Epoch:
		what = append(what, fmt.Sprintf("owner %s (epoch %d) has reported no state", st.owner.ID, st.owner.Epoch))
	case st.status.State != supervise.StateHealthy:
		what = append(what, fmt.Sprintf("owner %s is %s (%s)", st.owner.ID, st.status.State, st.status.Reason))
	}
	if len(st.nodes) != len(b.w.nodes) {
		what = append(what, fmt.Sprintf("%d of %d supervisors registered", len(st.nodes), len(b.w.nodes)))
	}
	if herr != nil {
		what = append(what, herr.Error())
	} else if len(holders) != 1 || st.owner == nil || holders[0] != st.owner.ID {
		what = append(what, fmt.Sprintf("VIP held by %v", holders))
	}
	if len(what) == 0 {
		what = append(what, "no answer from the owner's run through the VIP")
	}
	return errors.New(strings.Join(what, "; "))
}

// trial injects one fault into the node that runs the service, undoes it
// after the takeover, and measures. An error means the world did not come
// back (the run stops); broken promises go to the result's violations.
func (b *superviseBench) trial(ctx context.Context, fault string, n int) (*SuperviseTrial, error) {
	w := b.w
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	st, err := b.settle(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("not ready: %w", err)
	}
	owner, epoch := st.owner.ID, st.owner.Epoch
	pids := w.servicePIDs(owner)
	if len(pids) != 1 {
		return nil, fmt.Errorf("node %s runs %d processes in its command's cgroup, want 1: %v", owner, len(pids), pids)
	}
	oldPID, restarts := pids[0], st.status.Restarts
	supLog := w.supervisor(owner).logPath
	logOff := logSize(supLog)
	tr := &SuperviseTrial{N: n, Fault: fault, From: owner, OldEpoch: epoch, LoadAvg: LoadAvg()}
	b.client.forget(time.Now().Add(-10 * time.Second))
	death := watchDeath(oldPID)
	defer death.close()

	// taken says the fault has been got over: the command restarted in
	// place (kill-command) or another run healthy under a newer epoch.
	taken := func(st svcState) bool {
		if st.owner == nil || st.status == nil || st.status.Epoch != st.owner.Epoch || st.status.State != supervise.StateHealthy {
			return false
		}
		if st.owner.Epoch != epoch {
			return true
		}
		return fault == FaultKillCommand && st.status.Restarts > restarts
	}
	hold := 5 * b.cfg.LeaseTTL // the longest a node stays frozen or cut off without a takeover
	t0 := time.Now()
	var undo func() error
	switch fault {
	case FaultKillCommand:
		err = syscall.Kill(oldPID, syscall.SIGKILL)
	case FaultKillSupervisor:
		w.supervisor(owner).kill()
		undo = func() error { return w.startSupervisor(owner) }
	case FaultFreeze:
		err = w.freeze(ctx, owner, true)
		undo = func() error { return w.freeze(context.WithoutCancel(ctx), owner, false) }
	case FaultIsolate:
		err = w.net.SetControl(owner, false)
		undo = func() error { return w.net.SetControl(owner, true) }
	}
	if err != nil {
		return nil, fmt.Errorf("inject %s into %s: %w", fault, owner, err)
	}
	tctx, cancel := context.WithTimeout(ctx, hold)
	err = b.etcd.wait(tctx, taken)
	cancel()
	if err != nil && fault != FaultKillCommand && fault != FaultKillSupervisor {
		tr.Notes = append(tr.Notes, fmt.Sprintf("no takeover while the fault lasted (%s): undone first", hold))
	}
	if undo != nil {
		if uerr := undo(); uerr != nil {
			return tr, fmt.Errorf("undo %s on %s: %w", fault, owner, uerr)
		}
	}
	if err != nil {
		tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err = b.etcd.wait(tctx, taken)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				b.violate("%s trial %d: no healthy run of the service within 60s of undoing the fault", fault, n)
			}
			return tr, fmt.Errorf("no takeover")
		}
	}
	st = b.etcd.state()
	tr.To, tr.NewEpoch = st.owner.ID, st.owner.Epoch
	healthyAt := st.status.Since

	if fault == FaultKillCommand && tr.NewEpoch == epoch {
		b.restartPhases(tr, supLog, logOff, t0, healthyAt)
	} else {
		if err := b.recordPhases(ctx, tr); err != nil {
			tr.Notes = append(tr.Notes, err.Error())
		}
	}
	if !healthyAt.IsZero() {
		tr.FaultToHealthyS = secsPtr(healthyAt.Sub(t0))
	}

	// The client's view: the old run is the old pid at the old epoch, the
	// new run the pid now in the new owner's cgroup (after a restart in
	// place, a pid of an earlier trial may still answer in the look-back).
	isOld := func(a answer) bool { return a.epoch == epoch && a.pid == oldPID }
	isNew := func(a answer) bool { return a.epoch == tr.NewEpoch && a.pid != oldPID && a.start.After(t0) }
	if pids := w.servicePIDs(tr.To); len(pids) == 1 {
		newPID := pids[0]
		isNew = func(a answer) bool { return a.epoch == tr.NewEpoch && a.pid == newPID }
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_ = b.client.waitAnswer(actx, t0, isNew)
	cancel()
	o, ok := clientOutage(b.client.since(t0.Add(-5*time.Second)), isOld, isNew)
	if ok {
		tr.OutageS = o.FirstNew.Sub(o.LastOld).Seconds()
		if o.LastOld.IsZero() {
			tr.OutageS = o.FirstNew.Sub(t0).Seconds()
			tr.Notes = append(tr.Notes, "no answer from the old run in the 5 s before the fault: outage counted from the fault")
		}
		tr.OldServedS = o.LastOld.Sub(t0).Seconds()
		tr.StaleAnswers = o.Stale
		if o.Stale > 0 {
			b.violate("%s trial %d: the old run (%s, epoch %d) answered %d requests that started after the new run had answered",
				fault, n, owner, epoch, o.Stale)
		}
		if tr.To != owner || tr.NewEpoch != epoch {
			if at, ok := b.vips.lastChange(tr.To, true, t0); ok && !at.After(o.FirstNew) {
				tr.VIPToClientS = secsPtr(o.FirstNew.Sub(at))
			}
		}
	} else {
		tr.Notes = append(tr.Notes, "the client got no answer from the new run")
	}

	// The old command's death, and the lease's expiry, from outside.
	if at, ok := death.when(); ok {
		tr.CommandDiedS = secsPtr(at.Sub(t0))
		if fault == FaultIsolate || fault == FaultFreeze {
			st := b.etcd.state()
			if exp, ok := st.deletedAt(epoch); ok {
				tr.LeaseExpiredS = secsPtr(exp.Sub(t0))
				if fault == FaultIsolate || b.cfg.Fencing == FencingSelf {
					lead := exp.Sub(at)
					tr.LeadS = secsPtr(lead)
					if lead <= 0 {
						b.violate("%s trial %d: self-fence lead %.1f ms: the command on %s died after its lease expired",
							fault, n, lead.Seconds()*1000, owner)
					}
					if gone, ok := b.vips.firstChange(owner, false, t0); ok {
						tr.VIPLeadS = secsPtr(exp.Sub(gone))
					}
				}
			}
		}
	} else {
		tr.Notes = append(tr.Notes, fmt.Sprintf("the old command (pid %d) was not seen to die", oldPID))
	}

	// Recovery, and what must hold after it.
	sctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	_, err = b.settle(sctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			b.violate("%s trial %d: not settled within 60s after the trial: %v", fault, n, err)
		}
		return tr, fmt.Errorf("not settled after the trial: %w", err)
	}
	b.checkOverlaps()
	return tr, nil
}

// recordPhases copies the new owner's failover record into tr.
func (b *superviseBench) recordPhases(ctx context.Context, tr *SuperviseTrial) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		evs, err := b.admin.History(hctx, superviseService)
		cancel()
		if err == nil {
			for _, ev := range evs {
				if ev.Epoch == tr.NewEpoch {
					tr.Cause, tr.Fenced = ev.Cause, ev.Fenced
					tr.DetectionS, tr.ElectionS, tr.FencingS, tr.StartS = ev.DetectionS, ev.ElectionS, ev.FencingS, ev.StartS
					tr.HealthyS, tr.VIPS, tr.TotalS = ev.HealthyS, ev.VIPS, ev.TotalS
					return nil
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("no failover record for epoch %d", tr.NewEpoch)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// restartPhases reads a restart in place from the supervisor's log (the
// failure seen, the new command started) and its status (healthy).
func (b *superviseBench) restartPhases(tr *SuperviseTrial, logPath string, offset int64, t0, healthyAt time.Time) {
	tr.Cause = "restart in place"
	lines, err := logFrom(logPath, offset)
	if err != nil {
		tr.Notes = append(tr.Notes, "supervisor log: "+err.Error())
		return
	}
	failed, ok1 := lines[msgRestarting]
	started, ok2 := lines[msgStarted]
	if ok1 {
		tr.DetectionS = secsPtr(failed.Time.Sub(t0))
	}
	if ok1 && ok2 {
		tr.StartS = secsPtr(started.Time.Sub(failed.Time))
	}
	if ok2 && !healthyAt.IsZero() {
		tr.HealthyS = secsPtr(healthyAt.Sub(started.Time))
	}
	if !healthyAt.IsZero() {
		tr.TotalS = secsPtr(healthyAt.Sub(t0))
	}
	if !ok1 || !ok2 {
		tr.Notes = append(tr.Notes, "the restart is not in the supervisor's log")
	}
}

// checkOverlaps turns every new overlap of two nodes' commands into a
// violation.
func (b *superviseBench) checkOverlaps() {
	ov := overlaps(b.runners.spans())
	for _, o := range ov[min(b.reported, len(ov)):] {
		b.res.Overlaps = append(b.res.Overlaps, SuperviseOverlap{NodeA: o.A.Node, PIDA: o.A.PID, NodeB: o.B.Node, PIDB: o.B.PID, ForS: o.For.Seconds()})
		b.violate("two commands at once: %s (pid %d) and %s (pid %d) for at least %.1f ms", o.A.Node, o.A.PID, o.B.Node, o.B.PID,
			o.For.Seconds()*1000)
	}
	b.reported = max(b.reported, len(ov))
}

func (b *superviseBench) violate(format string, args ...any) {
	v := fmt.Sprintf(format, args...)
	b.res.Violations = append(b.res.Violations, v)
	fmt.Fprintln(b.cfg.Out, "VIOLATION:", v)
}

func secsPtr(d time.Duration) *float64 {
	v := d.Seconds()
	return &v
}

// summarize fills in the distributions from the trials.
func (f *SuperviseFault) summarize() {
	f.Trials = len(f.Details)
	var det, el, fen, st, hl, vip, tot, f2h, v2c, out, lead, vlead []time.Duration
	for _, t := range f.Details {
		for _, x := range []struct {
			p   *float64
			out *[]time.Duration
		}{{t.DetectionS, &det}, {t.ElectionS, &el}, {t.FencingS, &fen}, {t.StartS, &st}, {t.HealthyS, &hl},
			{t.VIPS, &vip}, {t.TotalS, &tot}, {t.FaultToHealthyS, &f2h}, {t.VIPToClientS, &v2c}, {t.LeadS, &lead}, {t.VIPLeadS, &vlead}} {
			if x.p != nil {
				*x.out = append(*x.out, secsDur(*x.p))
			}
		}
		out = append(out, secsDur(t.OutageS))
	}
	f.DetectionS, f.ElectionS, f.FencingS, f.StartS = Summarize(det), Summarize(el), Summarize(fen), Summarize(st)
	f.HealthyS, f.VIPS, f.TotalS, f.FaultToHealthyS = Summarize(hl), Summarize(vip), Summarize(tot), Summarize(f2h)
	f.VIPToClientS, f.OutageS = Summarize(v2c), Summarize(out)
	f.LeadS, f.VIPLeadS = summarizeLead(lead), summarizeLead(vlead)
}

// summarizeLead returns p50, p99 and the minimum of ds, or nil if empty.
func summarizeLead(ds []time.Duration) *LeadSummary {
	if len(ds) == 0 {
		return nil
	}
	s := Summarize(ds)
	return &LeadSummary{N: s.N, P50: s.P50, P99: s.P99, Min: slices.Min(ds).Seconds()}
}

// line is the trial's progress line.
func (t *SuperviseTrial) line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d: %s -> %s (epoch %d -> %d", t.Fault, t.N, t.From, orNone(t.To), t.OldEpoch, t.NewEpoch)
	if t.Cause != "" {
		fmt.Fprintf(&b, ", %s", t.Cause)
	}
	if t.Fenced != "" {
		fmt.Fprintf(&b, ", fenced %s", t.Fenced)
	}
	fmt.Fprintf(&b, "): detection %s, election %s, fencing %s, start %s, healthy %s, vip %s; vip->client %s; outage %.0f ms",
		msOf(t.DetectionS), msOf(t.ElectionS), msOf(t.FencingS), msOf(t.StartS), msOf(t.HealthyS), msOf(t.VIPS),
		msOf(t.VIPToClientS), t.OutageS*1000)
	if t.LeadS != nil {
		fmt.Fprintf(&b, "; self-fence lead %s", msOf(t.LeadS))
	}
	for _, n := range t.Notes {
		fmt.Fprintf(&b, "; %s", n)
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// Print writes the result tables: one per fault, then the checks.
func (r *SuperviseResult) Print(w io.Writer) {
	fmt.Fprintf(w, "\n%d nodes, lease TTL %gs, --fencing %s, health check every %s, client every %s; %d cores, load average %.2f before, %.2f after, %.2f cores busy on average\n",
		r.Nodes, r.LeaseTTLS, r.Fencing, secsDur(r.HealthIntervalS), secsDur(r.ProbeEveryS), r.NumCPU, r.LoadAvg[0], r.LoadAvg[1], r.MachineCores)
	for _, f := range r.Faults {
		fmt.Fprintf(w, "\n%s x %d\n", f.Fault, f.Trials)
		rows := []string{
			"detection\t" + f.DetectionS.Row(),
			"election\t" + f.ElectionS.Row(),
			"fencing\t" + f.FencingS.Row(),
			"start\t" + f.StartS.Row(),
			"start to healthy\t" + f.HealthyS.Row(),
			"vip\t" + f.VIPS.Row(),
			"total (record)\t" + f.TotalS.Row(),
			"fault to healthy\t" + f.FaultToHealthyS.Row(),
			"vip to first answer\t" + f.VIPToClientS.Row(),
			"client outage\t" + f.OutageS.Row(),
		}
		Table(w, "PHASE (ms)\tP50\tP90\tP99\tMAX", rows...)
		if f.LeadS != nil {
			fmt.Fprintf(w, "self-fence lead (lease expiry - command death): p50 %.1f ms, p99 %.1f ms, min %.1f ms (%d trials)\n",
				f.LeadS.P50*1000, f.LeadS.P99*1000, f.LeadS.Min*1000, f.LeadS.N)
		}
		if f.VIPLeadS != nil {
			fmt.Fprintf(w, "VIP drop lead (lease expiry - VIP removed):     p50 %.1f ms, p99 %.1f ms, min %.1f ms\n",
				f.VIPLeadS.P50*1000, f.VIPLeadS.P99*1000, f.VIPLeadS.Min*1000)
		}
	}
	fmt.Fprintf(w, "\ntwo nodes running the command at once: %d; violations: %d\n", len(r.Overlaps), len(r.Violations))
	for _, v := range r.Violations {
		fmt.Fprintf(w, "  %s\n", v)
	}
	if r.Aborted != "" {
		fmt.Fprintf(w, "stopped early: %s\n", r.Aborted)
	}
}
