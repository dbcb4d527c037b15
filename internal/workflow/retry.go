package workflow

import (
	"fmt"
	"slices"
)

// Retry prepares a finished run that did not succeed for another try: every
// step that did not succeed, and every step after one of those (a step
// whose ancestors include it), goes back to pending; succeeded steps before
// them keep their state and outputs, so they never run again. The cancelled
// flag is cleared. It returns the names of the steps reset, in canonical
// order. A run still running, or one that succeeded, is an EINVALID error
// (the caller maps it to a conflict); nothing is changed then.
func Retry(spec *Spec, run *Run, state RunState) ([]string, error) {
	g, err := compile(spec, false)
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	switch state {
	case RunFailed, RunCancelled:
	default:
		return nil, invalid("the run is %s: only a failed or cancelled run can be retried", state)
	}
	reset := make(bitset, (len(g.nodes)+63)/64)
	var names []string
	for _, n := range g.nodes { // ancestors come first
		again := record(run, n.step.Name).State != StepSucceeded
		for i := range g.nodes {
			if !again && n.ancestors.has(i) && reset.has(i) {
				again = true
			}
		}
		if again {
			reset.set(n.index)
			names = append(names, n.step.Name)
		}
	}
	run.Cancelled = false
	for _, name := range names {
		delete(run.Steps, name)
	}
	return slices.Clip(names), nil
}
