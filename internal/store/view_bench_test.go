package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"runtime"
	"strconv"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
)

// The costs of a server's view (issue 14, point 3): the bytes a job costs
// in memory, and the CPU of the reads and writes every server makes of it.
// docs/BENCHMARKS.md has the figures.

var benchLayout = keys.New("bench")

// benchJob returns job i of a long-lived cluster's history, shaped like
// BenchmarkTransition's (internal/server): finished, one attempt, a label,
// an idempotency key. With live, it is running its first attempt on agent.
func benchJob(i int, live bool, agent string) *tandem.Job {
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	created := base.Add(time.Duration(i) * 250 * time.Millisecond)
	id := benchID(created)
	started, ended, exit := created.Add(40*time.Millisecond), created.Add(3*time.Second), 0
	key := sha256.Sum256([]byte(id))
	j := &tandem.Job{
		ID: id,
		JobSpec: tandem.JobSpec{
			Name:      "nightly-report-" + strconv.Itoa(i),
			Command:   []string{"sh", "-c", "./report --date=2026-11-01 --out=/data/reports"},
			Labels:    map[string]string{"team": "analytics"},
			Submitter: "scheduler",
		}.WithDefaults(),
		State: tandem.JobSucceeded, CreatedAt: created, UpdatedAt: ended, Epoch: 3, AcceptedBy: "rm1",
		UpdatedEpoch: 3, UpdatedBy: "rm1",
		IdempotencyKey: hex.EncodeToString(key[:16]),
		Attempts: []tandem.Attempt{{ID: id + "-1", Number: 1, Agent: agent, Epoch: 3, State: tandem.AttemptSucceeded,
			ScheduledAt: created.Add(2 * time.Millisecond), StartedAt: &started, EndedAt: &ended, PID: 4000 + i%30000, ExitCode: &exit}},
	}
	if live {
		j.State, j.UpdatedAt = tandem.JobRunning, started
		a := &j.Attempts[0]
		a.State, a.EndedAt, a.ExitCode = tandem.AttemptRunning, nil, nil
	}
	return j
}

// benchID makes an ID like the server's: 10 characters of milliseconds and
// 4 of sequence in lower-case Crockford base32, which sorts in time order.
func benchID(t time.Time) string {
	const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
	var buf [14]byte
	v := t.UnixMilli()
	for i := 9; i >= 0; i-- {
		buf[i] = alphabet[v&31]
		v >>= 5
	}
	for i := 10; i < 14; i++ {
		buf[i] = '0'
	}
	return string(buf[:])
}

// benchAgent names the agent of job i: 100 agents, as a mid-sized cluster.
func benchAgent(i int) string { return "worker-" + strconv.Itoa(i%100) }

// loadBenchJobs writes n finished jobs into etcd, 128 per transaction.
func loadBenchJobs(b *testing.B, cli *clientv3.Client, n int) {
	b.Helper()
	ops := make([]clientv3.Op, 0, 128)
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			b.Fatalf("load jobs: %v", err)
		}
		ops = ops[:0]
	}
	for i := 0; i < n; i++ {
		j := benchJob(i, false, benchAgent(i))
		val, err := json.Marshal(j)
		if err != nil {
			b.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(benchLayout.Job(j.ID), string(val)))
		if len(ops) == cap(ops) {
			flush()
		}
	}
	flush()
}

// liveHeap returns the bytes of live heap objects, after a full collection.
func liveHeap() (alloc, inuse uint64) {
	runtime.GC()
	runtime.GC() // finalizers and sweeping of the first
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.HeapInuse
}

// BenchmarkViewBytesPerJob measures what one job costs in a server's view:
// 100k finished job records in a real etcd, loaded by a new store as a
// starting server does; the live heap the store holds afterwards, divided
// by the number of jobs, is B/job (HeapAlloc after a full GC: live objects
// only); inuse-B/job is the same from HeapInuse (spans, so rounded up).
// ns/op is the whole load.
//
//	go test -run '^$' -bench ViewBytesPerJob -benchtime 3x ./internal/store/
func BenchmarkViewBytesPerJob(b *testing.B) {
	const n = 100_000
	e := etcdtest.Start(b)
	cli := e.Client(b)
	loadBenchJobs(b, cli, n)
	var sumAlloc, sumInuse float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		alloc0, inuse0 := liveHeap()
		b.StartTimer()
		s := New(cli, benchLayout, slog.New(slog.DiscardHandler))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := s.load(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		b.StopTimer()
		if got := s.NumJobs(); got != n {
			b.Fatalf("the view holds %d jobs, want %d", got, n)
		}
		alloc1, inuse1 := liveHeap()
		runtime.KeepAlive(s)
		sumAlloc += float64(int64(alloc1 - alloc0))
		sumInuse += float64(int64(inuse1 - inuse0))
		b.StartTimer()
	}
	b.ReportMetric(sumAlloc/float64(b.N)/n, "B/job")
	b.ReportMetric(sumInuse/float64(b.N)/n, "inuse-B/job")
}

// benchView returns a store whose view holds n jobs (live of them running,
// spread over 100 agents), put in as the watch would, without etcd.
func benchView(b *testing.B, n, live int) (*Store, []*mvccpb.KeyValue) {
	b.Helper()
	s := New(nil, benchLayout, slog.New(slog.DiscardHandler))
	kvs := make([]*mvccpb.KeyValue, n)
	for i := 0; i < n; i++ {
		j := benchJob(i, i >= n-live, benchAgent(i))
		val, err := json.Marshal(j)
		if err != nil {
			b.Fatal(err)
		}
		kvs[i] = &mvccpb.KeyValue{Key: []byte(benchLayout.Job(j.ID)), Value: val, CreateRevision: int64(i + 1), ModRevision: int64(i + 1)}
	}
	s.mu.Lock()
	for _, kv := range kvs {
		s.applyPut(kv, false)
		s.rev = kv.ModRevision
	}
	s.mu.Unlock()
	return s, kvs
}

// BenchmarkViewApply measures the watch's work for one job record: a put
// of a job the view does not hold yet (every server, for a job another
// server created), and the active's own creation, which it puts into its
// view when the transaction commits and then sees again from the watch.
//
//	go test -run '^$' -bench ViewApply -benchmem ./internal/store/
func BenchmarkViewApply(b *testing.B) {
	const n = 10_000
	mk := func(b *testing.B) ([]*tandem.Job, []*mvccpb.KeyValue) {
		jobs := make([]*tandem.Job, n)
		kvs := make([]*mvccpb.KeyValue, n)
		for i := range jobs {
			j := benchJob(i, false, benchAgent(i))
			j.State, j.Attempts = tandem.JobPending, nil
			val, err := json.Marshal(j)
			if err != nil {
				b.Fatal(err)
			}
			jobs[i] = j
			kvs[i] = &mvccpb.KeyValue{Key: []byte(benchLayout.Job(j.ID)), Value: val, CreateRevision: int64(i + 1), ModRevision: int64(i + 1)}
		}
		return jobs, kvs
	}
	b.Run("watch", func(b *testing.B) {
		_, kvs := mk(b)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if i%n == 0 {
				b.StopTimer()
				s := New(nil, benchLayout, slog.New(slog.DiscardHandler))
				b.StartTimer()
				benchS = s
			}
			benchS.mu.Lock()
			benchS.applyPut(kvs[i%n], false)
			benchS.mu.Unlock()
		}
	})
	b.Run("own-create", func(b *testing.B) {
		jobs, kvs := mk(b)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if i%n == 0 {
				b.StopTimer()
				benchS = New(nil, benchLayout, slog.New(slog.DiscardHandler))
				b.StartTimer()
			}
			kv := kvs[i%n]
			benchS.applyCreated(jobs[i%n:i%n+1], kv.ModRevision)
			benchS.mu.Lock()
			benchS.applyPut(kv, false)
			benchS.mu.Unlock()
		}
	})
}

var benchS *Store

// BenchmarkViewReads measures the reads servers make of a view of 100k
// jobs, 1000 of them running on 100 agents: one job (the API, every
// mutation), a page of 100 (GET /v1/jobs, the UI), and the live jobs of an
// agent (every agent sync, twice).
//
//	go test -run '^$' -bench ViewReads -benchmem ./internal/store/
func BenchmarkViewReads(b *testing.B) {
	const n, live = 100_000, 1000
	s, kvs := benchView(b, n, live)
	ids := make([]string, len(kvs))
	for i, kv := range kvs {
		ids[i] = string(kv.Key[len(benchLayout.JobsPrefix()):])
	}
	b.Run("Job", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := s.Job(ids[i%n]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Jobs-page-100", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if jobs, _ := s.Jobs(ids[(i*100)%(n-200)], 100, ""); len(jobs) != 100 {
				b.Fatalf("got %d jobs, want 100", len(jobs))
			}
		}
	})
	b.Run("LiveOn", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if jobs := s.LiveOn(benchAgent(i)); len(jobs) != live/100 {
				b.Fatalf("got %d live jobs, want %d", len(jobs), live/100)
			}
		}
	})
	b.Run("AgentLoad", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if jobs, _ := s.AgentLoad(benchAgent(i)); len(jobs) != live/100 {
				b.Fatalf("got %d live jobs, want %d", len(jobs), live/100)
			}
		}
	})
}
