package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// Concurrent submissions share etcd transactions (group commit); a bad one
// among them is refused alone, before any batch, and two with one
// idempotency key make one job (I3). Every acknowledged job is in etcd (I2).
func TestConcurrentSubmissionsWithABadOne(t *testing.T) {
	c := newCluster(t, 1, nil)
	srv := c.nodes[c.waitActive()].srv
	type call struct {
		spec tandem.JobSpec
		key  string
	}
	var calls []call
	for i := range 20 {
		calls = append(calls, call{spec(fmt.Sprintf("good-%d", i)), fmt.Sprintf("key-%d", i)})
	}
	calls = append(calls,
		call{tandem.JobSpec{Name: "bad"}, "key-bad"}, // no command
		call{spec("twice"), "key-twice"},
		call{spec("twice"), "key-twice"},
	)
	type result struct {
		job     *tandem.Job
		created bool
		err     error
	}
	got := make([]result, len(calls))
	var wg sync.WaitGroup
	for i, cl := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			got[i].job, got[i].created, got[i].err = srv.Submit(ctx, cl.spec, cl.key)
		}()
	}
	wg.Wait()
	for i := range 20 {
		if r := got[i]; r.err != nil || !r.created {
			t.Errorf("good submission %d: created=%v err=%v, want created", i, r.created, r.err)
		}
	}
	if r := got[20]; tandem.ErrorCode(r.err) != tandem.EINVALID {
		t.Errorf("bad submission: got %v (created=%v), want %s", r.err, r.created, tandem.EINVALID)
	}
	switch a, b := got[21], got[22]; {
	case a.err != nil || b.err != nil:
		t.Errorf("same key twice: got errors %v and %v, want one job", a.err, b.err)
	case a.job.ID != b.job.ID || a.created == b.created:
		t.Errorf("same key twice: got %s (created=%v) and %s (created=%v), want one job, created once",
			a.job.ID, a.created, b.job.ID, b.created)
	}
	if n := c.countJobs(); n != 21 {
		t.Fatalf("jobs stored: got %d, want 21", n)
	}
}
