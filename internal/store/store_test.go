package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/store"
)

var layout = keys.New("test")

func newStore(t *testing.T, cli *clientv3.Client) *store.Store {
	t.Helper()
	s := store.New(cli, layout, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatalf("start store: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func grant(t *testing.T, cli *clientv3.Client) clientv3.LeaseID {
	t.Helper()
	resp, err := cli.Grant(context.Background(), 30)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	return resp.ID
}

func acquire(t *testing.T, cli *clientv3.Client, id string, lease clientv3.LeaseID, h *election.Handoff) (int64, bool) {
	t.Helper()
	epoch, won, err := election.New(cli, layout, id, "http://"+id).TryAcquire(context.Background(), lease, h)
	if err != nil {
		t.Fatalf("%s: acquire: %v", id, err)
	}
	return epoch, won
}

func job(id string) *tandem.Job {
	return &tandem.Job{ID: id, JobSpec: tandem.JobSpec{Command: []string{"true"}}, State: tandem.JobPending}
}

func countJobs(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), layout.JobsPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("count jobs: %v", err)
	}
	return resp.Count
}

// I1: once another server holds the leader key, a write guarded by the old
// epoch is rejected by etcd and leaves nothing behind.
func TestWriteWithSupersededEpochIsFenced(t *testing.T) {
	e := etcdtest.Start(t)
	cliA, cliB := e.Client(t), e.Client(t)
	a, b := newStore(t, cliA), newStore(t, cliB)
	ctx := context.Background()

	leaseA := grant(t, cliA)
	epochA, won := acquire(t, cliA, "a", leaseA, nil)
	if !won {
		t.Fatal("a did not win an empty election")
	}
	if _, _, err := a.CreateJob(ctx, epochA, job("j1"), "", ""); err != nil {
		t.Fatalf("write by the active: %v", err)
	}
	if _, won := acquire(t, cliB, "b", grant(t, cliB), nil); won {
		t.Fatal("b won while a holds the leader key")
	}

	// a's lease ends (as after a long pause); b takes over.
	if _, err := cliB.Revoke(ctx, leaseA); err != nil {
		t.Fatal(err)
	}
	epochB, won := acquire(t, cliB, "b", grant(t, cliB), nil)
	if !won || epochB <= epochA {
		t.Fatalf("b: won=%v epoch=%d, want a win with an epoch above %d", won, epochB, epochA)
	}

	_, _, err := a.CreateJob(ctx, epochA, job("j2"), "k2", "h")
	if !errors.Is(err, tandem.ErrFenced) {
		t.Fatalf("write with the old epoch: got %v, want ErrFenced", err)
	}
	if _, _, err := b.CreateJob(ctx, epochB, job("j3"), "", ""); err != nil {
		t.Fatalf("write by the new active: %v", err)
	}
	if n := countJobs(t, cliA); n != 2 {
		t.Fatalf("jobs in etcd: got %d, want 2 (j1 and j3, not the fenced j2)", n)
	}
	if _, err := b.Job("j2"); !errors.Is(err, tandem.ErrNotFound) {
		t.Fatalf("fenced job in the view: got %v, want not found", err)
	}
	// The fenced write's idempotency key was not stored either: the key is free.
	if _, created, err := b.CreateJob(ctx, epochB, job("j4"), "k2", "h"); err != nil || !created {
		t.Fatalf("reuse of the fenced write's key: created=%v err=%v, want a new job", created, err)
	}
}

// I3: the same idempotency key and spec give the same job, also through a
// new active; the same key with another spec is refused.
func TestIdempotencyKeyAcrossEpochs(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	ctx := context.Background()
	leaseA := grant(t, cli)
	epoch1, _ := acquire(t, cli, "a", leaseA, nil)

	first, created, err := s.CreateJob(ctx, epoch1, job("j1"), "key-1", "spec-A")
	if err != nil || !created {
		t.Fatalf("first submission: created=%v err=%v", created, err)
	}
	again, created, err := s.CreateJob(ctx, epoch1, job("j2"), "key-1", "spec-A")
	if err != nil || created || again.ID != first.ID {
		t.Fatalf("retry: got id=%v created=%v err=%v, want id %s not created", again, created, err, first.ID)
	}
	_, _, err = s.CreateJob(ctx, epoch1, job("j3"), "key-1", "spec-B")
	if tandem.ErrorCode(err) != tandem.EIDEMPOTENCY {
		t.Fatalf("same key, other spec: got %v, want %s", err, tandem.EIDEMPOTENCY)
	}

	if _, err := cli.Revoke(ctx, leaseA); err != nil {
		t.Fatal(err)
	}
	epoch2, won := acquire(t, cli, "b", grant(t, cli), nil)
	if !won {
		t.Fatal("b did not win")
	}
	later, created, err := s.CreateJob(ctx, epoch2, job("j4"), "key-1", "spec-A")
	if err != nil || created || later.ID != first.ID {
		t.Fatalf("retry after failover: got %+v created=%v err=%v, want %s", later, created, err, first.ID)
	}
	if n := countJobs(t, cli); n != 1 {
		t.Fatalf("jobs: got %d, want 1", n)
	}
}

// Hot standby: another process's view follows every write, and a fresh view
// loads a large state in pages.
func TestViewFollowsAndLoadsInPages(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	writer, follower := newStore(t, cli), newStore(t, e.Client(t))
	ctx := context.Background()
	epoch, _ := acquire(t, cli, "a", grant(t, cli), nil)

	const n = 12001 // more than two load pages
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for k := i; k < min(i+100, n); k++ {
			ops = append(ops, clientv3.OpPut(layout.Job(fmt.Sprintf("j%06d", k)), fmt.Sprintf(`{"id":"j%06d","state":"pending","command":["true"]}`, k)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := writer.CreateJob(ctx, epoch, job("z-last"), "", ""); err != nil {
		t.Fatal(err)
	}
	// The writer shows its own write at once; the follower gets it from its
	// watch, so wait for etcd's current revision.
	now, err := cli.Get(ctx, "any-key")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := follower.WaitRev(wctx, now.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if err := writer.WaitRev(wctx, now.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if got := writer.NumJobs(); got != n+1 {
		t.Fatalf("writer view: got %d jobs, want %d", got, n+1)
	}
	if got := follower.NumJobs(); got != n+1 {
		t.Fatalf("follower view: got %d jobs, want %d", got, n+1)
	}
	fresh := newStore(t, e.Client(t))
	if got := fresh.NumJobs(); got != n+1 {
		t.Fatalf("fresh load: got %d jobs, want %d", got, n+1)
	}
	if got := fresh.LastJobID(); got != "z-last" {
		t.Fatalf("last job: got %q, want z-last", got)
	}
	page, next := fresh.Jobs("j000099", 3, "")
	if len(page) != 3 || page[0].ID != "j000100" || next != "j000102" {
		t.Fatalf("page after j000099: got %d jobs starting %v, next %q", len(page), page, next)
	}
}

// A hand-off reserves leadership for its target: nobody else can take the
// key, the target can, and if the target dies the reservation goes with it.
func TestHandOff(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	ctx := context.Background()
	leaseA, leaseB, leaseC := grant(t, cli), grant(t, cli), grant(t, cli)
	for id, l := range map[string]clientv3.LeaseID{"b": leaseB, "c": leaseC} {
		if err := s.Register(ctx, l, tandem.ServerInfo{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	epochA, _ := acquire(t, cli, "a", leaseA, nil)
	ea := election.New(cli, layout, "a", "http://a")
	if err := ea.HandOff(ctx, epochA, "b", leaseC); !errors.Is(err, election.ErrTargetGone) {
		t.Fatalf("hand-off with the wrong lease: got %v, want ErrTargetGone", err)
	}
	if err := ea.HandOff(ctx, epochA, "b", leaseB); err != nil {
		t.Fatalf("hand-off: %v", err)
	}
	if err := ea.HandOff(ctx, epochA, "b", leaseB); !errors.Is(err, tandem.ErrFenced) {
		t.Fatalf("second hand-off of the same epoch: got %v, want ErrFenced", err)
	}
	if err := s.WaitRev(ctx, epochA+1); err != nil {
		t.Fatal(err)
	}
	h := s.Handoff()
	if h == nil || h.To != "b" {
		t.Fatalf("hand-off in view: got %+v, want one to b", h)
	}
	if _, won := acquire(t, cli, "c", leaseC, h); won {
		t.Fatal("c took the leader key reserved for b")
	}
	// b dies before taking over: the reservation ends with its lease.
	if _, err := cli.Revoke(ctx, leaseB); err != nil {
		t.Fatal(err)
	}
	epochC, won := acquire(t, cli, "c", leaseC, nil)
	if !won || epochC <= epochA {
		t.Fatalf("c after b died: won=%v epoch=%d", won, epochC)
	}
}

// A second live process cannot register under an ID that is taken.
func TestRegisterRefusesDuplicateID(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	ctx := context.Background()
	l1, l2 := grant(t, cli), grant(t, cli)
	if err := s.Register(ctx, l1, tandem.ServerInfo{ID: "rm1", URL: "http://one"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(ctx, l1, tandem.ServerInfo{ID: "rm1", URL: "http://one", State: tandem.StateActive}); err != nil {
		t.Fatalf("update under the same lease: %v", err)
	}
	if err := s.Register(ctx, l2, tandem.ServerInfo{ID: "rm1", URL: "http://two"}); !errors.Is(err, store.ErrDuplicateServer) {
		t.Fatalf("duplicate: got %v, want ErrDuplicateServer", err)
	}
}
