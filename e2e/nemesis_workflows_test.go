package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/keys"
)

// The fault suite's workflows (issue 11): while the load runs, a diamond
// workflow (a, then b and c, then d) starts every few seconds (and four of
// the suite's schedules start one at each fire), its steps
// running the load's job script (so the launch checks cover them too) with
// retries for attempts the faults lose. After the run the checker reads
// every run and job from etcd and checks I7 for workflows: a run that ended
// has exactly one job per attempt of each step (the jobs the record names,
// and no other job of that step), and no step's first job started before
// the last jobs of the steps it needs ended.

// nemesisWorkflowEvery is how often the load starts a workflow run.
const nemesisWorkflowEvery = 3 * time.Second

// workflowLoop starts diamonds until ctx ends, each with its own
// idempotency key, retried through failovers until one answer arrives.
func (n *nemesis) workflowLoop(ctx context.Context) {
	spec := n.diamond()
	for i := 0; ; i++ {
		key := fmt.Sprintf("nemesis-workflow-%d-%d", n.seed, i)
		for {
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			wf, err := n.admin.RunWorkflow(wctx, spec, client.SubmitOptions{IdempotencyKey: key})
			cancel()
			if err == nil {
				n.mu.Lock()
				n.workflows = append(n.workflows, wf.ID)
				n.mu.Unlock()
				break
			}
			if ctx.Err() != nil {
				return // the load is over; a run it may have made is found by its key never again, and is not counted
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(nemesisWorkflowEvery):
		}
	}
}

// diamond is the suite's workflow: a, then b and c, then d, each step the
// load's job script, with retries for the attempts faults lose.
func (n *nemesis) diamond() tandem.WorkflowSpec {
	job := func(name string, needs ...string) tandem.WorkflowStep {
		b, _ := json.Marshal(tandem.JobSpec{Command: []string{"sh", "-c", jobScript(n.ledger, 1+len(name)%3)}})
		return tandem.WorkflowStep{Name: name, Job: b, Needs: needs, Retries: 5}
	}
	return tandem.WorkflowSpec{Name: "nemesis-diamond", Steps: []tandem.WorkflowStep{
		job("a"), job("b", "a"), job("c", "a"), job("d", "b", "c")}}
}

// waitWorkflows waits, after the load (and the schedules' pause), until no
// workflow run is running: those the load started and those schedules did.
func (n *nemesis) waitWorkflows() {
	wait := newDrainWait()
	for {
		busy := 0
		for after := ""; ; {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			page, next, err := n.admin.ListWorkflows(ctx, tandem.WorkflowFilter{State: tandem.WorkflowRunning, After: after, Limit: 1000})
			cancel()
			if err != nil {
				busy = -1 // unknown: ask again
				break
			}
			busy += len(page)
			if next == "" {
				break
			}
			after = next
		}
		if busy == 0 {
			return
		}
		if wait.over(busy) {
			n.t.Logf("gave up waiting: %d workflow runs not ended (%s)", busy, wait)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// wfTotals are the workflows' figures of one run.
type wfTotals struct {
	Runs, Scheduled, Succeeded, Steps, Attempts int
}

func (w wfTotals) String() string {
	return fmt.Sprintf("workflow runs %d (%d by schedules; succeeded %d; %d steps, %d attempts)", w.Runs, w.Scheduled, w.Succeeded, w.Steps, w.Attempts)
}

// readWorkflows reads every workflow run at revision rev, by ID.
func readWorkflows(ctx context.Context, cli *clientv3.Client, layout keys.Layout, rev int64) (map[string]*tandem.Workflow, error) {
	resp, err := cli.Get(ctx, layout.WorkflowsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return nil, fmt.Errorf("read workflow runs: %w", err)
	}
	runs := map[string]*tandem.Workflow{}
	for _, kv := range resp.Kvs {
		var wf tandem.Workflow
		if err := json.Unmarshal(kv.Value, &wf); err != nil {
			return nil, fmt.Errorf("workflow record %s: %w", kv.Key, err)
		}
		runs[wf.ID] = &wf
	}
	return runs, nil
}

// checkWorkflows is I7 for workflows, on the run records and the job
// records as etcd held them at the revision of n.records, with the last
// versions of those retention removed before (n.runs, n.jobs).
func (n *nemesis) checkWorkflows() error {
	n.wf = wfTotals{}
	runs := n.runs
	jobs := map[string]map[string][]*tandem.Job{} // run -> step -> jobs
	for _, j := range n.jobs {
		if j.WorkflowID == "" {
			continue
		}
		if jobs[j.WorkflowID] == nil {
			jobs[j.WorkflowID] = map[string][]*tandem.Job{}
		}
		jobs[j.WorkflowID][j.Step] = append(jobs[j.WorkflowID][j.Step], j)
	}
	for _, id := range n.workflows {
		if _, ok := runs[id]; !ok {
			n.problemf("I2: workflow run %s, acknowledged, is not in etcd, nor removed by retention", id)
		}
	}
	// Every run: the load's and the schedules'.
	for _, id := range slices.Sorted(maps.Keys(runs)) {
		wf := runs[id]
		n.wf.Runs++
		if wf.ScheduleID != "" {
			n.wf.Scheduled++
		}
		if wf.State == tandem.WorkflowSucceeded {
			n.wf.Succeeded++
		} else {
			n.notes = append(n.notes, fmt.Sprintf("workflow run %s ended %s: %s", id, wf.State, wf.Reason))
		}
		n.checkWorkflowRun(wf, jobs[id])
	}
	for id := range jobs {
		if _, ok := runs[id]; !ok {
			n.problemf("I7: jobs of workflow run %s exist, but the run does not", id)
		}
	}
	return nil
}

// checkWorkflowRun checks one run against its steps' jobs.
func (n *nemesis) checkWorkflowRun(wf *tandem.Workflow, jobs map[string][]*tandem.Job) {
	if !wf.State.Terminal() {
		var steps []string
		for _, st := range wf.Steps {
			r := wf.Progress[st.Name]
			desc := fmt.Sprintf("%s %s attempt %d", st.Name, wf.StepState(st.Name), r.Attempt)
			for _, j := range jobs[st.Name] {
				desc += fmt.Sprintf(" job %s %s (%s)", j.ID, j.State, j.Reason)
			}
			steps = append(steps, desc)
		}
		n.problemf("workflow run %s (shard %d, updated at epoch %d) is %s after quiescence (%s without progress), not ended: %v",
			wf.ID, wf.Shard, wf.UpdatedEpoch, wf.State, quiescenceWithin, steps)
	}
	for _, name := range slices.Sorted(maps.Keys(jobs)) {
		if _, ok := wf.Progress[name]; !ok {
			n.problemf("I7: workflow run %s: step %s has %d jobs but no record", wf.ID, name, len(jobs[name]))
		}
	}
	for _, st := range wf.Steps {
		r := wf.Progress[st.Name]
		n.wf.Steps++
		n.wf.Attempts += r.Attempt
		got := make([]string, 0, len(jobs[st.Name]))
		for _, j := range jobs[st.Name] {
			got = append(got, j.ID)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(r.Jobs))
		if !slices.Equal(got, want) || len(want) != r.Attempt {
			n.problemf("I7: workflow run %s: step %s has %d attempts, its record names jobs %v, etcd holds its jobs %v: want one job per attempt",
				wf.ID, st.Name, r.Attempt, want, got)
			continue
		}
		if len(got) == 0 {
			continue
		}
		// The step's first job started after the last job of each step it
		// needs ended.
		first := jobs[st.Name][0]
		for _, j := range jobs[st.Name] {
			if j.ID < first.ID {
				first = j
			}
		}
		if len(first.Attempts) == 0 || first.Attempts[0].StartedAt == nil {
			continue
		}
		for _, need := range st.Needs {
			last := wf.Progress[need].JobID
			var lj *tandem.Job
			for _, j := range jobs[need] {
				if j.ID == last {
					lj = j
				}
			}
			if lj == nil || lj.LastAttempt() == nil || lj.LastAttempt().EndedAt == nil {
				n.problemf("I7: workflow run %s: step %s ran, but the last job of %s, which it needs, never ended", wf.ID, st.Name, need)
				continue
			}
			if first.Attempts[0].StartedAt.Before(*lj.LastAttempt().EndedAt) {
				n.problemf("I7: workflow run %s: step %s started at %s, before %s, which it needs, ended at %s",
					wf.ID, st.Name, first.Attempts[0].StartedAt, need, lj.LastAttempt().EndedAt)
			}
		}
	}
}
