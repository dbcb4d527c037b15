package supervise

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/etcdtest"
)

const margin = ttl / 4

// keepAlive grants a lease through cli and keeps it alive until the test
// ends (revoking it then).
func keepAlive(t *testing.T, cli *clientv3.Client) *lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	l, err := grantLease(ctx, cli, ttl, margin)
	if err != nil {
		t.Fatal(err)
	}
	life, end := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		l.keepAlive(life)
		close(done)
	}()
	t.Cleanup(func() {
		end()
		<-done
	})
	return l
}

// timeToLive is the lease's remaining TTL as etcd counts it (-1: gone).
func timeToLive(t *testing.T, cli *clientv3.Client, l *lease) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	resp, err := cli.TimeToLive(ctx, l.id)
	if err != nil {
		t.Fatal(err)
	}
	return resp.TTL
}

// TestLeaseRenewals: acknowledged renewals move the earliest expiry (and
// the self-fence deadline, a margin before it) forward, never past the
// send time of the last renewal plus the TTL; a lease whose holder ends is
// revoked at once.
func TestLeaseRenewals(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	before := time.Now()
	l, err := grantLease(ctx, cli, ttl, margin)
	if err != nil {
		t.Fatal(err)
	}
	granted := l.EarliestExpiry()
	if granted.Before(before.Add(ttl)) || granted.After(time.Now().Add(ttl)) {
		t.Errorf("got earliest expiry %v after the grant, want the grant's send time plus %v", granted.Sub(before), ttl)
	}
	done := make(chan struct{})
	go func() {
		l.keepAlive(ctx)
		close(done)
	}()
	var last time.Time
	waitFor(t, "renewals to move the earliest expiry forward by more than a TTL", long, func() bool {
		exp, dl := l.EarliestExpiry(), l.Deadline()
		if exp.After(time.Now().Add(ttl)) {
			t.Fatalf("earliest expiry %v from now, want at most the TTL %v: it counts from a send time", time.Until(exp), ttl)
		}
		if exp.Sub(dl) != margin {
			t.Fatalf("got deadline %v before the earliest expiry, want the margin %v", exp.Sub(dl), margin)
		}
		if exp.Before(last) {
			t.Fatalf("earliest expiry went back from %v to %v", last, exp)
		}
		last = exp
		select {
		case <-l.Lost():
			t.Fatalf("lease lost while etcd is up: %v", l.Cause())
		default:
		}
		return exp.After(granted.Add(ttl + ttl/4))
	})
	if got := timeToLive(t, cli, l); got < 0 {
		t.Errorf("got TTL %d in etcd, want the lease alive", got)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(long):
		t.Fatal("keepAlive did not return after its context ended")
	}
	select {
	case <-l.Lost():
	default:
		t.Error("Lost not closed after the holder ended")
	}
	if got := timeToLive(t, cli, l); got != -1 {
		t.Errorf("got TTL %d in etcd after the holder ended, want -1: revoked", got)
	}
}

// TestLeaseLostWhenRevoked: a lease etcd no longer has is lost at the next
// renewal.
func TestLeaseLostWhenRevoked(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	l := keepAlive(t, cli)
	if _, err := cli.Revoke(context.Background(), l.id); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	select {
	case <-l.Lost():
	case <-time.After(long):
		t.Fatal("lease not lost after its revocation")
	}
	t.Logf("lost %v after the revocation", time.Since(revoked))
	if err := l.Cause(); !errors.Is(err, errLeaseLost) || !strings.Contains(err.Error(), "etcd no longer has it") {
		t.Errorf("got cause %v, want errLeaseLost: etcd no longer has it", err)
	}
}

// TestLeaseLostBeforeExpiry: with etcd out of reach, the holder counts its
// lease lost before etcd could expire it (the self-fence guarantee), and
// etcd still has it then.
func TestLeaseLostBeforeExpiry(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	p := newProxy(t, e.Endpoint)
	l := keepAlive(t, p.client(t))
	granted := l.EarliestExpiry()
	waitFor(t, "a renewal", long, func() bool { return l.EarliestExpiry().After(granted) })

	p.Cut()
	cut := time.Now()
	var lostAt time.Time
	select {
	case <-l.Lost():
		lostAt = time.Now()
	case <-time.After(long):
		t.Fatal("lease not lost with etcd out of reach")
	}
	exp := l.EarliestExpiry()
	if !lostAt.Before(exp) {
		t.Fatalf("lost at %v after the cut, %v after the earliest expiry: another node could have taken over first", lostAt.Sub(cut), lostAt.Sub(exp))
	}
	if got := timeToLive(t, cli, l); got < 0 {
		t.Errorf("got TTL %d in etcd when the holder counted the lease lost, want it still alive", got)
	}
	t.Logf("lost %v after the cut, %v before the earliest expiry (margin %v)", lostAt.Sub(cut), exp.Sub(lostAt), margin)
	if err := l.Cause(); !errors.Is(err, errLeaseLost) || !strings.Contains(err.Error(), "no renewal acknowledged for "+(ttl-margin).String()) {
		t.Errorf("got cause %v, want errLeaseLost: no renewal acknowledged", err)
	}
}

// TestLeaseRenewsAtOnce: the first renewal does not wait for the first tick:
// a slow grant may leave less time before the deadline than a tick.
func TestLeaseRenewsAtOnce(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	const ttl, margin = 4 * time.Second, time.Second // a renewal every 500ms
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := grantLease(ctx, cli, ttl, margin)
	if err != nil {
		t.Fatal(err)
	}
	// As if the grant had taken most of the TTL: 400ms left to the deadline.
	l.mu.Lock()
	l.lastSent = time.Now().Add(-(ttl - margin - 400*time.Millisecond))
	old := l.lastSent
	l.mu.Unlock()
	done := make(chan struct{})
	go func() {
		l.keepAlive(ctx)
		close(done)
	}()
	defer func() { cancel(); <-done }()
	waitFor(t, "a renewal", long, func() bool {
		select {
		case <-l.Lost():
			t.Fatalf("lease lost before its first renewal: %v", l.Cause())
		default:
		}
		return l.EarliestExpiry().After(old.Add(ttl))
	})
}
