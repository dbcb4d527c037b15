package agent

import (
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

func TestSessions(t *testing.T) {
	// Each subtest has its own servers and agent.
	t.Run("every configured server at once", func(t *testing.T) {
		t.Parallel()
		owner0 := newFakeServer(t, "rm-0", term(0, 1))
		owner1 := newFakeServer(t, "rm-1", term(1, 2))
		standby := newFakeServer(t, "rm-s")
		all := []*fakeServer{owner0, owner1, standby}
		cfg := testConfig(t, t.TempDir(), owner0.URL(), owner1.URL(), standby.URL())
		cfg.PollWait = 300 * time.Millisecond // the standby answers only when a poll times out
		a, _ := startAgent(t, cfg)
		gate := filepath.Join(t.TempDir(), "gate")
		env := map[string]string{"GATE": gate}
		owner0.addAssignment(shell("att-0", gateScript, env))
		owner1.addAssignment(inTerm(shell("att-1", gateScript, env), 1, 0))
		// Every server hears of every attempt, whichever owner assigned it.
		for _, srv := range all {
			srv.waitRunning(t, "att-0")
			srv.waitRunning(t, "att-1")
		}
		// Each owner hears how its attempt ended, and acknowledges it (the
		// others may not hear: an acknowledged report is not sent again).
		touch(t, gate)
		owner0.waitDone(t, "att-0")
		owner1.waitDone(t, "att-1")
		waitFor(t, "the acknowledgements", func() bool { return len(a.Status().Unacknowledged) == 0 })
		waitFor(t, "an answer of the standby", func() bool { s, _ := sessionOf(a, standby.URL()); return s.LastAnswer != nil })

		st := a.Status()
		want := []SessionStatus{
			{URL: owner0.URL(), ServerID: "rm-0", Configured: true, Terms: []tandem.ShardTerm{term(0, 1)}},
			{URL: owner1.URL(), ServerID: "rm-1", Configured: true, Terms: []tandem.ShardTerm{term(1, 2)}},
			{URL: standby.URL(), ServerID: "rm-s", Configured: true, Terms: []tandem.ShardTerm{}},
		}
		if len(st.Sessions) != len(want) {
			t.Fatalf("sessions: got %+v, want %d", st.Sessions, len(want))
		}
		for i, s := range st.Sessions {
			w := want[i]
			if s.URL != w.URL || s.ServerID != w.ServerID || s.Configured != w.Configured || !slices.Equal(s.Terms, w.Terms) ||
				s.Failures != 0 || s.LastAnswer == nil {
				t.Errorf("session %d: got %+v, want %+v with an answer", i, s, w)
			}
		}
		if len(st.Epochs) != 2 || st.Epochs[0] != 1 || st.Epochs[1] != 2 {
			t.Errorf("epochs: got %v, want map[0:1 1:2]", st.Epochs)
		}
		for _, srv := range all {
			if s, _ := srv.lastSync(); s.Session != sessionName(t, srv.URL()) {
				t.Errorf("%s: session name %q, want %q", srv.id, s.Session, sessionName(t, srv.URL()))
			}
		}
	})

	t.Run("a local event cuts every session's poll short", func(t *testing.T) {
		t.Parallel()
		owner := newFakeServer(t, "rm-owner", term(0, 1))
		owner.noAck = true // the report stays to be sent to every server
		standby := newFakeServer(t, "rm-standby")
		cfg := testConfig(t, t.TempDir(), owner.URL(), standby.URL())
		cfg.PollWait = time.Minute // longer than waitTimeout: only a kick ends a poll in time
		startAgent(t, cfg)
		waitFor(t, "a poll held by each server", func() bool { return owner.syncCount() > 0 && standby.syncCount() > 0 })
		gate := filepath.Join(t.TempDir(), "gate")
		owner.addAssignment(shell("att-kick", gateScript, map[string]string{"GATE": gate}))
		// The standby answers nothing, so only kicks make the agent sync
		// with it again: one when the attempt starts, one when it ends.
		standby.waitRunning(t, "att-kick")
		touch(t, gate)
		standby.waitDone(t, "att-kick")
	})

	t.Run("failing servers do not disturb the others", func(t *testing.T) {
		t.Parallel()
		dead := deadURL(t)
		unavailable := newFakeServer(t, "rm-503")
		unavailable.status = http.StatusServiceUnavailable
		owner := newFakeServer(t, "rm-owner", term(0, 1))
		a, logs := startAgent(t, testConfig(t, t.TempDir(), dead, unavailable.URL(), owner.URL()))
		owner.addAssignment(shell("att-ok", "true", nil))
		if r := owner.waitDone(t, "att-ok"); r.State != tandem.AttemptSucceeded {
			t.Errorf("att-ok: got %s (%s), want succeeded", r.State, r.Reason)
		}
		// Each failing session keeps retrying its own server.
		waitFor(t, "retries of the failing servers", func() bool {
			d, _ := sessionOf(a, dead)
			u, _ := sessionOf(a, unavailable.URL())
			return d.Failures >= 5 && u.Failures >= 5
		})
		if s, ok := sessionOf(a, owner.URL()); !ok || s.Failures != 0 || s.LastAnswer == nil {
			t.Errorf("owner's session: got %+v, want answering", s)
		}
		if n := unavailable.syncCount(); n < 5 {
			t.Errorf("syncs at the unavailable server: got %d, want retries", n)
		}
		for _, want := range []string{"sync failed", "server_url=" + dead, "connection refused", "not_active: rm-503 cannot take syncs now"} {
			if !strings.Contains(logs.String(), want) {
				t.Errorf("logs: no %q", want)
			}
		}
		if strings.Contains(logs.String(), "no server answers") {
			t.Errorf("warned that no server answers while one does")
		}
	})

	t.Run("warns when no server answers", func(t *testing.T) {
		t.Parallel()
		_, logs := startAgent(t, testConfig(t, t.TempDir(), deadURL(t)))
		waitFor(t, "the warning", func() bool { return strings.Contains(logs.String(), "no server answers; retrying") })
	})

	t.Run("a redirect is an error of its session", func(t *testing.T) {
		t.Parallel()
		target := newFakeServer(t, "rm-target", term(0, 1))
		old := newFakeServer(t, "rm-old-version")
		old.redirect = target.URL()
		a, logs := startAgent(t, testConfig(t, t.TempDir(), old.URL()))
		waitFor(t, "failures", func() bool { s, _ := sessionOf(a, old.URL()); return s.Failures >= 3 })
		if n := target.syncCount(); n != 0 {
			t.Errorf("syncs at the redirect's target: got %d, want 0", n)
		}
		if !strings.Contains(logs.String(), "HTTP 307: unexpected redirect to") {
			t.Errorf("logs: no failure naming the 307")
		}
	})

	t.Run("servers listed in answers get sessions", func(t *testing.T) {
		t.Parallel()
		other := newFakeServer(t, "rm-other", term(1, 5))
		seed := newFakeServer(t, "rm-seed")
		seed.servers = []tandem.ServerRef{seed.ref(), other.ref()}
		cfg := testConfig(t, t.TempDir(), seed.URL())
		cfg.PollWait = 300 * time.Millisecond // the standby's answers carry the list
		a, logs := startAgent(t, cfg)
		other.addAssignment(inTerm(shell("att-disc", "true", nil), 1, 0))
		if r := other.waitDone(t, "att-disc"); r.State != tandem.AttemptSucceeded {
			t.Errorf("att-disc: got %s (%s), want succeeded", r.State, r.Reason)
		}
		st := a.Status()
		if len(st.Sessions) != 2 || st.Sessions[0].URL != seed.URL() || !st.Sessions[0].Configured {
			t.Fatalf("sessions: got %+v, want the seed's, then the discovered one", st.Sessions)
		}
		if s := st.Sessions[1]; s.URL != other.URL() || s.Configured || s.ServerID != "rm-other" || !slices.Equal(s.Terms, []tandem.ShardTerm{term(1, 5)}) {
			t.Errorf("discovered session: got %+v, want %s, not configured, rm-other owning shard 1", s, other.URL())
		}
		if !strings.Contains(logs.String(), "server discovered") {
			t.Errorf("logs: no discovery")
		}
	})

	t.Run("a learned server's session ends once unlisted and failing", func(t *testing.T) {
		t.Parallel()
		other := newFakeServer(t, "rm-other")
		seed := newFakeServer(t, "rm-seed")
		seed.servers = []tandem.ServerRef{seed.ref(), other.ref()}
		lonely := newFakeServer(t, "rm-lonely") // configured, never listed, failing
		lonely.status = http.StatusServiceUnavailable
		cfg := testConfig(t, t.TempDir(), seed.URL(), lonely.URL())
		cfg.PollWait = 100 * time.Millisecond // the standby's answers carry the list
		a, logs := startAgent(t, cfg)
		waitFor(t, "a session with rm-other", func() bool { s, ok := sessionOf(a, other.URL()); return ok && s.LastAnswer != nil })

		// Failing but listed: kept.
		other.update(func() { other.status = http.StatusServiceUnavailable })
		waitFor(t, "rm-other's failures", func() bool { s, ok := sessionOf(a, other.URL()); return ok && s.Failures >= 5 })
		// Failing and no longer listed: dropped.
		seed.update(func() { seed.servers = []tandem.ServerRef{seed.ref()} })
		waitFor(t, "rm-other's session to end", func() bool { _, ok := sessionOf(a, other.URL()); return !ok })
		if !strings.Contains(logs.String(), "stopped syncing with a server that is no longer listed") {
			t.Errorf("logs: no end of the session")
		}
		// A configured server's session never ends.
		if s, ok := sessionOf(a, lonely.URL()); !ok || s.Failures == 0 {
			t.Errorf("configured failing server's session: got %+v, %v; want kept, failing", s, ok)
		}

		// Listed and answering again: a new session, whose syncs the server
		// takes, numbered after the old session's.
		last, _ := other.lastSync()
		other.update(func() { other.status = 0 })
		seed.update(func() { seed.servers = []tandem.ServerRef{seed.ref(), other.ref()} })
		waitFor(t, "a new session with rm-other", func() bool { s, ok := sessionOf(a, other.URL()); return ok && s.LastAnswer != nil && s.Failures == 0 })
		if s, _ := other.lastSync(); s.Seq <= last.Seq || s.Session != last.Session {
			t.Errorf("new session's sync: got session %q seq %d, want %q and a seq above %d", s.Session, s.Seq, last.Session, last.Seq)
		}
	})

	t.Run("work preserved while no server answers", func(t *testing.T) {
		t.Parallel()
		only := newFakeServer(t, "rm1", term(0, 1))
		a, _ := startAgent(t, testConfig(t, t.TempDir(), only.URL()))
		gate := filepath.Join(t.TempDir(), "gate")
		only.addAssignment(shell("att-keep", gateScript, map[string]string{"GATE": gate}))
		only.waitRunning(t, "att-keep")
		only.update(func() { only.status = http.StatusServiceUnavailable })
		n := only.syncCount()
		waitFor(t, "retries", func() bool { return only.syncCount() > n+5 })
		if got := a.Status().Running; len(got) != 1 {
			t.Errorf("running while no server answers: got %v, want [att-keep]", got)
		}
		only.update(func() { only.status = 0 })
		touch(t, gate)
		if r := only.waitDone(t, "att-keep"); r.State != tandem.AttemptSucceeded {
			t.Errorf("got %s (%s), want succeeded", r.State, r.Reason)
		}
	})
}

// sessionGoroutines counts the goroutines running a session.
func sessionGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "agent.(*Agent).runSession(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func TestCloseEndsSessions(t *testing.T) {
	if n := sessionGoroutines(); n != 0 {
		t.Fatalf("%d session goroutines before the test, want 0", n)
	}
	holding := newFakeServer(t, "rm-hold", term(0, 1))
	learned := newFakeServer(t, "rm-learned") // holds every poll
	holding.servers = []tandem.ServerRef{holding.ref(), learned.ref()}
	dead := deadURL(t)
	cfg := testConfig(t, t.TempDir(), holding.URL(), dead)
	cfg.PollWait = time.Minute // longer than waitTimeout: Close must not wait polls out
	a, _ := startAgent(t, cfg)
	waitFor(t, "a poll held by each live server and retries of the dead one", func() bool {
		d, _ := sessionOf(a, dead)
		return holding.syncCount() >= 2 && learned.syncCount() >= 1 && d.Failures >= 3
	})
	if n := sessionGoroutines(); n != 3 {
		t.Errorf("session goroutines: got %d, want 3", n)
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		a.Close()
	}()
	select {
	case <-closed:
	case <-time.After(waitTimeout):
		t.Fatalf("Close did not return within %s", waitTimeout)
	}
	if n := sessionGoroutines(); n != 0 {
		t.Errorf("session goroutines after Close: got %d, want 0", n)
	}
}

// A session with a server that owns no shard asks it to hold syncs for
// IdlePollWait, not PollWait, and goes back to PollWait the moment the
// server answers that it took a shard: the held sync does not delay that.
func TestIdlePollWait(t *testing.T) {
	owner := newFakeServer(t, "rm-owner", term(0, 1))
	standby := newFakeServer(t, "rm-standby")
	cfg := testConfig(t, t.TempDir(), owner.URL(), standby.URL())
	cfg.PollWait = 200 * time.Millisecond
	cfg.IdlePollWait = time.Minute // longer than waitTimeout: only an answer at once ends a held sync in time
	startAgent(t, cfg)
	idle := func(r tandem.SyncRequest) bool { return r.WaitMS == int(time.Minute/time.Millisecond) }
	busy := func(r tandem.SyncRequest) bool { return r.WaitMS == 200 }

	// The first sync of a session has had no answer: PollWait. Once the
	// standby has answered with no shard, its syncs ask for the longer hold.
	waitFor(t, "a sync asking the standby for the idle wait", func() bool { return standby.sawSync(idle) })
	if first := standby.firstSync(); !busy(first) {
		t.Errorf("the standby's first sync asked to be held %d ms, want 200 (no answer yet)", first.WaitMS)
	}
	// The owner's syncs all ask for PollWait.
	waitFor(t, "five syncs of the owner", func() bool { return owner.syncCount() >= 5 })
	if owner.sawSync(func(r tandem.SyncRequest) bool { return !busy(r) }) {
		t.Errorf("an owner was asked to hold a sync longer than PollWait: %+v", owner.syncsCopy())
	}

	// The standby takes a shard: the sync it holds is answered at once and
	// the next one asks for PollWait.
	n := standby.syncCount()
	standby.setTerms(term(1, 2))
	waitFor(t, "a sync of the standby asking for PollWait after it took a shard", func() bool {
		r, _ := standby.lastSync()
		return standby.syncCount() > n && busy(r)
	})
	// And gives it up: back to the idle wait.
	n = standby.syncCount()
	standby.setTerms()
	waitFor(t, "a sync of the former owner asking for the idle wait", func() bool {
		r, _ := standby.lastSync()
		return standby.syncCount() > n && idle(r)
	})
}

func TestIdlePollWaitDefaults(t *testing.T) {
	for _, tt := range []struct {
		poll, idle, want time.Duration
	}{
		{0, 0, DefaultIdlePollWait},
		{time.Second, 0, DefaultIdlePollWait},
		{10 * time.Second, 0, 10 * time.Second}, // never below PollWait
		{time.Second, 3 * time.Second, 3 * time.Second},
		{4 * time.Second, 3 * time.Second, 4 * time.Second},
	} {
		cfg := testConfig(t, t.TempDir(), "http://127.0.0.1:1")
		cfg.PollWait, cfg.IdlePollWait = tt.poll, tt.idle
		a, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if a.cfg.IdlePollWait != tt.want {
			t.Errorf("poll wait %s, idle poll wait %s: got idle %s, want %s", tt.poll, tt.idle, a.cfg.IdlePollWait, tt.want)
		}
	}
}
