package server

import (
	"context"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/store"
)

// This file holds what the HTTP API reads through its Service interface,
// beyond the HA methods found elsewhere.

// ID returns the server's ID.
func (s *Server) ID() string { return s.cfg.ID }

// Job returns a job from the view, with why it waits if it is pending, and
// its record's mod revision; a job not in the view is an ENOTFOUND error, or
// ERemoved if retention removed it (its tombstone is still there).
func (s *Server) Job(id string) (*tandem.Job, int64, error) {
	j, rev, err := s.store.JobWithRev(id)
	if err != nil {
		return nil, s.store.Rev(), s.removedOr(store.KindJob, id, err)
	}
	s.Explain(j)
	return j, rev, nil
}

// Jobs returns a page of jobs from the view (see store.Store.Jobs), each
// with why it waits if it is pending.
func (s *Server) Jobs(after string, limit int, state tandem.JobState) ([]*tandem.Job, string) {
	jobs, next := s.store.Jobs(after, limit, state)
	for _, j := range jobs {
		s.Explain(j)
	}
	return jobs, next
}

// Agent returns one registered agent.
func (s *Server) Agent(id string) (tandem.AgentInfo, bool) { return s.store.Agent(id) }

// Revision returns the revision the view has reached.
func (s *Server) Revision() int64 { return s.store.Rev() }

// WaitRevision blocks until the view has reached rev or ctx ends.
func (s *Server) WaitRevision(ctx context.Context, rev int64) error { return s.store.WaitRev(ctx, rev) }

// Fresh waits until the view holds every write etcd had committed when it
// was called (see store.Store.Fresh): reads after it are linearizable.
func (s *Server) Fresh(ctx context.Context) error { return s.store.Fresh(ctx) }

// AnyOwner returns a server that owns a shard, preferring this one, then one
// whose probes find it answering, then the one with most shards.
func (s *Server) AnyOwner() (tandem.ServerRef, bool) {
	if s.core.Count() > 0 {
		return tandem.ServerRef{ID: s.cfg.ID, URL: s.cfg.URL}, true
	}
	count := map[string]int{}
	urls := map[string]string{}
	for _, o := range s.store.Owners() {
		if o.ID == s.cfg.ID {
			continue // the view may still name this server, which holds no term
		}
		count[o.ID]++
		urls[o.ID] = o.URL
	}
	best := ""
	for id, n := range count {
		switch {
		case best == "":
			best = id
		case s.ActiveAnswering(id) != s.ActiveAnswering(best):
			if s.ActiveAnswering(id) {
				best = id
			}
		case n > count[best] || n == count[best] && id < best:
			best = id
		}
	}
	if best == "" {
		return tandem.ServerRef{}, false
	}
	return tandem.ServerRef{ID: best, URL: urls[best]}, true
}
