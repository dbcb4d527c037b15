package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/schedule"
	"github.com/tandemhq/tandem/internal/shard"
	"github.com/tandemhq/tandem/internal/store"
)

// Schedules: the fenced schedule controller and the Go API the HTTP layer
// serves.
//
// A schedule belongs to one shard forever (a hash of its ID), and only that
// shard's owner writes it: every write is one etcd transaction fenced by the
// owner's epoch (I1) and guarded by the schedule record's mod revision. The
// controller (runSchedules, WhileOwning work) decides the nominal times of
// the schedules of the shards this server owns with schedule.Plan, from the
// stored cursor, the local clock, the schedule's live runs and buffered
// times, and commits each batch of decisions in one transaction: the new
// cursor, a run record per nominal time (or merged skip range), and the jobs
// the fires start (store.Fire). So a nominal time ends with exactly one
// record, and a fired one with exactly one job (I7):
//
//   - A decision takes effect only by its commit; an owner deposed between
//     Plan and commit writes nothing (its fence fails), and the new owner
//     decides the same times again from the stored cursor, never from its
//     clock.
//   - A commit needs the schedule record unchanged since it was read, and
//     every run and job key it creates absent: the same time cannot be
//     decided twice, by one owner or two.
//   - Nothing is decided before it is due by the local clock, held back by
//     how far it is known to run ahead of the other servers' clocks
//     (peerClocks). Clocks decide only when and how late (I5): a time less
//     than the grace late fires whatever happened, so a failover is never a
//     misfire.
//
// A new schedule's cursor is its creation time (by the creating owner's
// clock): times before it never fire on their own, even when Start is
// earlier; Backfill runs them on request. Buffered times (overlap
// buffer_one, buffer_all) live in the schedule record until they fire; their
// run record is written when they do (reason buffered).

// Limits of the schedule controller and API.
const (
	// fireBatch caps the decisions of one fire transaction: a fire costs
	// two operations and two comparisons (run record and job), so a batch
	// stays well under etcd's 128 per transaction, with room for pruning.
	fireBatch = 40
	// MaxBackfill caps the nominal times one Backfill may run.
	MaxBackfill = 1000
	// MaxNextTimes caps NextTimes.
	MaxNextTimes = 1000
	// scheduleIDPrefix starts every schedule ID, so schedule and job IDs
	// never look alike.
	scheduleIDPrefix = "s"
)

// Environment given to every run a schedule starts.
const (
	EnvScheduleID    = "TANDEM_SCHEDULE_ID"
	EnvNominalTime   = "TANDEM_NOMINAL_TIME"
	EnvIntervalStart = "TANDEM_INTERVAL_START"
	EnvIntervalEnd   = "TANDEM_INTERVAL_END"
)

// FirePoint names a point of the controller between planning a fire and
// committing it, where Config.FireHook is called (tests depose the owner
// there).
type FirePoint string

// Fire points, in the order a fire passes them.
const (
	// FirePlanned: Plan has decided; nothing is written yet.
	FirePlanned FirePoint = "planned"
	// FireKilled: the live runs a replace kills are killed; the fire is
	// not committed.
	FireKilled FirePoint = "killed"
	// FireCommit: the transaction is about to be sent, after the last
	// check that the term lasts: only the fence protects from here.
	FireCommit FirePoint = "commit"
	// FireCommitted: the transaction has committed.
	FireCommitted FirePoint = "committed"
)

// FireEvent is what Config.FireHook learns at a FirePoint.
type FireEvent struct {
	Point     FirePoint
	Schedule  string
	Shard     int
	Epoch     int64
	Decisions []schedule.Decision
}

// localNow is this server's wall clock: Config.Clock, or the local clock.
func (s *Server) localNow() time.Time {
	if s.cfg.Clock != nil {
		return s.cfg.Clock()
	}
	return time.Now()
}

// now is the schedule controller's clock: the local clock, held back by
// how far it is known to be ahead of the other servers' (peerClocks), so a
// server whose clock runs ahead does not fire early. It is never ahead of
// the local clock: nothing fires before its due time by the local clock
// either. Clocks decide only when and how late times fire, never whether
// a time is decided twice (I5, I7).
func (s *Server) now() time.Time {
	return s.localNow().Add(-s.clocks.correction(s.cfg.ScheduleGrace))
}

func (s *Server) fireHook(ev FireEvent) {
	if s.cfg.FireHook != nil {
		s.cfg.FireHook(ev)
	}
}

// SpecOf converts the API's schedule spec to internal/schedule's (the job
// is not part of it). The two types have the same fields; a test keeps them
// so.
func SpecOf(in tandem.ScheduleSpec) schedule.Spec {
	return schedule.Spec{
		Name: in.Name, Cron: slices.Clone(in.Cron), Every: in.Every, Anchor: in.Anchor, TZ: in.TZ,
		Start: in.Start, End: in.End, Jitter: in.Jitter,
		Overlap: schedule.Overlap(in.Overlap), Catchup: schedule.Catchup(in.Catchup),
		CatchupWindow: in.CatchupWindow, CatchupMax: in.CatchupMax,
		HistoryLimits: schedule.HistoryLimits{Fired: in.HistoryLimits.Fired, Skipped: in.HistoryLimits.Skipped},
		Paused:        in.Paused, PauseNote: in.PauseNote,
	}
}

// validateSchedule checks a spec and its job and returns the compiled
// timetable. The job is checked as the fires will start it, with the
// schedule's environment added.
// ValidateSchedule reports the first problem with spec as the server would
// (an EINVALID *tandem.Error), for the CLI to refuse bad input before it
// asks.
func ValidateSchedule(spec tandem.ScheduleSpec) error {
	_, err := validateSchedule(spec)
	return err
}

func validateSchedule(spec tandem.ScheduleSpec) (*schedule.Timetable, error) {
	tt, err := schedule.NewTimetable(SpecOf(spec))
	if err != nil {
		return nil, err
	}
	if spec.Workflow != nil {
		if len(spec.Job.Command) > 0 {
			return nil, tandem.Errorf(tandem.EINVALID, "invalid schedule: give a job or a workflow to start, not both")
		}
		if err := ValidateWorkflow(*spec.Workflow); err != nil {
			return nil, tandem.Errorf(tandem.ErrorCode(err), "invalid schedule: %s", tandem.ErrorMessage(err))
		}
		return tt, nil
	}
	job := runSpec(spec.Job, "", spec.Name, time.Unix(0, 0), time.Unix(0, 0), time.Unix(0, 0))
	if err := job.Validate(); err != nil {
		var te *tandem.Error
		if errors.As(err, &te) {
			return nil, tandem.Errorf(te.Code, "invalid schedule: job: %s", te.Message)
		}
		return nil, err
	}
	return tt, nil
}

// runSpec is the spec of the job a schedule starts for nominal time t,
// covering the interval (from, t].
func runSpec(js tandem.JobSpec, id, name string, t, from, to time.Time) tandem.JobSpec {
	if name == "" {
		name = id
	}
	suffix := "@" + t.UTC().Format(time.RFC3339)
	if len(name)+len(suffix) > tandem.MaxNameLen {
		name = name[:tandem.MaxNameLen-len(suffix)]
	}
	js.Name = name + suffix
	env := make(map[string]string, len(js.Env)+4)
	maps.Copy(env, js.Env)
	env[EnvScheduleID] = id
	env[EnvNominalTime] = t.UTC().Format(time.RFC3339Nano)
	env[EnvIntervalStart] = from.UTC().Format(time.RFC3339Nano)
	env[EnvIntervalEnd] = to.UTC().Format(time.RFC3339Nano)
	js.Env = env
	return js.WithDefaults()
}

// timetables caches compiled timetables by schedule ID and version (a
// cursor move does not change the spec; a user's change bumps the version).
type timetables struct {
	mu sync.Mutex
	m  map[string]ttEntry
}

type ttEntry struct {
	version int64
	created time.Time
	tt      *schedule.Timetable
	err     error
}

func (c *timetables) get(sch *tandem.Schedule) (*schedule.Timetable, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[sch.ID]; ok && e.version == sch.Version && e.created.Equal(sch.CreatedAt) {
		return e.tt, e.err
	}
	tt, err := schedule.NewTimetable(SpecOf(sch.ScheduleSpec))
	if c.m == nil {
		c.m = make(map[string]ttEntry)
	}
	c.m[sch.ID] = ttEntry{version: sch.Version, created: sch.CreatedAt, tt: tt, err: err}
	return tt, err
}

// ---- Clocks ----

// peerClocks estimates how far this server's clock is ahead of its peers'.
// An owner asks each live server for the time (the Date header of its
// /isActive answer, which is whole seconds: the peer's clock was at least
// Date when it answered, so local-minus-peer was at most the local time of
// receipt minus Date) at irregular intervals, and keeps for each peer the
// least of these upper bounds over recent samples, which tightens to the
// true offset as the samples fall at different points of a second.
//
// The correction is the upper median of {0 (this server)} and the peers'
// bounds: one server ahead of the others is held back to their time, while
// a peer whose clock is behind (or ahead) is outvoted when there are two
// others; with two servers, the peer is believed. It is never negative and
// at most the schedule grace, so a broken peer clock delays fires by at
// most that much. This is liveness and timing only (I5): safety rests on
// the cursor and the fence, never on a clock.
type peerClocks struct {
	mu    sync.Mutex
	peers map[string][]time.Duration // peer ID -> recent upper bounds of (local - peer), oldest first
	asked map[string]time.Time       // peer ID -> when it was last asked
}

const (
	clockSamples = 16
	clockTimeout = time.Second
)

// correction returns how far to hold the local clock back, at most limit
// (DefaultGrace when limit is not positive).
func (c *peerClocks) correction(limit time.Duration) time.Duration {
	if limit <= 0 {
		limit = schedule.DefaultGrace
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	bounds := []time.Duration{0}
	for _, samples := range c.peers {
		if len(samples) > 0 {
			bounds = append(bounds, slices.Min(samples))
		}
	}
	slices.Sort(bounds)
	return min(max(bounds[len(bounds)/2], 0), limit)
}

func (c *peerClocks) add(peer string, hi time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.peers == nil {
		c.peers = make(map[string][]time.Duration)
	}
	samples := append(c.peers[peer], hi)
	if len(samples) > clockSamples {
		samples = samples[len(samples)-clockSamples:]
	}
	c.peers[peer] = samples
}

// keep forgets the peers not in live.
func (c *peerClocks) keep(live map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.peers {
		if !live[id] {
			delete(c.peers, id)
		}
	}
	for id := range c.asked {
		if !live[id] {
			delete(c.asked, id)
		}
	}
}

// missing reports whether a live server other than self has no sample
// and was not asked in the last second.
func (c *peerClocks) missing(servers []tandem.ServerInfo, self string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, si := range servers {
		if si.ID != self && len(c.peers[si.ID]) == 0 && time.Since(c.asked[si.ID]) >= time.Second {
			return true
		}
	}
	return false
}

// noteAsked records that peer was just asked for its time.
func (c *peerClocks) noteAsked(peer string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.asked == nil {
		c.asked = make(map[string]time.Time)
	}
	c.asked[peer] = time.Now()
}

// sampleClocks asks every other live server for its time once.
func (s *Server) sampleClocks(ctx context.Context) {
	live := map[string]bool{}
	for _, si := range s.store.Servers() {
		if si.ID == s.cfg.ID || si.URL == "" {
			continue
		}
		live[si.ID] = true
		s.clocks.noteAsked(si.ID)
		rctx, cancel := context.WithTimeout(ctx, clockTimeout)
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, si.URL+"/isActive", nil)
		if err != nil {
			cancel()
			continue
		}
		resp, err := s.peerHC.Do(req)
		received := s.localNow()
		cancel()
		if err != nil {
			continue
		}
		resp.Body.Close()
		if date, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
			s.clocks.add(si.ID, received.Sub(date))
		}
	}
	s.clocks.keep(live)
}

// watchClocks samples the peers' clocks at irregular intervals (so samples
// fall at different points of a second), and at once when kicked (a server
// joined), until ctx ends.
func (s *Server) watchClocks(ctx context.Context, kick <-chan struct{}) {
	for {
		wait := 500*time.Millisecond + time.Duration(rand.Int64N(int64(time.Second)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-kick:
		}
		s.sampleClocks(ctx)
	}
}

// ---- The controller ----

// runSchedules fires the schedules of the shards this server owns, while it
// owns any (WhileOwning work). It wakes at the earliest due time of those
// schedules, on every change of the view (a schedule edited, a run ended)
// and of the terms held.
func (s *Server) runSchedules(ctx context.Context) {
	// Know the peers' clocks before the first fire of this ownership.
	s.sampleClocks(ctx)
	c := &schedController{s: s, memo: make(map[string]schedMemo), kick: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watchClocks(ctx, c.kick)
	}()
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		changed := s.store.Changed()
		terms := s.core.Changed()
		wait := c.pass(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-terms:
		case <-timer.C:
		}
	}
}

type schedController struct {
	s    *Server
	memo map[string]schedMemo
	kick chan struct{} // asks watchClocks to sample now
}

// schedMemo is what the controller last saw of a schedule: while the record,
// the number of live runs and the term are the same and its next due time
// has not come, Plan would decide nothing, so the pass skips it.
type schedMemo struct {
	rev   int64
	live  int
	epoch int64
	wake  time.Time // zero: no time left (or the spec cannot be compiled)
}

// idleWait bounds how long the controller sleeps with nothing due.
const idleWait = time.Minute

// pass looks at every schedule of the shards held and returns how long to
// wait before the next pass if nothing changes.
func (c *schedController) pass(ctx context.Context) time.Duration {
	s := c.s
	held := s.core.Held()
	if len(held) == 0 {
		return idleWait
	}
	terms := make(map[int]*ha.Term, len(held))
	for _, t := range held {
		terms[t.Shard] = t
	}
	// A server that joined since the last sample: ask for its clock soon.
	if s.clocks.missing(s.store.Servers(), s.cfg.ID) {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	revs := s.store.ScheduleRevs()
	for id := range c.memo {
		if _, ok := revs[id]; !ok {
			delete(c.memo, id)
		}
	}
	ids := slices.Sorted(maps.Keys(revs))
	wait := idleWait
	for _, id := range ids {
		if ctx.Err() != nil {
			return wait
		}
		t := terms[shard.Of(id, s.Shards())]
		if t == nil || t.Ended() != nil {
			continue // another server's schedule, or a term that just ended
		}
		now := s.now()
		m, seen := c.memo[id]
		if seen && m.rev == revs[id] && m.live == s.store.LiveRuns(id) && m.epoch == t.Epoch() &&
			(m.wake.IsZero() || now.Before(m.wake)) {
			if !m.wake.IsZero() {
				wait = min(wait, m.wake.Sub(now))
			}
			continue
		}
		m, err := s.fireSchedule(ctx, t, id)
		if err != nil {
			if ctx.Err() == nil && t.Ended() == nil && tandem.ErrorCode(err) != tandem.ENOTFOUND {
				s.log.Warn("schedule controller: could not fire", "schedule", id, "shard", t.Shard, "epoch", t.Epoch(), "err", err)
			}
			delete(c.memo, id)
			wait = min(wait, time.Second) // try again soon (liveness only)
			continue
		}
		c.memo[id] = m
		if !m.wake.IsZero() {
			wait = min(wait, m.wake.Sub(s.now()))
		}
	}
	return max(wait, time.Millisecond)
}

// fireSchedule decides and commits, in batches, every due nominal time of
// schedule id, and returns what it last saw of the schedule with nothing
// left to do, and when the next time is due (zero if none is left). It
// writes only for term t (I1); ErrFenced ends the term.
func (s *Server) fireSchedule(ctx context.Context, t *ha.Term, id string) (schedMemo, error) {
	conflicts := 0
	for {
		if t.Ended() != nil {
			return schedMemo{}, errNotOwner
		}
		st, err := s.store.ScheduleState(id)
		if err != nil {
			return schedMemo{}, err
		}
		sch := st.Schedule
		seen := schedMemo{rev: sch.Revision, live: len(st.Live), epoch: t.Epoch()}
		tt, err := s.timetables.get(sch)
		if err != nil {
			// A stored spec this binary cannot compile (edited by hand, or a
			// zone gone): leave it alone rather than guess, until it changes.
			s.log.Error("schedule cannot be compiled; not firing it", "schedule", id, "err", err)
			return seen, nil
		}
		in := schedule.PlanInput{Timetable: tt, ID: id, Cursor: sch.Cursor, Now: s.now(), Grace: s.cfg.ScheduleGrace,
			Live: len(st.Live), Buffered: sch.Buffered, Limit: fireBatch}
		res := schedule.Plan(in)
		ds := cutAtReplace(res.Decisions)
		cursor := res.Cursor
		if len(ds) < len(res.Decisions) {
			cursor = cursorAfter(sch.Cursor, ds)
		}
		prune := pruneRuns(tt.Spec().HistoryLimits, st.Runs, ds, store.MaxTxnOps-1-2*len(ds))
		if len(ds) == 0 && len(prune) == 0 && res.Done == sch.Done {
			seen.wake = res.Wake
			return seen, nil
		}
		ev := FireEvent{Schedule: id, Shard: t.Shard, Epoch: t.Epoch(), Decisions: ds}
		ev.Point = FirePlanned
		s.fireHook(ev)

		var replaced []string
		if len(ds) > 0 && ds[0].Outcome == schedule.Replace {
			// Kill the live runs first (the existing kill path, fenced like
			// every job write); if this owner is deposed before the fire
			// commits, the next owner finds no live run and simply fires.
			for _, jid := range st.Live {
				if _, err := s.store.Workflow(jid); err == nil {
					// A live workflow run is cancelled (its running
					// steps' jobs are killed by its controller).
					if _, err := s.CancelWorkflow(ctx, jid); err != nil && tandem.ErrorCode(err) != tandem.ENOTFOUND {
						return schedMemo{}, fmt.Errorf("replace: cancel run %s: %w", jid, err)
					}
					replaced = append(replaced, jid)
					continue
				}
				if _, err := s.Kill(ctx, jid); err != nil && tandem.ErrorCode(err) != tandem.ECONFLICT && tandem.ErrorCode(err) != tandem.ENOTFOUND {
					return schedMemo{}, fmt.Errorf("replace: kill run %s: %w", jid, err)
				}
				replaced = append(replaced, jid)
			}
			ev.Point = FireKilled
			s.fireHook(ev)
		}

		fi, err := s.buildFire(t, sch, tt, ds, cursor, res.Done, replaced)
		if err != nil {
			return schedMemo{}, err
		}
		fi.Rev, fi.Prune = sch.Revision, prune
		if t.Ended() != nil {
			return schedMemo{}, errNotOwner // I1: never write for a term that is over
		}
		ev.Point = FireCommit
		s.fireHook(ev)
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		_, err = s.store.Fire(wctx, t.Fence, fi)
		cancel()
		var conflict *store.ConflictError
		switch {
		case errors.Is(err, tandem.ErrFenced):
			s.log.Warn("schedule fire fenced: this server no longer owns the shard", "schedule", id, "shard", t.Shard, "epoch", t.Epoch())
			s.fenced(t)
			return schedMemo{}, err
		case errors.As(err, &conflict) && conflicts < 5:
			// The record changed (a user's edit) or a key was taken: let the
			// view catch up, then decide again from what is stored.
			conflicts++
			wctx, cancel := context.WithTimeout(ctx, writeTimeout)
			err := s.store.WaitRev(wctx, conflict.Rev)
			cancel()
			if err != nil {
				return schedMemo{}, err
			}
			s.ids.seed(s.store.LastJobID())
			continue
		case err != nil:
			return schedMemo{}, err
		}
		ev.Point = FireCommitted
		s.fireHook(ev)
		s.observeFires(fi)
		for _, d := range ds {
			s.log.Debug("schedule decided", "schedule", id, "nominal", d.Nominal, "through", d.Through, "outcome", d.Outcome,
				"reason", d.Reason, "shard", t.Shard, "epoch", t.Epoch())
		}
		if !res.More && len(ds) == len(res.Decisions) && len(prune) == 0 {
			// The record is ours now (a new revision): the memo does not
			// match it, so the next pass plans once more, cheaply.
			return schedMemo{wake: res.Wake}, nil
		}
		// More to decide (a batch was full, or a replace comes next), or
		// more to prune: go on from the new state.
	}
}

// cutAtReplace returns the decisions to commit together: a replace kills
// the runs live before it, so it must come first in its transaction (the
// runs started by earlier decisions are live once those commit).
func cutAtReplace(ds []schedule.Decision) []schedule.Decision {
	for i, d := range ds {
		if d.Outcome == schedule.Replace && i > 0 {
			return ds[:i]
		}
	}
	return ds
}

// cursorAfter is the cursor once ds are committed: the last time a
// non-released decision covers.
func cursorAfter(cursor time.Time, ds []schedule.Decision) time.Time {
	for _, d := range ds {
		if !d.Released {
			cursor = d.Through
		}
	}
	return cursor
}

// buildFire turns decisions into the records of one fire transaction.
func (s *Server) buildFire(t *ha.Term, sch *tandem.Schedule, tt *schedule.Timetable, ds []schedule.Decision, cursor time.Time, done bool, replaced []string) (*store.Fire, error) {
	committed := s.now().UTC()
	next := *sch
	next.Cursor, next.Done = cursor, done
	next.Buffered = slices.Clone(sch.Buffered)
	next.UpdatedEpoch, next.UpdatedBy = t.Epoch(), s.cfg.ID
	fi := &store.Fire{Schedule: &next}
	for _, d := range ds {
		run := tandem.ScheduleRun{ScheduleID: sch.ID, NominalTime: d.Nominal.UTC(), Count: 1, Detail: d.Detail,
			Due: d.Due.UTC(), Late: tandem.Duration(d.Late), CommittedAt: committed, Epoch: t.Epoch(), FiredBy: s.cfg.ID}
		switch d.Outcome {
		case schedule.Buffer:
			next.Buffered = append(next.Buffered, d.Nominal.UTC())
			continue
		case schedule.Skip:
			run.Outcome, run.Reason = tandem.OutcomeSkipped, string(d.Reason)
			if !d.Through.Equal(d.Nominal) {
				through := d.Through.UTC()
				run.Through = &through
				run.Count = countTimes(tt, d.Nominal, d.Through)
			}
		case schedule.Fire, schedule.Replace:
			run.Outcome = tandem.OutcomeFired
			if d.Outcome == schedule.Replace {
				run.Replaced = replaced
			}
			if d.Released {
				run.Reason = tandem.ReasonBuffered
				if i := slices.IndexFunc(next.Buffered, d.Nominal.Equal); i >= 0 {
					next.Buffered = slices.Delete(next.Buffered, i, i+1)
				}
			}
			if err := s.startRun(t, sch, tt, d.Nominal, fi, &run); err != nil {
				return nil, err
			}
		}
		fi.Runs = append(fi.Runs, store.RunRecord{Key: s.keys.Fire(sch.ID, d.Nominal, keys.RunScheduled), Run: run})
	}
	return fi, nil
}

// countTimes returns how many nominal times [from, through] holds (both
// are nominal times): arithmetic for an every schedule, so a skip range of
// a long pause costs nothing; counted for cron (whole minutes at most).
func countTimes(tt *schedule.Timetable, from, through time.Time) int {
	if every := tt.Spec().Every.Std(); every > 0 {
		return int(through.Sub(from)/every) + 1
	}
	n := 0
	for t, ok := from, true; ok && !t.After(through); t, ok = tt.Next(t) {
		n++
	}
	return n
}

// startRun adds to fi what schedule sch's run for nominal time at starts (a
// job, or a workflow run for a schedule of a workflow), in the schedule's
// shard, and names it in run.
func (s *Server) startRun(t *ha.Term, sch *tandem.Schedule, tt *schedule.Timetable, at time.Time, fi *store.Fire, run *tandem.ScheduleRun) error {
	from := at
	if p, ok := tt.Prev(at); ok {
		from = p
	}
	if sch.Workflow != nil {
		wf, err := s.scheduledWorkflow(t, sch, at, from)
		if err != nil {
			return err
		}
		run.WorkflowID = wf.ID
		fi.Workflows = append(fi.Workflows, wf)
		return nil
	}
	job, err := s.runJob(t, sch, at, from)
	if err != nil {
		return err
	}
	run.JobID = job.ID
	fi.Jobs = append(fi.Jobs, job)
	return nil
}

// runJob makes the job of schedule sch's run for nominal time at, covering
// (from, at], with an ID the schedule's shard's owner makes.
func (s *Server) runJob(t *ha.Term, sch *tandem.Schedule, at, from time.Time) (*tandem.Job, error) {
	now := time.Now().UTC()
	id, ok := s.ids.next(now, func(id string) bool { return shard.Of(id, s.Shards()) == sch.Shard })
	if !ok {
		return nil, tandem.Errorf(tandem.EUNAVAILABLE, "could not make a job ID in shard %d; retry", sch.Shard)
	}
	return &tandem.Job{
		ID: id, Shard: sch.Shard, JobSpec: runSpec(sch.Job, sch.ID, sch.Name, at, from, at), State: tandem.JobPending,
		CreatedAt: now, UpdatedAt: now, Epoch: t.Epoch(), AcceptedBy: s.cfg.ID, UpdatedEpoch: t.Epoch(), UpdatedBy: s.cfg.ID,
		ScheduleID: sch.ID, NominalTime: at.UTC(),
	}, nil
}

// pruneRuns returns the keys of the oldest run records beyond the history
// limits, counting the records about to be added, at most budget of them.
// Buffered times have no record yet; manual and backfilled runs count as
// fired.
func pruneRuns(lim schedule.HistoryLimits, runs []store.RunRecord, ds []schedule.Decision, budget int) []string {
	var fired, skipped int
	for _, d := range ds {
		switch d.Outcome {
		case schedule.Fire, schedule.Replace:
			fired++
		case schedule.Skip:
			skipped++
		}
	}
	for _, r := range runs {
		if r.Run.Outcome == tandem.OutcomeSkipped {
			skipped++
		} else {
			fired++
		}
	}
	var out []string
	for _, r := range runs { // oldest first
		if len(out) >= budget {
			break
		}
		switch {
		case r.Run.Outcome == tandem.OutcomeSkipped && skipped > lim.Skipped:
			skipped--
			out = append(out, r.Key)
		case r.Run.Outcome != tandem.OutcomeSkipped && fired > lim.Fired:
			fired--
			out = append(out, r.Key)
		}
	}
	return out
}

// observeFires counts a committed fire's records in the metrics.
func (s *Server) observeFires(fi *store.Fire) {
	now := s.now()
	for _, r := range fi.Runs {
		s.metrics.scheduleFires.WithLabelValues(string(r.Run.Outcome), r.Run.Reason).Add(float64(r.Run.Count))
		if r.Run.Outcome == tandem.OutcomeFired && r.Run.Reason != tandem.ReasonManual && r.Run.Reason != tandem.ReasonBackfill {
			s.metrics.fireLateness.Observe(now.Sub(r.Run.NominalTime).Seconds())
		}
	}
}

// ---- The Go API ----

// scheduleTerm returns the term of schedule id's shard, or ErrNotActive if
// this server does not own it (the API sends the caller to the owner).
func (s *Server) scheduleTerm(id string) (*ha.Term, error) {
	t := s.core.Term(shard.Of(id, s.Shards()))
	if t == nil {
		return nil, tandem.ErrNotActive
	}
	return t, nil
}

// CreateSchedule validates spec and stores a new schedule, fenced by the
// owner of its shard; any server that owns a shard creates schedules
// (ErrNotActive otherwise), giving each an ID in one of its shards, as for
// jobs. The schedule's cursor is the creation time by this server's clock:
// no nominal time at or before it fires on its own, even if Start is
// earlier (Backfill runs past times on request). The schedule is committed
// to etcd before CreateSchedule returns.
func (s *Server) CreateSchedule(ctx context.Context, spec tandem.ScheduleSpec) (*tandem.Schedule, error) {
	sch, _, err := s.CreateScheduleIdem(ctx, spec, "")
	return sch, err
}

// CreateScheduleIdem is CreateSchedule with a client's idempotency key (the
// API's Idempotency-Key): a retry with the same key and spec returns the
// schedule the first attempt made, created false, across servers and
// failovers (store.CreateScheduleIdem), instead of a second schedule that
// would fire every nominal time again.
func (s *Server) CreateScheduleIdem(ctx context.Context, spec tandem.ScheduleSpec, idemKey string) (*tandem.Schedule, bool, error) {
	if len(idemKey) > MaxIdempotencyKeyLen {
		return nil, false, tandem.Errorf(tandem.EINVALID, "Idempotency-Key is %d bytes, more than %d", len(idemKey), MaxIdempotencyKeyLen)
	}
	if _, err := validateSchedule(spec); err != nil {
		return nil, false, err
	}
	if spec.Workflow == nil {
		spec.Job = spec.Job.WithDefaults()
	}
	var got *tandem.Schedule
	var created bool
	err := s.createOwned(ctx, "schedule", scheduleIDPrefix, func(ctx context.Context, t *ha.Term, id string) error {
		now := s.now().UTC()
		sch := &tandem.Schedule{ID: id, ScheduleSpec: spec, Shard: t.Shard, Cursor: now, Version: 1,
			CreatedAt: now, UpdatedAt: now, Epoch: t.Epoch(), CreatedBy: s.cfg.ID, UpdatedEpoch: t.Epoch(), UpdatedBy: s.cfg.ID}
		prev, rev, isNew, err := s.store.CreateScheduleIdem(ctx, t.Fence, sch, idemKey, spec.Hash())
		switch {
		case err != nil:
			return err
		case !isNew:
			got = prev
			return nil
		}
		sch.Revision = rev
		got, created = sch, true
		s.log.Info("schedule created", "schedule", id, "shard", t.Shard, "epoch", t.Epoch())
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return got, created, nil
}

// PatchSchedule applies patch, a JSON merge patch of the spec (MergePatch),
// to schedule id, as UpdateSchedule does.
func (s *Server) PatchSchedule(ctx context.Context, id string, version int64, patch []byte) (*tandem.Schedule, error) {
	return s.UpdateSchedule(ctx, id, version, MergePatch(patch))
}

// GetSchedule returns schedule id from this server's view (any server
// answers), or an ENOTFOUND error.
func (s *Server) GetSchedule(id string) (*tandem.Schedule, error) { return s.store.Schedule(id) }

// ListSchedules returns every schedule from this server's view, by ID.
func (s *Server) ListSchedules() []*tandem.Schedule { return s.store.Schedules() }

// UpdateSchedule changes schedule id's spec with update, which gets a copy
// of the current spec to change (MergePatch makes one from a JSON merge
// patch). With version non-zero, the update is refused (ECONFLICT) unless
// the schedule is at that Version: no lost update between two users. The
// cursor stays where it is: times already decided stay decided, and times
// after the cursor follow the new spec (a new timing or policy applies
// from the next undecided time). Only the owner of the schedule's shard
// writes it (ErrNotActive elsewhere).
func (s *Server) UpdateSchedule(ctx context.Context, id string, version int64, update func(*tandem.ScheduleSpec) error) (*tandem.Schedule, error) {
	return s.changeSchedule(ctx, id, func(sch *tandem.Schedule) (bool, error) {
		if version != 0 && sch.Version != version {
			return false, tandem.Errorf(tandem.ECONFLICT, "schedule %s is at version %d, not %d: read it again", id, sch.Version, version)
		}
		spec := sch.ScheduleSpec
		spec.Cron = slices.Clone(spec.Cron)
		if err := update(&spec); err != nil {
			return false, err
		}
		if _, err := validateSchedule(spec); err != nil {
			return false, err
		}
		if spec.Workflow == nil {
			spec.Job = spec.Job.WithDefaults()
		}
		sch.ScheduleSpec = spec
		sch.Done = false // the controller finds out again (End may have moved)
		return true, nil
	})
}

// MergePatch returns an update for UpdateSchedule that applies patch, a
// JSON merge patch (RFC 7396) of the schedule's spec.
func MergePatch(patch []byte) func(*tandem.ScheduleSpec) error {
	return func(spec *tandem.ScheduleSpec) error {
		var p any
		if err := json.Unmarshal(patch, &p); err != nil {
			return tandem.Errorf(tandem.EINVALID, "invalid patch: %v", err)
		}
		if _, ok := p.(map[string]any); !ok {
			return tandem.Errorf(tandem.EINVALID, "invalid patch: want a JSON object")
		}
		cur, err := json.Marshal(spec)
		if err != nil {
			return err
		}
		var doc any
		if err := json.Unmarshal(cur, &doc); err != nil {
			return err
		}
		merged, err := json.Marshal(mergePatch(doc, p))
		if err != nil {
			return err
		}
		var out tandem.ScheduleSpec
		if err := json.Unmarshal(merged, &out); err != nil {
			return tandem.Errorf(tandem.EINVALID, "invalid patch: %v", err)
		}
		*spec = out
		return nil
	}
}

func mergePatch(doc, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	d, ok := doc.(map[string]any)
	if !ok {
		d = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(d, k)
		} else {
			d[k] = mergePatch(d[k], v)
		}
	}
	return d
}

// PauseSchedule pauses schedule id: every nominal time that falls due
// while it is paused is skipped (reason paused), and buffered times wait.
// Pausing a paused schedule only changes its note.
func (s *Server) PauseSchedule(ctx context.Context, id, note string) (*tandem.Schedule, error) {
	if len(note) > schedule.MaxNoteLen {
		return nil, tandem.Errorf(tandem.EINVALID, "pause note is %d bytes, more than the limit of %d", len(note), schedule.MaxNoteLen)
	}
	return s.changeSchedule(ctx, id, func(sch *tandem.Schedule) (bool, error) {
		if sch.Paused && sch.PauseNote == note {
			return false, nil
		}
		sch.Paused, sch.PauseNote = true, note
		return true, nil
	})
}

// ResumeSchedule resumes schedule id. The times that fell due while it was
// paused were skipped; the next time after the cursor fires as usual.
func (s *Server) ResumeSchedule(ctx context.Context, id string) (*tandem.Schedule, error) {
	return s.changeSchedule(ctx, id, func(sch *tandem.Schedule) (bool, error) {
		if !sch.Paused {
			return false, nil
		}
		sch.Paused, sch.PauseNote = false, ""
		return true, nil
	})
}

// changeSchedule applies a user's change to schedule id and writes it,
// fenced by the owner of its shard and guarded by the record's revision,
// reading again when the controller moved the cursor meanwhile. fn returns
// false to write nothing.
func (s *Server) changeSchedule(ctx context.Context, id string, fn func(*tandem.Schedule) (bool, error)) (*tandem.Schedule, error) {
	t, err := s.scheduleTerm(id)
	if err != nil {
		return nil, err
	}
	for try := 0; ; try++ {
		if t.Ended() != nil {
			return nil, tandem.ErrNotActive
		}
		sch, err := s.store.Schedule(id)
		if err != nil {
			return nil, err
		}
		write, err := fn(sch)
		if err != nil || !write {
			return sch, err
		}
		now := s.now().UTC()
		sch.Version++
		sch.UpdatedAt, sch.UpdatedEpoch, sch.UpdatedBy = now, t.Epoch(), s.cfg.ID
		rev, err := s.commitSchedule(ctx, t, &store.Fire{Schedule: sch, Rev: sch.Revision}, try)
		if errors.Is(err, errRetry) {
			continue
		}
		if err != nil {
			return nil, err
		}
		sch.Revision = rev
		return sch, nil
	}
}

// errRetry means the record changed under a user's write: read it again.
var errRetry = errors.New("retry")

// commitSchedule commits a user's write for term t, mapping the store's
// errors: fenced ends the term; a conflict waits for the view and asks for
// a retry (errRetry), up to a few times.
func (s *Server) commitSchedule(ctx context.Context, t *ha.Term, fi *store.Fire, try int) (int64, error) {
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	rev, err := s.store.Fire(wctx, t.Fence, fi)
	var conflict *store.ConflictError
	switch {
	case err == nil:
		return rev, nil
	case errors.Is(err, tandem.ErrFenced):
		s.fenced(t)
		return 0, err
	case errors.As(err, &conflict) && try < 5:
		if err := s.store.WaitRev(wctx, conflict.Rev); err != nil {
			return 0, err
		}
		s.ids.seed(s.store.LastJobID())
		return 0, errRetry
	case errors.As(err, &conflict):
		return 0, tandem.Errorf(tandem.ECONFLICT, "schedule %s keeps changing; retry", fi.Schedule.ID)
	default:
		var te *tandem.Error
		if !errors.As(err, &te) {
			return 0, tandem.Errorf(tandem.EUNAVAILABLE, "could not commit to etcd: %v", err)
		}
		return 0, err
	}
}

// DeleteSchedule deletes schedule id and its run records. The jobs it
// started are ordinary jobs and stay. Only the owner of its shard deletes it.
func (s *Server) DeleteSchedule(ctx context.Context, id string) error {
	t, err := s.scheduleTerm(id)
	if err != nil {
		return err
	}
	for try := 0; ; try++ {
		if t.Ended() != nil {
			return tandem.ErrNotActive
		}
		sch, err := s.store.Schedule(id)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		err = s.store.DeleteSchedule(wctx, t.Fence, id, sch.Revision)
		var conflict *store.ConflictError
		switch {
		case err == nil:
			cancel()
			s.log.Info("schedule deleted", "schedule", id, "shard", t.Shard, "epoch", t.Epoch())
			return nil
		case errors.Is(err, tandem.ErrFenced):
			cancel()
			s.fenced(t)
			return err
		case errors.As(err, &conflict) && try < 5:
			err = s.store.WaitRev(wctx, conflict.Rev)
			cancel()
			if err != nil {
				return err
			}
		default:
			cancel()
			return err
		}
	}
}

// TriggerSchedule starts an extra run of schedule id now, outside its
// nominal times: its record has reason manual and the trigger time as its
// nominal time (key fires/<id>/<time>~manual), and it does not move the
// cursor. It runs even while the schedule is paused, and counts as a live
// run for the overlap policy of the times that follow. The record is
// rewritten in the same transaction, so a fire the controller decided
// without this run in view cannot commit.
func (s *Server) TriggerSchedule(ctx context.Context, id string) (*tandem.ScheduleRun, error) {
	runs, err := s.extraRuns(ctx, id, keys.RunManual, tandem.ReasonManual, func(*tandem.Schedule, *schedule.Timetable) ([]time.Time, error) {
		return []time.Time{s.now().UTC()}, nil
	})
	if err != nil {
		return nil, err
	}
	return &runs[0], nil
}

// BackfillSchedule runs every nominal time of schedule id in [from, to],
// each once (reason backfill, key fires/<id>/<time>~backfill): all of them,
// whatever the catch-up and overlap policies and pause say, since an
// operator asked for exactly these times. A time already backfilled is not
// run again (the call is idempotent), as long as its record is kept (see
// the history limits). The range must end at or before the cursor: later
// times belong to the controller. At most MaxBackfill times per call. It
// returns the runs it started.
func (s *Server) BackfillSchedule(ctx context.Context, id string, from, to time.Time) ([]tandem.ScheduleRun, error) {
	if to.Before(from) {
		return nil, tandem.Errorf(tandem.EINVALID, "backfill: to %s is before from %s", to.Format(time.RFC3339), from.Format(time.RFC3339))
	}
	return s.extraRuns(ctx, id, keys.RunBackfill, tandem.ReasonBackfill, func(sch *tandem.Schedule, tt *schedule.Timetable) ([]time.Time, error) {
		if to.After(sch.Cursor) {
			return nil, tandem.Errorf(tandem.EINVALID, "backfill: to %s is after the schedule's cursor %s: later times are still to be decided by the schedule itself",
				to.UTC().Format(time.RFC3339Nano), sch.Cursor.UTC().Format(time.RFC3339Nano))
		}
		times := tt.List(from.Add(-1), to, MaxBackfill+1)
		if len(times) > MaxBackfill {
			return nil, tandem.Errorf(tandem.EINVALID, "backfill: more than %d nominal times in the range; backfill a shorter range at a time", MaxBackfill)
		}
		var out []time.Time
		for _, t := range times {
			if !s.store.HasRun(id, s.keys.Fire(id, t, keys.RunBackfill)) {
				out = append(out, t.UTC())
			}
		}
		return out, nil
	})
}

// extraRuns commits runs of schedule id outside the controller's decisions
// (manual and backfilled ones), in batches of fireBatch, each fenced by the
// owner of its shard and guarded by the schedule record.
func (s *Server) extraRuns(ctx context.Context, id, kind, reason string, pick func(*tandem.Schedule, *schedule.Timetable) ([]time.Time, error)) ([]tandem.ScheduleRun, error) {
	t, err := s.scheduleTerm(id)
	if err != nil {
		return nil, err
	}
	var out []tandem.ScheduleRun
	for try := 0; ; try++ {
		if t.Ended() != nil {
			return out, tandem.ErrNotActive
		}
		sch, err := s.store.Schedule(id)
		if err != nil {
			return out, err
		}
		tt, err := s.timetables.get(sch)
		if err != nil {
			return out, fmt.Errorf("schedule %s cannot be compiled: %w", id, err)
		}
		times, err := pick(sch, tt)
		if err != nil || len(times) == 0 {
			return out, err
		}
		times = times[:min(len(times), fireBatch)]
		next := *sch
		next.UpdatedEpoch, next.UpdatedBy = t.Epoch(), s.cfg.ID
		fi := &store.Fire{Schedule: &next, Rev: sch.Revision}
		committed := s.now().UTC()
		for _, at := range times {
			run := tandem.ScheduleRun{ScheduleID: id, NominalTime: at, Count: 1, Outcome: tandem.OutcomeFired, Reason: reason,
				Due: at, CommittedAt: committed, Epoch: t.Epoch(), FiredBy: s.cfg.ID}
			if err := s.startRun(t, sch, tt, at, fi, &run); err != nil {
				return out, err
			}
			fi.Runs = append(fi.Runs, store.RunRecord{Key: s.keys.Fire(id, at, kind), Run: run})
		}
		_, err = s.commitSchedule(ctx, t, fi, try)
		if errors.Is(err, errRetry) {
			continue
		}
		if err != nil {
			return out, err
		}
		s.observeFires(fi)
		for _, r := range fi.Runs {
			out = append(out, r.Run)
		}
		if kind == keys.RunManual {
			return out, nil
		}
		try = 0 // the next batch
	}
}

// ScheduleRuns returns schedule id's run records that match f, oldest
// first, each with its job's state; buffered times, which have no record
// until they fire, are listed as outcome buffered. Any server answers from
// its view.
func (s *Server) ScheduleRuns(id string, f tandem.ScheduleRunFilter) ([]tandem.ScheduleRun, error) {
	sch, err := s.store.Schedule(id)
	if err != nil {
		return nil, err
	}
	all := s.store.Runs(id)
	for _, b := range sch.Buffered {
		all = append(all, tandem.ScheduleRun{ScheduleID: id, NominalTime: b, Count: 1, Outcome: tandem.OutcomeBuffered,
			Detail: "a run is live: starts when none is"})
	}
	sort.SliceStable(all, func(a, b int) bool { return all[a].NominalTime.Before(all[b].NominalTime) })
	out := all[:0]
	for _, r := range all {
		last := r.NominalTime
		if r.Through != nil {
			last = *r.Through
		}
		switch {
		case f.Outcome != "" && r.Outcome != f.Outcome:
		case !f.Since.IsZero() && last.Before(f.Since):
		case !f.Until.IsZero() && r.NominalTime.After(f.Until):
		default:
			out = append(out, r)
		}
	}
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[len(out)-f.Limit:]
	}
	return out, nil
}

// NextTimes returns up to n of schedule id's nominal times after its cursor
// (the times still to be decided), in order; n is capped at MaxNextTimes.
func (s *Server) NextTimes(id string, n int) ([]time.Time, error) {
	sch, err := s.store.Schedule(id)
	if err != nil {
		return nil, err
	}
	tt, err := s.timetables.get(sch)
	if err != nil {
		return nil, err
	}
	n = min(max(n, 1), MaxNextTimes)
	out := tt.List(sch.Cursor, time.Unix(1<<62, 0), n)
	for i := range out {
		out[i] = out[i].UTC()
	}
	return out, nil
}
