package store

// Batched job writes (issue 14).
//
// The scheduler used to record each placement in a transaction of its own
// and wait for it before placing the next job, and an agent's sync recorded
// each report the same way, so a backlog drained at one etcd round trip
// (and fsync) per job and per report. WriteJobs writes many records in one
// transaction: the same comparisons each write alone would make (every
// fence, every job record's revision, and for placements every agent's
// placement record's revision), all in one If, so the batch commits whole or
// not at all. A batch that fails its comparisons writes nothing and says so
// (ErrBatchConflict); the caller then writes those records one at a time,
// the path that tells the causes apart. Nothing here waits on a timer: a
// batch is what one pass of the scheduler, or one sync, has to write.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
)

// MaxWriteBatch bounds the job records of one WriteJobs transaction. Each
// costs a comparison and a put, and at most one more of each for its agent
// (a placement) and a comparison for its shard's fence: 32 stay under
// etcd's default 128 operations per transaction in every case.
const MaxWriteBatch = 32

// JobWrite is one job record to write in a batch: Job as it is to be
// stored, conditional on its record still being at Rev, fenced by Fence.
type JobWrite struct {
	Fence election.Fence
	Job   *tandem.Job
	Rev   int64
}

// ErrBatchConflict means a batch's comparisons failed: a fence no longer
// holds, a job record or an agent's placement record changed. Nothing of
// the batch was written.
var ErrBatchConflict = errors.New("store: a comparison of the batch failed; nothing was written")

// encode returns w's key and value.
func (w JobWrite) encode(s *Store) (string, string, error) {
	val, err := json.Marshal(w.Job)
	if err != nil {
		return "", "", fmt.Errorf("encode job %s: %w", w.Job.ID, err)
	}
	return s.keys.Job(w.Job.ID), string(val), nil
}

// WriteJobs writes jobs and, for every agent in places, its placement
// record, in one transaction whose comparisons are those of UpdateJob (with
// a Placement for each agent). places gives, per agent, the revision its
// placement record was read at and the value to write (an attempt placed
// on it). On success the view shows every write, and the commit's revision
// is returned. ErrBatchConflict: nothing written (also when a job comes
// twice: etcd takes a key once per transaction); write them one by one.
// Any other error: the batch may have committed (no answer, or the view
// did not reach its revision in time).
func (s *Store) WriteJobs(ctx context.Context, jobs []JobWrite, places []Placement) (int64, error) {
	if len(jobs) == 0 {
		return 0, nil
	}
	if len(jobs) > MaxWriteBatch || len(places) > len(jobs) {
		return 0, fmt.Errorf("store: a batch of %d jobs and %d placement records (at most %d)", len(jobs), len(places), MaxWriteBatch)
	}
	cmps := make([]clientv3.Cmp, 0, 3*len(jobs))
	ops := make([]clientv3.Op, 0, 2*len(jobs))
	fenced := make(map[election.Fence]bool)
	seen := make(map[string]bool, len(jobs))
	size := 0
	for _, w := range jobs {
		if seen[w.Job.ID] {
			return 0, fmt.Errorf("%w: job %s comes twice", ErrBatchConflict, w.Job.ID)
		}
		seen[w.Job.ID] = true
		if !fenced[w.Fence] {
			fenced[w.Fence] = true
			cmps = append(cmps, w.Fence.IsOwner())
		}
		key, val, err := w.encode(s)
		if err != nil {
			return 0, err
		}
		size += 2*len(key) + len(val) + opOverhead // compared and put
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", w.Rev))
		ops = append(ops, clientv3.OpPut(key, val))
	}
	for _, p := range places {
		pk := s.keys.Placement(p.Agent)
		size += 2*len(pk) + len(p.Attempt) + opOverhead
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(pk), "=", p.Rev))
		ops = append(ops, clientv3.OpPut(pk, p.Attempt))
	}
	if size > maxBatchBytes && len(jobs) > 1 {
		return 0, fmt.Errorf("%w: %d bytes, more than %d", ErrBatchConflict, size, maxBatchBytes)
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("write %d jobs: %w", len(jobs), err)
	}
	if !resp.Succeeded {
		return 0, ErrBatchConflict
	}
	return resp.Header.Revision, s.WaitRev(ctx, resp.Header.Revision)
}
