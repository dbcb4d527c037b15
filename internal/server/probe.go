package server

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
)

// deadAfter is how many consecutive refused connections make a standby
// declare the active dead.
const deadAfter = 3

// prober is a standby's health monitor of the active (seeds/004's health
// monitor). It records the last time the active answered, so a new active
// can say how long detection took; and when the active's port refuses
// connections several times in a row after answering before, the process
// is gone, so the prober deposes it at once instead of waiting out its
// lease. A timeout (a hung or cut-off active) proves nothing and is left to
// the lease. Safety never rests on the prober (I5): deposing only deletes
// the leader key of that exact epoch, and fencing does the rest (I1).
type prober struct {
	mu      sync.Mutex
	id      string
	epoch   int64
	seen    time.Time
	refused int
	failing bool // the last probe of this epoch's active got no good answer
}

func (p *prober) run(ctx context.Context, s *Server) {
	client := &http.Client{Timeout: 2 * s.cfg.ProbeInterval}
	if client.Timeout < 250*time.Millisecond {
		client.Timeout = 250 * time.Millisecond
	}
	tick := time.NewTicker(s.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		l := s.store.Leader()
		if l == nil || l.ID == s.cfg.ID {
			continue
		}
		ok, refused := probe(ctx, client, l.URL)
		p.mu.Lock()
		if p.epoch != l.Epoch {
			p.id, p.epoch, p.seen, p.refused, p.failing = l.ID, l.Epoch, time.Time{}, 0, false
		}
		p.failing = !ok
		switch {
		case ok:
			p.seen, p.refused = time.Now(), 0
		case refused:
			p.refused++
		default:
			p.refused = 0
		}
		dead := s.cfg.DeposeDead && p.refused >= deadAfter && !p.seen.IsZero()
		seen := p.seen
		p.mu.Unlock()
		if dead {
			s.deposeDead(ctx, *l, seen)
		}
	}
}

// probe asks url whether it is active. refused reports a connection refused:
// nothing listens on the active's port any more.
func probe(ctx context.Context, client *http.Client, url string) (ok, refused bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/isActive", nil)
	if err != nil {
		return false, false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, errors.Is(err, syscall.ECONNREFUSED)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, false
}

func (s *Server) deposeDead(ctx context.Context, l election.Leader, seen time.Time) {
	dctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL)
	defer cancel()
	done, err := election.Depose(dctx, s.cfg.Etcd, s.keys, l, seen)
	switch {
	case err != nil:
		s.log.Warn("could not depose the dead active", "active", l.ID, "epoch", l.Epoch, "err", err)
	case done:
		s.log.Warn("deposed the active: its port refuses connections", "active", l.ID, "epoch", l.Epoch,
			"last_seen", time.Since(seen).Round(time.Millisecond).String())
	}
}

// answering reports whether the active of epoch seems to answer: not known
// to fail, or answered within the last few probes. A standby redirects
// clients only to an active that answers; to a hung one it says "no active"
// so clients try the other servers instead of hanging there too.
func (p *prober) answering(epoch int64, interval time.Duration) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.epoch != epoch || !p.failing {
		return true
	}
	return time.Since(p.seen) < 3*interval
}

// lastSeen returns when server id last answered as active.
func (p *prober) lastSeen(id string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen, p.id == id && !p.seen.IsZero()
}

// healthCache rate-limits the etcd round trip behind /healthz.
type healthCache struct {
	mu  sync.Mutex
	at  time.Time
	err error
}

// Healthy reports whether this process can do its job: its etcd session is
// alive and etcd answers a linearizable read (which needs a quorum). Results
// are cached for a quarter of a second so probes cannot load etcd.
func (s *Server) Healthy(ctx context.Context) error {
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	if time.Since(s.health.at) < 250*time.Millisecond {
		return s.health.err
	}
	s.health.err = s.checkHealth(ctx)
	s.health.at = time.Now()
	return s.health.err
}

func (s *Server) checkHealth(ctx context.Context) error {
	s.mu.RLock()
	sess, state := s.session, s.state
	s.mu.RUnlock()
	if state == tandem.StateStopping {
		return errUnhealthy("server is stopping")
	}
	if sess == nil {
		return errUnhealthy("no etcd session (lease lost; reconnecting)")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := s.cfg.Etcd.Get(ctx, s.keys.Leader()); err != nil {
		return errUnhealthy("etcd read failed: " + err.Error())
	}
	if err := s.store.WatchErr(); err != nil {
		return errUnhealthy("etcd watch interrupted: " + err.Error())
	}
	return nil
}

type errUnhealthy string

func (e errUnhealthy) Error() string { return string(e) }
