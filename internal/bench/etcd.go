package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The etcd baselines: the cheapest write tandem could possibly make for a
// job, measured on the same etcd. A tandem submission is at least one
// transaction guarded by the leader key's create revision (I1); these
// functions make exactly that transaction and nothing else, so the ratio of
// tandem's rate to theirs is what tandem's own work costs.

// ErrFenceMoved means the fence key of a baseline changed while it ran (some
// other process wrote under the baseline's prefix), so the transactions no
// longer measured what they should.
var ErrFenceMoved = errors.New("bench: the fence key changed during the baseline")

// baselineFence makes sure the fence key under prefix exists and returns
// its create revision, the "epoch" every baseline transaction is guarded by.
func baselineFence(ctx context.Context, cli *clientv3.Client, prefix string) (int64, error) {
	key := prefix + "fence"
	if _, err := cli.Put(ctx, key, "bench"); err != nil {
		return 0, fmt.Errorf("create fence key %s: %w", key, err)
	}
	// The key may have been there already (a run interrupted before its
	// clean-up): its create revision is what the guard must name.
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("read fence key %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, fmt.Errorf("fence key %s: %w", key, ErrFenceMoved)
	}
	return resp.Kvs[0].CreateRevision, nil
}

// cleanupChunk is how many keys baselineCleanup deletes in one request: a
// group-commit baseline leaves hundreds of thousands, too many to delete
// in one request within etcd's request timeout on a busy machine.
const cleanupChunk = 5000

// baselineCleanup deletes everything under prefix, cleanupChunk keys at a
// time. It runs even when ctx has ended, so an interrupted baseline leaves
// nothing behind.
func baselineCleanup(ctx context.Context, cli *clientv3.Client, prefix string) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	for {
		resp, err := cli.Get(dctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(cleanupChunk))
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		first, last := string(resp.Kvs[0].Key), string(resp.Kvs[len(resp.Kvs)-1].Key)
		if _, err := cli.Delete(dctx, first, clientv3.WithRange(last+"\x00")); err != nil {
			return fmt.Errorf("delete %s: %w", prefix, err)
		}
	}
}

// baselinePut makes one transaction shaped like tandem's fenced writes:
// If(CreateRevision(fence) == rev) Then(Put(key, value)).
func baselinePut(ctx context.Context, cli *clientv3.Client, fenceKey string, rev int64, key, value string) error {
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(fenceKey), "=", rev)).
		Then(clientv3.OpPut(key, value)).
		Commit()
	if err != nil {
		return fmt.Errorf("fenced txn on %s: %w", key, err)
	}
	if !resp.Succeeded {
		return ErrFenceMoved
	}
	return nil
}

// FencedTxnLatency makes n sequential fenced transactions, each putting a
// valueSize-byte value at <prefix>k/<i> guarded by the create revision of
// <prefix>fence (created first), and returns each one's latency. Everything
// under prefix is deleted at the end, also on error. prefix must be one
// cli may write: with etcd locked down, a cluster's etcd user may write
// only under its cluster's prefix (/tandem/<cluster>/), whose servers then
// see the baseline's writes through their watch, and ignore them.
func FencedTxnLatency(ctx context.Context, cli *clientv3.Client, prefix string, n, valueSize int) (lat []time.Duration, err error) {
	if n < 1 || valueSize < 0 {
		return nil, fmt.Errorf("fenced txn latency: n must be positive and the value size not negative (n %d, size %d)", n, valueSize)
	}
	rev, err := baselineFence(ctx, cli, prefix)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := baselineCleanup(ctx, cli, prefix); err == nil {
			err = cerr
		}
	}()
	value := strings.Repeat("x", valueSize)
	lat = make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := baselinePut(ctx, cli, prefix+"fence", rev, prefix+"k/"+strconv.Itoa(i), value); err != nil {
			return lat, err
		}
		lat = append(lat, time.Since(start))
	}
	return lat, nil
}

// FencedTxnRate makes the transactions of FencedTxnLatency from clients
// goroutines at once, each starting a new one as soon as its last returns,
// for d. It returns how many completed and their latencies. The goroutines
// share cli, as a tandem server's request handlers share its one etcd
// client. A transaction that fails ends the run with its error; ctx ending
// does too. loadEnded, unless nil, is called when the last transaction has
// returned, before the clean-up: a caller measuring the load's cost stops
// its clocks there.
func FencedTxnRate(ctx context.Context, cli *clientv3.Client, prefix string, clients int, d time.Duration, valueSize int, loadEnded func()) (ops int, lat []time.Duration, err error) {
	if clients < 1 || d <= 0 || valueSize < 0 {
		return 0, nil, fmt.Errorf("fenced txn rate: clients and duration must be positive and the value size not negative (clients %d, duration %s, size %d)", clients, d, valueSize)
	}
	value := strings.Repeat("x", valueSize)
	return txnRate(ctx, cli, prefix, clients, d, loadEnded, func(ctx context.Context, rev, seq int64) error {
		return baselinePut(ctx, cli, prefix+"fence", rev, prefix+"k/"+strconv.FormatInt(seq, 10), value)
	})
}

// GroupCommitMaxJobs is the most jobs FencedBatchRate puts in one
// transaction: etcd's default limit of 128 operations per transaction
// holds 63 jobs of two puts, with the fence's comparison.
const GroupCommitMaxJobs = 63

// idemRecordBytes is about the size of the record an idempotency key
// names (its job's ID and spec hash).
const idemRecordBytes = 100

// FencedBatchRate makes transactions shaped like a tandem server's group
// commit, and nothing else, from clients goroutines for d: each creates
// jobs jobs, guarded by the fence's create revision and by the absence of
// every key it writes, and puts, per job, a valueSize-byte record and a
// small idempotency record (I3: a job and its key are one write). It
// returns how many jobs were created and each transaction's latency. With
// as many clients as tandem has submitters it bounds from above what any
// group commit of tandem's records could reach on this etcd: a tandem
// server has one transaction in flight, not clients of them. loadEnded is
// as for FencedTxnRate.
func FencedBatchRate(ctx context.Context, cli *clientv3.Client, prefix string, clients int, d time.Duration, valueSize, jobs int, loadEnded func()) (created int, lat []time.Duration, err error) {
	if clients < 1 || d <= 0 || valueSize < 0 || jobs < 1 || jobs > GroupCommitMaxJobs {
		return 0, nil, fmt.Errorf("fenced batch rate: clients and duration must be positive, the value size not negative and jobs from 1 to %d (clients %d, duration %s, size %d, jobs %d)",
			GroupCommitMaxJobs, clients, d, valueSize, jobs)
	}
	value := strings.Repeat("x", valueSize)
	idem := strings.Repeat("i", idemRecordBytes)
	txns, lat, err := txnRate(ctx, cli, prefix, clients, d, loadEnded, func(ctx context.Context, rev, seq int64) error {
		cmps := make([]clientv3.Cmp, 0, 1+2*jobs)
		ops := make([]clientv3.Op, 0, 2*jobs)
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(prefix+"fence"), "=", rev))
		for j := 0; j < jobs; j++ {
			n := strconv.FormatInt(seq, 10) + "-" + strconv.Itoa(j)
			jk, ik := prefix+"k/"+n, prefix+"i/"+n
			cmps = append(cmps, clientv3.Compare(clientv3.Version(jk), "=", 0), clientv3.Compare(clientv3.Version(ik), "=", 0))
			ops = append(ops, clientv3.OpPut(jk, value), clientv3.OpPut(ik, idem))
		}
		resp, err := cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("fenced batch txn: %w", err)
		}
		if !resp.Succeeded {
			return ErrFenceMoved
		}
		return nil
	})
	return txns * jobs, lat, err
}

// txnRate runs one(ctx, rev, seq) from clients goroutines at once, each
// starting again as soon as its last returns, for d: rev is the create
// revision of the fence under prefix, seq a number no other call gets.
// Everything under prefix is deleted at the end, also on error, after
// loadEnded (unless nil) is called. It returns how many calls succeeded and
// their latencies; one that fails ends the run with its error, and ctx
// ending does too.
func txnRate(ctx context.Context, cli *clientv3.Client, prefix string, clients int, d time.Duration, loadEnded func(), one func(ctx context.Context, rev, seq int64) error) (ops int, lat []time.Duration, err error) {
	rev, err := baselineFence(ctx, cli, prefix)
	if err != nil {
		return 0, nil, err
	}
	defer func() {
		if cerr := baselineCleanup(ctx, cli, prefix); err == nil {
			err = cerr
		}
	}()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		seq      atomic.Int64
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	perClient := make([][]time.Duration, clients)
	deadline := time.Now().Add(d)
	for g := 0; g < clients; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && rctx.Err() == nil {
				start := time.Now()
				if err := one(rctx, rev, seq.Add(1)); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				perClient[g] = append(perClient[g], time.Since(start))
			}
		}()
	}
	wg.Wait()
	if loadEnded != nil {
		loadEnded()
	}
	for _, l := range perClient {
		lat = append(lat, l...)
	}
	if firstErr != nil {
		return len(lat), lat, firstErr
	}
	if err := ctx.Err(); err != nil {
		return len(lat), lat, err
	}
	return len(lat), lat, nil
}
