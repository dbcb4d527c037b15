package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/store"
)

func fireOf(sch *tandem.Schedule, rev int64, at time.Time, jobID string) *store.Fire {
	next := *sch
	next.Cursor = at
	j := job(jobID)
	j.ScheduleID, j.NominalTime = sch.ID, at
	return &store.Fire{Schedule: &next, Rev: rev,
		Runs: []store.RunRecord{{Key: layout.Fire(sch.ID, at, keys.RunScheduled), Run: tandem.ScheduleRun{
			ScheduleID: sch.ID, NominalTime: at, Count: 1, Outcome: tandem.OutcomeFired, JobID: jobID}}},
		Jobs: []*tandem.Job{j}}
}

// I1, I7: a fire is one transaction fenced by the owner's epoch, guarded by
// the schedule record's revision and by the absence of its run and job
// keys; the view indexes the schedule, its runs and its live jobs.
func TestFire(t *testing.T) {
	e := etcdtest.Start(t)
	cliA, cliB := e.Client(t), e.Client(t)
	a, b := newStore(t, cliA), newStore(t, cliB)
	ctx := context.Background()
	leaseA := grant(t, cliA)
	fa, _ := acquire(t, cliA, "a", leaseA)

	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sch := &tandem.Schedule{ID: "s1", Cursor: created, Version: 1, ScheduleSpec: tandem.ScheduleSpec{Every: tandem.Duration(time.Second)}}
	rev, err := a.CreateSchedule(ctx, fa, sch)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateSchedule(ctx, fa, sch); !errors.Is(err, store.ErrIDTaken) {
		t.Fatalf("create again: got %v, want ErrIDTaken", err)
	}
	t1 := created.Add(time.Second)
	rev1, err := a.Fire(ctx, fa, fireOf(sch, rev, t1, "j1"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := a.Schedule("s1")
	if !got.Cursor.Equal(t1) || got.Revision != rev1 || a.LiveRuns("s1") != 1 || len(a.Runs("s1")) != 1 || a.Runs("s1")[0].JobState != tandem.JobPending {
		t.Fatalf("after the fire: %+v, %d live, runs %+v", got, a.LiveRuns("s1"), a.Runs("s1"))
	}

	// The same decision again, on the stale revision: a conflict, nothing written.
	var conflict *store.ConflictError
	if _, err := a.Fire(ctx, fa, fireOf(sch, rev, t1, "j2")); !errors.As(err, &conflict) || conflict.Rev != rev1 {
		t.Fatalf("fire on a stale revision: got %v, want a conflict at %d", err, rev1)
	}
	// A run key that exists already: a conflict, though the revision is right.
	if _, err := a.Fire(ctx, fa, fireOf(got, rev1, t1, "j3")); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("fire of a recorded time: got %v, want a conflict", err)
	}
	// Too many operations for one transaction: refused before it is sent.
	big := fireOf(got, rev1, t1.Add(time.Second), "j4")
	for i := 0; i < store.MaxTxnOps; i++ {
		big.Prune = append(big.Prune, fmt.Sprintf("%sx%d", layout.Fires("s1"), i))
	}
	if _, err := a.Fire(ctx, fa, big); err == nil || errors.Is(err, store.ErrConflict) {
		t.Fatalf("fire of %d operations: got %v, want a refusal", store.MaxTxnOps+3, err)
	}

	// b takes the shard: a's fire, however right otherwise, is fenced.
	if _, err := cliA.Revoke(ctx, leaseA); err != nil {
		t.Fatal(err)
	}
	fb, won := acquire(t, cliB, "b", grant(t, cliB))
	if !won {
		t.Fatal("b did not win")
	}
	if _, err := a.Fire(ctx, fa, fireOf(got, rev1, t1.Add(time.Second), "j5")); !errors.Is(err, tandem.ErrFenced) {
		t.Fatalf("deposed owner's fire: got %v, want ErrFenced", err)
	}
	if n := countJobs(t, cliA); n != 1 {
		t.Fatalf("%d jobs in etcd, want 1", n)
	}
	// The new owner goes on from the stored cursor.
	if err := b.WaitRev(ctx, rev1); err != nil {
		t.Fatal(err)
	}
	cur, _ := b.Schedule("s1")
	t2 := cur.Cursor.Add(time.Second)
	rev2, err := b.Fire(ctx, fb, fireOf(cur, cur.Revision, t2, "j6"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.PruneRuns(ctx, fb, "s1", []string{layout.Fire("s1", t1, keys.RunScheduled)}); err != nil {
		t.Fatal(err)
	}
	if runs := b.Runs("s1"); len(runs) != 1 || !runs[0].NominalTime.Equal(t2) {
		t.Fatalf("runs after pruning: %+v", runs)
	}
	if err := b.DeleteSchedule(ctx, fb, "s1", rev2-1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete at a stale revision: got %v, want a conflict", err)
	}
	cur, _ = b.Schedule("s1")
	if err := b.DeleteSchedule(ctx, fb, "s1", cur.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Schedule("s1"); tandem.ErrorCode(err) != tandem.ENOTFOUND || len(b.Runs("s1")) != 0 {
		t.Fatalf("after delete: %v, runs %v", err, b.Runs("s1"))
	}
	if b.LiveRuns("s1") != 2 { // the jobs stay, and are still live
		t.Fatalf("live runs after delete: %d, want 2", b.LiveRuns("s1"))
	}
}

// I3 for schedules: a creation retried with the same idempotency key and
// spec returns the first schedule, whatever ID the retry proposed; the key
// with another spec is refused; jobs' keys are apart.
func TestCreateScheduleIdempotent(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	a := newStore(t, cli)
	ctx := context.Background()
	f, _ := acquire(t, cli, "a", grant(t, cli))
	spec := tandem.ScheduleSpec{Every: tandem.Duration(time.Second), Job: tandem.JobSpec{Command: []string{"true"}}}
	first := &tandem.Schedule{ID: "s1", Version: 1, ScheduleSpec: spec}
	got, _, created, err := a.CreateScheduleIdem(ctx, f, first, "k", spec.Hash())
	if err != nil || !created || got.ID != "s1" {
		t.Fatalf("first creation: %+v %v %v", got, created, err)
	}
	retry := &tandem.Schedule{ID: "s2", Version: 1, ScheduleSpec: spec}
	got, _, created, err = a.CreateScheduleIdem(ctx, f, retry, "k", spec.Hash())
	if err != nil || created || got.ID != "s1" {
		t.Fatalf("retry: %+v created=%v %v; want s1, not created", got, created, err)
	}
	other := spec
	other.Overlap = "allow"
	if _, _, _, err := a.CreateScheduleIdem(ctx, f, &tandem.Schedule{ID: "s3", ScheduleSpec: other}, "k", other.Hash()); tandem.ErrorCode(err) != tandem.EIDEMPOTENCY {
		t.Fatalf("the key with another spec: %v; want an idempotency error", err)
	}
	if _, _, err := a.CreateJob(ctx, f, job("j1"), "k", "h"); err != nil {
		t.Fatalf("a job with the same client key: %v; schedules' keys are apart from jobs'", err)
	}
	if _, err := a.Schedule("s2"); err == nil {
		t.Fatal("the retry made a second schedule")
	}
}
