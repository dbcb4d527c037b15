package supervise

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/supervise/proc"
)

// wantStates fails the test unless want appears in got in order (other
// states may come between).
func wantStates(t *testing.T, got []RunState, want ...RunState) {
	t.Helper()
	i := 0
	for _, st := range got {
		w := want[i]
		if st.Node == w.Node && st.Epoch == w.Epoch && st.Clean == w.Clean && st.FencedBy == w.FencedBy {
			if i++; i == len(want) {
				return
			}
		}
	}
	t.Errorf("run states: got %s, want %s in this order", fmtStates(got), fmtStates(want))
}

func fmtStates(sts []RunState) string {
	var out []string
	for _, st := range sts {
		out = append(out, fmt.Sprintf("{%s@%d clean=%v fenced_by=%q}", st.Node, st.Epoch, st.Clean, st.FencedBy))
	}
	return strings.Join(out, " ")
}

func fmtSecsOf(v *float64) string {
	if v == nil {
		return "nil"
	}
	return strconv.FormatFloat(*v, 'f', 3, 64)
}

// TestOneOwner: of two supervisors offering a service, exactly one runs it,
// with its epoch in the epoch file; when that one shuts down, it stops the
// command cleanly and the other takes over without fencing.
func TestOneOwner(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	svc := c.service("web", "run")
	svc.EpochFile = filepath.Join(c.dir, "epoch")
	svc.Env["EPOCH_FILE"] = svc.EpochFile
	nodes := map[string]*node{"a": c.start(c.config("a", svc)), "b": c.start(c.config("b", svc))}

	var owner *election.Owner
	waitFor(t, "an owner of web", long, func() bool { owner = c.owner("web"); return owner != nil })
	first := nodes[owner.ID]
	other := nodes["a"]
	if first == other {
		other = nodes["b"]
	}
	st := c.waitHealthy("web", first.name)
	c.waitNodes("a", "b")
	start := c.waitStart("web", first.name, owner.Epoch)
	if got := c.starts("web"); len(got) != 1 {
		t.Errorf("got %d starts of web, want 1: %+v", len(got), got)
	}
	if got := first.procs("web"); len(got) != 1 || got[0] != start.pid || st.PID != start.pid {
		t.Errorf("owner %s: got processes %v (status pid %d), want only the command %d", first.name, got, st.PID, start.pid)
	}
	if got := other.procs("web"); len(got) != 0 {
		t.Errorf("non-owner %s: got processes %v in its cgroup of web, want none", other.name, got)
	}
	if start.epochFile != strconv.FormatInt(owner.Epoch, 10) || start.epoch != owner.Epoch || st.Epoch != owner.Epoch {
		t.Errorf("got epoch %d, epoch file %q, status epoch %d, want the owner key's epoch %d in all three", start.epoch, start.epochFile, st.Epoch, owner.Epoch)
	}
	if ev := c.waitEvent("web", owner.Epoch); ev.Cause != tandem.CauseInitial || ev.Node != first.name || ev.PrevNode != "" {
		t.Errorf("got first event %+v, want cause initial on %s with no previous node", ev, first.name)
	}

	// A clean shutdown: the command is stopped before the key is given up,
	// and the next owner does not fence.
	first.stop(t)
	if got := first.procs("web"); len(got) != 0 || alive(start.pid) {
		t.Errorf("after %s's shutdown: got processes %v (command alive %v), want none", first.name, got, alive(start.pid))
	}
	second := c.waitStart("web", other.name, 0)
	c.waitHealthy("web", other.name)
	if second.epoch <= owner.Epoch || second.epochFile != strconv.FormatInt(second.epoch, 10) || second.others != 0 {
		t.Errorf("got second start %+v, want a newer epoch than %d in the epoch file, and no other command running", second, owner.Epoch)
	}
	ev := c.waitEvent("web", second.epoch)
	if ev.Cause != tandem.CauseShutdown || ev.Node != other.name || ev.PrevNode != first.name || ev.PrevEpoch != owner.Epoch {
		t.Errorf("got event %+v, want cause shutdown, from %s@%d to %s", ev, first.name, owner.Epoch, other.name)
	}
	if ev.FencingS == nil || *ev.FencingS != 0 || ev.Fenced != "" {
		t.Errorf("got fencing_s %s, fenced %q, want 0 and nobody: the last run stopped cleanly", fmtSecsOf(ev.FencingS), ev.Fenced)
	}
	wantStates(t, c.states("web"),
		RunState{Node: first.name, Epoch: owner.Epoch},
		RunState{Node: first.name, Epoch: owner.Epoch, Clean: true},
		RunState{Node: other.name, Epoch: second.epoch})
	if r := c.resignation("web"); r == nil || r.Reason != tandem.CauseShutdown || r.From != first.name {
		t.Errorf("got resignation %+v, want %s's for shutdown", r, first.name)
	}
}

// TestSelfFenceOnRevokedLease: an owner whose lease is gone behind its back
// kills its command at once; the other node takes the service over (self
// fencing: it trusts the old owner) and records the cause.
func TestSelfFenceOnRevokedLease(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	svc := c.service("web", "run")
	// b is preferred, so that a, joining again at once, does not win back
	// what it just lost: the test is about the other node taking over.
	svc.Nodes = []string{"b", "a"}
	a := c.start(c.config("a", svc))
	c.waitHealthy("web", "a")
	c.start(c.config("b", svc))
	c.waitNodes("a", "b")
	first := c.waitStart("web", "a", 0)

	old := c.revoke("a")
	waitFor(t, "a's command killed", long, func() bool { return !alive(first.pid) && len(a.procs("web")) == 0 })
	second := c.waitStart("web", "b", 0)
	c.waitHealthy("web", "b")
	ev := c.waitEvent("web", second.epoch)
	if ev.Cause != tandem.CauseLeaseExpired || ev.PrevNode != "a" || ev.PrevEpoch != first.epoch {
		t.Errorf("got event %+v, want cause lease-expired, previous a@%d", ev, first.epoch)
	}
	wantStates(t, c.states("web"),
		RunState{Node: "a", Epoch: first.epoch},
		RunState{Node: "a", Epoch: first.epoch, Clean: true, FencedBy: "self"},
		RunState{Node: "b", Epoch: second.epoch})

	// a joins again with a new lease and leaves the service to b.
	waitFor(t, "a registered with a new lease", long, func() bool {
		resp, err := c.cli.Get(context.Background(), c.keys.SuperviseNode("a"))
		return err == nil && len(resp.Kvs) == 1 && resp.Kvs[0].Lease != int64(old)
	})
	if o := c.owner("web"); o == nil || o.ID != "b" {
		t.Errorf("got owner %+v, want b", o)
	}
	if got := a.procs("web"); len(got) != 0 {
		t.Errorf("a: got processes %v, want none", got)
	}
}

// TestSelfFenceBeforeLeaseExpires: an owner cut off from etcd kills its
// command before its lease can expire, so the node that takes over after
// the expiry never runs the command alongside it.
func TestSelfFenceBeforeLeaseExpires(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	svc := c.service("web", "run")
	svc.Nodes = []string{"b", "a"}
	p := newProxy(t, c.etcd.Endpoint)
	a := c.start(c.config("a", svc), p.client(t))
	c.waitHealthy("web", "a")
	c.start(c.config("b", svc))
	c.waitNodes("a", "b")
	first := c.waitStart("web", "a", 0)

	p.Cut()
	cutAt := time.Now()
	waitFor(t, "a's command killed", long, func() bool { return len(a.procs("web")) == 0 })
	killed := time.Since(cutAt)
	second := c.waitStart("web", "b", 0)
	started := time.Since(cutAt)
	t.Logf("cut off at 0: a killed its command after %v, b started it after %v", killed, started)
	if second.others != 0 {
		t.Errorf("b started web while another node's cgroup of it had processes: two commands at once")
	}
	if alive(first.pid) {
		t.Errorf("a's command %d still runs", first.pid)
	}
	c.waitHealthy("web", "b")
	ev := c.waitEvent("web", second.epoch)
	if ev.Cause != tandem.CauseLeaseExpired || ev.PrevNode != "a" {
		t.Errorf("got event %+v, want cause lease-expired, previous a", ev)
	}

	// Back in touch, a joins again and leaves the service to b.
	p.Restore()
	waitFor(t, "a back", long, func() bool {
		resp, err := c.cli.Get(context.Background(), c.keys.SuperviseNode("a"))
		return err == nil && len(resp.Kvs) == 1
	})
	if o := c.owner("web"); o == nil || o.ID != "b" || len(a.procs("web")) != 0 {
		t.Errorf("got owner %+v, a's processes %v, want b the owner and nothing on a", o, a.procs("web"))
	}
}

// TestSelfFenceWhileStopping: an owner cut off from etcd while it is
// giving a service up cleanly (a slow pre-stop hook, or a command that
// ignores SIGTERM) kills the command at once, rather than waiting out the
// hook's or the stop's timeout, which are longer than what is left of its
// lease: the node that takes over after the expiry never runs the command
// alongside it.
func TestSelfFenceWhileStopping(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		mode    string // the command's mode on a (b's always runs, and stops, at once)
		preStop string // the pre-stop hook's script
	}{
		{"command ignores SIGTERM", "ignore-term", ""},
		{"slow pre-stop hook", "run", "#!/bin/sh\n[ \"$TANDEM_NODE\" = a ] && exec sleep 1000\nexit 0\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t)
			svc := c.service("web", "run")
			svc.Command = []string{"/bin/sh", "-c", `[ "$TANDEM_NODE" = a ] && export MODE=` + tt.mode + `; exec /bin/sh "$@"`, "sh",
				c.svcSh, c.ledger, c.base}
			svc.StopTimeout = Duration(30 * time.Second)
			if tt.preStop != "" {
				svc.Hooks.PreStop = c.script("pre-stop.sh", tt.preStop)
				svc.HookTimeout = Duration(30 * time.Second)
			}
			svc.Nodes = []string{"a", "b"}
			p := newProxy(t, c.etcd.Endpoint)
			a := c.start(c.config("a", svc), p.client(t))
			c.waitHealthy("web", "a")
			c.start(c.config("b", svc))
			c.waitNodes("a", "b")
			first := c.waitStart("web", "a", 0)

			// Banned, a gives web up cleanly, and is slow at it.
			ctx, cancel := context.WithTimeout(context.Background(), long)
			defer cancel()
			if err := c.admin.Ban(ctx, "web", "a", time.Hour, "test"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "a stopping web", long, func() bool { return c.status("web").State == StateStopping })
			p.Cut()
			second := c.waitStart("web", "b", 0)
			if second.others != 0 {
				t.Errorf("b started web while a's cgroup of it had processes %v: two commands at once", a.procs("web"))
			}
			if alive(first.pid) {
				t.Errorf("a's command %d still runs", first.pid)
			}
		})
	}
}

// TestRestartThenGiveUp: a command that keeps exiting is restarted in place
// up to Restarts times within RestartWindow; then the node gives it up
// (health-failed), is banned from it, and another node takes it.
func TestRestartThenGiveUp(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	svc := c.service("web", "run")
	svc.Env["FAIL_ON"] = "a"
	svc.Restarts, svc.RestartWindow, svc.Ban = 2, Duration(time.Minute), Duration(time.Hour)
	a := c.start(c.config("a", svc))
	c.waitStart("web", "a", 0)
	c.start(c.config("b", svc))
	second := c.waitStart("web", "b", 0)
	st := c.waitHealthy("web", "b")

	onA := c.startsOn("web", "a")
	if len(onA) != 3 {
		t.Errorf("got %d starts on a, want 3 (the first and 2 restarts in place)", len(onA))
	}
	for _, s := range onA {
		if s.epoch != onA[0].epoch {
			t.Errorf("got starts on a at epochs %d and %d, want one term", onA[0].epoch, s.epoch)
		}
	}
	ev := c.waitEvent("web", second.epoch)
	if ev.Cause != CauseHealthFailed || ev.PrevNode != "a" {
		t.Errorf("got event %+v, want cause health-failed, previous a", ev)
	}
	if len(st.Bans) != 1 || st.Bans[0].Node != "a" || !strings.HasPrefix(st.Bans[0].Reason, CauseHealthFailed+": the command exited") ||
		time.Until(st.Bans[0].Until) < 50*time.Minute {
		t.Errorf("got bans %+v, want a banned for an hour for health-failed", st.Bans)
	}
	if got := a.metric(t, "tandem_supervise_restarts_total", map[string]string{"service": "web"}); got != 2 {
		t.Errorf("got a's restarts metric %v, want 2", got)
	}
	if got := a.metric(t, "tandem_supervise_failures_total", map[string]string{"service": "web"}); got != 3 {
		t.Errorf("got a's failures metric %v, want 3", got)
	}
	// a stopped its command cleanly when it gave the service up.
	wantStates(t, c.states("web"), RunState{Node: "a", Epoch: onA[0].epoch, Clean: true}, RunState{Node: "b", Epoch: second.epoch})
	if got := a.procs("web"); len(got) != 0 {
		t.Errorf("a: got processes %v, want none", got)
	}
}

// TestStartFailed: a command that cannot start bans the node at once; since
// nothing ran there, the next owner does not fence it.
func TestStartFailed(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	prog := filepath.Join(c.dir, "prog") // absent until the second node starts
	svc := c.service("web", "run")
	svc.Command[0] = prog
	svc.Fencing, svc.Fence, svc.Ban = FencingStrict, []FenceHook{c.fenceHook(true)}, Duration(time.Hour)
	c.start(c.config("a", svc))

	var st ServiceStatus
	waitFor(t, "a banned from web", long, func() bool { st = c.status("web"); return len(st.Bans) > 0 })
	if b := st.Bans[0]; b.Node != "a" || !strings.HasPrefix(b.Reason, CauseStartFailed+": ") || !strings.Contains(b.Reason, prog) {
		t.Errorf("got ban %+v, want a banned for start-failed naming %s", b, prog)
	}
	waitFor(t, "web unplaced", long, func() bool { st = c.status("web"); return st.State == StateUnplaced && st.Candidates["a"] != "" })
	if !strings.HasPrefix(st.Candidates["a"], "banned until ") || st.Reason != "no node can take it" {
		t.Errorf("got candidates %v, reason %q, want a banned and no node able to take it", st.Candidates, st.Reason)
	}
	if r := c.resignation("web"); r == nil || r.Reason != CauseStartFailed {
		t.Errorf("got resignation %+v, want start-failed", r)
	}
	if st.LastRun != nil && !st.LastRun.Clean {
		t.Errorf("got last run %+v, want none or clean: the command never ran on a", st.LastRun)
	}

	// Once the program exists, another node runs it without fencing a.
	if err := os.Symlink("/bin/sh", prog); err != nil {
		t.Fatal(err)
	}
	c.start(c.config("b", svc))
	c.waitStart("web", "b", 0)
	c.waitHealthy("web", "b")
	for _, e := range c.entries() {
		if e.kind == "fence" {
			t.Errorf("got fence hook run %v, want none: nothing ran on a", e.fields)
		}
	}
}

// TestStopTimeout: a command that ignores SIGTERM is killed, whole tree,
// StopTimeout after it on shutdown, and the stop still counts as clean.
func TestStopTimeout(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	svc := c.service("web", "ignore-term")
	svc.StopTimeout = Duration(500 * time.Millisecond)
	a := c.start(c.config("a", svc))
	start := c.waitStart("web", "a", 0)
	c.waitHealthy("web", "a")
	var pids []int
	waitFor(t, "the shell and its two sleeps", long, func() bool {
		pids = a.procs("web")
		if len(pids) != 3 {
			return false
		}
		for _, pid := range pids {
			comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
			if pid != start.pid && (err != nil || string(comm) != "sleep\n") {
				return false
			}
		}
		return true
	})

	began := time.Now()
	a.stop(t)
	took := time.Since(began)
	if took < 500*time.Millisecond {
		t.Errorf("shutdown took %v, want at least the stop timeout 500ms: the command ignores SIGTERM", took)
	}
	if got := a.procs("web"); len(got) != 0 {
		t.Errorf("got processes %v left in the cgroup, want none", got)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d of the tree is alive, want it killed", pid)
		}
	}
	wantStates(t, c.states("web"), RunState{Node: "a", Epoch: start.epoch, Clean: true})
}

// TestPublish: a node's definition must agree with the one in etcd, unless
// it is given Update; equal definitions agree however they spell empty
// lists.
func TestPublish(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	svc := c.service("web", "run")
	c.start(c.config("a", svc))
	c.waitHealthy("web", "a")

	same := c.service("web", "run")
	same.AntiAffinity, same.Nodes, same.Hooks = []string{}, []string{}, Hooks{}
	b := c.start(c.config("b", same))
	c.waitNodes("b")
	select {
	case <-b.done:
		t.Errorf("b with the same definition (empty lists for none): Run returned %v, want it running", b.err)
	default:
	}

	other := c.service("web", "run")
	other.Restarts = 7
	sup, err := New(c.config("c", other), c.cli)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	if err := sup.Run(ctx); err == nil || !strings.Contains(err.Error(), "service web is already defined in etcd differently") ||
		!strings.Contains(err.Error(), "--update") {
		t.Errorf("c with another definition: got %v, want a refusal mentioning --update", err)
	}

	cfg := c.config("d", other)
	cfg.Update = true
	c.start(cfg)
	c.waitNodes("d")
	resp, err := c.cli.Get(ctx, c.keys.SuperviseService("web"))
	if err != nil {
		t.Fatal(err)
	}
	var got Service
	if err := json.Unmarshal(resp.Kvs[0].Value, &got); err != nil || got.Restarts != 7 {
		t.Errorf("after d with --update: got restarts %d (%v), want 7", got.Restarts, err)
	}
	if !slices.Equal(got.Command, other.Command) {
		t.Errorf("got command %v, want %v", got.Command, other.Command)
	}
}

// TestDeadSupervisorDeposed: the owner's supervisor is dead on a live host
// (its port refuses connections) while its lease still runs: another node
// deposes it at once instead of waiting for the lease, and says so.
func TestDeadSupervisorDeposed(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	// A dead owner z: its key bound to a long lease, its port closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String()
	ln.Close()
	grant, err := c.cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	own, _ := json.Marshal(election.Owner{ID: "z", URL: deadURL, At: time.Now().UTC()})
	resp, err := c.cli.Put(ctx, c.keys.SuperviseOwnership("web").Owner, string(own), clientv3.WithLease(grant.ID))
	if err != nil {
		t.Fatal(err)
	}
	zEpoch := resp.Header.Revision
	st, _ := json.Marshal(RunState{Node: "z", Epoch: zEpoch, At: time.Now().UTC()})
	if _, err := c.cli.Put(ctx, c.keys.SuperviseState("web"), string(st)); err != nil {
		t.Fatal(err)
	}

	c.start(c.config("b", c.service("web", "run")))
	began := time.Now()
	started := c.waitStart("web", "b", 0)
	t.Logf("b deposed z and started web %v after it began", time.Since(began))
	c.waitHealthy("web", "b")
	ev := c.waitEvent("web", started.epoch)
	if ev.Cause != tandem.CauseCrashed || ev.PrevNode != "z" || ev.PrevEpoch != zEpoch {
		t.Errorf("got event %+v, want cause crash-detected, previous z@%d", ev, zEpoch)
	}
	if r := c.resignation("web"); r == nil || r.From != "z" || r.Epoch != zEpoch || r.Reason != tandem.CauseCrashed {
		t.Errorf("got resignation %+v, want z@%d deposed as crashed", r, zEpoch)
	}
	// Self fencing: b trusts z to have killed its command.
	wantStates(t, c.states("web"), RunState{Node: "z", Epoch: zEpoch, Clean: true, FencedBy: "self"}, RunState{Node: "b", Epoch: started.epoch})
	if ttl, err := c.cli.TimeToLive(ctx, grant.ID); err != nil || ttl.TTL != -1 {
		t.Errorf("got z's lease TTL %v (%v), want it revoked (-1)", ttl.TTL, err)
	}
}

// TestRestartedSupervisor: a supervisor restarted on the node where its
// predecessor died kills what that one left in the service's cgroup before
// it runs anything, and fences its own last run by the cgroup, not by the
// fence hooks.
func TestRestartedSupervisor(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	svc := c.service("web", "run")
	svc.Fencing, svc.Fence = FencingStrict, []FenceHook{c.fenceHook(true)}
	cfg := c.config("a", svc)
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	// What the dead supervisor left: its command, and its run state.
	cg, err := proc.NewCgroup(filepath.Join(cfg.CgroupParent, "web"))
	if err != nil {
		t.Fatal(err)
	}
	left, err := proc.Start(proc.Spec{Args: []string{"sleep", "1000"}, Cgroup: cg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = left.Kill(context.Background()) })
	resp, err := c.cli.Put(ctx, "/tandem-test/any", "x") // an epoch from the past
	if err != nil {
		t.Fatal(err)
	}
	prevEpoch := resp.Header.Revision
	st, _ := json.Marshal(RunState{Node: "a", Addr: "addr-a", Epoch: prevEpoch, At: time.Now().UTC()})
	if _, err := c.cli.Put(ctx, c.keys.SuperviseState("web"), string(st)); err != nil {
		t.Fatal(err)
	}

	a := c.start(cfg)
	started := c.waitStart("web", "a", 0)
	c.waitHealthy("web", "a")
	waitFor(t, "the leftover command killed", long, func() bool {
		select {
		case <-left.Done():
			return true
		default:
			return false
		}
	})
	if got := a.procs("web"); len(got) != 1 || got[0] != started.pid {
		t.Errorf("got processes %v in a's cgroup, want only the new command %d", got, started.pid)
	}
	if f := c.entries(); slices.ContainsFunc(f, func(e entry) bool { return e.kind == "fence" }) {
		t.Errorf("got a fence hook run, want none: a fences its own last run through its cgroup")
	}
	wantStates(t, c.states("web"),
		RunState{Node: "a", Epoch: prevEpoch},
		RunState{Node: "a", Epoch: prevEpoch, Clean: true, FencedBy: "a"},
		RunState{Node: "a", Epoch: started.epoch})
}
