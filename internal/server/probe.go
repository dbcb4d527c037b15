package server

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/transport"
)

// deadAfter is how many consecutive refused connections make a server
// declare an owner dead.
const deadAfter = 3

// prober is each server's health monitor of the owners (seeds/004's health
// monitor): the active, with one shard; every server that owns a shard, with
// several. It records the last time each answered, so a new owner can say
// how long detection took; and when an owner's port refuses connections
// several times in a row after answering before, its process is gone, so the
// prober deposes every shard it owns at once instead of waiting out its
// lease. A timeout (a hung or cut-off owner) proves nothing and is left to
// the lease. Safety never rests on the prober (I5): deposing only deletes the
// owner keys of those exact epochs, and fencing does the rest (I1).
type prober struct {
	mu    sync.Mutex
	peers map[string]*peerHealth // by server ID
	// watchers counts the watch streams this server serves (watch.go).
	watchers atomic.Int64
	// beats holds, for every owner this server watches, when a byte last
	// came on its watch stream (suspect.go).
	beatMu sync.Mutex
	beats  map[peerKey]*beatState
}

type peerHealth struct {
	url   string
	lease int64 // the lease of the server's keys when last probed
	// epoch is the newest epoch the server owned when last probed: what a
	// probe found of an earlier ownership does not say how a new one
	// answers (see answering).
	epoch   int64
	seen    time.Time
	refused int
	failing bool // the last probe got no good answer
	// gone says the server's process is known to be gone (its watch
	// stream ended and its port refused): nothing to send clients to,
	// until a probe finds it answering again.
	gone bool
}

func (p *prober) run(ctx context.Context, s *Server) {
	// The watch streams (watch.go) notice a crash at once; the probes below
	// are their fallback, for owners no stream reaches.
	// A hung or cut-off owner keeps its connections open but stops
	// beating on them: the judge (suspect.go) deposes it once the others
	// agree.
	s.registerWatchMetrics()
	watched, judged := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		s.watchOwners(ctx)
	}()
	go func() {
		defer close(judged)
		s.judge(ctx)
	}()
	defer func() { <-watched; <-judged }()
	client := transport.NewHTTPClient(transport.HTTPOptions{Timeout: max(2*s.cfg.ProbeInterval, 250*time.Millisecond), NoProxy: true, TLS: s.cfg.PeerTLS})
	tick := time.NewTicker(s.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		owners := s.store.Owners()
		byServer := map[string][]election.Owner{}
		for _, o := range owners {
			if o.ID != s.cfg.ID {
				byServer[o.ID] = append(byServer[o.ID], o)
			}
		}
		p.forget(byServer)
		ids := make([]string, 0, len(byServer))
		for id := range byServer {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		var wg sync.WaitGroup
		for _, id := range ids {
			held := byServer[id]
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.check(ctx, s, client, id, held)
			}()
		}
		wg.Wait()
	}
}

// forgetAfter is how long the prober remembers when a peer that owns
// nothing any more was last seen: a new owner asks, to say how long the
// detection of a lost owner took.
const forgetAfter = time.Minute

// forget drops the peers that own nothing and have not been seen for a while.
func (p *prober) forget(owning map[string][]election.Owner) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, h := range p.peers {
		if _, ok := owning[id]; !ok && time.Since(h.seen) > forgetAfter {
			delete(p.peers, id)
		}
	}
}

// check probes the server id, which owns held, and deposes it if it is dead.
func (p *prober) check(ctx context.Context, s *Server, client *http.Client, id string, held []election.Owner) {
	o := held[0]
	o.URL = s.peerURL(o.ID, o.URL)
	ok, refused := probe(ctx, client, o.URL)
	p.mu.Lock()
	if p.peers == nil {
		p.peers = make(map[string]*peerHealth)
	}
	h := p.peers[id]
	if h == nil || h.lease != o.Lease || h.url != o.URL {
		h = &peerHealth{url: o.URL, lease: o.Lease}
		p.peers[id] = h
	}
	h.failing, h.epoch = !ok, maxEpoch(held)
	switch {
	case ok:
		h.seen, h.refused, h.gone = time.Now(), 0, false
	case refused:
		h.refused++
	default:
		h.refused = 0
	}
	dead := s.cfg.DeposeDead && h.refused >= deadAfter && !h.seen.IsZero()
	seen := h.seen
	p.mu.Unlock()
	if dead {
		s.depose(ctx, id, o.Lease, held, seen, tandem.DetectProbesRefused, nil)
	}
}

// probe asks url whether it is active. refused reports a connection refused:
// nothing listens on the server's port any more.
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

// depose frees every shard of the server id, found dead or agreed
// unresponsive, at once, fenced by each shard's epoch (and by also, the
// evidence, when given), and revokes its lease. detection (a tandem.Detect*
// value) says how it was found out; seen is when the server was last known
// alive. It reports whether it freed anything.
func (s *Server) depose(ctx context.Context, id string, lease int64, held []election.Owner, seen time.Time, detection string, also []clientv3.Cmp) bool {
	owned := make([]election.Deposed, 0, len(held))
	for _, o := range held {
		k, ok := s.shardOfOwnerKey(o.Key)
		if !ok {
			continue
		}
		owned = append(owned, election.Deposed{Keys: s.keys.Shard(k, s.Shards()), Owner: o, Detection: detection})
	}
	// Not bound to ctx: a watch of the owner ends the moment the
	// deposition deletes its keys, and the lease revocation that follows
	// must still be sent, or the dead server's membership record stays for
	// its lease's life and the target map keeps naming it. Bounded by the
	// lease TTL instead.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.LeaseTTL)
	defer cancel()
	n, err := election.DeposeIf(dctx, s.cfg.Etcd, clientv3.LeaseID(lease), seen, also, owned...)
	switch {
	case errors.Is(err, election.ErrCondFailed):
		s.log.Info("did not depose an owner: the evidence changed", "owner", id, "detection", detection)
	case err != nil:
		s.log.Warn("could not depose an owner", "owner", id, "shards", len(owned), "detection", detection, "err", err)
	case n > 0:
		why := "its port refuses connections"
		if detection == tandem.DetectAgreement {
			why = "the other servers agree it stopped answering"
		}
		s.log.Warn("deposed an owner: "+why, "owner", id, "shards", n,
			"detection", detection, "last_seen", time.Since(seen).Round(time.Millisecond).String())
	}
	return n > 0
}

// shardOfOwnerKey returns the shard whose owner key is key.
func (s *Server) shardOfOwnerKey(key string) (int, bool) {
	if s.Shards() == 1 {
		return 0, key == s.keys.Leader()
	}
	k, part, ok := s.keys.ParseShardKey(key)
	return k, ok && part == "owner" && k < s.Shards()
}

// answering reports whether the server id, owning under lease with epoch
// as its newest epoch, seems to answer: not known to fail in that
// ownership, or answered within the last few probes. A standby redirects
// clients only to an owner that answers; to a hung one it says "no active"
// so clients try the other servers instead of hanging there too. What the
// probes found of an earlier ownership does not count: not of an earlier
// incarnation (a server killed, restarted and now elected again, under a
// new lease), nor of an earlier term of the same process (same lease).
// The probe that last found it failing may have asked it just after it
// handed off, when it rightly answered "not active": a client held for its
// next term would otherwise wait for the next probe (up to a probe
// interval, 100 ms, in a switchover back to a server active within the
// last minute).
func (p *prober) answering(id string, lease, epoch int64, interval time.Duration) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.peers[id]
	if h == nil || h.lease != lease || h.epoch != epoch || !h.failing {
		return true
	}
	return !h.gone && time.Since(h.seen) < 3*interval
}

// maxEpoch is the newest epoch of owned.
func maxEpoch(owned []election.Owner) int64 {
	var e int64
	for _, o := range owned {
		e = max(e, o.Epoch)
	}
	return e
}

// markGone records that the process of server id, under lease, is gone:
// its watch stream ended and a connection to its port was refused. Until a
// probe finds it answering again, no client is sent there.
func (p *prober) markGone(id string, lease int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.peers[id]
	if h == nil || h.lease != lease {
		return // not probed yet, or another incarnation: the probes decide
	}
	h.failing, h.gone = true, true
}

// lastSeen returns when server id last answered.
func (p *prober) lastSeen(id string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.peers[id]
	if h == nil || h.seen.IsZero() {
		return time.Time{}, false
	}
	return h.seen, true
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
	sess := s.session
	s.mu.RUnlock()
	if s.State() == tandem.StateStopping {
		return errUnhealthy("server is stopping")
	}
	if sess == nil {
		return errUnhealthy("no etcd session (lease lost; reconnecting)")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := s.cfg.Etcd.Get(ctx, s.keys.Config()); err != nil {
		return errUnhealthy("etcd read failed: " + err.Error())
	}
	if err := s.store.WatchErr(); err != nil {
		return errUnhealthy("etcd watch interrupted: " + err.Error())
	}
	return nil
}

type errUnhealthy string

func (e errUnhealthy) Error() string { return string(e) }
