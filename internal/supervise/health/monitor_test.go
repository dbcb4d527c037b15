package health

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Starting: "starting", Healthy: "healthy", Unhealthy: "unhealthy", State(9): "State(9)"} {
		if got := s.String(); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestMonitorNoChecks(t *testing.T) {
	ch, cancel := runMonitor(t, nil, 0)
	wantEvent(t, ch, Starting)
	e := wantEvent(t, ch, Healthy)
	if e.Check != "" {
		t.Errorf("got Check %q, want none", e.Check)
	}
	cancel()
	waitClosed(t, ch)
}

func TestMonitorRiseToHealthy(t *testing.T) {
	srv := newStatusServer(t, 200)
	c := httpCheck(srv.URL)
	c.Rise = 3
	ch, _ := runMonitor(t, []Check{c}, eventTimeout)

	start := wantEvent(t, ch, Starting)
	if start.Check != "" || start.At.IsZero() {
		t.Errorf("got Starting event %+v, want no check and a time", start)
	}
	e := wantEvent(t, ch, Healthy)
	if n := srv.served(); n < c.Rise {
		t.Errorf("healthy after %d requests, want at least rise=%d", n, c.Rise)
	}
	if e.Check != c.String() {
		t.Errorf("got Check %q, want %q", e.Check, c.String())
	}
	if e.At.Before(start.At) {
		t.Errorf("got Healthy at %v before Starting at %v", e.At, start.At)
	}
}

// TestMonitorFlapping feeds one check a scripted run of statuses: single
// and double failures between successes must not make a healthy service
// unhealthy; only fall=3 in a row does, and rise=2 in a row recovers it.
func TestMonitorFlapping(t *testing.T) {
	const ok, bad = 200, 503
	srv := newStatusServer(t, ok,
		ok, ok, // 1-2: healthy
		bad, ok, // 3: one failure
		bad, bad, ok, // 5-6: two failures
		bad, bad, bad, // 8-10: three failures: unhealthy
		ok,          // 11: one success is not enough
		bad, ok, ok, // 12: failure; 13-14: healthy again
	)
	c := httpCheck(srv.URL)
	ch, _ := runMonitor(t, []Check{c}, eventTimeout)

	wantEvent(t, ch, Starting)
	if e := wantEvent(t, ch, Healthy); srv.served() < 2 {
		t.Errorf("healthy (%s) after %d requests, want at least 2", e.Reason, srv.served())
	}
	e := wantEvent(t, ch, Unhealthy)
	if n := srv.served(); n < 10 {
		t.Errorf("unhealthy after %d requests, want at least 10: no run of 3 failures ends before request 10", n)
	}
	if e.Check != c.String() {
		t.Errorf("got Check %q, want %q", e.Check, c.String())
	}
	if want := "failed 3 times in a row: status 503 Service Unavailable, want 2xx"; !strings.HasPrefix(e.Reason, want) {
		t.Errorf("got Reason %q, want it to start %q", e.Reason, want)
	}
	if e.NotRunning {
		t.Error("got NotRunning, want it only for exec exit 7")
	}
	wantEvent(t, ch, Healthy)
	if n := srv.served(); n < 14 {
		t.Errorf("healthy again after %d requests, want at least 14: the first 2 successes in a row after request 10 are 13 and 14", n)
	}
}

func TestMonitorWaitsForEveryCheck(t *testing.T) {
	ln := listen(t)
	tcp := Check{Kind: KindTCP, Target: ln.Addr().String(), Interval: 10 * time.Millisecond}.WithDefaults()
	srv := newStatusServer(t, 200, 500, 500, 500, 500, 500)
	http := httpCheck(srv.URL)
	ch, _ := runMonitor(t, []Check{tcp, http}, eventTimeout)

	wantEvent(t, ch, Starting)
	e := wantEvent(t, ch, Healthy)
	if n := srv.served(); n < 5+http.Rise {
		t.Errorf("healthy after %d http requests, want at least %d: 5 failures, then rise", n, 5+http.Rise)
	}
	if e.Check != http.String() {
		t.Errorf("got Check %q, want the last check to pass, %q", e.Check, http.String())
	}
}

func TestMonitorTCPUnhealthy(t *testing.T) {
	ln := listen(t)
	c := Check{Kind: KindTCP, Target: ln.Addr().String(), Interval: 10 * time.Millisecond}.WithDefaults()
	ch, _ := runMonitor(t, []Check{c}, eventTimeout)

	wantEvent(t, ch, Starting)
	wantEvent(t, ch, Healthy)
	ln.Close()
	e := wantEvent(t, ch, Unhealthy)
	if e.Check != c.String() {
		t.Errorf("got Check %q, want %q", e.Check, c.String())
	}
	if want := "failed 3 times in a row: "; !strings.HasPrefix(e.Reason, want) || !strings.Contains(e.Reason, "connection refused") {
		t.Errorf("got Reason %q, want it to start %q and say the connection was refused", e.Reason, want)
	}
}

// TestMonitorExecNotRunning runs a real OCF-style monitor script that says
// "running" (0) while a state file exists and "not running" (7) otherwise.
func TestMonitorExecNotRunning(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "running")
	script := writeScript(t, dir, "monitor.sh", fmt.Sprintf("[ -e %q ] && exit 0\necho 'daemon is gone'\nexit 7\n", state))
	if err := os.WriteFile(state, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c := Check{Kind: KindExec, Target: script, Interval: 10 * time.Millisecond, Timeout: 5 * time.Second}.WithDefaults()
	ch, _ := runMonitor(t, []Check{c}, eventTimeout)

	wantEvent(t, ch, Starting)
	wantEvent(t, ch, Healthy)
	if err := os.Remove(state); err != nil {
		t.Fatal(err)
	}
	e := wantEvent(t, ch, Unhealthy)
	if !e.NotRunning {
		t.Error("got NotRunning false, want true: the script exited 7")
	}
	if want := "failed 3 times in a row: not running (exit status 7): daemon is gone"; e.Reason != want {
		t.Errorf("got Reason %q, want %q", e.Reason, want)
	}
}

// TestMonitorStartTimeout starts a service that is not up: the monitor
// gives up on it after the start timeout, keeps probing, and reports it
// healthy once it comes up after all.
func TestMonitorStartTimeout(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "running")
	script := writeScript(t, dir, "monitor.sh", fmt.Sprintf("[ -e %q ] && exit 0\necho 'no pid file'\nexit 7\n", state))
	srv := newStatusServer(t, 200)
	good := httpCheck(srv.URL)
	c := Check{Kind: KindExec, Target: script, Interval: 10 * time.Millisecond, Timeout: 5 * time.Second}.WithDefaults()
	ch, _ := runMonitor(t, []Check{good, c}, 200*time.Millisecond)

	start := wantEvent(t, ch, Starting)
	e := wantEvent(t, ch, Unhealthy)
	if e.Check != c.String() {
		t.Errorf("got Check %q, want the check that never passed, %q", e.Check, c.String())
	}
	if want := "did not become healthy within 200ms: last error: not running (exit status 7): no pid file"; e.Reason != want {
		t.Errorf("got Reason %q, want %q", e.Reason, want)
	}
	if !e.NotRunning {
		t.Error("got NotRunning false, want true: the script exited 7")
	}
	if d := e.At.Sub(start.At); d < 200*time.Millisecond {
		t.Errorf("got Unhealthy %v after Starting, want at least the start timeout, 200ms", d)
	}

	if err := os.WriteFile(state, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e = wantEvent(t, ch, Healthy)
	if e.Check != c.String() {
		t.Errorf("got Check %q, want %q", e.Check, c.String())
	}
}

func TestMonitorStopsOnCancel(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	script := writeScript(t, dir, "hang.sh", "sleep 30 &\necho $! > \"$1\"\nwait\n")
	c := Check{Kind: KindExec, Target: script + " " + pidFile, Interval: 10 * time.Millisecond, Timeout: time.Minute}.WithDefaults()
	ch, cancel := runMonitor(t, []Check{c}, time.Minute)

	wantEvent(t, ch, Starting)
	waitFor(t, "the probe to start its child", eventTimeout, func() bool {
		b, _ := readFileIfExists(pidFile)
		return strings.HasSuffix(string(b), "\n")
	})
	cancel()
	// Run closes the channel only once its probes have ended, and an ended
	// exec probe has killed its process group (which dies asynchronously).
	waitClosed(t, ch)
	child := readPID(t, pidFile)
	waitFor(t, fmt.Sprintf("the probe's child (pid %d) to be killed", child), eventTimeout, func() bool { return processGone(child) })
}

func TestMonitorRunTwicePanics(t *testing.T) {
	m := NewMonitor(nil, 0)
	ctx, cancel := context.WithCancel(context.Background())
	ch := m.Run(ctx)
	t.Cleanup(func() { cancel(); waitClosed(t, ch) })
	defer func() {
		if recover() == nil {
			t.Error("second Run did not panic")
		}
	}()
	m.Run(ctx)
}

// TestMachine drives the state machine alone, one result at a time: what
// changes the state, with no clock or probes in the way.
func TestMachine(t *testing.T) {
	a := Check{Kind: KindTCP, Target: "a:1", Fall: 3, Rise: 2}
	b := Check{Kind: KindTCP, Target: "b:1", Fall: 1, Rise: 1}
	const (
		A = iota
		B
	)
	type step struct {
		check int    // A or B; -1 is the start timeout passing
		ok    bool   // the probe's outcome
		want  string // the state it changes to, or "" for none
	}
	tests := []struct {
		name   string
		checks []Check
		steps  []step
	}{
		{"rise", []Check{a}, []step{{A, true, ""}, {A, true, "healthy"}, {A, true, ""}}},
		{"broken rise", []Check{a}, []step{{A, true, ""}, {A, false, ""}, {A, true, ""}, {A, true, "healthy"}}},
		{"fall", []Check{a}, []step{{A, true, ""}, {A, true, "healthy"}, {A, false, ""}, {A, false, ""}, {A, false, "unhealthy"}, {A, false, ""}}},
		{"flapping", []Check{a}, []step{
			{A, true, ""}, {A, true, "healthy"},
			{A, false, ""}, {A, true, ""}, {A, false, ""}, {A, false, ""}, {A, true, ""}, {A, false, ""}, {A, true, ""},
		}},
		{"recovery", []Check{a}, []step{
			{A, true, ""}, {A, true, "healthy"}, {A, false, ""}, {A, false, ""}, {A, false, "unhealthy"},
			{A, true, ""}, {A, false, ""}, {A, true, ""}, {A, true, "healthy"},
		}},
		{"failures while starting", []Check{a}, []step{{A, false, ""}, {A, false, ""}, {A, false, ""}, {A, false, ""}, {A, true, ""}, {A, true, "healthy"}}},
		{"start timeout", []Check{a}, []step{{A, false, ""}, {A, true, ""}, {-1, false, "unhealthy"}, {A, true, "healthy"}}},
		{"start timeout after healthy", []Check{a}, []step{{A, true, ""}, {A, true, "healthy"}, {-1, false, ""}}},
		{"every check", []Check{a, b}, []step{{A, true, ""}, {A, true, ""}, {B, true, "healthy"}, {A, true, ""}}},
		{"one check of two falls", []Check{a, b}, []step{
			{A, true, ""}, {B, true, ""}, {A, true, "healthy"}, {B, false, "unhealthy"},
			{A, false, ""}, {B, true, "healthy"}, // A still passes: one failure is less than its fall
			{A, false, ""}, {A, false, "unhealthy"}, {B, true, ""}, {A, true, ""}, {A, true, "healthy"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(tt.checks, time.Second)
			now := time.Now()
			for i, s := range tt.steps {
				var e Event
				var changed bool
				if s.check < 0 {
					e, changed = m.expire(now)
				} else {
					r := Result{OK: s.ok}
					if !s.ok {
						r.Err = fmt.Errorf("failure at step %d", i)
					}
					e, changed = m.observe(s.check, r, now)
				}
				got := ""
				if changed {
					got = e.State.String()
				}
				if got != s.want {
					t.Fatalf("step %d (%+v): got change %q, want %q", i, s, got, s.want)
				}
				if changed && e.State == Unhealthy && (e.Check == "" || e.Reason == "") {
					t.Errorf("step %d: got unhealthy event %+v, want the check and reason", i, e)
				}
			}
		})
	}
}

func TestMachineStartTimeoutReasons(t *testing.T) {
	c := Check{Kind: KindTCP, Target: "a:1", Fall: 3, Rise: 3}
	tests := []struct {
		name    string
		results []Result
		want    string
	}{
		{"no probe", nil, "did not become healthy within 30s: no probe finished"},
		{"failing", []Result{{Err: fmt.Errorf("refused")}}, "did not become healthy within 30s: last error: refused"},
		{"rising", []Result{{OK: true}}, "did not become healthy within 30s: 1 of 3 successes in a row"},
		{"rising after failure", []Result{{Err: fmt.Errorf("refused")}, {OK: true}, {OK: true}},
			"did not become healthy within 30s: 2 of 3 successes in a row; last error: refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine([]Check{c}, 30*time.Second)
			for _, r := range tt.results {
				m.observe(0, r, time.Now())
			}
			e, changed := m.expire(time.Now())
			if !changed || e.State != Unhealthy {
				t.Fatalf("got changed=%v state %s, want a change to unhealthy", changed, e.State)
			}
			if e.Reason != tt.want {
				t.Errorf("got Reason %q, want %q", e.Reason, tt.want)
			}
			if e.Check != c.String() {
				t.Errorf("got Check %q, want %q", e.Check, c.String())
			}
		})
	}
}
