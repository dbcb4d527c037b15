package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
)

// refusalMessage is yarn rmadmin's refusal, in tandem's words (seeds/002).
const refusalMessage = "automatic failover is enabled for cluster %q: refusing to manually manage HA state, " +
	"since it may cause a split-brain scenario or other incorrect state. " +
	"If you are very sure you know what you are doing, use --forcemanual " +
	"(or `tandem admin failover FROM TO` for a graceful switch)"

// Transition moves this server to the requested HA state (active or
// standby), as an operator's manual command. With automatic failover on it
// is refused unless req.ForceManual. Becoming active is refused while
// another server is active: use HandOff for that. It returns once the
// server is in the requested state.
func (s *Server) Transition(ctx context.Context, req tandem.TransitionRequest) (tandem.ServerStatus, error) {
	if req.State != tandem.StateActive && req.State != tandem.StateStandby {
		return tandem.ServerStatus{}, tandem.Errorf(tandem.EINVALID, "state must be %q or %q, not %q", tandem.StateActive, tandem.StateStandby, req.State)
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
	epoch, active := s.epoch, s.state == tandem.StateActive
	if s.cfg.AutoFailover {
		// Sit out the election until another server takes over (or, if none
		// does, three TTLs), or this server would win again at once.
		s.sitOutUntil = time.Now().Add(3 * s.cfg.LeaseTTL)
	}
	s.mu.Unlock()
	if active {
		s.resign(ctx, epoch, tandem.CauseManual)
		s.log.Info("transitioned to standby by an operator", "epoch", epoch)
	}
	return nil
}

// toActive runs on the run goroutine.
func (s *Server) toActive(ctx context.Context) error {
	s.mu.RLock()
	state := s.state
	s.mu.RUnlock()
	if state == tandem.StateActive {
		return nil
	}
	if state != tandem.StateStandby {
		return tandem.Errorf(tandem.ECONFLICT, "server %s is %s, not standby", s.cfg.ID, state)
	}
	if l := s.store.Leader(); l != nil {
		return tandem.Errorf(tandem.ECONFLICT,
			"server %s is already active (epoch %d): transition it to standby first, or use `tandem admin failover %s %s`",
			l.ID, l.Epoch, l.ID, s.cfg.ID)
	}
	if h := s.store.Handoff(); h != nil && h.To != s.cfg.ID {
		return tandem.Errorf(tandem.ECONFLICT, "a hand-off from %s to %s is under way", h.From, h.To)
	}
	if err := s.campaign(ctx, s.store.Handoff(), tandem.CauseManual); err != nil {
		return tandem.Errorf(tandem.EUNAVAILABLE, "transition to active: %v", err)
	}
	if _, ok := s.ActiveEpoch(); !ok {
		l := s.store.Leader()
		if l != nil {
			return tandem.Errorf(tandem.ECONFLICT, "server %s became active first (epoch %d)", l.ID, l.Epoch)
		}
		return tandem.Errorf(tandem.EUNAVAILABLE, "transition to active did not complete; try again")
	}
	s.log.Info("transitioned to active by an operator")
	return nil
}

// HandOff is a graceful failover (tandem admin failover FROM TO): this
// server, which must be the active FROM, hands leadership to TO in one etcd
// transaction, without waiting for any TTL. It returns once TO is active, or
// an error saying who is active instead.
func (s *Server) HandOff(ctx context.Context, req tandem.HandoffRequest) (tandem.ServerStatus, error) {
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
		epoch, ok := s.ActiveEpoch()
		from = epoch
		if !ok {
			active := "no server"
			if l := s.store.Leader(); l != nil {
				active = l.ID
			}
			return tandem.Errorf(tandem.ECONFLICT, "server %s is not active (%s is): run the failover from the active", s.cfg.ID, active)
		}
		target, ok := s.store.Server(req.To)
		if !ok {
			return tandem.Errorf(tandem.ENOTFOUND, "server %s is not a live member of cluster %s", req.To, s.cfg.Cluster)
		}
		s.waitRecorded(ctx)
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		err := s.elect.HandOff(hctx, epoch, req.To, clientv3.LeaseID(target.Lease))
		switch {
		case err == nil:
			s.stepDown(downResigned, epoch)
			s.log.Info("handed leadership off", "epoch", epoch, "to", req.To)
			return nil
		case errors.Is(err, tandem.ErrFenced):
			s.fenced(epoch)
			return tandem.Errorf(tandem.ECONFLICT, "server %s was no longer active", s.cfg.ID)
		case errors.Is(err, election.ErrTargetGone):
			return tandem.Errorf(tandem.ECONFLICT, "server %s restarted or left while the failover was prepared; try again", req.To)
		default:
			return tandem.Errorf(tandem.EUNAVAILABLE, "failover: %v", err)
		}
	})
	if err != nil {
		return s.Status(), err
	}
	// Wait for the target to take the leader key.
	wctx, cancel := context.WithTimeout(ctx, 4*s.cfg.LeaseTTL)
	defer cancel()
	for {
		ch := s.store.Changed()
		if l := s.store.Leader(); l != nil && l.Epoch > from {
			if l.ID == req.To {
				// Holding the key is not yet serving: wait (briefly) until the
				// target answers as active, so "done" means done.
				waitServing(wctx, l.URL)
				s.log.Info("failover complete", "to", req.To, "epoch", l.Epoch, "took", time.Since(start).String())
				return s.Status(), nil
			}
			return s.Status(), tandem.Errorf(tandem.ECONFLICT, "failover to %s did not complete: %s became active (epoch %d)", req.To, l.ID, l.Epoch)
		}
		select {
		case <-ch:
		case <-wctx.Done():
			return s.Status(), tandem.Errorf(tandem.EUNAVAILABLE, "%s did not take over within %s; the hand-off ends with its lease and another server will be elected", req.To, 4*s.cfg.LeaseTTL)
		}
	}
}

// waitServing polls url's /isActive until it answers 200 or ctx ends.
func waitServing(ctx context.Context, url string) {
	client := &http.Client{Timeout: time.Second}
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
