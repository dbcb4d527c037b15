package e2e

// End-to-end tests of `tandem supervise`: real supervisor processes of the
// tandem binary, one per network namespace, against a real etcd process;
// real commands (redis-server, and the ledger service of
// supervise_ledger_test.go), killed with SIGKILL, frozen through their
// cgroups, cut off from etcd. "Never two at once" is checked from the
// ledger (heartbeats of two nodes interleaving in time) and from the live
// cgroups (watchRunning).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/supervise"
)

// failoverWithin bounds every wait for a service to come back: a lease
// (2s) plus a takeover, generously, for a loaded 2-core machine.
const failoverWithin = 30 * time.Second

// waitAnswer waits until the ledger service answers through addr from node
// and returns when it did.
func waitAnswer(t *testing.T, addr netip.Addr, node string) time.Time {
	t.Helper()
	eventually(t, "the service answers from "+node+" at "+addr.String(), failoverWithin, func() error {
		s, err := getLedger(addr)
		if err != nil {
			return err
		}
		if f := strings.Fields(s); len(f) < 2 || f[1] != node {
			return fmt.Errorf("answered %q", s)
		}
		return nil
	})
	return time.Now()
}

// checkPhases fails the test unless ev has every named phase duration.
func checkPhases(t *testing.T, ev supervise.Event, names ...string) {
	t.Helper()
	have := map[string]*float64{"detection": ev.DetectionS, "election": ev.ElectionS, "fencing": ev.FencingS,
		"start": ev.StartS, "healthy": ev.HealthyS, "vip": ev.VIPS, "total": ev.TotalS}
	for _, n := range names {
		if have[n] == nil {
			b, _ := json.Marshal(ev)
			t.Errorf("failover record of epoch %d has no %s duration: %s", ev.Epoch, n, b)
		}
	}
}

// lastEvent returns the newest failover record of svc.
func (c *supCluster) lastEvent(svc string) supervise.Event {
	c.t.Helper()
	evs := c.history(svc)
	if len(evs) == 0 {
		c.t.Fatalf("history of %s is empty", svc)
	}
	return evs[len(evs)-1]
}

// waitEvent waits until the history of svc has a record of epoch.
func (c *supCluster) waitEvent(svc string, epoch int64) supervise.Event {
	c.t.Helper()
	var ev supervise.Event
	eventually(c.t, fmt.Sprintf("failover record of %s epoch %d", svc, epoch), 10*time.Second, func() error {
		for _, e := range c.history(svc) {
			if e.Epoch == epoch {
				ev = e
				return nil
			}
		}
		return fmt.Errorf("not recorded")
	})
	return ev
}

func fmtSecsPtr(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.3fs", *v)
}

func describeEvent(ev supervise.Event) string {
	return fmt.Sprintf("epoch %d on %s after %s (cause %s, fenced %q): detection %s election %s fencing %s start %s healthy %s vip %s total %s",
		ev.Epoch, ev.Node, ev.PrevNode, ev.Cause, ev.Fenced, fmtSecsPtr(ev.DetectionS), fmtSecsPtr(ev.ElectionS),
		fmtSecsPtr(ev.FencingS), fmtSecsPtr(ev.StartS), fmtSecsPtr(ev.HealthyS), fmtSecsPtr(ev.VIPS), fmtSecsPtr(ev.TotalS))
}

// kill -9 of the command restarts it in place; kill -9 of the owner's
// supervisor moves the service to another node (its dead port deposes it at
// once), which fences the old node, takes the VIP and starts the command:
// clients reconnect through the VIP, and no two nodes ever run it.
func TestSuperviseKill9(t *testing.T) {
	t.Run("ledger", func(t *testing.T) {
		c := newSupCluster(t, "n1", "n2", "n3")
		vip := c.net.VIP(200)
		for _, n := range c.nodes {
			c.start(n, c.ledgerService("web", "--vip", c.vipFlag(vip))...)
		}
		stopWatch := c.watchRunning("web")
		st := c.waitHealthy("web", failoverWithin)
		owner, epoch := st.Node, st.Epoch
		waitAnswer(t, vip.Addr(), owner)

		// kill -9 of the command: restarted in place, same node, same epoch.
		killedAt := time.Now()
		if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the command restarted in place", failoverWithin, func() error {
			s, err := c.status("web")
			if err != nil {
				return err
			}
			if s.Node != owner || s.Epoch != epoch || s.Restarts != 1 || s.State != supervise.StateHealthy || s.PID == st.PID {
				return fmt.Errorf("%s on %s epoch %d pid %d restarts %d", s.State, s.Node, s.Epoch, s.PID, s.Restarts)
			}
			return nil
		})
		waitAnswer(t, vip.Addr(), owner)
		t.Logf("kill -9 of the command to the service answering again through the VIP: %s", time.Since(killedAt).Round(time.Millisecond))

		// kill -9 of the owner's supervisor: another node takes over.
		killedAt = time.Now()
		c.kill(owner)
		st2 := c.waitHealthy("web", failoverWithin, owner)
		answered := waitAnswer(t, vip.Addr(), st2.Node)
		t.Logf("kill -9 of the supervisor on %s to the service answering from %s through the VIP: %s", owner, st2.Node, answered.Sub(killedAt).Round(time.Millisecond))
		if got := c.vipHolders(vip); !slices.Equal(got, []string{st2.Node}) {
			t.Errorf("VIP held by %v, want [%s]", got, st2.Node)
		}
		if got := c.runningOn("web"); !slices.Equal(got, []string{st2.Node}) {
			t.Errorf("command runs on %v, want [%s]", got, st2.Node)
		}
		ev := c.waitEvent("web", st2.Epoch)
		t.Logf("failover record: %s", describeEvent(ev))
		if ev.Cause != tandem.CauseCrashed || ev.PrevNode != owner || ev.Fenced != owner || ev.FenceLevel != 1 {
			t.Errorf("failover record: cause %s, prev %s, fenced %s at level %d; want %s, %s, %s at level 1",
				ev.Cause, ev.PrevNode, ev.Fenced, ev.FenceLevel, tandem.CauseCrashed, owner, owner)
		}
		checkPhases(t, ev, "detection", "election", "fencing", "start", "healthy", "vip", "total")

		if bad := stopWatch(); len(bad) > 0 {
			t.Errorf("two nodes ran the command at once:\n%s", strings.Join(bad, "\n"))
		}
		runs := checkLedger(t, c.ledger, "web")
		var on []string
		for _, r := range runs {
			on = append(on, r.Node)
		}
		if want := []string{owner, owner, st2.Node}; !slices.Equal(on, want) {
			t.Errorf("runs on %v, want %v:%s", on, want, describeRuns(runs))
		}
	})

	t.Run("redis", func(t *testing.T) {
		redis := requireRedis(t)
		c := newSupCluster(t, "n1", "n2")
		vip := c.net.VIP(200)
		args := []string{"--service", "redis", "--health", "tcp:127.0.0.1:6379", "--health-interval", "100ms", "--health-rise", "1",
			"--vip", c.vipFlag(vip), "--fence", "1:" + c.fence, "--stop-timeout", "3s", "--dir", c.dir,
			"--", redis, "--port", "6379", "--bind", "0.0.0.0", "--save", "", "--appendonly", "no", "--protected-mode", "no"}
		for _, n := range c.nodes {
			c.start(n, args...)
		}
		stopWatch := c.watchRunning("redis")
		st := c.waitHealthy("redis", failoverWithin)
		eventually(t, "PONG through the VIP", failoverWithin, func() error { return redisPing(vip.Addr()) })
		// answers waits until the redis-server of pid answers through the VIP.
		answers := func(pid int) {
			t.Helper()
			eventually(t, fmt.Sprintf("redis-server %d answers through the VIP", pid), failoverWithin, func() error {
				if err := redisPing(vip.Addr()); err != nil {
					return err
				}
				got, err := redisPID(vip.Addr())
				if err == nil && got != pid {
					err = fmt.Errorf("redis-server %d answered", got)
				}
				return err
			})
		}
		answers(st.PID)

		killedAt := time.Now()
		if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var restarted supervise.ServiceStatus
		eventually(t, "redis restarted in place", failoverWithin, func() error {
			s, err := c.status("redis")
			if err != nil {
				return err
			}
			if s.Node != st.Node || s.Epoch != st.Epoch || s.Restarts != 1 || s.State != supervise.StateHealthy || s.PID == st.PID {
				return fmt.Errorf("%s on %s epoch %d pid %d restarts %d", s.State, s.Node, s.Epoch, s.PID, s.Restarts)
			}
			restarted = s
			return nil
		})
		answers(restarted.PID)
		t.Logf("kill -9 of redis-server to PONG through the VIP: %s", time.Since(killedAt).Round(time.Millisecond))

		killedAt = time.Now()
		c.kill(st.Node)
		st2 := c.waitHealthy("redis", failoverWithin, st.Node)
		answers(st2.PID)
		t.Logf("kill -9 of the supervisor on %s to PONG from %s through the VIP: %s", st.Node, st2.Node, time.Since(killedAt).Round(time.Millisecond))
		if got := c.vipHolders(vip); !slices.Equal(got, []string{st2.Node}) {
			t.Errorf("VIP held by %v, want [%s]", got, st2.Node)
		}
		if got := c.runningOn("redis"); !slices.Equal(got, []string{st2.Node}) {
			t.Errorf("redis-server runs on %v, want [%s]", got, st2.Node)
		}
		if bad := stopWatch(); len(bad) > 0 {
			t.Errorf("two nodes ran redis-server at once:\n%s", strings.Join(bad, "\n"))
		}
		ev := c.waitEvent("redis", st2.Epoch)
		if ev.Cause != tandem.CauseCrashed {
			t.Errorf("failover cause %s, want %s", ev.Cause, tandem.CauseCrashed)
		}
	})
}

// A whole node frozen (its supervisor and its command, through their
// common cgroup) past its lease, then thawed. Under --fencing strict the
// next owner's fence hook kills the frozen command (and takes its VIP)
// before anything starts, so two commands never run at once. Under
// --fencing self the next owner trusts a node that cannot act: once thawed,
// the old command runs alongside the new one until its supervisor notices
// its lease is gone, which docs/SUPERVISE.md says self-fencing cannot
// cover; the test measures that overlap.
func TestSuperviseFrozenNode(t *testing.T) {
	t.Run("strict", func(t *testing.T) {
		c := newSupCluster(t, "n1", "n2")
		vip := c.net.VIP(200)
		for _, n := range c.nodes {
			c.start(n, c.ledgerService("web", "--vip", c.vipFlag(vip))...)
		}
		stopWatch := c.watchRunning("web")
		st := c.waitHealthy("web", failoverWithin)
		frozen := st.Node
		waitAnswer(t, vip.Addr(), frozen)

		frozenAt := time.Now()
		c.freeze(frozen, true)
		thawed := false
		defer func() {
			if !thawed {
				c.freeze(frozen, false)
			}
		}()
		st2 := c.waitHealthy("web", failoverWithin, frozen)
		answered := waitAnswer(t, vip.Addr(), st2.Node)
		t.Logf("freeze of %s to the service answering from %s through the VIP: %s", frozen, st2.Node, answered.Sub(frozenAt).Round(time.Millisecond))
		// Still frozen: the fence hook killed its command and took its VIP.
		if pids := c.commandPIDs(frozen, "web"); len(pids) > 0 {
			t.Errorf("the frozen node's command is still there after it was fenced: pids %v", pids)
		}
		if got := c.vipHolders(vip); !slices.Equal(got, []string{st2.Node}) {
			t.Errorf("VIP held by %v, want [%s]", got, st2.Node)
		}
		fenced := c.fenced()
		if len(fenced) != 1 || !strings.Contains(fenced[0], st2.Node+" fences "+frozen) {
			t.Errorf("fence hook calls: %q, want one by %s of %s", fenced, st2.Node, frozen)
		}

		c.freeze(frozen, false)
		thawed = true
		c.waitJoined(frozen)
		st3, err := c.status("web")
		if err != nil {
			t.Fatal(err)
		}
		if st3.Node != st2.Node || st3.Epoch != st2.Epoch {
			t.Errorf("after the thaw the service is on %s at epoch %d, want %s at %d", st3.Node, st3.Epoch, st2.Node, st2.Epoch)
		}
		if got := c.runningOn("web"); !slices.Equal(got, []string{st2.Node}) {
			t.Errorf("command runs on %v after the thaw, want [%s]", got, st2.Node)
		}
		if got := c.vipHolders(vip); !slices.Equal(got, []string{st2.Node}) {
			t.Errorf("VIP held by %v after the thaw, want [%s]", got, st2.Node)
		}
		ev := c.waitEvent("web", st2.Epoch)
		t.Logf("failover record: %s", describeEvent(ev))
		if ev.Cause != tandem.CauseLeaseExpired || ev.Fenced != frozen {
			t.Errorf("failover record: cause %s, fenced %q; want %s, %s", ev.Cause, ev.Fenced, tandem.CauseLeaseExpired, frozen)
		}
		checkPhases(t, ev, "election", "fencing", "start", "healthy", "vip")
		if bad := stopWatch(); len(bad) > 0 {
			t.Errorf("two nodes ran the command at once:\n%s", strings.Join(bad, "\n"))
		}
		runs := checkLedger(t, c.ledger, "web")
		t.Logf("runs:%s", describeRuns(runs))
	})

	t.Run("self", func(t *testing.T) {
		c := newSupCluster(t, "n1", "n2")
		for _, n := range c.nodes {
			c.start(n, c.ledgerService("web", "--fencing", "self")...)
		}
		// trial freezes the owner's cgroup at rel (its whole node, or its
		// supervisor alone) until another node runs the service, thaws it,
		// and returns the overlap it caused.
		trial := func(what, rel string) overlap {
			t.Helper()
			st := c.waitHealthy("web", failoverWithin)
			frozen := st.Node
			before := measureOverlap(readLedger(t, c.ledger), "web")
			frozenAt := time.Now()
			cg := filepath.Join(frozen, rel)
			c.freezeCgroup(cg, true)
			thawed := false
			defer func() {
				if !thawed {
					c.freezeCgroup(cg, false)
				}
			}()
			st2 := c.waitHealthy("web", failoverWithin, frozen)
			took := time.Since(frozenAt)
			// Nobody fenced the frozen node: its command is still there.
			if pids := c.commandPIDs(frozen, "web"); len(pids) == 0 {
				t.Errorf("%s: the frozen node's command is gone, but nothing should have killed it under --fencing self", what)
			}
			thawAt := time.Now()
			c.freezeCgroup(cg, false)
			thawed = true
			eventually(t, "the thawed node kills its own command", 10*time.Second, func() error {
				if pids := c.commandPIDs(frozen, "web"); len(pids) > 0 {
					return fmt.Errorf("pids %v", pids)
				}
				return nil
			})
			noticed := time.Since(thawAt)
			after := measureOverlap(readLedger(t, c.ledger), "web")
			o := overlap{Total: after.Total - before.Total, Beats: after.Beats - before.Beats}
			t.Logf("--fencing self, %s of %s: %s took over after %s; the two commands overlapped %s (%d heartbeats of one within the other's run); the thawed node's cgroup was empty %s after the thaw",
				what, frozen, st2.Node, took.Round(time.Millisecond), o.Total.Round(time.Millisecond), o.Beats, noticed.Round(time.Millisecond))
			// The overlap is what self-fencing cannot prevent; it ends as soon as
			// the thawed supervisor runs: well within a lease.
			if o.Total > 2*time.Second {
				t.Errorf("%s: overlap %s, want the thawed supervisor to kill its command within a lease", what, o.Total)
			}
			if got := c.runningOn("web"); !slices.Equal(got, []string{st2.Node}) {
				t.Errorf("%s: command runs on %v after the thaw, want [%s]", what, got, st2.Node)
			}
			if ev := c.waitEvent("web", st2.Epoch); ev.Cause != tandem.CauseLeaseExpired {
				t.Errorf("%s: failover cause %s, want %s", what, ev.Cause, tandem.CauseLeaseExpired)
			}
			c.waitJoined(frozen) // back, for the next trial to fail over to
			return o
		}
		trials := 3
		if testing.Short() {
			trials = 1
		}
		var total overlap
		for i := 0; i < trials; i++ {
			o := trial("whole-node freeze", "")
			total.Total += o.Total
			total.Beats += o.Beats
		}
		t.Logf("--fencing self, whole-node freeze: %s overlap in all over %d trials (%d heartbeats)", total.Total.Round(time.Millisecond), trials, total.Beats)
		// A frozen (starved) supervisor whose command keeps running: the new
		// owner's command runs alongside it until the supervisor is thawed.
		// This also proves the ledger sees an overlap when there is one.
		if o := trial("supervisor-only freeze", "sup"); o.Total <= 0 || o.Beats == 0 {
			t.Errorf("supervisor-only freeze: overlap %s, %d heartbeats; want both commands seen running at once", o.Total, o.Beats)
		}
		if len(c.fenced()) > 0 {
			t.Errorf("fence hook ran under --fencing self: %q", c.fenced())
		}
		t.Logf("runs:%s", describeRuns(readLedger(t, c.ledger)))
	})

	t.Run("self with a VIP", frozenSelfWithVIP)
}

// frozenSelfWithVIP is the self-fencing case of TestSuperviseFrozenNode
// with a VIP: the frozen node's kernel still answers ARP for the VIP, so
// the next owner's duplicate-address probe finds it in use and starts
// nothing (cause vip-in-use) until the thawed node has killed its command
// and dropped the VIP. The VIP is what keeps the two apart here, not
// timing: no overlap.
func frozenSelfWithVIP(t *testing.T) {
	c := newSupCluster(t, "n1", "n2")
	vip := c.net.VIP(200)
	for _, n := range c.nodes {
		c.start(n, c.ledgerService("web", "--fencing", "self", "--vip", c.vipFlag(vip))...)
	}
	stopWatch := c.watchRunning("web")
	st := c.waitHealthy("web", failoverWithin)
	frozen := st.Node
	other := c.nodes[0]
	if other == frozen {
		other = c.nodes[1]
	}
	c.freeze(frozen, true)
	thawed := false
	defer func() {
		if !thawed {
			c.freeze(frozen, false)
		}
	}()
	resign := keys.New("default").SuperviseOwnership("web").Resign
	eventually(t, other+" finds the VIP in use", failoverWithin, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := c.etcdc.Get(ctx, resign)
		if err != nil {
			return err
		}
		var r election.Resignation
		if len(resp.Kvs) > 0 {
			_ = json.Unmarshal(resp.Kvs[0].Value, &r)
		}
		if r.From != other || r.Reason != supervise.CauseVIPInUse {
			return fmt.Errorf("last resignation: %+v", r)
		}
		return nil
	})
	if got := c.runningOn("web"); !slices.Equal(got, []string{frozen}) {
		t.Errorf("while %s is frozen the command runs on %v, want only the frozen node", frozen, got)
	}
	thawAt := time.Now()
	c.freeze(frozen, false)
	thawed = true
	// Either node may have it now: the thawed one can win it back while the
	// other sits out after its failed takeover.
	var st2 supervise.ServiceStatus
	eventually(t, "web healthy at a new epoch", failoverWithin, func() error {
		var err error
		if st2, err = c.status("web"); err != nil {
			return err
		}
		if st2.State != supervise.StateHealthy || st2.Epoch == st.Epoch {
			return fmt.Errorf("%s on %q at epoch %d", st2.State, st2.Node, st2.Epoch)
		}
		return nil
	})
	t.Logf("--fencing self with a VIP: healthy on %s %s after the thaw of %s", st2.Node, time.Since(thawAt).Round(time.Millisecond), frozen)
	if got := c.vipHolders(vip); !slices.Equal(got, []string{st2.Node}) {
		t.Errorf("VIP held by %v, want [%s]", got, st2.Node)
	}
	if bad := stopWatch(); len(bad) > 0 {
		t.Errorf("two nodes ran the command at once:\n%s", strings.Join(bad, "\n"))
	}
	o := measureOverlap(readLedger(t, c.ledger), "web")
	t.Logf("--fencing self with a VIP, whole-node freeze: overlap %s (%d heartbeats)", o.Total, o.Beats)
	checkLedger(t, c.ledger, "web")
}

// waitJoined waits until node's supervisor is registered (again).
func (c *supCluster) waitJoined(node string) {
	c.t.Helper()
	eventually(c.t, node+" registered", failoverWithin, func() error {
		ns, err := c.admin.Nodes(context.Background())
		if err != nil {
			return err
		}
		for _, n := range ns {
			if n.Node == node {
				return nil
			}
		}
		return fmt.Errorf("not registered")
	})
}

// A node cut off from etcd while clients still reach it (its service link
// is up) self-fences: it kills its command and drops its VIP before its lease
// can expire, so before another node starts the service.
//
// Under --fencing self nothing else stops it: a supervisor that did not
// fence itself would keep the VIP (the next owner's duplicate-address probe
// would find it in use) and its command. Under strict fencing the next
// owner's fence hook would clean up after it, so the hook records what it
// found: the cut-off node must have stopped its command and dropped the VIP
// before the hook came.
func TestSuperviseCutOffNode(t *testing.T) {
	for _, fencing := range []string{"strict", "self"} {
		t.Run(fencing, func(t *testing.T) { cutOffNode(t, fencing) })
	}
}

func cutOffNode(t *testing.T, fencing string) {
	c := newSupCluster(t, "n1", "n2")
	vip := c.net.VIP(200)
	flags := []string{"--fencing", fencing, "--vip", c.vipFlag(vip)}
	if fencing == "strict" {
		flags = append(flags, "--fence", "1:"+c.fence)
	}
	for _, n := range c.nodes {
		c.start(n, c.ledgerService("web", flags...)...)
	}
	stopWatch := c.watchRunning("web")
	st := c.waitHealthy("web", failoverWithin)
	cut := st.Node
	other := c.nodes[0]
	if other == cut {
		other = c.nodes[1]
	}
	waitAnswer(t, vip.Addr(), cut)

	cutAt := time.Now()
	c.net.CutControl(cut)
	healed := false
	defer func() {
		if !healed {
			c.net.HealControl(cut)
		}
	}()
	// Clients still reach the cut-off node until it self-fences.
	if s, err := getLedger(vip.Addr()); err != nil || !strings.Contains(s, " "+cut+" ") {
		t.Errorf("right after the cut the VIP answered %q, %v; want the cut-off node %s", s, err, cut)
	}
	// Watch the VIP leave the cut-off node and reach the other.
	var dropped, added time.Time
	eventually(t, "the VIP moves to "+other, failoverWithin, func() error {
		if dropped.IsZero() && !c.holdsVIP(cut, vip) {
			dropped = time.Now()
		}
		if added.IsZero() && c.holdsVIP(other, vip) {
			added = time.Now()
		}
		if dropped.IsZero() || added.IsZero() {
			return fmt.Errorf("held by %v", c.vipHolders(vip))
		}
		return nil
	})
	if !dropped.Before(added) {
		t.Errorf("the cut-off node dropped the VIP at %s, not before the other added it at %s",
			dropped.Format("15:04:05.000"), added.Format("15:04:05.000"))
	}
	t.Logf("cut of %s: it dropped the VIP after %s; %s added it after %s", cut,
		dropped.Sub(cutAt).Round(time.Millisecond), other, added.Sub(cutAt).Round(time.Millisecond))
	st2 := c.waitHealthy("web", failoverWithin, cut)
	answered := waitAnswer(t, vip.Addr(), st2.Node)
	t.Logf("cut of %s to the service answering from %s through the VIP: %s", cut, st2.Node, answered.Sub(cutAt).Round(time.Millisecond))
	if pids := c.commandPIDs(cut, "web"); len(pids) > 0 {
		t.Errorf("the cut-off node still runs its command: pids %v", pids)
	}
	if c.holdsVIP(cut, vip) {
		t.Errorf("the cut-off node %s still holds the VIP", cut)
	}

	// The ledger: the cut-off node's last heartbeat came before the new
	// node's start.
	runs := checkLedger(t, c.ledger, "web")
	var last, first time.Time
	for _, r := range runs {
		if r.Node == cut && r.Last().After(last) {
			last = r.Last()
		}
		if r.Node == st2.Node && (first.IsZero() || r.Start.Before(first)) {
			first = r.Start
		}
	}
	if !last.Before(first) {
		t.Errorf("the cut-off node's command lived until %s, after %s started it at %s",
			last.Format("15:04:05.000"), st2.Node, first.Format("15:04:05.000"))
	} else {
		t.Logf("the cut-off node's command stopped %s after the cut, %s before %s started it",
			last.Sub(cutAt).Round(time.Millisecond), first.Sub(last).Round(time.Millisecond), st2.Node)
	}
	ev := c.waitEvent("web", st2.Epoch)
	t.Logf("failover record: %s", describeEvent(ev))
	if ev.Cause != tandem.CauseLeaseExpired {
		t.Errorf("failover cause %s, want %s", ev.Cause, tandem.CauseLeaseExpired)
	}

	// How long before its lease could expire the cut-off node self-fenced,
	// as it logged it.
	if b, err := os.ReadFile(c.logPath(cut)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "self-fencing") {
				if _, lead, ok := strings.Cut(line, "lead_s="); ok {
					t.Logf("the cut-off node self-fenced %ss before its lease could expire", lead)
				}
			}
		}
	}
	// Healed, it joins again and leaves the service where it is.
	c.net.HealControl(cut)
	healed = true
	c.waitJoined(cut)
	if s, err := c.status("web"); err != nil || s.Node != st2.Node || s.Epoch != st2.Epoch {
		t.Errorf("after the heal: %+v, %v; want the service still on %s at epoch %d", s, err, st2.Node, st2.Epoch)
	}
	if bad := stopWatch(); len(bad) > 0 {
		t.Errorf("two nodes ran the command at once:\n%s", strings.Join(bad, "\n"))
	}
	checkCutOffFence(t, c, fencing, cut, vip, st, st2)
}

// checkCutOffFence checks the fence hook calls of TestSuperviseCutOffNode:
// none under --fencing self; under strict, one by the new owner of the
// cut-off node, with the variables docs/SUPERVISE.md promises, which found
// the cut-off node already without its command and its VIP.
func checkCutOffFence(t *testing.T, c *supCluster, fencing, cut string, vip netip.Prefix, st, st2 supervise.ServiceStatus) {
	t.Helper()
	calls := c.fenceCalls()
	if fencing == "self" {
		if len(calls) > 0 {
			t.Errorf("fence hook ran under --fencing self: %q", c.fenced())
		}
		return
	}
	if len(calls) != 1 || calls[0].node != st2.Node || calls[0].fenced != cut {
		t.Fatalf("fence hook calls: %q, want one by %s of %s", c.fenced(), st2.Node, cut)
	}
	fc := calls[0]
	if fc.found["running"] != "0" || fc.found["vip"] != "0" {
		t.Errorf("the fence hook found the cut-off node %s with running=%s, vip=%s; want both 0: it should have fenced itself before its lease expired (%s)",
			cut, fc.found["running"], fc.found["vip"], fc.line)
	}
	want := map[string]string{"addr": c.net.ControlIP(cut).String(), "prev": fmt.Sprintf("%s@%d", cut, st.Epoch),
		"cause": tandem.CauseLeaseExpired, "vip": c.vipFlag(vip)}
	for k, v := range want {
		if fc.env[k] != v {
			t.Errorf("the fence hook got %s=%q, want %q (%s)", k, fc.env[k], v, fc.line)
		}
	}
	if d, err := time.Parse(time.RFC3339Nano, fc.env["deadline"]); err != nil || !d.After(fc.at) {
		t.Errorf("the fence hook ran at %s with TANDEM_DEADLINE %q (%v), want a time after that", fc.at.Format(time.RFC3339Nano), fc.env["deadline"], err)
	}
}

// Health checks: one that fails every other probe never reaches --health-fall
// failures in a row, so the service stays healthy where it is; one that
// fails for good makes the node restart the command in place up to
// --restarts, then give the service up (health-failed) and ban itself, and
// the service moves once.
func TestSuperviseHealth(t *testing.T) {
	t.Run("flapping check", func(t *testing.T) {
		c := newSupCluster(t, "n1", "n2")
		count := filepath.Join(c.dir, "flap.count")
		check := filepath.Join(c.dir, "flap")
		// Passes its first three probes (to rise), then fails every other.
		script := "#!/bin/sh\nn=$(( $(cat " + count + " 2>/dev/null || echo 0) + 1 ))\necho $n > " + count +
			"\n[ \"$n\" -le 3 ] && exit 0\nexit $((n % 2))\n"
		if err := os.WriteFile(check, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.nodes {
			c.start(n, c.ledgerService("web", "--health", "exec:"+check, "--health-interval", "100ms",
				"--health-fall", "3", "--health-rise", "2")...)
		}
		st := c.waitHealthy("web", failoverWithin)
		probes := 40
		if testing.Short() {
			probes = 20
		}
		eventually(t, fmt.Sprintf("%d probes", probes), failoverWithin, func() error {
			b, _ := os.ReadFile(count)
			var n int
			fmt.Sscan(string(b), &n)
			if n < probes {
				return fmt.Errorf("%d probes", n)
			}
			return nil
		})
		st2, err := c.status("web")
		if err != nil {
			t.Fatal(err)
		}
		if st2.Node != st.Node || st2.Epoch != st.Epoch || st2.State != supervise.StateHealthy || st2.Restarts != 0 || !st2.Since.Equal(st.Since) {
			t.Errorf("after %d probes, half of them failed: %s on %s epoch %d restarts %d since %s; want still healthy on %s epoch %d since %s",
				probes, st2.State, st2.Node, st2.Epoch, st2.Restarts, st2.Since, st.Node, st.Epoch, st.Since)
		}
		if runs := checkLedger(t, c.ledger, "web"); len(runs) != 1 {
			t.Errorf("%d runs, want 1:%s", len(runs), describeRuns(runs))
		}
	})

	t.Run("persistent failure", func(t *testing.T) {
		c := newSupCluster(t, "n1", "n2")
		for _, n := range c.nodes {
			c.start(n, c.ledgerService("web", "--health-fall", "2", "--start-timeout", "2s",
				"--restarts", "2", "--restart-window", "1m", "--ban", "1m")...)
		}
		stopWatch := c.watchRunning("web")
		st := c.waitHealthy("web", failoverWithin)
		sick := st.Node
		sickAt := time.Now()
		if err := os.WriteFile(filepath.Join(c.dir, "sick-"+sick), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		st2 := c.waitHealthy("web", failoverWithin, sick)
		t.Logf("persistent health failure on %s to healthy on %s: %s", sick, st2.Node, time.Since(sickAt).Round(time.Millisecond))
		var banned bool
		for _, b := range st2.Bans {
			if b.Node == sick && strings.Contains(b.Reason, supervise.CauseHealthFailed) && b.Until.After(time.Now().Add(30*time.Second)) {
				banned = true
			}
		}
		if !banned {
			t.Errorf("bans %+v, want %s banned for about a minute with cause %s", st2.Bans, sick, supervise.CauseHealthFailed)
		}
		if out := c.run("status"); !strings.Contains(out, "banned: "+sick) {
			t.Errorf("tandem supervise status does not show the ban of %s:\n%s", sick, out)
		}
		ev := c.waitEvent("web", st2.Epoch)
		t.Logf("failover record: %s", describeEvent(ev))
		if ev.Cause != supervise.CauseHealthFailed || ev.PrevNode != sick {
			t.Errorf("failover record: cause %s after %s, want %s after %s", ev.Cause, ev.PrevNode, supervise.CauseHealthFailed, sick)
		}
		checkPhases(t, ev, "detection", "election", "fencing", "start", "healthy")
		if bad := stopWatch(); len(bad) > 0 {
			t.Errorf("two nodes ran the command at once:\n%s", strings.Join(bad, "\n"))
		}
		// Three runs on the sick node (the first and two restarts in place),
		// then one on the other: the service moved once.
		runs := checkLedger(t, c.ledger, "web")
		var on []string
		for _, r := range runs {
			on = append(on, r.Node)
		}
		if want := []string{sick, sick, sick, st2.Node}; !slices.Equal(on, want) {
			t.Errorf("runs on %v, want %v:%s", on, want, describeRuns(runs))
		}
	})
}

// A command that ignores SIGTERM is killed --stop-timeout after it, with
// its whole process tree, on a move and on a supervisor's shutdown.
func TestSuperviseStopTimeoutKillsTree(t *testing.T) {
	c := newSupCluster(t, "n1", "n2")
	const stopTimeout = time.Second
	args := []string{"--service", "stubborn", "--stop-timeout", stopTimeout.String(), "--fence", "1:" + c.fence,
		"--", "/bin/sh", "-c", `trap "" TERM; sleep 1000 & wait`}
	for _, n := range c.nodes {
		c.start(n, args...)
	}
	st := c.waitHealthy("stubborn", failoverWithin)
	tree := func(node string) []int {
		var pids []int
		eventually(t, "sh and its sleep on "+node, 10*time.Second, func() error {
			if pids = c.commandPIDs(node, "stubborn"); len(pids) < 2 {
				return fmt.Errorf("pids %v", pids)
			}
			return nil
		})
		return pids
	}
	from := st.Node
	to := c.nodes[0]
	if to == from {
		to = c.nodes[1]
	}
	pids := tree(from)

	movedAt := time.Now()
	out := c.run("move", "stubborn", to, "--wait", "30s")
	took := time.Since(movedAt)
	if !strings.Contains(out, "healthy on "+to) {
		t.Errorf("move: %q", out)
	}
	t.Logf("move of a command that ignores SIGTERM, stop timeout %s: healthy on %s after %s", stopTimeout, to, took.Round(time.Millisecond))
	if took < stopTimeout {
		t.Errorf("moved in %s, less than the stop timeout %s: the command ignores SIGTERM, so it cannot have stopped sooner", took, stopTimeout)
	}
	if left := c.commandPIDs(from, "stubborn"); len(left) > 0 {
		t.Errorf("processes left in %s's cgroup after the move: %v", from, left)
	}
	if left := alive(pids); len(left) > 0 {
		t.Errorf("processes of the tree %v survive the move: %v", pids, left)
	}
	if ev := c.lastEvent("stubborn"); ev.Cause != supervise.CauseMove || ev.PrevNode != from || ev.Node != to {
		t.Errorf("last failover: %s", describeEvent(ev))
	}
	if b, _ := os.ReadFile(c.logPath(from)); !strings.Contains(string(b), "did not stop in time") {
		t.Errorf("%s's log does not say it killed the command after the stop timeout", from)
	}

	// Shutdown of the new owner's supervisor: same.
	pids = tree(to)
	took = c.stop(to, 30*time.Second)
	t.Logf("shutdown of a supervisor whose command ignores SIGTERM: %s", took.Round(time.Millisecond))
	if took < stopTimeout {
		t.Errorf("shut down in %s, less than the stop timeout %s", took, stopTimeout)
	}
	if left := c.commandPIDs(to, "stubborn"); len(left) > 0 {
		t.Errorf("processes left in %s's cgroup after its supervisor's shutdown: %v", to, left)
	}
	if left := alive(pids); len(left) > 0 {
		t.Errorf("processes of the tree %v survive the shutdown: %v", pids, left)
	}
	// It stopped cleanly, so the other node takes over without fencing.
	st3 := c.waitHealthy("stubborn", failoverWithin, to)
	if ev := c.waitEvent("stubborn", st3.Epoch); ev.Cause != tandem.CauseShutdown || ev.PrevNode != to || ev.Fenced != "" {
		t.Errorf("takeover after the shutdown: %s; want cause %s after %s, nobody fenced", describeEvent(ev), tandem.CauseShutdown, to)
	}
	if f := c.fenced(); len(f) > 0 {
		t.Errorf("fence hook ran after clean stops: %q", f)
	}
}

// N+K: three services, each on a node of its own, and two spare nodes
// (--pool --slots 1); the services have anti-affinity with each other. The
// nodes are killed one by one: the first two services go to the spares, the
// third has nowhere to go and is reported unplaced with a reason, then
// placed again when its node returns. No read of the status ever shows a
// node over its slots or two services on one node, and no service ever runs
// on two nodes.
func TestSuperviseNPlusK(t *testing.T) {
	c := newSupCluster(t, "a", "b", "c", "k1", "k2")
	svcs := map[string]string{"a": "s1", "b": "s2", "c": "s3"}
	argsOf := func(node string) []string {
		svc := svcs[node]
		var anti []string
		for _, s := range svcs {
			if s != svc {
				anti = append(anti, s)
			}
		}
		slices.Sort(anti)
		return c.ledgerService(svc, "--anti-affinity", strings.Join(anti, ","))
	}
	for _, n := range []string{"a", "b", "c"} {
		c.start(n, argsOf(n)...)
		if st := c.waitHealthy(svcs[n], failoverWithin); st.Node != n {
			t.Fatalf("%s runs on %s, want %s", svcs[n], st.Node, n)
		}
	}
	for _, n := range []string{"k1", "k2"} {
		c.start(n, "--pool", "--slots", "1")
	}

	// Every status read, all along: each node within its slot, no two of
	// these services together.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	placements := make(chan []string, 1)
	go func() {
		var bad []string
		defer func() { placements <- bad }()
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			all, err := c.admin.Status(rctx)
			rcancel()
			if err == nil {
				on := map[string][]string{}
				for _, s := range all {
					if s.Node != "" {
						on[s.Node] = append(on[s.Node], s.Service)
					}
				}
				for n, ss := range on {
					if len(ss) > 1 {
						bad = append(bad, fmt.Sprintf("%s holds %v", n, ss))
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	var watches []func() []string
	for _, s := range []string{"s1", "s2", "s3"} {
		watches = append(watches, c.watchRunning(s))
	}

	spares := []string{"k1", "k2"}
	for _, n := range []string{"a", "b"} {
		killedAt := time.Now()
		c.kill(n)
		st := c.waitHealthy(svcs[n], failoverWithin, n)
		if !slices.Contains(spares, st.Node) {
			t.Fatalf("%s went to %s, want a free spare of %v", svcs[n], st.Node, spares)
		}
		spares = slices.DeleteFunc(spares, func(s string) bool { return s == st.Node })
		t.Logf("kill -9 of %s: %s healthy on the spare %s after %s", n, svcs[n], st.Node, time.Since(killedAt).Round(time.Millisecond))
	}

	// The third has nowhere to go: unplaced, with a reason, not lost.
	c.kill("c")
	var s3 supervise.ServiceStatus
	eventually(t, "s3 reported unplaced", failoverWithin, func() error {
		for _, s := range c.cliStatus() {
			if s.Service == "s3" {
				s3 = s
			}
		}
		if s3.State != supervise.StateUnplaced || s3.Reason == "" {
			return fmt.Errorf("s3: %s on %q, reason %q", s3.State, s3.Node, s3.Reason)
		}
		return nil
	})
	t.Logf("s3 unplaced: %s; candidates %v", s3.Reason, s3.Candidates)
	for _, k := range []string{"k1", "k2"} {
		if why := s3.Candidates[k]; why == "" {
			t.Errorf("status says the spare %s could take s3, but it is full", k)
		}
	}
	if got := c.runningOn("s3"); len(got) > 0 {
		t.Errorf("s3 unplaced but its command runs on %v", got)
	}

	// Its node returns: placed again.
	c.start("c", argsOf("c")...)
	if st := c.waitHealthy("s3", failoverWithin); st.Node != "c" {
		t.Errorf("s3 placed on %s, want c", st.Node)
	}

	cancel()
	if bad := <-placements; len(bad) > 0 {
		t.Errorf("status showed nodes over their slots %d times, e.g. %s", len(bad), bad[0])
	}
	for _, stop := range watches {
		if bad := stop(); len(bad) > 0 {
			t.Errorf("a service ran on two nodes at once:\n%s", strings.Join(bad, "\n"))
		}
	}
	for _, s := range []string{"s1", "s2", "s3"} {
		checkLedger(t, c.ledger, s)
	}
}

// Bad input makes `tandem supervise` exit 2 with a clear message before
// anything starts: nothing is written to etcd, no directory is made.
func TestSuperviseBadInput(t *testing.T) {
	e := etcdtest.Start(t)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "fence-not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\nexit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{"--service", "web", "--fencing", "self"}, "no command"},
		{"unreachable health URL", []string{"--service", "web", "--fencing", "self", "--health", "http:http://db.invalid:8080/health", "--", "/bin/true"},
			"unreachable health URL"},
		{"fence hook not executable", []string{"--service", "web", "--fence", "1:" + notExec, "--", "/bin/true"}, "no execute bit"},
		{"VIP without a device", []string{"--service", "web", "--fencing", "self", "--vip", "10.200.0.50/24", "--", "/bin/true"}, `no "@DEV"`},
		{"VIP on a missing device", []string{"--service", "web", "--fencing", "self", "--vip", "10.200.0.50/24@nodev9", "--", "/bin/true"}, "nodev9"},
		{"strict fencing without a hook", []string{"--service", "web", "--", "/bin/true"}, "fence hook"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg := filepath.Join(dir, "cg-"+strings.ReplaceAll(tc.name, " ", "-"))
			logs := filepath.Join(dir, "logs-"+strings.ReplaceAll(tc.name, " ", "-"))
			args := append([]string{"supervise", "--node", "n1", "--etcd-endpoints", e.Endpoint, "--listen", etcdtest.FreeAddr(t),
				"--advertise", "http://127.0.0.1:7480", "--cgroup-parent", cg, "--log-dir", logs}, tc.args...)
			start := time.Now()
			_, stderr, code := runCLI(t, nil, args...)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr: %s", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not say %q", stderr, tc.want)
			}
			t.Logf("%s (after %s)", strings.TrimSpace(stderr), time.Since(start).Round(time.Millisecond))
			for _, p := range []string{cg, logs} {
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Errorf("%s exists after a refused start", p)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := e.Client(t).Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			if resp.Count != 0 {
				t.Errorf("%d keys in etcd after a refused start, want 0", resp.Count)
			}
		})
	}
}

// The operator's commands: move a service, ban a node from it, clear the
// ban; the history records each takeover with its cause and phase
// durations; clean moves never run the fence hook.
func TestSuperviseOperatorCLI(t *testing.T) {
	c := newSupCluster(t, "n1", "n2", "n3")
	vip := c.net.VIP(200)
	for _, n := range c.nodes {
		c.start(n, c.ledgerService("web", "--vip", c.vipFlag(vip))...)
	}
	stopWatch := c.watchRunning("web")
	st := c.waitHealthy("web", failoverWithin)
	first := c.waitEvent("web", st.Epoch)
	if first.Cause != tandem.CauseInitial {
		t.Errorf("first record's cause %s, want %s", first.Cause, tandem.CauseInitial)
	}
	others := slices.DeleteFunc(slices.Clone(c.nodes), func(n string) bool { return n == st.Node })

	// move
	to := others[0]
	movedAt := time.Now()
	if out := c.run("move", "web", to, "--wait", "30s"); !strings.Contains(out, "web is healthy on "+to) {
		t.Errorf("move: %q", out)
	}
	answered := waitAnswer(t, vip.Addr(), to)
	t.Logf("move from %s to %s: the service answers through the VIP after %s", st.Node, to, answered.Sub(movedAt).Round(time.Millisecond))
	moved, err := c.status("web")
	if err != nil {
		t.Fatal(err)
	}
	ev := c.waitEvent("web", moved.Epoch)
	t.Logf("move record: %s", describeEvent(ev))
	if ev.Cause != supervise.CauseMove || ev.PrevNode != st.Node || ev.Node != to || ev.Fenced != "" {
		t.Errorf("move record: %s; want cause %s from %s to %s, nobody fenced", describeEvent(ev), supervise.CauseMove, st.Node, to)
	}
	checkPhases(t, ev, "detection", "election", "fencing", "start", "healthy", "vip", "total")
	if ev.FencingS != nil && *ev.FencingS != 0 {
		t.Errorf("fencing took %.3fs on a clean move, want 0", *ev.FencingS)
	}

	// ban: the owner gives the service up cleanly; a move to it is refused.
	if out := c.run("ban", "web", to, "--for", "1m", "--reason", "e2e maintenance"); !strings.Contains(out, "banned "+to) {
		t.Errorf("ban: %q", out)
	}
	st2 := c.waitHealthy("web", failoverWithin, to)
	var bannedOK bool
	for _, b := range st2.Bans {
		bannedOK = bannedOK || (b.Node == to && b.Reason == "e2e maintenance")
	}
	if !bannedOK {
		t.Errorf("bans %+v, want %s banned for e2e maintenance", st2.Bans, to)
	}
	if out := c.run("status"); !strings.Contains(out, "banned: "+to) {
		t.Errorf("status does not show the ban:\n%s", out)
	}
	if ev := c.waitEvent("web", st2.Epoch); ev.Cause != supervise.CauseBanned || ev.PrevNode != to {
		t.Errorf("ban record: %s; want cause %s from %s", describeEvent(ev), supervise.CauseBanned, to)
	}
	_, stderr, code := runCLI(t, nil, "supervise", "move", "web", to, "--etcd-endpoints", c.etcd)
	if code == 0 || !strings.Contains(stderr, "banned") {
		t.Errorf("move to a banned node: exit %d, %q; want a refusal that says it is banned", code, stderr)
	}

	// clear: the ban is gone, and the node may take the service again.
	if out := c.run("clear", "web"); !strings.Contains(out, "cleared 1 ban(s)") {
		t.Errorf("clear: %q", out)
	}
	if s, err := c.status("web"); err != nil || len(s.Bans) > 0 {
		t.Errorf("after clear: bans %+v, %v; want none", s.Bans, err)
	}
	if st2.Node != to {
		c.run("move", "web", to, "--wait", "30s")
	}
	waitAnswer(t, vip.Addr(), to)

	evs := c.history("web")
	var causes []string
	for _, e := range evs {
		causes = append(causes, e.Cause)
	}
	t.Logf("history causes: %v", causes)
	if want := []string{tandem.CauseInitial, supervise.CauseMove, supervise.CauseBanned, supervise.CauseMove}; !slices.Equal(causes, want) {
		t.Errorf("history causes %v, want %v", causes, want)
	}
	if text := c.run("history", "web"); !strings.Contains(text, "DETECTION") || !strings.Contains(text, supervise.CauseBanned) {
		t.Errorf("history table:\n%s", text)
	}
	if f := c.fenced(); len(f) > 0 {
		t.Errorf("fence hook ran on clean hand-offs: %q", f)
	}
	if bad := stopWatch(); len(bad) > 0 {
		t.Errorf("two nodes ran the command at once:\n%s", strings.Join(bad, "\n"))
	}
	runs := checkLedger(t, c.ledger, "web")
	for _, r := range runs[:len(runs)-1] {
		if !r.Stopped {
			t.Errorf("%s did not stop cleanly (SIGTERM) on a hand-off", r)
		}
	}
}
