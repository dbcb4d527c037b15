package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"syscall"
	"time"

	"github.com/tandemhq/tandem"
)

// Agent crashes noticed at once (issue 13, point 3).
//
// Every server holds an agent's long poll (Sync) most of the time. When the
// agent's process dies, its kernel closes the poll's connection and the
// server's request context ends at once. That alone proves nothing: an agent
// also cuts its own poll short whenever it has news (and sends the next one
// at once), and the network can cut it. A busy agent is also often between
// two polls, its last one answered and the next not yet sent, and an agent
// that dies then leaves no poll to cut: so an answered poll is treated like
// a cut one, since the agent sends its next at once. An owner that sees a
// poll cut or answered
//
//  1. waits briefly (agentRepoll) for the agent's next poll: one that comes
//     means the agent is alive, and nothing else is done;
//  2. otherwise dials the agent's registered address (again, further
//     apart each time, while dials connect and the agent does not poll: a
//     dying process's listener may outlive its connections for a while): a
//     refused connection means nothing listens there any more, the process
//     is gone;
//     anything else (an answer, a timeout) proves nothing, and the agent
//     timeout stays in charge, as it does for silent agents (a paused
//     process, a cut network, a dead host);
//  3. declares the agent lost, unless it has been heard from since, and
//     ends its live attempts in the shards it owns as lost, with fenced
//     writes, exactly as the timeout does; they are retried elsewhere.
//
// Safety does not rest on this (I5): an agent wrongly declared lost (alive,
// but its address refusing) is one the timeout could have declared lost too.
// When it syncs again it is told to kill what was replaced, and its ledger
// still never launches an attempt twice (I4).

// agentRepoll is how long an owner waits for an agent whose poll was cut
// to poll again before it checks the agent's address: an agent that cut its
// own poll polls again at once.
const agentRepoll = 100 * time.Millisecond

// agentDial bounds each dial that checks an agent's address; agentDials
// bounds how many are made, 50 ms, 100 ms, ... apart (750 ms in all).
const (
	agentDial  = 250 * time.Millisecond
	agentDials = 5
)

// pollCut is called when the poll of agent info, received at since, ends
// because the agent's connection went away, and with since the time of the
// answer when it is answered. A server that owns shards then checks, in the
// background, whether the agent's process died, unless the agent polls
// again first.
func (s *Server) pollCut(info tandem.AgentInfo, since time.Time) {
	if info.URL == "" || len(s.core.Held()) == 0 {
		return
	}
	next, ok := s.agents.cut(info, since)
	if !ok {
		return // heard from since: alive
	}
	s.bg.Go(func() { s.checkAgentCrash(info, since, next) })
}

// checkAgentCrash declares the agent info lost if it does not poll again
// soon and its address refuses a connection (see the top of this file).
func (s *Server) checkAgentCrash(info tandem.AgentInfo, since time.Time, next <-chan struct{}) {
	timer := time.NewTimer(agentRepoll)
	defer timer.Stop()
	select {
	case <-next:
		return
	case <-s.stopped:
		return
	case <-timer.C:
	}
	addr, err := agentAddr(info.URL)
	if err != nil {
		return
	}
	// A dying process may close its connections a while before its
	// listener (longer on a loaded machine), whose backlog still completes
	// a dial: dial again, further apart each time, until the agent polls
	// again, a dial is refused, or agentDials have connected.
	refused := false
	gap := agentRepoll / 4
	for try := 0; try < agentDials && !refused; try, gap = try+1, 2*gap {
		if s.State() == tandem.StateStopping {
			return // Close waits for this goroutine
		}
		if try > 0 {
			select {
			case <-next:
				return
			case <-s.stopped:
				return
			case <-time.After(gap):
			}
		}
		c, err := net.DialTimeout("tcp", addr, agentDial)
		if err == nil {
			c.Close()
			continue
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return // a timeout or an unreachable network proves nothing
		}
		refused = true
	}
	if !refused || !s.agents.crashed(info, since) {
		return
	}
	id := info.ID
	s.log.Warn("agent declared lost: its poll ended, it did not poll again and its address refuses connections", "agent", id,
		"addr", addr, "live_attempts", len(s.store.LiveOn(id)))
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.LeaseTTL)
	defer cancel()
	s.loseAgent(ctx, id, fmt.Sprintf("agent %s crashed: its poll ended, it did not poll again and %s refuses connections", id, addr))
}

// agentAddr returns the host:port of an agent's URL.
func agentAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Host == "" {
		return "", fmt.Errorf("agent URL %q has no host", raw)
	}
	if u.Port() != "" {
		return u.Host, nil
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// cut notes that the poll of agent info received at since was cut. It
// reports false if the agent has been heard from since (it polled again);
// otherwise it returns a channel closed at the agent's next contact.
func (t *agentTable) cut(info tandem.AgentInfo, since time.Time) (<-chan struct{}, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[info.ID]
	if e == nil || e.lost || e.lastContact.After(since) || !sameProcess(e.info, info) {
		return nil, false
	}
	if e.contacted == nil {
		e.contacted = make(chan struct{})
	}
	return e.contacted, true
}

// crashed marks the agent info lost, and reports true, unless it has been
// heard from since, has restarted, or is lost already.
func (t *agentTable) crashed(info tandem.AgentInfo, since time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[info.ID]
	if e == nil || e.lost || e.lastContact.After(since) || !sameProcess(e.info, info) {
		return false
	}
	e.lost = true
	t.ver++
	return true
}

// sameProcess reports whether a and b describe the same agent process.
func sameProcess(a, b tandem.AgentInfo) bool {
	return a.PID == b.PID && a.StartedAt.Equal(b.StartedAt)
}
