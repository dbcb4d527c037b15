package server

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
)

// schedule places pending jobs on agents while this server is active. Each
// placement is recorded in etcd, fenced by the epoch, before any agent can
// hear of it (I4): agents only learn assignments from the recorded state.
func (s *Server) schedule(ctx context.Context, epoch int64) {
	var p planner
	for {
		changed := s.store.Changed()
		wait := s.scheduleOnce(ctx, epoch, &p)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// planner is the scheduler's memory between passes. A job that fitted no
// agent cannot fit while no agent gains room or appears, so a pass only
// looks at the whole backlog when that happens; otherwise it looks at the
// jobs that became pending since the last pass and at retries that are due.
// That keeps a large backlog from costing a full scan per submission.
type planner struct {
	started bool
	free    map[string]tandem.Resources // free resources at the last pass
	agents  map[string]tandem.AgentInfo
	delayed map[string]time.Time // pending jobs waiting out a retry backoff
}

// grew reports whether any agent appeared, changed, or gained free room
// since the last pass.
func (p *planner) grew(agents map[string]tandem.AgentInfo, free map[string]tandem.Resources) bool {
	if !p.started || len(agents) != len(p.agents) {
		return true
	}
	for id, a := range agents {
		old, ok := p.agents[id]
		if !ok || !sameAgent(old, a) {
			return true
		}
		f, was := free[id], p.free[id]
		if f.CPU > was.CPU+1e-9 || f.MemoryMB > was.MemoryMB {
			return true
		}
	}
	return false
}

// scheduleOnce makes one pass and returns how long to wait for the next
// retry backoff to end if nothing else wakes the scheduler.
func (s *Server) scheduleOnce(ctx context.Context, epoch int64, p *planner) time.Duration {
	agents := s.agents.ready()
	free := make(map[string]tandem.Resources, len(agents))
	for id, a := range agents {
		f := a.Capacity
		for _, j := range s.store.LiveOn(id) {
			f = f.Sub(j.JobSpec.WithDefaults().Resources)
		}
		free[id] = f
	}
	now := time.Now()
	var jobs []*tandem.Job
	if p.grew(agents, free) {
		s.store.TakeFreshPending()
		jobs = s.store.PendingJobs()
		p.delayed = make(map[string]time.Time)
	} else {
		jobs = s.store.TakeFreshPending()
		for id, at := range p.delayed {
			if !at.After(now) {
				delete(p.delayed, id)
				if j, err := s.store.Job(id); err == nil && j.State == tandem.JobPending {
					jobs = append(jobs, j)
				}
			}
		}
		sort.Slice(jobs, func(a, b int) bool { return jobs[a].ID < jobs[b].ID })
	}
	p.started = true
	defer func() { p.agents, p.free = agents, free }()

	next := time.Minute
	for _, at := range p.delayed {
		next = min(next, at.Sub(now))
	}
	for _, j := range jobs {
		if ctx.Err() != nil {
			return next
		}
		if j.NotBefore != nil && j.NotBefore.After(now) {
			p.delayed[j.ID] = *j.NotBefore
			next = min(next, j.NotBefore.Sub(now))
			continue
		}
		spec := j.JobSpec.WithDefaults()
		agent, why := place(spec, agents, free)
		if agent == "" {
			// Why a job waits changes with every agent that comes and goes;
			// it is kept in memory and shown by the active, not written for
			// every pending job (that would double the writes of a backlog).
			s.waiting.set(j.ID, why)
			continue
		}
		s.waiting.set(j.ID, "")
		var attemptID string
		_, err := s.mutate(ctx, epoch, j.ID, func(j *tandem.Job, now time.Time) (bool, error) {
			if j.State != tandem.JobPending || j.KillRequested {
				return false, nil
			}
			n := len(j.Attempts) + 1
			attemptID = fmt.Sprintf("%s-%d", j.ID, n)
			j.Attempts = append(j.Attempts, tandem.Attempt{ID: attemptID, Number: n, Agent: agent, Epoch: epoch,
				State: tandem.AttemptScheduled, ScheduledAt: now})
			j.State, j.Reason, j.NotBefore = tandem.JobScheduled, "", nil
			return true, nil
		})
		if err != nil {
			s.log.Warn("could not record an assignment", "job", j.ID, "agent", agent, "err", err)
			p.started = false // look at everything again next time
			if ctx.Err() != nil {
				return next
			}
			continue
		}
		if attemptID == "" {
			continue
		}
		free[agent] = free[agent].Sub(spec.Resources)
		s.log.Debug("attempt scheduled", "job", j.ID, "attempt", attemptID, "agent", agent, "epoch", epoch)
		if s.cfg.Failpoint == FailpointExitAfterAssign {
			s.log.Warn("failpoint: exiting after recording an assignment", "attempt", attemptID)
			os.Exit(86)
		}
	}
	return max(next, time.Millisecond)
}

// FailpointExitAfterAssign makes the server exit right after it records an
// assignment, before any agent hears of it: the crash the tests of I4 need.
const FailpointExitAfterAssign = "exit-after-assign"

// place picks the ready agent with the most free CPU that matches the
// constraints and has room for the request, or says why none does.
func place(spec tandem.JobSpec, agents map[string]tandem.AgentInfo, free map[string]tandem.Resources) (string, string) {
	if len(agents) == 0 {
		return "", "waiting for an agent: none is connected"
	}
	ids := make([]string, 0, len(agents))
	for id := range agents {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	best := ""
	var notes []string
	for _, id := range ids {
		a := agents[id]
		if miss := missingLabels(spec.Constraints, a.Labels); miss != "" {
			notes = append(notes, fmt.Sprintf("%s lacks %s", id, miss))
			continue
		}
		f := free[id]
		if !spec.Resources.Fits(f) {
			notes = append(notes, fmt.Sprintf("%s has %g cpu and %d MiB free", id, f.CPU, f.MemoryMB))
			continue
		}
		if best == "" || f.CPU > free[best].CPU {
			best = id
		}
	}
	if best != "" {
		return best, ""
	}
	return "", fmt.Sprintf("no agent fits %g cpu and %d MiB%s: %s", spec.Resources.CPU, spec.Resources.MemoryMB,
		constraintText(spec.Constraints), strings.Join(notes, "; "))
}

func missingLabels(want, have map[string]string) string {
	var miss []string
	for k, v := range want {
		if have[k] != v {
			miss = append(miss, k+"="+v)
		}
	}
	sort.Strings(miss)
	return strings.Join(miss, ",")
}

func constraintText(c map[string]string) string {
	if len(c) == 0 {
		return ""
	}
	var kv []string
	for k, v := range c {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return " with " + strings.Join(kv, ",")
}

// waitReasons holds, on the active, why each pending job is not placed.
type waitReasons struct {
	mu sync.Mutex
	m  map[string]string
}

func (w *waitReasons) set(id, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = make(map[string]string)
	}
	if why == "" {
		delete(w.m, id)
	} else {
		w.m[id] = why
	}
}

func (w *waitReasons) reset() {
	w.mu.Lock()
	w.m = nil
	w.mu.Unlock()
}

// Explain fills in why a pending job waits, as far as the active knows: the
// job's own reason (a retry's backoff) or the scheduler's latest word.
func (s *Server) Explain(j *tandem.Job) {
	if j.State != tandem.JobPending || j.Reason != "" {
		return
	}
	s.waiting.mu.Lock()
	j.Reason = s.waiting.m[j.ID]
	s.waiting.mu.Unlock()
}
