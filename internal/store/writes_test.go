package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/store"
)

// scheduled returns job id as placed on agent: its record as the view has
// it, changed to carry attempt 1, and the revision it was read at.
func scheduled(t *testing.T, s *store.Store, id, agent string, epoch int64) (*tandem.Job, int64) {
	t.Helper()
	j, rev, err := s.JobWithRev(id)
	if err != nil {
		t.Fatal(err)
	}
	j.State = tandem.JobScheduled
	j.Attempts = []tandem.Attempt{{ID: id + "-1", Number: 1, Agent: agent, Epoch: epoch, State: tandem.AttemptScheduled}}
	return j, rev
}

// A batch of placements commits whole, in one revision; a batch with any
// comparison that fails (a stale job record, a stale placement record, a
// fence that no longer holds) writes nothing at all.
func TestWriteJobsCommitsWholeOrNothing(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	ctx := context.Background()
	f1, _ := acquireShard(t, cli, "a", grant(t, cli), 1, 4)
	f2, _ := acquireShard(t, cli, "a", grant(t, cli), 2, 4)
	ids := []string{"j1", "j2", "j3", "j4"}
	for i, id := range ids {
		f := f1
		if i%2 == 1 {
			f = f2
		}
		if _, _, err := s.CreateJob(ctx, f, job(id), "", ""); err != nil {
			t.Fatal(err)
		}
	}
	pending := func() []string {
		var out []string
		for _, id := range ids {
			j, err := s.Job(id)
			if err != nil {
				t.Fatal(err)
			}
			if j.State == tandem.JobPending {
				out = append(out, id)
			}
		}
		return out
	}
	batch := func(stale string) ([]store.JobWrite, []store.Placement) {
		var w []store.JobWrite
		for i, id := range ids[:2] {
			f, agent := f1, "w1"
			if i%2 == 1 {
				f, agent = f2, "w2"
			}
			j, rev := scheduled(t, s, id, agent, f.Rev)
			if id == stale {
				rev--
			}
			w = append(w, store.JobWrite{Fence: f, Job: j, Rev: rev})
		}
		_, r1 := s.AgentLoad("w1")
		_, r2 := s.AgentLoad("w2")
		return w, []store.Placement{{Agent: "w1", Rev: r1, Attempt: "j1-1"}, {Agent: "w2", Rev: r2, Attempt: "j2-1"}}
	}

	// A stale job record: nothing written.
	w, p := batch("j2")
	if _, err := s.WriteJobs(ctx, w, p); !errors.Is(err, store.ErrBatchConflict) {
		t.Fatalf("batch with a stale job record: got %v, want ErrBatchConflict", err)
	}
	// A stale placement record: nothing written.
	w, p = batch("")
	p[1].Rev++
	if _, err := s.WriteJobs(ctx, w, p); !errors.Is(err, store.ErrBatchConflict) {
		t.Fatalf("batch with a stale placement record: got %v, want ErrBatchConflict", err)
	}
	if got := pending(); fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("after refused batches: pending %v, want all of %v", got, ids)
	}
	// Up to date: both jobs and both placement records at one revision.
	w, p = batch("")
	rev, err := s.WriteJobs(ctx, w, p)
	if err != nil {
		t.Fatalf("batch: %v", err)
	}
	if got := pending(); fmt.Sprint(got) != "[j3 j4]" {
		t.Fatalf("after the batch: pending %v, want [j3 j4]", got)
	}
	for _, a := range []string{"w1", "w2"} {
		live, prev := s.AgentLoad(a)
		if len(live) != 1 || prev != rev {
			t.Fatalf("agent %s after the batch: %d live jobs, placement record at %d; want 1, at %d", a, len(live), prev, rev)
		}
	}
	for _, id := range ids[:2] {
		if _, jrev, _ := s.JobWithRev(id); jrev != rev {
			t.Fatalf("job %s written at %d, want the batch's revision %d", id, jrev, rev)
		}
	}
	// Shard 2 moves away: a batch with one job of it writes nothing, not
	// even the shard 1 job.
	if _, err := cli.Delete(ctx, f2.Key); err != nil {
		t.Fatal(err)
	}
	ids = ids[2:]
	w, p = batch("")
	if _, err := s.WriteJobs(ctx, w, p); !errors.Is(err, store.ErrBatchConflict) {
		t.Fatalf("batch with a lost fence: got %v, want ErrBatchConflict", err)
	}
	if got := pending(); fmt.Sprint(got) != "[j3 j4]" {
		t.Fatalf("after a fenced batch: pending %v, want [j3 j4]", got)
	}
	// One job twice (etcd takes a key once per transaction): refused
	// before it is sent, as a conflict, so the caller writes one by one.
	w, p = batch("")
	w[1] = w[0]
	w[1].Fence = f1
	if _, err := s.WriteJobs(ctx, w, p[:1]); !errors.Is(err, store.ErrBatchConflict) {
		t.Fatalf("batch with a job twice: got %v, want ErrBatchConflict", err)
	}
	// Too many for one transaction: refused before it is sent, and not as
	// a conflict (a caller's bug, not a race).
	if _, err := s.WriteJobs(ctx, make([]store.JobWrite, store.MaxWriteBatch+1), nil); err == nil || errors.Is(err, store.ErrBatchConflict) {
		t.Fatalf("a batch over MaxWriteBatch: got %v, want a refusal that is not a conflict", err)
	}
}
