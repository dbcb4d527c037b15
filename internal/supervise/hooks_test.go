package supervise

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hookScript is the tests' start, stop and notify hook, "hook.sh LEDGER
// BASE FAILON": it appends "hook ROLE NODE EPOCH SERVICE RUNNING NOW
// DEADLINE STATE" to the ledger, RUNNING being 1 if the node's cgroup of the
// service has processes, NOW its clock in seconds, DEADLINE its
// TANDEM_DEADLINE and STATE a notify hook's TANDEM_STATE ("-" for unset or
// empty), and fails on node FAILON.
const hookScript = `#!/bin/sh
ledger=$1; base=$2; failon=$3
running=0
grep -q "^populated 1" "$base/$TANDEM_NODE/$TANDEM_SERVICE/cgroup.events" 2>/dev/null && running=1
echo "hook $TANDEM_ROLE $TANDEM_NODE $TANDEM_EPOCH $TANDEM_SERVICE $running $(date +%s.%N) ${TANDEM_DEADLINE:--} ${TANDEM_STATE:--}" >> "$ledger"
[ "$TANDEM_NODE" = "$failon" ] && exit 1
exit 0
`

// TestHooks: the pre-start hook runs before the command starts and the
// post-start one after; pre-stop and post-stop around a clean stop, and
// notify on every change of state, with the service, node, epoch and a
// deadline in the future in their environment. A failing pre-start hook
// makes the node give the service up (start-failed) without starting it.
func TestHooks(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	h := c.script("hook.sh", hookScript) + " " + c.ledger + " " + c.base + " b"
	svc := c.service("web", "run")
	svc.Hooks = Hooks{PreStart: h, PostStart: h, PreStop: h, PostStop: h, Notify: h}
	svc.HookTimeout = Duration(time.Minute)
	svc.Ban = Duration(time.Hour)
	a := c.start(c.config("a", svc))
	first := c.waitStart("web", "a", 0)
	c.waitHealthy("web", "a")
	c.start(c.config("b", svc))
	c.waitNodes("a", "b")
	a.stop(t)
	var st ServiceStatus
	waitFor(t, "b banned from web", long, func() bool { st = c.status("web"); return len(st.Bans) == 1 })
	if b := st.Bans[0]; b.Node != "b" || !strings.HasPrefix(b.Reason, CauseStartFailed+": ") {
		t.Errorf("got ban %+v, want b banned for start-failed", b)
	}

	// Notify hooks run alongside the others (they must not hold a takeover
	// up), so they are checked apart from the order, once those of a's run
	// came.
	for _, n := range []string{"a " + StateStarting, "a " + StateHealthy, "a " + StateStopping} {
		waitFor(t, "notify hook of "+n, long, func() bool {
			for _, e := range c.entries() {
				if e.kind == "hook" && len(e.fields) == 8 && e.fields[0] == "notify" && e.fields[1]+" "+e.fields[7] == n {
					return true
				}
			}
			return false
		})
	}
	var got []string
	for _, e := range c.entries() {
		switch e.kind {
		case "hook":
			if len(e.fields) != 8 {
				t.Fatalf("ledger: malformed line %v", e)
			}
			// Every kind gets a deadline: its 1m timeout from its start.
			what := e.fields[0] + " hook on " + e.fields[1]
			if ran, deadline := hookTimes(t, what, e.fields[5], e.fields[6]); !deadline.IsZero() && deadline.After(ran.Add(time.Minute)) {
				t.Errorf("%s ran at %s: got TANDEM_DEADLINE %s, want at most its 1m timeout later", what, ran, e.fields[6])
			}
			if e.fields[0] != "notify" {
				got = append(got, e.fields[0]+" "+e.fields[1]+" "+e.fields[4])
			}
			if e.fields[3] != "web" {
				t.Errorf("hook %v: got service %q, want web", e.fields, e.fields[3])
			}
			if e.fields[1] == "a" && e.fields[2] != strconv.FormatInt(first.epoch, 10) {
				t.Errorf("hook %v on a: got epoch %s, want %d", e.fields, e.fields[2], first.epoch)
			}
		}
	}
	// Each hook with whether the command ran then. b's stop hooks, after
	// its failed start, are not asserted: like Pacemaker's stop after a
	// failed start, they must be harmless on a node that runs nothing.
	want := []string{"pre-start a 0", "post-start a 1", "pre-stop a 1", "post-stop a 0", "pre-start b 0"}
	if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
		t.Errorf("got hooks %q, want %q first", got, want)
	}
	if s := c.startsOn("web", "b"); len(s) != 0 {
		t.Errorf("got starts on b %+v, want none: its pre-start hook failed", s)
	}
	// b ran nothing, so a's clean stop is still the last run.
	if st.LastRun == nil || st.LastRun.Node != "a" || !st.LastRun.Clean {
		t.Errorf("got last run %+v, want a's clean stop", st.LastRun)
	}
	if r := c.resignation("web"); r == nil || r.From != "b" || r.Reason != CauseStartFailed {
		t.Errorf("got resignation %+v, want b's for start-failed", r)
	}
}
