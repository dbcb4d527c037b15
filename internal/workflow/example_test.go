package workflow_test

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/tandemhq/tandem/internal/workflow"
)

// Example drives a diamond by hand, as the controller does: decide, commit
// the decisions, record the outcomes, decide again.
func Example() {
	var spec workflow.Spec
	err := json.Unmarshal([]byte(`{
		"name": "diamond",
		"params": {"env": "staging"},
		"steps": [
			{"name": "a", "job": {"command": ["check"]}},
			{"name": "b", "needs": ["a"], "retries": 1, "timeout": "5m",
			 "when": "steps.a.outputs.ok == 'yes'",
			 "job": {"command": ["deploy", "--env=${params.env}"]}},
			{"name": "c", "needs": ["a"], "when": "params.env == 'prod'", "job": {"command": ["notify"]}},
			{"name": "d", "needs": ["b", "c"], "trigger": "none_failed", "job": {"command": ["report"]}}
		]}`), &spec)
	if err != nil {
		panic(err)
	}
	if err := spec.Validate(); err != nil {
		panic(err)
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	run := &workflow.Run{}
	step := func() {
		plan, err := workflow.Decide(&spec, run, now)
		if err != nil {
			panic(err)
		}
		for _, d := range plan.Decisions {
			fmt.Printf("%s %s attempt %d: %s (%s)\n", d.Action, d.Step, d.Attempt, d.State, d.Reason)
			if err := run.Apply(d, now); err != nil {
				panic(err)
			}
		}
		fmt.Println("run:", plan.State)
	}
	step()
	outputs, _ := workflow.ParseOutputs([]byte("ok=yes\n"))
	_ = run.Finish("a", 1, true, outputs, "")
	step()
	job, _ := workflow.Render(spec.Steps[1].Job, spec.Params, map[string]map[string]string{"a": outputs})
	fmt.Println("b runs", job.Command)
	_ = run.Finish("b", 1, false, nil, "exit status 1")
	step()
	_ = run.Finish("b", 2, true, nil, "")
	step()
	_ = run.Finish("d", 1, true, nil, "")
	step()
	// Output:
	// start a attempt 1: running (ready)
	// run: running
	// start b attempt 1: running (ready)
	// skip c attempt 0: skipped (condition is false: params.env == 'prod')
	// run: running
	// b runs [deploy --env=staging]
	// retry b attempt 2: running (attempt 1 failed; starting attempt 2 of 2)
	// run: running
	// start d attempt 1: running (ready)
	// run: running
	// run: succeeded
}
