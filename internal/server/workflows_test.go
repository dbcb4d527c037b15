package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/server"
	"github.com/tandemhq/tandem/internal/workflow"
)

// step is a workflow step running sh -c script.
func step(name, script string, needs ...string) tandem.WorkflowStep {
	job, _ := json.Marshal(tandem.JobSpec{Command: []string{"sh", "-c", script}})
	return tandem.WorkflowStep{Name: name, Job: job, Needs: needs}
}

// diamond is a, then b and c, then d, each running script.
func diamond(name, script string) tandem.WorkflowSpec {
	return tandem.WorkflowSpec{Name: name, Steps: []tandem.WorkflowStep{
		step("a", script), step("b", script, "a"), step("c", script, "a"), step("d", script, "b", "c")}}
}

// storedWorkflow is what etcd itself holds about one run: its record and
// the jobs of its steps.
type storedWorkflow struct {
	wf   tandem.Workflow
	jobs map[string][]*tandem.Job // by step, oldest first
}

func (c *cluster) readWorkflow(id string) storedWorkflow {
	c.t.Helper()
	cli := c.etcd.Client(c.t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l := keys.New("test")
	var st storedWorkflow
	resp, err := cli.Get(ctx, l.Workflow(id))
	if err != nil || len(resp.Kvs) == 0 {
		c.t.Fatalf("read workflow %s: %v", id, err)
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &st.wf); err != nil {
		c.t.Fatal(err)
	}
	st.jobs = map[string][]*tandem.Job{}
	resp, err = cli.Get(ctx, l.JobsPrefix(), clientv3.WithPrefix())
	if err != nil {
		c.t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		var j tandem.Job
		if err := json.Unmarshal(kv.Value, &j); err != nil {
			c.t.Fatal(err)
		}
		if j.WorkflowID == id {
			st.jobs[j.Step] = append(st.jobs[j.Step], &j)
		}
	}
	return st
}

// createWorkflow creates a run on whichever server is active, as a client
// would, trying again if a failover (a loaded machine) gets in the way.
func (c *cluster) createWorkflow(spec tandem.WorkflowSpec, idemKey string) (*tandem.Workflow, bool) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		srv := c.nodes[c.waitActive()].srv
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		wf, created, err := srv.CreateWorkflowIdem(ctx, spec, idemKey)
		cancel()
		if err == nil {
			return wf, created
		}
		if time.Now().After(deadline) || !(errors.Is(err, tandem.ErrFenced) || errors.Is(err, tandem.ErrNotActive)) {
			c.t.Fatalf("create workflow: %v", err)
		}
	}
}

// waitWorkflow waits until run id, in srv's view, is in a final state.
func waitWorkflow(t *testing.T, srv *server.Server, id string) *tandem.Workflow {
	t.Helper()
	var wf *tandem.Workflow
	waitFor(t, "workflow "+id+" to end", 30*time.Second, func() bool {
		var err error
		wf, err = srv.GetWorkflow(id)
		return err == nil && wf.State.Terminal()
	})
	return wf
}

// checkDiamond checks I7 on a finished diamond run as etcd holds it: one
// job per step, each step's job started after the jobs of the steps it
// needs ended, and every step succeeded.
func (c *cluster) checkDiamond(id string) storedWorkflow {
	c.t.Helper()
	st := c.readWorkflow(id)
	if st.wf.State != tandem.WorkflowSucceeded {
		c.t.Fatalf("run %s is %s (%s), want succeeded; steps %+v", id, st.wf.State, st.wf.Reason, st.wf.Progress)
	}
	for _, name := range []string{"a", "b", "c", "d"} {
		jobs := st.jobs[name]
		if len(jobs) != 1 {
			c.t.Fatalf("step %s has %d jobs, want exactly 1", name, len(jobs))
		}
		r := st.wf.Progress[name]
		if r.State != tandem.StepSucceeded || r.JobID != jobs[0].ID || jobs[0].State != tandem.JobSucceeded {
			c.t.Fatalf("step %s: %+v, job %s %s", name, r, jobs[0].ID, jobs[0].State)
		}
	}
	started := func(s string) time.Time { return *st.jobs[s][0].Attempts[0].StartedAt }
	ended := func(s string) time.Time { return *st.jobs[s][0].LastAttempt().EndedAt }
	for _, e := range [][2]string{{"a", "b"}, {"a", "c"}, {"b", "d"}, {"c", "d"}} {
		if started(e[1]).Before(ended(e[0])) {
			c.t.Errorf("step %s started at %s, before %s, which it needs, ended at %s", e[1], started(e[1]), e[0], ended(e[0]))
		}
	}
	return st
}

func TestWorkflowSpecMatchesInternalSpec(t *testing.T) {
	// The root types repeat internal/workflow's; the conversion must carry
	// every field.
	for _, pair := range [][2]reflect.Type{
		{reflect.TypeFor[tandem.WorkflowSpec](), reflect.TypeFor[workflow.Spec]()},
		{reflect.TypeFor[tandem.WorkflowStep](), reflect.TypeFor[workflow.Step]()},
	} {
		a, b := pair[0], pair[1]
		if a.NumField() != b.NumField() {
			t.Fatalf("%s has %d fields, %s %d", a, a.NumField(), b, b.NumField())
		}
		for i := range a.NumField() {
			if a.Field(i).Name != b.Field(i).Name || a.Field(i).Tag.Get("json") != b.Field(i).Tag.Get("json") {
				t.Errorf("field %d: %s %q vs %s %q", i, a.Field(i).Name, a.Field(i).Tag, b.Field(i).Name, b.Field(i).Tag)
			}
		}
	}
	in := tandem.WorkflowSpec{Name: "n", Params: map[string]string{"p": "1"}, Steps: []tandem.WorkflowStep{{Name: "a",
		Job: json.RawMessage(`{"command":["true"]}`), Needs: []string{}, Retries: 2, Timeout: tandem.Duration(time.Second),
		Trigger: "all_done", When: "params.p == '1'"}}}
	out := server.WorkflowSpecOf(in)
	a, _ := json.Marshal(in)
	b, _ := json.Marshal(out)
	if string(a) != string(b) {
		t.Fatalf("converted spec differs:\n%s\n%s", a, b)
	}
}

// A diamond runs each step once, in order, passing outputs through params
// and conditions; a skipped branch joins with none_failed.
func TestWorkflowRunsStepsWithOutputs(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2, nil)
	a := c.nodes[c.waitActive()].srv
	c.addAgent("w1", smallAgent, nil)
	spec := tandem.WorkflowSpec{Name: "etl", Params: map[string]string{"day": "2026-11-30"}, Steps: []tandem.WorkflowStep{
		step("extract", `echo "rows=42" > "$TANDEM_OUTPUTS"; echo "day=${params.day}" >> "$TANDEM_OUTPUTS"`),
		step("load", `echo "got=${steps.extract.outputs.rows}-$TANDEM_STEP-$TANDEM_STEP_ATTEMPT" > "$TANDEM_OUTPUTS"`, "extract"),
		step("alert", `exit 1`, "extract"),
		step("report", `echo "${steps.load.outputs.got}"`, "load", "alert"),
	}}
	spec.Steps[2].When = "steps.extract.outputs.rows == '0'"
	spec.Steps[3].Trigger = "none_failed"
	wf, created := c.createWorkflow(spec, "key-1")
	if !created || !strings.HasPrefix(wf.ID, "w") || wf.State != tandem.WorkflowRunning {
		t.Fatalf("create: %+v %v", wf, created)
	}
	again, created := c.createWorkflow(spec, "key-1")
	if created || again.ID != wf.ID {
		t.Fatalf("replayed create: %+v %v, want run %s again", again, created, wf.ID)
	}
	done := waitWorkflow(t, a, wf.ID)
	st := c.readWorkflow(wf.ID)
	if done.State != tandem.WorkflowSucceeded || st.wf.State != tandem.WorkflowSucceeded {
		t.Fatalf("run ended %s (%s): %+v", done.State, done.Reason, done.Progress)
	}
	want := map[string]string{"extract": tandem.StepSucceeded, "load": tandem.StepSucceeded, "alert": tandem.StepSkipped, "report": tandem.StepSucceeded}
	for s, state := range want {
		if got := st.wf.StepState(s); got != state {
			t.Errorf("step %s is %s, want %s", s, got, state)
		}
	}
	if got := st.wf.Progress["extract"].Outputs; !reflect.DeepEqual(got, map[string]string{"rows": "42", "day": "2026-11-30"}) {
		t.Errorf("extract outputs %v", got)
	}
	if got := st.wf.Progress["load"].Outputs["got"]; got != "42-load-1" {
		t.Errorf("load wrote got=%q, want 42-load-1", got)
	}
	if len(st.jobs["alert"]) != 0 {
		t.Errorf("the skipped step has jobs: %v", st.jobs["alert"])
	}
	rep := st.jobs["report"]
	if len(rep) != 1 || !reflect.DeepEqual(rep[0].Command, []string{"sh", "-c", `echo "42-load-1"`}) || rep[0].Name != "etl.report" ||
		rep[0].Env[tandem.EnvWorkflowID] != wf.ID || rep[0].MaxAttempts != 1 {
		t.Errorf("report's job: %+v", rep)
	}
	ended := 0.0
	for _, n := range c.nodes {
		ended += metricValue(t, n.srv, "tandem_workflow_runs_ended_total")
	}
	if n := ended; n != 1 {
		t.Errorf("runs ended metric %v, want 1", n)
	}
	list, next := a.ListWorkflows(tandem.WorkflowFilter{State: tandem.WorkflowSucceeded})
	if len(list) != 1 || list[0].ID != wf.ID || next != "" {
		t.Errorf("list succeeded: %d runs, next %q", len(list), next)
	}
}

// wfTrap blocks a workflow controller once at a point, for commits that
// touch a step, until the test releases it.
type wfTrap struct {
	mu      sync.Mutex
	point   server.WorkflowPoint
	step    string
	hit     chan wfHit
	release chan struct{}
}

type wfHit struct {
	server string
	ev     server.WorkflowEvent
}

func (tr *wfTrap) arm(point server.WorkflowPoint, step string) chan struct{} {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.point, tr.step, tr.release = point, step, make(chan struct{})
	return tr.release
}

func (tr *wfTrap) hook(serverID string) func(server.WorkflowEvent) {
	return func(ev server.WorkflowEvent) {
		tr.mu.Lock()
		if tr.release == nil || ev.Point != tr.point || !slices.Contains(ev.Steps, tr.step) {
			tr.mu.Unlock()
			return
		}
		release := tr.release
		tr.release = nil
		tr.mu.Unlock()
		tr.hit <- wfHit{server: serverID, ev: ev}
		<-release
	}
}

// I7: the owner is deposed (a hand-off) just before a commit is sent, just
// after it committed, while a step runs, and after a step's job ended but
// before its end is recorded: every step of the diamond still runs exactly
// once, in order. (That a commit sent under a deposed term is fenced is
// TestWorkflowDeposedCommitIsFenced.)
func TestWorkflowExactlyOnceAcrossFailovers(t *testing.T) {
	t.Parallel()
	trap := &wfTrap{hit: make(chan wfHit, 1)}
	c := newCluster(t, 2, func(cfg *server.Config) { cfg.WorkflowHook = trap.hook(cfg.ID) })
	first := c.nodes[c.waitActive()].srv
	c.addAgent("w1", smallAgent, nil)
	ctx := testCtx(t)
	// b holds until the test lets it end, so the run can be caught mid-run.
	gate := t.TempDir() + "/go"
	spec := diamond("dia", "true")
	spec.Steps[1] = step("b", fmt.Sprintf("while ! test -e %s; do sleep 0.02; done", gate), "a")
	handOff := func(from string) string {
		to := "rm1"
		if from == "rm1" {
			to = "rm2"
		}
		// On a loaded machine the target may briefly not be registered:
		// ask again until it is.
		deadline := time.Now().Add(15 * time.Second)
		for {
			_, err := c.byID(from).srv.HandOff(ctx, tandem.HandoffRequest{From: from, To: to})
			if err == nil {
				return to
			}
			if time.Now().After(deadline) {
				t.Fatalf("hand-off from %s: %v", from, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	trapped := func(point server.WorkflowPoint, s string, after func()) {
		release := trap.arm(point, s)
		if after != nil {
			after()
		}
		var hit wfHit
		select {
		case hit = <-trap.hit:
		case <-time.After(15 * time.Second):
			t.Fatalf("the controller never reached %s for step %s", point, s)
		}
		to := handOff(hit.server)
		close(release)
		t.Logf("%s of %s on %s (epoch %d): handed off to %s", point, s, hit.server, hit.ev.Epoch, to)
	}
	var wf *tandem.Workflow
	// Before the start of a is recorded.
	trapped(server.WorkflowCommit, "a", func() {
		var err error
		if wf, _, err = first.CreateWorkflowIdem(ctx, spec, ""); err != nil {
			t.Fatal(err)
		}
	})
	// Right after the start of b and c is recorded.
	trapped(server.WorkflowCommitted, "b", nil)
	// Mid-run: b runs (its job has an attempt running) across a hand-off.
	waitFor(t, "step b's job to run", 15*time.Second, func() bool {
		for _, n := range c.nodes {
			if w, err := n.srv.GetWorkflow(wf.ID); err == nil && w.Progress["b"].JobID != "" {
				j, err := n.srv.Store().Job(w.Progress["b"].JobID)
				return err == nil && j.State == tandem.JobRunning
			}
		}
		return false
	})
	for _, n := range c.nodes {
		if n.srv.State() == tandem.StateActive {
			handOff(n.srv.ID())
			break
		}
	}
	// After b ends but before its end (and d's start) is recorded.
	trapped(server.WorkflowCommit, "b", func() {
		if err := writeFile(gate); err != nil {
			t.Fatal(err)
		}
	})
	var done *tandem.Workflow
	for _, n := range c.nodes {
		done = waitWorkflow(t, n.srv, wf.ID)
	}
	if done.State != tandem.WorkflowSucceeded {
		t.Fatalf("run ended %s: %s", done.State, done.Reason)
	}
	c.checkDiamond(wf.ID)
	c.audit(1)
}

// I1, I7: an owner deposed while it is about to commit a run's decision,
// without noticing (it still owns another shard, so its controller goes
// on), sends the commit: etcd rejects it on the fence, and the shard's new
// term decides again, once.
func TestWorkflowDeposedCommitIsFenced(t *testing.T) {
	t.Parallel()
	trap := &wfTrap{hit: make(chan wfHit, 1)}
	c := newCluster(t, 1, func(cfg *server.Config) {
		sharded(2)(cfg)
		cfg.WorkflowHook = trap.hook(cfg.ID)
	})
	c.waitSettled(2)
	srv := c.nodes[0].srv
	c.addAgent("w1", smallAgent, nil)
	ctx := testCtx(t)
	release := trap.arm(server.WorkflowCommit, "b")
	wf, _, err := srv.CreateWorkflowIdem(ctx, diamond("fenced", "true"), "")
	if err != nil {
		t.Fatal(err)
	}
	var hit wfHit
	select {
	case hit = <-trap.hit:
	case <-time.After(15 * time.Second):
		t.Fatal("the controller never reached the commit")
	}
	fencedBefore := metricValue(t, srv, "tandem_fenced_writes_total")
	ownerKey := keys.New("test").Shard(wf.Shard, 2).Owner
	if _, err := c.etcd.Client(t).Delete(ctx, ownerKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a new term of the run's shard", 10*time.Second, func() bool {
		return srv.ShardInfos()[wf.Shard].Epoch > hit.ev.Epoch
	})
	close(release)
	waitFor(t, "the deposed term's commit to be fenced", 10*time.Second, func() bool {
		return metricValue(t, srv, "tandem_fenced_writes_total") > fencedBefore
	})
	waitWorkflow(t, srv, wf.ID)
	st := c.checkDiamond(wf.ID)
	if st.wf.UpdatedEpoch == hit.ev.Epoch {
		t.Errorf("the run's last write is from the deposed epoch %d", hit.ev.Epoch)
	}
	for _, s := range []string{"b", "c", "d"} {
		if e := st.jobs[s][0].Epoch; e == hit.ev.Epoch && s == "d" {
			t.Errorf("step %s's job was created under the deposed epoch %d", s, e)
		}
	}
	c.audit(2)
}

// Cancel kills the running step and ends the run cancelled; retry runs
// what did not succeed again and keeps what did; a timeout kills the
// attempt and retries it; oversized outputs fail a step.
func TestWorkflowCancelRetryTimeoutOutputs(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, nil)
	a := c.nodes[c.waitActive()].srv
	c.addAgent("w1", tandem.Resources{CPU: 8, MemoryMB: 4096}, nil)
	ctx := testCtx(t)

	// Cancel.
	long, _, err := a.CreateWorkflowIdem(ctx, tandem.WorkflowSpec{Name: "long", Steps: []tandem.WorkflowStep{
		step("sleep", "sleep 60"), step("after", "true", "sleep")}}, "")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the long step to run", 15*time.Second, func() bool {
		w, _ := a.GetWorkflow(long.ID)
		j, err := a.Store().Job(w.Progress["sleep"].JobID)
		return err == nil && j.State == tandem.JobRunning
	})
	if w, err := a.CancelWorkflow(ctx, long.ID); err != nil || !w.Cancelled {
		t.Fatalf("cancel: %+v %v", w, err)
	}
	got := waitWorkflow(t, a, long.ID)
	if got.State != tandem.WorkflowCancelled || got.StepState("sleep") != tandem.StepCancelled || got.StepState("after") != tandem.StepCancelled {
		t.Fatalf("cancelled run: %s %+v", got.State, got.Progress)
	}
	waitFor(t, "the cancelled step's job to be killed", 15*time.Second, func() bool {
		j, err := a.Store().Job(got.Progress["sleep"].JobID)
		return err == nil && j.State == tandem.JobKilled
	})
	if _, err := a.RetryWorkflow(ctx, c.nodes[0].srv.ID()); tandem.ErrorCode(err) != tandem.ENOTFOUND {
		t.Errorf("retry of an unknown run: %v, want ENOTFOUND", err)
	}

	// Retry: first fails once (a marker file), second succeeded before it
	// and must not run again.
	marker := t.TempDir() + "/tried"
	flaky, _, err := a.CreateWorkflowIdem(ctx, tandem.WorkflowSpec{Name: "flaky", Steps: []tandem.WorkflowStep{
		step("ok", "true"), step("flaky", fmt.Sprintf("test -e %[1]s || { touch %[1]s; exit 3; }", marker), "ok"), step("last", "true", "flaky")}}, "")
	if err != nil {
		t.Fatal(err)
	}
	got = waitWorkflow(t, a, flaky.ID)
	if got.State != tandem.WorkflowFailed || got.StepState("flaky") != tandem.StepFailed || got.StepState("last") != tandem.StepUpstreamFailed {
		t.Fatalf("flaky run: %s %+v", got.State, got.Progress)
	}
	if _, err := a.RetryWorkflow(ctx, long.ID+"x"); tandem.ErrorCode(err) != tandem.ENOTFOUND {
		t.Errorf("retry of an unknown run: %v", err)
	}
	if w, err := a.RetryWorkflow(ctx, flaky.ID); err != nil || w.State != tandem.WorkflowRunning || w.Retried != 1 {
		t.Fatalf("retry: %+v %v", w, err)
	}
	got = waitWorkflow(t, a, flaky.ID)
	st := c.readWorkflow(flaky.ID)
	if got.State != tandem.WorkflowSucceeded || len(st.jobs["ok"]) != 1 || len(st.jobs["flaky"]) != 2 || len(st.jobs["last"]) != 1 {
		t.Fatalf("retried run: %s, jobs ok %d flaky %d last %d", got.State, len(st.jobs["ok"]), len(st.jobs["flaky"]), len(st.jobs["last"]))
	}
	if _, err := a.RetryWorkflow(ctx, flaky.ID); tandem.ErrorCode(err) != tandem.ECONFLICT {
		t.Errorf("retry of a succeeded run: %v, want ECONFLICT", err)
	}

	// Timeout, with one retry: two attempts, both killed.
	slow := step("slow", "sleep 60")
	slow.Timeout, slow.Retries = tandem.Duration(300*time.Millisecond), 1
	// Oversized outputs fail the step that wrote them.
	big := step("big", fmt.Sprintf(`head -c %d /dev/zero | tr '\0' 'x' | sed 's/^/k=/' > "$TANDEM_OUTPUTS"`, tandem.MaxOutputBytes+10))
	tw, _, err := a.CreateWorkflowIdem(ctx, tandem.WorkflowSpec{Name: "timeout", Steps: []tandem.WorkflowStep{slow, big}}, "")
	if err != nil {
		t.Fatal(err)
	}
	got = waitWorkflow(t, a, tw.ID)
	st = c.readWorkflow(tw.ID)
	if got.State != tandem.WorkflowFailed || got.StepState("slow") != tandem.StepFailed || got.Progress["slow"].Attempt != 2 ||
		!strings.Contains(got.Progress["slow"].Reason, "timed out") || len(st.jobs["slow"]) != 2 {
		t.Fatalf("timed-out run: %s %+v (%d jobs)", got.State, got.Progress["slow"], len(st.jobs["slow"]))
	}
	for _, j := range st.jobs["slow"] {
		waitFor(t, "a timed-out attempt's job to be killed", 15*time.Second, func() bool {
			j, err := a.Store().Job(j.ID)
			return err == nil && j.State == tandem.JobKilled
		})
	}
	if r := got.Progress["big"]; r.State != tandem.StepFailed || len(r.Outputs) != 0 || !strings.Contains(r.Reason, "more than the limit of 4096") {
		t.Errorf("step with oversized outputs: %+v", r)
	}
}

// Bad input is refused with a clear message, and nothing is stored.
func TestWorkflowBadInput(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, nil)
	c.waitActive()
	job := json.RawMessage(`{"command":["true"]}`)
	huge := strings.Repeat("x", 4000)
	var many []tandem.WorkflowStep
	for i := range 80 {
		many = append(many, tandem.WorkflowStep{Name: fmt.Sprintf("s%d", i), Job: json.RawMessage(fmt.Sprintf(`{"command":["echo","%s"]}`, huge))})
	}
	for _, tc := range []struct {
		name string
		spec tandem.WorkflowSpec
		code int
		want string
	}{
		{"cycle", tandem.WorkflowSpec{Name: "x", Steps: []tandem.WorkflowStep{{Name: "a", Job: job, Needs: []string{"b"}}, {Name: "b", Job: job, Needs: []string{"a"}}}},
			http.StatusBadRequest, "steps form a cycle"},
		{"missing", tandem.WorkflowSpec{Name: "x", Steps: []tandem.WorkflowStep{{Name: "a", Job: job, Needs: []string{"zz"}}}},
			http.StatusBadRequest, `step "a" needs "zz", which is not a step of this workflow`},
		{"no steps", tandem.WorkflowSpec{Name: "x"}, http.StatusBadRequest, "has no steps"},
		{"bad condition", tandem.WorkflowSpec{Name: "x", Steps: []tandem.WorkflowStep{{Name: "a", Job: job, When: "params.nope == 'x'"}}},
			http.StatusBadRequest, "nope"},
		{"too large", tandem.WorkflowSpec{Name: "x", Steps: many}, http.StatusRequestEntityTooLarge, "more than the limit of 262144"},
	} {
		body, _ := json.Marshal(tc.spec)
		req, _ := http.NewRequest(http.MethodPost, c.nodes[0].url+"/v1/workflows", strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(e.Error.Message, tc.want) {
			t.Errorf("%s: %d %q, want %d with %q", tc.name, resp.StatusCode, e.Error.Message, tc.code, tc.want)
		}
	}
	if list, _ := c.nodes[0].srv.ListWorkflows(tandem.WorkflowFilter{}); len(list) != 0 {
		t.Errorf("%d runs stored after bad input", len(list))
	}
	resp, err := c.etcd.Client(t).Get(context.Background(), keys.New("test").WorkflowsPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("etcd holds %d workflow keys (%v)", resp.Count, err)
	}
}

// A schedule of a workflow starts one run per nominal time, exactly once.
func TestScheduleStartsWorkflows(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, scheduleGrace(5*time.Second, nil))
	a := c.nodes[c.waitActive()].srv
	c.addAgent("w1", smallAgent, nil)
	ctx := testCtx(t)
	wspec := diamond("nightly", `test -n "$TANDEM_NOMINAL_TIME"`)
	sch, err := a.CreateSchedule(ctx, tandem.ScheduleSpec{Name: "nightly", Every: tandem.Duration(time.Second), Overlap: "allow", Workflow: &wspec})
	if err != nil {
		t.Fatal(err)
	}
	waitCursor(t, a, sch.ID, sch.CreatedAt.Add(2*time.Second))
	runs, err := a.ScheduleRuns(sch.ID, tandem.ScheduleRunFilter{Outcome: tandem.OutcomeFired})
	if err != nil || len(runs) < 2 {
		t.Fatalf("%d fired runs (%v)", len(runs), err)
	}
	seen := map[string]bool{}
	for _, r := range runs {
		if r.WorkflowID == "" || r.JobID != "" || seen[r.WorkflowID] {
			t.Fatalf("run %+v", r)
		}
		seen[r.WorkflowID] = true
		done := waitWorkflow(t, a, r.WorkflowID)
		if done.ScheduleID != sch.ID || !done.NominalTime.Equal(r.NominalTime) || done.Name != "nightly@"+r.NominalTime.Format(time.RFC3339) {
			t.Errorf("run %s: %+v", r.WorkflowID, done)
		}
		c.checkDiamond(r.WorkflowID)
	}
	list, _ := a.ListWorkflows(tandem.WorkflowFilter{Schedule: sch.ID})
	if len(list) < len(runs) {
		t.Errorf("listing by schedule: %d runs, want at least %d", len(list), len(runs))
	}
	// A schedule gives a job or a workflow, not both.
	both := tandem.ScheduleSpec{Every: tandem.Duration(time.Second), Workflow: &wspec, Job: tandem.JobSpec{Command: []string{"true"}}}
	if _, err := a.CreateSchedule(ctx, both); tandem.ErrorCode(err) != tandem.EINVALID || !strings.Contains(err.Error(), "not both") {
		t.Errorf("job and workflow: %v", err)
	}
	bad := tandem.WorkflowSpec{Name: "x", Steps: []tandem.WorkflowStep{{Name: "a", Job: json.RawMessage(`{"command":["true"]}`), Needs: []string{"a"}}}}
	if _, err := a.CreateSchedule(ctx, tandem.ScheduleSpec{Every: tandem.Duration(time.Second), Workflow: &bad}); tandem.ErrorCode(err) != tandem.EINVALID {
		t.Errorf("schedule of an invalid workflow: %v", err)
	}
}

func writeFile(path string) error { return os.WriteFile(path, nil, 0o644) }
