package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/archive"
	"github.com/tandemhq/tandem/internal/server"
)

// With retention on, the owner removes finished jobs once they are old
// enough (by its clock, moved here), from etcd and from every server's
// view; a removed job reads as removed (410, code removed) through the API
// and the client; removed records are in the owner's archive; a job still
// pending is never removed.
func TestRetentionRemovesFinishedJobs(t *testing.T) {
	var skew atomic.Int64 // how far the servers' clock runs ahead
	clock := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	dirs := map[string]string{}
	c := newCluster(t, 2, func(cfg *server.Config) {
		cfg.Clock = clock
		cfg.Retention.Age, cfg.Retention.Keep, cfg.Retention.Interval = time.Hour, 0, 20*time.Millisecond
		cfg.Retention.ArchiveDir = t.TempDir()
		dirs[cfg.ID] = cfg.Retention.ArchiveDir
	})
	active := c.waitActive()
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var done []string
	for i := 0; i < 3; i++ {
		j, err := cl.SubmitJob(ctx, spec("finished"), client.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.KillJob(ctx, j.ID); err != nil { // pending: killed at once, finished
			t.Fatal(err)
		}
		done = append(done, j.ID)
	}
	pending, err := cl.SubmitJob(ctx, spec("pending"), client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing is old enough yet: a pass removes nothing.
	c.nodes[active].srv.RetentionPass(ctx)
	if got := c.countJobs(); got != 4 {
		t.Fatalf("got %d jobs before they are old, want 4", got)
	}

	skew.Store(int64(2 * time.Hour)) // now every finished job is two hours old
	for _, n := range c.nodes {
		waitFor(t, "the finished jobs to leave "+n.srv.ID()+"'s view", 20*time.Second, func() bool {
			for _, id := range done {
				if _, err := n.srv.Store().Job(id); err == nil {
					return false
				}
			}
			return true
		})
	}
	if got := c.countJobs(); got != 1 {
		t.Fatalf("got %d jobs in etcd after retention, want 1 (the pending one)", got)
	}
	if j, err := cl.GetJob(ctx, pending.ID); err != nil || j.State != tandem.JobPending {
		t.Fatalf("pending job: got %v, %v; want it kept, pending", j, err)
	}

	// A removed job reads as removed, on every server.
	for _, n := range c.nodes {
		r := do(t, http.MethodGet, n.url+"/v1/jobs/"+done[0], "", "")
		if r.status == http.StatusTemporaryRedirect {
			r = do(t, http.MethodGet, r.header.Get("Location"), "", "")
		}
		if r.status != http.StatusGone || errorCode(r.body) != tandem.EREMOVED {
			t.Fatalf("GET a removed job from %s: got %d %s, want 410 code %s", n.srv.ID(), r.status, r.body, tandem.EREMOVED)
		}
		if msg := errorMessage(r.body); !strings.Contains(msg, "removed by retention") || !strings.Contains(msg, "killed") {
			t.Fatalf("got message %q, want it to say the job was removed by retention after it finished killed", msg)
		}
	}
	_, err = cl.GetJob(ctx, done[1])
	if !errors.Is(err, tandem.ErrRemoved) || !strings.Contains(err.Error(), done[1]) {
		t.Fatalf("client GetJob of a removed job: got %v, want ErrRemoved naming it", err)
	}
	// Killing it says so too, rather than that it never was.
	if _, err := cl.KillJob(ctx, done[1]); !errors.Is(err, tandem.ErrRemoved) {
		t.Fatalf("client KillJob of a removed job: got %v, want ErrRemoved", err)
	}
	r := do(t, http.MethodGet, c.nodes[active].url+"/v1/jobs/no-such-job", "", "")
	if r.status != http.StatusNotFound {
		t.Fatalf("GET a job that never was: got %d, want 404", r.status)
	}

	// The owner archived what it removed, before removing it.
	lines, err := archive.Read(dirs[c.nodes[active].srv.ID()])
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]tandem.JobState{}
	for _, l := range lines {
		var j tandem.Job
		if err := json.Unmarshal(l.Record, &j); err != nil || l.Kind != "jobs" || l.ID != j.ID {
			t.Fatalf("archive line %+v: %v", l, err)
		}
		got[j.ID] = j.State
	}
	for _, id := range done {
		if got[id] != tandem.JobKilled {
			t.Fatalf("archive: got %v, want each of %v, killed", got, done)
		}
	}

	m := do(t, http.MethodGet, c.nodes[active].url+"/metrics", "", "")
	for _, want := range []string{`tandem_retention_removed_total{kind="jobs"} 3`, "tandem_etcd_db_size_bytes ", "tandem_etcd_db_size_in_use_bytes "} {
		if !strings.Contains(m.body, want) {
			t.Fatalf("metrics lack %q", want)
		}
	}
}

// The owner of shard 0 compacts etcd's history; the servers' views keep
// following it.
func TestCompactionKeepsViewsWorking(t *testing.T) {
	c := newCluster(t, 2, func(cfg *server.Config) { cfg.Retention.CompactInterval = time.Second })
	active := c.waitActive()
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := cl.SubmitJob(ctx, spec("before"), client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cli := c.etcd.Client(t)
	waitFor(t, "etcd to be compacted past the first job's revision", 20*time.Second, func() bool {
		_, err := cli.Get(ctx, "x", clientv3.WithRev(2))
		return errors.Is(err, rpctypes.ErrCompacted)
	})
	j, err := cl.SubmitJob(ctx, spec("after"), client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		waitFor(t, n.srv.ID()+"'s view to hold the job submitted after compaction", 10*time.Second, func() bool {
			_, err1 := n.srv.Store().Job(j.ID)
			_, err2 := n.srv.Store().Job(first.ID)
			return err1 == nil && err2 == nil
		})
	}
	m := do(t, http.MethodGet, c.nodes[active].url+"/metrics", "", "")
	if strings.Contains(m.body, "tandem_etcd_compactions_total 0") || !strings.Contains(m.body, "tandem_etcd_compactions_total") {
		t.Fatalf("the active's metrics show no compaction")
	}
}

// Retention settings are validated with words that say what to change.
func TestRetentionConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*server.RetentionConfig)
		want string // "" for valid
	}{
		{"defaults", func(*server.RetentionConfig) {}, ""},
		{"off", func(r *server.RetentionConfig) { r.Age, r.Interval = 0, 0 }, ""},
		{"negative age", func(r *server.RetentionConfig) { r.Age = -time.Hour }, "retention age"},
		{"negative keep", func(r *server.RetentionConfig) { r.Keep = -1 }, "retention keep"},
		{"no interval", func(r *server.RetentionConfig) { r.Interval = 0 }, "retention interval"},
		{"short tombstones", func(r *server.RetentionConfig) { r.TombstoneTTL = time.Millisecond }, "tombstone TTL"},
		{"archive without retention", func(r *server.RetentionConfig) { r.Age, r.ArchiveDir = 0, "/tmp/x" }, "archive"},
		{"fast compaction", func(r *server.RetentionConfig) { r.CompactInterval = time.Millisecond }, "compaction interval"},
		{"compaction off", func(r *server.RetentionConfig) { r.CompactInterval = 0 }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := server.DefaultRetention()
			tc.mod(&r)
			err := r.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error about %q", err, tc.want)
			}
		})
	}
}

// With retention on and the active crashing while it removes, every
// acknowledged job is afterwards either in etcd (every one not finished) or
// removed by retention after finishing (absent, with a tombstone saying
// how it finished, and in the archive of the server that removed it):
// never missing, never a live job removed.
func TestRetentionAcrossFailoverLosesNothing(t *testing.T) {
	dirs := map[string]string{}
	c := newCluster(t, 3, func(cfg *server.Config) {
		cfg.Retention.Age, cfg.Retention.Keep, cfg.Retention.Interval = time.Millisecond, 0, 10*time.Millisecond
		cfg.Retention.TombstoneTTL = time.Hour
		cfg.Retention.ArchiveDir = t.TempDir()
		dirs[cfg.ID] = cfg.Retention.ArchiveDir
	})
	first := c.waitActive()
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	finished := map[string]bool{} // acknowledged job -> killed (finished)
	submit := func(n int) {
		for i := 0; i < n; i++ {
			j, err := cl.SubmitJob(ctx, spec("job"), client.SubmitOptions{})
			if err != nil {
				t.Fatalf("submit: %v", err)
			}
			finished[j.ID] = i%2 == 0
			if !finished[j.ID] {
				continue
			}
			// A retried kill may find the job already removed: the checks
			// below hold it to that.
			if _, err := cl.KillJob(ctx, j.ID); err != nil && tandem.ErrorCode(err) != tandem.ENOTFOUND {
				t.Fatalf("kill %s: %v", j.ID, err)
			}
		}
	}
	submit(20)
	c.crash(first)
	c.waitActive(first)
	submit(20)

	live := 0
	for _, f := range finished {
		if !f {
			live++
		}
	}
	waitFor(t, "every finished job to be removed", 30*time.Second, func() bool { return c.countJobs() == int64(live) })

	archived := map[string]bool{}
	for _, dir := range dirs {
		lines, err := archive.Read(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			archived[l.ID] = true
		}
	}
	cli := c.etcd.Client(t)
	for id, f := range finished {
		rec, err := cli.Get(ctx, "/tandem/test/jobs/"+id)
		if err != nil {
			t.Fatal(err)
		}
		tomb, err := cli.Get(ctx, c.nodes[0].srv.Store().RemovedKey("jobs", id))
		if err != nil {
			t.Fatal(err)
		}
		if !f {
			var j tandem.Job
			if len(rec.Kvs) != 1 || json.Unmarshal(rec.Kvs[0].Value, &j) != nil || j.State != tandem.JobPending || len(tomb.Kvs) != 0 {
				t.Fatalf("live job %s: got record %v and tombstone %v, want it kept, pending, no tombstone", id, rec.Kvs, tomb.Kvs)
			}
			continue
		}
		var r struct{ State string }
		if len(rec.Kvs) != 0 || len(tomb.Kvs) != 1 || json.Unmarshal(tomb.Kvs[0].Value, &r) != nil || r.State != string(tandem.JobKilled) {
			t.Fatalf("finished job %s: got record %v and tombstone %v, want it removed after finishing killed", id, rec.Kvs, tomb.Kvs)
		}
		if !archived[id] {
			t.Fatalf("finished job %s was removed but is in no server's archive", id)
		}
		// Its tombstone lives the TTL and at most a quarter more, not a
		// day more: tombstones are bounded by the TTL's removals.
		ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(tomb.Kvs[0].Lease))
		if err != nil {
			t.Fatal(err)
		}
		if want := int64((time.Hour + time.Hour/4).Seconds()); ttl.GrantedTTL != want {
			t.Fatalf("tombstone of %s: lease of %d s, want %d (the TTL and a quarter)", id, ttl.GrantedTTL, want)
		}
	}
}

// The owner of shard 0 defragments an etcd member whose database is mostly
// free (after a compaction), and the metrics show the database shrink.
func TestDefragmentation(t *testing.T) {
	c := newCluster(t, 1, func(cfg *server.Config) {
		cfg.Retention.DefragInterval, cfg.Retention.DefragMinFree = time.Second, 1
	})
	active := c.waitActive()
	cli := c.etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	big := strings.Repeat("x", 1<<20)
	for i := 0; i < 4; i++ { // 4 MiB written, then freed
		if _, err := cli.Put(ctx, "/scratch/"+string(rune('a'+i)), big); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Delete(ctx, "/scratch/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a defragmentation", 30*time.Second, func() bool {
		// bbolt frees the compacted pages only at a later write
		// transaction, and etcd updates the in-use size only when it
		// commits one: an idle cluster would show them in use forever.
		if _, err := cli.Put(ctx, "/scratch/tick", "x"); err != nil {
			t.Fatal(err)
		}
		m := do(t, http.MethodGet, c.nodes[active].url+"/metrics", "", "")
		return strings.Contains(m.body, "tandem_etcd_defrags_total 1") || strings.Contains(m.body, "tandem_etcd_defrags_total 2")
	})
	st, err := cli.Status(ctx, cli.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	if st.DbSize >= 4<<20 {
		t.Fatalf("etcd's database is %d bytes after defragmentation, want less than the 4 MiB freed", st.DbSize)
	}
}
