package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
)

func countUnder(t *testing.T, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func TestFencedTxnBaselines(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()

	lat, err := FencedTxnLatency(ctx, cli, "/bench-test/seq/", 20, 300)
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != 20 {
		t.Errorf("FencedTxnLatency: got %d latencies, want 20", len(lat))
	}
	if n := countUnder(t, cli, "/bench-test/seq/"); n != 0 {
		t.Errorf("after FencedTxnLatency: got %d keys left under its prefix, want 0", n)
	}

	ops, lat, err := FencedTxnRate(ctx, cli, "/bench-test/rate/", 3, 300*time.Millisecond, 300, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ops == 0 || ops != len(lat) {
		t.Errorf("FencedTxnRate: got %d ops and %d latencies, want as many, more than 0", ops, len(lat))
	}
	if n := countUnder(t, cli, "/bench-test/rate/"); n != 0 {
		t.Errorf("after FencedTxnRate: got %d keys left under its prefix, want 0", n)
	}
}

// The group commit's baseline writes, per job, a record and an idempotency
// record, every job of a transaction at once, and cleans up; bad shapes are
// refused before anything is written.
func TestFencedBatchBaseline(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()
	const prefix = "/bench-test/batch/"
	// Count the keys the run wrote through a watch: they are gone after.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := cli.Watch(wctx, prefix, clientv3.WithPrefix())
	// loadEnded comes once, after the load and before the clean-up: the
	// keys are all still there.
	calls, atEnd := 0, int64(0)
	created, lat, err := FencedBatchRate(ctx, cli, prefix, 2, 300*time.Millisecond, 300, 5, func() {
		calls++
		atEnd = countUnder(t, cli, prefix+"k/")
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1 || atEnd != int64(created) {
		t.Errorf("loadEnded: called %d times, saw %d job records; want once, seeing all %d", calls, atEnd, created)
	}
	if created == 0 || created != 5*len(lat) {
		t.Fatalf("FencedBatchRate: %d jobs created in %d transactions, want 5 a transaction, more than 0", created, len(lat))
	}
	puts, jobs, idems := 0, 0, 0
	for puts < created*2+1 { // the fence, then every job's two records
		select {
		case wr := <-wch:
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				puts++
				switch k := string(ev.Kv.Key); {
				case strings.HasPrefix(k, prefix+"k/") && len(ev.Kv.Value) == 300:
					jobs++
				case strings.HasPrefix(k, prefix+"i/"):
					idems++
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("saw %d puts of the %d the run reported", puts, created*2+1)
		}
	}
	if jobs != created || idems != created {
		t.Errorf("the run wrote %d job records and %d idempotency records, want %d of each", jobs, idems, created)
	}
	if n := countUnder(t, cli, prefix); n != 0 {
		t.Errorf("after FencedBatchRate: got %d keys left under its prefix, want 0", n)
	}
	for _, jobs := range []int{0, GroupCommitMaxJobs + 1} {
		if _, _, err := FencedBatchRate(ctx, cli, prefix, 1, time.Second, 10, jobs, nil); err == nil {
			t.Errorf("FencedBatchRate with %d jobs a transaction: no error", jobs)
		}
	}
	// etcd's default limit holds the largest batch.
	if n, _, err := FencedBatchRate(ctx, cli, prefix, 1, 50*time.Millisecond, 10, GroupCommitMaxJobs, nil); err != nil || n == 0 {
		t.Errorf("FencedBatchRate with %d jobs a transaction: %d created, %v", GroupCommitMaxJobs, n, err)
	}
}

// A baseline's clean-up deletes every key under its prefix, however many
// (in chunks), and nothing else.
func TestBaselineCleanupDeletesInChunks(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()
	const prefix = "/bench-test/many/"
	n := 2*cleanupChunk + 7
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(i+100, n); j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%sk/%06d", prefix, j), "x"))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"/bench-test/many", "/bench-test/many0", "/bench-test/manz/"} {
		if _, err := cli.Put(ctx, k, "keep"); err != nil {
			t.Fatal(err)
		}
	}
	if got := countUnder(t, cli, prefix); got != int64(n) {
		t.Fatalf("%d keys under %s before the clean-up, want %d", got, prefix, n)
	}
	if err := baselineCleanup(ctx, cli, prefix); err != nil {
		t.Fatal(err)
	}
	if got := countUnder(t, cli, prefix); got != 0 {
		t.Errorf("%d keys left under %s, want 0", got, prefix)
	}
	if got := countUnder(t, cli, "/bench-test/"); got != 3 {
		t.Errorf("%d keys left under /bench-test/ beside the prefix, want the 3 outside it", got)
	}
}

// The baseline's transactions are really fenced: once the fence key is
// replaced they fail, as a deposed active's writes do.
func TestFencedTxnRateStopsWhenFenceMoves(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()
	const prefix = "/bench-test/moved/"
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// Wait for the run to have written something, then move the fence.
		for mctx.Err() == nil {
			resp, err := cli.Get(mctx, prefix+"k/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err == nil && resp.Count > 0 {
				_, _ = cli.Delete(mctx, prefix+"fence")
				_, _ = cli.Put(mctx, prefix+"fence", "other")
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	start := time.Now()
	_, _, err := FencedTxnRate(ctx, cli, prefix, 2, 30*time.Second, 10, nil)
	if !errors.Is(err, ErrFenceMoved) {
		t.Fatalf("got error %v, want ErrFenceMoved", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the run went on for %s after the fence moved", d)
	}
}

func TestJobWatchSeesStartAndEnd(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()
	layout := keys.New("default")
	w, err := watchJobs(ctx, cli, layout)
	if err != nil {
		t.Fatal(err)
	}
	put := func(j tandem.Job) {
		b, _ := json.Marshal(j)
		if _, err := cli.Put(ctx, layout.Job(j.ID), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	j := tandem.Job{ID: "j1", State: tandem.JobPending}
	put(j)
	j.State = tandem.JobScheduled
	j.Attempts = []tandem.Attempt{{ID: "j1-1", Number: 1, State: tandem.AttemptScheduled}}
	put(j)
	if s, err := w.wait(ctx, "j1", 200*time.Millisecond, func(s jobSeen) bool { return !s.started.IsZero() }); err == nil {
		t.Fatalf("a scheduled attempt counted as started: %+v", s)
	}
	j.State, j.Attempts[0].State, j.Attempts[0].StartedAt = tandem.JobRunning, tandem.AttemptRunning, &now
	put(j)
	s, err := w.wait(ctx, "j1", 10*time.Second, func(s jobSeen) bool { return !s.started.IsZero() })
	if err != nil {
		t.Fatal(err)
	}
	if s.ended {
		t.Errorf("a running job counted as ended")
	}
	j.State = tandem.JobSucceeded
	put(j)
	if _, err := w.wait(ctx, "j1", 10*time.Second, func(s jobSeen) bool { return s.ended }); err != nil {
		t.Fatal(err)
	}
}
