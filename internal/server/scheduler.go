package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/shard"
	"github.com/tandemhq/tandem/internal/store"
)

// schedule places the pending jobs of the shards this server owns on
// agents, while it owns any (registered with the core as WhileOwning work).
// Each placement is recorded in etcd, fenced by the job's shard owner's
// epoch, before any agent can hear of it (I4): agents only learn
// assignments from the recorded state. Placement onto one agent by owners of
// different shards is serialised by the agent's placement record, compared
// and rewritten in every placement transaction, so they never over-commit
// it.
func (s *Server) schedule(ctx context.Context) {
	var p planner
	for {
		changed := s.store.Changed()
		terms := s.core.Changed()
		wait := s.scheduleOnce(ctx, &p)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-changed:
		case <-terms:
			p.started = false // shards came or went: look at every pending job again
		case <-timer.C:
		}
		timer.Stop()
	}
}

// planner is the scheduler's memory between passes. A job that fitted no
// agent cannot fit while no agent gains room or appears, so a pass only
// looks at the whole backlog when that happens (or when this server's
// shards change); otherwise it looks at the jobs that became pending since
// the last pass and at retries that are due. That keeps a large backlog from
// costing a full scan per submission.
type planner struct {
	started   bool
	free      map[string]tandem.Resources // free resources at the last pass
	agentsVer uint64                      // the version of the ready agents at the last pass (agentTable.ready)
	delayed   map[string]time.Time        // pending jobs waiting out a retry backoff
}

// grew reports whether the ready agents changed in any way (one appeared,
// went, or says something new of itself: agentsVer is their version) or
// any gained free room since the last pass.
func (p *planner) grew(agentsVer uint64, free map[string]tandem.Resources) bool {
	if !p.started || agentsVer != p.agentsVer {
		return true
	}
	for id, f := range free {
		was := p.free[id]
		if f.CPU > was.CPU+1e-9 || f.MemoryMB > was.MemoryMB {
			return true
		}
	}
	return false
}

// scheduleOnce makes one pass and returns how long to wait for the next
// retry backoff to end if nothing else wakes the scheduler.
func (s *Server) scheduleOnce(ctx context.Context, p *planner) time.Duration {
	held := s.core.Held()
	if len(held) == 0 {
		return time.Minute
	}
	if s.store.NumPending() == 0 {
		// Nothing to place: the view's change that woke this pass (an
		// attempt's report, a job's end, another server's work) is not
		// worth reading every agent's load for. The next pass with work
		// looks at every pending job, as after a change of shards: there
		// are only the new ones.
		p.started = false
		return time.Minute
	}
	terms := make(map[int]*ha.Term, len(held))
	for _, t := range held {
		terms[t.Shard] = t
	}
	agents, agentsVer := s.agents.ready()
	free, placed := s.agentLoads(agents) // placed: each agent's placement record revision, consistent with free
	now := time.Now()
	var jobs []*tandem.Job
	if p.grew(agentsVer, free) {
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
	defer func() { p.agentsVer, p.free = agentsVer, free }()

	next := time.Minute
	for _, at := range p.delayed {
		next = min(next, at.Sub(now))
	}
	// Placements are planned against free, which each takes its share of
	// at once, and recorded MaxWriteBatch at a time in one transaction
	// each: a backlog drains at a batch per etcd round trip, not a job.
	var batch []planned
	seen := make(map[string]bool, len(jobs)) // a fresh job may also be a due retry
	for _, j := range jobs {
		if ctx.Err() != nil {
			return next
		}
		if seen[j.ID] {
			continue
		}
		seen[j.ID] = true
		t := terms[shard.Of(j.ID, s.Shards())]
		if t == nil {
			continue // another server's shard
		}
		if j.NotBefore != nil && j.NotBefore.After(now) {
			p.delayed[j.ID] = *j.NotBefore
			next = min(next, j.NotBefore.Sub(now))
			continue
		}
		spec := j.JobSpec.WithDefaults()
		agent, why := place(spec, agents, free)
		// Why a job waits changes with every agent that comes and goes; it
		// is kept in memory and shown by its owner, not written for every
		// pending job (that would double the writes of a backlog).
		s.waiting.set(j.ID, why)
		if agent == "" {
			continue
		}
		free[agent] = free[agent].Sub(spec.Resources)
		batch = append(batch, planned{id: j.ID, term: t, agent: agent, spec: spec})
		if len(batch) == store.MaxWriteBatch {
			s.placeBatch(ctx, p, batch, agents, free, placed)
			batch = batch[:0]
		}
	}
	s.placeBatch(ctx, p, batch, agents, free, placed)
	return max(next, time.Millisecond)
}

// planned is a placement a pass has decided on and not yet recorded.
type planned struct {
	id    string
	term  *ha.Term
	agent string
	spec  tandem.JobSpec
}

// placeBatch records the placements of batch, whose resources free already
// counts: in one transaction (WriteJobs) when there are several, and if
// that fails or there is one, one at a time, each as placeOne decides
// again. placed holds each agent's placement record revision, consistent
// with free; both are kept up to date.
func (s *Server) placeBatch(ctx context.Context, p *planner, batch []planned, agents map[string]tandem.AgentInfo, free map[string]tandem.Resources, placed map[string]int64) {
	if len(batch) > 1 && s.commitPlacements(ctx, p, batch, placed) {
		return
	}
	// Give every share back before placing any: placeOne may read an
	// agent's load afresh (a race with another owner), and a share given
	// back after that would be counted free twice.
	for _, pl := range batch {
		free[pl.agent] = free[pl.agent].Add(pl.spec.Resources)
	}
	for _, pl := range batch {
		if ctx.Err() != nil {
			return
		}
		s.placeOne(ctx, p, pl.term, pl.id, pl.spec, agents, free, placed)
	}
}

// commitPlacements records batch in one transaction, holding the job locks
// of every shard in it (in shard order, as mutate holds one) from reading
// the records to the commit. It reports whether the batch is done: every
// placement recorded, or skipped because its job is no longer to be placed.
// False: refused (nothing written) or not answered (it may have
// committed); the caller places them one by one, comparing again.
func (s *Server) commitPlacements(ctx context.Context, p *planner, batch []planned, placed map[string]int64) bool {
	terms := make([]*ha.Term, len(batch))
	for i, pl := range batch {
		terms[i] = pl.term
	}
	defer s.lockShards(terms)()
	now := time.Now().UTC()
	writes := make([]store.JobWrite, 0, len(batch))
	last := map[string]string{} // agent -> an attempt placed on it in this batch
	var agentsInBatch []string
	attempts := make([]string, 0, len(batch))
	for _, pl := range batch {
		t := pl.term
		if t.Ended() != nil {
			return false // the one-by-one path says so, job by job
		}
		j, rev, err := s.store.JobWithRev(pl.id)
		if err != nil {
			return false
		}
		if j.State != tandem.JobPending || j.KillRequested {
			p.started = false // its share of free was taken: look again next pass
			continue
		}
		attemptID := addAttempt(j, pl.agent, t.Epoch(), now)
		j.UpdatedAt, j.UpdatedEpoch, j.UpdatedBy = now, t.Epoch(), s.cfg.ID
		writes = append(writes, store.JobWrite{Fence: t.Fence, Job: j, Rev: rev})
		if _, ok := last[pl.agent]; !ok {
			agentsInBatch = append(agentsInBatch, pl.agent)
		}
		last[pl.agent] = attemptID
		attempts = append(attempts, attemptID)
	}
	places := make([]store.Placement, 0, len(agentsInBatch))
	for _, a := range agentsInBatch {
		places = append(places, store.Placement{Agent: a, Rev: placed[a], Attempt: last[a]})
	}
	rev, ok := s.writeBatch(ctx, writes, places, s.metrics.placements, s.metrics.placementTxns)
	if !ok {
		return false
	}
	for _, a := range agentsInBatch {
		placed[a] = rev
	}
	for i, w := range writes {
		s.log.Debug("attempt scheduled", "job", w.Job.ID, "attempt", attempts[i], "agent", w.Job.LastAttempt().Agent,
			"shard", w.Job.Shard, "epoch", w.Fence.Epoch(), "batch", len(writes))
	}
	if len(writes) > 0 && s.cfg.Failpoint == FailpointExitAfterAssign {
		s.log.Warn("failpoint: exiting after recording an assignment", "jobs", len(writes))
		os.Exit(86)
	}
	return true
}

// placeOne places job id on the agent place picks, in a transaction of its
// own, looking again when another shard's owner placed work on that agent
// first.
func (s *Server) placeOne(ctx context.Context, p *planner, t *ha.Term, id string, spec tandem.JobSpec, agents map[string]tandem.AgentInfo, free map[string]tandem.Resources, placed map[string]int64) {
	var agent, attemptID string
	var rev int64
	var err error
	for try := 0; ; try++ {
		var why string
		agent, why = place(spec, agents, free)
		s.waiting.set(id, why)
		if agent == "" {
			return
		}
		attemptID, rev, err = s.placeJob(ctx, t, id, agent, placed[agent])
		var race *store.PlacementConflictError
		if !errors.As(err, &race) || try == 3 {
			break
		}
		// Another shard's owner placed work on the agent since its load
		// was read: read it again, from a view that has that placement,
		// and place this job again.
		s.log.Debug("placement raced another owner; looking again", "job", id, "agent", agent, "shard", t.Shard, "epoch", t.Epoch())
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		err = s.store.WaitRev(wctx, race.Rev)
		cancel()
		if err != nil {
			break
		}
		free[agent], placed[agent] = s.agentLoad(agents[agent])
	}
	if err != nil {
		s.log.Warn("could not record an assignment", "job", id, "agent", agent, "shard", t.Shard, "epoch", t.Epoch(), "err", err)
		p.started = false // look at everything again next time
		return
	}
	if attemptID == "" {
		return
	}
	free[agent] = free[agent].Sub(spec.Resources)
	placed[agent] = rev
	s.metrics.placements.WithLabelValues("single").Inc()
	s.metrics.placementTxns.WithLabelValues("single").Inc()
	s.log.Debug("attempt scheduled", "job", id, "attempt", attemptID, "agent", agent, "shard", t.Shard, "epoch", t.Epoch())
	if s.cfg.Failpoint == FailpointExitAfterAssign {
		s.log.Warn("failpoint: exiting after recording an assignment", "job", id, "attempt", attemptID, "shard", t.Shard, "epoch", t.Epoch())
		os.Exit(86)
	}
}

// agentLoad returns what agent a has free, and the revision of its
// placement record, from one consistent state of the view.
func (s *Server) agentLoad(a tandem.AgentInfo) (tandem.Resources, int64) {
	live, rev := s.store.AgentLoad(a.ID)
	return freeOf(a.Capacity, live), rev
}

// agentLoads is agentLoad for every agent of agents, all from one state of
// the view.
func (s *Server) agentLoads(agents map[string]tandem.AgentInfo) (map[string]tandem.Resources, map[string]int64) {
	free := make(map[string]tandem.Resources, len(agents))
	placed := make(map[string]int64, len(agents))
	s.store.AgentLoads(maps.Keys(agents), func(id string, live []store.LiveJob, rev int64) {
		free[id], placed[id] = freeOf(agents[id].Capacity, live), rev
	})
	return free, placed
}

// freeOf is what an agent of capacity has free with live on it.
func freeOf(capacity tandem.Resources, live []store.LiveJob) tandem.Resources {
	for _, j := range live {
		capacity = capacity.Sub(j.Resources)
	}
	return capacity
}

// placeJob records attempt n+1 of job id on agent, fenced by t and
// conditional on the agent's placement record still being at placedRev. It
// returns the attempt's ID ("" if the job was no longer to be placed) and
// the write's revision.
func (s *Server) placeJob(ctx context.Context, t *ha.Term, id, agent string, placedRev int64) (string, int64, error) {
	var attemptID string
	pl := &store.Placement{Agent: agent, Rev: placedRev}
	_, rev, err := s.mutate(ctx, t, id, pl, func(j *tandem.Job, now time.Time) (bool, error) {
		if j.State != tandem.JobPending || j.KillRequested {
			attemptID = ""
			return false, nil
		}
		attemptID = addAttempt(j, agent, t.Epoch(), now)
		pl.Attempt = attemptID
		return true, nil
	})
	if err != nil {
		return "", 0, err
	}
	return attemptID, rev, nil
}

// addAttempt schedules the next attempt of pending job j on agent, under
// epoch, and returns its ID.
func addAttempt(j *tandem.Job, agent string, epoch int64, now time.Time) string {
	n := len(j.Attempts) + 1
	id := fmt.Sprintf("%s-%d", j.ID, n)
	j.Attempts = append(j.Attempts, tandem.Attempt{ID: id, Number: n, Agent: agent, Epoch: epoch,
		State: tandem.AttemptScheduled, ScheduledAt: now})
	j.State, j.Reason, j.NotBefore = tandem.JobScheduled, "", nil
	return id
}

// FailpointExitAfterAssign makes the server exit right after it records an
// assignment, before any agent hears of it: the crash the tests of I4 need.
const FailpointExitAfterAssign = "exit-after-assign"

// place picks the ready agent with the most free CPU that matches the
// constraints and has room for the request (the lowest ID among equals),
// or says why none does.
func place(spec tandem.JobSpec, agents map[string]tandem.AgentInfo, free map[string]tandem.Resources) (string, string) {
	if len(agents) == 0 {
		return "", "waiting for an agent: none is connected"
	}
	// One pass, in the map's order: the decision is the same as a scan in
	// ID order keeping the first agent with the most free CPU, without
	// sorting the fleet or writing a note for every agent that does not
	// fit (a thousand agents made this a millisecond a job, twice for a
	// job placed alone).
	best, bestCPU := "", 0.0
	for id, a := range agents {
		f := free[id]
		if !spec.Resources.Fits(f) || !hasLabels(spec.Constraints, a.Labels) {
			continue
		}
		if best == "" || f.CPU > bestCPU || (f.CPU == bestCPU && id < best) {
			best, bestCPU = id, f.CPU
		}
	}
	if best != "" {
		return best, ""
	}
	return "", whyUnplaced(spec, agents, free)
}

// whyUnplaced says why no agent of agents fits spec, agent by agent in ID
// order: the reason a pending job shows.
func whyUnplaced(spec tandem.JobSpec, agents map[string]tandem.AgentInfo, free map[string]tandem.Resources) string {
	ids := make([]string, 0, len(agents))
	for id := range agents {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	notes := make([]string, 0, len(ids))
	for _, id := range ids {
		if miss := missingLabels(spec.Constraints, agents[id].Labels); miss != "" {
			notes = append(notes, fmt.Sprintf("%s lacks %s", id, miss))
			continue
		}
		if f := free[id]; !spec.Resources.Fits(f) {
			notes = append(notes, fmt.Sprintf("%s has %g cpu and %d MiB free", id, f.CPU, f.MemoryMB))
		}
	}
	return fmt.Sprintf("no agent fits %g cpu and %d MiB%s: %s", spec.Resources.CPU, spec.Resources.MemoryMB,
		constraintText(spec.Constraints), strings.Join(notes, "; "))
}

// hasLabels reports whether have matches every label of want, as
// missingLabels reads them (a missing label reads as "").
func hasLabels(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
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

// Explain fills in why a pending job waits, as far as this server knows:
// the job's own reason (a retry's backoff) or, on its shard's owner, the
// scheduler's latest word.
func (s *Server) Explain(j *tandem.Job) {
	if j.State != tandem.JobPending || j.Reason != "" {
		return
	}
	s.waiting.mu.Lock()
	j.Reason = s.waiting.m[j.ID]
	s.waiting.mu.Unlock()
}
