package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdview"
	"github.com/tandemhq/tandem/internal/keys"
)

// Agreement: a hung or cut-off owner is deposed once the others agree
// (issue 13, point 2; docs/HA.md, "Agreement").
//
// A killed owner's connections close and the watchers see it at once
// (watch.go). A hung one (SIGSTOP, a stalled process) or one cut off by the
// network keeps its connections open but stops beating on them. Every
// server notes when a byte last came on its stream to each owner; after
// SuspectAfter without one (five beats by default), it votes, in etcd, that
// the owner is unresponsive:
//
//	suspects/<owner>/<owner's lease>/votes/<voter>   bound to the voter's lease
//
// and withdraws the vote as soon as a beat comes again. A server deposes the
// owner (every shard of it, fenced by each shard's epoch, as a dead one is:
// Server.depose) when
//
//  1. a majority of the live registered servers other than the owner have
//     voted (the voters can reach etcd: they wrote the votes), and
//  2. the owner has not answered the votes: an owner that is alive and
//     reaches etcd sees every vote against itself and at once writes
//     suspects/<owner>/<lease>/alive, bound to its own lease; a deposition
//     waits answerWindow after the last vote for that answer, and
//
// its transaction also compares every counted vote and the answer with the
// revisions it decided on, so it acts on exactly the evidence it counted.
// A voter whose vote was answered votes again after SuspectAfter if the
// owner is still silent, so an owner that answers and then hangs is still
// deposed.
//
// Why both rules. The majority keeps one standby, cut off from the owner
// alone, from deposing it (one vote of two); the answer covers what a
// majority cannot: with two servers the one standby is the majority, and
// with any number, every peer link of the owner may be down while its
// clients and etcd still reach it. An owner that can answer is serving, so
// it keeps its shards; it loses them only to its lease, as before. A
// deposition can still be wrong (an owner too slow to answer within
// answerWindow): safety never rests on any of this (I5), a wrongly deposed
// owner is merely fenced (I1), and it costs one needless failover.
//
// Why no flapping. A short pause or a busy machine delays beats by less
// than SuspectAfter; a voter that was itself paused (its own rounds came
// late) casts no vote until its streams have been read again; and an owner
// cut off from its peers but not from etcd answers every vote.

// DefaultSuspectAfter is how long an owner's watch stream may stay silent
// before a server votes that it is unresponsive: five beats.
const DefaultSuspectAfter = 500 * time.Millisecond

// answerWindow is how long a deposition waits, once a majority stands, for
// the suspect to answer: a vote's commit, its watch event, the answer's
// commit and its watch event, with room for a loaded machine. Two fifths of
// the suspicion period (200 ms by default): a cluster told to be patient
// with silence is as patient with answers.
func answerWindow(after time.Duration) time.Duration { return after * 2 / 5 }

// validateSuspicion checks Config.SuspectAfter and Config.PeerAddrs.
func validateSuspicion(after time.Duration, addrs map[string]string) error {
	if after != 0 && (after < 3*maxBeat || after > time.Minute) {
		return fmt.Errorf("suspect-after %s must be from %s (three beats) to 1m, or 0 to turn voting off", after, 3*maxBeat)
	}
	for id, addr := range addrs {
		if err := keys.ValidateName("server", id); err != nil {
			return fmt.Errorf("peer address of %q: %w", id, err)
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return fmt.Errorf("peer address %q of %s: want host:port", addr, id)
		}
	}
	return nil
}

// peerURL returns the URL to reach server id at, advertised as u: u itself,
// or u with the host:port of Config.PeerAddrs.
func (s *Server) peerURL(id, u string) string {
	addr, ok := s.cfg.PeerAddrs[id]
	if !ok {
		return u
	}
	pu, err := url.Parse(u)
	if err != nil {
		return u
	}
	pu.Host = addr
	return pu.String()
}

// peerKey names one incarnation of a server: its ID and the lease its keys
// are bound to.
type peerKey struct {
	id    string
	lease int64
}

// beatState is what a watcher knows of an owner's beats.
type beatState struct {
	last   time.Time // the last byte, or when watching began
	beaten bool      // a byte came at least once: the owner beats at all
}

// watching starts a beat record of k, silent from now, and returns it.
func (p *prober) watching(k peerKey) *beatState {
	p.beatMu.Lock()
	defer p.beatMu.Unlock()
	if p.beats == nil {
		p.beats = make(map[peerKey]*beatState)
	}
	b := &beatState{last: time.Now()}
	p.beats[k] = b
	return b
}

// unwatch drops b, the beat record of k, unless a newer watch of k has
// replaced it.
func (p *prober) unwatch(k peerKey, b *beatState) {
	p.beatMu.Lock()
	defer p.beatMu.Unlock()
	if p.beats[k] == b {
		delete(p.beats, k)
	}
}

// beat records a byte in b.
func (p *prober) beat(b *beatState) {
	p.beatMu.Lock()
	defer p.beatMu.Unlock()
	b.last, b.beaten = time.Now(), true
}

// beatStates returns a copy of the beat records.
func (p *prober) beatStates() map[peerKey]beatState {
	p.beatMu.Lock()
	defer p.beatMu.Unlock()
	out := make(map[peerKey]beatState, len(p.beats))
	for k, b := range p.beats {
		out[k] = *b
	}
	return out
}

// BeatingOwners returns how many of the owners this server watches beat on
// their watch streams now: a beat came within the last SuspectAfter (or
// half a second), the one before proving the stream works (also the metric
// tandem_watch_beating).
func (s *Server) BeatingOwners() int {
	window := s.cfg.SuspectAfter
	if window == 0 {
		window = DefaultSuspectAfter
	}
	n := 0
	for _, b := range s.probe.beatStates() {
		if b.beaten && time.Since(b.last) < window {
			n++
		}
	}
	return n
}

// suspicion is what etcd holds against one incarnation of a server.
type suspicion struct {
	votes map[string]int64 // voter -> mod revision of its vote
	alive int64            // mod revision of the suspect's answer (0: none)
}

// suspicions groups the keys under SuspectsPrefix (key -> mod revision) by
// suspect.
func suspicions(l keys.Layout, kvs map[string]int64) map[peerKey]*suspicion {
	out := make(map[peerKey]*suspicion)
	for key, rev := range kvs {
		id, lease, voter, ok := l.ParseSuspectKey(key)
		if !ok {
			continue
		}
		k := peerKey{id: id, lease: lease}
		sp := out[k]
		if sp == nil {
			sp = &suspicion{votes: make(map[string]int64)}
			out[k] = sp
		}
		if voter == "" {
			sp.alive = rev
		} else {
			sp.votes[voter] = rev
		}
	}
	return out
}

// verdict is a tally of the votes against one suspect.
type verdict struct {
	voters  []string // the votes that count, sorted
	need    int      // votes needed: a majority of the live servers other than the suspect
	last    int64    // the revision of the latest counted vote
	refuted bool     // the suspect answered after the latest counted vote
}

// agreed reports whether the suspect may be deposed (once answerWindow has
// passed without an answer).
func (v verdict) agreed() bool { return len(v.voters) >= v.need && !v.refuted }

// tally counts the votes of sp against suspect. live lists the live
// registered servers: only their votes count, never the suspect's own, and
// a majority of them, the suspect left out, is needed (at least one vote).
func tally(suspect string, sp *suspicion, live []string) verdict {
	var v verdict
	others := make(map[string]bool, len(live))
	for _, id := range live {
		if id != suspect {
			others[id] = true
		}
	}
	v.need = len(others)/2 + 1
	for voter, rev := range sp.votes {
		if others[voter] {
			v.voters = append(v.voters, voter)
			v.last = max(v.last, rev)
		}
	}
	sort.Strings(v.voters)
	v.refuted = len(v.voters) > 0 && sp.alive > v.last
	return v
}

// vote is the value of a vote key, for operators reading etcd.
type vote struct {
	Voter   string    `json:"voter"`
	Suspect string    `json:"suspect"`
	SilentS float64   `json:"silent_s"` // how long the stream had been silent
	At      time.Time `json:"at"`
}

// judgeRound is how often the judge looks at the beats and the votes.
func judgeRound(after time.Duration) time.Duration {
	return min(max(after/10, 10*time.Millisecond), 50*time.Millisecond)
}

// judge votes against the owners this server watches that stopped
// beating, answers the votes against this server, and deposes an owner the
// others agree on, until ctx ends. It is the only goroutine that writes
// this server's suspicion keys.
func (s *Server) judge(ctx context.Context) {
	prefix := s.keys.SuspectsPrefix()
	view := etcdview.New(s.cfg.Etcd, etcdview.Config{Watch: prefix, Log: s.log})
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		view.Run(ctx)
	}()
	defer func() { <-followed }()
	round := judgeRound(s.cfg.SuspectAfter)
	tick := time.NewTicker(round)
	defer tick.Stop()
	j := &judgement{s: s, cast: make(map[peerKey]time.Time), since: make(map[peerKey]agreedAt)}
	last := time.Now()
	var calmUntil time.Time
	for {
		changed := view.Changed()
		kvs := make(map[string]int64)
		for _, kv := range view.List(prefix) {
			kvs[string(kv.Key)] = kv.ModRevision
		}
		now := time.Now()
		if now.Sub(last) > 4*round {
			// This process was paused or starved: its streams have not been
			// read either, so their silence proves nothing yet.
			calmUntil = now.Add(2 * round)
		}
		last = now
		j.round(ctx, kvs, now, now.Before(calmUntil))
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-changed:
		}
	}
}

// agreedAt is when this server first saw a standing majority against a
// suspect, whose latest vote had revision rev.
type agreedAt struct {
	rev int64
	at  time.Time
}

// judgement is the judge's memory between rounds.
type judgement struct {
	s     *Server
	cast  map[peerKey]time.Time // when this server last cast its vote against each
	since map[peerKey]agreedAt
	// answered is the latest vote against this server it has answered.
	answered int64
}

// round is one look at the beats and the votes (kvs). calm holds back new
// votes (this server was just paused).
func (j *judgement) round(ctx context.Context, kvs map[string]int64, now time.Time, calm bool) {
	s := j.s
	me, lease := s.cfg.ID, int64(s.Lease())
	sus := suspicions(s.keys, kvs)
	// Answer the votes against this server: it is alive and reaches etcd.
	if sp := sus[peerKey{id: me, lease: lease}]; lease != 0 && sp != nil {
		latest := int64(0)
		for _, rev := range sp.votes {
			latest = max(latest, rev)
		}
		if latest > sp.alive && latest > j.answered {
			s.log.Warn("other servers suspect this server stopped answering; answering that it is alive", "votes", len(sp.votes))
			if j.write(ctx, clientv3.OpPut(s.keys.SuspectAlive(me, lease), me, clientv3.WithLease(clientv3.LeaseID(lease)))) {
				j.answered = latest
			}
		}
	}
	on := s.cfg.SuspectAfter > 0 && s.cfg.DeposeDead && lease != 0
	beats := s.probe.beatStates()
	// Vote, vote again, or withdraw.
	for k, b := range beats {
		if !on {
			break
		}
		key := s.keys.SuspectVote(k.id, k.lease, me)
		mine, voted := kvs[key]
		silent := b.beaten && now.Sub(b.last) >= s.cfg.SuspectAfter
		answered := voted && sus[k] != nil && sus[k].alive > mine
		// One vote per suspicion period at most, even before this
		// server's view shows its last one: a vote cast again moves the
		// revision every deposition waits on.
		castable := now.Sub(j.cast[k]) >= s.cfg.SuspectAfter
		switch {
		case silent && !calm && castable && (!voted || answered):
			val, _ := json.Marshal(vote{Voter: me, Suspect: k.id, SilentS: now.Sub(b.last).Seconds(), At: now.UTC()})
			if voted {
				s.log.Info("an owner answered our vote but its stream is still silent: voting again", "owner", k.id, "silent", now.Sub(b.last).Round(time.Millisecond).String())
			} else {
				s.log.Warn("an owner's watch stream is silent: voting that it stopped answering", "owner", k.id, "silent", now.Sub(b.last).Round(time.Millisecond).String())
			}
			if j.write(ctx, clientv3.OpPut(key, string(val), clientv3.WithLease(clientv3.LeaseID(lease)))) {
				j.cast[k] = now
			}
		case voted && !silent:
			s.log.Info("an owner beats again: withdrawing the vote against it", "owner", k.id)
			if j.write(ctx, clientv3.OpDelete(key)) {
				delete(j.cast, k)
			}
		}
	}
	// Withdraw the votes against owners no longer watched (they own nothing
	// now, or this server turned voting off).
	for k, sp := range sus {
		if _, voted := sp.votes[me]; !voted {
			continue
		}
		if _, watched := beats[k]; watched && on {
			continue
		}
		if j.write(ctx, clientv3.OpDelete(s.keys.SuspectVote(k.id, k.lease, me))) {
			delete(j.cast, k)
		}
	}
	if !on {
		return
	}
	// Depose an owner the others agree on.
	var live []string
	for _, si := range s.store.Servers() {
		live = append(live, si.ID)
	}
	for k := range j.since {
		if sus[k] == nil {
			delete(j.since, k)
		}
	}
	for k, sp := range sus {
		if k.id == me {
			continue
		}
		v := tally(k.id, sp, live)
		held := s.ownedBy(k.id, k.lease)
		if len(held) == 0 || !v.agreed() {
			delete(j.since, k)
			continue
		}
		if a, ok := j.since[k]; !ok || a.rev != v.last {
			j.since[k] = agreedAt{rev: v.last, at: now}
		}
		if now.Sub(j.since[k].at) < answerWindow(s.cfg.SuspectAfter) {
			continue
		}
		// The evidence, compared in the deposing transaction: every counted
		// vote as counted, and no answer since.
		also := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.keys.SuspectAlive(k.id, k.lease)), "=", sp.alive)}
		for _, voter := range v.voters {
			also = append(also, clientv3.Compare(clientv3.ModRevision(s.keys.SuspectVote(k.id, k.lease, voter)), "=", sp.votes[voter]))
		}
		seen := now.Add(-s.cfg.SuspectAfter)
		if b, ok := beats[k]; ok && b.beaten {
			seen = b.last
		}
		s.log.Info("a majority agrees an owner stopped answering, and it has not answered: deposing it",
			"owner", k.id, "voters", v.voters, "live", len(live))
		s.depose(ctx, k.id, k.lease, held, seen, tandem.DetectAgreement, also)
		delete(j.since, k)
	}
}

// write commits one operation of the judge's, briefly bounded; it reports
// whether it did.
func (j *judgement) write(ctx context.Context, op clientv3.Op) bool {
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := j.s.cfg.Etcd.Do(wctx, op)
	if err != nil && ctx.Err() == nil {
		j.s.log.Warn("could not write a suspicion key", "key", string(op.KeyBytes()), "err", err)
	}
	return err == nil
}
