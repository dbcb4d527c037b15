package supervise

import (
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// fenceEntry is a "fence" line of fenceScript.
type fenceEntry struct {
	service, node string
	epoch         int64
	role          string
	fenced        string
	fencedEpoch   int64
	fencedAddr    string
	result        string
	at            int // its index in the ledger
	// What the hook saw besides: its clock, TANDEM_DEADLINE and the
	// variables every hook gets ("-" for unset or empty).
	ran, deadline                   string
	prevNode, prevEpoch, cause, vip string
	cluster                         string
}

// hookTimes parses a hook's clock (seconds since the epoch, from date
// +%s.%N) and its TANDEM_DEADLINE, failing the test unless the deadline is
// an RFC 3339 time after the hook ran.
func hookTimes(t *testing.T, what, ran, deadline string) (time.Time, time.Time) {
	t.Helper()
	secs, err := strconv.ParseFloat(ran, 64)
	if err != nil {
		t.Fatalf("%s: clock %q: %v", what, ran, err)
	}
	now := time.Unix(0, int64(secs*1e9))
	d, err := time.Parse(time.RFC3339Nano, deadline)
	if err != nil {
		t.Errorf("%s: got TANDEM_DEADLINE %q, want an RFC 3339 time: %v", what, deadline, err)
		return now, time.Time{}
	}
	if !d.After(now) {
		t.Errorf("%s ran at %s: got TANDEM_DEADLINE %s, want after it", what, now.Format(time.RFC3339Nano), deadline)
	}
	return now, d
}

func (c *cluster) fences() []fenceEntry {
	c.t.Helper()
	var out []fenceEntry
	for i, e := range c.entries() {
		if e.kind != "fence" {
			continue
		}
		if len(e.fields) != 15 {
			c.t.Fatalf("ledger: malformed line %v", e)
		}
		epoch, _ := strconv.ParseInt(e.fields[2], 10, 64)
		fepoch, _ := strconv.ParseInt(e.fields[5], 10, 64)
		f := e.fields
		out = append(out, fenceEntry{service: f[0], node: f[1], epoch: epoch, role: f[3], fenced: f[4],
			fencedEpoch: fepoch, fencedAddr: f[6], result: f[7], at: i,
			ran: f[8], deadline: f[9], prevNode: f[10], prevEpoch: f[11], cause: f[12], vip: f[13], cluster: f[14]})
	}
	return out
}

// indexOfStart returns the ledger index of svc's start on node at epoch.
func (c *cluster) indexOfStart(svc, node string, epoch int64) int {
	c.t.Helper()
	return slices.IndexFunc(c.entries(), func(e entry) bool {
		return e.kind == "start" && e.fields[0] == svc && e.fields[1] == node && e.fields[2] == strconv.FormatInt(epoch, 10)
	})
}

// TestStrictFencing: after an unclean end of the owner, the next owner runs
// the fence hook against it, with the right node and epochs, before it
// starts the command, and records the last run fenced; after a clean
// shutdown nobody is fenced.
func TestStrictFencing(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	svc := c.service("web", "run")
	svc.Fencing, svc.Fence = FencingStrict, []FenceHook{c.fenceHook(true)}
	svc.Nodes = []string{"b", "a"} // b takes over, not a joining again
	c.start(c.config("a", svc))
	c.waitHealthy("web", "a")
	b := c.start(c.config("b", svc))
	c.waitNodes("a", "b")
	first := c.waitStart("web", "a", 0)
	if f := c.fences(); len(f) != 0 {
		t.Fatalf("got fence hook runs %+v on the first start, want none", f)
	}

	c.revoke("a")
	second := c.waitStart("web", "b", 0)
	c.waitHealthy("web", "b")
	fences := c.fences()
	if len(fences) != 1 {
		t.Fatalf("got fence hook runs %+v, want 1", fences)
	}
	// Every hook's variables too (docs/SUPERVISE.md, "Operators"): the
	// last node and epoch, the cause, the VIP (none here) and the cluster.
	// The deadline is checked apart: its value is a time.
	want := fenceEntry{service: "web", node: "b", epoch: second.epoch, role: "fence", fenced: "a", fencedEpoch: first.epoch,
		fencedAddr: "addr-a", result: "ok", at: fences[0].at, ran: fences[0].ran, deadline: fences[0].deadline,
		prevNode: "a", prevEpoch: strconv.FormatInt(first.epoch, 10), cause: tandem.CauseLeaseExpired, vip: "-", cluster: c.name}
	if fences[0] != want {
		t.Errorf("got fence hook run %+v, want %+v", fences[0], want)
	}
	// The hook's timeout is 10s (fenceHook).
	ran, deadline := hookTimes(t, "the fence hook", fences[0].ran, fences[0].deadline)
	if !deadline.IsZero() && deadline.After(ran.Add(10*time.Second)) {
		t.Errorf("the fence hook ran at %s: got TANDEM_DEADLINE %s, want at most its 10s timeout later", ran, fences[0].deadline)
	}
	if started := c.indexOfStart("web", "b", second.epoch); fences[0].at > started {
		t.Errorf("the fence hook ran (ledger line %d) after b started the command (line %d), want before", fences[0].at, started)
	}
	if second.others != 0 {
		t.Errorf("b started web while a's cgroup of it had processes")
	}
	ev := c.waitEvent("web", second.epoch)
	if ev.Cause != tandem.CauseLeaseExpired || ev.Fenced != "a" || ev.FenceLevel != 1 || ev.FencingS == nil || *ev.FencingS <= 0 {
		t.Errorf("got event %+v (fencing_s %s), want cause lease-expired, a fenced at level 1 in some time", ev, fmtSecsOf(ev.FencingS))
	}
	wantStates(t, c.states("web"),
		RunState{Node: "a", Epoch: first.epoch},
		RunState{Node: "a", Epoch: first.epoch, Clean: true, FencedBy: "b"},
		RunState{Node: "b", Epoch: second.epoch})

	// A clean shutdown: a takes over without fencing b.
	b.stop(t)
	var third startEntry
	waitFor(t, "web started again on a", long, func() bool {
		on := c.startsOn("web", "a")
		third = on[len(on)-1]
		return third.epoch > second.epoch
	})
	ev = c.waitEvent("web", third.epoch)
	if ev.Cause != tandem.CauseShutdown || ev.Fenced != "" || ev.FencingS == nil || *ev.FencingS != 0 {
		t.Errorf("got event %+v (fencing_s %s), want cause shutdown, nobody fenced", ev, fmtSecsOf(ev.FencingS))
	}
	if f := c.fences(); len(f) != 1 {
		t.Errorf("got %d fence hook runs after a clean shutdown, want still 1: %+v", len(f), f)
	}
}

// TestFenceFailure: when no fence level succeeds, the new owner starts
// nothing, gives the service up with cause fence-failed, and leaves the last
// node recorded as unfenced for the next owner to try.
func TestFenceFailure(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	svc := c.service("web", "run")
	svc.Fencing, svc.Fence = FencingStrict, []FenceHook{c.fenceHook(false)}
	// a is cut off from etcd, so it cannot come back to run the service
	// itself.
	p := newProxy(t, c.etcd.Endpoint)
	c.start(c.config("a", svc), p.client(t))
	c.waitHealthy("web", "a")
	b := c.start(c.config("b", svc))
	c.waitNodes("a", "b")
	first := c.waitStart("web", "a", 0)

	p.Cut()
	waitFor(t, "b giving web up for fence-failed", long, func() bool {
		r := c.resignation("web")
		return r != nil && r.From == "b" && r.Reason == CauseFenceFailed
	})
	fences := c.fences()
	if len(fences) < 3 {
		t.Errorf("got %d fence hook runs, want 3 (three rounds) or more", len(fences))
	}
	for _, f := range fences {
		if f.node != "b" || f.fenced != "a" || f.fencedEpoch != first.epoch || f.result != "fail" {
			t.Errorf("got fence hook run %+v, want b fencing a@%d, failing", f, first.epoch)
		}
		hookTimes(t, "a fence hook", f.ran, f.deadline)
	}
	if got := c.startsOn("web", "b"); len(got) != 0 {
		t.Errorf("got starts on b %+v, want none: a was never fenced", got)
	}
	sts := c.states("web")
	if last := sts[len(sts)-1]; last.Node != "a" || last.Epoch != first.epoch || last.Clean || last.FencedBy != "" {
		t.Errorf("got last run state %+v, want a@%d still unclean and unfenced", last, first.epoch)
	}
	if got := b.metric(t, "tandem_supervise_fence_failures_total", map[string]string{"service": "web"}); got < 1 {
		t.Errorf("got fence failures metric %v, want at least 1", got)
	}
}
