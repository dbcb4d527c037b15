package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/transport"
)

// Crash detection by connection loss (issue 13, point 1).
//
// Every server holds a stream open to every owner other than itself: GET
// /v1/ha/watch, which the owner answers with a byte every probe interval and
// never ends on its own. When the owner's process dies, on a live host, its
// kernel closes the stream's connection at once, and the watcher reads EOF
// (or a reset) within a millisecond. A stream can also end for reasons that
// prove nothing (a network blip, a proxy, a restart of the watcher's own
// transport), so the end is confirmed by ONE connection to the owner's port:
// refused means nothing listens any more, the process is gone, and the
// watcher deposes every shard of that server at once (prober's fenced
// deposition, recorded with detection "connection-lost"). Anything else (the
// owner answers, or a timeout) proves nothing; the watcher reconnects and
// the prober and the lease remain the fallbacks.
//
// The beats also say the owner is alive and answering: a server that reads
// none for a while votes that it is unresponsive (suspect.go, issue 13
// point 2). They come every beat interval (the probe interval, at most
// maxBeat) from the goroutine serving the stream, which does nothing else,
// so a busy owner still beats on time.
//
// A stream lasts watchLife (a few seconds), then the owner ends it with a
// renewal byte and the watcher opens the next at once: a refusal then is a
// death too.
//
// A clean shutdown is not a crash: the owner resigns first (Close), and only
// then writes the goodbye byte and ends the stream; a watcher that reads the
// goodbye confirms nothing. Even a goodbye lost on the way is harmless: the
// resigned epochs are gone, and the deposition, fenced by them, does nothing.
//
// Why a stream and not a raw TCP connection: it goes through the same port,
// TLS and certificate checks as every other call between servers (PeerTLS),
// needs no second listener, and an HTTP proxy or load balancer in the way is
// no different from the probes'. Why confirm with a refusal and not act on
// the EOF alone: a stream cut by the network must not depose a live owner
// (that would be safe, I1, but a needless failover). Timing never decides
// anything here (I5): a wrongly deposed owner is merely fenced.

// The bytes of the watch stream.
const (
	watchBeat  = '.' // the owner is alive
	watchBye   = 'x' // the owner is stopping on purpose and has resigned
	watchRenew = 'r' // the stream has lasted its life: open another
)

// maxBeat bounds the beat interval, whatever the probe interval: watchers
// suspect an owner after SuspectAfter without a beat, which must stay
// several beats long however the owner is configured.
const maxBeat = 100 * time.Millisecond

// beatInterval is how often an owner beats on its watch streams.
func beatInterval(probe time.Duration) time.Duration { return min(probe, maxBeat) }

// watchLife bounds one stream's life: an HTTP server closing (a test's
// httptest.Server, a Shutdown not preceded by the server's Close) waits for
// the requests in flight, so none may last forever. The watcher opens the
// next one at once, and a refusal then is a death like any other.
func watchLife(interval time.Duration) time.Duration { return max(20*interval, 2*time.Second) }

// maxWatchers bounds the streams one server serves at once (the route needs
// no token: a cluster has a handful of servers, each holding one).
const maxWatchers = 256

// errTooManyWatchers answers a watch beyond maxWatchers.
var errTooManyWatchers = tandem.Errorf(tandem.EUNAVAILABLE, "too many watch streams (at most %d)", maxWatchers)

// Watch serves one watch stream (GET /v1/ha/watch): a beat now, then one
// every probe interval, until ctx ends (the watcher went away) or the server
// stops. A stopping server has resigned by the time its stopped channel
// closes (Close), so its last beat is the goodbye. It returns the error of
// a failed beat, or nil.
func (s *Server) Watch(ctx context.Context, beat func([]byte) error) error {
	if s.probe.watchers.Add(1) > maxWatchers {
		s.probe.watchers.Add(-1)
		return errTooManyWatchers
	}
	defer s.probe.watchers.Add(-1)
	select {
	case <-s.stopped:
		return beat([]byte{watchBye})
	default:
	}
	if err := beat([]byte{watchBeat}); err != nil {
		return err
	}
	tick := time.NewTicker(beatInterval(s.cfg.ProbeInterval))
	defer tick.Stop()
	life := time.NewTimer(watchLife(s.cfg.ProbeInterval))
	defer life.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.stopped:
			return beat([]byte{watchBye})
		case <-life.C:
			return beat([]byte{watchRenew})
		case <-tick.C:
			if err := beat([]byte{watchBeat}); err != nil {
				return err
			}
		}
	}
}

// WatchStreams returns how many watch streams this server serves now: one
// from every other server while it owns a shard (also the metric
// tandem_watch_streams).
func (s *Server) WatchStreams() int { return int(s.probe.watchers.Load()) }

// registerWatchMetrics exposes WatchStreams and BeatingOwners (once per
// server).
func (s *Server) registerWatchMetrics() {
	g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tandem_watch_streams",
		Help: "Crash-detection streams (GET /v1/ha/watch) this server serves to other servers."},
		func() float64 { return float64(s.WatchStreams()) })
	_ = s.Registry().Register(g) // already registered by an earlier Start: keep that one
	b := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tandem_watch_beating",
		Help: "Owners whose watch streams (GET /v1/ha/watch) beat to this server now."},
		func() float64 { return float64(s.BeatingOwners()) })
	_ = s.Registry().Register(b)
}

// ownerWatch is one watched owner: a server, reached at url, whose keys are
// bound to lease.
type ownerWatch struct {
	id, url string
	lease   int64
	cancel  context.CancelFunc
}

// watchOwners keeps a watch stream open to every server that owns a shard,
// other than this one, until ctx ends. It is started by the prober's run.
func (s *Server) watchOwners(ctx context.Context) {
	stream := transport.NewHTTPClient(transport.HTTPOptions{NoProxy: true, TLS: s.cfg.PeerTLS,
		ResponseHeaderTimeout: max(2*s.cfg.ProbeInterval, 250*time.Millisecond)})
	// The confirmation dials afresh: a pooled connection to a dead process
	// would answer with a reset instead of the refusal that proves it.
	confirm := transport.NewHTTPClient(transport.HTTPOptions{Timeout: max(2*s.cfg.ProbeInterval, 250*time.Millisecond), NoProxy: true, TLS: s.cfg.PeerTLS})
	confirm.Transport.(*http.Transport).DisableKeepAlives = true
	var wg sync.WaitGroup
	watches := map[string]*ownerWatch{}
	defer func() {
		for _, w := range watches {
			w.cancel()
		}
		wg.Wait()
	}()
	for {
		changed := s.store.Changed()
		want := map[string]election.Owner{}
		for _, o := range s.store.Owners() {
			if o.ID != s.cfg.ID {
				o.URL = s.peerURL(o.ID, o.URL)
				want[o.ID] = o
			}
		}
		for id, w := range watches {
			if o, ok := want[id]; !ok || o.URL != w.url || o.Lease != w.lease {
				w.cancel()
				delete(watches, id)
			}
		}
		for id, o := range want {
			if watches[id] != nil {
				continue
			}
			wctx, cancel := context.WithCancel(ctx)
			w := &ownerWatch{id: id, url: o.URL, lease: o.Lease, cancel: cancel}
			watches[id] = w
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.watchOwner(wctx, stream, confirm, w)
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// watchRetry is how soon a watcher connects again after a stream ended
// without a goodbye while the owner's port still answered; failures in a row
// double it, up to two seconds.
const watchRetry = 50 * time.Millisecond

// watchOwner holds a stream open to w's server until ctx ends (the server
// no longer owns anything, or its lease changed), and deposes it when the
// stream ends without a goodbye and a connection to its port is refused:
// the one that confirms the end, or the first attempt to open a stream
// again.
func (s *Server) watchOwner(ctx context.Context, stream, confirm *http.Client, w *ownerWatch) {
	var (
		wait time.Duration
		lost time.Time // when a stream ended without a goodbye, until one is open again
	)
	// Every byte read is a beat: how long none came decides suspicion.
	peer := peerKey{id: w.id, lease: w.lease}
	beats := s.probe.watching(peer)
	defer s.probe.unwatch(peer, beats)
	onByte := func() { s.probe.beat(beats) }
	for {
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		res := watchOnce(ctx, stream, w.url, onByte)
		if ctx.Err() != nil {
			return
		}
		refused := false
		switch {
		case res.last == watchBye:
			// Stopping on purpose, resigned: nothing to confirm. Its keys go
			// away and ctx with them; until then, look now and then.
			lost, wait = time.Time{}, time.Second
			continue
		case res.last == watchRenew:
			// The stream's life is over: open the next at once. Should that
			// be refused, the process died in between.
			lost, wait = res.closedAt, 0
			continue
		case res.connected:
			// A process being killed may close its connections a moment
			// before its listener, and a confirmation that lands in that
			// moment sees no refusal: the first reconnection, soon, is
			// another confirmation.
			lost, wait = res.closedAt, watchRetry/5
			_, refused = probe(ctx, confirm, w.url)
		case !lost.IsZero() && res.refused:
			refused = true
		}
		if !refused {
			// Never connected (unreachable, or a server without the route:
			// the prober watches it meanwhile), or a blip, not a death:
			// connect again, paced.
			if res.connected {
				s.log.Debug("watch stream of an owner ended, but its port still answers", "owner", w.id, "err", res.err)
			} else {
				wait = min(max(2*wait, watchRetry), 2*time.Second)
			}
			continue
		}
		wait = watchRetry
		s.probe.markGone(w.id, w.lease)
		if !s.cfg.DeposeDead {
			continue
		}
		held := s.ownedBy(w.id, w.lease)
		if len(held) == 0 {
			return
		}
		s.log.Info("watch stream of an owner closed and its port refuses connections: its process is gone",
			"owner", w.id, "shards", len(held), "err", res.err)
		s.depose(ctx, w.id, w.lease, held, lost, tandem.DetectConnectionLost, nil)
	}
}

// ownedBy returns the owner records of the server id under lease.
func (s *Server) ownedBy(id string, lease int64) []election.Owner {
	var out []election.Owner
	for _, o := range s.store.Owners() {
		if o.ID == id && o.Lease == lease {
			out = append(out, o)
		}
	}
	return out
}

// watchResult is how one watch stream ended.
type watchResult struct {
	refused   bool      // the connection was refused: nothing listens
	connected bool      // the stream was open (200 and a first byte)
	last      byte      // the last byte read (watchBye, watchRenew, ...)
	closedAt  time.Time // when it ended: for a crash, when the process died
	err       error
}

// watchOnce opens one watch stream to url and reads it until it ends,
// calling onByte on every read that brings bytes.
func watchOnce(ctx context.Context, client *http.Client, url string, onByte func()) watchResult {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/ha/watch", nil)
	if err != nil {
		return watchResult{err: err}
	}
	resp, err := client.Do(req)
	if err != nil {
		return watchResult{err: err, closedAt: time.Now(), refused: errors.Is(err, syscall.ECONNREFUSED)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return watchResult{err: errors.New("watch answered " + resp.Status), closedAt: time.Now()}
	}
	var res watchResult
	buf := make([]byte, 64)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			onByte()
			res.connected = true
			res.last = buf[n-1]
		}
		if err != nil {
			res.closedAt = time.Now()
			if !errors.Is(err, io.EOF) {
				res.err = err
			}
			return res
		}
	}
}
