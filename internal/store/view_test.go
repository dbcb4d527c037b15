package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/store"
)

// AgentChanged wakes a poll for the agent whose live jobs change, and
// only that one: another agent's placement and a new pending job leave it
// asleep. LiveJobs says what LiveOn says, job by job.
func TestAgentChangedFiresForItsAgentOnly(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	ctx := context.Background()
	f, _ := acquire(t, cli, "a", grant(t, cli))
	for _, id := range []string{"j1", "j2", "j3"} {
		if _, _, err := s.CreateJob(ctx, f, job(id), "", ""); err != nil {
			t.Fatal(err)
		}
	}
	place := func(id, agent string) {
		t.Helper()
		j, rev, err := s.JobWithRev(id)
		if err != nil {
			t.Fatal(err)
		}
		j.State = tandem.JobScheduled
		j.Attempts = append(j.Attempts, tandem.Attempt{ID: id + "-1", Number: 1, Agent: agent, Epoch: f.Rev, State: tandem.AttemptScheduled})
		_, placed := s.AgentLoad(agent)
		if _, err := s.UpdateJob(ctx, f, j, rev, &store.Placement{Agent: agent, Rev: placed, Attempt: id + "-1"}); err != nil {
			t.Fatalf("place %s on %s: %v", id, agent, err)
		}
	}
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}

	w1, w2 := s.AgentChanged("w1"), s.AgentChanged("w2")
	place("j1", "w1")
	if !closed(w1) {
		t.Fatalf("w1's channel after a job was placed on w1: open, want closed")
	}
	if closed(w2) {
		t.Fatalf("w2's channel after a job was placed on w1: closed, want open")
	}

	w1 = s.AgentChanged("w1")
	if _, _, err := s.CreateJob(ctx, f, job("j4"), "", ""); err != nil {
		t.Fatal(err)
	}
	place("j2", "w2")
	if closed(w1) {
		t.Fatalf("w1's channel after a submission and a placement on w2: closed, want open")
	}
	if !closed(w2) {
		t.Fatalf("w2's channel after a job was placed on w2: open, want closed")
	}

	// A change of a live job's record (a kill request) wakes its agent.
	j, rev, err := s.JobWithRev("j1")
	if err != nil {
		t.Fatal(err)
	}
	j.KillRequested = true
	if _, err := s.UpdateJob(ctx, f, j, rev, nil); err != nil {
		t.Fatal(err)
	}
	if !closed(w1) {
		t.Fatalf("w1's channel after a kill request of its job: open, want closed")
	}

	live := s.LiveJobs("w1")
	want := store.LiveJob{ID: "j1", Attempt: "j1-1", State: tandem.AttemptScheduled, KillRequested: true,
		Resources: tandem.Resources{CPU: tandem.DefaultCPU, MemoryMB: tandem.DefaultMemoryMB}}
	if len(live) != 1 || live[0] != want {
		t.Fatalf("LiveJobs(w1): got %+v, want [%+v]", live, want)
	}
	if on := s.LiveOn("w1"); len(on) != 1 || on[0].ID != "j1" {
		t.Fatalf("LiveOn(w1): got %d jobs, want j1 alone", len(on))
	}
}

// The view keeps its own copy of a job it is handed: what the creator
// does to its job afterwards, even inside the spec's maps and command,
// does not show in the view, and jobs with the same labels read back
// equal however the view holds them.
func TestViewKeepsItsOwnCopyOfCreatedJobs(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	ctx := context.Background()
	f, _ := acquire(t, cli, "a", grant(t, cli))
	mk := func(id string) *tandem.Job {
		j := job(id)
		j.Labels = map[string]string{"team": "analytics"}
		j.Command = []string{"sh", "-c", "true"}
		return j
	}
	j1, j2 := mk("j1"), mk("j2")
	for _, j := range []*tandem.Job{j1, j2} {
		if _, _, err := s.CreateJob(ctx, f, j, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	j1.Labels["team"] = "changed"
	j1.Command[2] = "false"
	j2.Labels["extra"] = "x"
	// The watch brings the writes back too; the view must still agree.
	resp, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.WaitRev(wctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"j1", "j2"} {
		got, err := s.Job(id)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Labels) != 1 || got.Labels["team"] != "analytics" {
			t.Fatalf("labels of %s in the view: got %v, want team=analytics", id, got.Labels)
		}
		if len(got.Command) != 3 || got.Command[2] != "true" {
			t.Fatalf("command of %s in the view: got %q, want [sh -c true]", id, got.Command)
		}
	}
}
