package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/shard"
	"github.com/tandemhq/tandem/internal/store"
)

// MaxSyncWait bounds how long a server holds an agent's long poll.
const MaxSyncWait = 30 * time.Second

// pollHold is how long a poll granted wait is held if nothing comes up for
// its agent: a random time from three quarters of wait to all of it.
// Agents answered at the same moment (every held poll when shards move, a
// fleet registered or restarted together) would otherwise come back in
// step, every wait, for as long as they have nothing to do: a standby's
// thousand idle polls arriving within a few milliseconds took both cores of
// a small machine for a tenth of a second every --idle-poll-wait, and any
// assignment made then waited that long (issue 14). The random quarter
// spreads such a crowd over a quarter of the wait in one round, and
// further with each round, for about a seventh more idle syncs. Answering
// before wait is always safe: an agent is heard from more often.
func pollHold(wait time.Duration) time.Duration {
	if wait <= 0 {
		return 0
	}
	return wait - rand.N(wait/4+1)
}

// agentTable is this server's record of when it last heard from each agent.
// Agents sync with every server, so a standby's table is as warm as an
// owner's, and a server that takes a shard knows at once which agents are
// in touch. It lives in memory only.
type agentTable struct {
	mu sync.Mutex
	m  map[string]*agentEntry
	// ver counts the changes of the ready agents (one appearing, going, or
	// saying something new of itself); readyMap is ready's answer at
	// readyVer, shared by every caller until the next change.
	ver, readyVer uint64
	readyMap      map[string]tandem.AgentInfo
}

type agentEntry struct {
	info        tandem.AgentInfo
	lastContact time.Time
	lost        bool
	seq         map[string]uint64 // last sync processed from this agent process, per session
	contacted   chan struct{}     // closed at the next contact (crash.go)
}

// contact records a sync from an agent. It reports whether the agent had
// been declared lost, and whether the sync is stale: older than one already
// processed from the same session of the same agent process.
func (t *agentTable) contact(info tandem.AgentInfo, session string, seq uint64, now time.Time) (wasLost, stale bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*agentEntry)
	}
	e := t.m[info.ID]
	if e == nil {
		e = &agentEntry{}
		t.m[info.ID] = e
	}
	sameProcess := e.info.PID == info.PID && e.info.StartedAt.Equal(info.StartedAt)
	if !sameProcess || e.seq == nil {
		e.seq = make(map[string]uint64)
	}
	if sameProcess && seq != 0 && seq <= e.seq[session] {
		return false, true
	}
	wasLost = e.lost
	if e.lost || !sameAgent(e.info, info) {
		t.ver++
	}
	e.info, e.lastContact, e.lost = info, now, false
	e.seq[session] = seq
	if e.contacted != nil {
		close(e.contacted)
		e.contacted = nil
	}
	return wasLost, false
}

func sameAgent(a, b tandem.AgentInfo) bool {
	return a.ID == b.ID && a.URL == b.URL && a.Capacity == b.Capacity && maps.Equal(a.Labels, b.Labels) &&
		a.Version == b.Version && a.PID == b.PID && a.StartedAt.Equal(b.StartedAt)
}

// expect gives every agent in ids that this server has never heard from
// until now+timeout to get in touch.
func (t *agentTable) expect(ids []string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*agentEntry)
	}
	for _, id := range ids {
		if _, ok := t.m[id]; !ok {
			t.m[id] = &agentEntry{info: tandem.AgentInfo{ID: id}, lastContact: now}
		}
	}
}

// silent marks and returns the agents not heard from since before cutoff.
func (t *agentTable) silent(cutoff time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for id, e := range t.m {
		if !e.lost && e.lastContact.Before(cutoff) {
			e.lost = true
			t.ver++
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// ready returns the agents in touch, by ID, and the version of that set:
// it changes whenever the set or anything an agent says of itself does.
// The map is shared (a scheduler pass with nothing new about the fleet
// does not copy a thousand agents): callers must not modify it.
func (t *agentTable) ready() (map[string]tandem.AgentInfo, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.readyMap != nil && t.readyVer == t.ver {
		return t.readyMap, t.ver
	}
	out := make(map[string]tandem.AgentInfo, len(t.m))
	for id, e := range t.m {
		if !e.lost && e.info.URL != "" {
			out[id] = e.info
		}
	}
	t.readyMap, t.readyVer = out, t.ver
	return out, t.ver
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

// Sync is one long poll of one of an agent's sessions (DESIGN.md sections
// 9 and 10). Every server answers it, for the shards it owns and only
// those: it records what the agent reports about their jobs (attempts
// running and done), then answers with the attempts of those shards assigned
// to the agent that it has not reported yet, kill orders and
// acknowledgements, each carrying its shard and the epoch of this server's
// term, holding the request up to req.WaitMS when it has nothing to say. A
// server that owns nothing holds the poll and answers with the list of
// servers, so the agent keeps a session with each. An agent that has seen a
// higher epoch for a shard deposes this server's term of it.
func (s *Server) Sync(ctx context.Context, req *tandem.SyncRequest) (*tandem.SyncResponse, error) {
	if err := keys.ValidateName("agent", req.Agent.ID); err != nil {
		return nil, tandem.Errorf(tandem.EINVALID, "%v", err)
	}
	if req.Agent.Capacity.CPU < 0 || req.Agent.Capacity.MemoryMB < 0 || req.WaitMS < 0 {
		return nil, tandem.Errorf(tandem.EINVALID, "capacity and wait_ms must not be negative")
	}
	if len(req.Session) > 512 {
		return nil, tandem.Errorf(tandem.EINVALID, "session name is longer than 512 bytes")
	}
	for k := range req.Epochs {
		if k < 0 || k >= keys.MaxShards {
			return nil, tandem.Errorf(tandem.EINVALID, "epochs name shard %d, outside 0 to %d", k, keys.MaxShards-1)
		}
	}
	if s.State() != tandem.StateActive && s.State() != tandem.StateStandby {
		return nil, tandem.ErrNotActive
	}
	agent := req.Agent.ID
	// Reports are recorded even if the agent gives up on this request (it
	// cancels a poll when it has news): the record is worth finishing.
	rctx := context.WithoutCancel(ctx)
	now := time.Now()
	wasLost, stale := s.agents.contact(req.Agent, req.Session, req.Seq, now)
	if stale {
		return nil, tandem.Errorf(tandem.ECONFLICT, "sync %d of agent %s (session %q) is older than one already processed", req.Seq, agent, req.Session)
	}
	if wasLost {
		s.log.Info("a lost agent is back; its replaced attempts will be killed", "agent", agent)
	}
	defer func() {
		if ctx.Err() != nil {
			// The agent went away mid-sync: it cut the poll short to say
			// something new, or the network cut it, or its process died.
			// crash.go tells them apart.
			s.pollCut(req.Agent, now)
			return
		}
		// Answered: an agent polls again at once. One that dies before it
		// does has no poll here to be cut, so it is checked the same way,
		// from now: its next poll settles that it lives.
		s.pollCut(req.Agent, time.Now())
	}()
	// I1 at the resource, seen from here: an agent that has seen a newer
	// epoch of a shard than this server's term of it was told by a newer
	// owner; this server's term is over.
	for _, t := range s.core.Held() {
		if e := req.Epochs[t.Shard]; e > t.Epoch() {
			s.log.Warn("an agent has seen a newer epoch of the shard: this server is deposed", "agent", agent,
				"shard", t.Shard, "epoch", t.Epoch(), "agent_epoch", e)
			s.endTerm(t, ha.ErrDeposed, downDeposed)
		}
	}
	held := s.core.Held()
	// The registration in etcd (where every server reads an agent's URL for
	// logs) is written by an owner whenever it differs from what the agent
	// says; a server may have met the agent while it owned nothing.
	if reg, ok := s.store.Agent(agent); len(held) > 0 && (!ok || !sameAgent(reg, req.Agent)) {
		if err := s.store.PutAgent(rctx, held[0].Fence, req.Agent); err != nil {
			if errors.Is(err, tandem.ErrFenced) {
				s.fenced(held[0])
			}
			return nil, err
		}
	}
	resp := &tandem.SyncResponse{ServerID: s.cfg.ID, Terms: []tandem.ShardTerm{}, Assign: []tandem.Assignment{},
		Kill: []tandem.KillOrder{}, Ack: []tandem.Ack{}, Servers: s.serverRefs()}
	reported := make(map[string]bool, len(req.Running)+len(req.Done))
	// Most reports of a running attempt repeat what the view already
	// holds: the attempt is the job's current one, on this agent, running,
	// and no kill is asked for. Its change (runningChange) would read the
	// job, find nothing to write and no order to give; the view's live jobs of the
	// agent say so without a copy of each job, or the shard's lock.
	live := s.store.LiveJobs(agent)
	known := make(map[string]*store.LiveJob, len(live))
	for i := range live {
		known[live[i].Attempt] = &live[i]
	}
	// Every report that changes a record goes in one batch (mutateMany):
	// one etcd round trip for the whole sync. A malformed done report of
	// a job this server owns refuses the sync before anything is written;
	// those of other servers' jobs are their owners' to refuse.
	for _, r := range req.Done {
		if s.termOf(r.JobID) == nil {
			continue
		}
		if err := checkDone(r); err != nil {
			return nil, err
		}
	}
	var changes []*change
	var orders []func() (*tandem.KillOrder, error)
	for _, r := range req.Running {
		reported[r.AttemptID] = true
		t := s.termOf(r.JobID)
		if t == nil {
			continue // another server's shard: its owner hears of it in its own session
		}
		if lj := known[r.AttemptID]; lj != nil && lj.ID == r.JobID && lj.State == tandem.AttemptRunning && !lj.KillRequested {
			continue
		}
		c, order := s.runningChange(t, agent, r)
		changes, orders = append(changes, c), append(orders, order)
	}
	type done struct {
		r tandem.AttemptReport
		t *ha.Term
		c *change
	}
	var dones []done
	for _, r := range req.Done {
		reported[r.AttemptID] = true
		t := s.termOf(r.JobID)
		if t == nil {
			continue
		}
		c := doneChange(t, agent, r)
		changes, dones = append(changes, c), append(dones, done{r, t, c})
	}
	s.mutateMany(rctx, changes)
	for _, outcome := range orders {
		order, err := outcome()
		if err != nil && !errors.Is(err, errNotOwner) {
			return nil, err
		}
		if order != nil {
			resp.Kill = append(resp.Kill, *order)
		}
	}
	for _, d := range dones {
		err := doneOutcome(d.c)
		if errors.Is(err, errNotOwner) {
			continue
		}
		if err != nil {
			return nil, err
		}
		resp.Ack = append(resp.Ack, tandem.Ack{AttemptID: d.r.AttemptID, Shard: d.t.Shard, Epoch: d.t.Epoch()})
	}
	// Running attempts the agent no longer reports died with an earlier
	// process of the agent (attempts die with their agent).
	for _, lj := range s.store.LiveJobs(agent) {
		t := s.termOf(lj.ID)
		if t != nil && lj.State == tandem.AttemptRunning && !reported[lj.Attempt] {
			err := s.loseAttempt(rctx, t, agent, lj.ID, "its agent restarted and no longer runs it")
			if err != nil && !errors.Is(err, errNotOwner) {
				return nil, err
			}
		}
	}
	// Hold the poll at most half the agent timeout, so an idle agent is
	// heard from at least twice in every timeout window.
	wait := min(time.Duration(req.WaitMS)*time.Millisecond, MaxSyncWait, s.cfg.AgentTimeout/2)
	if len(resp.Ack) > 0 || len(resp.Kill) > 0 || newEpochs(req.Epochs, s.core.Held()) {
		wait = 0 // something to say, or the agent has yet to learn an epoch
	}
	timer := time.NewTimer(pollHold(wait))
	defer timer.Stop()
	for {
		// Only a change of the agent's own live jobs can give it something
		// new: the view's other changes (every other job's submission, every
		// other agent's attempts) leave this poll asleep.
		changed := s.store.AgentChanged(agent)
		termsChanged := s.core.Changed()
		held := s.core.Held()
		resp.Terms = resp.Terms[:0]
		for _, t := range held {
			resp.Terms = append(resp.Terms, tandem.ShardTerm{Shard: t.Shard, Epoch: t.Epoch()})
		}
		resp.Assign = resp.Assign[:0]
		for _, lj := range s.store.LiveJobs(agent) {
			t := s.termOf(lj.ID)
			if t == nil {
				continue
			}
			if lj.State == tandem.AttemptScheduled && !reported[lj.Attempt] {
				// The spec is read only for an attempt to hand out. A job
				// that changed since LiveJobs read it has closed changed:
				// the next round looks at it again.
				if j, err := s.store.Job(lj.ID); err == nil {
					if a := j.LastAttempt(); a != nil && a.ID == lj.Attempt && a.State == tandem.AttemptScheduled {
						resp.Assign = append(resp.Assign, tandem.Assignment{AttemptID: a.ID, JobID: j.ID, Shard: t.Shard, Epoch: t.Epoch(), Spec: j.JobSpec.WithDefaults()})
					}
				}
			}
			if lj.KillRequested && lj.State == tandem.AttemptRunning && !reported[lj.Attempt] {
				resp.Kill = append(resp.Kill, tandem.KillOrder{AttemptID: lj.Attempt, Shard: t.Shard, Epoch: t.Epoch(), Reason: "killed by request"})
			}
		}
		if len(resp.Assign) > 0 || len(resp.Kill) > 0 || len(resp.Ack) > 0 || newEpochs(req.Epochs, held) {
			return resp, nil
		}
		select {
		case <-changed:
		case <-termsChanged:
		case <-timer.C:
			return resp, nil
		case <-ctx.Done():
			return resp, nil
		case <-s.stopped:
			return resp, nil
		}
	}
}

// newEpochs reports whether a term in held has an epoch the agent has not
// seen yet.
func newEpochs(seen map[int]int64, held []*ha.Term) bool {
	for _, t := range held {
		if seen[t.Shard] < t.Epoch() {
			return true
		}
	}
	return false
}

// serverRefs lists the live servers, for agents to keep a session with each.
func (s *Server) serverRefs() []tandem.ServerRef {
	servers := s.store.Servers()
	out := make([]tandem.ServerRef, 0, len(servers))
	for _, si := range servers {
		out = append(out, tandem.ServerRef{ID: si.ID, URL: si.URL})
	}
	return out
}

// watchAgents declares agents lost when they are silent for longer than the
// agent timeout, and ends their live attempts in the shards this server owns
// as lost (to be retried elsewhere if attempts remain). It runs while this
// server owns any shard (registered with the core as WhileOwning work).
func (s *Server) watchAgents(ctx context.Context) {
	// An agent this server has never heard from gets a whole timeout from
	// now, as if it had just been heard.
	s.agents.expect(s.registeredAgents(), time.Now())
	tick := time.NewTicker(s.cfg.AgentTimeout / 10)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.agents.expect(s.store.AgentsWithLive(), time.Now())
		for _, id := range s.agents.silent(time.Now().Add(-s.cfg.AgentTimeout)) {
			s.log.Warn("agent declared lost", "agent", id, "silent_for", s.cfg.AgentTimeout.String(), "live_attempts", len(s.store.LiveJobs(id)))
			s.loseAgent(ctx, id, fmt.Sprintf("agent %s silent for more than %s", id, s.cfg.AgentTimeout))
		}
	}
}

// loseAgent ends the live attempts of the agent id, just declared lost, in
// the shards this server owns, as lost (fenced writes, I1), to be retried
// elsewhere if attempts remain. The agent, if it comes back, is told to
// kill what was replaced (I4).
func (s *Server) loseAgent(ctx context.Context, id, reason string) {
	s.metrics.agentsLost.Inc()
	for _, lj := range s.store.LiveJobs(id) {
		t := s.termOf(lj.ID)
		if t == nil {
			continue // its shard's owner decides for itself
		}
		if err := s.loseAttempt(ctx, t, id, lj.ID, reason); err != nil && !errors.Is(err, errNotOwner) {
			s.log.Warn("could not mark an attempt lost", "agent", id, "job", lj.ID, "shard", t.Shard, "epoch", t.Epoch(), "err", err)
		}
	}
}

// registeredAgents returns the IDs of the registered agents and of those
// with live attempts.
func (s *Server) registeredAgents() []string {
	ids := s.store.AgentsWithLive()
	for _, a := range s.store.Agents() {
		ids = append(ids, a.ID)
	}
	return ids
}

// Agents returns every agent this server knows, with its use and live
// attempts; an agent this server has not heard from is lost.
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
		for _, lj := range s.store.LiveJobs(id) {
			st.Running = append(st.Running, lj.Attempt)
			st.Used = st.Used.Add(lj.Resources)
		}
		out = append(out, st)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// shardOf returns the shard job id belongs to in this cluster.
func (s *Server) shardOf(id string) int { return shard.Of(id, s.Shards()) }
