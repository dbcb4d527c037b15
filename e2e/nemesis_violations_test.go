package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/history"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/shard"
)

// fabricated writes a made-up cluster history into a real etcd, the way
// owners (and deposed ones) would, for the checks of TestNemesis to judge.
type fabricated struct {
	t      *testing.T
	cli    *clientv3.Client
	layout keys.Layout
	shards int
}

func newFabricated(t *testing.T, shards int) fabricated {
	return fabricated{t: t, cli: etcdtest.Start(t).Client(t), layout: keys.New("default"), shards: shards}
}

// own makes id the owner of shard k, deposing any owner, and returns its
// epoch.
func (f fabricated) own(k int, id string) int64 {
	f.t.Helper()
	key := f.layout.Shard(k, f.shards).Owner
	if _, err := f.cli.Delete(context.Background(), key); err != nil {
		f.t.Fatal(err)
	}
	return f.put(key, `{"id":"`+id+`"}`)
}

func (f fabricated) put(k, v string) int64 {
	f.t.Helper()
	r, err := f.cli.Put(context.Background(), k, v)
	if err != nil {
		f.t.Fatal(err)
	}
	return r.Header.Revision
}

func (f fabricated) write(j tandem.Job) int64 {
	b, _ := json.Marshal(j)
	return f.put(f.layout.Job(j.ID), string(b))
}

// remove removes job j as retention does: its record deleted and its
// tombstone, saying final, written in one transaction. It returns the
// revision.
func (f fabricated) remove(j tandem.Job, final tandem.JobState) int64 {
	f.t.Helper()
	tb, _ := json.Marshal(map[string]any{"kind": kindJob, "id": j.ID, "state": final, "finished_at": unixSec(2), "removed_at": unixSec(9), "reason": "retention"})
	r, err := f.cli.Txn(context.Background()).Then(clientv3.OpDelete(f.layout.Job(j.ID)),
		clientv3.OpPut(removedPrefix(f.layout)+kindJob+"/"+j.ID, string(tb))).Commit()
	if err != nil {
		f.t.Fatal(err)
	}
	return r.Header.Revision
}

// collect gives n what the fabricated etcd holds, as a run would.
func (f fabricated) collect(n *nemesis) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.collectEtcd(ctx, f.cli, f.layout); err != nil {
		f.t.Fatal(err)
	}
}

// wantProblems fails t unless each of want is part of a problem n reported.
func wantProblems(t *testing.T, n *nemesis, want []string) {
	t.Helper()
	for _, w := range want {
		found := false
		for _, p := range n.problems {
			found = found || strings.Contains(p, w)
		}
		if !found {
			t.Errorf("no problem reported like %q; got:\n%s", w, strings.Join(n.problems, "\n"))
		}
	}
}

// unixSec is a time s seconds into a made-up run.
func unixSec(s int) *time.Time { v := time.Unix(1000+int64(s), 0); return &v }

// succeededAttempt is attempt n of job id, run on agent from start to end.
func succeededAttempt(id string, n int, agent string, epoch int64, start, end int) tandem.Attempt {
	return tandem.Attempt{ID: fmt.Sprintf("%s-%d", id, n), Number: n, Agent: agent, Epoch: epoch,
		State: tandem.AttemptSucceeded, StartedAt: unixSec(start), EndedAt: unixSec(end)}
}

// The checks of TestNemesis catch what they are meant to: fed a run with one
// violation of each kind, each is reported, naming what broke.
func TestNemesisChecksCatchViolations(t *testing.T) {
	f := newFabricated(t, 1)
	e1 := f.own(0, "rm1")
	job := func(id string, state tandem.JobState, epoch int64, attempts ...tandem.Attempt) tandem.Job {
		return tandem.Job{ID: id, State: state, Epoch: epoch, UpdatedEpoch: epoch, Attempts: attempts}
	}
	okCreated := f.write(job("ok", tandem.JobPending, e1))
	okDone := f.write(job("ok", tandem.JobSucceeded, e1, succeededAttempt("ok", 1, "agent1", e1, 1, 2)))
	busyCreated := f.write(job("busy", tandem.JobRunning, e1, tandem.Attempt{ID: "busy-1", Number: 1, Agent: "agent1", Epoch: e1, State: tandem.AttemptRunning}))
	twiceCreated := f.write(job("twice", tandem.JobSucceeded, e1, succeededAttempt("twice", 1, "agent1", e1, 1, 5), succeededAttempt("twice", 2, "agent2", e1, 4, 6)))
	// Retention: "gone" is removed as it should be, after it succeeded;
	// "early" while it runs; "vanished" is deleted with no tombstone.
	goneJob := job("gone", tandem.JobSucceeded, e1, succeededAttempt("gone", 1, "agent1", e1, 1, 2))
	goneCreated := f.write(job("gone", tandem.JobPending, e1))
	goneDone := f.write(goneJob)
	goneRemoved := f.remove(goneJob, tandem.JobSucceeded)
	early := job("early", tandem.JobRunning, e1, tandem.Attempt{ID: "early-1", Number: 1, Agent: "agent1", Epoch: e1, State: tandem.AttemptRunning})
	f.write(early)
	earlyRemoved := f.remove(early, tandem.JobSucceeded)
	f.write(job("vanished", tandem.JobSucceeded, e1, succeededAttempt("vanished", 1, "agent1", e1, 1, 2)))
	r, err := f.cli.Delete(context.Background(), f.layout.Job("vanished"))
	if err != nil {
		t.Fatal(err)
	}
	vanished := r.Header.Revision
	// "hidden" is removed as it should be, but a server answers not found.
	hidden := job("hidden", tandem.JobSucceeded, e1, succeededAttempt("hidden", 1, "agent1", e1, 1, 2))
	f.write(hidden)
	hiddenRemoved := f.remove(hidden, tandem.JobSucceeded)
	e2 := f.own(0, "rm2")
	// The deposed rm1 writes on.
	last := f.write(job("stale", tandem.JobSucceeded, e1, succeededAttempt("stale", 1, "agent1", e1, 1, 2)))

	n := &nemesis{t: t, mode: nemesisModes[0], rec: history.NewRecorder(), ackedBy: map[string]int{}}
	f.collect(n)
	n.acked = []string{"ok", "lost", "busy", "twice", "gone", "early", "vanished"}
	n.final = map[string]*tandem.Job{"ok": n.records["ok"].Job, "busy": n.records["busy"].Job, "twice": n.records["twice"].Job}
	n.finalRemoved = map[string]bool{"gone": true, "early": true}
	// A pause that changed the owner, a CPU hog that did not, and one
	// under which the owner's lease ran out (a starved host: noted).
	n.faults = []faultRecord{
		{Kind: faultPauseShort, Target: "rm1", Role: "active", MustNot: true, WatchFrom: vanished, WatchTo: e2},
		{Kind: faultCPUHog, Target: "2 CPUs", MustNot: true, WatchFrom: okCreated, WatchTo: vanished},
		{Kind: faultCPUHog, Target: "2 CPUs", MustNot: true, WatchFrom: vanished, WatchTo: e2,
			Failovers: []tandem.FailoverEvent{{Shard: 0, Epoch: e2, ActiveID: "rm2", PrevID: "rm1", PrevEpoch: e1, Cause: tandem.CauseLeaseExpired}}},
	}
	n.launches = []launch{
		{Attempt: "ok-1", Job: "ok", Agent: "agent1", Epoch: e1, At: unixSec(1).UnixNano(), Line: 1},
		{Attempt: "ok-1", Job: "ok", Agent: "agent2", Epoch: e1, At: unixSec(1).UnixNano(), Line: 2},
		{Attempt: "ghost-1", Job: "ghost", Agent: "agent1", Epoch: e1, Line: 3},
		{Attempt: "twice-1", Job: "twice", Agent: "agent3", Epoch: e1, At: unixSec(1).UnixNano(), Line: 4},
		{Attempt: "twice-2", Job: "twice", Agent: "agent2", Epoch: e1, At: unixSec(4).UnixNano(), Line: 5},
		{Attempt: "stale-1", Job: "stale", Agent: "agent1", Epoch: e1 - 1, At: unixSec(1).UnixNano(), Line: 6},
		// A removed job's launch is checked against its last version.
		{Attempt: "gone-1", Job: "gone", Agent: "agent1", Epoch: e1, At: unixSec(1).UnixNano(), Line: 7},
		{Attempt: "gone-1", Job: "gone", Agent: "agent1", Epoch: e1, At: unixSec(1).UnixNano(), Line: 8},
	}
	t0 := n.rec.Start()
	ms := func(k int) time.Time { return t0.Add(time.Duration(k) * time.Millisecond) }
	from := func(server string, rev, asked int64) observation {
		return observation{Server: server, Revision: rev, Asked: asked}
	}
	okJob, running := n.records["ok"].Job, &tandem.Job{State: tandem.JobRunning, Attempts: []tandem.Attempt{{}}}
	n.observe(0, history.Submit, "ok", nil, ms(0), ms(1), from("rm1", okCreated, 0))
	n.observe(1, history.Read, "ok", okJob, ms(2), ms(3), from("rm1", okDone, okDone))
	// Client 2 reads from a server whose view is behind what client 1 saw.
	n.observe(2, history.Read, "ok", &tandem.Job{State: tandem.JobPending}, ms(4), ms(5), from("rm2", okCreated, 0))
	// Client 1 goes backwards itself: it did not carry its revision.
	n.observe(1, history.Read, "ok", &tandem.Job{State: tandem.JobPending}, ms(6), ms(7), from("rm3", okCreated, 0))
	// A view shows what etcd never held; a client does not read its own
	// submission.
	n.observe(3, history.Submit, "busy", nil, ms(8), ms(9), from("rm1", busyCreated, 0))
	n.observe(3, history.Read, "busy", running, ms(10), ms(11), from("rm1", last, busyCreated))
	n.observe(3, history.Read, "busy", n.records["ok"].Job, ms(12), ms(13), from("rm1", last, last))
	n.observe(3, history.Submit, "twice", nil, ms(14), ms(15), from("rm1", twiceCreated, busyCreated))
	n.observe(3, history.Read, "twice", nil, ms(16), ms(17), from("rm2", twiceCreated-1, 0))
	// Reads of a removed job: removed, in the state it finished in, after
	// it was seen succeeded, is linearizable; found again after, is not
	// (client 1 reads "early" from a stale view), nor is removed with no
	// tombstone ("lost").
	n.observe(0, history.Submit, "gone", nil, ms(20), ms(21), from("rm1", goneCreated, 0))
	n.observe(1, history.Read, "gone", &goneJob, ms(22), ms(23), from("rm1", goneDone, goneDone))
	n.observeRemoved(2, "gone", ms(24), ms(25), from("rm1", goneRemoved, 0))
	n.observeRemoved(0, "gone", ms(26), ms(27), from("rm2", goneRemoved, 0))
	n.observe(0, history.Submit, "early", nil, ms(30), ms(31), observation{})
	n.observeRemoved(2, "early", ms(32), ms(33), from("rm1", earlyRemoved, 0))
	n.observe(1, history.Read, "early", &early, ms(34), ms(35), observation{})
	n.observeRemoved(3, "lost", ms(36), ms(37), observation{})
	n.observe(1, history.Read, "hidden", &hidden, ms(40), ms(41), observation{})
	n.observe(2, history.Read, "hidden", nil, ms(42), ms(43), from("rm3", hiddenRemoved, 0))
	n.check()

	wantProblems(t, n, []string{
		"I2: job lost, acknowledged to client 0, is not in etcd",
		"job busy is running after",
		"I4: attempt ok-1 was launched twice",
		"I4: attempt ghost-1 of job ghost was launched on agent1 (ledger line 3) but no job record has it",
		"I4: attempt twice-1 of job twice was launched on agent3 (ledger line 4) but tandem recorded it for agent1",
		"I4: job twice: attempt twice-2 started at",
		"I4: job twice: attempt twice-2 was launched at",
		fmt.Sprintf("I1: job stale was created at revision %d with epoch %d, but shard 0's owner then was rm2 at epoch %d", last, e1, e2),
		fmt.Sprintf("I1: attempt stale-1 was recorded at revision %d with epoch %d, but shard 0's owner then was rm2", last, e1),
		fmt.Sprintf("I1: attempt stale-1 recorded under epoch %d was delivered to agent1 by an answer of older epoch %d", e1, e1-1),
		fmt.Sprintf("I1: attempt stale-1 of job stale was launched under epoch %d (ledger line 6), which never owned its shard 0", e1-1),
		"linearizability: the history of job ok is not linearizable",
		fmt.Sprintf("client 2's read of ok -> pending, 0 attempts from rm2 at revision %d (asked 0) began", okCreated),
		fmt.Sprintf("behind the %d client 1 had seen: allowed by per-client revisions, not by linearizability", okDone),
		"session: client 1's read of ok -> pending, 0 attempts from rm3",
		"session: client 3's read of twice -> not found from rm2",
		fmt.Sprintf("view: client 3's read of busy -> succeeded, 1 attempts from rm1 at revision %d (asked %d), but etcd held nothing like it", last, last),
		fmt.Sprintf("retention: job early was removed at revision %d before it finished: it was running", earlyRemoved),
		fmt.Sprintf("retention: the tombstone of jobs early says it finished succeeded, but it was running when deleted at revision %d", earlyRemoved),
		fmt.Sprintf("I2: job vanished, acknowledged to client 0, was deleted from etcd at revision %d (while succeeded), and has no tombstone (lost)", vanished),
		fmt.Sprintf("retention: jobs vanished was deleted at revision %d without a tombstone", vanished),
		"retention: client 3's read of lost answered removed, but etcd holds no tombstone of it",
		"linearizability: the history of job early is not linearizable",
		"I4: attempt gone-1 was launched twice",
		fmt.Sprintf("retention: client 2's read of hidden -> not found from rm3 at revision %d (asked 0), but retention had removed it at revision %d, its tombstone in etcd: the answer should be removed (410)", hiddenRemoved, hiddenRemoved),
		fmt.Sprintf("issue 13: pause-short of rm1 (active) must not cause a failover, but from revision %d to %d: rm1 lost shard 0 (epoch %d) at revision %d; rm2 took shard 0 at revision %d", vanished, e2, e1, e2-1, e2),
	})
	for _, p := range n.problems {
		if strings.Contains(p, "job gone") || strings.Contains(p, "of gone") {
			t.Errorf("a job removed after it finished, and read so, was reported: %s", p)
		}
	}
	if n.totals.RemovedAcked != 2 || n.totals.RemovedJobs != 3 || n.totals.Lost != 2 || n.totals.mustNotHeld != 1 || n.totals.mustNotStarved != 1 {
		t.Errorf("got removed %d acknowledged of %d, lost %d, must-not faults without a failover %d, with a lease run out %d; want 2 of 3, 2, 1, 1",
			n.totals.RemovedAcked, n.totals.RemovedJobs, n.totals.Lost, n.totals.mustNotHeld, n.totals.mustNotStarved)
	}
	if !slices.ContainsFunc(n.notes, func(s string) bool {
		return strings.Contains(s, "cpu-hog of 2 CPUs") && strings.Contains(s, "starved host")
	}) {
		t.Errorf("no note of the CPU hog under which a lease ran out; got %q", n.notes)
	}
	for _, p := range n.problems {
		if strings.Contains(p, "view:") && !strings.Contains(p, "read of busy -> succeeded") {
			t.Errorf("a read consistent with etcd's history was reported: %s", p)
		}
	}
}

// The checks the active-active mode adds: a launch names its job's shard
// and an epoch that owned that shard, and each shard's writes are fenced by
// that shard's owner. A read from a server whose view is behind another
// client's write is reported as not linearizable, and said to be what
// per-client revisions allow.
func TestNemesisChecksCatchShardViolations(t *testing.T) {
	const shards = 16
	f := newFabricated(t, shards)
	ka, kb := shard.Of("a", shards), shard.Of("b", shards)
	if ka == kb {
		t.Fatalf("jobs a and b are both in shard %d; pick other IDs", ka)
	}
	c := "c0"
	for k := 1; shard.Of(c, shards) != ka; k++ {
		c = fmt.Sprintf("c%d", k)
	}
	ea := f.own(ka, "rm1")
	eb := f.own(kb, "rm2")
	aCreated := f.write(tandem.Job{ID: "a", Shard: ka, State: tandem.JobPending, Epoch: ea, UpdatedEpoch: ea})
	f.write(tandem.Job{ID: "a", Shard: ka, State: tandem.JobSucceeded, Epoch: ea, UpdatedEpoch: ea, Attempts: []tandem.Attempt{succeededAttempt("a", 1, "agent1", ea, 1, 2)}})
	f.write(tandem.Job{ID: "b", Shard: kb, State: tandem.JobSucceeded, Epoch: eb, UpdatedEpoch: eb, Attempts: []tandem.Attempt{succeededAttempt("b", 1, "agent1", eb, 1, 2)}})
	// rm2 writes a job of rm1's shard.
	f.write(tandem.Job{ID: c, Shard: ka, State: tandem.JobPending, Epoch: eb})
	// rm2 is paused and loses shard kb; rm1 is cut off and keeps ka.
	healed := f.own(kb, "rm3")

	n := &nemesis{t: t, mode: nemesisModes[1], rec: history.NewRecorder(), ackedBy: map[string]int{}}
	f.collect(n)
	n.acked = []string{"a", "b"}
	n.final = map[string]*tandem.Job{"a": n.records["a"].Job, "b": n.records["b"].Job}
	n.launches = []launch{
		// rm2's epoch owned shard kb, never ka.
		{Attempt: "a-1", Job: "a", Agent: "agent1", Shard: ka, Epoch: eb, At: unixSec(1).UnixNano(), Line: 1},
		{Attempt: "b-1", Job: "b", Agent: "agent1", Shard: ka, Epoch: eb, At: unixSec(1).UnixNano(), Line: 2},
	}
	n.faults = []faultRecord{
		{Kind: faultStopServer, Target: "rm2", Held: []heldShard{{kb, eb}}, HealedAt: healed},
		{Kind: faultPartition, Target: "rm1", Held: []heldShard{{ka, ea}}, HealedAt: healed},
	}
	t0 := n.rec.Start()
	n.observe(0, history.Submit, "a", nil, t0, t0.Add(time.Millisecond), observation{Server: "rm1", Revision: aCreated})
	n.observe(1, history.Read, "a", nil, t0.Add(2*time.Millisecond), t0.Add(3*time.Millisecond), observation{Server: "rm2", Revision: aCreated - 1})
	n.check()

	want := []string{
		fmt.Sprintf("I1: job %s was created at revision", c),
		fmt.Sprintf("I1: attempt b-1 of job b was launched with TANDEM_SHARD %d (ledger line 2), but the job is in shard %d", ka, kb),
		fmt.Sprintf("I1: attempt a-1 of job a was launched under epoch %d (ledger line 1), which never owned its shard %d", eb, ka),
		"linearizability: the history of job a is not linearizable",
		fmt.Sprintf("client 1's read of a -> not found from rm2 at revision %d (asked 0) began", aCreated-1),
		"allowed by per-client revisions, not by linearizability",
	}
	wantProblems(t, n, want)
	if n.cutOff.fenced != 1 || n.cutOff.survived != 1 {
		t.Errorf("owners cut off: got %d fenced and %d not, want 1 and 1", n.cutOff.fenced, n.cutOff.survived)
	}
	if note := fmt.Sprintf("partition-server of rm1: its tenure of shard %d (epoch %d) outlived the fault", ka, ea); !slices.ContainsFunc(n.notes, func(s string) bool { return strings.Contains(s, note) }) {
		t.Errorf("no note like %q; got %q", note, n.notes)
	}
	if len(n.problems) != 4 {
		t.Errorf("got %d problems, want 4 (one per violation):\n%s", len(n.problems), strings.Join(n.problems, "\n"))
	}
}
