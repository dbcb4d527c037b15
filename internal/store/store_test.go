package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
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

// acquire makes id try to own the one shard of an active/standby cluster.
func acquire(t *testing.T, cli *clientv3.Client, id string, lease clientv3.LeaseID) (election.Fence, bool) {
	t.Helper()
	return acquireShard(t, cli, id, lease, 0, 1)
}

// acquireShard makes id try to own shard k of n.
func acquireShard(t *testing.T, cli *clientv3.Client, id string, lease clientv3.LeaseID, k, n int) (election.Fence, bool) {
	t.Helper()
	f, won, err := election.NewCandidate(cli, id, "http://"+id).TryAcquire(context.Background(), layout.Shard(k, n), lease, nil)
	if err != nil {
		t.Fatalf("%s: acquire shard %d: %v", id, k, err)
	}
	return f, won
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
	epochA, won := acquire(t, cliA, "a", leaseA)
	if !won {
		t.Fatal("a did not win an empty election")
	}
	if _, _, err := a.CreateJob(ctx, epochA, job("j1"), "", ""); err != nil {
		t.Fatalf("write by the active: %v", err)
	}
	if _, won := acquire(t, cliB, "b", grant(t, cliB)); won {
		t.Fatal("b won while a holds the leader key")
	}

	// a's lease ends (as after a long pause); b takes over.
	if _, err := cliB.Revoke(ctx, leaseA); err != nil {
		t.Fatal(err)
	}
	epochB, won := acquire(t, cliB, "b", grant(t, cliB))
	if !won || epochB.Rev <= epochA.Rev {
		t.Fatalf("b: won=%v epoch=%d, want a win with an epoch above %d", won, epochB.Rev, epochA.Rev)
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
	epoch1, _ := acquire(t, cli, "a", leaseA)

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
	epoch2, won := acquire(t, cli, "b", grant(t, cli))
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
	epoch, _ := acquire(t, cli, "a", grant(t, cli))

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

// I1 per shard: a write fenced by one shard's term fails once that shard
// has a new owner, while the owner of another shard writes on.
func TestFencingIsPerShard(t *testing.T) {
	e := etcdtest.Start(t)
	cliA, cliB := e.Client(t), e.Client(t)
	a := newStore(t, cliA)
	ctx := context.Background()
	leaseA, leaseB := grant(t, cliA), grant(t, cliB)
	a1, _ := acquireShard(t, cliA, "a", leaseA, 1, 4)
	a2, _ := acquireShard(t, cliA, "a", leaseA, 2, 4)
	if _, _, err := a.CreateJob(ctx, a1, job("one"), "", ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.CreateJob(ctx, a2, job("two"), "", ""); err != nil {
		t.Fatal(err)
	}
	// Shard 1 moves to b (a's key is deleted, as by a hand-off or deposition).
	if _, err := cliB.Delete(ctx, layout.Shard(1, 4).Owner); err != nil {
		t.Fatal(err)
	}
	b1, won := acquireShard(t, cliB, "b", leaseB, 1, 4)
	if !won || b1.Rev <= a1.Rev || b1.Key != a1.Key {
		t.Fatalf("b on shard 1: won=%v fence %v, want a win with a newer epoch of the same key than %v", won, b1, a1)
	}
	one, rev1, _ := a.JobWithRev("one")
	one.Reason = "written by a deposed owner"
	if _, err := a.UpdateJob(ctx, a1, one, rev1, nil); !errors.Is(err, tandem.ErrFenced) {
		t.Fatalf("write to shard 1 with a's old fence: got %v, want ErrFenced", err)
	}
	two, rev2, _ := a.JobWithRev("two")
	two.Reason = "still a's"
	if _, err := a.UpdateJob(ctx, a2, two, rev2, nil); err != nil {
		t.Fatalf("write to shard 2, still a's: %v", err)
	}
	// The owner's view shows each shard's owner.
	if err := a.WaitRev(ctx, b1.Rev); err != nil {
		t.Fatal(err)
	}
	if o := a.Owner(1); o == nil || o.ID != "b" || o.Epoch != b1.Rev {
		t.Fatalf("owner of shard 1 in the view: got %+v, want b at %d", o, b1.Rev)
	}
	if o := a.Owner(2); o == nil || o.ID != "a" || o.Epoch != a2.Rev {
		t.Fatalf("owner of shard 2 in the view: got %+v, want a at %d", o, a2.Rev)
	}
	if g := a.LastGone(1); g == nil || g.Prev.ID != "a" || g.Prev.Epoch != a1.Rev {
		t.Fatalf("last owner gone from shard 1: got %+v, want a at %d", g, a1.Rev)
	}
}

// Owners of two shards placing work on one agent at once: whichever commits
// second finds the agent's placement record changed, and nothing of its
// placement is written.
func TestPlacementOnOneAgentIsSerialised(t *testing.T) {
	e := etcdtest.Start(t)
	cliA, cliB := e.Client(t), e.Client(t)
	a, b := newStore(t, cliA), newStore(t, cliB)
	ctx := context.Background()
	fa, _ := acquireShard(t, cliA, "a", grant(t, cliA), 0, 2)
	fb, _ := acquireShard(t, cliB, "b", grant(t, cliB), 1, 2)
	if _, _, err := a.CreateJob(ctx, fa, job("ja"), "", ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.CreateJob(ctx, fb, job("jb"), "", ""); err != nil {
		t.Fatal(err)
	}
	now, _ := cliA.Get(ctx, "x")
	for _, s := range []*store.Store{a, b} {
		if err := s.WaitRev(ctx, now.Header.Revision); err != nil {
			t.Fatal(err)
		}
	}
	// Both read the agent's load from the same state: nothing placed yet.
	_, revA := a.AgentLoad("w1")
	_, revB := b.AgentLoad("w1")
	if revA != 0 || revB != 0 {
		t.Fatalf("placement record of a new agent: got %d and %d, want 0", revA, revB)
	}
	ja, jaRev, _ := a.JobWithRev("ja")
	ja.State = tandem.JobScheduled
	ja.Attempts = []tandem.Attempt{{ID: "ja-1", Number: 1, Agent: "w1", Epoch: fa.Rev, State: tandem.AttemptScheduled}}
	placedAt, err := a.UpdateJob(ctx, fa, ja, jaRev, &store.Placement{Agent: "w1", Rev: revA, Attempt: "ja-1"})
	if err != nil {
		t.Fatalf("first placement: %v", err)
	}
	jb, jbRev, _ := b.JobWithRev("jb")
	jb.State = tandem.JobScheduled
	jb.Attempts = []tandem.Attempt{{ID: "jb-1", Number: 1, Agent: "w1", Epoch: fb.Rev, State: tandem.AttemptScheduled}}
	_, err = b.UpdateJob(ctx, fb, jb, jbRev, &store.Placement{Agent: "w1", Rev: revB, Attempt: "jb-1"})
	var race *store.PlacementConflictError
	if !errors.As(err, &race) || !errors.Is(err, store.ErrPlacementConflict) || race.Rev != placedAt {
		t.Fatalf("second placement from a stale load: got %v, want a placement conflict at revision %d", err, placedAt)
	}
	if got, _, _ := b.JobWithRev("jb"); got.State != tandem.JobPending {
		t.Fatalf("job of the refused placement: %s, want still pending", got.State)
	}
	// From a view that has the first placement, the second one commits.
	if err := b.WaitRev(ctx, race.Rev); err != nil {
		t.Fatal(err)
	}
	live, revB := b.AgentLoad("w1")
	if len(live) != 1 || live[0].ID != "ja" || revB != placedAt {
		t.Fatalf("agent load after the first placement: %d live jobs, record at %d; want ja, at %d", len(live), revB, placedAt)
	}
	if _, err := b.UpdateJob(ctx, fb, jb, jbRev, &store.Placement{Agent: "w1", Rev: revB, Attempt: "jb-1"}); err != nil {
		t.Fatalf("placement from an up-to-date load: %v", err)
	}
}

// The number of shards is written once: later servers adopt it, and one
// that asks for another number is refused, naming both.
func TestClusterConfigIsFixedOnce(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	ctx := context.Background()
	for _, tc := range []struct {
		ask, want int
		mismatch  bool
	}{
		{ask: 64, want: 64},
		{ask: 0, want: 64},
		{ask: 64, want: 64},
		{ask: 8, want: 64, mismatch: true},
		{ask: 1, want: 64, mismatch: true},
	} {
		got, err := s.EnsureConfig(ctx, tc.ask)
		if got != tc.want || errors.Is(err, store.ErrShardsMismatch) != tc.mismatch {
			t.Fatalf("ask %d: got %d, %v; want %d, mismatch %v", tc.ask, got, err, tc.want, tc.mismatch)
		}
		if tc.mismatch && !strings.Contains(err.Error(), "--shards 64") {
			t.Fatalf("ask %d: the error should say what to use: %v", tc.ask, err)
		}
	}
	if c := s.ClusterConfig(); c == nil || c.Shards != 64 {
		t.Fatalf("config in the view: %+v, want 64 shards", c)
	}
	// A new cluster with no number asked for gets one shard.
	other := store.New(cli, keys.New("other"), slog.New(slog.DiscardHandler))
	if err := other.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if got, err := other.EnsureConfig(ctx, 0); got != 1 || err != nil {
		t.Fatalf("new cluster, no number asked: got %d, %v; want 1", got, err)
	}
}

// Fresh makes a read from the view linearizable: once it returns, the view
// holds every write etcd had committed when it was called, by any process,
// also when the last revision wrote nothing under the cluster's prefix.
func TestFreshViewHoldsEveryCommittedWrite(t *testing.T) {
	e := etcdtest.Start(t)
	view := newStore(t, e.Client(t))
	other := e.Client(t)
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("j%02d", i)
		if _, err := other.Put(ctx, layout.Job(id), `{"id":"`+id+`","state":"pending","command":["true"]}`); err != nil {
			t.Fatal(err)
		}
		last, err := other.Put(ctx, "/elsewhere", id) // a revision with nothing of the cluster's
		if err != nil {
			t.Fatal(err)
		}
		if err := view.Fresh(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := view.Job(id); err != nil {
			t.Fatalf("job %s, committed before Fresh, not in the view after it: %v", id, err)
		}
		if got := view.Rev(); got < last.Header.Revision {
			t.Fatalf("view at revision %d after Fresh, want at least %d", got, last.Header.Revision)
		}
	}
	// Concurrent callers share the reads of etcd's revision.
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := view.Fresh(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

// Idempotency keys are spread over leases of at most 128 keys each: with
// etcd authentication on, etcd checks every key already on a lease each
// time it attaches one more, so one lease for an hour's keys made every
// secured submission slower than the last.
func TestIdempotencyLeasesStaySmall(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s := newStore(t, cli)
	ctx := context.Background()
	f, won := acquire(t, cli, "a", grant(t, cli))
	if !won {
		t.Fatal("a did not win an empty election")
	}
	const n = 300
	for i := range n {
		if _, _, err := s.CreateJob(ctx, f, job(fmt.Sprintf("j%03d", i)), fmt.Sprintf("k%03d", i), "h"); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Get(ctx, layout.IdemPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	perLease := map[int64]int{}
	for _, kv := range resp.Kvs {
		perLease[kv.Lease]++
	}
	if len(resp.Kvs) != n || len(perLease) != 3 || perLease[0] != 0 {
		t.Fatalf("%d idempotency keys on leases %v; want %d keys on 3 leases of at most 128", len(resp.Kvs), perLease, n)
	}
	for l, k := range perLease {
		if k > 128 {
			t.Fatalf("lease %x carries %d keys, more than 128", l, k)
		}
	}
}

// SetIdempotencyTTL shortens I3's window: keys go on leases of the TTL and
// a quarter more; a TTL outside its bounds is refused.
func TestIdempotencyTTLIsSettable(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s := store.New(cli, layout, slog.New(slog.DiscardHandler))
	for _, bad := range []time.Duration{0, time.Second, store.MaxIdempotencyTTL + time.Hour} {
		if err := s.SetIdempotencyTTL(bad); err == nil {
			t.Errorf("idempotency TTL %s accepted", bad)
		}
	}
	if err := s.SetIdempotencyTTL(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	f, _ := acquire(t, cli, "a", grant(t, cli))
	if _, _, err := s.CreateJob(ctx, f, job("j1"), "k1", "h"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, layout.IdemPrefix(), clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("idempotency keys: %v %v", resp, err)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != 150 {
		t.Fatalf("idempotency key's lease: %d s, want 150 (2m and a quarter)", ttl.GrantedTTL)
	}
}
