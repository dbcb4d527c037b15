package supervise

import (
	"slices"
	"strconv"
	"testing"

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
}

func (c *cluster) fences() []fenceEntry {
	c.t.Helper()
	var out []fenceEntry
	for i, e := range c.entries() {
		if e.kind != "fence" {
			continue
		}
		if len(e.fields) != 8 {
			c.t.Fatalf("ledger: malformed line %v", e)
		}
		epoch, _ := strconv.ParseInt(e.fields[2], 10, 64)
		fepoch, _ := strconv.ParseInt(e.fields[5], 10, 64)
		out = append(out, fenceEntry{service: e.fields[0], node: e.fields[1], epoch: epoch, role: e.fields[3], fenced: e.fields[4],
			fencedEpoch: fepoch, fencedAddr: e.fields[6], result: e.fields[7], at: i})
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
	want := fenceEntry{service: "web", node: "b", epoch: second.epoch, role: "fence", fenced: "a", fencedEpoch: first.epoch,
		fencedAddr: "addr-a", result: "ok", at: fences[0].at}
	if fences[0] != want {
		t.Errorf("got fence hook run %+v, want %+v", fences[0], want)
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
