package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/faultnet"
	"github.com/tandemhq/tandem/internal/server"
)

// A server cut off from etcd loses its session; it must keep answering
// admin commands and stop within a bounded time when asked, rather than
// block for ever in a lease grant that ignores its context.
func TestServerStopsWithEtcdUnreachable(t *testing.T) {
	e := etcdtest.Start(t)
	px, err := faultnet.Listen("127.0.0.1:0", strings.TrimPrefix(e.Endpoint, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + px.Addr()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	cfg := server.DefaultConfig()
	cfg.ID, cfg.Cluster, cfg.URL, cfg.Etcd, cfg.LeaseTTL, cfg.Logger = "rm1", "test", "http://127.0.0.1:1", cli, testTTL, testLogger()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "rm1 active", 15*time.Second, func() bool { return srv.State() == tandem.StateActive })

	px.Block() // etcd is now silent: the lease cannot be renewed, and nothing can be granted
	waitFor(t, "rm1 to step down once its lease is gone", 15*time.Second, func() bool { return srv.State() != tandem.StateActive })

	// Admin commands are still served by the HA goroutine: this one needs
	// no etcd round trip, so it must answer well before its own deadline.
	actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer acancel()
	answered := make(chan error, 1)
	go func() {
		_, err := srv.Transition(actx, tandem.TransitionRequest{State: tandem.StateStandby, ForceManual: true})
		answered <- err
	}()
	select {
	case err := <-answered:
		if err != nil {
			t.Errorf("transition to standby while cut off from etcd: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("an admin command hung while etcd was unreachable")
	}

	stopped := make(chan struct{})
	go func() { _ = srv.Close(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return within 20s with etcd unreachable")
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
