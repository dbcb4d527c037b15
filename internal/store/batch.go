package store

// Group commit of job creations (issue 14).
//
// CreateJob does not send a transaction of its own: it queues its job, and
// one committer goroutine per Store sends the queued jobs together, in one
// transaction guarded by every fence they are created under. While a
// transaction is in flight, new jobs queue; when it returns, everything
// queued goes in the next one. Nothing ever waits on a timer: an idle
// store sends a lone job at once, and a busy one sends bigger transactions
// instead of more of them, which is where the rate past one transaction per
// job comes from.
//
// A batch only ever commits as a whole, and a submitter is told its job is
// created only once the transaction holding it has committed (I2). A batch
// whose transaction fails its comparisons is not failed as a whole: the
// Else branch reads every key the comparisons named, in the same revision,
// so the jobs that caused the failure are answered (fenced, replayed, ID
// taken) and the others are sent again. Each failed round answers at least
// one job, so this ends.
//
// There is one committer, so one transaction in flight per Store: a job
// never races another of the same idempotency key from the same server.
// Two in one batch write the key once, the second answered from the
// first; a later one finds the key stored and gets its job (I3). Between
// servers, the key's create-revision comparison decides, as before.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
)

const (
	// maxBatchBytes bounds the keys and values one batch transaction
	// carries, a third of etcd's default request limit
	// (--max-request-bytes, 1.5 MiB), so a batch is never refused for its
	// size where each of its jobs alone would pass. A job larger than this
	// goes alone, as it did before batching.
	maxBatchBytes = 512 << 10
	// opOverhead is what one job's or key's operations cost in a request
	// beyond their keys and value (framing, lease, revisions), counted
	// generously.
	opOverhead = 64
	// batchTimeout bounds one batch transaction, whoever waits for it,
	// across every time it is sent.
	batchTimeout = 5 * time.Second
	// firstAttempt bounds each of the first shortSends sends of a batch
	// transaction; each later send may take twice as long as the one
	// before, so a slow etcd is not sent ever more copies. A proposal
	// forwarded to an etcd leader that has just died is not failed by
	// etcd until its own request timeout (5 s and more), while a new
	// leader is elected in about a second: the batch is sent again
	// rather than waiting all that time (see sendBatch), and the short
	// sends cover an etcd election with default timing.
	firstAttempt = 500 * time.Millisecond
	shortSends   = 3
	// resendPause is the least time between two sends of a batch, so a
	// send that fails at once (no leader yet) does not spin.
	resendPause = 20 * time.Millisecond
)

// errStoreClosed means CreateJob was called after Close.
var errStoreClosed = errors.New("store: closed")

// createReq is one job waiting to be created, and, once done is closed,
// what became of it.
type createReq struct {
	ctx      context.Context // the submitter's: a request whose ctx ended is not sent
	fence    election.Fence
	job      *tandem.Job
	key      string // the job's etcd key
	val      string // the job's record
	idemKey  string // the client's idempotency key, "" for none
	ikey     string // its etcd key
	rec      string // its record (idemRecord)
	lease    clientv3.LeaseID
	specHash string

	// dups are later requests of the same batch with the same idempotency
	// key: they are answered from this one's outcome and write nothing (I3).
	dups []*createReq
	// unknown: a transaction carrying this request was sent and its
	// outcome never came back, so the job may already be in etcd, written
	// by that very transaction. A later send that finds the job's key
	// taken then checks whether the record is this request's own.
	unknown bool

	done chan struct{}
	res  createResult // written before done is closed
}

// createResult is what became of a createReq.
type createResult struct {
	job     *tandem.Job
	created bool
	err     error
	// replayID, with err nil, is the job an already stored idempotency key
	// names; the key's record is at replayRev, which the submitter's view
	// reaches before it reads the job there.
	replayID  string
	replayRev int64
}

// ops is how many comparisons (and, the same number, Else reads) r needs
// in a transaction, besides its fence's.
func (r *createReq) ops() int {
	if r.ikey != "" {
		return 2
	}
	return 1
}

// bytes is an upper bound of what r adds to a transaction's request: each
// key appears in a comparison, a put and an Else read.
func (r *createReq) bytes() int {
	n := 3*len(r.key) + len(r.val) + opOverhead
	if r.ikey != "" {
		n += 3*len(r.ikey) + len(r.rec) + opOverhead
	}
	return n
}

func (r *createReq) finish(res createResult) {
	r.res = res
	close(r.done)
}

// batcher queues the job creations of one Store for its committer.
type batcher struct {
	mu      sync.Mutex
	pending []*createReq
	running bool // a committer goroutine is at work
	closed  bool
	ctx     context.Context // the committer's; cancelled by close
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// enqueue queues r and starts the committer unless it runs already.
func (b *batcher) enqueue(s *Store, r *createReq) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errStoreClosed
	}
	if b.ctx == nil {
		b.ctx, b.cancel = context.WithCancel(context.Background())
	}
	b.pending = append(b.pending, r)
	if !b.running {
		b.running = true
		b.wg.Add(1)
		go s.commitLoop()
	}
	return nil
}

// track counts a goroutine of the store's that close must wait for, unless
// the store is closed (then it must not start).
func (b *batcher) track() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	return true
}

// take returns everything queued and empties the queue; with nothing
// queued it marks the committer stopped (under the same lock as enqueue
// looks at it, so no request is left behind) and returns nil.
func (b *batcher) take() []*createReq {
	b.mu.Lock()
	defer b.mu.Unlock()
	reqs := b.pending
	b.pending = nil
	if len(reqs) == 0 {
		b.running = false
	}
	return reqs
}

// close makes later creations fail, cancels the transaction in flight and
// waits for the committer to end.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	if b.cancel != nil {
		b.cancel()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// commitLoop is the committer: it sends what is queued until the queue is
// empty, then ends (a later CreateJob starts another). Each round is
// bounded by batchTimeout per transaction; close cancels it.
func (s *Store) commitLoop() {
	defer s.batch.wg.Done()
	for {
		reqs := s.batch.take()
		if reqs == nil {
			return
		}
		s.flush(s.batch.ctx, reqs)
	}
}

// CreateJob stores job, fenced by f (I1). With a non-empty idemKey the
// creation and the key are one transaction (I3): if the key was already used
// for the same spec (same specHash), the job it created is returned with
// created == false; for another spec, an EIDEMPOTENCY error. ErrFenced means
// f no longer holds and nothing was written; ErrIDTaken that a job with
// job's ID exists. On success the job is committed to the etcd quorum (I2)
// and visible in the view. The key lives apart from every shard, so one key
// makes one job whichever server and shard takes the submission (I3).
//
// Concurrent calls are committed together (group commit, see batch.go): a
// call made while no transaction is in flight is sent at once; calls made
// meanwhile go together in the next transaction. Two calls of one batch
// with the same idemKey make one job. CreateJob blocks until its job's
// outcome is known or ctx ends; an error from ctx (or from etcd) leaves it
// unknown whether the job was committed, which a retry with the same
// idemKey settles.
func (s *Store) CreateJob(ctx context.Context, f election.Fence, job *tandem.Job, idemKey, specHash string) (*tandem.Job, bool, error) {
	r, err := s.newCreateReq(ctx, f, job, idemKey, specHash)
	if err != nil {
		return nil, false, err
	}
	if err := s.batch.enqueue(s, r); err != nil {
		return nil, false, fmt.Errorf("create job %s: %w", job.ID, err)
	}
	return s.awaitCreate(ctx, r)
}

// newCreateReq prepares the creation of job: its records and, with an
// idempotency key, the lease the key is written with.
func (s *Store) newCreateReq(ctx context.Context, f election.Fence, job *tandem.Job, idemKey, specHash string) (*createReq, error) {
	val, err := json.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("encode job %s: %w", job.ID, err)
	}
	r := &createReq{ctx: ctx, fence: f, job: job, key: s.keys.Job(job.ID), val: string(val),
		idemKey: idemKey, specHash: specHash, done: make(chan struct{})}
	if idemKey != "" {
		if r.lease, err = s.idempotencyLease(ctx); err != nil {
			return nil, err
		}
		r.ikey = s.IdemKey(idemKey)
		rec, _ := json.Marshal(idemRecord{JobID: job.ID, SpecHash: specHash})
		r.rec = string(rec)
	}
	return r, nil
}

// awaitCreate waits for r's outcome and, for a replayed idempotency key,
// for the view to hold the job the key names.
func (s *Store) awaitCreate(ctx context.Context, r *createReq) (*tandem.Job, bool, error) {
	select {
	case <-r.done:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("create job %s: %w", r.job.ID, ctx.Err())
	}
	res := r.res
	if res.err != nil {
		return nil, false, res.err
	}
	if res.replayID == "" {
		return res.job, res.created, nil
	}
	if err := s.WaitRev(ctx, res.replayRev); err != nil {
		return nil, false, err
	}
	prev, err := s.Job(res.replayID)
	if err != nil {
		return nil, false, fmt.Errorf("idempotency key %q names job %s: %w", r.idemKey, res.replayID, err)
	}
	return prev, false, nil
}

// flush commits reqs, in as many transactions as etcd's limits and
// failed comparisons make necessary, and answers every one of them.
func (s *Store) flush(ctx context.Context, reqs []*createReq) {
	budget := MaxTxnOps
	for len(reqs) > 0 {
		batch, rest := formBatch(reqs, budget, maxBatchBytes)
		if len(batch) == 0 {
			reqs = rest
			continue
		}
		carry, tooBig := s.commitBatch(ctx, batch)
		if tooBig {
			// etcd refused the transaction whole: nothing was written, so
			// the same jobs go again in transactions half the size, until
			// the one at fault is alone.
			budget = max(3, batchOps(batch)/2)
		}
		reqs = append(carry, rest...)
	}
}

// formBatch picks, from reqs in order, the requests of the next
// transaction: within ops comparisons and (unless it is a lone request)
// maxBytes. A request whose submitter has given up is answered and dropped;
// one whose idempotency key is already in the batch rides along as a dup of
// the first (I3); one whose job key is already in it waits for the next
// (etcd refuses a transaction that writes a key twice). The others come
// back in order.
func formBatch(reqs []*createReq, ops, maxBytes int) (batch, rest []*createReq) {
	fences := make(map[election.Fence]bool)
	byIkey := make(map[string]*createReq)
	keys := make(map[string]bool)
	used, size := 0, 0
	for i, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			r.finish(createResult{err: fmt.Errorf("create job %s: %w", r.job.ID, err)})
			continue
		}
		if first := byIkey[r.ikey]; r.ikey != "" && first != nil {
			first.dups = append(first.dups, r)
			continue
		}
		if keys[r.key] {
			rest = append(rest, r)
			continue
		}
		need := r.ops()
		if !fences[r.fence] {
			need++
		}
		if len(batch) > 0 && (used+need > ops || size+r.bytes() > maxBytes) {
			return batch, append(rest, reqs[i:]...)
		}
		used, size = used+need, size+r.bytes()
		fences[r.fence] = true
		keys[r.key] = true
		if r.ikey != "" {
			byIkey[r.ikey] = r
		}
		batch = append(batch, r)
	}
	return batch, rest
}

// batchOps is how many comparisons batch's transaction has.
func batchOps(batch []*createReq) int {
	fences := make(map[election.Fence]bool)
	n := 0
	for _, r := range batch {
		n += r.ops()
		fences[r.fence] = true
	}
	return n + len(fences)
}

// commitBatch sends batch in one transaction: If(every fence holds, no job
// key and no idempotency key exists) Then(put them all) Else(read the
// fence keys and every key compared). It answers every request it can and
// returns those to send again: after failed comparisons, the requests that
// did not cause them; with tooBig, every one (etcd refused the transaction
// before applying any of it, see refusedWhole).
func (s *Store) commitBatch(ctx context.Context, batch []*createReq) (carry []*createReq, tooBig bool) {
	var fences []election.Fence
	seen := make(map[election.Fence]bool)
	for _, r := range batch {
		if !seen[r.fence] {
			seen[r.fence] = true
			fences = append(fences, r.fence)
		}
	}
	txn := func(ctx context.Context) (*clientv3.TxnResponse, error) {
		n := batchOps(batch)
		cmps := make([]clientv3.Cmp, 0, n)
		elses := make([]clientv3.Op, 0, n)
		ops := make([]clientv3.Op, 0, n)
		for _, f := range fences {
			cmps = append(cmps, f.IsOwner())
			elses = append(elses, clientv3.OpGet(f.Key, clientv3.WithKeysOnly()))
		}
		for _, r := range batch {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0))
			ops = append(ops, clientv3.OpPut(r.key, r.val))
			if r.unknown {
				elses = append(elses, clientv3.OpGet(r.key)) // is it ours?
			} else {
				elses = append(elses, clientv3.OpGet(r.key, clientv3.WithKeysOnly()))
			}
			if r.ikey != "" {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(r.ikey), "=", 0))
				ops = append(ops, clientv3.OpPut(r.ikey, r.rec, clientv3.WithLease(r.lease)))
				elses = append(elses, clientv3.OpGet(r.ikey))
			}
		}
		return s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(elses...).Commit()
	}
	resp, err := s.sendBatch(ctx, batch, txn)
	if err != nil {
		if len(batch) > 1 && refusedWhole(err) {
			return flatten(batch), true
		}
		// It is unknown whether the transaction committed: every submitter
		// is told so, and a retry with the same idempotency key settles it.
		for _, r := range batch {
			r.fail(err)
		}
		return nil, false
	}
	if resp.Succeeded {
		// Show the jobs in the view now rather than waiting for the watch
		// to bring them: they are committed as written, at this revision.
		jobs := make([]*tandem.Job, len(batch))
		for i, r := range batch {
			jobs[i] = r.job
		}
		s.applyCreated(jobs, resp.Header.Revision)
		for _, r := range batch {
			r.finish(createResult{job: r.job, created: true})
			for _, d := range r.dups {
				// I3: the key is now r's; d's job is never written.
				d.finish(idemOutcome(d, r.job.ID, r.specHash, 0, r.job))
			}
		}
		return nil, false
	}

	// Failed comparisons: the Else reads, of the same revision, say which.
	rs := resp.Responses
	lost := make(map[election.Fence]bool)
	for i, f := range fences {
		if !f.Held(rs[i].GetResponseRange().Kvs) {
			lost[f] = true
		}
	}
	k := len(fences)
	answered := 0
	for _, r := range batch {
		jobKVs := rs[k].GetResponseRange().Kvs
		k++
		var idemKVs []*mvccpb.KeyValue
		if r.ikey != "" {
			idemKVs = rs[k].GetResponseRange().Kvs
			k++
		}
		switch {
		case r.unknown && ownRecord(r, jobKVs):
			// An earlier send of this job committed, its answer lost: the
			// job is created, whatever happened since (even a lost fence).
			s.applyCreated([]*tandem.Job{r.job}, jobKVs[0].CreateRevision)
			r.finish(createResult{job: r.job, created: true})
			for _, d := range r.dups {
				d.finish(idemOutcome(d, r.job.ID, r.specHash, 0, r.job))
			}
			answered++
		case lost[r.fence]:
			// I1: another owner holds the shard; nothing was written.
			r.fail(tandem.ErrFenced)
			answered++
		case len(idemKVs) > 0:
			// I3: the key was used before; its job is the answer.
			var rec idemRecord
			if err := json.Unmarshal(idemKVs[0].Value, &rec); err != nil {
				r.fail(fmt.Errorf("decode idempotency record: %w", err))
			} else {
				r.finish(idemOutcome(r, rec.JobID, rec.SpecHash, idemKVs[0].ModRevision, nil))
				for _, d := range r.dups {
					d.finish(idemOutcome(d, rec.JobID, rec.SpecHash, idemKVs[0].ModRevision, nil))
				}
			}
			answered++
		case len(jobKVs) > 0:
			// Only r's own ID is taken: r's dups wrote no key either, so
			// they go again on their own.
			dups := r.dups
			r.dups = nil
			r.finish(createResult{err: fmt.Errorf("create job %s: %w", r.job.ID, ErrIDTaken)})
			carry = append(carry, dups...)
			answered++
		default:
			carry = append(carry, flatten([]*createReq{r})...)
		}
	}
	if answered == 0 {
		// Cannot happen (a failed comparison names a key the Else reads
		// see), but a loop without progress must not be possible either.
		for _, r := range carry {
			r.finish(createResult{err: fmt.Errorf("create job %s: the transaction failed a comparison that no read explains", r.job.ID)})
		}
		return nil, false
	}
	return carry, false
}

// sendBatch sends a batch's transaction (txn) until it has an answer. A
// send whose answer does not come within its attempt time, or that fails
// in a way that leaves the outcome unknown while etcd changes leader, is
// sent again, for up to batchTimeout in all: the requests are marked
// unknown first, so a later send recognises a job an earlier one wrote
// (ownRecord). Sending again is safe because the transaction is guarded by
// every key it creates being absent: of all the sends, at most one
// commits, and any other finds its keys taken.
func (s *Store) sendBatch(ctx context.Context, batch []*createReq, txn func(context.Context) (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
	deadline := time.Now().Add(batchTimeout)
	attempt := firstAttempt
	for n := 1; ; n++ {
		sent := time.Now()
		actx, cancel := context.WithDeadline(ctx, minTime(sent.Add(attempt), deadline))
		resp, err := txn(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !resendable(err) || !time.Now().Before(deadline) {
			return resp, err
		}
		for _, r := range batch {
			r.unknown = true
		}
		s.batchResends.Add(1)
		s.log.Warn("batch transaction unanswered; sending it again", "jobs", len(batch), "after", time.Since(sent).String(), "err", err)
		if n >= shortSends {
			attempt = min(2*attempt, batchTimeout)
		}
		if wait := resendPause - time.Since(sent); wait > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(wait):
			}
		}
	}
}

// resendable reports whether err leaves a transaction's outcome unknown in
// a way that sending it again may settle: no answer in time, or etcd
// losing or changing its leader, or the member being unreachable.
func resendable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	for _, e := range []error{rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail,
		rpctypes.ErrTimeoutDueToConnectionLost, rpctypes.ErrLeaderChanged, rpctypes.ErrNoLeader,
		rpctypes.ErrNotLeader, rpctypes.ErrStopped, rpctypes.ErrTimeoutWaitAppliedIndex} {
		if errors.Is(err, e) {
			return true
		}
	}
	return status.Code(err) == codes.Unavailable
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// ownRecord reports whether r's job key, found taken (jobKVs, read with its
// value), holds what r itself wrote in an earlier send: the same record, or
// a later version of the same job (the same ID, accepted by the same server
// under the same epoch at the same instant; the scheduler may have placed
// it since). Its idempotency key, if any, went in the same transaction.
func ownRecord(r *createReq, jobKVs []*mvccpb.KeyValue) bool {
	return len(jobKVs) > 0 && ownJob(r, jobKVs[0])
}

func ownJob(r *createReq, kv *mvccpb.KeyValue) bool {
	if string(kv.Value) == r.val {
		return true
	}
	var j tandem.Job
	if json.Unmarshal(kv.Value, &j) != nil || r.job.CreatedAt.IsZero() {
		return false
	}
	return j.ID == r.job.ID && j.Epoch == r.job.Epoch && j.AcceptedBy == r.job.AcceptedBy && j.CreatedAt.Equal(r.job.CreatedAt)
}

// fail answers r and its dups with err, which the job was not (or may not
// have been) created for.
func (r *createReq) fail(err error) {
	r.finish(createResult{err: fmt.Errorf("create job %s: %w", r.job.ID, err)})
	for _, d := range r.dups {
		d.finish(createResult{err: fmt.Errorf("create job %s: %w", d.job.ID, err)})
	}
}

// idemOutcome is the answer to r, whose idempotency key names jobID,
// created for the spec hash spec: that job, if r's spec is the same (job,
// when the caller has it at hand, or else the one the view holds once it
// reaches rev); an EIDEMPOTENCY error if not.
func idemOutcome(r *createReq, jobID, spec string, rev int64, job *tandem.Job) createResult {
	if spec != r.specHash {
		return createResult{err: tandem.Errorf(tandem.EIDEMPOTENCY,
			"idempotency key %q was already used for job %s with a different spec; use a new key for a new job", r.idemKey, jobID)}
	}
	if job != nil {
		return createResult{job: cloneJob(job)}
	}
	return createResult{replayID: jobID, replayRev: rev}
}

// flatten returns the requests of batch and their dups, each on its own,
// to be formed into batches again.
func flatten(batch []*createReq) []*createReq {
	var out []*createReq
	for _, r := range batch {
		out = append(out, r)
		out = append(out, r.dups...)
		r.dups = nil
	}
	return out
}

// refusedWhole reports whether etcd refused a transaction without applying
// any of it, for something one of its requests may alone be the cause of:
// its size (an etcd configured with lower limits than etcd's defaults), or
// a lease that no longer exists. The same writes are then sent again in
// smaller transactions, down to one request each, so the others commit.
func refusedWhole(err error) bool {
	for _, e := range []error{rpctypes.ErrTooManyOps, rpctypes.ErrRequestTooLarge,
		rpctypes.ErrLeaseNotFound, rpctypes.ErrDuplicateKey} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// applyCreated puts jobs this process just created at rev into the view,
// each unless the watch already brought that write or a later one.
func (s *Store) applyCreated(jobs []*tandem.Job, rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, job := range jobs {
		if e, ok := s.jobs[job.ID]; ok && e.rev >= rev {
			continue
		}
		// The view's own copy: the caller keeps job. The watch brings the
		// same write back later; applyPut knows it by its revision and
		// does not decode it again.
		j := cloneJob(job)
		s.dedup.job(j, false)
		if old, ok := s.jobs[j.ID]; ok {
			s.unindex(old.job)
		} else {
			s.insertOrder(j.ID)
		}
		s.jobs[j.ID] = jobEntry{job: j, rev: rev}
		s.index(j)
	}
	s.notifyLocked()
}
