package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/ha"
)

// command is a request for the run goroutine, which owns every change of
// ownership.
type command struct {
	do    func(ctx context.Context) error
	reply chan error
}

// exec runs fn on the run goroutine and waits for its result.
func (s *Server) exec(ctx context.Context, fn func(ctx context.Context) error) error {
	c := command{do: fn, reply: make(chan error, 1)}
	select {
	case s.cmds <- c:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stopped:
		return tandem.Errorf(tandem.EUNAVAILABLE, "server %s is stopping", s.cfg.ID)
	}
	select {
	case err := <-c.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// poke asks the run goroutine to look at the cluster again.
func (s *Server) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run is the ownership state machine. It wakes on every change of the
// cluster view or of the terms held, on loss of the etcd session and on
// commands, and each time decides again what this server should own. Every
// etcd call it makes is bounded, so commands are always answered.
func (s *Server) run(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		changed := s.store.Changed()
		terms := s.core.Changed()
		s.mu.RLock()
		sess := s.session
		s.mu.RUnlock()
		var sessDone <-chan struct{}
		if sess != nil {
			sessDone = sess.Done()
		}

		wait := s.step(ctx)
		if !retry.Stop() {
			select {
			case <-retry.C:
			default:
			}
		}
		retry.Reset(wait)

		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-terms:
		case <-sessDone:
			s.sessionLost(sess)
		case c := <-s.cmds:
			c.reply <- c.do(ctx)
		case <-s.wake:
		case <-retry.C:
		}
	}
}

// idle is how long step waits when nothing but a change can make it act.
const idle = time.Hour

// step compares what this server owns with what the cluster view says and
// acts on the difference. It returns how long to wait before looking again
// when nothing changes.
func (s *Server) step(ctx context.Context) time.Duration {
	s.mu.RLock()
	sess := s.session
	s.mu.RUnlock()
	if sess == nil {
		return s.renewSession(ctx)
	}
	s.checkTerms()
	wait := s.settle()
	if s.Shards() == 1 {
		return min(wait, s.stepOne(ctx))
	}
	return min(wait, s.stepMany(ctx))
}

// checkTerms ends every term the view shows lost (I1): the view has passed
// the term's epoch and the owner key is someone else's, or nobody's.
func (s *Server) checkTerms() {
	rev := s.store.Rev()
	for _, t := range s.core.Held() {
		if rev < t.Epoch() {
			continue // the view has not caught up with our own win yet
		}
		if o := s.store.Owner(t.Shard); o == nil || o.Epoch != t.Epoch() {
			s.endTerm(t, ha.ErrDeposed, downDeposed)
		}
	}
}

// settle marks this server ready once it has been up its settle time, and
// returns how long until then (idle once ready).
func (s *Server) settle() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ready {
		return idle
	}
	if left := s.cfg.Settle - time.Since(s.joined); left > 0 {
		return left
	}
	s.ready = true
	if s.Shards() > 1 {
		s.log.Info("ready: counts in the shards' target map", "settle", s.cfg.Settle.String())
	}
	s.registrationChanged()
	return idle
}

// stepOne is the active/standby case: one shard, whose owner is the active.
// In automatic mode every standby campaigns as soon as the leader key is
// free, except while a hand-off to another server is under way, or during a
// sit-out after an operator made this server standby.
func (s *Server) stepOne(ctx context.Context) time.Duration {
	if s.core.Term(0) != nil {
		return idle
	}
	s.mu.RLock()
	sitOut, draining := s.sitOutUntil, s.draining
	s.mu.RUnlock()
	if leader := s.store.Owner(0); leader != nil {
		if !sitOut.IsZero() && leader.ID != s.cfg.ID {
			s.mu.Lock()
			s.sitOutUntil = time.Time{} // someone else took over: rejoin the election
			s.mu.Unlock()
		}
		return idle
	}
	handoff := s.store.Handoff(0)
	toMe := handoff != nil && handoff.To == s.cfg.ID
	if !toMe {
		if !s.cfg.AutoFailover || draining || handoff != nil {
			return idle // a hand-off to another server is under way: its lease bounds the wait
		}
		if now := time.Now(); now.Before(sitOut) {
			return sitOut.Sub(now)
		}
	}
	cause := ""
	if toMe {
		cause = handoffCause(handoff)
	}
	if err := s.campaign(ctx, 0, handoff, cause); err != nil {
		s.log.Warn("campaign failed", "err", err)
		return 250 * time.Millisecond
	}
	return idle
}

func handoffCause(h *election.Handoff) string {
	if h.Reason != "" {
		return h.Reason
	}
	return tandem.CauseHandoff
}

// campaign makes one attempt to own shard and, if it wins, completes the
// transition. cause overrides the cause recorded for the new term.
func (s *Server) campaign(ctx context.Context, shard int, handoff *election.Handoff, cause string) error {
	s.mu.RLock()
	sess := s.session
	s.mu.RUnlock()
	if sess == nil {
		return errors.New("no etcd session")
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL)
	defer cancel()
	fence, won, err := s.cand.TryAcquire(cctx, s.keys.Shard(shard, s.Shards()), sess.Lease(), handoff)
	if err != nil || !won {
		return err
	}
	s.becomeOwner(ctx, shard, fence, time.Now(), cause)
	return nil
}

// claim is one shard campaignMany tries to take: the hand-off to this
// server it saw (nil: the shard is free) and the cause to record, if it
// overrides the one the history gives.
type claim struct {
	shard   int
	handoff *election.Handoff
	cause   string
}

// campaignMany makes one attempt to own every shard of claims in one
// transaction (election.AcquireEach: each claim won or lost on its own), so
// the shards handed to this server, and the free ones it targets, are taken
// at one revision however many they are: a drain or a rebalance leaves each
// shard free for the hand-off's transaction and this one, not for one
// transaction per shard taken before it. Each shard won begins its own term
// under its own fence, with its own failover event, as a single campaign
// does.
func (s *Server) campaignMany(ctx context.Context, claims []claim) error {
	if len(claims) == 0 {
		return nil
	}
	s.mu.RLock()
	sess := s.session
	s.mu.RUnlock()
	if sess == nil {
		return errors.New("no etcd session")
	}
	cs := make([]election.Claim, len(claims))
	for i, c := range claims {
		cs[i] = election.Claim{Keys: s.keys.Shard(c.shard, s.Shards()), Handoff: c.handoff}
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL)
	fences, err := s.cand.AcquireEach(cctx, sess.Lease(), cs...)
	cancel()
	wonAt := time.Now()
	for i, f := range fences {
		if !f.IsZero() {
			s.becomeOwner(ctx, claims[i].shard, f, wonAt, claims[i].cause)
		}
	}
	return err
}

// becomeOwner finishes a won campaign: catch the view up to the revision at
// which the shard was won (hot standby: nothing else to load), then begin
// the term, which starts the owner's work. The failover is recorded in the
// history by the term's own work.
func (s *Server) becomeOwner(ctx context.Context, shard int, fence election.Fence, wonAt time.Time, cause string) {
	log := s.log.With("shard", shard, "epoch", fence.Rev)
	wctx, cancel := context.WithTimeout(ctx, 2*s.cfg.LeaseTTL)
	err := s.store.WaitRev(wctx, fence.Rev)
	cancel()
	if err != nil {
		log.Error("won the shard but could not catch up; resigning", "err", err)
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, _ = s.cand.Resign(rctx, tandem.CauseFenced, election.Move{Keys: s.keys.Shard(shard, s.Shards()), Fence: fence})
		cancel()
		return
	}
	if o := s.store.Owner(shard); o == nil || o.Epoch != fence.Rev {
		log.Warn("won the shard but lost its key before serving")
		return
	}
	s.ids.seed(s.store.LastJobID())
	s.mu.Lock()
	s.sitOutUntil = time.Time{}
	s.mu.Unlock()
	ev := s.failoverEvent(shard, fence.Rev, wonAt, time.Now(), cause)
	s.history.stash(fence, ev)
	if _, err := s.core.Begin(shard, fence); err != nil {
		s.history.done(fence)
		log.Error("could not begin the term", "err", err)
		return
	}
	msg := "took the shard"
	if s.Shards() == 1 {
		msg = "became active"
	}
	log.Info(msg, "cause", ev.Cause, "prev", ev.PrevID, "prev_epoch", ev.PrevEpoch,
		"detection_s", fmtDur(ev.DetectionS), "election_s", fmtDur(ev.ElectionS), "transition_s", fmtDur(ev.TransitionS))
	s.metrics.observeFailover(ev)
}

// failoverEvent explains the term of shard that starts at epoch (I6): why
// the last owner went away and how long detection, election and transition
// took, as far as this server saw them.
func (s *Server) failoverEvent(shard int, epoch int64, wonAt, servingAt time.Time, cause string) tandem.FailoverEvent {
	ev := tandem.FailoverEvent{Shard: shard, Epoch: epoch, ActiveID: s.cfg.ID, ActiveURL: s.cfg.URL, Time: servingAt,
		TransitionS: secs(servingAt.Sub(wonAt))}
	gone := s.store.LastGone(shard)
	resign := s.store.Resignation(shard)
	switch {
	case gone != nil:
		ev.PrevID, ev.PrevEpoch = gone.Prev.ID, gone.Prev.Epoch
		ev.ElectionS = secs(wonAt.Sub(gone.At))
		if resign != nil && resign.Epoch == gone.Prev.Epoch {
			// Resigned, handed off, or deposed as dead: the record says when
			// (for a dead owner, when it was last seen alive).
			ev.Cause, ev.Detection = resign.Reason, resign.Detection
			ev.DetectionS = secs(gone.At.Sub(resign.At))
		} else {
			ev.Cause = tandem.CauseLeaseExpired
			if seen, ok := s.probe.lastSeen(gone.Prev.ID); ok && gone.At.Sub(seen) < 10*s.cfg.LeaseTTL {
				ev.DetectionS = secs(gone.At.Sub(seen))
			}
		}
	default:
		// The owner key was already gone when this server started watching.
		ev.Cause = tandem.CauseInitial
		var last *tandem.FailoverEvent
		for _, e := range s.store.Events() {
			if e.Shard == shard {
				last = &e
			}
		}
		if last != nil {
			ev.PrevID, ev.PrevEpoch, ev.Cause = last.ActiveID, last.Epoch, tandem.CauseLeaseExpired
			if resign != nil && resign.Epoch == last.Epoch {
				ev.Cause = resign.Reason
			}
		}
	}
	if cause != "" {
		ev.Cause = cause
		if cause == tandem.CauseManual {
			ev.ElectionS = nil // an operator chose when; that is not election time
		}
	}
	return ev
}

// Reasons a term ends, used in logs and as a metric label.
const (
	downDeposed     = "deposed"      // the view shows the owner key is no longer ours
	downFenced      = "fenced"       // etcd rejected a write guarded by our fence
	downSessionLost = "session_lost" // our lease ended, and the owner keys with it
	downResigned    = "resigned"     // we gave ownership up on purpose
	downHandedOff   = "handed_off"   // we handed the shard to another server
)

// endTerm stops acting as owner under term t, at once. It is safe to call
// from any goroutine and more than once.
func (s *Server) endTerm(t *ha.Term, cause error, reason string) {
	if !s.core.End(t, cause) {
		return
	}
	shard, epoch := t.Shard, t.Epoch()
	s.metrics.stepDowns.WithLabelValues(reason).Inc()
	msg := "gave up the shard"
	if s.Shards() == 1 {
		msg = "stepped down to standby"
	}
	if reason == downHandedOff {
		s.log.Info(msg, "shard", shard, "epoch", epoch, "reason", reason)
	} else {
		s.log.Warn(msg, "shard", shard, "epoch", epoch, "reason", reason)
	}
	s.poke()
}

// fenced is called when etcd rejected a write guarded by term t (I1): a
// newer owner exists, so this server stops acting as owner immediately and
// never retries the write as owner.
func (s *Server) fenced(t *ha.Term) {
	s.metrics.fencedWrites.Inc()
	s.endTerm(t, ha.ErrFenced, downFenced)
}

// resignAll gives up the keys of terms that have just ended, recording
// reason, after their failover events are in the history.
func (s *Server) resignAll(ctx context.Context, terms []*ha.Term, reason string) {
	if len(terms) == 0 {
		return
	}
	moves := make([]election.Move, 0, len(terms))
	for _, t := range terms {
		s.history.waitTerm(ctx, t.Fence)
		moves = append(moves, election.Move{Keys: s.keys.Shard(t.Shard, s.Shards()), Fence: t.Fence})
	}
	done, err := s.cand.Resign(ctx, reason, moves...)
	if err != nil {
		s.log.Warn("resign failed; the lease will expire instead", "shards", len(terms), "err", err)
		return
	}
	n := 0
	for _, ok := range done {
		if ok {
			n++
		}
	}
	s.log.Info("resigned", "reason", reason, "shards", n)
}

// sessionLost handles the end of this server's etcd lease (it expired during
// a pause or partition, or etcd was unreachable for longer than the TTL).
// Everything bound to the lease is gone, owner keys included, so every term
// ends at once, before anything else; the next step makes a new session.
func (s *Server) sessionLost(sess *concurrency.Session) {
	s.mu.Lock()
	if s.session != sess {
		s.mu.Unlock()
		return
	}
	s.session = nil
	// Back with a new session, this server settles again before the target
	// map counts it, so one that pauses again and again does not pull
	// shards back and forth.
	s.ready = s.cfg.Settle == 0
	s.mu.Unlock()
	for _, t := range s.core.EndAll(ha.ErrSessionLost) {
		s.metrics.stepDowns.WithLabelValues(downSessionLost).Inc()
		s.log.Warn("lost the shard with the etcd session", "shard", t.Shard, "epoch", t.Epoch())
	}
	s.log.Warn("etcd session lost; creating a new one")
}

// renewSession tries once, briefly, to make a new session; it returns how
// long to wait before the next try.
func (s *Server) renewSession(ctx context.Context) time.Duration {
	sctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL)
	err := s.newSession(sctx, false)
	cancel()
	if err == nil {
		s.sessRetry = 0
		s.log.Info("etcd session re-established", "lease", s.Lease())
		return 0
	}
	s.sessRetry = min(max(2*s.sessRetry, 100*time.Millisecond), 2*time.Second)
	s.log.Warn("new etcd session failed; retrying", "err", err, "in", s.sessRetry.String())
	return s.sessRetry
}

// history holds the failover events of terms about to begin, for the
// term's own work to record, and tells who waits when it has. Terms are
// known by their fence, not their epoch: shards won in one transaction
// (election.AcquireEach) share an epoch.
type history struct {
	mu       sync.Mutex
	pending  map[election.Fence]tandem.FailoverEvent
	recorded map[election.Fence]chan struct{}
}

func (h *history) stash(f election.Fence, ev tandem.FailoverEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending == nil {
		h.pending, h.recorded = make(map[election.Fence]tandem.FailoverEvent), make(map[election.Fence]chan struct{})
	}
	h.pending[f] = ev
	h.recorded[f] = make(chan struct{})
}

func (h *history) take(f election.Fence) (tandem.FailoverEvent, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ev, ok := h.pending[f]
	delete(h.pending, f)
	return ev, ok
}

// done marks f's event recorded (or given up).
func (h *history) done(f election.Fence) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.pending, f)
	if ch := h.recorded[f]; ch != nil {
		close(ch)
		delete(h.recorded, f)
	}
}

// waitTerm waits (briefly) until the event of the term fenced by f is in
// etcd, so a term ended on purpose right after it began still shows in the
// history.
func (h *history) waitTerm(ctx context.Context, f election.Fence) {
	h.mu.Lock()
	ch := h.recorded[f]
	h.mu.Unlock()
	wait(ctx, ch)
}

// waitRecorded is waitTerm for every term at epoch (one shard's, in a
// cluster of one shard).
func (h *history) waitRecorded(ctx context.Context, epoch int64) {
	h.mu.Lock()
	var chs []chan struct{}
	for f, ch := range h.recorded {
		if f.Rev == epoch {
			chs = append(chs, ch)
		}
	}
	h.mu.Unlock()
	for _, ch := range chs {
		wait(ctx, ch)
	}
}

func wait(ctx context.Context, ch chan struct{}) {
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
}

// recordTerm is the work of every term that records its failover event
// (I6). It keeps trying until the event is recorded or the term is over
// (then the fence rejects it anyway). Each try is not bound to the term, so
// a term ended on purpose right now still gets its record.
func (s *Server) recordTerm(t *ha.Term) {
	ev, ok := s.history.take(t.Fence)
	defer s.history.done(t.Fence)
	if !ok {
		return
	}
	log := s.log.With("shard", t.Shard, "epoch", t.Epoch())
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.store.AppendEvent(rctx, t.Fence, ev)
		cancel()
		switch {
		case err == nil:
			return
		case errors.Is(err, tandem.ErrFenced):
			s.fenced(t)
			return
		}
		log.Warn("could not record the failover event; retrying", "err", err, "in", wait.String())
		select {
		case <-t.Done():
			return
		case <-time.After(wait):
		}
	}
}

func secs(d time.Duration) *float64 {
	if d < 0 {
		d = 0
	}
	v := d.Seconds()
	return &v
}

func fmtDur(p *float64) string {
	if p == nil {
		return "unknown"
	}
	return time.Duration(*p * float64(time.Second)).Round(time.Microsecond).String()
}
