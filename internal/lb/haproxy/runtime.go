package haproxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

// applyStates sends every server's up or down, in one batch.
func (d *Driver) applyStates(ctx context.Context, next lb.Desired) (int, error) {
	cmds := stateCmds(next)
	if len(cmds) == 0 {
		return 0, nil
	}
	n, err := d.runChecked(ctx, cmds)
	if err != nil {
		return n, fmt.Errorf("haproxy: apply up/down: %w", err)
	}
	return n, nil
}

// runChecked is runCurrent with every reply checked.
func (d *Driver) runChecked(ctx context.Context, cmds []string) (int, error) {
	replies, err := d.runCurrent(ctx, cmds...)
	if err != nil {
		return 0, err
	}
	return len(cmds), check(cmds, replies)
}

// runCurrent sends cmds to the current worker in one batch and returns
// their replies. The batch is led by `show info`: if the worker answering
// is soft-stopping (someone else reloaded the proxy), the connection is
// replaced and the batch sent again, which reaches the new worker.
func (d *Driver) runCurrent(ctx context.Context, cmds ...string) ([]string, error) {
	batch := append([]string{"show info"}, cmds...)
	for attempt := 0; ; attempt++ {
		replies, err := d.adm.run(ctx, batch...)
		if err != nil {
			return nil, err
		}
		in, err := parseInfo(replies[0])
		if err != nil {
			return nil, err
		}
		if !in.stopping {
			return replies[1:], nil
		}
		d.adm.close()
		if attempt == 20 {
			return nil, fmt.Errorf("%w: admin socket %s: only a stopping worker (pid %d) answers", ErrUnreachable, d.cfg.AdminSocket, in.pid)
		}
		if err := waitCtx(ctx, 10*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// changeServers adds, moves and removes servers through the runtime API,
// in that order, with next's up and down applied before any server leaves,
// so that a backend is never left without its new servers. A removed
// server leaves the rotation at once (maintenance); `del server` takes it
// when its connections are gone, which for most is at once. The others
// are parked and the reaper deletes them later: Apply never waits for a
// slow request on a server that is leaving.
func (d *Driver) changeServers(ctx context.Context, p plan, next lb.Desired) (int, error) {
	var cmds []string
	var unpark []ref
	for _, r := range p.add {
		d.log.Info("haproxy adding server", keyBackend, r.backend, keyMember, r.server, "addr", r.addr)
		if pk := d.parked[r.key()]; pk != nil {
			if pk.tls != r.tls {
				// Its TLS options cannot change at run time here.
				return 0, fmt.Errorf("server %s comes back with TLS turned on or off while the proxy still holds it", r)
			}
			// Still there, in maintenance: it only needs its address.
			unpark = append(unpark, r)
			cmds = append(cmds, setAddr(r))
			continue
		}
		cmds = append(cmds, "add server "+r.String()+" "+r.addr+" "+serverOpts(d.cfg.Checks, r.tls, d.paths()), "enable health "+r.String())
	}
	for _, r := range p.addr {
		d.log.Info("haproxy moving server", keyBackend, r.backend, keyMember, r.server, "addr", r.addr)
		cmds = append(cmds, setAddr(r))
	}
	sent := 0
	if len(cmds) > 0 {
		n, err := d.runChecked(ctx, cmds)
		sent += n
		if err != nil {
			return sent, err
		}
		for _, r := range unpark {
			delete(d.parked, r.key())
		}
	}
	if len(p.del) == 0 {
		return sent, nil
	}
	n, err := d.applyStates(ctx, next)
	sent += n
	if err != nil {
		return sent, err
	}
	cmds = cmds[:0]
	for _, r := range p.del {
		d.log.Info("haproxy removing server", keyBackend, r.backend, keyMember, r.server)
		cmds = append(cmds, "disable server "+r.String())
	}
	n, err = d.runChecked(ctx, cmds)
	sent += n
	if err != nil {
		return sent, err
	}
	now := time.Now()
	for _, r := range p.del {
		d.parked[r.key()] = &parking{since: now, tls: r.tls}
	}
	n, err = d.reapLocked(ctx)
	sent += n
	if err != nil {
		return sent, err
	}
	if len(d.parked) > 0 && !d.reaping && !d.closed {
		d.reaping = true
		d.reaper.Add(1)
		go d.reap()
	}
	return sent, nil
}

func setAddr(r ref) string {
	ap, _ := netip.ParseAddrPort(r.addr)
	return fmt.Sprintf("set server %s addr %s port %d", r, ap.Addr(), ap.Port())
}

// reapLocked tries once to delete every parked server, shutting the
// sessions of those parked longer than DrainTimeout. The caller holds mu.
func (d *Driver) reapLocked(ctx context.Context) (int, error) {
	if len(d.parked) == 0 {
		return 0, nil
	}
	var refs []ref
	var cmds []string
	for r, pk := range d.parked {
		if !pk.shut && time.Since(pk.since) > d.cfg.DrainTimeout {
			d.log.Info("haproxy shutting sessions of removed server", keyBackend, r.backend, keyMember, r.server)
			pk.shut = true
			cmds = append(cmds, "shutdown sessions server "+r.String())
			refs = append(refs, ref{})
		}
		if time.Since(pk.since) < d.cfg.DeleteGrace {
			continue
		}
		refs = append(refs, r)
		cmds = append(cmds, "del server "+r.String())
	}
	if len(cmds) == 0 {
		return 0, nil
	}
	replies, err := d.runCurrent(ctx, cmds...)
	if err != nil {
		return 0, err
	}
	var errs []error
	for i, r := range refs {
		reply := strings.TrimSpace(replies[i])
		switch {
		case r == ref{}: // shutdown sessions
			if reply != "" {
				errs = append(errs, &CommandError{Cmd: cmds[i], Reply: reply})
			}
		case reply == "Server deleted." || reply == "No such server.":
			delete(d.parked, r)
		case strings.Contains(reply, "still has"):
			// Idle connections outlive shut sessions by up to a few
			// pool-purge-delays.
			if pk := d.parked[r]; pk.shut && time.Since(pk.since) > d.cfg.DrainTimeout+30*purgeDelay {
				// Out of rotation all the same; the next reload drops it.
				d.log.Warn("haproxy removed server keeps connections; left in maintenance", keyBackend, r.backend, keyMember, r.server)
				delete(d.parked, r)
			}
		default:
			delete(d.parked, r)
			errs = append(errs, &CommandError{Cmd: cmds[i], Reply: reply})
		}
	}
	return len(cmds), errors.Join(errs...)
}

// reap deletes parked servers until none is left or the driver closes.
func (d *Driver) reap() {
	defer d.reaper.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-d.closing.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		if d.closed || len(d.parked) == 0 {
			d.reaping = false
			d.mu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(d.closing, d.cfg.IOTimeout)
		if _, err := d.reapLocked(ctx); err != nil {
			d.log.Warn("haproxy deleting removed servers", keyError, err)
		}
		cancel()
		d.mu.Unlock()
	}
}

// common is next restricted to the servers cur has at the same address.
func common(cur, next lb.Desired) lb.Desired {
	have := map[string]string{}
	for _, b := range cur.Backends {
		for _, s := range b.Servers {
			have[b.Name+"/"+s.Name] = s.Addr
		}
	}
	var out lb.Desired
	for _, b := range next.Backends {
		nb := b
		nb.Servers = nil
		for _, s := range b.Servers {
			if addr, ok := have[b.Name+"/"+s.Name]; ok && sameAddr(addr, s.Addr) {
				nb.Servers = append(nb.Servers, s)
			}
		}
		out.Backends = append(out.Backends, nb)
	}
	return out
}

func (d *Driver) info(ctx context.Context) (info, error) {
	replies, err := d.adm.run(ctx, "show info")
	if err != nil {
		return info{}, err
	}
	return parseInfo(replies[0])
}

func (d *Driver) showProc(ctx context.Context) (procs, error) {
	out, err := masterCmd(ctx, d.cfg.MasterSocket, d.cfg.IOTimeout, "show proc")
	if err != nil {
		return procs{}, err
	}
	return parseProcs(out)
}
