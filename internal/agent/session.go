package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/endpoint"
	"github.com/tandemhq/tandem/internal/transport"
)

// session is the agent's sync session with one server: a goroutine keeping
// a long poll open to that server, and only to it (DESIGN.md section 10).
// The server answers for the shards it owns; a failed sync is retried on
// the same server, with backoff.
//
// A configured server's session lasts as long as the agent. A session with
// a server learned from an answer's Servers list ends when both hold: the
// latest list that names any server no longer names it (by URL, or by the ID
// it answered with), and a sync with it has just failed. A live server that a
// lagging view leaves out keeps its session while it answers; a server that
// left the cluster is dropped at its first failure after the list dropped
// it. The session's goroutine ends itself, under Agent.mu, in the same step
// that removes it from Agent.sessions, so a server has at most one session at
// a time; and it ends with the agent's Close.
type session struct {
	srv    server
	index  int           // in Config.Servers; -1 for a server learned from an answer
	kicked chan struct{} // signalled by kick; capacity 1

	// Guarded by Agent.mu.
	pollStop   context.CancelFunc // cancels the sync in flight, if any
	serverID   string             // as its last answer gave it
	terms      []tandem.ShardTerm // as its last answer gave them, sorted by shard
	failures   int                // failed syncs since its last answer
	lastAnswer time.Time
	unlisted   bool // absent from the latest Servers list
}

func (s *session) configured() bool { return s.index >= 0 }

// startSessionLocked starts a session with srv unless there is one already
// or the agent is closed. The caller holds a.mu.
func (a *Agent) startSessionLocked(srv server, index int) {
	if a.closed || a.sessions[srv.key] != nil {
		return
	}
	s := &session{srv: srv, index: index, kicked: make(chan struct{}, 1)}
	a.sessions[srv.key] = s
	a.sessionsGroup.Add(1)
	go func() {
		defer a.sessionsGroup.Done()
		a.runSession(a.sessionCtx, s)
	}()
}

// runSession keeps a sync with s's server in flight until ctx ends or the
// session is dropped (see session). Local events cut the sync in flight
// short so the server hears of them at once.
func (a *Agent) runSession(ctx context.Context, s *session) {
	refusedInRow := 0
	for ctx.Err() == nil {
		body, wait, pollCtx, stop := a.composeSync(ctx, s)
		began := time.Now()
		resp, err := a.exchange(pollCtx, s.srv.base, body, wait)
		kicked := pollCtx.Err() != nil && ctx.Err() == nil
		a.mu.Lock()
		s.pollStop = nil
		a.mu.Unlock()
		stop()
		if ctx.Err() != nil {
			return
		}
		if err != nil && kicked {
			continue // a local event: sync again at once
		}
		var out outcome
		if err == nil {
			out, err = a.apply(resp, s.srv.base)
		}
		var fsErr *stateError
		switch {
		case err == nil:
		case errors.As(err, &fsErr):
			// A new epoch could not be recorded, and acting on the answer
			// could break fencing after a restart; nothing was done.
			a.log.Error("cannot record the epochs seen; ignoring the answer", logServerURL, s.srv.base,
				logServerID, resp.ServerID, "err", err)
			if !sleepCtx(ctx, a.cfg.Backoff.Max) {
				return
			}
			continue
		default:
			n, end := a.sessionFailed(s, err)
			if end || !sleepCtx(ctx, a.backoff(n)) {
				return
			}
			continue
		}
		a.sessionAnswered(s, resp)
		switch {
		case out.refused > 0 && !out.acted:
			// A deposed owner that keeps sending what the agent refuses
			// (until it hears of the newer epoch and ends its term) is paced
			// like a failing server, not answered as fast as it answers.
			refusedInRow++
			a.pause(ctx, s, a.backoff(refusedInRow+1))
		case !out.acted && time.Since(began) < minEmptyGap:
			refusedInRow = 0
			a.pause(ctx, s, minEmptyGap)
		default:
			refusedInRow = 0
		}
	}
}

// sessionFailed counts a failed sync of s and returns the failures in a row,
// and whether the session ends (see session). It warns, at most every
// quietWarn, when no session has had an answer for that long.
func (a *Agent) sessionFailed(s *session, err error) (failures int, end bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s.failures++
	log := a.log.With(logServerURL, s.srv.base)
	if s.serverID != "" {
		log = log.With(logServerID, s.serverID)
	}
	log.Debug("sync failed", "failures", s.failures, "err", err)
	if !s.configured() && s.unlisted {
		delete(a.sessions, s.srv.key)
		log.Info("stopped syncing with a server that is no longer listed and does not answer", "err", err)
		return s.failures, true
	}
	quiet := a.answered.IsZero() || time.Since(a.answered) >= quietWarn
	if quiet && a.noneAnsweringLocked() && time.Since(a.quietWarn) >= quietWarn {
		a.quietWarn = time.Now()
		var last time.Duration
		if !a.answered.IsZero() {
			last = time.Since(a.answered).Round(time.Millisecond)
		}
		a.log.Warn("no server answers; retrying", "sessions", len(a.sessions), "since_last_answer", last,
			logServerURL, s.srv.base, "failures", s.failures, "err", err)
	}
	return s.failures, false
}

// noneAnsweringLocked reports whether the latest sync of every session
// failed. The caller holds a.mu.
func (a *Agent) noneAnsweringLocked() bool {
	for _, s := range a.sessions {
		if s.failures == 0 {
			return false
		}
	}
	return true
}

// sessionAnswered records an answer of s's server, starts sessions with the
// servers it lists that the agent does not sync with yet, and logs what
// changed about the server.
func (a *Agent) sessionAnswered(s *session, resp *tandem.SyncResponse) {
	terms := slices.Clone(resp.Terms)
	slices.SortFunc(terms, func(x, y tandem.ShardTerm) int { return cmp.Compare(x.Shard, y.Shard) })
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	reached := s.failures > 0 || s.lastAnswer.IsZero() || s.serverID != resp.ServerID
	moved := !reached && !slices.Equal(terms, s.terms)
	failures := s.failures
	s.failures, s.lastAnswer, s.serverID, s.terms = 0, now, resp.ServerID, terms
	a.answered, a.quietWarn = now, time.Time{}
	log := a.log.With(logServerURL, s.srv.base, logServerID, resp.ServerID, "shards", formatTerms(terms))
	switch {
	case reached:
		log.Info("syncing with server", "failures_before", failures)
	case moved:
		log.Info("server's shards changed")
	}
	a.discoverLocked(s, resp.Servers)
}

// discoverLocked starts a session with every server in refs that the agent
// does not sync with yet, and marks the sessions of learned servers that
// refs leaves out (see session). An empty list tells nothing: a server that
// does not send one leaves the sessions as they are. The caller holds a.mu.
func (a *Agent) discoverLocked(from *session, refs []tandem.ServerRef) {
	if len(refs) == 0 {
		return
	}
	keys := make(map[string]bool, len(refs))
	ids := make(map[string]bool, len(refs))
	for _, ref := range refs {
		e, err := endpoint.Parse(ref.URL)
		if err != nil {
			a.log.Debug("ignoring a listed server with an unusable URL", logServerURL, from.srv.base,
				"listed_id", ref.ID, "listed_url", ref.URL, "err", err)
			continue
		}
		keys[e.Key] = true
		if ref.ID != "" {
			ids[ref.ID] = true
		}
		if a.sessions[e.Key] != nil || a.answeringAsLocked(ref.ID) {
			continue // already synced with, maybe under another URL
		}
		if a.closed {
			return
		}
		a.log.Info("server discovered; syncing with it too", logServerURL, e.Base, logServerID, ref.ID, "listed_by", from.serverID)
		a.startSessionLocked(server{base: e.Base, key: e.Key}, -1)
	}
	for _, s := range a.sessions {
		if !s.configured() {
			s.unlisted = !keys[s.srv.key] && (s.serverID == "" || !ids[s.serverID])
		}
	}
}

// answeringAsLocked reports whether a session's server answers, and did
// last as id. The caller holds a.mu.
func (a *Agent) answeringAsLocked(id string) bool {
	if id == "" {
		return false
	}
	for _, s := range a.sessions {
		if s.serverID == id && s.failures == 0 && !s.lastAnswer.IsZero() {
			return true
		}
	}
	return false
}

// kick tells every session that something happened locally: each sync in
// flight, composed before it, is cancelled and a new one sent at once, so
// every owner hears of it.
func (a *Agent) kick() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.sessions {
		if s.pollStop != nil {
			s.pollStop()
		}
		select {
		case s.kicked <- struct{}{}:
		default:
		}
	}
}

// pause waits d, or less if ctx ends or something happens locally.
func (a *Agent) pause(ctx context.Context, s *session, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-s.kicked:
	}
}

// backoff returns the sleep after the n-th failure in a row: none after the
// first (the server is tried again at once), then Base doubling up to Max,
// with jitter in [1/2, 1].
func (a *Agent) backoff(n int) time.Duration {
	return transport.Backoff{Base: a.cfg.Backoff.Base, Max: a.cfg.Backoff.Max}.Jittered(n, nil)
}

// sleepCtx waits d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	return transport.Sleep(ctx, d) == nil
}

// statusLocked is s as Status shows it. The caller holds a.mu.
func (s *session) statusLocked() SessionStatus {
	st := SessionStatus{
		URL: s.srv.base, ServerID: s.serverID, Configured: s.configured(),
		Terms: slices.Clone(s.terms), Failures: s.failures,
	}
	if st.Terms == nil {
		st.Terms = []tandem.ShardTerm{}
	}
	if !s.lastAnswer.IsZero() {
		t := s.lastAnswer.UTC()
		st.LastAnswer = &t
	}
	return st
}

// compareSessions orders the configured servers' sessions first, as
// configured, then the others by URL.
func compareSessions(x, y *session) int {
	switch {
	case x.configured() && y.configured():
		return cmp.Compare(x.index, y.index)
	case x.configured():
		return -1
	case y.configured():
		return 1
	}
	return strings.Compare(x.srv.base, y.srv.base)
}

// formatTerms words terms for logs: "1 (epoch 10), 2 (epoch 20)", or "none".
func formatTerms(terms []tandem.ShardTerm) string {
	if len(terms) == 0 {
		return "none"
	}
	parts := make([]string, len(terms))
	for i, t := range terms {
		parts[i] = fmt.Sprintf("%d (epoch %d)", t.Shard, t.Epoch)
	}
	return strings.Join(parts, ", ")
}
