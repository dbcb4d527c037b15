package workflow

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// randomSpec returns a random valid workflow of 1 to 12 steps. Step names
// are shuffled against the order of the graph, so that the canonical order
// differs from both the spec's order and the names' order.
func randomSpec(rng *rand.Rand) *Spec {
	n := 1 + rng.IntN(12)
	names := make([]string, n)
	for i, p := range rng.Perm(n) {
		names[i] = fmt.Sprintf("s%02d", p)
	}
	rules := []TriggerRule{"", AllSuccess, AllDone, OneFailed, OneSuccess, NoneFailed}
	spec := &Spec{Name: "random", Params: map[string]string{"p": []string{"x", "y"}[rng.IntN(2)]}}
	ancestors := make([]map[string]bool, n)
	for i := range n {
		st := Step{Name: names[i], Job: jobOf("true"), Retries: rng.IntN(3), Trigger: rules[rng.IntN(len(rules))]}
		ancestors[i] = map[string]bool{}
		for j := range i {
			if rng.IntN(10) < 3 {
				st.Needs = append(st.Needs, names[j])
				ancestors[i][names[j]] = true
				for a := range ancestors[j] {
					ancestors[i][a] = true
				}
			}
		}
		if rng.IntN(10) < 3 {
			st.Timeout = tandem.Duration(time.Duration(10+rng.IntN(50)) * time.Second)
		}
		if rng.IntN(10) < 4 {
			var terms []string
			for a := range ancestors[i] {
				if rng.IntN(2) == 0 {
					terms = append(terms, fmt.Sprintf(`steps.%s.outputs.k == "1"`, a))
				} else {
					terms = append(terms, fmt.Sprintf(`steps.%s.state != "failed"`, a))
				}
			}
			slices.Sort(terms) // map order must not leak into the spec
			terms = append(terms, `params.p == "x"`)
			op := []string{" || ", " && "}[rng.IntN(2)]
			st.When = strings.Join(terms, op)
			if rng.IntN(2) == 0 {
				st.When = "!(" + st.When + ")"
			}
		}
		spec.Steps = append(spec.Steps, st)
	}
	rng.Shuffle(len(spec.Steps), func(i, j int) { spec.Steps[i], spec.Steps[j] = spec.Steps[j], spec.Steps[i] })
	return spec
}

// TestRandomRuns simulates many random workflows under a controller that
// commits random prefixes of plans, while attempts end at random (with
// random outputs), time passes (so attempts time out), stale reports arrive
// and runs are cancelled. It checks that every plan is deterministic, that
// any prefix of a plan leaves the rest to the next plan, that no step starts
// before all it needs have finished or more than retries+1 times, that every
// run ends, and that each step's final state follows its trigger rule.
func TestRandomRuns(t *testing.T) {
	seeds := 1000
	if testing.Short() {
		seeds = 200
	}
	for seed := range seeds {
		rng := rand.New(rand.NewPCG(uint64(seed), 42))
		spec := randomSpec(rng)
		if err := spec.Validate(); err != nil {
			t.Fatalf("seed %d: random spec is invalid: %v", seed, err)
		}
		if !simulateRandom(t, rng, spec) {
			t.Fatalf("seed %d failed; spec: %+v", seed, spec)
		}
	}
}

func simulateRandom(t *testing.T, rng *rand.Rand, spec *Spec) bool {
	t.Helper()
	run := &Run{}
	now := t0
	starts := map[string]int{}
	for round := 0; ; round++ {
		if round > 10000 {
			t.Errorf("the run did not end after %d rounds: %+v", round, run)
			return false
		}
		plan := decideChecked(t, spec, run, now)
		if len(plan.Decisions) == 0 {
			if plan.State.Terminal() {
				return checkFinal(t, spec, run, plan, starts)
			}
			randomEvents(t, rng, spec, run, &now)
			continue
		}
		if plan.State.Terminal() && plan.State != RunCancelled {
			// A plan that still decides something can end the run only by
			// skipping its last steps or timing out a last attempt.
			for _, d := range plan.Decisions {
				lastTimeout := d.Action == ActTimeout && d.Attempt == spec.step(d.Step).Retries+1
				if d.Action != ActSkip && !lastTimeout {
					t.Errorf("plan %+v ends the run but decides %+v", plan, d)
					return false
				}
			}
		}
		k := 1 + rng.IntN(len(plan.Decisions))
		for _, d := range plan.Decisions[:k] {
			checkDecision(t, spec, run, d)
			if d.Action == ActStart || d.Action == ActRetry {
				starts[d.Step]++
				if limit := spec.step(d.Step).Retries + 1; starts[d.Step] > limit {
					t.Errorf("step %s started %d times, more than %d", d.Step, starts[d.Step], limit)
					return false
				}
			}
			if err := run.Apply(d, now); err != nil {
				t.Errorf("Apply(%+v): %v", d, err)
				return false
			}
		}
		if k < len(plan.Decisions) {
			rest := decideChecked(t, spec, run, now)
			if !reflect.DeepEqual(rest.Decisions, plan.Decisions[k:]) {
				t.Errorf("after committing %d of %+v: got %+v, want the rest", k, plan.Decisions, rest.Decisions)
				return false
			}
		}
	}
}

// randomEvents ends some running attempts, sends a stale report, lets time
// pass and, rarely, cancels the run.
func randomEvents(t *testing.T, rng *rand.Rand, spec *Spec, run *Run, now *time.Time) {
	t.Helper()
	for _, name := range sortedKeys(run.Steps) {
		r := run.Steps[name]
		switch {
		case r.State == StepRunning && rng.IntN(2) == 0:
			out := map[string]string{"k": fmt.Sprint(rng.IntN(2))}
			if err := run.Finish(name, r.Attempt, rng.IntN(3) > 0, out, ""); err != nil {
				t.Fatalf("Finish(%s, %d): %v", name, r.Attempt, err)
			}
		case r.Attempt > 0 && rng.IntN(10) == 0:
			before := run.Steps[name]
			stale := []int{r.Attempt - 1, r.Attempt + 1}[rng.IntN(2)]
			if r.State != StepRunning {
				stale = r.Attempt
			}
			if err := run.Finish(name, stale, true, nil, ""); !errors.Is(err, ErrStaleReport) {
				t.Fatalf("stale Finish(%s, %d) on %+v: got %v, want ErrStaleReport", name, stale, before, err)
			}
			if !reflect.DeepEqual(run.Steps[name], before) {
				t.Fatalf("a stale report changed step %s: got %+v, want %+v", name, run.Steps[name], before)
			}
		}
	}
	*now = now.Add(time.Duration(rng.IntN(30)) * time.Second)
	if rng.IntN(50) == 0 {
		run.Cancelled = true
	}
}

// checkFinal checks a run that has ended against rules restated here from
// doc.go, independently of Decide's code.
func checkFinal(t *testing.T, spec *Spec, run *Run, plan *Plan, starts map[string]int) bool {
	t.Helper()
	isFailure := func(s StepState) bool {
		return s == StepFailed || s == StepUpstreamFailed || s == StepCancelled
	}
	anyCancelled, anyFailure := false, false
	for _, st := range spec.Steps {
		r := record(run, st.Name)
		anyCancelled = anyCancelled || r.State == StepCancelled
		anyFailure = anyFailure || isFailure(r.State)
		if r.Attempt != starts[st.Name] {
			t.Errorf("step %s: record says attempt %d, but %d were started", st.Name, r.Attempt, starts[st.Name])
			return false
		}
		switch {
		case r.State == StepFailed && r.Attempt != st.Retries+1:
			t.Errorf("step %s ended failed after %d attempts, with %d retries", st.Name, r.Attempt, st.Retries)
			return false
		case r.State == StepPending || r.State == StepRunning:
			t.Errorf("run ended with step %s %s", st.Name, r.State)
			return false
		}
		if run.Cancelled {
			continue // cancel cuts the trigger rules short
		}
		var succeeded, skipped, failed int
		for _, need := range st.Needs {
			switch s := record(run, need).State; {
			case s == StepSucceeded:
				succeeded++
			case s == StepSkipped:
				skipped++
			case isFailure(s):
				failed++
			}
		}
		all := len(st.Needs)
		rule := st.Trigger
		want := StepState("") // "": the trigger rule lets the step run
		if all > 0 {
			switch {
			case rule == AllSuccess || rule == "":
				if succeeded != all {
					want = map[bool]StepState{true: StepUpstreamFailed, false: StepSkipped}[failed > 0]
				}
			case rule == OneFailed && failed == 0:
				want = StepSkipped
			case rule == OneSuccess && succeeded == 0:
				want = map[bool]StepState{true: StepSkipped, false: StepUpstreamFailed}[skipped == all]
			case rule == NoneFailed && failed > 0:
				want = StepUpstreamFailed
			}
		}
		switch {
		case want != "" && (r.State != want || r.Attempt != 0):
			t.Errorf("step %s (%s) after needs %v: got %s after %d attempts, want %s without running", st.Name, rule, needStates(run, st), r.State, r.Attempt, want)
			return false
		case want == "" && r.Attempt == 0 && !(r.State == StepSkipped && st.When != "" && strings.HasPrefix(r.Reason, "condition is false")):
			t.Errorf("step %s (%s) after needs %v: got %s (%s), want it run or skipped by its condition", st.Name, rule, needStates(run, st), r.State, r.Reason)
			return false
		}
	}
	want := RunSucceeded
	switch {
	case run.Cancelled && anyCancelled:
		want = RunCancelled
	case anyFailure:
		want = RunFailed
	}
	if plan.State != want {
		t.Errorf("run ended %s (%s), want %s; steps %+v", plan.State, plan.Reason, want, run.Steps)
		return false
	}
	return true
}

func needStates(run *Run, st Step) []string {
	var s []string
	for _, n := range st.Needs {
		s = append(s, n+"="+string(record(run, n).State))
	}
	return s
}
