package embedetcd_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/embedetcd"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/faultnet"
)

// The active hands etcd leadership away only to a member that hears the
// leader. A member cut off on its peer port (a partition) still answers on
// its client port, and still names the old leader until its election
// timeout: handing it leadership would stall every write until the
// transfer times out. The cut member here is the one MoveLeadershipAway
// would try first (the lowest member ID), so the test fails if it is
// chosen.
func TestMoveLeadershipAwayPassesOverACutOffMember(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-member etcd takes seconds to start and stop")
	}
	names := []string{"m1", "m2", "m3"}
	cfgs := make([]embedetcd.Config, len(names))
	proxies := make([]*faultnet.Proxy, len(names))
	var initial []string
	for i, name := range names {
		peer := etcdtest.FreeAddr(t)
		// Others reach this member's peer port only through its proxy:
		// blocking the proxy cuts what the leader sends it.
		p, err := faultnet.Listen("127.0.0.1:0", peer)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		proxies[i] = p
		cfgs[i] = embedetcd.Config{
			Name: name, Dir: t.TempDir(),
			ClientURL: "http://" + etcdtest.FreeAddr(t), PeerURL: "http://" + peer, AdvertisePeerURL: "http://" + p.Addr(),
			ClusterToken: "leader-test", StartTimeout: 30 * time.Second, LogLevel: "fatal",
			HeartbeatMs: 50, ElectionMs: 1000, UnsafeNoFsync: true,
		}
		initial = append(initial, name+"="+cfgs[i].AdvertisePeerURL)
	}
	members := make([]*embedetcd.Member, len(names))
	errs := make(chan error, len(names))
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(initial, ",")
		go func() {
			m, err := embedetcd.Start(cfgs[i])
			members[i] = m
			errs <- err
		}()
	}
	var startErr error
	for range names {
		if err := <-errs; err != nil && startErr == nil {
			startErr = err
		}
	}
	for _, m := range members {
		if m != nil {
			t.Cleanup(m.Close)
		}
	}
	if startErr != nil {
		t.Fatal(startErr)
	}
	var urls []string
	for _, m := range members {
		urls = append(urls, m.ClientURL())
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil { // a leader is elected and all have applied
		t.Fatal(err)
	}

	var leader *embedetcd.Member
	var others []int
	for i, m := range members {
		if m.IsLeader() {
			leader = m
		} else {
			others = append(others, i)
		}
	}
	if leader == nil || len(others) != 2 {
		t.Fatalf("want one leader of three members, got leader %v and followers %v", leader, others)
	}
	slices.SortFunc(others, func(a, b int) int {
		switch {
		case members[a].ID() < members[b].ID():
			return -1
		case members[a].ID() > members[b].ID():
			return 1
		}
		return 0
	})
	cut, live := others[0], others[1]
	proxies[cut].Block()
	// Writes go on with the two members left, through their own client
	// ports; the cut one falls behind.
	wcli, err := clientv3.New(clientv3.Config{Endpoints: []string{leader.ClientURL(), members[live].ClientURL()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wcli.Close() })
	for i := 0; i < 5; i++ {
		if _, err := wcli.Put(ctx, fmt.Sprintf("/after-cut/%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	to, err := leader.MoveLeadershipAway(ctx, cli, "/k")
	if err != nil {
		t.Fatalf("move leadership away: %v", err)
	}
	if to != names[live] {
		t.Fatalf("leadership went to %q; want %q (%q is cut off from the leader)", to, names[live], names[cut])
	}
	if _, err := wcli.Put(ctx, "/after-move", "v"); err != nil {
		t.Fatalf("write after the move: %v", err)
	}
}
