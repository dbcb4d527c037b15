package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/faultnet"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/server"
)

// suspectEvents follows the suspicion keys of cluster "test" from now on.
func suspectEvents(t *testing.T, c *cluster) <-chan *clientv3.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	out := make(chan *clientv3.Event, 256)
	wch := c.etcd.Client(t).Watch(ctx, keys.New("test").SuspectsPrefix(), clientv3.WithPrefix())
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// nextEvent waits for the first event that match accepts.
func nextEvent(t *testing.T, evs <-chan *clientv3.Event, what string, match func(*clientv3.Event) bool) *clientv3.Event {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-evs:
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

func isPut(key string) func(*clientv3.Event) bool {
	return func(ev *clientv3.Event) bool { return ev.Type == mvccpb.PUT && string(ev.Kv.Key) == key }
}

// proxyTo puts a faultnet proxy in front of node n's HTTP port.
func proxyTo(t *testing.T, n *node) *faultnet.Proxy {
	t.Helper()
	p, err := faultnet.Listen("127.0.0.1:0", strings.TrimPrefix(n.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// waitBeating waits until every node in watchers receives the beats of the
// one owner it watches.
func waitBeating(t *testing.T, watchers ...*node) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range watchers {
		for n.srv.BeatingOwners() < 1 {
			if time.Now().After(deadline) {
				t.Fatalf("%s receives no beats from the active", n.srv.Config().ID)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// With two servers the one standby is a majority of the others, so only the
// active's answer keeps a standby cut off from it alone from deposing it:
// the standby votes, the active answers through etcd, the standby votes
// again a suspicion period later and is answered again, and the active
// keeps its epoch throughout. Once the link heals, the vote is withdrawn.
func TestAnsweringActiveIsNotDeposedByALoneStandby(t *testing.T) {
	// Patient settings, so a loaded machine's stalls neither look like
	// silence nor delay an answer past its window.
	patient := func(cfg *server.Config) { cfg.SuspectAfter, cfg.LeaseTTL = 1500*time.Millisecond, 30*time.Second }
	c := newCluster(t, 1, patient)
	a := c.nodes[c.waitActive()]
	epoch, _ := a.srv.ActiveEpoch()
	link := proxyTo(t, a)
	c.mod = func(cfg *server.Config) {
		patient(cfg)
		cfg.PeerAddrs = map[string]string{"rm1": link.Addr()}
	}
	c.nodes = append(c.nodes, c.start("rm2"))
	waitBeating(t, c.nodes[1])
	evs := suspectEvents(t, c)
	l := keys.New("test")
	lease := int64(a.srv.Lease())
	vote, alive := l.SuspectVote("rm1", lease, "rm2"), l.SuspectAlive("rm1", lease)

	link.Block()
	first := nextEvent(t, evs, "rm2's vote against rm1", isPut(vote))
	nextEvent(t, evs, "rm1's answer", isPut(alive))
	again := nextEvent(t, evs, "rm2's vote again", isPut(vote))
	nextEvent(t, evs, "rm1's second answer", isPut(alive))
	if again.Kv.ModRevision <= first.Kv.ModRevision {
		t.Fatalf("second vote at revision %d, want after %d", again.Kv.ModRevision, first.Kv.ModRevision)
	}
	if got, ok := a.srv.ActiveEpoch(); !ok || got != epoch {
		t.Fatalf("rm1 after two answered votes: epoch %d, active %v; want still active at %d", got, ok, epoch)
	}
	if o := c.nodes[1].srv.Store().Owner(0); o == nil || o.Epoch != epoch {
		t.Fatalf("rm2's view of the owner: %+v, want rm1 at epoch %d", o, epoch)
	}

	link.Unblock()
	nextEvent(t, evs, "rm2's vote withdrawn", func(ev *clientv3.Event) bool {
		return ev.Type == mvccpb.DELETE && string(ev.Kv.Key) == vote
	})
	if got, ok := a.srv.ActiveEpoch(); !ok || got != epoch {
		t.Fatalf("rm1 after the link healed: epoch %d, active %v; want still active at %d", got, ok, epoch)
	}
}

// An active that stops beating and cannot answer (its etcd connection is
// gone too) is deposed by the two standbys' agreement long before its
// lease runs out: the history says so.
func TestSilentActiveIsDeposedByAgreement(t *testing.T) {
	var link *faultnet.Proxy // the standbys' way to rm1
	c := newCluster(t, 1, func(cfg *server.Config) {
		cfg.LeaseTTL = 30 * time.Second // only the agreement can depose it in time
		if cfg.ID != "rm1" {
			cfg.PeerAddrs = map[string]string{"rm1": link.Addr()}
		}
	})
	a := c.nodes[c.waitActive()]
	old, _ := a.srv.ActiveEpoch()
	link = proxyTo(t, a)
	c.nodes = append(c.nodes, c.start("rm2"), c.start("rm3"))
	waitBeating(t, c.nodes[1], c.nodes[2])

	link.Block()
	_ = a.cli.Close() // it cannot answer the votes
	next := c.waitActive(0)
	hist := waitHistory(t, c.nodes[next], 2)
	last := hist[len(hist)-1]
	if last.PrevEpoch != old || last.Cause != tandem.CauseCrashed || last.Detection != tandem.DetectAgreement {
		t.Fatalf("last history event: %+v; want after epoch %d, %s by %s", last, old, tandem.CauseCrashed, tandem.DetectAgreement)
	}
}
