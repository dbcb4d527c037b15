package server

import (
	"context"
	"time"

	"github.com/tandemhq/tandem"
)

// registrationChanged asks keepRegistered to rewrite this server's
// membership record (readiness or draining changed).
func (s *Server) registrationChanged() {
	select {
	case s.regKick <- struct{}{}:
	default:
	}
}

// keepRegistered keeps this server's membership record in step with its
// state (active or standby), readiness and draining, so `tandem admin
// servers` shows them and the other servers' target maps count it. It is the
// one goroutine that rewrites the record after start-up, so request
// goroutines never start goroutines of their own for it.
func (s *Server) keepRegistered(ctx context.Context) {
	var last tandem.ServerInfo
	retry := time.NewTimer(time.Second)
	defer retry.Stop()
	for {
		terms := s.core.Changed()
		s.mu.RLock()
		sess := s.session
		s.mu.RUnlock()
		wait := time.Second
		if sess != nil {
			info := s.info(sess.Lease())
			if info.State != last.State || info.Ready != last.Ready || info.Draining != last.Draining || info.Lease != last.Lease {
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				err := s.store.Register(rctx, sess.Lease(), info)
				cancel()
				if err == nil {
					last = info
				} else if ctx.Err() == nil {
					s.log.Warn("could not update membership record", "err", err)
					wait = 250 * time.Millisecond
				}
			}
		}
		retry.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-terms:
		case <-s.regKick:
		case <-retry.C:
		}
	}
}
