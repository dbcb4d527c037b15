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
	e2 := f.own(0, "rm2")
	// The deposed rm1 writes on.
	last := f.write(job("stale", tandem.JobSucceeded, e1, succeededAttempt("stale", 1, "agent1", e1, 1, 2)))

	n := &nemesis{t: t, mode: nemesisModes[0], rec: history.NewRecorder(), ackedBy: map[string]int{}}
	f.collect(n)
	n.acked = []string{"ok", "lost", "busy", "twice"}
	n.final = map[string]*tandem.Job{"ok": n.records["ok"].Job, "busy": n.records["busy"].Job, "twice": n.records["twice"].Job}
	n.launches = []launch{
		{Attempt: "ok-1", Job: "ok", Agent: "agent1", Epoch: e1, At: unixSec(1).UnixNano(), Line: 1},
		{Attempt: "ok-1", Job: "ok", Agent: "agent2", Epoch: e1, At: unixSec(1).UnixNano(), Line: 2},
		{Attempt: "ghost-1", Job: "ghost", Agent: "agent1", Epoch: e1, Line: 3},
		{Attempt: "twice-1", Job: "twice", Agent: "agent3", Epoch: e1, At: unixSec(1).UnixNano(), Line: 4},
		{Attempt: "twice-2", Job: "twice", Agent: "agent2", Epoch: e1, At: unixSec(4).UnixNano(), Line: 5},
		{Attempt: "stale-1", Job: "stale", Agent: "agent1", Epoch: e1 - 1, At: unixSec(1).UnixNano(), Line: 6},
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
	})
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
