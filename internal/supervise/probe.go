package supervise

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/election"
)

// prober watches the supervisors that own services this node could run.
// A supervisor whose port refuses connections is dead on a live host (the
// kernel closed its socket), so its services are deposed at once, each
// deletion fenced by its epoch, instead of waiting for its lease: a
// liveness shortcut, never something safety rests on (a wrongly deposed
// owner is fenced, and its command is fenced by the next owner under
// strict fencing). A timeout proves nothing and only the lease decides.
type prober struct {
	s *Supervisor

	// client makes a new connection for every probe: a refused connection
	// is the evidence of death, and a kept-alive one would hide it.
	client *http.Client

	mu      sync.Mutex
	seen    map[string]time.Time // node -> last time its supervisor answered
	refused map[string]int       // node -> refused connections in a row
}

func newProber(s *Supervisor) *prober {
	// With TLS (Security.PeerTLS), an https owner is probed over TLS; a
	// refused connection is refused before any handshake, so the evidence
	// of death is the same.
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil, TLSClientConfig: s.cfg.Security.PeerTLS}
	return &prober{s: s, seen: map[string]time.Time{}, refused: map[string]int{}, client: &http.Client{Transport: tr}}
}

// lastSeen returns when node's supervisor last accepted a connection.
func (p *prober) lastSeen(node string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.seen[node]
	return t, ok
}

func (p *prober) run(ctx context.Context) {
	tick := time.NewTicker(p.s.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		targets := p.targets()
		var wg sync.WaitGroup
		for node, owned := range targets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.probe(ctx, node, owned)
			}()
		}
		wg.Wait()
	}
}

// targets returns, by node, the ownerships held by other nodes of services
// this node offers.
func (p *prober) targets() map[string][]election.Deposed {
	out := map[string][]election.Deposed{}
	for name := range p.s.offered() {
		o := p.s.view.Owner(name)
		if o == nil || o.ID == p.s.cfg.Node {
			continue
		}
		out[o.ID] = append(out[o.ID], election.Deposed{Keys: p.s.keys.SuperviseOwnership(name), Owner: *o})
	}
	return out
}

func (p *prober) probe(ctx context.Context, node string, owned []election.Deposed) {
	u, err := url.Parse(owned[0].Owner.URL)
	if err != nil || u.Host == "" {
		return
	}
	// A completed handshake is not a sign of life: the kernel of a frozen
	// process's host completes it. An answer to /healthz is.
	timeout := max(p.s.cfg.ProbeInterval, 100*time.Millisecond)
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(hctx, http.MethodGet, strings.TrimSuffix(owned[0].Owner.URL, "/")+"/healthz", nil)
	resp, err := p.client.Do(req)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
		resp.Body.Close()
		p.seen[node] = time.Now()
		p.refused[node] = 0
		return
	}
	if !isRefused(err) {
		p.refused[node] = 0
		return
	}
	p.refused[node]++
	if p.refused[node] < p.s.cfg.ProbeFailures {
		return
	}
	p.refused[node] = 0
	seen := p.seen[node]
	if seen.IsZero() {
		seen = time.Now()
	}
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	n, err := election.Depose(dctx, p.s.cli, clientv3.LeaseID(owned[0].Owner.Lease), seen, owned...)
	if err != nil {
		p.s.log.Warn("could not depose a dead supervisor", "dead", node, "err", err)
		return
	}
	if n > 0 {
		p.s.log.Warn("deposed a dead supervisor (its port refuses connections)", "dead", node, "services", n)
	}
}
