package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/archive"
	"github.com/tandemhq/tandem/internal/history"
	"github.com/tandemhq/tandem/internal/keys"
)

// The fault suite runs with retention on and short (nemesisRetention,
// issue 14): the owners remove finished jobs and workflow runs while the
// faults go on, and clients read jobs that are gone (410 removed). After
// the run the checker replays etcd's history for every deleted job and run
// record (its last version before the delete) and reads every tombstone,
// and requires that
//
//   - every acknowledged job is in etcd, or was removed by retention: its
//     record deleted, in the same transaction as its tombstone was
//     written, once it had finished (terminal, no live attempt), the
//     tombstone naming the state it finished in; and a read of it after
//     the run answers removed. Anything else missing is lost (I2);
//   - every other deleted job or run was removed the same way, and a step
//     job never before its run;
//   - every read that answered removed is of a job with a tombstone, whose
//     state it takes (history.Output.Removed, for porcupine).
//
//   - every removed record is in the archive (--archive-dir, one directory
//     shared by the servers), synced before its delete: where etcd's
//     history was compacted (its members compact every 5 minutes, which a
//     slow active-active run reaches), the archive gives the removed
//     record's last version instead.
//
// The ledger-based checks (launches, one attempt at a time, fencing of
// launches) and the workflow and schedule checks judge a removed job or run
// by its last version, so they cover removed work as they cover the rest.

// deletedRecord is the last version of a record before its key was deleted,
// and the revision of the delete.
type deletedRecord[T any] struct {
	Record *T    `json:"record"`
	Rev    int64 `json:"deleted_at_revision"`
}

// Kinds of removed records, as tombstones name them (docs/RETENTION.md).
const (
	kindJob      = "jobs"
	kindWorkflow = "workflows"
)

// tombstone is a removal's tombstone, removed/<kind>/<id>, as
// docs/RETENTION.md gives it, and the revision that wrote it.
type tombstone struct {
	Kind       string    `json:"kind"`
	ID         string    `json:"id"`
	State      string    `json:"state"`
	FinishedAt time.Time `json:"finished_at"`
	RemovedAt  time.Time `json:"removed_at"`
	Reason     string    `json:"reason"`
	WorkflowID string    `json:"workflow_id,omitempty"`
	Rev        int64     `json:"created_at_revision"`
}

// totals are what the checks counted.
type totals struct {
	Lost, Duplicates int
	// RemovedJobs and RemovedRuns count the job and workflow run records
	// retention removed (all of them); RemovedAcked, the acknowledged jobs
	// among them.
	RemovedJobs, RemovedRuns, RemovedAcked int
	mustNotHeld                            int // must-not faults after which no owner changed
	mustNotStarved                         int // and after which owners' leases ran out, no owner deposed (noted)
}

// removedPrefix is where retention writes tombstones.
func removedPrefix(l keys.Layout) string { return l.Prefix() + "removed/" }

// collectRemovals replays etcd's history up to rev for the job and
// workflow run records it deleted, reads the tombstones at rev, and makes
// n.jobs and n.runs: what etcd holds at rev and the last version of what
// it deleted before. After a compaction, deletions before it are unknown
// (noted).
func (n *nemesis) collectRemovals(ctx context.Context, cli *clientv3.Client, layout keys.Layout, rev int64) error {
	n.deletedJobs = map[string]deletedRecord[tandem.Job]{}
	n.deletedRuns = map[string]deletedRecord[tandem.Workflow]{}
	last := map[string][]byte{} // key -> latest value in the replay
	deleted := func(key string, v []byte, at int64) error {
		switch {
		case v == nil:
			return nil // put before a compaction: unknown
		case strings.HasPrefix(key, layout.JobsPrefix()):
			var j tandem.Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("deleted job record %s: %w", key, err)
			}
			n.deletedJobs[j.ID] = deletedRecord[tandem.Job]{Record: &j, Rev: at}
		case strings.HasPrefix(key, layout.WorkflowsPrefix()):
			var wf tandem.Workflow
			if err := json.Unmarshal(v, &wf); err != nil {
				return fmt.Errorf("deleted workflow record %s: %w", key, err)
			}
			n.deletedRuns[wf.ID] = deletedRecord[tandem.Workflow]{Record: &wf, Rev: at}
		}
		return nil
	}
	var bad error
	from := int64(1)
	for {
		compacted, err := history.WatchFrom(ctx, cli, layout.Prefix(), from, rev, func(ev *clientv3.Event) {
			key := string(ev.Kv.Key)
			if !strings.HasPrefix(key, layout.JobsPrefix()) && !strings.HasPrefix(key, layout.WorkflowsPrefix()) {
				return
			}
			if ev.Type == clientv3.EventTypeDelete {
				if err := deleted(key, last[key], ev.Kv.ModRevision); err != nil && bad == nil {
					bad = err
				}
				delete(last, key)
				return
			}
			last[key] = ev.Kv.Value
		})
		if err != nil {
			return fmt.Errorf("replay etcd's history for removals: %w", err)
		}
		if compacted == 0 {
			break
		}
		n.notes = append(n.notes, fmt.Sprintf("etcd compacted its history before revision %d: removals before it are not checked", compacted))
		from = compacted + 1
		clear(last)
	}
	if bad != nil {
		return bad
	}
	resp, err := cli.Get(ctx, removedPrefix(layout), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return fmt.Errorf("read tombstones: %w", err)
	}
	n.tombs = map[string]map[string]tombstone{kindJob: {}, kindWorkflow: {}}
	for _, kv := range resp.Kvs {
		var tb tombstone
		if err := json.Unmarshal(kv.Value, &tb); err != nil {
			return fmt.Errorf("tombstone %s: %w", kv.Key, err)
		}
		if n.tombs[tb.Kind] == nil || string(kv.Key) != removedPrefix(layout)+tb.Kind+"/"+tb.ID {
			n.problemf("retention: tombstone %s names %s %q", kv.Key, tb.Kind, tb.ID)
			continue
		}
		tb.Rev = kv.CreateRevision
		n.tombs[tb.Kind][tb.ID] = tb
	}
	if err := n.readArchive(); err != nil {
		return err
	}
	n.jobs = map[string]*tandem.Job{}
	for id, d := range n.deletedJobs {
		n.jobs[id] = d.Record
	}
	for id, r := range n.records {
		n.jobs[id] = r.Job
	}
	runs, err := readWorkflows(ctx, cli, layout, rev)
	if err != nil {
		return err
	}
	n.runs = runs
	for id, d := range n.deletedRuns {
		if _, ok := n.runs[id]; !ok {
			n.runs[id] = d.Record
		}
	}
	return nil
}

// readArchive checks that every record with a tombstone is in the archive,
// and takes from it the last version of those whose deletion etcd's history
// no longer shows (compacted). Without an archive directory (the checks'
// own tests), it does nothing.
func (n *nemesis) readArchive() error {
	if n.archive == "" {
		return nil
	}
	lines, err := archive.Read(n.archive)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read the archive: %w", err)
	}
	latest := map[string]archive.Line{} // kind/id -> its latest line
	for _, l := range lines {
		k := l.Kind + "/" + l.ID
		if prev, ok := latest[k]; !ok || !l.RemovedAt.Before(prev.RemovedAt) {
			latest[k] = l
		}
	}
	for _, kind := range []string{kindJob, kindWorkflow} {
		for _, id := range slices.Sorted(maps.Keys(n.tombs[kind])) {
			tb := n.tombs[kind][id]
			l, ok := latest[kind+"/"+id]
			if !ok {
				n.problemf("retention: %s %s was removed (its tombstone written at revision %d) but is not in the archive", kind, id, tb.Rev)
				continue
			}
			var err error
			switch _, known := n.deletedJobs[id]; {
			case kind == kindJob && !known:
				var j tandem.Job
				if err = json.Unmarshal(l.Record, &j); err == nil {
					n.deletedJobs[id] = deletedRecord[tandem.Job]{Record: &j, Rev: tb.Rev}
					n.fromArchive++
				}
			case kind == kindWorkflow:
				if _, known := n.deletedRuns[id]; !known {
					var wf tandem.Workflow
					if err = json.Unmarshal(l.Record, &wf); err == nil {
						n.deletedRuns[id] = deletedRecord[tandem.Workflow]{Record: &wf, Rev: tb.Rev}
						n.fromArchive++
					}
				}
			}
			if err != nil {
				n.problemf("retention: the archive's record of %s %s: %v", kind, id, err)
			}
		}
	}
	if n.fromArchive > 0 {
		n.notes = append(n.notes, fmt.Sprintf("%d removed records' last versions came from the archive (etcd had compacted their deletion)", n.fromArchive))
	}
	return nil
}

// readMissing reads through the API, four at a time, the acknowledged
// jobs the final listing lacks, and records each read: a job retention
// removed answers 410 removed.
func (n *nemesis) readMissing(cl *client.Client, jobs map[string]*tandem.Job) {
	n.finalRemoved = map[string]bool{}
	ids := make(chan string)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				n.readOne(cl, id)
			}
		}()
	}
	for _, id := range n.acked {
		if _, ok := jobs[id]; !ok {
			ids <- id
		}
	}
	close(ids)
	wg.Wait()
}

// readOne reads job id after the run, retrying what fails, and records the
// answer.
func (n *nemesis) readOne(cl *client.Client, id string) {
	for try := 0; ; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		call := time.Now()
		j, err := cl.GetJob(ctx, id)
		ret := time.Now()
		cancel()
		via := observation{Server: n.serverID(cl.Current())}
		n.mu.Lock()
		switch {
		case err == nil:
			n.observe(checkerClientID, history.Read, id, j, call, ret, via)
		case errors.Is(err, tandem.ErrNotFound):
			n.observe(checkerClientID, history.Read, id, nil, call, ret, via)
		case errors.Is(err, tandem.ErrRemoved):
			n.observeRemoved(checkerClientID, id, call, ret, via)
			n.finalRemoved[id] = true
		case try < 5:
			n.mu.Unlock()
			time.Sleep(500 * time.Millisecond)
			continue
		default:
			n.noteErr(fmt.Sprintf("checker: read %s after the run: %v", id, err))
		}
		n.mu.Unlock()
		return
	}
}

// resolveRemoved gives every read that answered removed the state its
// job's tombstone says it finished in, and adds it to the history porcupine
// checks. Why porcupine may take it so: the server answers removed only
// when its view lacks the record and etcd holds the tombstone, which
// retention writes in the very transaction that deletes the record of a
// finished job; so the read is one of the job's final state, revealing no
// progress beyond it (not even its attempts), after which no read may show
// the record again (history.Output.Removed).
func (n *nemesis) resolveRemoved() {
	for i := range n.obs {
		o := &n.obs[i]
		if !o.Output.Removed {
			continue
		}
		tb, ok := n.tombs[kindJob][o.Job]
		if !ok {
			n.problemf("retention: client %d's read of %s answered removed, but etcd holds no tombstone of it", o.Client, o.Job)
		}
		o.Output.Progress.State = tandem.JobState(tb.State)
		start := n.rec.Start()
		n.rec.ReadRemoved(o.Client, o.via(), o.Job, o.Output.Progress.State,
			start.Add(time.Duration(o.Call)), start.Add(time.Duration(o.Return)))
	}
}

// checkRemovals: retention removed only finished records, each with its
// tombstone in the same transaction, saying the state it finished in, and
// a step job never before its run (docs/RETENTION.md).
func (n *nemesis) checkRemovals() {
	for _, id := range slices.Sorted(maps.Keys(n.deletedJobs)) {
		d := n.deletedJobs[id]
		j := d.Record
		if _, ok := n.tombs[kindJob][id]; ok {
			n.totals.RemovedJobs++
		}
		if !j.State.Terminal() {
			n.problemf("retention: job %s was removed at revision %d before it finished: it was %s, %s", id, d.Rev, j.State, describeAttempts(j))
		} else if k := slices.IndexFunc(j.Attempts, func(a tandem.Attempt) bool { return a.State.Live() }); k >= 0 {
			n.problemf("retention: job %s was removed at revision %d with its attempt %s still %s", id, d.Rev, j.Attempts[k].ID, j.Attempts[k].State)
		}
		n.checkTombstone(kindJob, id, string(j.State), d.Rev)
		if j.WorkflowID != "" {
			run, ok := n.deletedRuns[j.WorkflowID]
			switch {
			case !ok:
				n.problemf("retention: step job %s was removed at revision %d, before its workflow run %s, which etcd still holds", id, d.Rev, j.WorkflowID)
			case run.Rev > d.Rev:
				n.problemf("retention: step job %s was removed at revision %d, before its workflow run %s (removed at %d)", id, d.Rev, j.WorkflowID, run.Rev)
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(n.deletedRuns)) {
		d := n.deletedRuns[id]
		if _, ok := n.tombs[kindWorkflow][id]; ok {
			n.totals.RemovedRuns++
		}
		if !d.Record.State.Terminal() {
			n.problemf("retention: workflow run %s was removed at revision %d before it ended: it was %s", id, d.Rev, d.Record.State)
		}
		n.checkTombstone(kindWorkflow, id, string(d.Record.State), d.Rev)
	}
	compacted := n.audit != nil && n.audit.CompactedAt != 0
	for _, kind := range []string{kindJob, kindWorkflow} {
		for _, id := range slices.Sorted(maps.Keys(n.tombs[kind])) {
			tb := n.tombs[kind][id]
			_, job := n.deletedJobs[id]
			_, run := n.deletedRuns[id]
			if gone := kind == kindJob && job || kind == kindWorkflow && run; !gone && !compacted {
				n.problemf("retention: a tombstone of %s %s (written at revision %d) but etcd's history shows no deletion of it", kind, id, tb.Rev)
			}
		}
	}
}

// checkTombstone: the record of kind id, deleted at revision rev when it
// was in state, has its tombstone, written by the same transaction, naming
// that state.
func (n *nemesis) checkTombstone(kind, id, state string, rev int64) {
	tb, ok := n.tombs[kind][id]
	switch {
	case !ok:
		n.problemf("retention: %s %s was deleted at revision %d without a tombstone: reading it answers not found, not removed", kind, id, rev)
	case tb.Rev != rev:
		n.problemf("retention: %s %s was deleted at revision %d, but its tombstone was written at revision %d, not in the same transaction", kind, id, rev, tb.Rev)
	case tb.State != state:
		n.problemf("retention: the tombstone of %s %s says it finished %s, but it was %s when deleted at revision %d", kind, id, tb.State, state, rev)
	}
}
