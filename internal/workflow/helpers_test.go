package workflow

import (
	"encoding/json"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"
)

// t0 is the time the simulated controller starts at.
var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func jobOf(cmd ...string) json.RawMessage {
	b, err := json.Marshal(map[string]any{"command": cmd})
	if err != nil {
		panic(err)
	}
	return b
}

// mk returns a step named name that needs needs and runs "true".
func mk(name string, needs ...string) Step {
	return Step{Name: name, Job: jobOf("true"), Needs: needs}
}

func specOf(steps ...Step) *Spec {
	return &Spec{Name: "test", Steps: steps}
}

// diamond returns A; B and C need A; D needs B and C.
func diamond() *Spec {
	return specOf(mk("a"), mk("b", "a"), mk("c", "a"), mk("d", "b", "c"))
}

func (s *Spec) step(name string) *Step {
	for i := range s.Steps {
		if s.Steps[i].Name == name {
			return &s.Steps[i]
		}
	}
	panic("no step " + name)
}

// attempt is the scripted outcome of one attempt of a step.
type attempt struct {
	fail    bool
	outputs map[string]string
}

var (
	ok   = attempt{}
	fail = attempt{fail: true}
)

// simulation drives Decide like a controller: commit every decision, then
// report the outcome of every running attempt from a script, until the run
// ends. It checks the invariants on every decision.
type simulation struct {
	t      *testing.T
	spec   *Spec
	run    *Run
	now    time.Time
	script map[string][]attempt // per step, outcome of attempt 1, 2, ...; default ok
	starts map[string]int
	log    []Decision
}

func newSimulation(t *testing.T, spec *Spec, script map[string][]attempt) *simulation {
	t.Helper()
	if err := spec.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return &simulation{t: t, spec: spec, run: &Run{}, now: t0, script: script, starts: map[string]int{}}
}

// decide calls Decide twice (checking it is deterministic), checks every
// decision against the current run, and commits them all.
func (s *simulation) decide() *Plan {
	s.t.Helper()
	plan := decideChecked(s.t, s.spec, s.run, s.now)
	for _, d := range plan.Decisions {
		checkDecision(s.t, s.spec, s.run, d)
		if d.Action == ActStart || d.Action == ActRetry {
			s.starts[d.Step]++
		}
		if err := s.run.Apply(d, s.now); err != nil {
			s.t.Fatalf("Apply(%+v): %v", d, err)
		}
		s.log = append(s.log, d)
	}
	return plan
}

// finishAll reports the scripted outcome of every running attempt.
func (s *simulation) finishAll() {
	s.t.Helper()
	for _, name := range sortedKeys(s.run.Steps) {
		r := s.run.Steps[name]
		if r.State != StepRunning {
			continue
		}
		a := ok
		if sc := s.script[name]; r.Attempt <= len(sc) {
			a = sc[r.Attempt-1]
		}
		if err := s.run.Finish(name, r.Attempt, !a.fail, a.outputs, ""); err != nil {
			s.t.Fatalf("Finish(%s, %d): %v", name, r.Attempt, err)
		}
	}
}

// runToEnd alternates decide and finishAll until the run is over.
func (s *simulation) runToEnd() *Plan {
	s.t.Helper()
	for i := 0; i < 1000; i++ {
		plan := s.decide()
		if len(plan.Decisions) == 0 {
			if plan.State.Terminal() {
				return plan
			}
			s.finishAll()
			s.now = s.now.Add(time.Second)
		}
	}
	s.t.Fatalf("the run did not end after 1000 rounds: %+v", s.run)
	return nil
}

// states returns each step's state as "name=state" in spec order.
func (s *simulation) states() string {
	var parts []string
	for _, st := range s.spec.Steps {
		parts = append(parts, st.Name+"="+string(record(s.run, st.Name).State))
	}
	return strings.Join(parts, " ")
}

// decideChecked calls Decide twice on copies of the run, fails the test if
// the plans differ or the run was modified, and returns the plan.
func decideChecked(t *testing.T, spec *Spec, run *Run, now time.Time) *Plan {
	t.Helper()
	before := cloneRun(run)
	p1, err := Decide(spec, run, now)
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	p2, err := Decide(spec, cloneRun(run), now)
	if err != nil {
		t.Fatalf("Decide again: %v", err)
	}
	if !reflect.DeepEqual(p1, p2) {
		t.Fatalf("Decide is not deterministic: got %+v, then %+v", p1, p2)
	}
	if !reflect.DeepEqual(run, before) {
		t.Fatalf("Decide modified the run: got %+v, want %+v", run, before)
	}
	return p1
}

// checkDecision checks the safety rules for a decision about to be applied
// to run: a step starts only at attempt 1 from pending, or at attempt n+1
// after attempt n failed with retries left; it starts or is skipped only
// when every step it needs has finished for good; and it is never decided
// again once finished.
func checkDecision(t *testing.T, spec *Spec, run *Run, d Decision) {
	t.Helper()
	st := spec.step(d.Step)
	r := record(run, d.Step)
	g, err := compile(spec, false)
	if err != nil {
		t.Fatal(err)
	}
	n := g.named[d.Step]
	if finished(n, r) {
		t.Fatalf("decision %+v for step %s, which had finished (%+v)", d, d.Step, r)
	}
	switch d.Action {
	case ActStart:
		if r.State != StepPending || d.Attempt != 1 {
			t.Fatalf("start %+v of step in %+v: want a pending step and attempt 1", d, r)
		}
	case ActRetry:
		if r.State != StepFailed || d.Attempt != r.Attempt+1 || d.Attempt > st.Retries+1 {
			t.Fatalf("retry %+v of step in %+v with %d retries", d, r, st.Retries)
		}
	}
	if d.Action == ActStart || d.Action == ActSkip {
		for _, need := range st.Needs {
			if nr := record(run, need); !finished(g.named[need], nr) {
				t.Fatalf("%s of %s while its need %s is %s (attempt %d)", d.Action, d.Step, need, nr.State, nr.Attempt)
			}
		}
	}
}

func cloneRun(r *Run) *Run {
	c := &Run{Cancelled: r.Cancelled, Steps: maps.Clone(r.Steps)}
	return c
}
