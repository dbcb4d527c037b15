package server_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/server"
)

func spec(name string) tandem.JobSpec {
	return tandem.JobSpec{Name: name, Command: []string{"echo", name}}
}

// Exactly one active at a time; when it crashes another takes over, with a
// higher epoch, and every job acknowledged before the crash is still there.
func TestCrashOfActiveFailsOverAndKeepsJobs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		depose bool
		cause  string
	}{
		// A standby finds the active's port closed and deposes it.
		{"deposed by a standby", true, tandem.CauseCrashed},
		// Without that, the active's lease runs out.
		{"lease expiry", false, tandem.CauseLeaseExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testCrashFailover(t, tc.depose, tc.cause)
		})
	}
}

func testCrashFailover(t *testing.T, depose bool, cause string) {
	c := newCluster(t, 3, func(cfg *server.Config) { cfg.DeposeDead = depose })
	first := c.waitActive()
	if n := c.activeCount(); n != 1 {
		t.Fatalf("active servers: got %d, want 1", n)
	}
	ctx := context.Background()
	cl := c.client()
	var acked []string
	for i := 0; i < 20; i++ {
		j, err := cl.SubmitJob(ctx, spec(fmt.Sprintf("before-%d", i)), client.SubmitOptions{})
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		acked = append(acked, j.ID)
	}
	oldEpoch, _ := c.nodes[first].srv.ActiveEpoch()
	// Let the standbys' probes see the active alive first: deposing a dead
	// active needs that, and so does measuring detection.
	time.Sleep(20 * probeInterval)

	c.crash(first)
	next := c.waitActive(first)
	newEpoch, _ := c.nodes[next].srv.ActiveEpoch()
	if newEpoch <= oldEpoch {
		t.Fatalf("epoch after failover: got %d, want more than %d", newEpoch, oldEpoch)
	}
	if n := c.activeCount(); n != 1 {
		t.Fatalf("active servers after failover: got %d, want 1", n)
	}
	for _, id := range acked {
		if _, err := cl.GetJob(ctx, id); err != nil {
			t.Fatalf("acknowledged job %s after failover: %v", id, err)
		}
	}
	after, err := cl.SubmitJob(ctx, spec("after"), client.SubmitOptions{})
	if err != nil {
		t.Fatalf("submit after failover: %v", err)
	}
	if after.ID <= acked[len(acked)-1] {
		t.Fatalf("job IDs must keep sorting in creation order across failovers: %s after %s", after.ID, acked[len(acked)-1])
	}
	if after.Epoch != newEpoch || after.AcceptedBy != c.nodes[next].srv.Config().ID {
		t.Fatalf("job accepted by %s at epoch %d, want %s at %d", after.AcceptedBy, after.Epoch, c.nodes[next].srv.Config().ID, newEpoch)
	}

	// The history explains the failover (I6).
	hist := waitHistory(t, c.nodes[next], 2)
	last := hist[len(hist)-1]
	if last.Epoch != newEpoch || last.Cause != cause || last.PrevEpoch != oldEpoch {
		t.Fatalf("last history event: got %+v, want epoch %d caused by %s after epoch %d", last, newEpoch, cause, oldEpoch)
	}
	if last.DetectionS == nil || last.ElectionS == nil || last.TransitionS == nil {
		t.Fatalf("failover phases missing: %+v", last)
	}
}

// Killing the active's etcd session (its lease) deposes it: it steps down,
// another server becomes active, and nothing is lost.
func TestLostSessionDeposesActive(t *testing.T) {
	c := newCluster(t, 3, nil)
	first := c.waitActive()
	ctx := context.Background()
	cl := c.client()
	j, err := cl.SubmitJob(ctx, spec("x"), client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old, _ := c.nodes[first].srv.ActiveEpoch()
	if _, err := c.etcd.Client(t).Revoke(ctx, c.nodes[first].srv.Lease()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		epoch, ok := c.nodes[first].srv.ActiveEpoch()
		if !ok || epoch != old {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the active kept acting as active after its lease was revoked")
		}
		time.Sleep(10 * time.Millisecond)
	}
	next := c.waitActive()
	if epoch, _ := c.nodes[next].srv.ActiveEpoch(); epoch <= old {
		t.Fatalf("new epoch %d, want more than %d", epoch, old)
	}
	if _, err := cl.GetJob(ctx, j.ID); err != nil {
		t.Fatalf("job after losing the session: %v", err)
	}
	// The deposed server came back as a standby with a new session.
	if st := c.nodes[first].srv.Status(); next != first && st.State != tandem.StateStandby {
		t.Fatalf("deposed server state: got %s, want standby", st.State)
	}
}

// A standby redirects job requests to the active with the same path and
// query, and answers the HA endpoints itself.
func TestStandbyRedirectsJobsButNotHAEndpoints(t *testing.T) {
	c := newCluster(t, 2, nil)
	a := c.waitActive()
	active, standby := c.nodes[a], c.nodes[1-a]

	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/v1/jobs?limit=5&state=pending", ""},
		{"GET", "/v1/jobs/some-id", ""},
		{"POST", "/v1/jobs", `{"command":["true"]}`},
	} {
		r := do(t, tc.method, standby.url+tc.path, "application/json", tc.body)
		if r.status != http.StatusTemporaryRedirect {
			t.Fatalf("%s %s on standby: got %d, want 307", tc.method, tc.path, r.status)
		}
		if got, want := r.header.Get("Location"), active.url+tc.path; got != want {
			t.Fatalf("Location: got %q, want %q", got, want)
		}
	}
	if n := c.countJobs(); n != 0 {
		t.Fatalf("a standby stored %d jobs", n)
	}
	for _, tc := range []struct {
		path       string
		onActive   int
		onStandby  int
		bodyChecks string
	}{
		{"/isActive", 200, 405, ""},
		{"/healthz", 200, 200, `"status":"ok"`},
		{"/metrics", 200, 200, "tandem_ha_state"},
		{"/about", 200, 200, `"active_id"`},
		{"/v1/ha/state", 200, 200, `"auto_failover"`},
		{"/v1/ha/history", 200, 200, `"events"`},
		{"/v1/cluster/servers", 200, 200, `"servers"`},
	} {
		for _, x := range []struct {
			n    *node
			want int
		}{{active, tc.onActive}, {standby, tc.onStandby}} {
			r := do(t, "GET", x.n.url+tc.path, "", "")
			if r.status != x.want {
				t.Fatalf("GET %s on %s: got %d, want %d (%s)", tc.path, x.n.srv.Config().ID, r.status, x.want, r.body)
			}
			if !strings.Contains(r.body, tc.bodyChecks) {
				t.Fatalf("GET %s: body lacks %q: %s", tc.path, tc.bodyChecks, r.body)
			}
		}
	}
	st := standby.srv.Status()
	if st.State != tandem.StateStandby || st.ActiveID != active.srv.Config().ID || st.ActiveURL != active.url || st.Epoch == 0 {
		t.Fatalf("standby's state: got %+v", st)
	}
	r := do(t, "GET", standby.url+"/v1/cluster/servers", "", "")
	for _, n := range c.nodes {
		if !strings.Contains(r.body, n.url) {
			t.Fatalf("servers list lacks %s: %s", n.url, r.body)
		}
	}
}

// With no active (manual mode, nobody promoted), job requests answer 503
// with Retry-After, and nothing is stored.
func TestNoActiveAnswers503(t *testing.T) {
	c := newCluster(t, 2, func(cfg *server.Config) { cfg.AutoFailover = false })
	time.Sleep(3 * testTTL) // long enough that an election would have happened
	if n := c.activeCount(); n != 0 {
		t.Fatalf("manual mode: %d servers became active on their own", n)
	}
	for _, n := range c.nodes {
		r := do(t, "POST", n.url+"/v1/jobs", "application/json", `{"command":["true"]}`)
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || errorCode(r.body) != tandem.ENOACTIVE {
			t.Fatalf("POST /v1/jobs with no active: got %d Retry-After=%q %s", r.status, r.header.Get("Retry-After"), r.body)
		}
		if r := do(t, "GET", n.url+"/isActive", "", ""); r.status != http.StatusMethodNotAllowed {
			t.Fatalf("isActive on a standby: got %d, want 405", r.status)
		}
	}
	if n := c.countJobs(); n != 0 {
		t.Fatalf("jobs stored with no active: %d", n)
	}
}

// Manual mode: all start standby; transition-to-active promotes one; a
// second promotion is refused while it is active; transition-to-standby
// and failover work.
func TestManualModeTransitions(t *testing.T) {
	c := newCluster(t, 3, func(cfg *server.Config) { cfg.AutoFailover = false })
	ctx := context.Background()
	cl := c.client()
	for _, n := range c.nodes {
		if st := n.srv.Status(); st.State != tandem.StateStandby {
			t.Fatalf("%s starts %s, want standby", st.ID, st.State)
		}
	}
	st, err := cl.Transition(ctx, c.nodes[1].url, tandem.TransitionRequest{State: tandem.StateActive})
	if err != nil || st.State != tandem.StateActive {
		t.Fatalf("transition-to-active rm2: %+v, %v", st, err)
	}
	_, err = cl.Transition(ctx, c.nodes[0].url, tandem.TransitionRequest{State: tandem.StateActive})
	if tandem.ErrorCode(err) != tandem.ECONFLICT {
		t.Fatalf("second transition-to-active: got %v, want %s", err, tandem.ECONFLICT)
	}
	if _, err := cl.SubmitJob(ctx, spec("m"), client.SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	// Graceful failover rm2 -> rm3.
	st, err = cl.Failover(ctx, c.nodes[1].url, tandem.HandoffRequest{From: "rm2", To: "rm3"})
	if err != nil || st.ActiveID != "rm3" {
		t.Fatalf("failover rm2 rm3: %+v %v", st, err)
	}
	if a := c.waitActive(); a != 2 {
		t.Fatalf("active after failover: rm%d, want rm3", a+1)
	}
	st, err = cl.Transition(ctx, c.nodes[2].url, tandem.TransitionRequest{State: tandem.StateStandby})
	if err != nil || st.State != tandem.StateStandby {
		t.Fatalf("transition-to-standby rm3: %+v %v", st, err)
	}
	time.Sleep(2 * testTTL)
	if n := c.activeCount(); n != 0 {
		t.Fatalf("manual mode after transition-to-standby: %d active, want 0", n)
	}
	hist := waitHistory(t, c.nodes[0], 2)
	causes := []string{}
	for _, e := range hist {
		causes = append(causes, e.Cause)
	}
	if got := strings.Join(causes, ","); got != "manual,handoff" {
		t.Fatalf("history causes: got %s, want manual,handoff", got)
	}
}

// With automatic failover on, manual transitions are refused unless forced
// (yarn rmadmin's rule), and the forced ones work; failover needs no force.
func TestAutoModeRefusesManualTransitionsUnlessForced(t *testing.T) {
	c := newCluster(t, 3, nil)
	a := c.waitActive()
	ctx := context.Background()
	cl := c.client()
	for _, state := range []tandem.HAState{tandem.StateStandby, tandem.StateActive} {
		_, err := cl.Transition(ctx, c.nodes[a].url, tandem.TransitionRequest{State: state})
		if tandem.ErrorCode(err) != tandem.EREFUSED || !strings.Contains(err.Error(), "forcemanual") {
			t.Fatalf("unforced transition to %s: got %v, want a refusal naming --forcemanual", state, err)
		}
	}
	if _, ok := c.nodes[a].srv.ActiveEpoch(); !ok {
		t.Fatal("a refused transition changed the active")
	}
	st, err := cl.Transition(ctx, c.nodes[a].url, tandem.TransitionRequest{State: tandem.StateStandby, ForceManual: true})
	if err != nil || st.State != tandem.StateStandby {
		t.Fatalf("forced transition-to-standby: %+v %v", st, err)
	}
	b := c.waitActive(a)
	if b == a {
		t.Fatal("the server sent to standby became active again at once")
	}
	// Graceful failover back to a, without a TTL wait.
	from, to := c.nodes[b].srv.Config().ID, c.nodes[a].srv.Config().ID
	start := time.Now()
	st, err = cl.Failover(ctx, c.nodes[b].url, tandem.HandoffRequest{From: from, To: to})
	if err != nil || st.ActiveID != to {
		t.Fatalf("failover %s %s: %+v %v", from, to, st, err)
	}
	t.Logf("failover %s -> %s took %s", from, to, time.Since(start))
	if got := c.waitActive(); got != a {
		t.Fatalf("active after failover: %d, want %d", got, a)
	}
	// Failover must be sent to the active.
	_, err = cl.Failover(ctx, c.nodes[b].url, tandem.HandoffRequest{From: from, To: to})
	if tandem.ErrorCode(err) != tandem.ECONFLICT {
		t.Fatalf("failover from a standby: got %v, want %s", err, tandem.ECONFLICT)
	}
	_, err = cl.Failover(ctx, c.nodes[a].url, tandem.HandoffRequest{From: to, To: "nope"})
	if tandem.ErrorCode(err) != tandem.ENOTFOUND {
		t.Fatalf("failover to an unknown server: got %v, want %s", err, tandem.ENOTFOUND)
	}
	hist := waitHistory(t, c.nodes[a], 3)
	if last := hist[len(hist)-1]; last.Cause != tandem.CauseHandoff || last.PrevID != from {
		t.Fatalf("last event: %+v, want a handoff from %s", last, from)
	}
}

// Bad input gets a 4xx with a clear message and stores nothing.
func TestBadInputIsRejectedAndStoresNothing(t *testing.T) {
	c := newCluster(t, 1, nil)
	url := c.nodes[c.waitActive()].url + "/v1/jobs"
	big := `{"command":["echo","` + strings.Repeat("x", 2<<20) + `"]}`
	for _, tc := range []struct {
		name, contentType, body string
		status                  int
		code, msg               string
	}{
		{"malformed", "application/json", `{"command": [`, 400, tandem.EINVALID, "malformed JSON"},
		{"not an object", "application/json", `[1,2]`, 400, tandem.EINVALID, "malformed JSON"},
		{"unknown field", "application/json", `{"command":["true"],"bogus":1}`, 400, tandem.EINVALID, `unknown field "bogus"`},
		{"wrong type", "application/json", `{"command":"true"}`, 400, tandem.EINVALID, `field "command"`},
		{"trailing data", "application/json", `{"command":["true"]} {}`, 400, tandem.EINVALID, "after the JSON"},
		{"empty body", "application/json", ``, 400, tandem.EINVALID, "empty"},
		{"empty command", "application/json", `{"command":[]}`, 400, tandem.EINVALID, "command is empty"},
		{"missing command", "application/json", `{"name":"x"}`, 400, tandem.EINVALID, "command is empty"},
		{"blank program", "application/json", `{"command":[" "]}`, 400, tandem.EINVALID, "command[0]"},
		{"bad env", "application/json", `{"command":["true"],"env":{"A=B":"c"}}`, 400, tandem.EINVALID, "env name"},
		{"oversized", "application/json", big, 413, tandem.ETOOLARGE, "larger than"},
		{"wrong media type", "text/plain", `{"command":["true"]}`, 415, tandem.EMEDIATYPE, "application/json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, "POST", url, tc.contentType, tc.body)
			if r.status != tc.status || errorCode(r.body) != tc.code || !strings.Contains(errorMessage(r.body), tc.msg) {
				t.Fatalf("got %d %s, want %d %s containing %q", r.status, r.body, tc.status, tc.code, tc.msg)
			}
		})
	}
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{"DELETE", "/v1/jobs", 405},
		{"GET", "/v1/jobs?limit=0", 400},
		{"GET", "/v1/jobs?limit=abc", 400},
		{"GET", "/v1/jobs?state=bogus", 400},
		{"GET", "/v1/jobs/nope", 404},
		{"GET", "/v1/nothing-here", 404},
		{"POST", "/isActive", 405},
	} {
		r := do(t, tc.method, strings.TrimSuffix(url, "/v1/jobs")+tc.path, "", "")
		if r.status != tc.status || errorCode(r.body) == "" {
			t.Fatalf("%s %s: got %d %s, want %d with a JSON error", tc.method, tc.path, r.status, r.body, tc.status)
		}
	}
	if n := c.countJobs(); n != 0 {
		t.Fatalf("bad requests stored %d jobs", n)
	}
}

// The failover client submits through a list whose first entries are dead
// or standby, and a retried submission with the same key returns the same
// job, also across a failover (I3).
func TestClientFailoverAndIdempotency(t *testing.T) {
	c := newCluster(t, 3, nil)
	a := c.waitActive()
	ctx := context.Background()
	var standbys []string
	for i, n := range c.nodes {
		if i != a {
			standbys = append(standbys, n.url)
		}
	}
	dead := "http://" + deadAddr(t)
	cl := c.client(append(append([]string{dead}, standbys...), c.nodes[a].url)...)
	j1, err := cl.SubmitJob(ctx, spec("via-dead-and-standby"), client.SubmitOptions{IdempotencyKey: "key-1"})
	if err != nil {
		t.Fatalf("submit through dead and standby servers: %v", err)
	}
	if cl.Current() != c.nodes[a].url {
		t.Fatalf("client sticks to %s, want the active %s", cl.Current(), c.nodes[a].url)
	}
	again, err := cl.SubmitJob(ctx, spec("via-dead-and-standby"), client.SubmitOptions{IdempotencyKey: "key-1"})
	if err != nil || again.ID != j1.ID {
		t.Fatalf("retry with the same key: got %v %v, want %s", again, err, j1.ID)
	}
	_, err = cl.SubmitJob(ctx, spec("something else"), client.SubmitOptions{IdempotencyKey: "key-1"})
	if tandem.ErrorCode(err) != tandem.EIDEMPOTENCY {
		t.Fatalf("same key, other spec: got %v, want %s", err, tandem.EIDEMPOTENCY)
	}

	c.crash(a)
	after, err := cl.SubmitJob(ctx, spec("via-dead-and-standby"), client.SubmitOptions{IdempotencyKey: "key-1"})
	if err != nil || after.ID != j1.ID {
		t.Fatalf("retry across failover: got %v %v, want %s", after, err, j1.ID)
	}
	if n := c.countJobs(); n != 1 {
		t.Fatalf("jobs stored: got %d, want 1", n)
	}
	if errors.Is(err, tandem.ErrFenced) {
		t.Fatal("unexpected fenced error")
	}
}

func deadAddr(t *testing.T) string {
	t.Helper()
	// A port nothing listens on: connections are refused at once.
	return "127.0.0.1:1"
}

// waitHistory waits until node's view holds at least n failover events; the
// new active records each one just after it starts serving.
func waitHistory(t *testing.T, n *node, want int) []tandem.FailoverEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h := n.srv.History()
		if len(h) >= want {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("history: got %d events, want at least %d: %+v", len(h), want, h)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A standby does not send clients to an active that does not answer its
// probes (a hung or cut-off active): it says no active is available, so the
// client tries the other servers instead of hanging there too.
func TestStandbyDoesNotRedirectToAnActiveThatDoesNotAnswer(t *testing.T) {
	c := newCluster(t, 2, func(cfg *server.Config) { cfg.DeposeDead = false })
	a := c.waitActive()
	standby := c.nodes[1-a]
	time.Sleep(20 * probeInterval)
	if r := do(t, "GET", standby.url+"/v1/jobs", "", ""); r.status != http.StatusTemporaryRedirect {
		t.Fatalf("standby with an answering active: got %d, want 307", r.status)
	}
	c.nodes[a].http.Close() // the active stops answering HTTP; it keeps its lease
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := do(t, "GET", standby.url+"/v1/jobs", "", "")
		if r.status == http.StatusServiceUnavailable && errorCode(r.body) == tandem.ENOACTIVE && r.header.Get("Retry-After") != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby with a silent active: got %d %s, want 503 %s", r.status, r.body, tandem.ENOACTIVE)
		}
		time.Sleep(probeInterval)
	}
}
