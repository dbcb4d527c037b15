package server

import (
	"context"
	"errors"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/shard"
)

// stepMany is the active-active case. Every server computes the same target
// map from the ready servers in its view (shard.Targets), and each acts only
// on its own behalf:
//
//   - it takes a shard handed off to it;
//   - it takes a free shard whose target it is at once, and any free shard
//     that its target has left free for FreeGrace (the target may be hung);
//   - it hands the shards it owns whose target is another server to that
//     server, at most MaxMoves in flight, without waiting for any TTL.
//
// Every shard it takes in one step is taken in one transaction
// (campaignMany), so a shard handed to it is free for no more than the
// hand-off's transaction, this one, and whatever other writes etcd orders
// between the two.
//
// The map decides only who should own what: two servers that briefly
// disagree never both own a shard, since ownership is a lease-bound key and
// every write is fenced by its owner's epoch (I1).
func (s *Server) stepMany(ctx context.Context) time.Duration {
	wait := idle
	var claims []claim
	s.mu.RLock()
	ready, draining := s.ready, s.draining
	s.mu.RUnlock()
	servers := s.store.Servers()
	targets := s.targetMap(servers)
	owners := s.store.Owners()
	handoffs := s.store.Handoffs()
	now := time.Now()

	// Hand-offs to this server.
	for _, k := range sortedKeys(handoffs) {
		h := handoffs[k]
		if h.To != s.cfg.ID || s.core.Term(k) != nil {
			continue
		}
		if _, taken := owners[k]; taken {
			continue
		}
		claims = append(claims, claim{shard: k, handoff: &h, cause: handoffCause(&h)})
	}

	// Free shards.
	anyReady := false
	for _, si := range servers {
		anyReady = anyReady || si.Ready
	}
	for k := 0; k < s.Shards(); k++ {
		_, owned := owners[k]
		_, handing := handoffs[k]
		if owned || handing || s.core.Term(k) != nil {
			delete(s.freeSince, k)
			continue
		}
		since, ok := s.freeSince[k]
		if !ok {
			since = now
			s.freeSince[k] = now
		}
		if draining {
			continue
		}
		mine := targets[k] == s.cfg.ID
		if !mine {
			// Anyone ready may take a shard its target left free too long;
			// with no server ready at all (settle time), anyone may.
			if left := s.cfg.FreeGrace - now.Sub(since); left > 0 || (!ready && anyReady) {
				if left > 0 {
					wait = min(wait, left)
				}
				continue
			}
		}
		claims = append(claims, claim{shard: k})
	}
	if err := s.campaignMany(ctx, claims); err != nil {
		s.log.Warn("campaign failed", "shards", len(claims), "err", err)
		wait = min(wait, 250*time.Millisecond)
	}

	// Shards this server owns that belong elsewhere now.
	return min(wait, s.handOffMisplaced(ctx, servers, targets, handoffs))
}

// targetMap is the shards' target map of the ready, undrained servers in
// servers.
func (s *Server) targetMap(servers []tandem.ServerInfo) []string {
	var ids []string
	for _, si := range servers {
		if si.Ready && !si.Draining {
			ids = append(ids, si.ID)
		}
	}
	return shard.Targets(s.Shards(), ids)
}

// handOffMisplaced hands the shards this server owns whose target is another
// ready server to that server, at most MaxMoves in flight from this server.
func (s *Server) handOffMisplaced(ctx context.Context, servers []tandem.ServerInfo, targets []string, handoffs map[int]election.Handoff) time.Duration {
	inFlight := 0
	for _, h := range handoffs {
		if h.From == s.cfg.ID {
			inFlight++
		}
	}
	budget := s.cfg.MaxMoves - inFlight
	if budget <= 0 {
		return idle // the next hand-off is taken or dies with its target's lease; both change the view
	}
	byID := make(map[string]tandem.ServerInfo, len(servers))
	for _, si := range servers {
		byID[si.ID] = si
	}
	s.mu.RLock()
	draining := s.draining
	s.mu.RUnlock()
	reason := tandem.CauseRebalance
	if draining {
		reason = tandem.CauseDrain
	}
	moves := map[string][]*ha.Term{}
	var order []string
	for _, t := range s.core.Held() {
		to := targets[t.Shard]
		if to == "" || to == s.cfg.ID || budget == 0 {
			continue
		}
		if _, ok := byID[to]; !ok {
			continue
		}
		if len(moves[to]) == 0 {
			order = append(order, to)
		}
		moves[to] = append(moves[to], t)
		budget--
	}
	wait := idle
	for _, to := range order {
		if err := s.handOffTerms(ctx, byID[to], reason, moves[to]); err != nil {
			s.log.Warn("could not hand shards off", "to", to, "shards", len(moves[to]), "err", err)
			wait = 250 * time.Millisecond
		}
	}
	return wait
}

// handOffTerms hands the shards of terms to the server to in one
// transaction and ends the terms handed off.
func (s *Server) handOffTerms(ctx context.Context, to tandem.ServerInfo, reason string, terms []*ha.Term) error {
	ms := make([]election.Move, len(terms))
	for i, t := range terms {
		ms[i] = election.Move{Keys: s.keys.Shard(t.Shard, s.Shards()), Fence: t.Fence}
		s.history.waitTerm(ctx, t.Fence)
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	done, err := s.cand.HandOff(hctx, election.Target{ID: to.ID, MemberKey: s.keys.Server(to.ID), Lease: clientv3.LeaseID(to.Lease)}, reason, ms...)
	if err != nil {
		if errors.Is(err, election.ErrTargetGone) {
			return nil // the view will show the target gone or back with a new lease
		}
		return err
	}
	for i, t := range terms {
		if done[i] {
			s.endTerm(t, ha.ErrHandedOff, downHandedOff)
			s.log.Info("handed the shard off", "shard", t.Shard, "epoch", t.Epoch(), "to", to.ID, "reason", reason)
		} else {
			s.fenced(t) // its fence no longer held
		}
	}
	return nil
}

func sortedKeys[V any](m map[int]V) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}
