package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/faultnet"
	"github.com/tandemhq/tandem/internal/keys"
)

// The tests of group commit (batch.go). They run against real etcd, in
// the package so that a batch can be formed on purpose: either by handing
// requests to flush, as the committer does, or by holding the committer
// so that concurrent CreateJob calls queue, as they do while a
// transaction is in flight.

var batchLayout = keys.New("batch")

// batchEnv is one etcd, a store on it and a fence the store may write with.
type batchEnv struct {
	cli   *clientv3.Client
	s     *Store
	lease clientv3.LeaseID
	f     election.Fence
}

func newBatchEnv(t *testing.T) *batchEnv {
	t.Helper()
	return newBatchEnvOn(t, etcdtest.Start(t).Client(t))
}

// newBatchEnvOn is newBatchEnv on cli's etcd.
func newBatchEnvOn(t *testing.T, cli *clientv3.Client) *batchEnv {
	t.Helper()
	s := New(cli, batchLayout, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatalf("start store: %v", err)
	}
	t.Cleanup(s.Close)
	env := &batchEnv{cli: cli, s: s}
	env.lease, env.f = env.own(t, "a")
	return env
}

// own makes id the owner of the cluster's one shard, on a new lease.
func (env *batchEnv) own(t *testing.T, id string) (clientv3.LeaseID, election.Fence) {
	t.Helper()
	resp, err := env.cli.Grant(context.Background(), 30)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	f, won, err := election.NewCandidate(env.cli, id, "http://"+id).TryAcquire(context.Background(), batchLayout.Shard(0, 1), resp.ID, nil)
	if err != nil || !won {
		t.Fatalf("%s: acquire the shard: won=%v err=%v", id, won, err)
	}
	return resp.ID, f
}

// sub is one submission: a job ID, an idempotency key and a spec hash.
type sub struct {
	id, key, spec string
	big           bool             // a record too large for any etcd request
	lease         clientv3.LeaseID // the key's lease instead of the store's (one revoked, say)
}

func (u sub) job() *tandem.Job {
	j := &tandem.Job{ID: u.id, JobSpec: tandem.JobSpec{Command: []string{"true"}}, State: tandem.JobPending}
	if u.big {
		j.Command = []string{"echo", strings.Repeat("x", 1600<<10)} // over etcd's 1.5 MiB
	}
	return j
}

// outcome is what one submission got.
type outcome struct {
	job     *tandem.Job
	created bool
	err     error
}

func (o outcome) String() string {
	if o.err != nil {
		return "error " + o.err.Error()
	}
	return fmt.Sprintf("job %s created=%v", o.job.ID, o.created)
}

// batch submits subs as one batch, the way the committer sends what has
// queued while a transaction was in flight, and returns their outcomes.
func (env *batchEnv) batch(t *testing.T, f election.Fence, subs ...sub) []outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var reqs []*createReq
	for _, u := range subs {
		r, err := env.s.newCreateReq(ctx, f, u.job(), u.key, u.spec)
		if err != nil {
			t.Fatalf("prepare %s: %v", u.id, err)
		}
		if u.lease != 0 {
			r.lease = u.lease
		}
		reqs = append(reqs, r)
	}
	env.s.flush(ctx, reqs)
	out := make([]outcome, len(reqs))
	for i, r := range reqs {
		out[i].job, out[i].created, out[i].err = env.s.awaitCreate(ctx, r)
	}
	return out
}

// stored returns the job records in etcd: ID -> mod revision.
func (env *batchEnv) stored(t *testing.T) map[string]int64 {
	t.Helper()
	resp, err := env.cli.Get(context.Background(), batchLayout.JobsPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatalf("read jobs: %v", err)
	}
	out := make(map[string]int64)
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), batchLayout.JobsPrefix())] = kv.ModRevision
	}
	return out
}

func wantCreated(t *testing.T, name string, o outcome, id string) {
	t.Helper()
	if o.err != nil || !o.created || o.job.ID != id {
		t.Errorf("%s: got %v, want job %s created", name, o, id)
	}
}

func wantReplay(t *testing.T, name string, o outcome, id string) {
	t.Helper()
	if o.err != nil || o.created || o.job.ID != id {
		t.Errorf("%s: got %v, want job %s, not created", name, o, id)
	}
}

func wantCode(t *testing.T, name string, o outcome, code string) {
	t.Helper()
	if o.err == nil || tandem.ErrorCode(o.err) != code {
		t.Errorf("%s: got %v, want an error %s", name, o, code)
	}
}

// I3 within a batch: the same key twice (or thrice) makes one job; the
// same key with another spec is refused; the other jobs of the batch are
// created with it, in one transaction.
func TestBatchDuplicateKey(t *testing.T) {
	env := newBatchEnv(t)
	got := env.batch(t, env.f,
		sub{id: "j1", key: "k1", spec: "A"},
		sub{id: "j2", key: "k1", spec: "A"}, // a retry that overtook nothing: same key, same spec
		sub{id: "j3", key: "k1", spec: "B"}, // same key, another spec
		sub{id: "j4"},
		sub{id: "j5", key: "k5", spec: "A"},
	)
	wantCreated(t, "first of k1", got[0], "j1")
	wantReplay(t, "second of k1", got[1], "j1")
	wantCode(t, "k1 with another spec", got[2], tandem.EIDEMPOTENCY)
	wantCreated(t, "without a key", got[3], "j4")
	wantCreated(t, "k5", got[4], "j5")

	st := env.stored(t)
	if len(st) != 3 || st["j1"] == 0 || st["j1"] != st["j4"] || st["j1"] != st["j5"] {
		t.Fatalf("stored jobs: got %v, want j1, j4 and j5 at one revision (one transaction)", st)
	}
	// The view shows every created job.
	for _, id := range []string{"j1", "j4", "j5"} {
		if _, err := env.s.Job(id); err != nil {
			t.Errorf("view: job %s: %v", id, err)
		}
	}
	// And the key stays j1's for a later submission too.
	wantReplay(t, "k1 later", env.batch(t, env.f, sub{id: "j6", key: "k1", spec: "A"})[0], "j1")
}

// I3 across batches: a key already stored gives its job, also to a
// duplicate within the batch, and the rest of the batch is created.
func TestBatchKeyAlreadyStored(t *testing.T) {
	env := newBatchEnv(t)
	wantCreated(t, "first", env.batch(t, env.f, sub{id: "j1", key: "k1", spec: "A"})[0], "j1")

	got := env.batch(t, env.f,
		sub{id: "j2", key: "k2", spec: "A"},
		sub{id: "j3", key: "k1", spec: "A"},
		sub{id: "j4", key: "k1", spec: "B"},
		sub{id: "j5", key: "k1", spec: "A"},
		sub{id: "j6"},
	)
	wantCreated(t, "k2", got[0], "j2")
	wantReplay(t, "k1 again", got[1], "j1")
	wantCode(t, "k1 with another spec", got[2], tandem.EIDEMPOTENCY)
	wantReplay(t, "k1 once more in the batch", got[3], "j1")
	wantCreated(t, "without a key", got[4], "j6")
	st := env.stored(t)
	if len(st) != 3 || st["j2"] == 0 || st["j6"] == 0 {
		t.Fatalf("stored jobs: got %v, want j1, j2 and j6", st)
	}
}

// One bad submission never fails the others of its batch: a record too
// large for etcd, a job whose ID is taken, and one whose key names a lease
// that is gone (etcd refuses the whole transaction for it) are refused
// alone.
func TestBatchBadJobAmongGood(t *testing.T) {
	env := newBatchEnv(t)
	wantCreated(t, "existing", env.batch(t, env.f, sub{id: "j0"})[0], "j0")
	gone, err := env.cli.Grant(context.Background(), 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.cli.Revoke(context.Background(), gone.ID); err != nil {
		t.Fatal(err)
	}

	got := env.batch(t, env.f,
		sub{id: "j1", key: "k1", spec: "A"},
		sub{id: "big", key: "kbig", spec: "A", big: true},
		sub{id: "j2", key: "k2", spec: "A"},
		sub{id: "j0", key: "k0", spec: "A"}, // ID taken
		sub{id: "j3"},
		sub{id: "j4", key: "k0", spec: "A"}, // rides on the refused j0's key, so goes again alone
		sub{id: "j5", key: "k5", spec: "A"},
		sub{id: "nolease", key: "kgone", spec: "A", lease: gone.ID},
		sub{id: "j6", key: "k6", spec: "A"},
		sub{id: "j7"},
	)
	for i, id := range map[int]string{0: "j1", 2: "j2", 4: "j3", 5: "j4", 6: "j5", 8: "j6", 9: "j7"} {
		wantCreated(t, id, got[i], id)
	}
	if got[1].err == nil {
		t.Errorf("too large: got %v, want an error", got[1])
	}
	if !errors.Is(got[3].err, ErrIDTaken) {
		t.Errorf("ID taken: got %v, want ErrIDTaken", got[3])
	}
	if got[7].err == nil {
		t.Errorf("lease gone: got %v, want an error", got[7])
	}
	st := env.stored(t)
	if len(st) != 8 || st["big"] != 0 || st["nolease"] != 0 {
		t.Fatalf("stored jobs: got %v, want j0 to j7, not big nor nolease", st)
	}
	// The refused jobs' keys are free.
	wantCreated(t, "kbig reused", env.batch(t, env.f, sub{id: "j8", key: "kbig", spec: "A"})[0], "j8")
	wantCreated(t, "kgone reused", env.batch(t, env.f, sub{id: "j9", key: "kgone", spec: "A"})[0], "j9")
}

// A batch never exceeds etcd's limit on the operations of a transaction:
// more jobs than fit go in several transactions, every one created.
func TestBatchSplitsAtEtcdLimits(t *testing.T) {
	env := newBatchEnv(t)
	const n = 150
	var subs []sub
	for i := range n {
		subs = append(subs, sub{id: fmt.Sprintf("j%03d", i), key: fmt.Sprintf("k%03d", i), spec: "A"})
	}
	for i, o := range env.batch(t, env.f, subs...) {
		wantCreated(t, subs[i].id, o, subs[i].id)
	}
	perRev := make(map[int64]int)
	for _, rev := range env.stored(t) {
		perRev[rev]++
	}
	// A job with a key costs two comparisons, the fence one more.
	const most = (MaxTxnOps - 1) / 2
	total := 0
	for rev, k := range perRev {
		if k > most {
			t.Errorf("revision %d holds %d jobs, more than the %d one transaction may", rev, k, most)
		}
		total += k
	}
	if total != n || len(perRev) != (n+most-1)/most {
		t.Fatalf("got %d jobs in %d transactions, want %d in %d", total, len(perRev), n, (n+most-1)/most)
	}
}

// hold makes the store's creations queue without being sent, as they do
// while a transaction is in flight; release sends what has queued.
func hold(t *testing.T, s *Store) (release func()) {
	t.Helper()
	b := &s.batch
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.running {
		t.Fatal("hold: a committer is running")
	}
	b.running = true
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.wg.Add(1)
		go s.commitLoop()
	}
}

func queued(s *Store) int {
	s.batch.mu.Lock()
	defer s.batch.mu.Unlock()
	return len(s.batch.pending)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 20s for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// createAsync calls CreateJob for each sub in its own goroutine.
func (env *batchEnv) createAsync(f election.Fence, subs []sub) (wait func() []outcome) {
	out := make([]outcome, len(subs))
	var wg sync.WaitGroup
	for i, u := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out[i].job, out[i].created, out[i].err = env.s.CreateJob(ctx, f, u.job(), u.key, u.spec)
		}()
	}
	return func() []outcome { wg.Wait(); return out }
}

// Concurrent CreateJob calls that queue behind a transaction go in one,
// the same key among them making one job.
func TestCreateJobGroupsConcurrentCalls(t *testing.T) {
	env := newBatchEnv(t)
	release := hold(t, env.s)
	var subs []sub
	for i := range 20 {
		subs = append(subs, sub{id: fmt.Sprintf("j%02d", i), key: fmt.Sprintf("k%02d", i%10), spec: "A"})
	}
	wait := env.createAsync(env.f, subs)
	waitFor(t, "20 queued creations", func() bool { return queued(env.s) == len(subs) })
	release()
	got := wait()
	byKey := make(map[string]string)
	created := 0
	for i, o := range got {
		if o.err != nil {
			t.Fatalf("%s: %v", subs[i].id, o.err)
		}
		if o.created {
			created++
		}
		if prev, ok := byKey[subs[i].key]; ok && prev != o.job.ID {
			t.Errorf("key %s: jobs %s and %s, want one", subs[i].key, prev, o.job.ID)
		}
		byKey[subs[i].key] = o.job.ID
	}
	st := env.stored(t)
	revs := make(map[int64]bool)
	for _, rev := range st {
		revs[rev] = true
	}
	if created != 10 || len(st) != 10 || len(revs) != 1 {
		t.Fatalf("got %d created, %d stored at %d revisions, want 10 and 10 at one", created, len(st), len(revs))
	}
}

// A failover cuts a batch in flight: the owner is deposed after the
// creations queued and before their transaction is sent. None is
// acknowledged and none is written (I1); the new owner creates each once
// when the submissions are retried with their keys (I3).
func TestBatchCutByFailover(t *testing.T) {
	env := newBatchEnv(t)
	release := hold(t, env.s)
	var subs []sub
	for i := range 10 {
		subs = append(subs, sub{id: fmt.Sprintf("a%02d", i), key: fmt.Sprintf("k%02d", i), spec: "A"})
	}
	wait := env.createAsync(env.f, subs)
	waitFor(t, "10 queued creations", func() bool { return queued(env.s) == len(subs) })
	if _, err := env.cli.Revoke(context.Background(), env.lease); err != nil { // the owner is deposed
		t.Fatal(err)
	}
	_, fb := env.own(t, "b")
	release()
	for i, o := range wait() {
		if !errors.Is(o.err, tandem.ErrFenced) {
			t.Errorf("%s: got %v, want ErrFenced", subs[i].id, o)
		}
	}
	if st := env.stored(t); len(st) != 0 {
		t.Fatalf("stored jobs: got %v, want none", st)
	}
	// The clients retry with the same keys (new IDs, as a new server makes).
	retry := append([]sub(nil), subs...)
	for i := range retry {
		retry[i].id = fmt.Sprintf("b%02d", i)
	}
	for i, o := range env.createAsync(fb, retry)() {
		wantCreated(t, retry[i].id, o, retry[i].id)
	}
	for i, o := range env.createAsync(fb, retry)() {
		wantReplay(t, retry[i].id+" again", o, retry[i].id)
	}
	if st := env.stored(t); len(st) != len(subs) {
		t.Fatalf("stored jobs: got %d, want %d", len(st), len(subs))
	}
}

// A failover in the middle of a stream of batches: whatever was
// acknowledged stays, and a retry of every submission with its key, through
// the new owner, gives exactly one job per key: the acknowledged one where
// there was one.
func TestBatchFailoverUnderLoad(t *testing.T) {
	env := newBatchEnv(t)
	const clients, perClient = 16, 20
	var acked atomic.Int64
	type result struct {
		key   string
		jobID string // acknowledged by the first owner, or ""
	}
	results := make(chan result, clients*perClient)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fenced := false
			for i := range perClient {
				key := fmt.Sprintf("k%02d-%02d", c, i)
				if fenced { // a client goes to the new owner with the rest
					results <- result{key, ""}
					continue
				}
				j := sub{id: fmt.Sprintf("a%02d-%02d", c, i), key: key, spec: "A"}.job()
				got, created, err := env.s.CreateJob(context.Background(), env.f, j, key, "A")
				switch {
				case err == nil && created:
					acked.Add(1)
					results <- result{key, got.ID}
				case errors.Is(err, tandem.ErrFenced):
					fenced = true
					results <- result{key, ""}
				default:
					t.Errorf("%s: created=%v err=%v, want created or ErrFenced", key, created, err)
					results <- result{key, ""}
				}
			}
		}()
	}
	waitFor(t, "acknowledged creations", func() bool { return acked.Load() >= clients })
	if _, err := env.cli.Revoke(context.Background(), env.lease); err != nil { // depose the owner mid-stream
		t.Fatal(err)
	}
	wg.Wait()
	close(results)
	_, fb := env.own(t, "b")

	var subs []sub
	first := make(map[string]string)
	for r := range results {
		first[r.key] = r.jobID
		subs = append(subs, sub{id: "b" + strings.TrimPrefix(r.key, "k"), key: r.key, spec: "A"})
	}
	for i, o := range env.createAsync(fb, subs)() {
		u := subs[i]
		switch want := first[u.key]; {
		case o.err != nil:
			t.Errorf("retry of %s: %v", u.key, o.err)
		case want != "" && (o.created || o.job.ID != want):
			t.Errorf("retry of %s: got %v, want the acknowledged job %s", u.key, o, want)
		}
	}
	st := env.stored(t)
	for key, id := range first {
		if id != "" && st[id] == 0 {
			t.Errorf("acknowledged job %s (key %s) is not in etcd", id, key)
		}
	}
	if len(st) != clients*perClient {
		t.Fatalf("stored jobs: got %d, want %d, one per key", len(st), clients*perClient)
	}
	t.Logf("%d acknowledged before the failover, of %d", acked.Load(), clients*perClient)
}

// resentReq prepares the creation of u as a request whose earlier send got
// no answer (unknown), under fence f, for a job accepted by "a" now.
func (env *batchEnv) resentReq(t *testing.T, f election.Fence, u sub) *createReq {
	t.Helper()
	j := u.job()
	j.Epoch, j.AcceptedBy, j.CreatedAt = f.Rev, "a", time.Now().UTC()
	r, err := env.s.newCreateReq(context.Background(), f, j, u.key, u.spec)
	if err != nil {
		t.Fatalf("prepare %s: %v", u.id, err)
	}
	r.unknown = true
	return r
}

// put writes a job record straight to etcd, as an earlier send that
// committed (or another server) would have.
func (env *batchEnv) put(t *testing.T, j *tandem.Job) {
	t.Helper()
	val, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.cli.Put(context.Background(), batchLayout.Job(j.ID), string(val)); err != nil {
		t.Fatal(err)
	}
}

func (env *batchEnv) flushReqs(t *testing.T, reqs ...*createReq) []outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	env.s.flush(ctx, reqs)
	out := make([]outcome, len(reqs))
	for i, r := range reqs {
		out[i].job, out[i].created, out[i].err = env.s.awaitCreate(ctx, r)
	}
	return out
}

// A batch sent again after its answer was lost finds the jobs its earlier
// send wrote and answers them created (I2: they are committed), even after
// the scheduler changed them and even once the fence is lost; a job key
// holding anything else is still someone else's.
func TestBatchResendRecognisesItsOwnCommit(t *testing.T) {
	env := newBatchEnv(t)
	mine := env.resentReq(t, env.f, sub{id: "mine", key: "kmine", spec: "A"})
	placed := env.resentReq(t, env.f, sub{id: "placed"})
	other := env.resentReq(t, env.f, sub{id: "other"})
	fresh := env.resentReq(t, env.f, sub{id: "fresh"})
	// The earlier send committed mine (with its idempotency key) and
	// placed; the scheduler has since moved placed on; other's ID holds
	// another job.
	if _, err := env.cli.Txn(context.Background()).Then(
		clientv3.OpPut(mine.key, mine.val), clientv3.OpPut(mine.ikey, mine.rec)).Commit(); err != nil {
		t.Fatal(err)
	}
	moved := *placed.job
	moved.State, moved.UpdatedEpoch = tandem.JobRunning, env.f.Rev
	env.put(t, &moved)
	stranger := *other.job
	stranger.CreatedAt = stranger.CreatedAt.Add(-time.Hour)
	env.put(t, &stranger)

	got := env.flushReqs(t, mine, placed, other, fresh)
	wantCreated(t, "mine", got[0], "mine")
	wantCreated(t, "placed", got[1], "placed")
	if !errors.Is(got[2].err, ErrIDTaken) {
		t.Errorf("other: got %v, want ErrIDTaken", got[2])
	}
	wantCreated(t, "fresh", got[3], "fresh")
	if j, err := env.s.Job("mine"); err != nil || j.ID != "mine" {
		t.Errorf("mine is not in the view: %v %v", j, err)
	}

	// The fence lost since the lost answer: the job the earlier send
	// wrote is still created; one it did not write is fenced.
	late := env.resentReq(t, env.f, sub{id: "late"})
	never := env.resentReq(t, env.f, sub{id: "never"})
	env.put(t, late.job)
	if _, err := env.cli.Delete(context.Background(), batchLayout.Shard(0, 1).Owner); err != nil {
		t.Fatal(err)
	}
	env.own(t, "b")
	got = env.flushReqs(t, late, never)
	wantCreated(t, "late, fence lost", got[0], "late")
	if !errors.Is(got[1].err, tandem.ErrFenced) {
		t.Errorf("never, fence lost: got %v, want ErrFenced", got[1])
	}
}

// A transaction whose answer does not come back (etcd unreachable: a
// proxy that forwards nothing, as with a proposal stuck at a dead etcd
// leader) is sent again once etcd answers, well before batchTimeout, and
// the job is created exactly once.
func TestBatchResentWhenUnanswered(t *testing.T) {
	e := etcdtest.Start(t)
	px, err := faultnet.Listen("127.0.0.1:0", strings.TrimPrefix(e.Endpoint, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + px.Addr()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	env := newBatchEnvOn(t, cli)
	s := env.s
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// A first job grants the store's idempotency lease, so the one sent
	// through the stall needs no etcd call but its transaction.
	if _, _, err := s.CreateJob(ctx, env.f, sub{id: "j0"}.job(), "k0", "A"); err != nil {
		t.Fatal(err)
	}
	px.Block()
	j := sub{id: "j1", key: "k1", spec: "A"}.job()
	j.Epoch, j.AcceptedBy, j.CreatedAt = env.f.Rev, "a", time.Now().UTC()
	type res struct {
		created bool
		err     error
	}
	done := make(chan res, 1)
	go func() {
		_, created, err := s.CreateJob(ctx, env.f, j, "k1", "A")
		done <- res{created, err}
	}()
	waitFor(t, "a send given up", func() bool { return s.batchResends.Load() >= 1 })
	px.Unblock()
	r := <-done
	if r.err != nil || !r.created {
		t.Fatalf("create through a stalled etcd: created=%v err=%v, want created", r.created, r.err)
	}
	direct := e.Client(t)
	resp, err := direct.Get(ctx, batchLayout.JobsPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 2 {
		t.Fatalf("jobs stored: %d, want j0 and j1", resp.Count)
	}
	t.Logf("sent again %d times", s.batchResends.Load())
}
