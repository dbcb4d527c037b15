package server

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
)

// Request goroutines start goroutines of the server's (pollCut does, from an
// agent's poll) while Close may be waiting for them. The group must refuse
// every one that Close cannot have waited for: once Close has returned, no
// goroutine of the group runs, and Go reports that it ran nothing. Run with
// -race: a bare sync.WaitGroup, grown from zero while Wait runs, is the race
// this replaced.
func TestGroupRefusesGoroutinesOnceClosed(t *testing.T) {
	for round := 0; round < 20; round++ {
		var g group
		var running, ran atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for g.Go(func() { running.Add(1); ran.Add(1); running.Add(-1) }) {
				}
			}()
		}
		close(start)
		g.Close()
		if n := running.Load(); n != 0 {
			t.Fatalf("round %d: %d goroutines of the group running after Close returned, want 0", round, n)
		}
		after := ran.Load()
		if g.Go(func() { ran.Add(1) }) {
			t.Fatalf("round %d: Go after Close: got true, want false", round)
		}
		wg.Wait() // every caller has seen Go refuse
		if got := ran.Load(); got != after {
			t.Fatalf("round %d: %d goroutines ran after Close returned, want none", round, got-after)
		}
	}
}

// Close is safe to call from several goroutines at once, while request
// goroutines still send the server commands: every call returns once the
// server has stopped, and a command sent after that is refused as
// unavailable, not left hanging.
func TestConcurrentClose(t *testing.T) {
	e := etcdtest.Start(t)
	cfg := DefaultConfig()
	cfg.ID, cfg.Cluster, cfg.URL, cfg.Etcd, cfg.LeaseTTL = "rm1", "test", "http://127.0.0.1:1", e.Client(t), time.Second
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for srv.State() != tandem.StateActive {
		select {
		case <-ctx.Done():
			t.Fatalf("rm1 did not become active: %s", srv.State())
		case <-srv.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}

	var wg sync.WaitGroup
	start := make(chan struct{})
	// Request goroutines: transitions through the run goroutine, which
	// end and resign terms, until the server refuses them.
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for k := 0; ; k++ {
				st := tandem.StateStandby
				if k%2 == 1 {
					st = tandem.StateActive
				}
				if _, err := srv.Transition(ctx, tandem.TransitionRequest{State: st, ForceManual: true}); tandem.ErrorCode(err) == tandem.EUNAVAILABLE || ctx.Err() != nil {
					return
				}
			}
		}()
	}
	closed := make(chan struct{}, 4)
	for i := 0; i < 4; i++ {
		go func() {
			<-start
			_ = srv.Close()
			closed <- struct{}{}
		}()
	}
	close(start)
	for i := 0; i < 4; i++ {
		select {
		case <-closed:
		case <-ctx.Done():
			t.Fatalf("%d of 4 concurrent Close calls returned within 20s", i)
		}
		if st := srv.State(); st != tandem.StateStopping {
			t.Fatalf("state after Close returned: got %s, want %s", st, tandem.StateStopping)
		}
	}
	wg.Wait()
	if _, err := srv.Transition(ctx, tandem.TransitionRequest{State: tandem.StateActive, ForceManual: true}); tandem.ErrorCode(err) != tandem.EUNAVAILABLE {
		t.Fatalf("transition after Close: got %v, want %s", err, tandem.EUNAVAILABLE)
	}
	if srv.bg.Go(func() {}) {
		t.Fatal("a goroutine started after Close: got true, want it refused")
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
}
