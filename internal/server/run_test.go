package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/agent"
	"github.com/tandemhq/tandem/internal/server"
)

// addAgent starts an in-process agent (running real processes) that talks
// to the cluster's servers.
func (c *cluster) addAgent(id string, capacity tandem.Resources, labels map[string]string) *agent.Agent {
	c.t.Helper()
	// Attempts run as the test's own user (root in CI), whose temporary
	// directories nobody, the default, could not enter.
	me, err := user.Current()
	if err != nil {
		c.t.Fatal(err)
	}
	a, err := agent.New(agent.Config{ID: id, Servers: c.urls(), WorkDir: c.t.TempDir(), Listen: "127.0.0.1:0",
		Capacity: capacity, Labels: labels, PollWait: 5 * time.Second, KillGrace: time.Second, Logger: testLogger(),
		RunAs: me.Username, AllowRoot: true})
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = a.Close() })
	return a
}

var smallAgent = tandem.Resources{CPU: 2, MemoryMB: 1024}

// waitJob waits until the job's state satisfies done, and returns it.
func waitJob(t *testing.T, cl *client.Client, id string, done func(*tandem.Job) bool) *tandem.Job {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, err := cl.GetJob(context.Background(), id)
		if err == nil && done(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: %+v %v; gave up waiting", id, j, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ended(j *tandem.Job) bool { return j.State.Terminal() }

func submit(t *testing.T, cl *client.Client, spec tandem.JobSpec) *tandem.Job {
	t.Helper()
	j, err := cl.SubmitJob(context.Background(), spec, client.SubmitOptions{})
	if err != nil {
		t.Fatalf("submit %v: %v", spec.Command, err)
	}
	return j
}

func logsOf(t *testing.T, url, id, query string) string {
	t.Helper()
	resp, err := http.Get(url + "/v1/jobs/" + id + "/logs" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("logs of %s: %d %s", id, resp.StatusCode, b)
	}
	return string(b)
}

// A job runs on an agent: its output is readable, success, failure and a
// missing executable each end as they should.
func TestJobsRunOnAgents(t *testing.T) {
	c := newCluster(t, 1, nil)
	c.addAgent("a1", smallAgent, nil)
	cl := c.client()
	url := c.nodes[c.waitActive()].url

	hello := submit(t, cl, tandem.JobSpec{Command: []string{"sh", "-c", "echo hello"}})
	j := waitJob(t, cl, hello.ID, ended)
	if j.State != tandem.JobSucceeded || len(j.Attempts) != 1 || *j.Attempts[0].ExitCode != 0 || j.Attempts[0].Agent != "a1" {
		t.Fatalf("echo hello: %+v", j)
	}
	if got := logsOf(t, url, hello.ID, ""); got != "hello\n" {
		t.Fatalf("logs: got %q, want %q", got, "hello\n")
	}

	fail := submit(t, cl, tandem.JobSpec{Command: []string{"sh", "-c", "echo oops >&2; exit 3"}})
	j = waitJob(t, cl, fail.ID, ended)
	if j.State != tandem.JobFailed || j.Attempts[0].ExitCode == nil || *j.Attempts[0].ExitCode != 3 {
		t.Fatalf("exit 3: %+v", j)
	}
	if got := logsOf(t, url, fail.ID, "?attempt=1"); got != "oops\n" {
		t.Fatalf("stderr in logs: got %q", got)
	}

	missing := submit(t, cl, tandem.JobSpec{Command: []string{"/no/such/program"}})
	j = waitJob(t, cl, missing.ID, ended)
	if j.State != tandem.JobFailed || !strings.Contains(j.Attempts[0].Reason, "/no/such/program") {
		t.Fatalf("missing executable: %+v", j)
	}
	// The agent survived it.
	after := submit(t, cl, tandem.JobSpec{Command: []string{"true"}})
	if j := waitJob(t, cl, after.ID, ended); j.State != tandem.JobSucceeded {
		t.Fatalf("job after a failed start: %+v", j)
	}
	// The active's metrics count jobs by state and agents, and give the
	// live heap (tandem bench scale reads it).
	m := do(t, "GET", url+"/metrics", "", "").body
	for _, want := range []string{`tandem_jobs{state="succeeded"} 2`, `tandem_jobs{state="failed"} 2`,
		`tandem_agents{state="ready"} 1`, `tandem_agent_cpu{agent="a1",kind="capacity"} 2`, "\ngo_gc_heap_live_bytes "} {
		if !strings.Contains(m, want) {
			t.Fatalf("metrics lack %q", want)
		}
	}
}

// A running job keeps running through the crash of the active and ends
// succeeded with exactly one attempt (work-preserving failover).
func TestRunningJobSurvivesFailover(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.addAgent("a1", smallAgent, nil)
	cl := c.client()
	a := c.waitActive()
	dir := t.TempDir()
	marker := filepath.Join(dir, "launches")
	j := submit(t, cl, tandem.JobSpec{Command: []string{"sh", "-c", "echo $TANDEM_ATTEMPT_ID >> " + marker + "; sleep 2"}})
	waitJob(t, cl, j.ID, func(j *tandem.Job) bool { return j.State == tandem.JobRunning })
	time.Sleep(20 * probeInterval)
	c.crash(a)
	got := waitJob(t, cl, j.ID, ended)
	if got.State != tandem.JobSucceeded || len(got.Attempts) != 1 {
		t.Fatalf("job after failover: state %s, %d attempts (%+v)", got.State, len(got.Attempts), got.Attempts)
	}
	b, _ := os.ReadFile(marker)
	if lines := strings.Fields(string(b)); len(lines) != 1 {
		t.Fatalf("launches: %q, want exactly one", lines)
	}
}

// Placement: resources and label constraints decide where a job runs; a job
// that fits nowhere stays pending with a reason; retries back off; kill and
// timeout end attempts.
func TestPlacementRetriesKillAndTimeout(t *testing.T) {
	c := newCluster(t, 1, nil)
	c.addAgent("small", tandem.Resources{CPU: 1, MemoryMB: 512}, map[string]string{"zone": "a"})
	c.addAgent("gpu", tandem.Resources{CPU: 4, MemoryMB: 4096}, map[string]string{"zone": "b", "gpu": "yes"})
	cl := c.client()
	ctx := context.Background()

	onGPU := submit(t, cl, tandem.JobSpec{Command: []string{"true"}, Constraints: map[string]string{"gpu": "yes"}})
	if j := waitJob(t, cl, onGPU.ID, ended); j.Attempts[0].Agent != "gpu" {
		t.Fatalf("constraint gpu=yes ran on %s", j.Attempts[0].Agent)
	}
	big := submit(t, cl, tandem.JobSpec{Command: []string{"true"}, Resources: tandem.Resources{CPU: 3, MemoryMB: 100}})
	if j := waitJob(t, cl, big.ID, ended); j.Attempts[0].Agent != "gpu" {
		t.Fatalf("3-cpu job ran on %s, want gpu (the only one with 3 cpu)", j.Attempts[0].Agent)
	}
	nowhere := submit(t, cl, tandem.JobSpec{Command: []string{"true"}, Resources: tandem.Resources{CPU: 64}})
	j := waitJob(t, cl, nowhere.ID, func(j *tandem.Job) bool { return j.Reason != "" })
	if j.State != tandem.JobPending || !strings.Contains(j.Reason, "no agent fits 64 cpu") {
		t.Fatalf("unplaceable job: %s %q", j.State, j.Reason)
	}
	if _, err := cl.KillJob(ctx, nowhere.ID); err != nil {
		t.Fatal(err)
	}
	if j := waitJob(t, cl, nowhere.ID, ended); j.State != tandem.JobKilled || len(j.Attempts) != 0 {
		t.Fatalf("killed pending job: %+v", j)
	}

	retried := submit(t, cl, tandem.JobSpec{Command: []string{"false"}, MaxAttempts: 3, RetryBackoff: tandem.Duration(100 * time.Millisecond)})
	j = waitJob(t, cl, retried.ID, ended)
	if j.State != tandem.JobFailed || len(j.Attempts) != 3 {
		t.Fatalf("retries: %s with %d attempts, want failed with 3", j.State, len(j.Attempts))
	}
	for i := 1; i < 3; i++ {
		gap := j.Attempts[i].ScheduledAt.Sub(*j.Attempts[i-1].EndedAt)
		if want := 100 * time.Millisecond << (i - 1); gap < want {
			t.Fatalf("attempt %d started %s after attempt %d ended, want at least %s", i+1, gap, i, want)
		}
	}

	sleeper := submit(t, cl, tandem.JobSpec{Command: []string{"sleep", "60"}})
	waitJob(t, cl, sleeper.ID, func(j *tandem.Job) bool { return j.State == tandem.JobRunning })
	if _, err := cl.KillJob(ctx, sleeper.ID); err != nil {
		t.Fatal(err)
	}
	if j := waitJob(t, cl, sleeper.ID, ended); j.State != tandem.JobKilled || j.Attempts[0].State != tandem.AttemptKilled {
		t.Fatalf("killed running job: %s, attempt %s", j.State, j.Attempts[0].State)
	}
	if j, err := cl.KillJob(ctx, sleeper.ID); err != nil || j.State != tandem.JobKilled {
		t.Fatalf("killing a killed job again: %v %v, want the killed job", j, err)
	}
	if _, err := cl.KillJob(ctx, onGPU.ID); tandem.ErrorCode(err) != tandem.ECONFLICT {
		t.Fatalf("killing a succeeded job: got %v, want conflict", err)
	}

	slow := submit(t, cl, tandem.JobSpec{Command: []string{"sleep", "60"}, Timeout: tandem.Duration(300 * time.Millisecond)})
	if j := waitJob(t, cl, slow.ID, ended); j.State != tandem.JobFailed || !strings.Contains(j.Attempts[0].Reason, "timed out") {
		t.Fatalf("timeout: %s %q", j.State, j.Attempts[0].Reason)
	}
}

// An agent that has seen a newer epoch of a shard deposes a server that
// still thinks it owns it (fencing reaches the resources too): its term ends
// at once, and its answer vouches for nothing of that shard.
func TestSyncFromNewerEpochDeposesServer(t *testing.T) {
	c := newCluster(t, 1, nil)
	n := c.nodes[c.waitActive()]
	epoch, _ := n.srv.ActiveEpoch()
	resp, err := n.srv.Sync(context.Background(), &tandem.SyncRequest{
		Agent: tandem.AgentInfo{ID: "a9", URL: "http://" + liveAddr(t)}, Epochs: map[int]int64{0: epoch + 1000},
	})
	if err != nil {
		t.Fatalf("sync with a newer epoch: %v", err)
	}
	for _, st := range resp.Terms {
		if st.Shard == 0 && st.Epoch == epoch {
			t.Fatalf("the answer still vouches for shard 0 at the older epoch %d: %+v", epoch, resp.Terms)
		}
	}
	if e, ok := n.srv.ActiveEpoch(); ok && e == epoch {
		t.Fatal("the server kept acting as active at the older epoch")
	}
}

var _ = fmt.Sprint
var _ = server.FailpointExitAfterAssign

// Killing a job whose attempt is recorded but not yet reported started
// ends the job at once; if the agent had in fact launched it, its report
// gets a kill order and changes nothing (I4: never two live attempts, and
// no attempt the records say is over keeps running). The test speaks the
// agent protocol itself, to hold the attempt between assignment and report.
func TestKillBeforeTheAgentReportsStart(t *testing.T) {
	c := newCluster(t, 1, nil)
	n := c.nodes[c.waitActive()]
	cl := c.client()
	ctx := context.Background()
	info := tandem.AgentInfo{ID: "fake", URL: "http://" + liveAddr(t), Capacity: smallAgent, StartedAt: time.Now()}
	var seq uint64
	sync := func(req tandem.SyncRequest) *tandem.SyncResponse {
		t.Helper()
		seq++
		req.Agent, req.Seq = info, seq
		resp, err := n.srv.Sync(ctx, &req)
		if err != nil {
			t.Fatalf("sync: %v", err)
		}
		return resp
	}
	first := sync(tandem.SyncRequest{}) // an agent that has not learned the epoch is answered at once
	if len(first.Terms) != 1 || first.Terms[0].Shard != 0 {
		t.Fatalf("terms in the first answer: got %+v, want shard 0", first.Terms)
	}
	epochs := map[int]int64{0: first.Terms[0].Epoch}
	j := submit(t, cl, tandem.JobSpec{Command: []string{"sleep", "60"}})
	resp := sync(tandem.SyncRequest{Epochs: epochs, WaitMS: 5000})
	if len(resp.Assign) != 1 || resp.Assign[0].JobID != j.ID {
		t.Fatalf("assignments: got %+v, want the job's attempt", resp.Assign)
	}
	attempt := resp.Assign[0].AttemptID
	killed, err := cl.KillJob(ctx, j.ID)
	if err != nil || killed.State != tandem.JobKilled || killed.Attempts[0].State != tandem.AttemptKilled {
		t.Fatalf("kill of a scheduled job: %+v %v, want killed at once", killed, err)
	}
	// The agent had launched it after all, and says so.
	now := time.Now()
	resp = sync(tandem.SyncRequest{Epochs: epochs, Running: []tandem.AttemptReport{
		{AttemptID: attempt, JobID: j.ID, State: tandem.AttemptRunning, PID: 4242, StartedAt: &now}}})
	if len(resp.Kill) != 1 || resp.Kill[0].AttemptID != attempt || len(resp.Assign) != 0 {
		t.Fatalf("answer to a report of the killed attempt: kill %+v assign %+v; want a kill order and nothing new", resp.Kill, resp.Assign)
	}
	got, err := cl.GetJob(ctx, j.ID)
	if err != nil || got.State != tandem.JobKilled || len(got.Attempts) != 1 || got.Attempts[0].State != tandem.AttemptKilled {
		t.Fatalf("job after the late report: %+v %v, want still killed with one killed attempt", got, err)
	}
	// An older sync of the same agent process is refused, so it cannot undo a later report.
	seq -= 2
	if _, err := n.srv.Sync(ctx, &tandem.SyncRequest{Agent: info, Seq: seq}); tandem.ErrorCode(err) != tandem.ECONFLICT {
		t.Fatalf("stale sync: got %v, want %s", err, tandem.ECONFLICT)
	}
}
