package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/store"
)

// t0 is "now" for the retention tests; records finish relative to it.
var t0 = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return t0.Add(-d) }

func putJSON(t *testing.T, cli *clientv3.Client, key string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), key, string(b)); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// finishedJob is a job in state that last changed at.
func finishedJob(id string, state tandem.JobState, at time.Time) *tandem.Job {
	j := job(id)
	j.State, j.CreatedAt, j.UpdatedAt = state, at.Add(-time.Minute), at
	return j
}

func putJob(t *testing.T, cli *clientv3.Client, j *tandem.Job) { putJSON(t, cli, layout.Job(j.ID), j) }

func putRun(t *testing.T, cli *clientv3.Client, id string, state tandem.WorkflowState, at time.Time, steps ...*tandem.Job) {
	t.Helper()
	wf := &tandem.Workflow{ID: id, State: state, CreatedAt: at.Add(-time.Hour), UpdatedAt: at, Progress: map[string]tandem.StepRun{}}
	if state.Terminal() {
		wf.EndedAt = &at
	}
	for _, j := range steps {
		j.WorkflowID, j.Step = id, j.ID
		wf.Progress[j.ID] = tandem.StepRun{State: string(j.State), JobID: j.ID, Jobs: []string{j.ID}}
		putJob(t, cli, j)
	}
	putJSON(t, cli, layout.Workflow(id), wf)
}

func expiredIDs(xs []store.Expired) []string {
	var out []string
	for _, x := range xs {
		s := x.ID
		for _, st := range x.Steps {
			s += "+" + st.ID
		}
		out = append(out, s)
	}
	return out
}

func all(int) bool { return true }

// syncView waits until s's view holds every key cli wrote.
func syncView(t *testing.T, cli *clientv3.Client, s *store.Store) {
	t.Helper()
	resp, err := cli.Get(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitRev(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
}

// Retention selects exactly the finished records that are both older than
// the age and beyond the count; never a live job, a job with a live
// attempt, an unfinished run, a finished run with an unfinished step, or a
// step job apart from its run.
func TestExpiredSelectsExactly(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	day := 24 * time.Hour
	live := finishedJob("j06-killed-live", tandem.JobKilled, ago(9*day))
	live.Attempts = []tandem.Attempt{{ID: "a1", Agent: "ag1", State: tandem.AttemptRunning}}
	for _, j := range []*tandem.Job{
		finishedJob("j01-pending", tandem.JobPending, ago(30*day)),
		finishedJob("j02-running", tandem.JobRunning, ago(30*day)),
		finishedJob("j03-succeeded-old", tandem.JobSucceeded, ago(10*day)),
		finishedJob("j04-failed-old", tandem.JobFailed, ago(8*day)),
		finishedJob("j05-lost-young", tandem.JobLost, ago(6*day)),
		live,
		finishedJob("j07-sched-done", tandem.JobSucceeded, ago(9*day)),
		func() *tandem.Job { // a step job whose run is gone: an ordinary job
			j := finishedJob("j08-orphan-step", tandem.JobSucceeded, ago(9*day))
			j.WorkflowID = "w99-gone"
			return j
		}(),
	} {
		if j.ID == "j07-sched-done" {
			j.ScheduleID = "s1"
		}
		putJob(t, cli, j)
	}
	putRun(t, cli, "w01-running", tandem.WorkflowRunning, ago(20*day),
		finishedJob("j20-step-of-running", tandem.JobSucceeded, ago(20*day)))
	putRun(t, cli, "w02-done-old", tandem.WorkflowSucceeded, ago(11*day),
		finishedJob("j21-step", tandem.JobSucceeded, ago(12*day)), finishedJob("j22-step", tandem.JobFailed, ago(11*day)))
	putRun(t, cli, "w03-done-stray", tandem.WorkflowFailed, ago(11*day),
		finishedJob("j23-step-running", tandem.JobRunning, ago(11*day)))
	putRun(t, cli, "w04-done-young", tandem.WorkflowCancelled, ago(time.Hour),
		finishedJob("j24-step", tandem.JobKilled, ago(time.Hour)))
	s := newStore(t, cli)

	// Jobs old enough, oldest first: j03 (10d), j07, j08 (9d), j04 (8d);
	// runs: w02 (11d) only.
	for _, tc := range []struct {
		name string
		r    store.Retention
		want []string
	}{
		{"off", store.Retention{Age: 0}, nil},
		{"age only", store.Retention{Age: 7 * day}, []string{"w02-done-old+j21-step+j22-step", "j03-succeeded-old", "j07-sched-done", "j08-orphan-step", "j04-failed-old"}},
		{"older age", store.Retention{Age: 9*day + time.Hour}, []string{"w02-done-old+j21-step+j22-step", "j03-succeeded-old"}},
		// Finished jobs: j05 (young) and the four old: keep 3 keeps j05, j04, j08.
		// Runs: w04 (young) and w02 (old): keep 3 keeps both. j07 and j08
		// finished at once: the greater ID counts as the newer.
		{"count keeps the newest", store.Retention{Age: 7 * day, Keep: 3}, []string{"j03-succeeded-old", "j07-sched-done"}},
		{"count of one", store.Retention{Age: 7 * day, Keep: 1}, []string{"w02-done-old+j21-step+j22-step", "j03-succeeded-old", "j07-sched-done", "j08-orphan-step", "j04-failed-old"}},
		{"count keeps all old", store.Retention{Age: 7 * day, Keep: 5}, nil},
		{"count above all", store.Retention{Age: time.Minute, Keep: 100}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := expiredIDs(s.Expired(t0, tc.r, all, 0))
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	if got := s.Expired(t0, store.Retention{Age: 7 * day}, func(int) bool { return false }, 0); len(got) != 0 {
		t.Fatalf("got %v from no owned shard, want none", expiredIDs(got))
	}
	if got := expiredIDs(s.Expired(t0, store.Retention{Age: 7 * day}, all, 2)); len(got) != 2 {
		t.Fatalf("got %v with limit 2, want 2 records", got)
	}
}

// fencedEnv is a store whose one shard is owned by a, with finished jobs.
type fencedEnv struct {
	cli *clientv3.Client
	s   *store.Store
	f   election.Fence
}

func newFencedEnv(t *testing.T, jobs int) *fencedEnv {
	t.Helper()
	e := etcdtest.Start(t)
	env := &fencedEnv{cli: e.Client(t)}
	f, won := acquire(t, env.cli, "a", grant(t, env.cli))
	if !won {
		t.Fatal("a did not win the free shard")
	}
	env.f = f
	ops := []clientv3.Op{}
	for i := 0; i < jobs; i++ {
		j := finishedJob(fmt.Sprintf("j%04d", i), tandem.JobSucceeded, ago(time.Duration(jobs-i)*time.Minute+time.Hour))
		b, _ := json.Marshal(j)
		ops = append(ops, clientv3.OpPut(layout.Job(j.ID), string(b)))
		if len(ops) == 100 || i == jobs-1 {
			if _, err := env.cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	env.s = newStore(t, env.cli)
	return env
}

func (env *fencedEnv) lease(t *testing.T) clientv3.LeaseID {
	t.Helper()
	id, err := env.s.GrantTombstoneLease(context.Background(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

var anHour = store.Retention{Age: time.Hour}

// Removal deletes every expired record, in transactions within etcd's
// limit of operations, each with a tombstone; the view drops them; a
// removed record reads as removed, with its state and times.
func TestRemoveInBatchesWithTombstones(t *testing.T) {
	const n = 150 // more than one transaction can hold
	env := newFencedEnv(t, n)
	xs := env.s.Expired(t0, anHour, all, 0)
	if len(xs) != n {
		t.Fatalf("got %d expired, want %d", len(xs), n)
	}
	var batches []int
	res, err := env.s.Remove(context.Background(), env.f, xs, t0, env.lease(t), func(b []store.Expired) error {
		batches = append(batches, len(b))
		return nil
	})
	if err != nil {
		t.Fatalf("remove: %v", err)
	}
	if len(res.Removed) != n || res.Skipped != 0 {
		t.Fatalf("got %d removed, %d skipped; want %d, 0", len(res.Removed), res.Skipped, n)
	}
	if len(batches) < 2 || slices.Max(batches)*2 > store.MaxTxnOps {
		t.Fatalf("got batches %v, want several of at most %d records", batches, store.MaxTxnOps/2)
	}
	if got := countJobs(t, env.cli); got != 0 {
		t.Fatalf("got %d job keys in etcd, want 0", got)
	}
	if got := env.s.NumJobs(); got != 0 {
		t.Fatalf("got %d jobs in the view, want 0", got)
	}
	r, err := env.s.Removed(context.Background(), store.KindJob, "j0007")
	if err != nil || r == nil {
		t.Fatalf("tombstone of j0007: got %v, %v; want one", r, err)
	}
	if r.State != string(tandem.JobSucceeded) || !r.RemovedAt.Equal(t0) || r.Reason != store.ReasonRetention || r.FinishedAt.IsZero() {
		t.Fatalf("got tombstone %+v, want succeeded, removed at %s by retention", r, t0)
	}
	err = store.RemovedError(r)
	if !errors.Is(err, tandem.ErrRemoved) || tandem.HTTPStatus(tandem.ErrorCode(err)) != 410 {
		t.Fatalf("got %v (code %s), want an ERemoved error (410)", err, tandem.ErrorCode(err))
	}
	if r, err := env.s.Removed(context.Background(), store.KindJob, "never"); err != nil || r != nil {
		t.Fatalf("tombstone of a job never stored: got %+v, %v; want none", r, err)
	}
	// Tombstones expire: each is bound to the lease given.
	tomb, err := env.cli.Get(context.Background(), env.s.RemovedKey(store.KindJob, "j0007"))
	if err != nil || len(tomb.Kvs) != 1 || tomb.Kvs[0].Lease == 0 {
		t.Fatalf("tombstone key: got %v, %v; want one bound to a lease", tomb.Kvs, err)
	}
}

// I1: once another server owns the shard, the deposed owner's removal is
// fenced: nothing is deleted, no tombstone written.
func TestRemoveByDeposedOwnerIsFenced(t *testing.T) {
	env := newFencedEnv(t, 10)
	xs := env.s.Expired(t0, anHour, all, 0)
	// a's lease ends (a is deposed); b wins the shard.
	owner, err := env.cli.Get(context.Background(), env.f.Key)
	if err != nil || len(owner.Kvs) == 0 {
		t.Fatalf("read owner key: %v", err)
	}
	if _, err := env.cli.Revoke(context.Background(), clientv3.LeaseID(owner.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	fb, won := acquire(t, env.cli, "b", grant(t, env.cli))
	if !won {
		t.Fatal("b did not win the shard a lost")
	}
	archived := 0
	res, err := env.s.Remove(context.Background(), env.f, xs, t0, env.lease(t), func(b []store.Expired) error {
		archived += len(b)
		return nil
	})
	if !errors.Is(err, tandem.ErrFenced) {
		t.Fatalf("deposed owner's removal: got %v, want ErrFenced", err)
	}
	if len(res.Removed) != 0 {
		t.Fatalf("deposed owner removed %d records, want 0", len(res.Removed))
	}
	if got := countJobs(t, env.cli); got != 10 {
		t.Fatalf("got %d job keys after a fenced removal, want 10", got)
	}
	tombs, err := env.cli.Get(context.Background(), env.s.RemovedPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || tombs.Count != 0 {
		t.Fatalf("got %d tombstones (%v) after a fenced removal, want 0", tombs.Count, err)
	}
	if archived != 10 {
		t.Fatalf("got %d records handed to the archive, want 10 (archived before the delete is tried)", archived)
	}
	// The new owner removes them.
	res, err = env.s.Remove(context.Background(), fb, xs, t0, env.lease(t), nil)
	if err != nil || len(res.Removed) != 10 {
		t.Fatalf("new owner: got %d removed, %v; want 10, nil", len(res.Removed), err)
	}
}

// A record that changed since the view read it is not removed (its
// removal compares its mod revision); the rest of its batch is.
func TestRemoveSkipsChangedRecord(t *testing.T) {
	env := newFencedEnv(t, 20)
	xs := env.s.Expired(t0, anHour, all, 0)
	// j0005 is written again (say, its stray attempt's report) after the read.
	j := finishedJob("j0005", tandem.JobFailed, ago(2*time.Hour))
	putJob(t, env.cli, j)
	res, err := env.s.Remove(context.Background(), env.f, xs, t0, env.lease(t), nil)
	if err != nil {
		t.Fatalf("remove: %v", err)
	}
	if len(res.Removed) != 19 || res.Skipped != 1 {
		t.Fatalf("got %d removed, %d skipped; want 19, 1", len(res.Removed), res.Skipped)
	}
	if got, err := env.s.Job("j0005"); err != nil || got.State != tandem.JobFailed {
		t.Fatalf("changed job: got %v, %v; want it kept, failed", got, err)
	}
}

// A workflow run's step jobs go with their run, in its transaction, never
// before it; a run with more steps than a transaction holds goes with as
// many as fit, and its other steps are then removed as ordinary jobs.
func TestRemoveRunWithItsSteps(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	f, won := acquire(t, cli, "a", grant(t, cli))
	if !won {
		t.Fatal("a did not win the free shard")
	}
	var steps []*tandem.Job
	for i := 0; i < 80; i++ {
		steps = append(steps, finishedJob(fmt.Sprintf("j%03d", i), tandem.JobSucceeded, ago(3*time.Hour)))
	}
	putRun(t, cli, "w1", tandem.WorkflowSucceeded, ago(2*time.Hour), steps...)
	s := newStore(t, cli)
	syncView(t, cli, s)
	lease, err := s.GrantTombstoneLease(context.Background(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	xs := s.Expired(t0, anHour, all, 0)
	if len(xs) != 1 || xs[0].ID != "w1" || len(xs[0].Steps) != 80 {
		t.Fatalf("got %v, want w1 with its 80 steps", expiredIDs(xs))
	}
	res, err := s.Remove(context.Background(), f, xs, t0, lease, nil)
	if err != nil || len(res.Removed) != 1 {
		t.Fatalf("remove: got %d, %v; want the run removed", len(res.Removed), err)
	}
	if _, err := s.Workflow("w1"); tandem.ErrorCode(err) != tandem.ENOTFOUND {
		t.Fatalf("run after removal: got %v, want it gone from the view", err)
	}
	left := s.NumJobs()
	if removed := len(res.Removed[0].Steps); removed+left != 80 || left == 0 {
		t.Fatalf("got %d steps removed with the run and %d left, want some of each, 80 in all", removed, left)
	}
	if r, err := s.Removed(context.Background(), store.KindJob, res.Removed[0].Steps[0].ID); err != nil || r == nil || r.WorkflowID != "w1" {
		t.Fatalf("a removed step's tombstone: got %+v, %v; want one naming w1", r, err)
	}
	// The steps left are ordinary finished jobs now.
	xs = s.Expired(t0, anHour, all, 0)
	if len(xs) != left {
		t.Fatalf("got %d expired after the run went, want its %d steps left", len(xs), left)
	}
	if _, err := s.Remove(context.Background(), f, xs, t0, lease, nil); err != nil {
		t.Fatal(err)
	}
	if got := countJobs(t, cli); got != 0 {
		t.Fatalf("got %d job keys, want 0", got)
	}
}

// An archive that cannot write stops the removal before anything is
// deleted: history is never lost for want of an archive.
func TestRemoveStopsWhenArchiveFails(t *testing.T) {
	env := newFencedEnv(t, 5)
	xs := env.s.Expired(t0, anHour, all, 0)
	boom := errors.New("disk full")
	_, err := env.s.Remove(context.Background(), env.f, xs, t0, env.lease(t), func([]store.Expired) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the archive's error", err)
	}
	if got := countJobs(t, env.cli); got != 5 {
		t.Fatalf("got %d job keys, want all 5 kept", got)
	}
}
