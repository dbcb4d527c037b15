package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
)

// checkPlacements reads the nodes' placement records at every revision of
// etcd so far and fails the test if one ever held more services than the
// node's slots, or two services with anti-affinity.
func (c *cluster) checkPlacements(slots map[string]int, defs ...Service) {
	c.t.Helper()
	anti := func(a, b string) bool {
		for _, d := range defs {
			if d.Name == a && slices.Contains(d.AntiAffinity, b) || d.Name == b && slices.Contains(d.AntiAffinity, a) {
				return true
			}
		}
		return false
	}
	prefix := c.keys.SupervisePrefix() + "placed/"
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		c.t.Fatal(err)
	}
	seen := map[string]bool{} // node@modrev already checked
	for rev := int64(1); rev <= resp.Header.Revision; rev++ {
		at, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
		if err != nil {
			c.t.Fatal(err)
		}
		for _, kv := range at.Kvs {
			node := strings.TrimPrefix(string(kv.Key), prefix)
			if id := node + "@" + strconv.FormatInt(kv.ModRevision, 10); seen[id] {
				continue
			} else {
				seen[id] = true
			}
			var placed []string
			if err := json.Unmarshal(kv.Value, &placed); err != nil {
				c.t.Fatal(err)
			}
			if len(placed) > slots[node] {
				c.t.Errorf("node %s held %v at revision %d: more than its %d slots", node, placed, kv.ModRevision, slots[node])
			}
			for i, a := range placed {
				for _, b := range placed[i+1:] {
					if a == b || anti(a, b) {
						c.t.Errorf("node %s held %v at revision %d: %s and %s together", node, placed, kv.ModRevision, a, b)
					}
				}
			}
		}
	}
	if len(seen) == 0 {
		c.t.Errorf("got no placement record at all, want some")
	}
}

// TestPlacement: N+K pool nodes with slots. Three services on two nodes of
// one slot each: two run, the third waits, unplaced, with each node's
// reason; a node added takes it. Anti-affinity keeps two services apart,
// and a move that would break it or a node's slots is refused.
func TestPlacement(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	s1, s2, s3 := c.service("s1", "run"), c.service("s2", "run"), c.service("s3", "run")
	s1.AntiAffinity, s3.AntiAffinity = []string{"s2"}, []string{"s1"}
	pool := func(node string, slots int) Config {
		cfg := c.config(node, s1, s2, s3)
		cfg.Pool, cfg.Slots = true, slots
		return cfg
	}
	c.start(pool("a", 1))
	c.start(pool("b", 1))
	c.waitNodes("a", "b")

	// Each node takes one of s1 and s2 (in order of name); s3 has nowhere
	// to go.
	var st1, st2, st3 ServiceStatus
	waitFor(t, "s1 and s2 healthy, s3 unplaced with a reason for each node", long, func() bool {
		st1, st2, st3 = c.status("s1"), c.status("s2"), c.status("s3")
		return st1.State == StateHealthy && st2.State == StateHealthy && st3.State == StateUnplaced && len(st3.Candidates) == 2
	})
	// Their commands are running (a stop before a command wrote its ledger
	// line would hide its start).
	c.waitStart("s1", st1.Node, st1.Epoch)
	c.waitStart("s2", st2.Node, st2.Epoch)
	if st1.Node == st2.Node {
		t.Errorf("s1 and s2 both on %s, want one on each node", st1.Node)
	}
	for _, n := range []string{"a", "b"} {
		if why := st3.Candidates[n]; why != "no free slot (1 of 1 used)" {
			t.Errorf("s3's candidate %s: got %q, want no free slot", n, why)
		}
	}
	if st3.Reason != "no node can take it" || st3.Node != "" {
		t.Errorf("got s3 %+v, want unplaced: no node can take it", st3)
	}
	if got := c.starts("s3"); len(got) != 0 {
		t.Errorf("got starts of s3 %+v, want none", got)
	}

	// A spare node joins: s3 goes there.
	c.start(pool("c", 2))
	c.waitHealthy("s3", "c")

	// s1 cannot join s3 on c (anti-affinity); s2 can, and then c is full.
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	err := c.admin.Move(ctx, "s1", "c")
	var te *tandem.Error
	if !errors.As(err, &te) || te.Code != tandem.ECONFLICT || !strings.Contains(te.Message, "node c cannot take s1: anti-affinity with s3") {
		t.Errorf("move s1 to c: got %v, want a conflict for anti-affinity with s3", err)
	}
	from := c.status("s2").Node
	if err := c.admin.Move(ctx, "s2", "c"); err != nil {
		t.Fatalf("move s2 to c: %v", err)
	}
	c.waitHealthy("s2", "c")
	if got := c.startsOn("s2", from); len(got) != 1 {
		t.Errorf("got starts of s2 on %s %+v, want the one before the move", from, got)
	}
	err = c.admin.Move(ctx, "s1", "c")
	if !errors.As(err, &te) || te.Code != tandem.ECONFLICT || !strings.Contains(te.Message, "no free slot (2 of 2 used)") {
		t.Errorf("move s1 to the full c: got %v, want a conflict: no free slot", err)
	}
	c.checkPlacements(map[string]int{"a": 1, "b": 1, "c": 2}, s1, s2, s3)
}

// A move to a node that filled up after it was asked for (Admin.Move
// checks, but the node may take another service meanwhile) is declined by
// that node at once: the service is free for any other node instead of
// waiting for the target's lease to take the hand-off key away.
func TestMoveToFullNodeDeclined(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	s1, s2 := c.service("s1", "run"), c.service("s2", "run")
	a := c.config("a", s1)
	b := c.config("b", s1, s2)
	b.Slots = 1
	c.start(a)
	c.waitHealthy("s1", "a")
	c.start(b)
	c.waitHealthy("s2", "b") // b is now full
	// The request Admin.Move would refuse, as if written before b filled up.
	val, _ := json.Marshal(MoveRequest{To: "b", At: time.Now().UTC()})
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	if _, err := c.cli.Put(ctx, c.keys.SuperviseMove("s1"), string(val)); err != nil {
		t.Fatal(err)
	}
	// a hands s1 to b, b declines, and a takes it back, all well within
	// b's lease (which does not end: b lives on).
	first := c.status("s1").Epoch
	waitFor(t, "s1 healthy on a again after the declined move", long, func() bool {
		st := c.status("s1")
		return st.Node == "a" && st.Epoch > first && st.State == StateHealthy
	})
	if h := c.status("s2"); h.Node != "b" {
		t.Errorf("s2 on %q, want still on b", h.Node)
	}
	if got := c.startsOn("s1", "b"); len(got) != 0 {
		t.Errorf("s1 started on the full node b: %+v", got)
	}
	if !strings.Contains(c.logs.String(), "declining a service handed to this node") {
		t.Error("b's log does not say it declined the hand-off")
	}
}
