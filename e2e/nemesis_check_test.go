package e2e

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/history"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/shard"
)

// This file is what TestNemesis does after the run: it waits for the jobs
// to end, collects etcd's history and the ledger, checks them, and reports.

// waitQuiescence waits until every acknowledged job is terminal and records
// the final listing's view of each acknowledged job as a read; each the
// listing lacks (retention removed it, or it is lost) is read on its own.
func (n *nemesis) waitQuiescence() {
	cl := newClient(n.t, n.c.URLs())
	wait := newDrainWait()
	for {
		call := time.Now()
		jobs, err := listAll(cl)
		ret := time.Now()
		if err == nil {
			n.final = jobs
			busy := 0
			for _, id := range n.acked {
				if j, ok := jobs[id]; ok && !j.State.Terminal() {
					busy++
				}
			}
			if busy == 0 || wait.over(busy) {
				// A listing's revision header is set before it reads the
				// view, so it bounds nothing: recorded with none.
				via := observation{Server: n.serverID(cl.Current())}
				for _, id := range n.acked {
					if j, ok := jobs[id]; ok {
						n.observe(checkerClientID, history.Read, id, j, call, ret, via)
					}
				}
				n.readMissing(cl, jobs)
				if busy > 0 {
					n.t.Logf("gave up waiting: %d acknowledged jobs not terminal (%s)", busy, wait)
				}
				return
			}
		} else if wait.over(-1) {
			n.t.Fatalf("list jobs after the run: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// drainWait decides how long to wait for a backlog to end: while it
// shrinks, for up to quiescenceCap; once it stops shrinking, for
// quiescenceWithin more. Liveness is that work keeps ending, not that a
// backlog of any size ends within a fixed time.
type drainWait struct {
	start, progress time.Time
	least           int // the smallest backlog seen, -1 before any
}

func newDrainWait() *drainWait {
	now := time.Now()
	return &drainWait{start: now, progress: now, least: -1}
}

// over records a backlog of busy (negative: unknown, a failed read) and
// reports whether to stop waiting.
func (d *drainWait) over(busy int) bool {
	now := time.Now()
	if busy >= 0 && (d.least < 0 || busy < d.least) {
		d.least, d.progress = busy, now
	}
	return now.Sub(d.progress) > quiescenceWithin || now.Sub(d.start) > quiescenceCap
}

func (d *drainWait) String() string {
	return fmt.Sprintf("waited %s, the last %s without progress; at most %s without progress, %s in all",
		time.Since(d.start).Round(time.Second), time.Since(d.progress).Round(time.Second), quiescenceWithin, quiescenceCap)
}

// serverID names the server at url.
func (n *nemesis) serverID(url string) string {
	for _, s := range n.c.Servers {
		if s.URL == url {
			return s.ID
		}
	}
	return url
}

func listAll(cl *client.Client) (map[string]*tandem.Job, error) {
	out := map[string]*tandem.Job{}
	after := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		page, err := cl.ListJobs(ctx, client.ListOptions{Limit: 1000, After: after})
		cancel()
		if err != nil {
			return nil, err
		}
		for _, j := range page.Jobs {
			out[j.ID] = j
		}
		if page.Next == "" {
			return out, nil
		}
		after = page.Next
	}
}

// collect reads the job records and the cluster's history from etcd, and
// the ledger.
func (n *nemesis) collect() {
	t := n.t
	cli := clusterEtcdClient(t, n.c)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := n.collectEtcd(ctx, cli, keys.New("default")); err != nil {
		t.Fatal(err)
	}
	n.readLedger()
}

// collectEtcd reads every job record as it is now, and audits the history
// of the cluster's keys up to the same revision (history.AuditEtcd): the
// owners of every shard, whether each write was fenced by its owner's epoch,
// and every version of every job record.
func (n *nemesis) collectEtcd(ctx context.Context, cli *clientv3.Client, layout keys.Layout) error {
	resp, err := cli.Get(ctx, layout.JobsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read job records from etcd: %w", err)
	}
	n.records = map[string]jobRecord{}
	for _, kv := range resp.Kvs {
		var j tandem.Job
		if err := json.Unmarshal(kv.Value, &j); err != nil {
			return fmt.Errorf("job record %s: %w", kv.Key, err)
		}
		n.records[j.ID] = jobRecord{Job: &j, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision}
	}
	if n.audit, err = history.AuditEtcd(ctx, cli, layout, n.mode.shards, resp.Header.Revision); err != nil {
		return fmt.Errorf("etcd history: %w", err)
	}
	if err := n.collectRemovals(ctx, cli, layout, resp.Header.Revision); err != nil {
		return err
	}
	// The schedules' records at the same revision as the jobs they started.
	if err := n.checkSchedules(ctx, cli, layout, resp.Header.Revision); err != nil {
		return err
	}
	if err := n.checkWorkflows(); err != nil {
		return err
	}
	if n.audit.CompactedAt != 0 {
		n.notes = append(n.notes, fmt.Sprintf("etcd compacted its history before revision %d: "+
			"writes before it, and reads of revisions before it, are not checked against it", n.audit.CompactedAt))
	}
	return nil
}

func (n *nemesis) readLedger() {
	t := n.t
	f, err := os.Open(n.ledger)
	if err != nil {
		t.Fatalf("ledger: %v", err)
	}
	defer f.Close()
	n.ends = map[string]int64{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fs := strings.Fields(sc.Text())
		bad := func() {
			n.problems = append(n.problems, fmt.Sprintf("ledger line %d is malformed: %q", line, sc.Text()))
		}
		switch {
		case len(fs) == 7 && fs[0] == "start":
			k, err1 := strconv.Atoi(fs[4])
			epoch, err2 := strconv.ParseInt(fs[5], 10, 64)
			at, err3 := strconv.ParseInt(fs[6], 10, 64)
			if err1 != nil || err2 != nil || err3 != nil {
				bad()
				continue
			}
			n.launches = append(n.launches, launch{Attempt: fs[1], Job: fs[2], Agent: fs[3], Shard: k, Epoch: epoch, At: at, Line: line})
		case len(fs) == 3 && fs[0] == "end":
			at, err := strconv.ParseInt(fs[2], 10, 64)
			if err != nil {
				bad()
				continue
			}
			n.ends[fs[1]] = at
		default:
			bad()
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("ledger: %v", err)
	}
}

// ---- checks ----

func (n *nemesis) problemf(format string, args ...any) {
	n.problems = append(n.problems, fmt.Sprintf(format, args...))
}

func (n *nemesis) check() {
	n.resolveRemoved()
	n.checkAcknowledged()
	n.checkRemovals()
	n.checkMustNot()
	n.checkLaunches()
	n.checkOneAttemptAtATime()
	n.checkFencing()
	n.checkCutOff()
	n.checkSessions()
	n.checkViews()
	n.checkLinearizable()
}

// checkAcknowledged: every acknowledged job exists and is terminal, or
// was removed by retention (I2; checkRemovals checks that it had finished).
func (n *nemesis) checkAcknowledged() {
	for _, id := range n.acked {
		r, ok := n.records[id]
		if _, removed := n.tombs[kindJob][id]; !ok && removed {
			n.totals.RemovedAcked++
			// Retention goes on after the load: the final listing may
			// still have shown the job, finished, before it went.
			if _, listed := n.final[id]; !listed && !n.finalRemoved[id] {
				n.problemf("I2: job %s, acknowledged to client %d and removed by retention, did not read as removed after the run", id, n.ackedBy[id])
			}
			continue
		}
		switch {
		case !ok:
			n.totals.Lost++
			how := "is not in etcd, and has no tombstone (lost)"
			if d, deleted := n.deletedJobs[id]; deleted {
				how = fmt.Sprintf("was deleted from etcd at revision %d (while %s), and has no tombstone (lost)", d.Rev, d.Record.State)
			}
			n.problemf("I2: job %s, acknowledged to client %d, %s", id, n.ackedBy[id], how)
		case !r.Job.State.Terminal():
			n.problemf("job %s is %s after quiescence (%s without progress), not terminal: %s", id, r.Job.State, quiescenceWithin, describeAttempts(r.Job))
		}
		if _, ok := n.final[id]; !ok {
			n.problemf("I2: job %s, acknowledged to client %d, is missing from the final listing through the API", id, n.ackedBy[id])
		}
	}
}

// checkLaunches: no attempt ID launched twice, and every launch is an
// attempt tandem recorded, on the agent it recorded (I4).
func (n *nemesis) checkLaunches() {
	first := map[string]launch{}
	for _, l := range n.launches {
		if prev, ok := first[l.Attempt]; ok {
			n.totals.Duplicates++
			n.problemf("I4: attempt %s was launched twice: on %s (ledger line %d) and on %s (ledger line %d)",
				l.Attempt, prev.Agent, prev.Line, l.Agent, l.Line)
			continue
		}
		first[l.Attempt] = l
		a, j := n.attempt(l.Job, l.Attempt)
		switch {
		case a == nil:
			n.problemf("I4: attempt %s of job %s was launched on %s (ledger line %d) but no job record has it", l.Attempt, l.Job, l.Agent, l.Line)
		case a.Agent != l.Agent:
			n.problemf("I4: attempt %s of job %s was launched on %s (ledger line %d) but tandem recorded it for %s", l.Attempt, j.ID, l.Agent, l.Line, a.Agent)
		}
	}
}

// attempt finds attempt id of job, in etcd or in the job's last version
// before retention removed it.
func (n *nemesis) attempt(job, id string) (*tandem.Attempt, *tandem.Job) {
	j, ok := n.jobs[job]
	if !ok {
		return nil, nil
	}
	for k := range j.Attempts {
		if j.Attempts[k].ID == id {
			return &j.Attempts[k], j
		}
	}
	return nil, j
}

// checkOneAttemptAtATime: no job had two attempts at once (I4), by its
// record (or its last version, if removed) and by the ledger.
func (n *nemesis) checkOneAttemptAtATime() {
	for _, id := range slices.Sorted(maps.Keys(n.jobs)) {
		j := n.jobs[id]
		for k := 1; k < len(j.Attempts); k++ {
			prev, cur := j.Attempts[k-1], j.Attempts[k]
			switch {
			case prev.State.Live() || prev.EndedAt == nil:
				n.problemf("I4: job %s has attempt %s (%s, ended %v) before its attempt %s: two live attempts", id, prev.ID, prev.State, prev.EndedAt, cur.ID)
			case cur.StartedAt != nil && cur.StartedAt.Before(*prev.EndedAt):
				n.problemf("I4: job %s: attempt %s started at %s, before attempt %s ended at %s",
					id, cur.ID, cur.StartedAt.UTC().Format(time.RFC3339Nano), prev.ID, prev.EndedAt.UTC().Format(time.RFC3339Nano))
			}
		}
	}
	zombies := 0
	for _, l := range n.launches {
		a, j := n.attempt(l.Job, l.Attempt)
		if a == nil || a.Number < 2 {
			continue
		}
		prev := j.Attempts[a.Number-2]
		if prev.EndedAt == nil {
			continue // reported above
		}
		if l.At < prev.EndedAt.UnixNano() {
			n.problemf("I4: job %s: attempt %s was launched at %s (ledger line %d), before attempt %s ended at %s as tandem recorded it",
				j.ID, l.Attempt, time.Unix(0, l.At).UTC().Format(time.RFC3339Nano), l.Line, prev.ID, prev.EndedAt.UTC().Format(time.RFC3339Nano))
		}
		if end, ok := n.ends[prev.ID]; ok && end > l.At {
			zombies++ // a replaced attempt of a lost agent ran on until it was told
		}
	}
	if zombies > 0 {
		n.notes = append(n.notes, fmt.Sprintf("%d replaced attempts (their agent declared lost) were still running when their retry launched", zombies))
	}
}

// checkFencing: no write of a deposed owner was accepted (I1). etcd's
// history shows each job write, creation included, and each attempt it
// adds carrying the epoch of the shard's owner at its revision
// (history.AuditEtcd); and every launch was sent by an owner of the job's
// shard no older than the one that recorded the attempt: its TANDEM_SHARD
// is the job's shard, and its TANDEM_EPOCH owned that shard at some time and
// is at least the attempt's epoch.
func (n *nemesis) checkFencing() {
	a := n.audit
	for _, p := range a.Problems {
		n.problemf("%s", p)
	}
	if len(a.Tenures) == 0 {
		n.problemf("I1: no owner of any shard found in etcd's history")
		return
	}
	owned := map[int]map[int64]bool{}
	earliest := map[int]int64{}
	for _, te := range a.Tenures {
		if owned[te.Shard] == nil {
			owned[te.Shard] = map[int64]bool{}
			earliest[te.Shard] = te.Epoch
		}
		owned[te.Shard][te.Epoch] = true
		earliest[te.Shard] = min(earliest[te.Shard], te.Epoch)
	}
	for _, l := range n.launches {
		k := shard.Of(l.Job, n.mode.shards)
		if l.Shard != k {
			n.problemf("I1: attempt %s of job %s was launched with TANDEM_SHARD %d (ledger line %d), but the job is in shard %d", l.Attempt, l.Job, l.Shard, l.Line, k)
		}
		if at, _ := n.attempt(l.Job, l.Attempt); at != nil && l.Epoch < at.Epoch {
			n.problemf("I1: attempt %s recorded under epoch %d was delivered to %s by an answer of older epoch %d (ledger line %d)",
				l.Attempt, at.Epoch, l.Agent, l.Epoch, l.Line)
		}
		// After a compaction, owners that had gone by then are unknown.
		hidden := a.CompactedAt != 0 && (owned[k] == nil || l.Epoch < earliest[k])
		if !owned[k][l.Epoch] && !hidden {
			n.problemf("I1: attempt %s of job %s was launched under epoch %d (ledger line %d), which never owned its shard %d",
				l.Attempt, l.Job, l.Epoch, l.Line, k)
		}
	}
}

// checkCutOff: an owner paused or cut off for longer than its lease comes
// back fenced on every shard: each tenure it held as the fault began had
// ended in etcd by the time the fault was healed. A lease that outlives
// the fault (etcd extends leases when its own leader changes) breaks no
// promise, so it is a note; a write or launch of a deposed owner is what
// checkFencing catches.
func (n *nemesis) checkCutOff() {
	for _, f := range n.faults {
		if f.HealedAt == 0 {
			continue
		}
		for _, h := range f.Held {
			i := slices.IndexFunc(n.audit.Tenures, func(te history.Tenure) bool { return te.Shard == h.Shard && te.Epoch == h.Epoch })
			switch {
			case i < 0:
				continue // compacted away
			case n.audit.Tenures[i].Ended != 0 && n.audit.Tenures[i].Ended <= f.HealedAt:
				n.cutOff.fenced++
			default:
				n.cutOff.survived++
				n.notes = append(n.notes, fmt.Sprintf("%s of %s: its tenure of shard %d (epoch %d) outlived the fault (healed at revision %d, ended at %d)",
					f.Kind, f.Target, h.Shard, h.Epoch, f.HealedAt, n.audit.Tenures[i].Ended))
			}
		}
	}
}

// showsLess reports whether b, a read, shows less of its job than a, an
// earlier operation on it, had: not found after a submission or a read that
// found it; an earlier stage; a terminal state changed; or anything but
// removed, in the same state, after removed.
func showsLess(b, a observation) bool {
	switch {
	case a.Kind == history.Submit:
		return b.Output.NotFound
	case a.Output.NotFound:
		return false
	case b.Output.NotFound:
		return true
	case a.Output.Removed && !b.Output.Removed:
		return true
	case b.Output.Removed:
		return a.Output.Progress.Stage == history.Terminal && b.Output.Progress.State != a.Output.Progress.State
	case a.Output.Progress.Stage == history.Terminal:
		return b.Output.Progress != a.Output.Progress
	}
	return b.Output.Progress.Compare(a.Output.Progress) < 0
}

func (o observation) String() string {
	what := "submission of " + o.Job
	switch {
	case o.Kind == history.Read && o.Output.NotFound:
		what = "read of " + o.Job + " -> not found"
	case o.Kind == history.Read && o.Output.Removed:
		what = "read of " + o.Job + " -> removed (finished " + string(o.Output.Progress.State) + ")"
	case o.Kind == history.Read:
		what = "read of " + o.Job + " -> " + o.Output.Progress.String()
	}
	if o.Server != "" {
		what += " from " + o.via()
	}
	return what
}

// checkSessions: each client sees its own submissions and never sees a job
// go backwards (read-your-writes and monotonic reads), whichever server
// answers: the promise of the revisions a client carries.
func (n *nemesis) checkSessions() {
	type key struct {
		client int
		job    string
	}
	most := map[key]observation{} // what each client has seen of each job, at most
	for _, o := range n.obs {
		k := key{o.Client, o.Job}
		prev, seen := most[k]
		if seen && o.Kind == history.Read && showsLess(o, prev) {
			n.problemf("session: client %d's %s came after its own %s", o.Client, o, prev)
			continue
		}
		if !seen || !o.Output.NotFound {
			most[k] = o
		}
	}
}

// checkViews: every read shows what etcd held for the job at some revision
// from the one the client asked the server's view to reach to the one the
// answer reports: a server's view is etcd's history, and a client reads its
// own writes whichever server answers.
func (n *nemesis) checkViews() {
	for _, o := range n.obs {
		// A removed read is answered from the tombstone in etcd, not from
		// the view at the revision it reports: resolveRemoved and
		// checkRemovals judge it against the tombstone and the record's
		// last version instead.
		if o.Kind != history.Read || o.Revision == 0 || o.Output.Removed {
			continue
		}
		if d, ok := n.deletedJobs[o.Job]; ok && o.Output.NotFound && o.Revision >= d.Rev {
			// The view rightly lacks the record; the answer is wrong.
			if tb, ok := n.tombs[kindJob][o.Job]; ok && tb.Rev <= o.Revision {
				n.problemf("retention: client %d's %s, but retention had removed it at revision %d, its tombstone in etcd: the answer should be removed (410), not not found (404)",
					o.Client, o, d.Rev)
			}
			continue
		}
		if n.audit.CompactedAt != 0 && o.Revision < n.audit.CompactedAt {
			// Before the compaction: etcd's history cannot tell (a job
			// retention removed before it is not even known to it).
			n.unknown++
			continue
		}
		var p *history.Progress
		if !o.Output.NotFound {
			p = &o.Output.Progress
		}
		switch showed, known := n.audit.Showed(o.Job, p, o.Asked, o.Revision); {
		case !known:
			n.unknown++
		case !showed:
			n.problemf("view: client %d's %s, but etcd held nothing like it for the job from revision %d to %d", o.Client, o, o.Asked, o.Revision)
		}
	}
}

// checkLinearizable: every job's states as the clients saw them are
// linearizable; Unknown (the checker ran out of time) is not a pass.
func (n *nemesis) checkLinearizable() {
	n.lin = history.Check(n.rec.Operations(), 30*time.Second)
	switch n.lin.Outcome {
	case porcupine.Ok:
	case porcupine.Unknown:
		n.problemf("linearizability: porcupine could not decide within 30s (Unknown), which is not a pass")
	default:
		for _, id := range n.lin.Illegal {
			msg := fmt.Sprintf("linearizability: the history of job %s is not linearizable: %s", id, n.describeOps(id))
			if stale := n.staleReads(id); len(stale) > 0 {
				msg += "; stale reads: " + strings.Join(stale, "; ")
			}
			n.problems = append(n.problems, msg)
		}
	}
}

// staleReads spells porcupine's verdict on job out where it can: the reads
// that showed less than another client had seen of the job (or submitted)
// before they began, with the servers and revisions involved, and whether
// the revisions explain it: a view behind the revision the other client
// had seen, which per-client revisions (read-your-writes) allow and
// linearizability does not.
func (n *nemesis) staleReads(job string) []string {
	var ops []observation
	for _, o := range n.obs {
		if o.Job == job {
			ops = append(ops, o)
		}
	}
	var out []string
	for _, b := range ops {
		if b.Kind != history.Read {
			continue
		}
		for _, a := range ops {
			if a.Client == b.Client || a.Return >= b.Call || !showsLess(b, a) {
				continue
			}
			why := "not explained by the revisions"
			if b.Revision != 0 && b.Revision < a.Revision {
				why = fmt.Sprintf("the answering view was at revision %d, behind the %d client %d had seen: "+
					"allowed by per-client revisions, not by linearizability", b.Revision, a.Revision, a.Client)
			}
			out = append(out, fmt.Sprintf("client %d's %s began %.3fs after client %d's %s returned (%s)",
				b.Client, b, float64(b.Call-a.Return)/1e9, a.Client, a, why))
			break
		}
	}
	return out
}

func (n *nemesis) describeOps(job string) string {
	m := history.Model()
	var parts []string
	for _, op := range n.rec.Operations() {
		if op.Input.(history.Input).Job != job {
			continue
		}
		parts = append(parts, fmt.Sprintf("[client %d %.3fs..%.3fs %s %s]", op.ClientId,
			float64(op.Call)/1e9, float64(op.Return)/1e9, m.DescribeOperation(op.Input, op.Output),
			m.DescribeOperationMetadata(op.Metadata)))
	}
	return strings.Join(parts, " ")
}

func describeAttempts(j *tandem.Job) string {
	var parts []string
	for _, a := range j.Attempts {
		parts = append(parts, fmt.Sprintf("%s on %s %s", a.ID, a.Agent, a.State))
	}
	return fmt.Sprintf("attempts [%s], reason %q", strings.Join(parts, ", "), j.Reason)
}

// ---- report ----

// ownership sums up etcd's account of the shards' owners.
func (n *nemesis) ownership() string {
	a := n.audit
	if a == nil {
		return "no etcd history"
	}
	if !n.mode.sharded() {
		return fmt.Sprintf("epochs seen %d", len(a.Tenures))
	}
	byOwner := map[string]int{}
	for _, te := range a.Tenures {
		byOwner[te.Owner]++
	}
	gaps := a.Gaps()
	longest := int64(0)
	for _, g := range gaps {
		longest = max(longest, g.Revs)
	}
	return fmt.Sprintf("tenures %d over %d shards %v, ownerless gaps %d (longest %d revisions)", len(a.Tenures), a.Shards, byOwner, len(gaps), longest)
}

func (n *nemesis) report() {
	t := n.t
	attempts := 0
	for _, j := range n.jobs {
		attempts += len(j.Attempts)
	}
	mustNot := 0
	for _, f := range n.faults {
		if f.MustNot {
			mustNot++
		}
	}
	byServer := map[string]int{}
	for _, o := range n.obs {
		if o.Kind == history.Read && o.Client != checkerClientID {
			byServer[o.Server]++
		}
	}
	t.Logf("nemesis summary (%s): seed %d, ran %s, faults %d %v; acknowledged jobs %d (submits failed %d): "+
		"lost %d, duplicate launches %d, removed by retention %d; "+
		"reads %d (failed %d; %d answered removed; answered by %v), jobs in etcd %d, removed by retention %d jobs and %d workflow runs, "+
		"attempts %d, launches %d, %s, owners paused or cut off came back fenced on %d of %d shards, "+
		"faults that must not fail over %d: without a change of owner %d, with leases run out on a starved host %d; linearizability %s; %s; %s",
		n.mode.name, n.seed, n.ranFor.Round(time.Millisecond), n.applied(), n.faultsByKind, len(n.acked), n.failedSubmits,
		n.totals.Lost, n.totals.Duplicates, n.totals.RemovedAcked,
		n.reads, n.failedReads, n.removedReads, byServer, len(n.records), n.totals.RemovedJobs, n.totals.RemovedRuns,
		attempts, len(n.launches), n.ownership(), n.cutOff.fenced, n.cutOff.fenced+n.cutOff.survived,
		mustNot, n.totals.mustNotHeld, n.totals.mustNotStarved, n.lin.Outcome, n.sched, n.wf)
	if n.unknown > 0 {
		n.notes = append(n.notes, fmt.Sprintf("%d reads were of revisions etcd had compacted: not checked against its history", n.unknown))
	}
	for _, s := range n.notes {
		t.Logf("note: %s", s)
	}
	if len(n.lastErrs) > 0 {
		t.Logf("some of the load's errors (unknown outcomes, not failures): %s", strings.Join(n.lastErrs, "; "))
	}
	if len(n.problems) == 0 && n.out == "" {
		return
	}
	dir, err := n.saveEvidence(n.out)
	if err != nil {
		t.Errorf("saving the evidence: %v", err)
	}
	n.savedIn = dir
	if len(n.problems) == 0 {
		t.Logf("evidence saved in %s", dir)
		return
	}
	const maxShown = 30
	for k, p := range n.problems {
		if k == maxShown {
			t.Errorf("... and %d more problems", len(n.problems)-maxShown)
			break
		}
		t.Error(p)
	}
	t.Errorf("%d problems (seed %d, mode %s); the history (history.json), porcupine's picture (linearizability.html) and every process's log are in %s",
		len(n.problems), n.seed, n.mode.name, dir)
}

// saveEvidence writes the run's history, porcupine's visualisation and the
// processes' logs to dir (a new temporary directory, kept, if dir is "").
func (n *nemesis) saveEvidence(dir string) (string, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "tandem-nemesis-")
		if err != nil {
			return "", err
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return dir, err
	}
	n.mu.Lock() // the load may still be running if the run stopped half-way
	acked, faults, obs := slices.Clone(n.acked), slices.Clone(n.faults), slices.Clone(n.obs)
	n.mu.Unlock()
	slices.SortFunc(obs, func(a, b observation) int { return cmp.Compare(a.Call, b.Call) })
	doc := map[string]any{
		"mode": n.mode.name, "seed": n.seed, "clock_start": n.rec.Start(), "ran_for": n.ranFor.String(),
		"problems": n.problems, "notes": n.notes, "faults": faults,
		"acknowledged": acked, "ops": obs, "linearizability": n.lin.Outcome, "illegal_jobs": n.lin.Illegal,
		"ledger_starts": n.launches, "ledger_ends": n.ends, "jobs": n.records,
		"removed_jobs": n.deletedJobs, "removed_workflow_runs": n.deletedRuns, "tombstones": n.tombs, "totals": n.totals,
		"logs": "each process's log is <id>.log here",
	}
	if a := n.audit; a != nil {
		doc["tenures"], doc["compacted_at"], doc["attempt_writes"], doc["job_versions"] = a.Tenures, a.CompactedAt, a.Attempts, a.Jobs
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return dir, err
	}
	if err := os.WriteFile(filepath.Join(dir, "history.json"), b, 0o644); err != nil {
		return dir, err
	}
	if n.lin.Outcome != "" {
		info := n.lin.Info
		var notes []porcupine.Annotation
		for _, f := range faults {
			notes = append(notes, porcupine.Annotation{Tag: "nemesis", Start: f.Start, End: f.End,
				Description: f.Kind + " " + f.Target, Details: f.Role + " " + f.Note})
		}
		info.AddAnnotations(notes)
		if err := porcupine.VisualizePath(history.Model(), info, filepath.Join(dir, "linearizability.html")); err != nil {
			return dir, err
		}
	}
	if n.c != nil {
		for _, p := range n.procs() {
			if err := copyFile(p.LogPath, filepath.Join(dir, p.ID+".log")); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return dir, err
			}
		}
	}
	if b, err := os.ReadFile(n.ledger); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "ledger"), b, 0o644)
	}
	return dir, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
