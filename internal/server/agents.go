package server

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/keys"
)

// MaxSyncWait bounds how long the active holds an agent's long poll.
const MaxSyncWait = 30 * time.Second

// agentTable is the active's record of when it last heard from each agent.
// It lives in memory only: a new active starts every agent's clock when it
// takes over, and agents find it within a fraction of a second.
type agentTable struct {
	mu sync.Mutex
	m  map[string]*agentEntry
}

type agentEntry struct {
	info        tandem.AgentInfo
	lastContact time.Time
	lost        bool
	seq         uint64 // last sync processed from this agent process
}

// reset starts a new term: every registered agent, and every agent that
// holds live attempts, is given until now+timeout to get in touch.
func (t *agentTable) reset(registered []tandem.AgentInfo, withLive []string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m = make(map[string]*agentEntry)
	for _, a := range registered {
		t.m[a.ID] = &agentEntry{info: a, lastContact: now}
	}
	for _, id := range withLive {
		if _, ok := t.m[id]; !ok {
			t.m[id] = &agentEntry{info: tandem.AgentInfo{ID: id}, lastContact: now}
		}
	}
}

// contact records a sync from an agent. It reports whether the agent's
// registration changed (so it must be written), whether it had been
// declared lost, and whether the sync is stale: older than one already
// processed from the same agent process.
func (t *agentTable) contact(info tandem.AgentInfo, seq uint64, now time.Time) (changed, wasLost, stale bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*agentEntry)
	}
	e, ok := t.m[info.ID]
	if !ok {
		e = &agentEntry{}
		t.m[info.ID] = e
	}
	sameProcess := e.info.PID == info.PID && e.info.StartedAt.Equal(info.StartedAt)
	if sameProcess && seq != 0 && seq <= e.seq {
		return false, false, true
	}
	changed = !ok || !sameAgent(e.info, info)
	wasLost = e.lost
	e.info, e.lastContact, e.lost, e.seq = info, now, false, seq
	return changed, wasLost, false
}

func sameAgent(a, b tandem.AgentInfo) bool {
	return a.ID == b.ID && a.URL == b.URL && a.Capacity == b.Capacity && maps.Equal(a.Labels, b.Labels) &&
		a.Version == b.Version && a.PID == b.PID && a.StartedAt.Equal(b.StartedAt)
}

// silent marks and returns the agents not heard from since before cutoff.
func (t *agentTable) silent(cutoff time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for id, e := range t.m {
		if !e.lost && e.lastContact.Before(cutoff) {
			e.lost = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// ready returns the agents in touch, by ID.
func (t *agentTable) ready() map[string]tandem.AgentInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]tandem.AgentInfo)
	for id, e := range t.m {
		if !e.lost && e.info.URL != "" {
			out[id] = e.info
		}
	}
	return out
}

func (t *agentTable) snapshot() map[string]agentEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]agentEntry, len(t.m))
	for id, e := range t.m {
		out[id] = *e
	}
	return out
}

// Sync is one long poll of an agent (DESIGN.md section 9). The active
// records what the agent reports (attempts running and done), then answers
// with the attempts assigned to it that it has not reported yet, kill
// orders and acknowledgements, holding the request up to req.WaitMS when it
// has nothing to say. Every answer carries the epoch; an agent that has
// seen a higher one makes this server step down, as it is deposed.
func (s *Server) Sync(ctx context.Context, req *tandem.SyncRequest) (*tandem.SyncResponse, error) {
	if err := keys.ValidateName("agent", req.Agent.ID); err != nil {
		return nil, tandem.Errorf(tandem.EINVALID, "%v", err)
	}
	if req.Agent.Capacity.CPU < 0 || req.Agent.Capacity.MemoryMB < 0 || req.WaitMS < 0 {
		return nil, tandem.Errorf(tandem.EINVALID, "capacity and wait_ms must not be negative")
	}
	epoch, ok := s.ActiveEpoch()
	if !ok {
		return nil, tandem.ErrNotActive
	}
	if req.Epoch > epoch {
		s.log.Warn("an agent has seen a newer epoch: this server is deposed", "agent", req.Agent.ID, "epoch", epoch, "agent_epoch", req.Epoch)
		s.stepDown(downDeposed, epoch)
		return nil, tandem.ErrNotActive
	}
	agent := req.Agent.ID
	// Reports are recorded even if the agent gives up on this request (it
	// cancels a poll when it has news): the record is worth finishing.
	rctx := context.WithoutCancel(ctx)
	now := time.Now()
	changed, wasLost, stale := s.agents.contact(req.Agent, req.Seq, now)
	if stale {
		return nil, tandem.Errorf(tandem.ECONFLICT, "sync %d of agent %s is older than one already processed", req.Seq, agent)
	}
	if wasLost {
		s.log.Info("a lost agent is back; its replaced attempts will be killed", "agent", agent)
	}
	if changed {
		if err := s.store.PutAgent(rctx, epoch, req.Agent); err != nil {
			return nil, err
		}
	}
	resp := &tandem.SyncResponse{Epoch: epoch, ServerID: s.cfg.ID, Assign: []tandem.Assignment{}, Kill: []tandem.KillOrder{}, Ack: []string{}}
	reported := make(map[string]bool)
	for _, r := range req.Running {
		reported[r.AttemptID] = true
		order, err := s.recordRunning(rctx, epoch, agent, r)
		if err != nil {
			return nil, err
		}
		if order != nil {
			resp.Kill = append(resp.Kill, *order)
		}
	}
	for _, r := range req.Done {
		reported[r.AttemptID] = true
		if err := s.recordDone(rctx, epoch, agent, r); err != nil {
			return nil, err
		}
		resp.Ack = append(resp.Ack, r.AttemptID)
	}
	// Running attempts the agent no longer reports died with an earlier
	// process of the agent (attempts die with their agent).
	for _, j := range s.store.LiveOn(agent) {
		a := j.LastAttempt()
		if a.State == tandem.AttemptRunning && !reported[a.ID] {
			if err := s.loseAttempt(rctx, epoch, agent, j.ID, "its agent restarted and no longer runs it"); err != nil {
				return nil, err
			}
		}
	}
	// Hold the poll at most half the agent timeout, so an idle agent is
	// heard from at least twice in every timeout window.
	wait := min(time.Duration(req.WaitMS)*time.Millisecond, MaxSyncWait, s.cfg.AgentTimeout/2)
	if len(resp.Ack) > 0 || len(resp.Kill) > 0 || req.Epoch < epoch {
		wait = 0 // something to say, or the agent has yet to learn this epoch
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	s.mu.RLock()
	actx := s.activeCtx
	s.mu.RUnlock()
	if actx == nil {
		return nil, tandem.ErrNotActive // stepped down meanwhile
	}
	for {
		changed := s.store.Changed()
		resp.Assign = resp.Assign[:0]
		for _, j := range s.store.LiveOn(agent) {
			a := j.LastAttempt()
			if a.State == tandem.AttemptScheduled && !reported[a.ID] {
				resp.Assign = append(resp.Assign, tandem.Assignment{AttemptID: a.ID, JobID: j.ID, Spec: j.JobSpec.WithDefaults()})
			}
			if j.KillRequested && a.State == tandem.AttemptRunning && !reported[a.ID] {
				resp.Kill = append(resp.Kill, tandem.KillOrder{AttemptID: a.ID, Reason: "killed by request"})
			}
		}
		if len(resp.Assign) > 0 || len(resp.Kill) > 0 || len(resp.Ack) > 0 {
			return resp, nil
		}
		select {
		case <-changed:
		case <-timer.C:
			return resp, nil
		case <-ctx.Done():
			return resp, nil
		case <-actx.Done():
			return nil, tandem.ErrNotActive
		}
	}
}

// watchAgents declares agents lost when they are silent for longer than the
// agent timeout, and ends their live attempts as lost (to be retried
// elsewhere if attempts remain). It runs while this server is active.
func (s *Server) watchAgents(ctx context.Context, epoch int64) {
	tick := time.NewTicker(s.cfg.AgentTimeout / 10)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, id := range s.store.AgentsWithLive() {
			s.agents.mu.Lock()
			if _, ok := s.agents.m[id]; !ok {
				s.agents.m[id] = &agentEntry{info: tandem.AgentInfo{ID: id}, lastContact: time.Now()}
			}
			s.agents.mu.Unlock()
		}
		for _, id := range s.agents.silent(time.Now().Add(-s.cfg.AgentTimeout)) {
			jobs := s.store.LiveOn(id)
			s.log.Warn("agent declared lost", "agent", id, "silent_for", s.cfg.AgentTimeout.String(), "live_attempts", len(jobs))
			s.metrics.agentsLost.Inc()
			for _, j := range jobs {
				reason := fmt.Sprintf("agent %s silent for more than %s", id, s.cfg.AgentTimeout)
				if err := s.loseAttempt(ctx, epoch, id, j.ID, reason); err != nil {
					s.log.Warn("could not mark an attempt lost", "agent", id, "job", j.ID, "err", err)
				}
			}
		}
	}
}

// Agents returns every agent the active knows, with its use and live
// attempts. On a standby it lists the registered agents, without contact
// times.
func (s *Server) Agents() []tandem.AgentStatus {
	known := s.agents.snapshot()
	for _, a := range s.store.Agents() {
		if _, ok := known[a.ID]; !ok {
			known[a.ID] = agentEntry{info: a}
		}
	}
	out := make([]tandem.AgentStatus, 0, len(known))
	for id, e := range known {
		st := tandem.AgentStatus{AgentInfo: e.info, State: tandem.AgentReady, LastContact: e.lastContact, Running: []string{}}
		if e.lost || e.lastContact.IsZero() {
			st.State = tandem.AgentLost
		}
		for _, j := range s.store.LiveOn(id) {
			a := j.LastAttempt()
			st.Running = append(st.Running, a.ID)
			st.Used = st.Used.Add(j.JobSpec.WithDefaults().Resources)
		}
		out = append(out, st)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}
