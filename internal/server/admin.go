package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/store"
)

// refusalMessage is yarn rmadmin's refusal, in tandem's words (seeds/002).
const refusalMessage = "automatic failover is enabled for cluster %q: refusing to manually manage HA state, " +
	"since it may cause a split-brain scenario or other incorrect state. " +
	"If you are very sure you know what you are doing, use --forcemanual " +
	"(or `tandem admin failover FROM TO` for a graceful switch)"

// errSharded refuses the active/standby commands in an active-active cluster.
func (s *Server) errSharded(what string) error {
	return tandem.Errorf(tandem.ECONFLICT,
		"cluster %q runs %d shards (active-active): %s moves one active, which it does not have; use `tandem admin drain ID` to move a server's shards away",
		s.cfg.Cluster, s.Shards(), what)
}

// Transition moves this server to the requested HA state (active or
// standby), as an operator's manual command. With automatic failover on it
// is refused unless req.ForceManual. Becoming active is refused while
// another server is active: use HandOff for that. It returns once the
// server is in the requested state. Only a cluster of one shard has an
// active to move.
func (s *Server) Transition(ctx context.Context, req tandem.TransitionRequest) (tandem.ServerStatus, error) {
	if req.State != tandem.StateActive && req.State != tandem.StateStandby {
		return tandem.ServerStatus{}, tandem.Errorf(tandem.EINVALID, "state must be %q or %q, not %q", tandem.StateActive, tandem.StateStandby, req.State)
	}
	if s.Shards() > 1 {
		return s.Status(), s.errSharded("transition-to-" + string(req.State))
	}
	if s.cfg.AutoFailover && !req.ForceManual {
		return tandem.ServerStatus{}, tandem.Errorf(tandem.EREFUSED, refusalMessage, s.cfg.Cluster)
	}
	var err error
	if req.State == tandem.StateStandby {
		err = s.exec(ctx, s.toStandby)
	} else {
		err = s.exec(ctx, s.toActive)
	}
	return s.Status(), err
}

// toStandby runs on the run goroutine.
func (s *Server) toStandby(ctx context.Context) error {
	s.mu.Lock()
	if s.cfg.AutoFailover {
		// Sit out the election until another server takes over (or, if none
		// does, three TTLs), or this server would win again at once.
		s.sitOutUntil = time.Now().Add(3 * s.cfg.LeaseTTL)
	}
	s.mu.Unlock()
	if t := s.core.Term(0); t != nil {
		s.endTerm(t, ha.ErrResigned, downResigned)
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		s.resignAll(rctx, []*ha.Term{t}, tandem.CauseManual)
		cancel()
		s.log.Info("transitioned to standby by an operator", "epoch", t.Epoch())
	}
	return nil
}

// toActive runs on the run goroutine.
func (s *Server) toActive(ctx context.Context) error {
	if s.core.Term(0) != nil {
		return nil
	}
	if st := s.State(); st != tandem.StateStandby {
		return tandem.Errorf(tandem.ECONFLICT, "server %s is %s, not standby", s.cfg.ID, st)
	}
	if l := s.store.Owner(0); l != nil {
		return tandem.Errorf(tandem.ECONFLICT,
			"server %s is already active (epoch %d): transition it to standby first, or use `tandem admin failover %s %s`",
			l.ID, l.Epoch, l.ID, s.cfg.ID)
	}
	h := s.store.Handoff(0)
	if h != nil && h.To != s.cfg.ID {
		return tandem.Errorf(tandem.ECONFLICT, "a hand-off from %s to %s is under way", h.From, h.To)
	}
	if err := s.campaign(ctx, 0, h, tandem.CauseManual); err != nil {
		return tandem.Errorf(tandem.EUNAVAILABLE, "transition to active: %v", err)
	}
	if _, ok := s.ActiveEpoch(); !ok {
		if l := s.store.Owner(0); l != nil {
			return tandem.Errorf(tandem.ECONFLICT, "server %s became active first (epoch %d)", l.ID, l.Epoch)
		}
		return tandem.Errorf(tandem.EUNAVAILABLE, "transition to active did not complete; try again")
	}
	s.log.Info("transitioned to active by an operator")
	return nil
}

// HandOff is a graceful failover (tandem admin failover FROM TO) of a
// cluster of one shard: this server, which must be the active FROM, hands
// the shard to TO in one etcd transaction, without waiting for any TTL. It
// returns once TO is active, or an error saying who is active instead.
func (s *Server) HandOff(ctx context.Context, req tandem.HandoffRequest) (tandem.ServerStatus, error) {
	if s.Shards() > 1 {
		return s.Status(), s.errSharded("failover")
	}
	if req.From != "" && req.From != s.cfg.ID {
		return tandem.ServerStatus{}, tandem.Errorf(tandem.EINVALID, "this is server %s, not %s: send the failover to the active it names", s.cfg.ID, req.From)
	}
	if req.To == "" {
		return tandem.ServerStatus{}, tandem.Errorf(tandem.EINVALID, "name the server to fail over to")
	}
	if req.To == s.cfg.ID {
		return tandem.ServerStatus{}, tandem.Errorf(tandem.EINVALID, "cannot fail over from %s to itself", s.cfg.ID)
	}
	start := time.Now()
	var from int64
	err := s.exec(ctx, func(ctx context.Context) error {
		var err error
		from, err = s.handOffActive(ctx, req.To, tandem.CauseHandoff)
		return err
	})
	if err != nil {
		return s.Status(), err
	}
	if err := s.waitTakeover(ctx, req.To, from); err != nil {
		return s.Status(), err
	}
	s.log.Info("failover complete", "to", req.To, "took", time.Since(start).String())
	return s.Status(), nil
}

// handOffActive, on the run goroutine, hands shard 0 to the server to and
// ends this server's term. It returns the epoch handed off.
func (s *Server) handOffActive(ctx context.Context, to, reason string) (int64, error) {
	t := s.core.Term(0)
	if t == nil {
		active := "no server"
		if l := s.store.Owner(0); l != nil {
			active = l.ID
		}
		return 0, tandem.Errorf(tandem.ECONFLICT, "server %s is not active (%s is): run the failover from the active", s.cfg.ID, active)
	}
	target, ok := s.store.Server(to)
	if !ok {
		return 0, tandem.Errorf(tandem.ENOTFOUND, "server %s is not a live member of cluster %s", to, s.cfg.Cluster)
	}
	s.history.waitRecorded(ctx, t.Epoch())
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	done, err := s.cand.HandOff(hctx, election.Target{ID: to, MemberKey: s.keys.Server(to), Lease: clientv3.LeaseID(target.Lease)},
		reason, election.Move{Keys: s.keys.Shard(0, 1), Fence: t.Fence})
	switch {
	case err == nil && done[0]:
		s.endTerm(t, ha.ErrHandedOff, downHandedOff)
		s.log.Info("handed leadership off", "epoch", t.Epoch(), "to", to, "reason", reason)
		return t.Epoch(), nil
	case err == nil:
		s.fenced(t)
		return 0, tandem.Errorf(tandem.ECONFLICT, "server %s was no longer active", s.cfg.ID)
	case errors.Is(err, election.ErrTargetGone):
		return 0, tandem.Errorf(tandem.ECONFLICT, "server %s restarted or left while the failover was prepared; try again", to)
	default:
		return 0, tandem.Errorf(tandem.EUNAVAILABLE, "failover: %v", err)
	}
}

// waitTakeover waits until the server to holds shard 0 at a newer epoch than
// from and answers as active, so "done" means done.
func (s *Server) waitTakeover(ctx context.Context, to string, from int64) error {
	wctx, cancel := context.WithTimeout(ctx, 4*s.cfg.LeaseTTL)
	defer cancel()
	for {
		ch := s.store.Changed()
		if l := s.store.Owner(0); l != nil && l.Epoch > from {
			if l.ID == to {
				waitServing(wctx, s.peerHC, l.URL)
				return nil
			}
			return tandem.Errorf(tandem.ECONFLICT, "failover to %s did not complete: %s became active (epoch %d)", to, l.ID, l.Epoch)
		}
		select {
		case <-ch:
		case <-wctx.Done():
			return tandem.Errorf(tandem.EUNAVAILABLE, "%s did not take over within %s; the hand-off ends with its lease and another server will be elected", to, 4*s.cfg.LeaseTTL)
		}
	}
}

// waitServing polls url's /isActive until it answers 200 or ctx ends.
func waitServing(ctx context.Context, client *http.Client, url string) {
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/isActive", nil)
		if err != nil {
			return
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// DefaultDrainWait bounds how long Drain waits for the shards to move.
const DefaultDrainWait = 30 * time.Second

// Drain makes this server give up every shard it owns and take none until
// undrained (req.Drain false): before maintenance, without a failover's
// interruption. With one shard, an active server hands the shard to another
// live server; with several, the target map leaves this server out and it
// hands its shards to their new targets, a few at a time. Draining the last
// server that could take over is refused. Drain returns once the server
// owns nothing, or an error when req.WaitMS passes first (the drain goes on).
func (s *Server) Drain(ctx context.Context, req tandem.DrainRequest) (tandem.ServerStatus, error) {
	wait := DefaultDrainWait
	if req.WaitMS < 0 || req.WaitMS > 3600_000 {
		return s.Status(), tandem.Errorf(tandem.EINVALID, "wait_ms must be from 0 to 3600000, not %d", req.WaitMS)
	}
	if req.WaitMS > 0 {
		wait = time.Duration(req.WaitMS) * time.Millisecond
	}
	err := s.exec(ctx, func(ctx context.Context) error {
		if !req.Drain {
			s.setDraining(false)
			s.log.Info("undrained: takes shards again")
			return nil
		}
		if err := s.markDraining(ctx); err != nil {
			return err
		}
		s.setDraining(true)
		s.log.Info("draining: giving up every shard")
		if s.Shards() == 1 && s.core.Term(0) != nil {
			if _, err := s.handOffActive(ctx, s.otherServer(), tandem.CauseDrain); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || !req.Drain {
		return s.Status(), err
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		ch := s.core.Changed()
		if s.core.Count() == 0 {
			return s.Status(), nil
		}
		select {
		case <-ch:
		case <-wctx.Done():
			return s.Status(), tandem.Errorf(tandem.EUNAVAILABLE, "server %s still owns %d shards after %s; the drain goes on", s.cfg.ID, s.core.Count(), wait)
		}
	}
}

// markDraining records in etcd that this server is draining, on condition
// that another live server that is not draining remains, as a decision made
// once in etcd: two servers draining at once, each counting on the other,
// cannot both pass (store.RegisterUnless).
func (s *Server) markDraining(ctx context.Context) error {
	for try := 0; ; try++ {
		var others []string
		for _, si := range s.store.Servers() {
			if si.ID != s.cfg.ID && !si.Draining {
				others = append(others, si.ID)
			}
		}
		if len(others) == 0 {
			return tandem.Errorf(tandem.ECONFLICT, "server %s is the only live server that is not draining: no other server could take its shards", s.cfg.ID)
		}
		s.mu.RLock()
		sess := s.session
		s.mu.RUnlock()
		if sess == nil {
			return tandem.Errorf(tandem.EUNAVAILABLE, "server %s has no etcd session right now; try again", s.cfg.ID)
		}
		info := s.info(sess.Lease())
		info.Draining, info.Ready = true, false
		changed := s.store.Changed()
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.store.RegisterUnless(rctx, sess.Lease(), info, others)
		cancel()
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, store.ErrConflict):
			return tandem.Errorf(tandem.EUNAVAILABLE, "record the drain: %v", err)
		case try == 3:
			return tandem.Errorf(tandem.EUNAVAILABLE, "the cluster's membership kept changing while the drain was recorded; try again")
		}
		// Another server's record changed (it may be draining too): look
		// again once the view has it.
		select {
		case <-changed:
		case <-time.After(time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *Server) setDraining(on bool) {
	s.mu.Lock()
	s.draining = on
	s.mu.Unlock()
	s.poke()
	s.registrationChanged()
}

// otherServer returns a live server other than this one that is not
// draining (preferring ready ones), or "".
func (s *Server) otherServer() string {
	best := ""
	for _, si := range s.store.Servers() {
		if si.ID == s.cfg.ID || si.Draining {
			continue
		}
		if si.Ready {
			return si.ID
		}
		if best == "" {
			best = si.ID
		}
	}
	return best
}
