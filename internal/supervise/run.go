package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/supervise/health"
	"github.com/tandemhq/tandem/internal/supervise/hook"
	"github.com/tandemhq/tandem/internal/supervise/proc"
	"github.com/tandemhq/tandem/internal/supervise/vip"
)

// run is one term of one service on this node: the takeover, the command's
// life with its restarts in place, and the way out.
type run struct {
	s     *Supervisor
	svc   Service
	fence election.Fence
	wonAt time.Time
	cause string // set when the term began by a hand-off
	gone  gone
	log   *slog.Logger

	stopOnce sync.Once
	stopCh   chan stopRequest
	finished chan struct{}
	// statusMu orders the status writes (each in a goroutine of its own):
	// each reads the state and commits it under it, so the last one
	// committed carries the latest state.
	statusMu sync.Mutex

	mu       sync.Mutex
	state    string
	pid      int
	restarts int
	since    time.Time
	reason   string
	ev       Event
	vip      *vip.VIP
	cg       *proc.Cgroup
	p        *proc.Process
	out      *os.File // the command's log, open for the whole term
	failures []time.Time
	prev     *RunState
}

// stopRequest asks a run to give its service up on purpose.
type stopRequest struct {
	cause   string
	reason  string
	to      string // hand the service to this node (move)
	moveRev int64
	ban     time.Duration // ban this node from the service for this long
}

func (r *run) requestStop(req stopRequest) {
	r.stopOnce.Do(func() { r.stopCh <- req })
}

// runTerm is the work of every term (registered with the HA core).
func (s *Supervisor) runTerm(t *ha.Term) {
	s.mu.Lock()
	r := s.runs[t.Epoch()]
	s.mu.Unlock()
	if r == nil {
		return
	}
	r.log = s.log.With("service", r.svc.Name, "epoch", t.Epoch())
	defer func() {
		if r.out != nil {
			r.out.Close()
		}
		s.mu.Lock()
		delete(s.runs, t.Epoch())
		s.mu.Unlock()
		s.met.setState(r.svc.Name, "")
		close(r.finished)
		s.poke()
	}()
	r.serve(t)
}

func (r *run) setState(state, reason string) {
	r.mu.Lock()
	r.state, r.reason, r.since = state, reason, time.Now()
	r.mu.Unlock()
	r.s.met.setState(r.svc.Name, state)
	go r.writeStatus()
	if r.svc.Hooks.Notify != "" {
		h, _ := hook.Parse(r.svc.Hooks.Notify)
		h.Timeout = r.svc.HookTimeout.D()
		env := r.env("notify")
		env["TANDEM_STATE"] = state
		env["TANDEM_REASON"] = reason
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
			defer cancel()
			w := r.hookLog()
			if c, ok := w.(io.Closer); ok {
				defer c.Close()
			}
			if err := hook.Run(ctx, h, env, w); err != nil {
				r.log.Warn("notify hook failed", "err", err)
			}
		}()
	}
}

// writeStatus publishes the run's state, fenced, bound to the lease.
func (r *run) writeStatus() {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	r.mu.Lock()
	st := RunStatus{Node: r.s.cfg.Node, Epoch: r.fence.Rev, State: r.state, PID: r.pid, Restarts: r.restarts,
		Since: r.since.UTC(), Reason: r.reason}
	r.mu.Unlock()
	r.s.mu.Lock()
	l := r.s.lease
	r.s.mu.Unlock()
	if l == nil {
		return
	}
	val, _ := json.Marshal(st)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = r.s.cli.Txn(ctx).If(r.fence.IsOwner()).
		Then(clientv3.OpPut(r.s.keys.SuperviseStatus(r.svc.Name), string(val), clientv3.WithLease(l.id))).Commit()
}

// env is what every hook of this run gets in its environment; hook.Run adds
// TANDEM_DEADLINE from each hook's own timeout.
func (r *run) env(role string) hook.Env {
	env := hook.Env{
		"TANDEM_SERVICE": r.svc.Name,
		"TANDEM_NODE":    r.s.cfg.Node,
		"TANDEM_EPOCH":   strconv.FormatInt(r.fence.Rev, 10),
		"TANDEM_ROLE":    role,
		"TANDEM_VIP":     r.svc.VIP,
		"TANDEM_CAUSE":   r.ev.Cause,
		"TANDEM_CLUSTER": r.s.cfg.Cluster,
	}
	if r.prev != nil {
		env["TANDEM_PREV_NODE"] = r.prev.Node
		env["TANDEM_PREV_EPOCH"] = strconv.FormatInt(r.prev.Epoch, 10)
	}
	return env
}

func (r *run) hookLog() io.Writer {
	if r.s.cfg.LogDir == "" {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(r.s.cfg.LogDir, r.svc.Name+".hooks.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil
	}
	return f
}

// runHook runs one of the service's hooks (if set) with a deadline.
func (r *run) runHook(ctx context.Context, kind, text string) error {
	if text == "" {
		return nil
	}
	h, _ := hook.Parse(text)
	h.Timeout = r.svc.HookTimeout.D()
	env := r.env(kind)
	w := r.hookLog()
	if c, ok := w.(io.Closer); ok {
		defer c.Close()
	}
	return hook.Run(ctx, h, env, w)
}

// serve runs the term: take over, run, and leave.
func (r *run) serve(t *ha.Term) {
	ctx := t.Context()
	r.ev = r.s.newEvent(r)
	req, ok := r.takeover(t)
	if !ok {
		r.leave(t, req)
		return
	}
	req = r.supervise(t)
	r.leave(t, req)
	_ = ctx
}

// takeover fences the last node if it must, then starts the service. It
// returns false with the reason to leave if the service cannot start here.
func (r *run) takeover(t *ha.Term) (stopRequest, bool) {
	ctx := t.Context()
	s := r.s
	prev, err := r.readState(ctx)
	if err != nil {
		return stopRequest{cause: CauseFenceFailed, reason: err.Error()}, false
	}
	r.prev = prev
	fenceStart := time.Now()
	if prev != nil && !prev.Clean {
		r.setState(StateFencing, "last run by "+prev.Node+" at epoch "+strconv.FormatInt(prev.Epoch, 10)+" did not stop cleanly")
		if err := r.fencePrev(ctx, prev); err != nil {
			r.log.Error("could not fence the last node; giving the service up for another node to try", "fenced", prev.Node, "err", err)
			s.met.fenceFailures.WithLabelValues(r.svc.Name).Inc()
			return stopRequest{cause: CauseFenceFailed, reason: err.Error()}, false
		}
	}
	if prev != nil && !prev.Clean || r.ev.Fenced != "" {
		r.ev.FencingS = secs(time.Since(fenceStart))
	} else {
		r.ev.FencingS = secs(0)
	}
	startAt := time.Now()
	r.setState(StateStarting, "")
	if r.svc.EpochFile != "" {
		if err := writeEpochFile(r.svc.EpochFile, r.fence.Rev); err != nil {
			return stopRequest{cause: CauseStartFailed, reason: err.Error(), ban: r.svc.Ban.D()}, false
		}
	}
	if r.svc.VIP != "" {
		vipAt := time.Now()
		v, _ := vip.Parse(r.svc.VIP)
		if err := r.addVIP(ctx, v); err != nil {
			r.log.Error("cannot take the VIP", "vip", r.svc.VIP, "err", err)
			return stopRequest{cause: CauseVIPInUse, reason: err.Error()}, false
		}
		r.vip = &v
		r.ev.VIPS = secs(time.Since(vipAt))
	}
	if err := r.runHook(ctx, "pre-start", r.svc.Hooks.PreStart); err != nil {
		return stopRequest{cause: CauseStartFailed, reason: err.Error(), ban: r.svc.Ban.D()}, false
	}
	// From here the command may run: record it before it does, so a crash
	// of this node makes the next owner fence it.
	if err := r.writeState(ctx, RunState{Node: s.cfg.Node, Addr: s.cfg.Addr, Epoch: r.fence.Rev, At: time.Now().UTC()}); err != nil {
		return stopRequest{cause: tandem.CauseFenced, reason: err.Error()}, false
	}
	if err := r.start(); err != nil {
		r.log.Error("the command cannot start; banning this node from the service", "err", err)
		return stopRequest{cause: CauseStartFailed, reason: err.Error(), ban: r.svc.Ban.D()}, false
	}
	r.ev.StartS = secs(time.Since(startAt))
	if err := r.runHook(ctx, "post-start", r.svc.Hooks.PostStart); err != nil {
		r.log.Warn("post-start hook failed", "err", err)
	}
	return stopRequest{}, true
}

// readState reads who last ran the command. Only the owner writes it, and
// this node owns the service now, so one read is exact.
func (r *run) readState(ctx context.Context) (*RunState, error) {
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		gctx, cancel := context.WithTimeout(ctx, r.s.cfg.LeaseTTL)
		resp, err := r.s.cli.Get(gctx, r.s.keys.SuperviseState(r.svc.Name))
		cancel()
		if err == nil {
			if len(resp.Kvs) == 0 {
				return nil, nil
			}
			var st RunState
			if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
				return nil, fmt.Errorf("the service's run state in etcd is corrupt: %w", err)
			}
			return &st, nil
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(wait):
		}
	}
}

// writeState records the run state, fenced by this term.
func (r *run) writeState(ctx context.Context, st RunState) error {
	val, _ := json.Marshal(st)
	wctx, cancel := context.WithTimeout(ctx, r.s.cfg.LeaseTTL)
	defer cancel()
	resp, err := r.s.cli.Txn(wctx).If(r.fence.IsOwner()).Then(clientv3.OpPut(r.s.keys.SuperviseState(r.svc.Name), string(val))).Commit()
	if err != nil {
		return fmt.Errorf("record the run state: %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("record the run state: %w", tandem.ErrFenced)
	}
	return nil
}

// fencePrev makes sure the last node's command is not running. The same
// node's leftovers are killed through the cgroup; another node is fenced by
// the hooks under strict fencing, and trusted to have fenced itself under
// self fencing.
func (r *run) fencePrev(ctx context.Context, prev *RunState) error {
	if prev.Node == r.s.cfg.Node && r.s.cfg.CgroupParent == NoCgroup {
		r.log.Warn("cannot check what this node's last run left without a cgroup (--cgroup-parent none)")
	} else if prev.Node == r.s.cfg.Node {
		cg, err := proc.OpenCgroup(r.s.cgroupPath(r.svc.Name))
		if err == nil {
			if err := cg.Kill(); err != nil {
				return fmt.Errorf("kill what this node's last run left: %w", err)
			}
			kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = cg.WaitEmpty(kctx)
			cancel()
			if err != nil {
				return fmt.Errorf("kill what this node's last run left: %w", err)
			}
		}
	} else if r.svc.Fencing == FencingSelf {
		r.log.Info("trusting the last node to have fenced itself (--fencing self)", "prev", prev.Node, "prev_epoch", prev.Epoch)
		return r.writeState(ctx, RunState{Node: prev.Node, Addr: prev.Addr, Epoch: prev.Epoch, Clean: true, At: time.Now().UTC(), FencedBy: "self"})
	} else {
		env := r.env("fence")
		env["TANDEM_FENCE_NODE"] = prev.Node
		env["TANDEM_FENCE_ADDR"] = prev.Addr
		env["TANDEM_FENCE_EPOCH"] = strconv.FormatInt(prev.Epoch, 10)
		w := r.hookLog()
		if c, ok := w.(io.Closer); ok {
			defer c.Close()
		}
		var err error
		for attempt, wait := 1, 500*time.Millisecond; attempt <= 3; attempt, wait = attempt+1, 2*wait {
			var level int
			level, err = hook.Fence(ctx, r.svc.fenceLevels(), env, w)
			if err == nil {
				r.ev.Fenced, r.ev.FenceLevel = prev.Node, level+1
				r.log.Info("fenced the last node", "fenced", prev.Node, "level", level+1)
				break
			}
			r.log.Error("fencing failed", "fenced", prev.Node, "attempt", attempt, "err", err)
			if attempt == 3 {
				break // no backoff after the last round: the next owner tries
			}
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-time.After(wait):
			}
		}
		if err != nil {
			return err
		}
	}
	r.ev.Fenced = prev.Node
	return r.writeState(ctx, RunState{Node: prev.Node, Addr: prev.Addr, Epoch: prev.Epoch, Clean: true, At: time.Now().UTC(), FencedBy: r.s.cfg.Node})
}

// addVIP probes that nobody answers for the VIP (for up to a second, in
// case the last holder is dropping it), adds it and announces it.
func (r *run) addVIP(ctx context.Context, v vip.VIP) error {
	var lastErr error
	for i := 0; i < 4; i++ {
		held, err := v.Held()
		if err == nil && held {
			lastErr = nil
			break // already ours (left by a crashed run of this node)
		}
		inUse, mac, err := v.InUse(ctx, 250*time.Millisecond)
		if err != nil {
			return fmt.Errorf("duplicate-address probe of %s: %w", v, err)
		}
		if !inUse {
			lastErr = nil
			break
		}
		lastErr = fmt.Errorf("VIP %s is in use by %s", v, mac)
	}
	if lastErr != nil {
		return lastErr
	}
	if err := v.Add(); err != nil {
		return err
	}
	go func() {
		actx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := v.Announce(actx, 3, 100*time.Millisecond); err != nil {
			r.log.Warn("gratuitous ARP failed", "vip", v.String(), "err", err)
		}
	}()
	return nil
}

// start starts the command in the service's cgroup.
func (r *run) start() error {
	if r.s.cfg.LogDir != "" && r.out == nil {
		f, err := r.s.openLog(r.svc.Name)
		if err != nil {
			return err
		}
		r.out = f
	}
	var out io.Writer
	if r.out != nil {
		out = r.out
	}
	p, cg, err := r.s.startCommand(r.svc, out, "TANDEM_EPOCH="+strconv.FormatInt(r.fence.Rev, 10))
	r.mu.Lock()
	r.cg = cg // even if the command failed to start: the way out checks it is empty
	r.mu.Unlock()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.p, r.pid = p, p.Pid()
	r.mu.Unlock()
	r.log.Info("started the command", "pid", p.Pid())
	return nil
}

// openLog opens svc's log in LogDir for appending.
func (s *Supervisor) openLog(svc string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(s.cfg.LogDir, svc+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open the service's log: %w", err)
	}
	return f, nil
}

// checks are svc's health checks for this node: ${TANDEM_NODE},
// ${TANDEM_NODE_ADDR} and ${TANDEM_SERVICE} in their targets replaced (see
// health.Check.Expand).
func (s *Supervisor) checks(svc Service) []health.Check {
	vars := map[string]string{"TANDEM_NODE": s.cfg.Node, "TANDEM_NODE_ADDR": s.cfg.Addr, "TANDEM_SERVICE": svc.Name}
	out := make([]health.Check, len(svc.Health))
	for i, c := range svc.Health {
		out[i] = c.Expand(vars)
	}
	return out
}

// startCommand starts svc's command in a fresh cgroup of its own (nil with
// NoCgroup: a process group; returned even when the command fails to
// start), its output to out (nil discards it), with
// TANDEM_SERVICE, TANDEM_NODE, TANDEM_NODE_ADDR and env added to this
// process's environment and the service's.
func (s *Supervisor) startCommand(svc Service, out io.Writer, env ...string) (*proc.Process, *proc.Cgroup, error) {
	var cg *proc.Cgroup
	if s.cfg.CgroupParent != NoCgroup {
		// A fresh cgroup for every start: on some kernels (seen on 6.18), once
		// a cgroup has been killed through cgroup.kill (self-fencing, a fence
		// hook, a stop past its timeout), every later clone into it from a
		// process outside it is killed at birth, so the command could never
		// start there again. Removing the empty cgroup and making it anew
		// clears that; a cgroup that is not empty stays, and NewCgroup says so.
		if old, err := proc.OpenCgroup(s.cgroupPath(svc.Name)); err == nil {
			_ = old.Remove()
		}
		var err error
		if cg, err = proc.NewCgroup(s.cgroupPath(svc.Name)); err != nil {
			return nil, nil, err
		}
	}
	all := os.Environ()
	for k, v := range svc.Env {
		all = append(all, k+"="+v)
	}
	all = append(all, "TANDEM_SERVICE="+svc.Name, "TANDEM_NODE="+s.cfg.Node, "TANDEM_NODE_ADDR="+s.cfg.Addr)
	all = append(all, env...)
	p, err := proc.Start(proc.Spec{Args: svc.Command, Dir: svc.Dir, Env: all, Stdout: out, Stderr: out, Cgroup: cg,
		StopSignal: syscall.SIGTERM, StopMainOnly: svc.KillMode == KillMixed, StopTimeout: svc.StopTimeout.D()})
	if err != nil {
		return nil, cg, err
	}
	return p, cg, nil
}

// supervise watches the command and its health until the term ends or the
// service must be given up; it returns why.
func (r *run) supervise(t *ha.Term) stopRequest {
	healthyOnce := false
	for {
		mctx, cancel := context.WithCancel(t.Context())
		mon := health.NewMonitor(r.s.checks(r.svc), r.svc.StartTimeout.D())
		events := mon.Run(mctx)
		startedAt := time.Now()
		failure := ""
	watch:
		for {
			select {
			case <-t.Done():
				cancel()
				return stopRequest{}
			case req := <-r.stopCh:
				cancel()
				return req
			case <-r.p.Done():
				code, sig, _ := r.p.Exit()
				failure = fmt.Sprintf("the command exited (code %d, signal %v)", code, sig)
				break watch
			case ev, ok := <-events:
				if !ok {
					events = nil
					continue
				}
				switch ev.State {
				case health.Healthy:
					r.setState(StateHealthy, "")
					if !healthyOnce {
						healthyOnce = true
						r.ev.HealthyS = secs(time.Since(startedAt))
						r.healthy()
					}
				case health.Unhealthy:
					failure = ev.Reason
					break watch
				}
			}
		}
		cancel()
		// A failure: restart in place, unless past the limit.
		now := time.Now()
		r.mu.Lock()
		r.failures = append(r.failures, now)
		recent := 0
		for _, f := range r.failures {
			if now.Sub(f) <= r.svc.RestartWindow.D() {
				recent++
			}
		}
		r.mu.Unlock()
		r.s.met.failures.WithLabelValues(r.svc.Name).Inc()
		if recent > r.svc.Restarts {
			r.log.Error("the service failed past its restart limit; giving it up", "reason", failure, "restarts", r.svc.Restarts,
				"window", r.svc.RestartWindow.D().String())
			return stopRequest{cause: CauseHealthFailed, reason: failure, ban: r.svc.Ban.D()}
		}
		r.log.Warn("the service failed; restarting it in place", "reason", failure, "failures_in_window", recent)
		r.setState(StateFailing, failure)
		if err := r.stopCommand(t.Context()); err != nil {
			return stopRequest{cause: CauseHealthFailed, reason: err.Error(), ban: r.svc.Ban.D()}
		}
		if err := r.writeState(t.Context(), RunState{Node: r.s.cfg.Node, Addr: r.s.cfg.Addr, Epoch: r.fence.Rev, At: time.Now().UTC()}); err != nil {
			return stopRequest{}
		}
		if err := r.start(); err != nil {
			return stopRequest{cause: CauseStartFailed, reason: err.Error(), ban: r.svc.Ban.D()}
		}
		r.mu.Lock()
		r.restarts++
		r.mu.Unlock()
		r.s.met.restarts.WithLabelValues(r.svc.Name).Inc()
		r.setState(StateStarting, "restarted after: "+failure)
	}
}

// healthy completes the takeover: a second ARP burst, and the record.
func (r *run) healthy() {
	if r.vip != nil {
		v := *r.vip
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = v.Announce(ctx, 3, 100*time.Millisecond)
		}()
	}
	r.ev.Time = time.Now().UTC()
	if r.gone.prev != nil {
		start := r.gone.at
		if r.ev.DetectionS != nil {
			start = start.Add(-time.Duration(*r.ev.DetectionS * float64(time.Second)))
		}
		if !start.IsZero() {
			r.ev.TotalS = secs(time.Since(start))
		}
	}
	r.log.Info("the service is healthy", "cause", r.ev.Cause, "prev", r.ev.PrevNode, "fenced", r.ev.Fenced,
		"detection_s", fmtSecs(r.ev.DetectionS), "election_s", fmtSecs(r.ev.ElectionS), "fencing_s", fmtSecs(r.ev.FencingS),
		"start_s", fmtSecs(r.ev.StartS), "healthy_s", fmtSecs(r.ev.HealthyS), "vip_s", fmtSecs(r.ev.VIPS))
	r.s.met.observe(r.ev)
	ev := r.ev
	go r.s.recordEvent(r.fence, ev)
}

func fmtSecs(v *float64) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v, 'f', 3, 64)
}

// stopCommand stops the command's whole tree: the stop signal, then a
// kill after the stop timeout. ctx is the term's: if the term ends while
// the command is stopping (the lease is lost, self-fencing), the tree is
// killed at once instead of being given the rest of its stop timeout,
// which may be longer than what is left of the lease.
func (r *run) stopCommand(ctx context.Context) error {
	if r.p == nil {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, r.svc.StopTimeout.D()+10*time.Second)
	defer cancel()
	killed, err := r.p.Stop(sctx)
	if err != nil {
		return fmt.Errorf("stop the command: %w", err)
	}
	if killed {
		r.log.Warn("the command did not stop in time; killed its whole process tree", "stop_timeout", r.svc.StopTimeout.D().String())
	}
	return nil
}

// killNow kills the command's whole cgroup at once: the term is over, and
// another node may start the service as soon as this node's lease expires.
func (r *run) killNow() {
	if r.cg == nil {
		if r.p != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := r.p.Kill(ctx); err != nil {
				r.log.Error("could not kill the command's process group", "err", err)
			}
		}
		return
	}
	if err := r.cg.Kill(); err != nil {
		r.log.Error("could not kill the command's cgroup", "err", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.cg.WaitEmpty(ctx); err != nil {
		r.log.Error("the command's cgroup is not empty after a kill", "err", err)
	}
}

// leave ends the run. If the term is already over (lease lost, deposed),
// the command is killed at once and the VIP dropped; otherwise the service
// is stopped cleanly and given up (or handed to a node), recording a clean
// stop in the same transaction.
func (r *run) leave(t *ha.Term, req stopRequest) {
	select {
	case <-t.Done():
		r.killNow()
		r.dropVIP()
		r.log.Warn("lost the service: killed its command and dropped its VIP", "cause", context.Cause(t.Context()),
			"lead_s", r.s.leaseLead())
		return
	default:
	}
	if req.cause == "" {
		req.cause = tandem.CauseShutdown
	}
	r.setState(StateStopping, req.cause)
	// The pre-stop hook and the stop run under the term: if it ends on the
	// way (the lease is lost), the hook is killed and the command with it at
	// once, as the first case does, rather than after their timeouts.
	if err := r.runHook(t.Context(), "pre-stop", r.svc.Hooks.PreStop); err != nil {
		r.log.Warn("pre-stop hook failed", "err", err)
	}
	clean := r.stopCommand(t.Context()) == nil
	if t.Context().Err() != nil {
		r.killNow()
		clean = false
	}
	ctx := context.WithoutCancel(t.Context())
	if clean && r.cg != nil {
		if populated, err := r.cg.Populated(); err != nil || populated {
			clean = false
		}
	}
	r.dropVIP()
	if err := r.runHook(ctx, "post-stop", r.svc.Hooks.PostStop); err != nil {
		r.log.Warn("post-stop hook failed", "err", err)
	}
	// A run with no cgroup of its own never got to start its command (r.cg
	// is made just before): if the last node was not fenced, leave its state
	// for the next owner. One whose start failed in an empty cgroup ran
	// nothing, and records that cleanly, so no one fences this node for it.
	if r.p == nil && r.cg == nil && r.prev != nil && !r.prev.Clean {
		clean = false
	}
	r.release(t, req, clean)
}

func (r *run) dropVIP() {
	if r.vip == nil {
		return
	}
	if err := r.vip.Remove(); err != nil {
		r.log.Error("could not remove the VIP", "vip", r.vip.String(), "err", err)
	}
}

// release gives the key up (or hands it off) with the run's bookkeeping
// in the same transaction: the clean-stop record, this node's placement,
// a ban, the move request answered.
func (r *run) release(t *ha.Term, req stopRequest, clean bool) {
	s := r.s
	s.placeMu.Lock()
	defer s.placeMu.Unlock()
	also, placed := s.placementWithout(r.svc.Name)
	if clean && (r.p != nil || r.cg != nil) {
		st, _ := json.Marshal(RunState{Node: s.cfg.Node, Addr: s.cfg.Addr, Epoch: r.fence.Rev, Clean: true, At: time.Now().UTC()})
		also.Then = append(also.Then, clientv3.OpPut(s.keys.SuperviseState(r.svc.Name), string(st)))
	}
	also.Then = append(also.Then, clientv3.OpDelete(s.keys.SuperviseStatus(r.svc.Name)))
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.LeaseTTL)
	defer cancel()
	if req.ban > 0 {
		if id, err := s.grantBan(ctx, req.ban); err == nil {
			b, _ := json.Marshal(Ban{Service: r.svc.Name, Node: s.cfg.Node, Reason: req.cause + ": " + req.reason, Until: time.Now().Add(req.ban).UTC()})
			also.Then = append(also.Then, clientv3.OpPut(s.keys.SuperviseBan(r.svc.Name, s.cfg.Node), string(b), clientv3.WithLease(id)))
		}
	}
	if req.moveRev != 0 {
		mkey := s.keys.SuperviseMove(r.svc.Name)
		also.If = append(also.If, clientv3.Compare(clientv3.ModRevision(mkey), "=", req.moveRev))
		also.Then = append(also.Then, clientv3.OpDelete(mkey))
	}
	move := election.Move{Keys: s.keys.SuperviseOwnership(r.svc.Name), Fence: r.fence}
	var err error
	endCause := ha.ErrResigned
	if req.to != "" {
		if n, ok := s.view.Nodes()[req.to]; ok {
			err = s.cand.HandOffWith(ctx, election.Target{ID: n.Node, MemberKey: s.keys.SuperviseNode(n.Node), Lease: clientv3.LeaseID(n.Lease)},
				CauseMove, move, also)
			endCause = ha.ErrHandedOff
		} else {
			err = fmt.Errorf("move to %s: %w", req.to, election.ErrTargetGone)
		}
		if errors.Is(err, election.ErrTargetGone) {
			// The target went: give the service up anyway (an operator asked
			// for it to leave this node) and drop the request.
			r.log.Warn("move target is gone; giving the service up instead", "to", req.to)
			err = s.cand.Release(ctx, move, CauseMove, also)
			endCause = ha.ErrResigned
		}
	} else {
		err = s.cand.Release(ctx, move, req.cause, also)
	}
	switch {
	case err == nil:
		s.placed, s.placedRev = placed, 0
		s.refreshPlaced(ctx)
		r.log.Info("gave the service up", "cause", req.cause, "reason", req.reason, "clean", clean, "to", req.to)
	case errors.Is(err, election.ErrCondFailed):
		// This node's placement record changed under us (a lease renewal
		// re-created it) or the move request did: try once more plainly.
		s.refreshPlaced(ctx)
		also2, placed2 := s.placementWithout(r.svc.Name)
		also.If = also2.If
		also.Then = append(also2.Then, also.Then[1:]...)
		if err = s.cand.Release(ctx, move, req.cause, election.Cond{If: also.If, Then: also.Then}); err == nil {
			s.placed = placed2
			s.refreshPlaced(ctx)
		} else {
			r.log.Error("could not give the service up; its lease will", "err", err)
		}
	default:
		r.log.Error("could not give the service up; its lease will", "err", err)
	}
	if req.cause == CauseFenceFailed || req.cause == CauseVIPInUse {
		s.mu.Lock()
		s.sitOut[r.svc.Name] = time.Now().Add(2 * s.cfg.LeaseTTL)
		s.mu.Unlock()
	}
	s.core.End(t, endCause)
}

// leaseLead is how long this node's lease can still live at the earliest.
func (s *Supervisor) leaseLead() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lease == nil {
		return 0
	}
	return time.Until(s.lease.EarliestExpiry()).Seconds()
}

func writeEpochFile(path string, epoch int64) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(epoch, 10)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write the epoch file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write the epoch file: %w", err)
	}
	return nil
}

// newEvent starts the failover record of the run's term.
func (s *Supervisor) newEvent(r *run) Event {
	ev := Event{Service: r.svc.Name, Epoch: r.fence.Rev, Node: s.cfg.Node, Cause: tandem.CauseInitial}
	g := r.gone
	resign := s.view.Resignation(r.svc.Name)
	if g.prev != nil {
		ev.PrevNode, ev.PrevEpoch = g.prev.ID, g.prev.Epoch
		if !g.at.IsZero() {
			ev.ElectionS = secs(r.wonAt.Sub(g.at))
		}
		if resign != nil && resign.Epoch == g.prev.Epoch {
			ev.Cause = resign.Reason
			if !g.at.IsZero() {
				ev.DetectionS = secs(g.at.Sub(resign.At))
			}
		} else {
			ev.Cause = tandem.CauseLeaseExpired
			if seen, ok := s.probe.lastSeen(g.prev.ID); ok && !g.at.IsZero() && g.at.Sub(seen) < 10*s.cfg.LeaseTTL {
				ev.DetectionS = secs(g.at.Sub(seen))
			}
		}
	} else if st := s.view.State(r.svc.Name); st != nil {
		ev.PrevNode, ev.PrevEpoch = st.Node, st.Epoch
		ev.Cause = tandem.CauseLeaseExpired
		if resign != nil && resign.Epoch == st.Epoch {
			ev.Cause = resign.Reason
		}
	}
	if r.cause != "" {
		ev.Cause = r.cause
	}
	return ev
}

// recordEvent writes the failover record, fenced, and trims the service's
// history to its last 100 records.
func (s *Supervisor) recordEvent(f election.Fence, ev Event) {
	val, _ := json.Marshal(ev)
	ops := []clientv3.Op{clientv3.OpPut(s.keys.SuperviseEvent(ev.Service, ev.Epoch), string(val))}
	if old := s.view.list(s.keys.SuperviseEventsPrefix(ev.Service)); len(old) >= 100 {
		for _, kv := range old[:len(old)-99] {
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.cli.Txn(ctx).If(f.IsOwner()).Then(ops...).Commit(); err != nil {
		s.log.Warn("could not record the failover", "service", ev.Service, "err", err)
	}
}
