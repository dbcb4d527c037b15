package supervise

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/supervise/health"
	"github.com/tandemhq/tandem/internal/supervise/proc"
)

// Instance is a node's healthy instance of an every-node service, as
// registered in etcd (bound to the node's supervisor lease) for tandem lb
// and `tandem supervise status`.
type Instance struct {
	Service  string    `json:"service"`
	Node     string    `json:"node"`
	Addr     string    `json:"addr"` // the node's address (TANDEM_NODE_ADDR)
	PID      int       `json:"pid"`
	Restarts int       `json:"restarts"`
	Since    time.Time `json:"since"` // healthy since
}

// States of an instance beyond the owner's run states.
const (
	// StateBackoff: the instance failed past its restart limit and waits
	// out the service's ban time before starting again.
	StateBackoff = "backoff"
)

// instance runs this node's instance of an every-node service: start,
// check, register while healthy, restart in place; past the restart limit,
// wait the ban time and try again. Nothing is exclusive, so a lost lease
// does not stop it: it registers again under the next lease.
type instance struct {
	s      *Supervisor
	svc    Service
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	state      string
	reason     string
	pid        int
	restarts   int
	since      time.Time
	registered clientv3.LeaseID // the lease the registration is bound to; 0 if none
}

// syncInstances starts an instance of every every-node service this node
// offers by name and stops those no longer offered (their definition was
// deleted or changed to one owner). The caller is the supervisor's loop.
func (s *Supervisor) syncInstances(ctx context.Context, offered map[string]Service) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, in := range s.instances {
		if svc, ok := offered[name]; !ok || !svc.EveryNode() || !s.offersByName(name) || !sameDefinition(svc, in.svc) || s.banned(name) {
			s.log.Info("stopping the instance: the service is no longer offered here as defined, or this node is banned from it", "service", name)
			in.cancel()
			delete(s.instances, name)
			s.stopping.Add(1)
			go func() { defer s.stopping.Done(); <-in.done; s.poke() }()
		}
	}
	for name, svc := range offered {
		if !svc.EveryNode() || !s.offersByName(name) || s.instances[name] != nil || s.banned(name) {
			continue
		}
		ictx, cancel := context.WithCancel(ctx)
		in := &instance{s: s, svc: svc, log: s.log.With("service", name, "instance", s.cfg.Node), cancel: cancel,
			done: make(chan struct{}), state: StateStarting, since: time.Now()}
		s.instances[name] = in
		go in.run(ictx)
	}
}

// banned reports whether this node is banned from svc now.
func (s *Supervisor) banned(svc string) bool {
	_, ok := s.view.Banned(svc, s.cfg.Node)
	return ok
}

// offersByName reports whether this node lists svc itself: a pool node does
// not run instances of every-node services.
func (s *Supervisor) offersByName(svc string) bool {
	for _, d := range s.cfg.Services {
		if d.Name == svc {
			return true
		}
	}
	return false
}

func sameDefinition(a, b Service) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// stopInstances stops every instance and waits until each has stopped its
// command and removed its registration.
func (s *Supervisor) stopInstances() {
	s.mu.Lock()
	for name, in := range s.instances {
		in.cancel()
		delete(s.instances, name)
		s.stopping.Add(1)
		go func() { defer s.stopping.Done(); <-in.done }()
	}
	s.mu.Unlock()
	s.stopping.Wait()
}

func (in *instance) setState(state, reason string) {
	in.mu.Lock()
	in.state, in.reason, in.since = state, reason, time.Now()
	in.mu.Unlock()
	in.s.met.setState(in.svc.Name, state)
}

// run is the instance's life until ctx ends.
func (in *instance) run(ctx context.Context) {
	defer close(in.done)
	defer in.s.met.setState(in.svc.Name, "")
	var out io.Writer
	if in.s.cfg.LogDir != "" {
		f, err := in.s.openLog(in.svc.Name)
		if err != nil {
			in.log.Error("cannot open the instance's log; its output is discarded", "err", err)
		} else {
			defer f.Close()
			out = f
		}
	}
	var failures []time.Time
	for ctx.Err() == nil {
		failure := in.once(ctx, out)
		if ctx.Err() != nil {
			return
		}
		in.s.met.failures.WithLabelValues(in.svc.Name).Inc()
		now := time.Now()
		recent := failures[:0]
		for _, f := range failures {
			if now.Sub(f) <= in.svc.RestartWindow.D() {
				recent = append(recent, f)
			}
		}
		failures = append(recent, now)
		if len(failures) > in.svc.Restarts {
			in.log.Error("the instance failed past its restart limit; waiting before starting it again", "reason", failure,
				"restarts", in.svc.Restarts, "window", in.svc.RestartWindow.D().String(), "wait", in.svc.Ban.D().String())
			in.setState(StateBackoff, failure)
			select {
			case <-ctx.Done():
				return
			case <-time.After(in.svc.Ban.D()):
			}
			failures = failures[:0]
		} else {
			in.log.Warn("the instance failed; restarting it in place", "reason", failure, "failures_in_window", len(failures))
			in.setState(StateFailing, failure)
		}
		in.mu.Lock()
		in.restarts++
		in.mu.Unlock()
		in.s.met.restarts.WithLabelValues(in.svc.Name).Inc()
	}
}

// once starts the command and watches it, registered while healthy, until
// it fails (returning why) or ctx ends; either way the registration is
// removed and the command stopped before it returns.
func (in *instance) once(ctx context.Context, out io.Writer) string {
	in.setState(StateStarting, "")
	p, cg, err := in.s.startCommand(in.svc, out)
	if err != nil {
		return "the command could not start: " + err.Error()
	}
	in.mu.Lock()
	in.pid = p.Pid()
	in.mu.Unlock()
	in.log.Info("started the instance", "pid", p.Pid())
	defer in.stop(p, cg)
	defer in.deregister()

	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := health.NewMonitor(in.s.checks(in.svc), in.svc.StartTimeout.D()).Run(mctx)
	// The registration is bound to the supervisor's lease: after a lost
	// lease it is written again under the next one.
	tick := time.NewTicker(max(in.s.cfg.LeaseTTL/4, 100*time.Millisecond))
	defer tick.Stop()
	healthy := false
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-p.Done():
			code, sig, _ := p.Exit()
			return fmt.Sprintf("the command exited (code %d, signal %v)", code, sig)
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			switch ev.State {
			case health.Healthy:
				if !healthy {
					healthy = true
					in.setState(StateHealthy, "")
					in.log.Info("the instance is healthy")
				}
				in.register(ctx)
			case health.Unhealthy:
				return ev.Reason
			}
		case <-tick.C:
			if healthy {
				in.register(ctx)
			}
		}
	}
}

// register writes the instance's record under the supervisor's current
// lease unless it is there already.
func (in *instance) register(ctx context.Context) {
	l := in.s.currentLease()
	if l == nil {
		return
	}
	in.mu.Lock()
	if in.registered == l.id {
		in.mu.Unlock()
		return
	}
	rec := Instance{Service: in.svc.Name, Node: in.s.cfg.Node, Addr: in.s.cfg.Addr, PID: in.pid, Restarts: in.restarts, Since: in.since.UTC()}
	in.mu.Unlock()
	b, _ := json.Marshal(rec)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := in.s.cli.Put(wctx, in.s.keys.SuperviseInstance(in.svc.Name, in.s.cfg.Node), string(b), clientv3.WithLease(l.id)); err != nil {
		in.log.Warn("could not register the instance; trying again", "err", err)
		return
	}
	in.mu.Lock()
	in.registered = l.id
	in.mu.Unlock()
	in.log.Info("registered the instance")
}

// deregister removes the instance's record, so tandem lb stops sending it
// traffic before the command stops.
func (in *instance) deregister() {
	in.mu.Lock()
	was := in.registered
	in.registered = 0
	in.mu.Unlock()
	if was == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := in.s.cli.Delete(ctx, in.s.keys.SuperviseInstance(in.svc.Name, in.s.cfg.Node)); err != nil {
		in.log.Warn("could not remove the instance's registration (it goes with the lease)", "err", err)
	}
}

// stop stops the command's whole tree: the stop signal, a kill after the
// stop timeout, and whatever is left in its cgroup.
func (in *instance) stop(p *proc.Process, cg *proc.Cgroup) {
	ctx, cancel := context.WithTimeout(context.Background(), in.svc.StopTimeout.D()+10*time.Second)
	defer cancel()
	if killed, err := p.Stop(ctx); err != nil {
		in.log.Error("could not stop the instance", "err", err)
	} else if killed {
		in.log.Warn("the instance did not stop in time; killed its whole process tree", "stop_timeout", in.svc.StopTimeout.D().String())
	}
	if cg != nil {
		if pids, _ := cg.Procs(); len(pids) > 0 {
			_ = cg.Kill()
			_ = cg.WaitEmpty(ctx)
		}
	}
	in.mu.Lock()
	in.pid = 0
	in.mu.Unlock()
}

// currentLease is the supervisor's lease now, nil between two.
func (s *Supervisor) currentLease() *lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease
}
