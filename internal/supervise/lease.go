package supervise

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// lease is a supervisor's etcd lease, kept alive by its own loop so that
// it knows, at every instant, the earliest time etcd could expire it: the
// moment the last acknowledged renewal was *sent*, plus the TTL (etcd
// starts the TTL when it receives a renewal, which is later; a leader change
// only extends leases). The supervisor kills its commands at that moment
// minus a margin if no renewal was acknowledged since: self-fencing that
// happens before any other node can win the services.
type lease struct {
	cli    *clientv3.Client
	id     clientv3.LeaseID
	ttl    time.Duration
	margin time.Duration

	mu       sync.Mutex
	lastSent time.Time // send time of the last acknowledged renewal (or of the grant)
	lost     chan struct{}
	cause    error
}

// errLeaseLost ends every term when the lease is lost.
var errLeaseLost = errors.New("supervise: etcd lease lost (or could not be renewed in time): commands self-fenced")

// grantLease grants a lease of ttl (whole seconds). margin is how long
// before the earliest expiry the holder counts it lost.
func grantLease(ctx context.Context, cli *clientv3.Client, ttl, margin time.Duration) (*lease, error) {
	sent := time.Now()
	resp, err := cli.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return nil, fmt.Errorf("grant a %s lease: %w", ttl, err)
	}
	return &lease{cli: cli, id: resp.ID, ttl: ttl, margin: margin, lastSent: sent, lost: make(chan struct{})}, nil
}

// Lost is closed once the lease is counted lost.
func (l *lease) Lost() <-chan struct{} { return l.lost }

// Deadline is the self-fence deadline: the earliest expiry minus margin.
func (l *lease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastSent.Add(l.ttl - l.margin)
}

// EarliestExpiry is the earliest time etcd could expire the lease.
func (l *lease) EarliestExpiry() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastSent.Add(l.ttl)
}

func (l *lease) setLost(cause error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.lost:
	default:
		l.cause = cause
		close(l.lost)
	}
}

// Cause says why the lease was counted lost.
func (l *lease) Cause() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cause
}

// keepAlive renews the lease every ttl/8 until ctx ends or it is lost. It
// returns once Lost is closed or ctx ends; on ctx's end the lease is
// revoked (best effort) so keys bound to it go at once.
func (l *lease) keepAlive(ctx context.Context) {
	every := max(l.ttl/8, 50*time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	// The first renewal goes at once: the deadline counts from the grant's
	// send time, which a slow etcd may have put most of a TTL before now.
	first := make(chan struct{}, 1)
	first <- struct{}{}
	for {
		// The deadline is checked first: a tick that is also ready (one comes
		// during every renewal that times out) must not postpone it.
		if !time.Now().Before(l.Deadline()) {
			l.setLost(fmt.Errorf("%w: no renewal acknowledged for %s", errLeaseLost, l.ttl-l.margin))
			return
		}
		deadline := time.NewTimer(time.Until(l.Deadline()))
		select {
		case <-ctx.Done():
			deadline.Stop()
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = l.cli.Revoke(rctx, l.id)
			cancel()
			l.setLost(context.Cause(ctx))
			return
		case <-deadline.C:
			l.setLost(fmt.Errorf("%w: no renewal acknowledged for %s", errLeaseLost, l.ttl-l.margin))
			return
		case <-first:
		case <-tick.C:
		}
		deadline.Stop()
		sent := time.Now()
		// A renewal may not outlast the deadline, which is not watched while
		// it runs: otherwise the margin could be spent waiting for it.
		rctx, cancel := context.WithTimeout(ctx, min(max(l.ttl/4, 100*time.Millisecond), time.Until(l.Deadline())))
		resp, err := l.cli.KeepAliveOnce(rctx, l.id)
		cancel()
		switch {
		case err == nil && resp.TTL > 0:
			l.mu.Lock()
			if sent.After(l.lastSent) {
				l.lastSent = sent
			}
			l.mu.Unlock()
		case err != nil && ctx.Err() == nil && isLeaseNotFound(err):
			l.setLost(fmt.Errorf("%w: etcd no longer has it", errLeaseLost))
			return
		}
	}
}

func isLeaseNotFound(err error) bool {
	return errors.Is(err, rpctypes.ErrLeaseNotFound)
}
