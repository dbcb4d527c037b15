package supervise

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hookScript is the tests' start and stop hook, "hook.sh LEDGER BASE
// FAILON": it appends "hook ROLE NODE EPOCH SERVICE RUNNING" to the ledger,
// RUNNING being 1 if the node's cgroup of the service has processes, and
// fails on node FAILON.
const hookScript = `#!/bin/sh
ledger=$1; base=$2; failon=$3
running=0
grep -q "^populated 1" "$base/$TANDEM_NODE/$TANDEM_SERVICE/cgroup.events" 2>/dev/null && running=1
echo "hook $TANDEM_ROLE $TANDEM_NODE $TANDEM_EPOCH $TANDEM_SERVICE $running" >> "$ledger"
[ "$TANDEM_NODE" = "$failon" ] && exit 1
[ -n "$TANDEM_DEADLINE" ] || exit 2
exit 0
`

// TestHooks: the pre-start hook runs before the command starts and the
// post-start one after; pre-stop and post-stop around a clean stop, with the
// service, node and epoch in their environment. A failing pre-start hook
// makes the node give the service up (start-failed) without starting it.
func TestHooks(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	h := c.script("hook.sh", hookScript) + " " + c.ledger + " " + c.base + " b"
	svc := c.service("web", "run")
	svc.Hooks = Hooks{PreStart: h, PostStart: h, PreStop: h, PostStop: h}
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

	var got []string
	for _, e := range c.entries() {
		switch e.kind {
		case "hook":
			got = append(got, e.fields[0]+" "+e.fields[1]+" "+e.fields[4])
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
