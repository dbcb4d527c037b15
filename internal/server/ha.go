package server

import (
	"context"
	"errors"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
)

// command is a request for the run goroutine, which owns HA transitions.
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

// run is the HA state machine. It wakes on every change of the cluster view,
// on loss of the etcd session and on commands, and each time decides again
// what this server should be.
func (s *Server) run(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		changed := s.store.Changed()
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
		case <-sessDone:
			s.sessionLost(ctx)
		case c := <-s.cmds:
			c.reply <- c.do(ctx)
		case <-retry.C:
		}
	}
}

// step compares what this server is with what the cluster view says and acts
// on the difference. It returns how long to wait before looking again when
// nothing changes.
func (s *Server) step(ctx context.Context) time.Duration {
	idle := time.Hour
	s.mu.RLock()
	state, epoch, sitOut := s.state, s.epoch, s.sitOutUntil
	s.mu.RUnlock()
	leader := s.store.Leader()

	if state == tandem.StateActive {
		// I1: the view has passed our epoch and the leader key is someone
		// else's (or nobody's): we are deposed. Stop acting as active now.
		if s.store.Rev() >= epoch && (leader == nil || leader.Epoch != epoch) {
			s.stepDown(downDeposed, epoch)
		}
		return idle
	}
	if state != tandem.StateStandby || leader != nil {
		if leader != nil && !sitOut.IsZero() && leader.ID != s.cfg.ID {
			s.mu.Lock()
			s.sitOutUntil = time.Time{} // someone else took over: rejoin the election
			s.mu.Unlock()
		}
		return idle
	}
	handoff := s.store.Handoff()
	toMe := handoff != nil && handoff.To == s.cfg.ID
	if !toMe {
		if !s.cfg.AutoFailover {
			return idle
		}
		if handoff != nil {
			return idle // a hand-off to another server is under way; its lease bounds the wait
		}
		if now := time.Now(); now.Before(sitOut) {
			return sitOut.Sub(now)
		}
	}
	cause := ""
	if toMe {
		cause = tandem.CauseHandoff
	}
	if err := s.campaign(ctx, handoff, cause); err != nil {
		s.log.Warn("campaign failed", "err", err)
		return 250 * time.Millisecond
	}
	return idle
}

// campaign makes one attempt to become active and, if it wins, completes the
// transition. cause overrides the cause recorded for the new term.
func (s *Server) campaign(ctx context.Context, handoff *election.Handoff, cause string) error {
	s.mu.RLock()
	sess := s.session
	s.mu.RUnlock()
	if sess == nil {
		return errors.New("no etcd session")
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL)
	defer cancel()
	epoch, won, err := s.elect.TryAcquire(cctx, sess.Lease(), handoff)
	if err != nil || !won {
		return err
	}
	s.becomeActive(ctx, epoch, time.Now(), cause)
	return nil
}

// becomeActive finishes a won election: catch the view up to the revision
// at which leadership was won (hot standby: nothing else to load), then
// serve writes. The failover is recorded in the HA history afterwards.
func (s *Server) becomeActive(ctx context.Context, epoch int64, wonAt time.Time, cause string) {
	log := s.log.With("epoch", epoch)
	wctx, cancel := context.WithTimeout(ctx, 2*s.cfg.LeaseTTL)
	err := s.store.WaitRev(wctx, epoch)
	cancel()
	if err != nil {
		log.Error("won the election but could not catch up; resigning", "err", err)
		s.resign(ctx, epoch, tandem.CauseFenced)
		return
	}
	if l := s.store.Leader(); l == nil || l.Epoch != epoch {
		log.Warn("won the election but lost the leader key before serving")
		return
	}
	s.ids.seed(s.store.LastJobID())
	actx, stop := context.WithCancel(context.Background())
	s.mu.Lock()
	s.state, s.epoch, s.activeCtx, s.stopActive = tandem.StateActive, epoch, actx, stop
	s.sitOutUntil = time.Time{}
	recorded := make(chan struct{})
	s.recorded = recorded
	s.mu.Unlock()
	servingAt := time.Now()
	s.metrics.setState(tandem.StateActive)
	// Work of the active, bound to this term: it stops the moment the term ends.
	s.agents.reset(s.store.Agents(), s.store.AgentsWithLive(), servingAt)
	s.waiting.reset()
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.schedule(actx, epoch) }()
	go func() { defer s.wg.Done(); s.watchAgents(actx, epoch) }()
	ev := s.failoverEvent(epoch, wonAt, servingAt, cause)
	log.Info("became active", "cause", ev.Cause, "prev", ev.PrevID, "prev_epoch", ev.PrevEpoch,
		"detection_s", fmtDur(ev.DetectionS), "election_s", fmtDur(ev.ElectionS), "transition_s", fmtDur(ev.TransitionS))
	s.metrics.observeFailover(ev)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(recorded)
		// I6: keep trying until the event is recorded or the term is over
		// (then the guard rejects it anyway). Each try is not bound to the
		// term, so a term ended on purpose right now still gets its record.
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.updateRegistration(rctx)
		cancel()
		for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := s.store.AppendEvent(rctx, ev)
			cancel()
			switch {
			case err == nil:
				return
			case errors.Is(err, tandem.ErrFenced):
				s.fenced(epoch)
				return
			}
			log.Warn("could not record the failover event; retrying", "err", err, "in", wait.String())
			select {
			case <-actx.Done():
				return
			case <-time.After(wait):
			}
		}
	}()
}

// failoverEvent explains the term that starts at epoch (I6): why the last
// active went away and how long detection, election and transition took, as
// far as this server saw them.
func (s *Server) failoverEvent(epoch int64, wonAt, servingAt time.Time, cause string) tandem.FailoverEvent {
	ev := tandem.FailoverEvent{Epoch: epoch, ActiveID: s.cfg.ID, ActiveURL: s.cfg.URL, Time: servingAt,
		TransitionS: secs(servingAt.Sub(wonAt))}
	gone := s.store.LastGone()
	resign := s.store.Resignation()
	switch {
	case gone != nil:
		ev.PrevID, ev.PrevEpoch = gone.Prev.ID, gone.Prev.Epoch
		ev.ElectionS = secs(wonAt.Sub(gone.At))
		if resign != nil && resign.Epoch == gone.Prev.Epoch {
			// Resigned, handed off, or deposed as dead: the record says when
			// (for a dead active, when it was last seen alive).
			ev.Cause = resign.Reason
			ev.DetectionS = secs(gone.At.Sub(resign.At))
		} else {
			ev.Cause = tandem.CauseLeaseExpired
			if seen, ok := s.probe.lastSeen(gone.Prev.ID); ok && gone.At.Sub(seen) < 10*s.cfg.LeaseTTL {
				ev.DetectionS = secs(gone.At.Sub(seen))
			}
		}
	default:
		// The leader key was already gone when this server started watching.
		ev.Cause = tandem.CauseInitial
		if evs := s.store.Events(); len(evs) > 0 {
			last := evs[len(evs)-1]
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

// Reasons to step down, used in logs and as a metric label.
const (
	downDeposed     = "deposed"      // the view shows the leader key is no longer ours
	downFenced      = "fenced"       // etcd rejected a write guarded by our epoch
	downSessionLost = "session_lost" // our lease ended, and the leader key with it
	downResigned    = "resigned"     // we gave leadership up on purpose
)

// stepDown stops acting as active for epoch, at once. It is safe to call
// from any goroutine and more than once.
func (s *Server) stepDown(reason string, epoch int64) {
	s.mu.Lock()
	if s.state != tandem.StateActive || s.epoch != epoch {
		s.mu.Unlock()
		return
	}
	s.state, s.epoch = tandem.StateStandby, 0
	if s.stopActive != nil {
		s.stopActive()
	}
	s.activeCtx, s.stopActive = nil, nil
	s.mu.Unlock()
	s.metrics.setState(tandem.StateStandby)
	s.metrics.stepDowns.WithLabelValues(reason).Inc()
	s.log.Warn("stepped down to standby", "epoch", epoch, "reason", reason)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.updateRegistration(ctx)
	}()
}

// fenced is called when etcd rejected a write guarded by epoch (I1): a newer
// active exists, so this server stops acting as active immediately and never
// retries the write as active.
func (s *Server) fenced(epoch int64) {
	s.metrics.fencedWrites.Inc()
	s.stepDown(downFenced, epoch)
}

// resign gives up leadership on purpose and steps down.
func (s *Server) resign(ctx context.Context, epoch int64, reason string) {
	s.waitRecorded(ctx)
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.elect.Resign(rctx, epoch, reason); err != nil && !errors.Is(err, tandem.ErrFenced) {
		s.log.Warn("resign failed; the lease will expire instead", "epoch", epoch, "err", err)
	}
	s.stepDown(downResigned, epoch)
}

// waitRecorded waits (briefly) until the current term's failover event is
// in etcd, so a term ended on purpose right after it began still shows in
// the history.
func (s *Server) waitRecorded(ctx context.Context) {
	s.mu.RLock()
	ch := s.recorded
	s.mu.RUnlock()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
}

// sessionLost handles the end of this server's etcd lease (it expired during
// a pause or partition, or etcd was unreachable for longer than the TTL).
// Everything bound to the lease is gone, including the leader key if we held
// it, so an active steps down at once; then a new session is made.
func (s *Server) sessionLost(ctx context.Context) {
	s.mu.Lock()
	epoch, active := s.epoch, s.state == tandem.StateActive
	s.session = nil
	s.mu.Unlock()
	if active {
		s.stepDown(downSessionLost, epoch)
	}
	s.log.Warn("etcd session lost; creating a new one")
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, 2*s.cfg.LeaseTTL)
		err := s.newSession(sctx, false)
		cancel()
		if err == nil {
			s.log.Info("etcd session re-established", "lease", s.Lease())
			return
		}
		s.log.Warn("new etcd session failed; retrying", "err", err, "in", backoff.String())
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// updateRegistration rewrites this server's membership record with its
// current state, so `tandem admin servers` shows it.
func (s *Server) updateRegistration(ctx context.Context) {
	s.mu.RLock()
	sess := s.session
	s.mu.RUnlock()
	if sess == nil {
		return
	}
	if err := s.store.Register(ctx, sess.Lease(), s.info(sess.Lease())); err != nil && ctx.Err() == nil {
		s.log.Warn("could not update membership record", "err", err)
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
