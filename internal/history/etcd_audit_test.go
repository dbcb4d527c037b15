package history

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/shard"
)

// auditScript writes a made-up cluster history into a real etcd, as owners
// and a deposed owner would, so AuditEtcd can be checked against it.
type auditScript struct {
	t      *testing.T
	e      *etcdtest.Etcd
	layout keys.Layout
	shards int
}

func (s auditScript) put(k, v string) int64 {
	s.t.Helper()
	r, err := s.e.Client(s.t).Put(context.Background(), k, v)
	if err != nil {
		s.t.Fatal(err)
	}
	return r.Header.Revision
}

func (s auditScript) del(k string) int64 {
	s.t.Helper()
	r, err := s.e.Client(s.t).Delete(context.Background(), k)
	if err != nil {
		s.t.Fatal(err)
	}
	return r.Header.Revision
}

// own makes id the owner of shard k and returns its epoch.
func (s auditScript) own(k int, id string) int64 {
	return s.put(s.layout.Shard(k, s.shards).Owner, `{"id":"`+id+`"}`)
}

func (s auditScript) job(j tandem.Job) int64 {
	b, _ := json.Marshal(j)
	return s.put(s.layout.Job(j.ID), string(b))
}

func (s auditScript) audit(upTo int64) *Audit {
	s.t.Helper()
	a, err := AuditEtcd(context.Background(), s.e.Client(s.t), s.layout, s.shards, upTo)
	if err != nil {
		s.t.Fatal(err)
	}
	return a
}

// jobIn returns a job ID of shard k, the n-th such.
func jobIn(k, shards, n int) string {
	for i := 0; ; i++ {
		id := fmt.Sprintf("job%d", i)
		if shard.Of(id, shards) == k {
			if n == 0 {
				return id
			}
			n--
		}
	}
}

// AuditEtcd finds every write not fenced by its shard owner's epoch, one of
// each kind, and says nothing of the writes that were.
func TestAuditEtcdFindsUnfencedWrites(t *testing.T) {
	const shards = 4
	s := auditScript{t: t, e: etcdtest.Start(t), layout: keys.New("audit"), shards: shards}
	good, stale, orphan, misfiled := jobIn(1, shards, 0), jobIn(1, shards, 1), jobIn(2, shards, 0), jobIn(1, shards, 2)

	e1 := s.own(1, "rm1")
	s.job(tandem.Job{ID: good, Shard: 1, State: tandem.JobPending, Epoch: e1, UpdatedEpoch: e1})
	s.job(tandem.Job{ID: stale, Shard: 1, State: tandem.JobPending, Epoch: e1, UpdatedEpoch: e1})
	s.job(tandem.Job{ID: good, Shard: 1, State: tandem.JobScheduled, Epoch: e1, UpdatedEpoch: e1,
		Attempts: []tandem.Attempt{{ID: good + "-1", Epoch: e1, State: tandem.AttemptScheduled}}})
	ended := s.del(s.layout.Shard(1, shards).Owner)
	e2 := s.own(1, "rm2")
	// The deposed rm1 writes on: its job write and its attempt carry e1.
	s.job(tandem.Job{ID: stale, Shard: 1, State: tandem.JobScheduled, Epoch: e1, UpdatedEpoch: e1,
		Attempts: []tandem.Attempt{{ID: stale + "-1", Epoch: e1, State: tandem.AttemptScheduled}}})
	// rm2 writes right, and records an attempt under rm1's old epoch.
	s.job(tandem.Job{ID: good, Shard: 1, State: tandem.JobRunning, Epoch: e1, UpdatedEpoch: e2,
		Attempts: []tandem.Attempt{{ID: good + "-1", Epoch: e1, State: tandem.AttemptRunning}, {ID: good + "-2", Epoch: e1}}})
	// Shard 2 never had an owner; a job claims a shard it is not in.
	s.job(tandem.Job{ID: orphan, Shard: 2, State: tandem.JobPending, Epoch: 7})
	last := s.job(tandem.Job{ID: misfiled, Shard: 3, State: tandem.JobPending, Epoch: e2, UpdatedEpoch: e2})

	a := s.audit(last)
	for _, want := range []string{
		fmt.Sprintf("I1: job %s was written at revision", stale),
		fmt.Sprintf("I1: attempt %s-1 was recorded at revision", stale),
		fmt.Sprintf("I1: attempt %s-2 was recorded at revision", good),
		fmt.Sprintf("I1: job %s was created at revision", orphan),
		fmt.Sprintf("job %s records shard 3, but its ID hashes to shard 1 of 4", misfiled),
	} {
		if !slices.ContainsFunc(a.Problems, func(p string) bool { return strings.Contains(p, want) }) {
			t.Errorf("no problem like %q; got:\n%s", want, strings.Join(a.Problems, "\n"))
		}
	}
	if len(a.Problems) != 5 {
		t.Errorf("got %d problems, want 5 (one per bad write):\n%s", len(a.Problems), strings.Join(a.Problems, "\n"))
	}
	wantTenures := []Tenure{{Shard: 1, Owner: "rm1", Epoch: e1, Ended: ended}, {Shard: 1, Owner: "rm2", Epoch: e2}}
	if !slices.Equal(a.Tenures, wantTenures) {
		t.Errorf("tenures: got %+v, want %+v", a.Tenures, wantTenures)
	}
	if o, ok := a.OwnerAt(1, ended-1); !ok || o.Owner != "rm1" {
		t.Errorf("owner of shard 1 at %d: got %+v %t, want rm1", ended-1, o, ok)
	}
	if _, ok := a.OwnerAt(1, ended); ok {
		t.Errorf("shard 1 had no owner at %d, when rm1's key went; got one", ended)
	}
}

// The versions AuditEtcd keeps say what a job's record showed at each
// revision, and after a compaction it says what it no longer knows.
func TestAuditEtcdVersionsAndCompaction(t *testing.T) {
	s := auditScript{t: t, e: etcdtest.Start(t), layout: keys.New("audit"), shards: 1}
	ep := s.own(0, "rm1")
	pendingJob := tandem.Job{ID: "a", State: tandem.JobPending, Epoch: ep, UpdatedEpoch: ep}
	created := s.job(pendingJob)
	running := pendingJob
	running.State, running.Attempts = tandem.JobRunning, []tandem.Attempt{{ID: "a-1", Epoch: ep, State: tandem.AttemptRunning}}
	ran := s.job(running)
	done := running
	done.State, done.Attempts = tandem.JobSucceeded, []tandem.Attempt{{ID: "a-1", Epoch: ep, State: tandem.AttemptSucceeded}}
	ended := s.job(done)
	last := s.put("/elsewhere", "x")

	pending, run, succeeded := ProgressOf(&pendingJob), ProgressOf(&running), ProgressOf(&done)
	tests := []struct {
		name     string
		p        *Progress
		from, to int64
		showed   bool
	}{
		{"no record before its creation", nil, created - 1, created - 1, true},
		{"no record once created", nil, created, last, false},
		{"pending when created", &pending, created, created, true},
		{"running within the range", &run, 0, ran, true},
		{"pending, once running, no more", &pending, ran, last, false},
		{"succeeded before it was", &succeeded, created, ended - 1, false},
		{"succeeded at the end", &succeeded, ended, ended, true},
		{"an unknown job never had a record", nil, 1, last, true},
	}
	a := s.audit(last)
	if len(a.Problems) != 0 {
		t.Fatalf("problems in a fenced history: %q", a.Problems)
	}
	for _, tt := range tests {
		job := "a"
		if strings.HasPrefix(tt.name, "an unknown") {
			job = "nobody"
		}
		if showed, known := a.Showed(job, tt.p, tt.from, tt.to); showed != tt.showed || !known {
			t.Errorf("%s: Showed(%s, [%d, %d]) = %t, %t; want %t, true", tt.name, job, tt.from, tt.to, showed, known, tt.showed)
		}
	}

	// Compact at the running version: the versions before it are gone, the
	// one in force then is known from the key as it was, and so is the
	// owner.
	if _, err := s.e.Client(t).Compact(context.Background(), ran); err != nil {
		t.Fatal(err)
	}
	last = s.put("/elsewhere", "y")
	a = s.audit(last)
	if a.CompactedAt != ran || len(a.Problems) != 0 {
		t.Fatalf("after compaction at %d: compacted at %d, problems %q", ran, a.CompactedAt, a.Problems)
	}
	if want := []Tenure{{Shard: 0, Owner: "rm1", Epoch: ep}}; !slices.Equal(a.Tenures, want) {
		t.Errorf("tenures after compaction: got %+v, want %+v", a.Tenures, want)
	}
	if showed, known := a.Showed("a", &pending, created, created); known {
		t.Errorf("pending at %d, before the compaction: got %t, known; want unknown", created, showed)
	}
	if showed, known := a.Showed("a", &run, ran, ended-1); !showed || !known {
		t.Errorf("running from the compaction on: got %t, %t; want true, true", showed, known)
	}
	if showed, known := a.Showed("a", nil, created-1, last); !showed || !known {
		t.Errorf("no record before its creation, after compaction: got %t, %t; want true, true", showed, known)
	}
}
