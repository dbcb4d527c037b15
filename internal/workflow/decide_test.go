package workflow

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// TestDiamondTriggerRules runs the diamond (A; B and C need A; D needs B
// and C) to the end for every trigger rule of D and every final state of B
// and C, and checks every step's final state and the run's.
func TestDiamondTriggerRules(t *testing.T) {
	// How B or C ends: succeeds, fails, or is skipped by a false condition.
	type end string
	const (
		S end = "succeeded"
		F end = "failed"
		K end = "skipped"
	)
	rules := []TriggerRule{AllSuccess, AllDone, OneFailed, OneSuccess, NoneFailed}
	const (
		run = "succeeded" // D runs (and succeeds)
		sk  = "skipped"
		uf  = "upstream_failed"
	)
	tests := []struct {
		b, c end
		d    [5]string // D's final state, per rule in the order of rules
	}{
		{S, S, [5]string{run, run, sk, run, run}},
		{S, F, [5]string{uf, run, run, run, uf}},
		{F, S, [5]string{uf, run, run, run, uf}},
		{S, K, [5]string{sk, run, sk, run, run}},
		{K, S, [5]string{sk, run, sk, run, run}},
		{F, F, [5]string{uf, run, run, uf, uf}},
		{F, K, [5]string{uf, run, run, uf, uf}},
		{K, F, [5]string{uf, run, run, uf, uf}},
		{K, K, [5]string{sk, run, sk, sk, run}},
	}
	for _, tt := range tests {
		for i, rule := range rules {
			t.Run(fmt.Sprintf("b=%s,c=%s,d=%s", tt.b, tt.c, rule), func(t *testing.T) {
				spec := diamond()
				spec.step("d").Trigger = rule
				script := map[string][]attempt{}
				for name, e := range map[string]end{"b": tt.b, "c": tt.c} {
					switch e {
					case F:
						script[name] = []attempt{fail}
					case K:
						spec.step(name).When = "false"
					}
				}
				sim := newSimulation(t, spec, script)
				plan := sim.runToEnd()
				want := fmt.Sprintf("a=succeeded b=%s c=%s d=%s", tt.b, tt.c, tt.d[i])
				if got := sim.states(); got != want {
					t.Errorf("got %s, want %s", got, want)
				}
				wantRun := RunSucceeded
				if tt.b == F || tt.c == F {
					wantRun = RunFailed
				}
				if plan.State != wantRun {
					t.Errorf("run state: got %s, want %s (%s)", plan.State, wantRun, plan.Reason)
				}
				if n := sim.starts["d"]; (tt.d[i] == run) != (n == 1) || n > 1 {
					t.Errorf("d started %d times, want %d", n, map[bool]int{true: 1}[tt.d[i] == run])
				}
			})
		}
	}
}

// TestDiamondRootFails: when A fails, B and C (all_success) end
// upstream_failed, and D ends by its own rule.
func TestDiamondRootFails(t *testing.T) {
	for rule, want := range map[TriggerRule]StepState{
		AllSuccess: StepUpstreamFailed,
		AllDone:    StepSucceeded,
		OneFailed:  StepSucceeded,
		OneSuccess: StepUpstreamFailed,
		NoneFailed: StepUpstreamFailed,
	} {
		t.Run(string(rule), func(t *testing.T) {
			spec := diamond()
			spec.step("d").Trigger = rule
			sim := newSimulation(t, spec, map[string][]attempt{"a": {fail}})
			plan := sim.runToEnd()
			wantStates := fmt.Sprintf("a=failed b=upstream_failed c=upstream_failed d=%s", want)
			if got := sim.states(); got != wantStates {
				t.Errorf("got %s, want %s", got, wantStates)
			}
			if plan.State != RunFailed || plan.Reason != "step a failed" {
				t.Errorf("got run %s (%q), want failed (\"step a failed\")", plan.State, plan.Reason)
			}
		})
	}
}

// TestDiamondOrder checks the decisions of a diamond that succeeds, plan by
// plan: D starts only in the plan after both B and C have succeeded.
func TestDiamondOrder(t *testing.T) {
	spec := diamond()
	run := &Run{}
	step := func(plan *Plan) string {
		var s []string
		for _, d := range plan.Decisions {
			s = append(s, fmt.Sprintf("%s %s#%d", d.Action, d.Step, d.Attempt))
			if err := run.Apply(d, t0); err != nil {
				t.Fatal(err)
			}
		}
		return strings.Join(s, ", ")
	}
	want := []struct {
		finish    []string
		decisions string
		state     RunState
	}{
		{nil, "start a#1", RunRunning},
		{nil, "", RunRunning}, // a still running: nothing to do
		{[]string{"a"}, "start b#1, start c#1", RunRunning},
		{[]string{"b"}, "", RunRunning}, // c still running: d waits
		{[]string{"c"}, "start d#1", RunRunning},
		{[]string{"d"}, "", RunSucceeded},
	}
	for i, w := range want {
		for _, name := range w.finish {
			if err := run.Finish(name, 1, true, nil, ""); err != nil {
				t.Fatal(err)
			}
		}
		plan := decideChecked(t, spec, run, t0)
		if got := step(plan); got != w.decisions || plan.State != w.state {
			t.Errorf("round %d: got %q (%s), want %q (%s)", i, got, plan.State, w.decisions, w.state)
		}
	}
}

func TestRetries(t *testing.T) {
	tests := []struct {
		name     string
		retries  int
		script   []attempt
		want     string
		attempts int
		run      RunState
	}{
		{"no retries, fails", 0, []attempt{fail}, "failed", 1, RunFailed},
		{"succeeds on third", 2, []attempt{fail, fail, ok}, "succeeded", 3, RunSucceeded},
		{"fails every attempt", 2, []attempt{fail, fail, fail}, "failed", 3, RunFailed},
		{"succeeds first, retries unused", 3, []attempt{ok}, "succeeded", 1, RunSucceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := specOf(mk("a"), mk("b", "a"))
			spec.step("a").Retries = tt.retries
			sim := newSimulation(t, spec, map[string][]attempt{"a": tt.script})
			plan := sim.runToEnd()
			r := sim.run.Steps["a"]
			if string(r.State) != tt.want || r.Attempt != tt.attempts || sim.starts["a"] != tt.attempts {
				t.Errorf("got %s after attempt %d (%d starts), want %s after %d", r.State, r.Attempt, sim.starts["a"], tt.want, tt.attempts)
			}
			if plan.State != tt.run {
				t.Errorf("run: got %s, want %s", plan.State, tt.run)
			}
			// b never starts while a is failed with retries left.
			wantB := StepSucceeded
			if tt.want == "failed" {
				wantB = StepUpstreamFailed
			}
			if got := sim.run.Steps["b"].State; got != wantB {
				t.Errorf("b: got %s, want %s", got, wantB)
			}
		})
	}
}

func TestRetryDecision(t *testing.T) {
	spec := specOf(mk("a"), mk("b", "a"))
	spec.step("a").Retries = 1
	run := &Run{Steps: map[string]StepRecord{"a": {State: StepFailed, Attempt: 1, Outputs: map[string]string{"x": "1"}}}}
	plan := decideChecked(t, spec, run, t0)
	want := []Decision{{Action: ActRetry, Step: "a", Attempt: 2, State: StepRunning, Reason: "attempt 1 failed; starting attempt 2 of 2"}}
	if !reflect.DeepEqual(plan.Decisions, want) || plan.State != RunRunning {
		t.Fatalf("got %+v (%s), want %+v (running)", plan.Decisions, plan.State, want)
	}
	if err := run.Apply(plan.Decisions[0], t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got := run.Steps["a"]; got.Outputs != nil || !got.StartedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("after retry: got %+v, want no outputs and started_at %v", got, t0.Add(time.Minute))
	}
	// A report for attempt 1 arriving now is stale.
	if err := run.Finish("a", 1, true, nil, ""); !errors.Is(err, ErrStaleReport) {
		t.Errorf("Finish of attempt 1: got %v, want ErrStaleReport", err)
	}
}

func TestTimeout(t *testing.T) {
	spec := specOf(mk("a"), mk("b"))
	spec.step("a").Timeout = tandem.Duration(time.Minute)
	spec.step("a").Retries = 1
	spec.step("b").Timeout = tandem.Duration(time.Hour)
	run := &Run{Steps: map[string]StepRecord{
		"a": {State: StepRunning, Attempt: 1, StartedAt: t0},
		"b": {State: StepRunning, Attempt: 1, StartedAt: t0},
	}}

	plan := decideChecked(t, spec, run, t0.Add(30*time.Second))
	if len(plan.Decisions) != 0 || !plan.NextDeadline.Equal(t0.Add(time.Minute)) {
		t.Fatalf("before the deadline: got %+v, want no decisions and next deadline %v", plan, t0.Add(time.Minute))
	}
	plan = decideChecked(t, spec, run, time.Time{})
	if len(plan.Decisions) != 0 {
		t.Fatalf("with a zero now: got %+v, want no decisions", plan.Decisions)
	}

	plan = decideChecked(t, spec, run, t0.Add(time.Minute))
	want := []Decision{
		{Action: ActTimeout, Step: "a", Attempt: 1, State: StepFailed, Reason: "attempt 1 timed out after 1m0s"},
		{Action: ActRetry, Step: "a", Attempt: 2, State: StepRunning, Reason: "attempt 1 failed; starting attempt 2 of 2"},
	}
	if !reflect.DeepEqual(plan.Decisions, want) || !plan.NextDeadline.Equal(t0.Add(time.Hour)) {
		t.Fatalf("at the deadline: got %+v, want %+v and next deadline %v", plan, want, t0.Add(time.Hour))
	}
	now := t0.Add(time.Minute)
	if err := run.Apply(plan.Decisions[0], now); err != nil {
		t.Fatal(err)
	}
	// The job's late report for the timed-out attempt changes nothing.
	if err := run.Finish("a", 1, true, nil, ""); !errors.Is(err, ErrStaleReport) {
		t.Fatalf("late report: got %v, want ErrStaleReport", err)
	}
	// With only the timeout committed, the retry is still to do.
	if again := decideChecked(t, spec, run, now); !reflect.DeepEqual(again.Decisions, want[1:]) {
		t.Fatalf("after the timeout: got %+v, want %+v", again.Decisions, want[1:])
	}
	if err := run.Apply(plan.Decisions[1], now); err != nil {
		t.Fatal(err)
	}
	// The new attempt's deadline counts from its own start.
	plan = decideChecked(t, spec, run, now.Add(59*time.Second))
	if len(plan.Decisions) != 0 || !plan.NextDeadline.Equal(now.Add(time.Minute)) {
		t.Fatalf("attempt 2: got %+v, want next deadline %v", plan, now.Add(time.Minute))
	}
	plan = decideChecked(t, spec, run, now.Add(time.Minute))
	if len(plan.Decisions) != 1 || plan.Decisions[0].Action != ActTimeout {
		t.Fatalf("attempt 2 at its deadline: got %+v, want a timeout", plan.Decisions)
	}
	if err := run.Apply(plan.Decisions[0], now); err != nil {
		t.Fatal(err)
	}
	if err := run.Finish("b", 1, true, nil, ""); err != nil {
		t.Fatal(err)
	}
	plan = decideChecked(t, spec, run, now.Add(time.Minute))
	if len(plan.Decisions) != 0 || plan.State != RunFailed || plan.Reason != "step a failed" {
		t.Fatalf("after the last timeout: got %+v, want the run failed by a", plan)
	}
}

func TestConditions(t *testing.T) {
	spec := specOf(
		mk("a"),
		mk("yes", "a"), mk("no", "a"),
		mk("after_no", "no"),           // all_success after a skipped step: skipped
		mk("join", "yes", "no"),        // none_failed: runs after a skip
		mk("param", "a"),               // condition on a param
		mk("missing", "a"),             // an output a did not write reads as ""
		mk("state", "a"),               // condition on a's state
		mk("grand", "join"),            // condition on a grandparent's output
		mk("notrun", "a"),              // a false condition, then all_done downstream
		mk("cleanup", "notrun", "yes"), // all_done runs whatever
	)
	spec.Params = map[string]string{"env": "prod"}
	spec.step("yes").When = `steps.a.outputs.k == "v"`
	spec.step("no").When = `steps.a.outputs.k != 'v'`
	spec.step("join").Trigger = NoneFailed
	spec.step("param").When = `params.env == "prod" && !(steps.a.outputs.k == "w" || false)`
	spec.step("missing").When = `steps.a.outputs.nope == ""`
	spec.step("state").When = `steps.a.state == "succeeded"`
	spec.step("grand").When = `steps.a.outputs.k == "v"`
	spec.step("notrun").When = `params.env != "prod"`
	spec.step("cleanup").Trigger = AllDone
	sim := newSimulation(t, spec, map[string][]attempt{"a": {{outputs: map[string]string{"k": "v"}}}})
	plan := sim.runToEnd()
	want := "a=succeeded yes=succeeded no=skipped after_no=skipped join=succeeded param=succeeded " +
		"missing=succeeded state=succeeded grand=succeeded notrun=skipped cleanup=succeeded"
	if got := sim.states(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if plan.State != RunSucceeded {
		t.Errorf("run: got %s, want succeeded", plan.State)
	}
	if got, want := sim.run.Steps["no"].Reason, `condition is false: steps.a.outputs.k != 'v'`; got != want {
		t.Errorf("reason: got %q, want %q", got, want)
	}
}

// TestConditionOnFailedAncestor: with all_done, a condition can look at the
// state of a step that failed.
func TestConditionOnFailedAncestor(t *testing.T) {
	spec := specOf(mk("a"), mk("alert", "a"), mk("celebrate", "a"))
	for _, s := range []string{"alert", "celebrate"} {
		spec.step(s).Trigger = AllDone
	}
	spec.step("alert").When = `steps.a.state == "failed"`
	spec.step("celebrate").When = `steps.a.state == "succeeded"`
	sim := newSimulation(t, spec, map[string][]attempt{"a": {fail}})
	sim.runToEnd()
	if got, want := sim.states(), "a=failed alert=succeeded celebrate=skipped"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// TestSkipsCascadeInOnePlan: skips propagate down a chain in one plan, as
// skipped after a skip and upstream_failed after a failure.
func TestSkipsCascadeInOnePlan(t *testing.T) {
	spec := specOf(mk("a"), mk("b", "a"), mk("c", "b"), mk("d", "c"), mk("e", "c"))
	spec.step("e").Trigger = OneFailed
	for _, tt := range []struct {
		a    StepRecord
		want string
		run  RunState
	}{
		{StepRecord{State: StepSkipped}, "skip b skipped, skip c skipped, skip d skipped, skip e skipped", RunSucceeded},
		{StepRecord{State: StepFailed, Attempt: 1}, "skip b upstream_failed, skip c upstream_failed, skip d upstream_failed, start e running", RunRunning},
	} {
		t.Run(string(tt.a.State), func(t *testing.T) {
			run := &Run{Steps: map[string]StepRecord{"a": tt.a}}
			plan := decideChecked(t, spec, run, t0)
			var got []string
			for _, d := range plan.Decisions {
				got = append(got, fmt.Sprintf("%s %s %s", d.Action, d.Step, d.State))
			}
			if strings.Join(got, ", ") != tt.want || plan.State != tt.run {
				t.Errorf("got %q (%s), want %q (%s)", strings.Join(got, ", "), plan.State, tt.want, tt.run)
			}
			if d := plan.Decisions[0]; tt.a.State == StepFailed && d.Reason != "trigger rule all_success not met: a step it needs did not succeed" {
				t.Errorf("reason: got %q", d.Reason)
			}
		})
	}
}

// TestPrefixCommit: committing any prefix of a plan and deciding again
// yields the rest of the plan.
func TestPrefixCommit(t *testing.T) {
	spec := specOf(mk("a"), mk("b", "a"), mk("c", "b"), mk("x"), mk("y"), mk("z", "y"))
	spec.step("y").Retries = 1
	run := &Run{Steps: map[string]StepRecord{
		"a": {State: StepSkipped},
		"y": {State: StepFailed, Attempt: 1},
	}}
	full := decideChecked(t, spec, run, t0)
	if len(full.Decisions) != 4 { // skip b, skip c, start x, retry y
		t.Fatalf("got %+v, want 4 decisions", full.Decisions)
	}
	for k := range full.Decisions {
		r := cloneRun(run)
		for _, d := range full.Decisions[:k] {
			if err := r.Apply(d, t0); err != nil {
				t.Fatal(err)
			}
		}
		rest := decideChecked(t, spec, r, t0)
		if !reflect.DeepEqual(rest.Decisions, full.Decisions[k:]) {
			t.Errorf("after committing %d: got %+v, want %+v", k, rest.Decisions, full.Decisions[k:])
		}
	}
}

func TestCancel(t *testing.T) {
	spec := diamond()
	spec.step("c").Retries = 1
	tests := []struct {
		name  string
		steps map[string]StepRecord
		want  string // decisions
		state RunState
	}{
		{
			"mid-run",
			map[string]StepRecord{"a": {State: StepSucceeded, Attempt: 1}, "b": {State: StepRunning, Attempt: 1}, "c": {State: StepFailed, Attempt: 1}},
			"cancel b#1, cancel c#1, cancel d#0", RunCancelled,
		},
		{
			"before anything started",
			nil,
			"cancel a#0, cancel b#0, cancel c#0, cancel d#0", RunCancelled,
		},
		{
			"after the end",
			map[string]StepRecord{"a": {State: StepSucceeded, Attempt: 1}, "b": {State: StepSucceeded, Attempt: 1}, "c": {State: StepSucceeded, Attempt: 1}, "d": {State: StepSucceeded, Attempt: 1}},
			"", RunSucceeded,
		},
		{
			"after a failure, with the rest still to decide",
			map[string]StepRecord{"a": {State: StepFailed, Attempt: 1}},
			"cancel b#0, cancel c#0, cancel d#0", RunCancelled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := &Run{Cancelled: true, Steps: tt.steps}
			plan := decideChecked(t, spec, run, t0)
			var got []string
			for _, d := range plan.Decisions {
				got = append(got, fmt.Sprintf("%s %s#%d", d.Action, d.Step, d.Attempt))
				if d.State != StepCancelled {
					t.Errorf("%+v: got state %s, want cancelled", d, d.State)
				}
				if err := run.Apply(d, t0); err != nil {
					t.Fatal(err)
				}
			}
			if strings.Join(got, ", ") != tt.want || plan.State != tt.state {
				t.Errorf("got %q (%s), want %q (%s)", strings.Join(got, ", "), plan.State, tt.want, tt.state)
			}
			// Once committed, nothing is left to decide, and the state holds.
			again := decideChecked(t, spec, run, t0)
			if len(again.Decisions) != 0 || again.State != tt.state {
				t.Errorf("after commit: got %+v, want no decisions and %s", again, tt.state)
			}
			// A late report for a cancelled attempt is stale.
			if tt.name == "mid-run" {
				if err := run.Finish("b", 1, true, nil, ""); !errors.Is(err, ErrStaleReport) {
					t.Errorf("late report: got %v, want ErrStaleReport", err)
				}
			}
		})
	}
}

// TestDeterministicOrder: decisions come in topological order, ties by
// name, whatever the order of the steps in the spec.
func TestDeterministicOrder(t *testing.T) {
	a := specOf(mk("z"), mk("m"), mk("b", "z"), mk("a", "b"), mk("c"))
	b := specOf(mk("c"), mk("a", "b"), mk("b", "z"), mk("m"), mk("z"))
	run := &Run{Steps: map[string]StepRecord{"z": {State: StepSkipped}}}
	pa := decideChecked(t, a, run, t0)
	pb := decideChecked(t, b, run, t0)
	var got []string
	for _, d := range pa.Decisions {
		got = append(got, d.Step)
	}
	if want := "c m b a"; strings.Join(got, " ") != want {
		t.Errorf("got %s, want %s", strings.Join(got, " "), want)
	}
	if !reflect.DeepEqual(pa, pb) {
		t.Errorf("the order of steps in the spec changed the plan: got %+v and %+v", pa, pb)
	}
}

func TestInconsistentRun(t *testing.T) {
	spec := diamond()
	spec.step("a").Timeout = tandem.Duration(time.Minute)
	tests := []struct {
		name  string
		steps map[string]StepRecord
		want  string
	}{
		{"unknown step", map[string]StepRecord{"x": {State: StepSucceeded, Attempt: 1}}, `a record for step "x", which the workflow does not have`},
		{"unknown state", map[string]StepRecord{"b": {State: "exploded"}}, `step "b" (exploded, attempt 0): unknown state`},
		{"running without attempt", map[string]StepRecord{"a": {State: StepRunning, StartedAt: t0}}, `step "a" (running, attempt 0): the attempt must be from 1 to 1`},
		{"too many attempts", map[string]StepRecord{"b": {State: StepFailed, Attempt: 2}}, `the attempt must be from 1 to 1`},
		{"skipped with an attempt", map[string]StepRecord{"a": {State: StepSkipped, Attempt: 1}}, `a step in this state has no attempt`},
		{"timeout without start time", map[string]StepRecord{"a": {State: StepRunning, Attempt: 1}}, `a running step with a timeout needs started_at`},
		{"cancelled before starting, run not cancelled", map[string]StepRecord{"b": {State: StepCancelled}}, `step "b" (cancelled, attempt 0): only a cancelled run cancels a step that never started`},
		{"started before its needs", map[string]StepRecord{"a": {State: StepRunning, Attempt: 1, StartedAt: t0}, "b": {State: StepRunning, Attempt: 1}}, `step "b" (running, attempt 1): it needs "a", which has not finished (running)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decide(spec, &Run{Steps: tt.steps}, t0)
			if !errors.Is(err, ErrInconsistentRun) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrInconsistentRun with %q", err, tt.want)
			}
		})
	}
}

func TestDecideInvalidSpec(t *testing.T) {
	_, err := Decide(specOf(mk("a", "b")), &Run{}, t0)
	if want := `decide: step "a" needs "b", which is not a step of this workflow`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestApplyRefusesWrongState(t *testing.T) {
	run := &Run{Steps: map[string]StepRecord{"a": {State: StepSucceeded, Attempt: 1}}}
	for _, d := range []Decision{
		{Action: ActStart, Step: "a", Attempt: 1, State: StepRunning},
		{Action: ActRetry, Step: "a", Attempt: 2, State: StepRunning},
		{Action: ActCancel, Step: "a", Attempt: 1, State: StepCancelled},
	} {
		if err := run.Apply(d, t0); !errors.Is(err, ErrInconsistentRun) {
			t.Errorf("Apply(%+v) to a finished step: got %v, want ErrInconsistentRun", d, err)
		}
	}
	if got := run.Steps["a"].State; got != StepSucceeded {
		t.Errorf("got %s, want the step still succeeded", got)
	}
}

// BenchmarkDecide measures a plan for a workflow of MaxSteps steps, half of
// them finished: the cost the controller pays on every change of a run.
func BenchmarkDecide(b *testing.B) {
	var steps []Step
	run := &Run{Steps: map[string]StepRecord{}}
	for i := range MaxSteps {
		s := mk(fmt.Sprintf("s%03d", i))
		if i > 0 {
			s.Needs = []string{fmt.Sprintf("s%03d", i-1)}
			s.When = `steps.s000.outputs.go == "yes"`
		}
		if i > 1 {
			s.Needs = append(s.Needs, fmt.Sprintf("s%03d", i-2))
		}
		if i < MaxSteps/2 {
			run.Steps[s.Name] = StepRecord{State: StepSucceeded, Attempt: 1, Outputs: map[string]string{"go": "yes"}}
		}
		steps = append(steps, s)
	}
	spec := specOf(steps...)
	for b.Loop() {
		if _, err := Decide(spec, run, t0); err != nil {
			b.Fatal(err)
		}
	}
}
