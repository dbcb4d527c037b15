package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/local"
)

// A diamond workflow (a, then b and c, then d) with the active server killed
// with kill -9 at each point of its life: before a step's start is
// recorded, right after it is, while a step runs, and after a step ended
// but before its end (and what follows) is recorded. Every time, each step
// runs exactly once (one job, one launch, by a ledger outside tandem), and
// no step starts before the steps it needs have ended (I1, I7).
func TestWorkflowDiamondAcrossActiveKills(t *testing.T) {
	c := startJobCluster(t, 2, 1, nil)
	cl := newClient(t, c.URLs())
	for _, sc := range []struct {
		name      string
		failpoint string // rm1 dies there by itself; "" means the test kills it while b runs
	}{
		{"before the start of a is recorded", "workflow-before-commit:a"},
		{"right after the start of b is recorded", "workflow-after-commit:b"},
		{"while b runs", ""},
		{"after b ended, before its end is recorded", "workflow-before-commit:b=succeeded"},
	} {
		t.Run(strings.ReplaceAll(sc.name, " ", "_"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			activeRM1(t, c, cl, sc.failpoint)
			dir := t.TempDir()
			ledger, gate := filepath.Join(dir, "launches"), filepath.Join(dir, "gate")
			if sc.failpoint != "" {
				touch(t, gate) // b runs straight through
			}
			wf, err := cl.RunWorkflow(ctx, ledgerDiamond(ledger, gate), client.SubmitOptions{IdempotencyKey: "diamond-" + sc.name})
			if err != nil {
				t.Fatal(err)
			}
			if sc.failpoint == "" {
				waitStepRunning(t, ctx, cl, wf.ID, "b")
				if err := c.Kill(0); err != nil {
					t.Fatal(err)
				}
				touch(t, gate)
			}
			exited, _ := c.Exited(0)
			select {
			case <-exited:
			case <-ctx.Done():
				t.Fatalf("rm1 did not die at %s", sc.name)
			}
			done, err := cl.WaitWorkflow(ctx, wf.ID, 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if done.State != tandem.WorkflowSucceeded {
				t.Fatalf("run ended %s (%s): %+v", done.State, done.Reason, done.Progress)
			}
			checkOnceInOrder(t, ctx, cl, done, ledger)
		})
	}
}

// activeRM1 (re)starts rm1, with failpoint if any, and makes it the active.
func activeRM1(t *testing.T, c *local.Cluster, cl *client.Client, failpoint string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if c.PID(0) != 0 {
		if err := c.StopServer(0, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var extra []string
	if failpoint != "" {
		extra = []string{"--failpoint", failpoint}
	}
	if err := c.Servers[0].StartWith(extra...); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx, 0); err != nil {
		t.Fatal(err)
	}
	for {
		a := waitActive(t, c)
		if a == 0 {
			return
		}
		_, err := cl.Failover(ctx, c.Servers[a].URL, tandem.HandoffRequest{From: c.Servers[a].ID, To: "rm1"})
		if err != nil && ctx.Err() != nil {
			t.Fatalf("failover to rm1: %v", err)
		}
	}
}

// ledgerDiamond is a diamond whose steps append "<step> <attempt ID>" to
// ledger when they start; b then waits for gate to exist.
func ledgerDiamond(ledger, gate string) tandem.WorkflowSpec {
	job := func(script string) json.RawMessage {
		b, _ := json.Marshal(tandem.JobSpec{Command: []string{"sh", "-c",
			fmt.Sprintf(`echo "$TANDEM_STEP $TANDEM_ATTEMPT_ID" >> %s; %s`, ledger, script)}})
		return b
	}
	wait := fmt.Sprintf("while ! test -e %s; do sleep 0.02; done", gate)
	return tandem.WorkflowSpec{Name: "diamond", Steps: []tandem.WorkflowStep{
		{Name: "a", Job: job("true")},
		{Name: "b", Job: job(wait), Needs: []string{"a"}},
		{Name: "c", Job: job("true"), Needs: []string{"a"}},
		{Name: "d", Job: job("true"), Needs: []string{"b", "c"}},
	}}
}

func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitStepRunning waits until step's job has a running attempt.
func waitStepRunning(t *testing.T, ctx context.Context, cl *client.Client, id, step string) {
	t.Helper()
	for {
		if wf, err := cl.GetWorkflow(ctx, id); err == nil && wf.Progress[step].JobID != "" {
			if j, err := cl.GetJob(ctx, wf.Progress[step].JobID); err == nil && j.State == tandem.JobRunning {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("step %s of %s never ran", step, id)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// checkOnceInOrder checks a finished diamond: one job and one launch per
// step, and every step started after the steps it needs ended.
func checkOnceInOrder(t *testing.T, ctx context.Context, cl *client.Client, wf *tandem.Workflow, ledger string) {
	t.Helper()
	jobs, err := cl.ListJobs(ctx, client.ListOptions{Workflow: wf.ID, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	byStep := map[string][]*tandem.Job{}
	for _, j := range jobs.Jobs {
		byStep[j.Step] = append(byStep[j.Step], j)
	}
	b, err := os.ReadFile(ledger)
	if err != nil {
		t.Fatal(err)
	}
	launched := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		launched[strings.Fields(line)[0]]++
	}
	for _, s := range []string{"a", "b", "c", "d"} {
		if len(byStep[s]) != 1 || launched[s] != 1 || wf.Progress[s].JobID != byStep[s][0].ID {
			t.Errorf("step %s: %d jobs, %d launches (ledger %q), want exactly one", s, len(byStep[s]), launched[s], b)
		}
	}
	if t.Failed() {
		return
	}
	start := func(s string) time.Time { return *byStep[s][0].Attempts[0].StartedAt }
	end := func(s string) time.Time { return *byStep[s][0].LastAttempt().EndedAt }
	for _, e := range [][2]string{{"a", "b"}, {"a", "c"}, {"b", "d"}, {"c", "d"}} {
		if start(e[1]).Before(end(e[0])) {
			t.Errorf("step %s started at %s, before %s, which it needs, ended at %s", e[1], start(e[1]), e[0], end(e[0]))
		}
	}
	if i := slices.IndexFunc(jobs.Jobs, func(j *tandem.Job) bool { return j.State != tandem.JobSucceeded }); i >= 0 {
		t.Errorf("job %s is %s", jobs.Jobs[i].ID, jobs.Jobs[i].State)
	}
}
